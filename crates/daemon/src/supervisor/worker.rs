//! One worker as the state machine sees it: its task, the job it runs, and where it is in
//! being stopped. Its process and pipes are the shell's ([`super::process`]). Pure.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use procyard_core::{Escalation, StopLadder, Stopping};

use super::event::Action;
use crate::config::WorkModel;
use crate::queue::Job;
use crate::status::WorkerState;

/// A job a worker runs.
#[derive(Debug)]
pub(crate) struct Running {
    pub job: Job,
    pub deadline: Option<Instant>,
    pub timed_out: bool,
    /// Cancelled while it ran: its end is `cancelled`, never retried.
    pub cancelled: bool,
    /// A cancel frame was sent: the worker is to answer by then, or get the stop ladder.
    pub cancel_deadline: Option<Instant>,
    /// This run's token (unique in the daemon): what `logs -f` follows.
    pub run: u64,
}

/// Where a worker is in being stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Its stdin is closed (a longlived worker finishes its job and exits); TERM at `until`.
    Draining { until: Instant },
    /// Signalled: TERM, then after `kill_timeout` KILL (core's stop ladder).
    Signalled(Stopping),
}

#[derive(Debug)]
pub(crate) struct Worker {
    pub id: u64,
    pub group: String,
    pub generation: u64,
    pub model: WorkModel,
    /// Its pid, once the shell has started it.
    pub pid: Option<i32>,
    pub started: Instant,
    /// The job it runs (the first of those it was sent).
    pub job: Option<Running>,
    /// Jobs sent after `job`, in order, that it has not started as far as the daemon knows
    /// (`prefetch`): each leased and in flight; back to the group's pending jobs if the worker
    /// dies before starting them.
    pub ahead: VecDeque<Running>,
    pub idle_since: Instant,
    pub stop: Option<Stop>,
    /// The job must not be completed when the worker exits (it was stopped by a shutdown;
    /// the queue gets it back without counting the attempt).
    pub abandon_job: bool,
    pub jobs_done: u64,
    /// A longlived worker that announced (in its hello) that it stops a job on a cancel frame.
    pub cancel_frames: bool,
    /// … and that it takes jobs sent ahead (never running one cancelled before it starts).
    pub takes_ahead: bool,
    /// How many jobs it was handed.
    pub runs: u64,
}

impl Worker {
    pub fn new(id: u64, group: &str, generation: u64, model: WorkModel, now: Instant) -> Worker {
        Worker {
            id,
            group: group.to_owned(),
            generation,
            model,
            pid: None,
            started: now,
            job: None,
            ahead: VecDeque::new(),
            idle_since: now,
            stop: None,
            abandon_job: false,
            jobs_done: 0,
            cancel_frames: false,
            takes_ahead: false,
            runs: 0,
        }
    }

    pub fn start_job(&mut self, job: Job, timeout: Option<Duration>, now: Instant) {
        let run = self.new_run(job);
        self.job = Some(run);
        self.job_started(timeout, Duration::ZERO, now);
    }

    fn new_run(&mut self, job: Job) -> Running {
        self.runs += 1;
        Running {
            run: (self.id << 24) | (self.runs & 0xff_ffff),
            job,
            deadline: None,
            timed_out: false,
            cancelled: false,
            cancel_deadline: None,
        }
    }

    /// How many jobs it holds: the one it runs and those sent ahead.
    pub fn in_flight(&self) -> usize {
        usize::from(self.job.is_some()) + self.ahead.len()
    }

    /// The most jobs it may hold at once: `prefetch` if it takes jobs ahead, else 1.
    pub fn capacity(&self, prefetch: usize) -> usize {
        if self.takes_ahead && self.model == WorkModel::Longlived { prefetch.max(1) } else { 1 }
    }

    /// Whether it can be sent another job (a longlived worker not being stopped, with room).
    pub fn has_room(&self, prefetch: usize) -> bool {
        self.stop.is_none() && self.in_flight() < self.capacity(prefetch)
    }

    /// Hands it `job`: it runs it at once if it runs none, else after those sent before.
    pub fn hand(&mut self, job: Job, timeout: Option<Duration>, now: Instant) {
        if self.job.is_none() {
            return self.start_job(job, timeout, now);
        }
        let run = self.new_run(job);
        self.ahead.push_back(run);
    }

    /// After the job it ran ended: the next one sent ahead is now the one it runs (its
    /// timeout counts from now; a cancel already sent for it gets `grace` to be answered).
    pub fn start_next(&mut self, timeout: Option<Duration>, grace: Duration, now: Instant) {
        self.job = self.ahead.pop_front();
        self.job_started(timeout, grace, now);
    }

    fn job_started(&mut self, timeout: Option<Duration>, grace: Duration, now: Instant) {
        if let Some(run) = self.job.as_mut() {
            run.deadline = timeout.map(|t| now + t);
            if run.cancelled {
                run.cancel_deadline = Some(now + grace);
            }
        }
    }

    /// Cancels job `id` if it was sent ahead (the worker is told with a cancel frame, and
    /// answers `cancelled` without running it). False if it holds no such job.
    pub fn cancel_ahead(&mut self, id: &str, acts: &mut Vec<Action>) -> bool {
        let Some(run) = self.ahead.iter_mut().find(|r| r.job.id == id && !r.cancelled) else {
            return false;
        };
        run.cancelled = true;
        tracing::info!(job = %id, task = %self.group, pid = ?self.pid, "job cancelled before its worker started it: telling the worker");
        acts.push(Action::SendCancel { worker: self.id, job: id.to_owned() });
        true
    }

    /// Cancels the job it runs: a longlived worker that understands cancel frames (and is not
    /// being stopped) is sent one and given `grace` to answer; any other gets the stop ladder
    /// (TERM to its process group, KILL after `kill_timeout`; a stop under way keeps its
    /// course). Either way the job ends `cancelled`. False if it runs no job (or it is already
    /// cancelled).
    pub fn cancel_job(
        &mut self,
        grace: Duration,
        kill_timeout: Duration,
        now: Instant,
        acts: &mut Vec<Action>,
    ) -> bool {
        let frames =
            self.model == WorkModel::Longlived && self.cancel_frames && self.stop.is_none();
        let Some(run) = self.job.as_mut().filter(|r| !r.cancelled) else { return false };
        run.cancelled = true;
        if frames {
            tracing::info!(job = %run.job.id, task = %self.group, pid = ?self.pid, "job cancelled while running: asking its worker to stop it");
            run.cancel_deadline = Some(now + grace);
            acts.push(Action::SendCancel { worker: self.id, job: run.job.id.clone() });
        } else {
            tracing::info!(job = %run.job.id, task = %self.group, pid = ?self.pid, "job cancelled while running: stopping its worker");
            self.begin_stop(Duration::ZERO, kill_timeout, now, acts);
        }
        true
    }

    pub fn is_idle(&self) -> bool {
        self.job.is_none() && self.stop.is_none()
    }

    /// Whether TERM (or KILL) has been sent.
    pub fn is_signalled(&self) -> bool {
        matches!(self.stop, Some(Stop::Signalled(_)))
    }

    /// Starts the stop: close stdin, then TERM after `eof_grace` (at once when zero), then
    /// KILL after `kill_timeout`. A worker already stopping keeps its course.
    pub fn begin_stop(
        &mut self,
        eof_grace: Duration,
        kill_timeout: Duration,
        now: Instant,
        acts: &mut Vec<Action>,
    ) {
        if self.stop.is_some() {
            return;
        }
        acts.push(Action::CloseStdin { worker: self.id });
        if eof_grace.is_zero() {
            self.terminate(kill_timeout, now, acts);
        } else {
            self.stop = Some(Stop::Draining { until: now + eof_grace });
        }
    }

    /// Sends TERM now (KILL after `kill_timeout`), unless TERM or KILL was already sent.
    pub fn terminate(&mut self, kill_timeout: Duration, now: Instant, acts: &mut Vec<Action>) {
        if self.is_signalled() {
            return;
        }
        let (signal, stopping) = StopLadder::term_then_kill(kill_timeout).begin(now);
        self.stop = Some(Stop::Signalled(stopping));
        acts.push(Action::Signal { worker: self.id, signal });
    }

    /// SIGKILLs the process group now.
    pub fn kill(&mut self, now: Instant, acts: &mut Vec<Action>) {
        let signal = match &mut self.stop {
            Some(Stop::Signalled(stopping)) => stopping.force(now),
            _ => {
                let (_, mut stopping) = StopLadder::term_then_kill(Duration::ZERO).begin(now);
                let signal = stopping.force(now);
                self.stop = Some(Stop::Signalled(stopping));
                signal
            }
        };
        acts.push(Action::Signal { worker: self.id, signal });
    }

    /// Times the job out or climbs the stop ladder if a deadline passed.
    pub fn on_deadline(&mut self, kill_timeout: Duration, now: Instant, acts: &mut Vec<Action>) {
        if let Some(run) = self.job.as_mut()
            && !run.timed_out
            && run.deadline.is_some_and(|d| d <= now)
        {
            run.timed_out = true;
            tracing::warn!(worker = self.id, pid = ?self.pid, job = %run.job.id, task = %self.group, "job timed out: killing the worker's process group");
            self.kill(now, acts);
            return;
        }
        if let Some(run) = self.job.as_mut()
            && run.cancel_deadline.is_some_and(|d| d <= now)
        {
            run.cancel_deadline = None;
            tracing::warn!(worker = self.id, pid = ?self.pid, job = %run.job.id, task = %self.group, "worker did not answer the cancel in time: stopping its process group");
            self.begin_stop(Duration::ZERO, kill_timeout, now, acts);
            return;
        }
        match &mut self.stop {
            Some(Stop::Draining { until }) if *until <= now => {
                self.stop = None;
                self.terminate(kill_timeout, now, acts);
            }
            Some(Stop::Signalled(stopping)) if !stopping.is_last_step() => {
                if let Escalation::Send(signal) = stopping.escalate(now) {
                    tracing::warn!(worker = self.id, pid = ?self.pid, task = %self.group, "worker ignored SIGTERM: sending SIGKILL");
                    acts.push(Action::Signal { worker: self.id, signal });
                }
            }
            _ => {}
        }
    }

    /// The next instant this worker needs attention (none once KILL has been sent: its exit
    /// comes through its pidfd).
    pub fn next_deadline(&self) -> Option<Instant> {
        let job = self.job.as_ref().filter(|r| !r.timed_out).and_then(|r| r.deadline);
        let cancel = self.job.as_ref().and_then(|r| r.cancel_deadline);
        let stop = match &self.stop {
            Some(Stop::Draining { until }) => Some(*until),
            Some(Stop::Signalled(s)) if !s.is_last_step() => Some(s.deadline().instant()),
            _ => None,
        };
        job.into_iter().chain(cancel).chain(stop).min()
    }

    /// What `status` shows; `stopped` when the process is stopped (SIGSTOP).
    pub fn state(&self, stopped: bool) -> WorkerState {
        match (&self.stop, &self.job) {
            _ if stopped => WorkerState::Stopped,
            (Some(Stop::Draining { .. }), _) => WorkerState::Draining,
            (Some(_), _) => WorkerState::Stopping,
            (None, Some(_)) => WorkerState::Busy,
            (None, None) => WorkerState::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use procyard_core::Signal;

    use super::*;

    fn signals(acts: &[Action]) -> Vec<Signal> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Signal { signal, .. } => Some(*signal),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn drain_then_term_then_kill() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut w = Worker::new(1, "t", 0, WorkModel::Longlived, t0);
        let mut acts = Vec::new();
        w.begin_stop(s, s, t0, &mut acts);
        assert_eq!(acts, vec![Action::CloseStdin { worker: 1 }]);
        assert_eq!(w.state(false), WorkerState::Draining);
        assert_eq!(w.next_deadline(), Some(t0 + s));
        acts.clear();
        w.on_deadline(s, t0 + s / 2, &mut acts);
        assert!(acts.is_empty());
        w.on_deadline(s, t0 + s, &mut acts);
        assert_eq!(signals(&acts), [Signal::TERM]);
        assert_eq!(w.state(false), WorkerState::Stopping);
        assert_eq!(w.next_deadline(), Some(t0 + 2 * s));
        acts.clear();
        w.on_deadline(s, t0 + 2 * s, &mut acts);
        assert_eq!(signals(&acts), [Signal::KILL]);
        assert_eq!(w.next_deadline(), None, "after KILL only the exit is awaited");
        acts.clear();
        w.begin_stop(Duration::ZERO, s, t0 + 3 * s, &mut acts);
        assert!(acts.is_empty(), "a second stop changes nothing");
    }

    #[test]
    fn a_job_timeout_kills_at_once() {
        let t0 = Instant::now();
        let mut w = Worker::new(1, "t", 0, WorkModel::Oneshot, t0);
        w.start_job(crate::supervisor::testing::job("j", 1), Some(Duration::from_secs(2)), t0);
        assert_eq!(w.state(false), WorkerState::Busy);
        assert_eq!(w.state(true), WorkerState::Stopped);
        let mut acts = Vec::new();
        w.on_deadline(Duration::from_secs(5), t0 + Duration::from_secs(2), &mut acts);
        assert_eq!(signals(&acts), [Signal::KILL]);
        assert!(w.job.as_ref().unwrap().timed_out);
        assert_eq!(w.next_deadline(), None);
    }
}
