//! The daemon's decisions, as a closed state machine: the [`State`] (task groups, workers,
//! phase, reload counters) and [`State::step`], which takes an [`Event`] and the time and
//! answers with [`Action`]s for the shell. No process, descriptor, queue or clock in here.
//!
//! What each event does:
//! - a stop signal begins the graceful stop (no new jobs; idle workers TERM'd; busy ones get
//!   the grace period, then TERM, then KILL); a second one forces the stop; HUP asks for a
//!   reload (applied by [`super::reload`]); CHLD asks the shell to reap strays;
//! - a worker's exit or reply settles its job ([`super::outcome`]) and may hand it the next;
//! - a tick times jobs out, climbs stop ladders, ends the grace period, stops idle workers
//!   above `min_workers` and notices delayed jobs that fell due;
//! - a reconcile claims jobs, starts workers and dispatches ([`super::schedule`]).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use procyard_core::{Exit, Signal};

use super::event::{Action, Ended, Event, WorkerId};
use super::group::Group;
use super::outcome::{self, JobResult, attempt_end, classify};
use super::requests::Waiter;
use super::worker::Worker;
use crate::config::{Config, WorkModel};
use crate::control::Request;
use crate::protocol::Reply;
use crate::queue::{AttemptEnd, Job, Outcome};

/// A longlived worker that lived this long before crashing does not extend a crash streak.
const HEALTHY_UPTIME: Duration = Duration::from_secs(10);

/// Whether the daemon serves or stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    /// Graceful stop: no new jobs; in-flight jobs until `grace_until`, then TERM, then KILL.
    Stopping {
        grace_until: Instant,
        terminated: bool,
    },
}

/// Everything the daemon decides from.
#[derive(Debug)]
pub(crate) struct State {
    pub config: Config,
    pub groups: BTreeMap<String, Group>,
    pub workers: HashMap<WorkerId, Worker>,
    next_id: WorkerId,
    pub phase: Phase,
    pub started: Instant,
    pub reloads: u64,
    pub failed_reloads: u64,
    pub last_reload_error: Option<String>,
    /// When the queue said (or a retry implies) that a delayed job becomes available.
    pub queue_due: Option<Instant>,
    /// Control connections waiting for jobs to end.
    pub(super) waiters: Vec<Waiter>,
    /// Control connections waiting to follow a job's output once it runs: (conn, job id).
    pub(super) pending_follows: Vec<(super::event::ConnId, String)>,
}

impl State {
    pub fn new(config: Config, now: Instant) -> State {
        let groups = config.tasks.iter().map(|t| (t.name.clone(), Group::new(t.clone()))).collect();
        State {
            config,
            groups,
            workers: HashMap::new(),
            next_id: 1,
            phase: Phase::Running,
            started: now,
            reloads: 0,
            failed_reloads: 0,
            last_reload_error: None,
            queue_due: None,
            waiters: Vec::new(),
            pending_follows: Vec::new(),
        }
    }

    /// The transition: what `event` at `now` changes, and what the shell is to do.
    pub fn step(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut acts = Vec::new();
        match event {
            Event::Signal(signal) => self.on_signal(signal, now, &mut acts),
            Event::Exited { worker, exit } => self.on_exit(worker, exit, now, &mut acts),
            Event::Reply { worker, reply } => self.on_reply(worker, reply, now, &mut acts),
            Event::Hello { worker, hello } => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    tracing::debug!(task = %w.group, pid = ?w.pid, cancel = hello.cancel, "worker said hello");
                    w.cancel_frames = hello.cancel;
                    w.takes_ahead = hello.cancel && hello.prefetch;
                }
            }
            Event::ProtocolError { worker, reason } => {
                self.protocol_error(worker, &reason, now, &mut acts)
            }
            Event::Tick => self.on_tick(now, &mut acts),
            Event::Reconcile => self.reconcile(now, &mut acts),
            Event::Control { conn, request } => match request {
                Request::Poke => {
                    acts.push(Action::WakeQueue);
                    self.poke();
                    acts.push(Action::CloseConnection { conn });
                }
                Request::Status => acts.push(Action::AnswerStatus { conn }),
                Request::Cancel { ids } => self.cancel(Some(conn), ids, now, &mut acts),
                Request::Wait { ids, any_attempt, timeout_ms } => {
                    let timeout = Duration::from_millis(timeout_ms);
                    acts.push(Action::Watch { conn, ids, any_attempt, timeout });
                }
                Request::Follow { id, run, stdout_at, stderr_at, timeout_ms } => {
                    let timeout = Duration::from_millis(timeout_ms);
                    self.follow(
                        conn,
                        id,
                        run.map(|r| (r, stdout_at, stderr_at)),
                        timeout,
                        &mut acts,
                    )
                }
                Request::Pause { task } => self.pause(conn, &task, true, &mut acts),
                Request::Resume { task } => self.pause(conn, &task, false, &mut acts),
                Request::Scale { task, max_workers } => {
                    self.scale(conn, &task, max_workers, &mut acts)
                }
            },
            Event::QueueWake => self.poke(),
            Event::CancelRequested { ids } => self.cancel(None, ids, now, &mut acts),
            Event::QueueLost => {
                if self.phase == Phase::Running {
                    self.begin_graceful_stop(now, &mut acts);
                }
            }
            Event::Claimed { task, max, jobs } => self.on_claimed(&task, max, jobs, now, &mut acts),
            Event::ClaimFailed { task } => {
                if let Some(g) = self.groups.get_mut(&task) {
                    g.maybe_more = false;
                }
                self.after_claim(&task, now, &mut acts);
            }
            Event::Spawned { worker, pid } => self.on_spawned(worker, pid, now, &mut acts),
            Event::SpawnFailed { worker, error } => {
                self.on_spawn_failed(worker, error, now, &mut acts)
            }
            Event::Reloaded(config) => self.apply_reload(*config, now, &mut acts),
            Event::ReloadFailed { error } => {
                self.failed_reloads += 1;
                self.last_reload_error = Some(error);
            }
            Event::Watching { conn, pending, any_attempt } => {
                self.watch(conn, pending, any_attempt, &mut acts)
            }
            Event::FollowPending { conn, id } => self.pending_follows.push((conn, id)),
        }
        self.resolve_waiters(&mut acts);
        self.resolve_follows(&mut acts);
        acts
    }

    pub(super) fn alloc_id(&mut self) -> WorkerId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Whether a stop has begun and nothing is left to wait for.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. }) && self.workers.is_empty()
    }

    /// Remembers a time at which a delayed job becomes available (the earliest one known).
    pub fn note_queue_due(&mut self, due: Option<Instant>) {
        self.queue_due = match (due, self.queue_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// The next instant a [`Event::Tick`] is due for the state's own deadlines.
    pub fn next_deadline(&self) -> Option<Instant> {
        let running = self.phase == Phase::Running;
        let mut next: Option<Instant> = None;
        let mut consider = |d: Option<Instant>| {
            if let Some(d) = d {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        };
        for w in self.workers.values() {
            consider(w.next_deadline());
            if running
                && w.is_idle()
                && w.model == WorkModel::Longlived
                && let Some(g) = self.groups.get(&w.group)
                && g.live_workers(&self.workers) > g.cfg.min_workers
            {
                consider(Some(w.idle_since + g.cfg.idle_timeout));
            }
        }
        for g in self.groups.values() {
            if g.wants_spawn(&self.workers) {
                consider(g.next_spawn);
            }
        }
        if let Phase::Stopping { grace_until, terminated: false } = self.phase {
            consider(Some(grace_until));
        }
        if running {
            consider(self.queue_due);
        }
        next
    }

    fn poke(&mut self) {
        for g in self.groups.values_mut() {
            g.maybe_more = true;
        }
    }

    fn on_signal(&mut self, signal: Signal, now: Instant, acts: &mut Vec<Action>) {
        match signal {
            Signal::TERM | Signal::INT | Signal::QUIT => match self.phase {
                Phase::Running => {
                    tracing::info!(%signal, "graceful stop: finishing in-flight jobs");
                    self.begin_graceful_stop(now, acts);
                }
                Phase::Stopping { .. } => {
                    tracing::warn!(%signal, "second stop signal: forceful stop");
                    acts.push(Action::ForceStop);
                }
            },
            Signal::HUP if self.phase == Phase::Running => acts.push(Action::Reload),
            Signal::HUP => tracing::info!("stopping: reload ignored"),
            Signal::CHLD => acts.push(Action::ReapStrays),
            other => tracing::debug!(signal = %other, "ignored signal"),
        }
    }

    fn begin_graceful_stop(&mut self, now: Instant, acts: &mut Vec<Action>) {
        acts.push(Action::Notify("STOPPING=1"));
        self.phase = Phase::Stopping {
            grace_until: now + self.config.daemon.grace_period,
            terminated: false,
        };
        for g in self.groups.values() {
            acts.push(Action::SetCapacity { task: g.cfg.name.clone(), capacity: 0 });
        }
        let kill_timeout = self.config.daemon.kill_timeout;
        for w in self.workers.values_mut().filter(|w| w.job.is_none()) {
            w.abandon_job = true;
            w.begin_stop(Duration::ZERO, kill_timeout, now, acts);
        }
    }

    fn on_exit(&mut self, id: WorkerId, exit: Exit, now: Instant, acts: &mut Vec<Action>) {
        let Some(mut w) = self.workers.remove(&id) else {
            tracing::debug!(worker = id, %exit, "exit of a worker the daemon no longer tracks");
            return;
        };
        // What escaped the worker's group (and was reparented to us) goes with it.
        acts.push(Action::StopEscapees);
        let Some(g) = self.groups.get_mut(&w.group) else { return };
        if let Some(run) = w.job.take() {
            if w.abandon_job && !run.cancelled {
                tracing::info!(job = %run.job.id, "job interrupted by the stop: it goes back to the queue");
            } else {
                if run.timed_out {
                    g.timeouts += 1;
                }
                let result = if run.cancelled {
                    JobResult::Cancelled
                } else {
                    classify(exit, w.model, run.timed_out, g.cfg.timeout)
                };
                let end = attempt_end(exit, w.model, run.timed_out, run.cancelled);
                let ended = Ended { worker: id, pid: w.pid, end };
                finish_job(g, run.job, result, ended, acts);
            }
        }
        // Jobs sent ahead never started: cancelled ones end so, the others go to the front
        // of the pending jobs (still leased; another worker takes them, or the stop puts
        // them back), their attempt not counted.
        for run in std::mem::take(&mut w.ahead).into_iter().rev() {
            if run.cancelled {
                let outcome = Outcome::Cancelled { reason: "cancelled".into() };
                acts.push(Action::Complete { job: run.job, outcome, attempt: None });
            } else {
                g.pending.push_front(run.job);
            }
        }
        if w.model == WorkModel::Longlived && w.stop.is_none() && self.phase == Phase::Running {
            tracing::warn!(task = %g.cfg.name, pid = ?w.pid, %exit, "worker exited unexpectedly");
            if now.duration_since(w.started) >= HEALTHY_UPTIME {
                g.crash_streak = 0;
            }
            g.note_crash(now);
        } else {
            tracing::debug!(task = %g.cfg.name, pid = ?w.pid, %exit, "worker exited");
        }
        g.maybe_more = true;
    }

    fn on_reply(&mut self, id: WorkerId, reply: Reply, now: Instant, acts: &mut Vec<Action>) {
        let running = self.phase == Phase::Running;
        let kill_timeout = self.config.daemon.kill_timeout;
        let Some(w) = self.workers.get_mut(&id) else { return };
        let Some(run) = w.job.take_if(|r| r.job.id == reply.id && !r.timed_out) else {
            let reason = format!("reply for job {} which it was not running", reply.id);
            return self.protocol_error(id, &reason, now, acts);
        };
        let Some(g) = self.groups.get_mut(&w.group) else { return };
        // A job cancelled while it ran stays cancelled whatever the worker answers (a `retry`
        // must not run it again).
        let cancelled = run.cancelled || reply.outcome == crate::protocol::ReplyOutcome::Cancelled;
        let (end, result) = if cancelled {
            (AttemptEnd::Cancelled, JobResult::Cancelled)
        } else {
            (AttemptEnd::Replied { outcome: reply_name(&reply) }, JobResult::from_reply(reply))
        };
        if result.is_done() {
            w.jobs_done += 1;
        }
        let ended = Ended { worker: id, pid: w.pid, end };
        finish_job(g, run.job, result, ended, acts);
        w.idle_since = now;
        g.maybe_more = true;
        // The next job sent ahead (if any) is the one it runs now.
        w.start_next(g.cfg.timeout, kill_timeout, now);
        let stale = !g.configured || w.generation != g.generation || !running;
        if stale && w.stop.is_none() {
            // It finishes the jobs it was sent, then stops.
            if w.job.is_none() {
                w.abandon_job = true;
                let eof = if running { kill_timeout } else { Duration::ZERO };
                w.begin_stop(eof, kill_timeout, now, acts);
            }
        } else {
            while w.has_room(g.cfg.prefetch)
                && let Some(job) = g.pending.pop_front()
            {
                let job_id = job.id.clone();
                w.hand(job, g.cfg.timeout, now);
                acts.push(Action::SendJob { worker: id, job: job_id });
            }
        }
    }

    fn protocol_error(&mut self, id: WorkerId, reason: &str, now: Instant, acts: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&id) else { return };
        tracing::error!(task = %w.group, pid = ?w.pid, %reason, "worker broke the protocol: killing it");
        acts.push(Action::CloseStdout { worker: id });
        w.kill(now, acts);
    }

    fn on_tick(&mut self, now: Instant, acts: &mut Vec<Action>) {
        let kill_timeout = self.config.daemon.kill_timeout;
        if let Phase::Stopping { grace_until, terminated: false } = self.phase
            && grace_until <= now
        {
            tracing::warn!(workers = self.workers.len(), "grace period over: sending SIGTERM");
            for w in self.workers.values_mut() {
                w.abandon_job = true;
                if !w.is_signalled() {
                    w.stop = None;
                    w.begin_stop(Duration::ZERO, kill_timeout, now, acts);
                }
            }
            self.phase = Phase::Stopping { grace_until, terminated: true };
        }
        for w in self.workers.values_mut() {
            if w.next_deadline().is_some_and(|d| d <= now) {
                w.on_deadline(kill_timeout, now, acts);
            }
        }
        if self.phase != Phase::Running {
            return;
        }
        self.stop_idle(now, acts);
        if self.queue_due.is_some_and(|d| d <= now) {
            self.queue_due = None;
            self.poke();
        }
    }

    /// Scale down: stops idle workers past their idle timeout while above `min_workers`.
    fn stop_idle(&mut self, now: Instant, acts: &mut Vec<Action>) {
        let mut to_stop = Vec::new();
        for g in self.groups.values() {
            let mut live = g.live_workers(&self.workers);
            let mut idle: Vec<&Worker> = self
                .workers
                .values()
                .filter(|w| {
                    w.group == g.cfg.name && w.is_idle() && w.idle_since + g.cfg.idle_timeout <= now
                })
                .collect();
            idle.sort_by_key(|w| (w.idle_since, w.id));
            for w in idle {
                if live <= g.cfg.min_workers {
                    break;
                }
                to_stop.push(w.id);
                live -= 1;
            }
        }
        let kill_timeout = self.config.daemon.kill_timeout;
        for id in to_stop {
            if let Some(w) = self.workers.get_mut(&id) {
                tracing::info!(task = %w.group, pid = ?w.pid, "idle timeout: stopping worker");
                w.begin_stop(kill_timeout, kill_timeout, now, acts);
            }
        }
    }
}

/// The outcome word of a reply (`done`, `retry`, `fail`).
fn reply_name(reply: &Reply) -> String {
    serde_json::to_value(reply.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Records the outcome of an attempt in the group's counters and tells the queue.
pub(super) fn finish_job(
    g: &mut Group,
    job: Job,
    result: JobResult,
    ended: Ended,
    acts: &mut Vec<Action>,
) {
    let temporary = matches!(result, JobResult::Retry { .. });
    if result.is_done() {
        g.crash_streak = 0;
    }
    let outcome = outcome::settle(&g.cfg, job.attempt, result);
    match &outcome {
        Outcome::Done => {
            g.done += 1;
            tracing::debug!(task = %g.cfg.name, job = %job.id, "job done");
        }
        Outcome::DeadLetter { reason } => {
            g.failed += 1;
            g.dead_lettered += 1;
            tracing::warn!(task = %g.cfg.name, job = %job.id, attempt = job.attempt, %reason, "job dead-lettered");
        }
        Outcome::Retry { delay, reason } => {
            g.failed += 1;
            g.retried += 1;
            tracing::info!(task = %g.cfg.name, job = %job.id, attempt = job.attempt, temporary, %reason, delay_ms = delay.as_millis() as u64, "job failed: retrying");
        }
        Outcome::Cancelled { .. } => {
            tracing::info!(task = %g.cfg.name, job = %job.id, "job cancelled");
        }
    }
    acts.push(Action::Complete { job, outcome, attempt: Some(ended) });
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
