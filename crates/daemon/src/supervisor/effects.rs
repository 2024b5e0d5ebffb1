//! How the shell performs the state's [`Action`]s: queue calls, worker processes, control
//! answers, and the two ways the loop ends.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use procyard_core::{Pid, Report};

use super::event::{Action, Ended, Event};
use super::process::Process;
use super::reload::keep_restart_settings;
use super::shell::Shell;
use super::snapshot::{Observed, snapshot};
use super::strays;
use crate::config::Config;
use crate::control::Response;
use crate::queue::{AttemptReport, Job, Outcome};
use crate::stamp;
use crate::status::Status;
use crate::{Error, Result};

impl Shell {
    /// Performs `action`; returns the answer to feed back, for those that have one.
    pub(super) fn perform(&mut self, action: Action) -> Option<Event> {
        let registry = self.poll.registry();
        match action {
            Action::Claim { task, max } => {
                // The workers the jobs will go to, recorded with the leases.
                let plan = self.state.dispatch_plan(&task, max);
                let to: Vec<_> = (plan.iter())
                    .map(|w| self.processes.get(w).and_then(|p| p.holder.as_ref()))
                    .collect();
                match stamp::timed("claim", || self.queue.claim_for(&task, max, &to)) {
                    Ok(jobs) => {
                        if let Some(h) = &mut self.http {
                            h.on_claimed(&task, &jobs);
                        }
                        return Some(Event::Claimed { task, max, jobs });
                    }
                    Err(e) => {
                        tracing::error!(%task, error = %Report(&e), "unable to claim jobs");
                        return Some(Event::ClaimFailed { task });
                    }
                }
            }
            Action::Spawn { worker } => return Some(stamp::timed("spawn", || self.spawn(worker))),
            Action::SendJob { worker, job } => {
                let (Some(p), Some(w)) =
                    (self.processes.get_mut(&worker), self.state.workers.get(&worker))
                else {
                    return None;
                };
                let runs = w.job.iter().chain(&w.ahead);
                let run = runs.into_iter().find(|r| r.job.id == job)?;
                record_holder(&mut *self.queue, &run.job, p);
                if let Some(h) = &mut self.http {
                    h.on_started(&run.job);
                }
                // What the worker writes on stderr from now is this job's, if it runs it now
                // (a job sent ahead gets its capture when it becomes the one it runs).
                if w.job.as_ref().is_some_and(|r| r.job.id == job) {
                    p.begin_capture();
                }
                // While replies are read in a batch, the jobs that refill the worker go out
                // in one write after the batch.
                let sent = if self.stdin_later.is_some() {
                    p.queue_job(&run.job)
                } else {
                    p.send_job(&run.job, registry)
                };
                match sent {
                    Ok(()) => {
                        if let Some(later) = self.stdin_later.as_mut()
                            && !later.contains(&worker)
                        {
                            later.push(worker);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %Report(&e), "unable to send a job to a worker")
                    }
                }
            }
            Action::SendCancel { worker, job } => {
                if let Some(p) = self.processes.get_mut(&worker)
                    && let Err(e) = p.send_cancel(&job, registry)
                {
                    tracing::error!(error = %Report(&e), "unable to send a cancel frame to a worker");
                }
            }
            Action::Signal { worker, signal } => {
                if let Some(p) = self.processes.get(&worker) {
                    p.signal_group(signal);
                }
            }
            Action::CloseStdin { worker } => {
                if let Some(p) = self.processes.get_mut(&worker) {
                    p.close_stdin(registry);
                }
            }
            Action::CloseStdout { worker } => {
                if let Some(p) = self.processes.get_mut(&worker) {
                    p.close_stdout(registry);
                }
            }
            Action::Complete { job, outcome, attempt } => {
                if let Some(h) = &mut self.http {
                    h.on_completed(&job, &outcome);
                }
                if let Some(ended) = attempt {
                    self.record_attempt(&job, &outcome, ended);
                }
                self.complete(&job, outcome)
            }
            Action::SetCapacity { task, capacity } => {
                if let Err(e) = self.queue.set_capacity(&task, capacity) {
                    tracing::debug!(%task, error = %Report(&e), "unable to set a task's capacity");
                }
            }
            Action::WakeQueue => {
                if let Err(e) = self.queue.on_wake() {
                    self.on_queue_error(e, "queue backend error");
                }
            }
            Action::Reload => return Some(self.reload()),
            Action::CloseConnection { conn } => self.control.close(conn, registry),
            Action::AnswerStatus { conn } => {
                let response = Response::Status(Box::new(self.status()));
                self.control.respond(conn, &response, self.poll.registry());
            }
            Action::Watch { conn, ids, any_attempt, timeout } => {
                self.control.hold(conn, timeout, registry);
                return Some(self.watching(conn, ids, any_attempt));
            }
            Action::Follow { conn, worker, run, delivery, stdout_at, stderr_at, timeout } => {
                self.start_follow(conn, worker, run, delivery, (stdout_at, stderr_at), timeout)
            }
            Action::CheckFollow { conn, id, timeout } => {
                return self.check_follow(conn, id, timeout);
            }
            Action::AnswerWait { conn } => {
                // The outcomes that ended the wait are written before the client reads them.
                self.flush_queue();
                self.control.respond(conn, &Response::Ended, self.poll.registry());
            }
            Action::AnswerCancel { conn, found } => {
                self.control.respond(conn, &Response::Cancelling { found }, registry);
            }
            Action::AnswerApplied { conn, result } => {
                let response = match result {
                    Ok(message) => Response::Applied { message },
                    Err(message) => Response::Error { message },
                };
                self.control.respond(conn, &response, registry);
            }
            Action::ReapStrays => self.reap_strays = true,
            Action::StopEscapees => self.escapees_due = true,
            Action::Notify(state) => crate::notify::systemd(state),
            Action::ForceStop => self.forced = true,
        }
        None
    }

    fn spawn(&mut self, worker: u64) -> Event {
        let Some(w) = self.state.workers.get(&worker) else {
            return Event::SpawnFailed { worker, error: "worker forgotten".into() };
        };
        let Some(g) = self.state.groups.get(&w.group) else {
            return Event::SpawnFailed { worker, error: "task removed".into() };
        };
        let job = w.job.as_ref().map(|r| &r.job);
        match Process::spawn(worker, &g.cfg, job, self.poll.registry()) {
            Ok(p) => {
                if let Some(job) = job {
                    record_holder(&mut *self.queue, job, &p);
                    if let Some(h) = &mut self.http {
                        h.on_started(job);
                    }
                }
                let pid = p.child.id().as_raw();
                self.processes.insert(worker, p);
                Event::Spawned { worker, pid }
            }
            Err(e) => Event::SpawnFailed { worker, error: e.chain().to_string() },
        }
    }

    /// Tells the queue how the attempt ended, with the output captured.
    fn record_attempt(&mut self, job: &Job, outcome: &Outcome, ended: Ended) {
        let (stdout, stderr) = match self.outputs.remove(&ended.worker) {
            Some(streams) => streams,
            // A longlived worker that answered: what it wrote on stderr during the job.
            None => {
                let relay = self.processes.get_mut(&ended.worker).and_then(|p| p.relay.as_mut());
                if let Some(r) = relay.filter(|r| !r.fresh) {
                    r.read(self.poll.registry());
                    r.fresh = true;
                }
                let relay = self.processes.get_mut(&ended.worker).and_then(|p| p.relay.as_mut());
                let capture = relay.and_then(|r| r.job.take());
                // The next job sent ahead, if any, runs from now on: its stderr is its own.
                if self.state.workers.get(&ended.worker).is_some_and(|w| w.job.is_some())
                    && let Some(p) = self.processes.get_mut(&ended.worker)
                {
                    p.begin_capture();
                }
                let captures = super::live::Captures { out: None, err: capture.as_ref() };
                let registry = self.poll.registry();
                super::live::answer(
                    &mut self.followers,
                    &mut self.control,
                    registry,
                    ended.worker,
                    &captures,
                    true,
                );
                // Nothing written: nothing stored (no empty blob per job).
                (None, capture.filter(|c| c.total() > 0).map(|c| c.finish()))
            }
        };
        let reason = match outcome {
            Outcome::Done => None,
            Outcome::Retry { reason, .. }
            | Outcome::DeadLetter { reason }
            | Outcome::Cancelled { reason } => Some(reason.clone()),
        };
        let usage = self.usage.remove(&ended.worker);
        let report =
            AttemptReport { worker_pid: ended.pid, end: ended.end, reason, stdout, stderr, usage };
        self.queue.record_attempt(job, report);
    }

    /// Which of `ids` have not ended (an id the queue does not know has nothing to wait
    /// for): the answer to [`Action::Watch`].
    fn watching(&mut self, conn: u64, ids: Vec<String>, any_attempt: bool) -> Event {
        self.flush_queue();
        let pending = ids
            .into_iter()
            .filter(|id| match self.queue.job(id) {
                Ok(job) => !job.state.is_final(),
                Err(e) => {
                    tracing::debug!(job = %id, error = %Report(&e), "nothing to wait for");
                    false
                }
            })
            .collect();
        Event::Watching { conn, pending, any_attempt }
    }

    fn complete(&mut self, job: &Job, outcome: Outcome) {
        let delay = match &outcome {
            Outcome::Retry { delay, .. } => Some(*delay),
            _ => None,
        };
        if let Err(e) = self.queue.complete(job, outcome) {
            tracing::error!(job = %job.id, error = %Report(&e), "unable to record a job outcome");
        }
        // Remember when the retry falls due: if its delay has already passed by the time the
        // outcome is flushed, the queue no longer reports it as a future instant, and without
        // this the loop would sleep with a claimable job waiting. The delay runs from
        // `complete` (queue contract), so this instant, taken after it (plus a millisecond for
        // the queue's clock granularity), is never before the job is claimable.
        if let Some(delay) = delay {
            let due = Instant::now() + delay + Duration::from_millis(1);
            self.state.note_queue_due(Some(due));
        }
    }

    /// Loads the config again and binds the queue to it: the answer to [`Action::Reload`].
    fn reload(&mut self) -> Event {
        let mut new = match Config::load_runnable(&self.state.config.path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %Report(&e), "reload failed: keeping the running config");
                return Event::ReloadFailed { error: e.chain().to_string() };
            }
        };
        keep_restart_settings(&self.state.config, &mut new);
        if new.http != self.state.config.http {
            tracing::warn!("[http] changed: the HTTP face keeps its settings until a restart");
        }
        self.queue.set_retention(new.daemon.retention);
        if let Err(e) = self.queue.bind(&new.bindings()) {
            tracing::error!(error = %Report(&e), "reload failed: the queue refused the new bindings; keeping the running config");
            let _ = self.queue.bind(&self.state.config.bindings());
            return Event::ReloadFailed { error: e.chain().to_string() };
        }
        if let Err(e) = self.queue.set_limits(&new.limits()) {
            tracing::error!(error = %Report(&e), "reload failed: the queue refused the new limits; keeping the running config");
            let _ = self.queue.bind(&self.state.config.bindings());
            return Event::ReloadFailed { error: e.chain().to_string() };
        }
        if let Err(e) = self.queue.set_schedules(&new.schedules) {
            tracing::error!(error = %Report(&e), "reload failed: the queue refused the new schedules; keeping the running config");
            let _ = self.queue.bind(&self.state.config.bindings());
            return Event::ReloadFailed { error: e.chain().to_string() };
        }
        Event::Reloaded(Box::new(new))
    }

    fn status(&mut self) -> Status {
        // The counters already include outcomes of this turn: write them first, so the
        // queue's depths and dead letters agree with the counters.
        self.flush_queue();
        let depths = self.queue.depths().unwrap_or_else(|e| {
            tracing::error!(error = %Report(&e), "unable to read queue depths");
            BTreeMap::new()
        });
        let observed = Observed {
            pid: Pid::current().as_raw(),
            depths,
            health: self.queue.health(),
            dead_letters: self.queue.dead_letters(None, 100).unwrap_or_default(),
            control_connections: self.control.connections(),
        };
        let processes = &self.processes;
        snapshot(&self.state, observed, Instant::now(), |w| {
            processes.get(&w.id).is_some_and(|p| {
                procyard_core::ProcStat::read(p.child.id())
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.is_stopped())
            })
        })
    }

    /// The status from memory alone (no queue or `/proc` read): what the HTTP face gets.
    pub(super) fn light_status(&self) -> Status {
        let observed = Observed {
            pid: Pid::current().as_raw(),
            depths: BTreeMap::new(),
            health: self.queue.health(),
            dead_letters: Vec::new(),
            control_connections: self.control.connections(),
        };
        snapshot(&self.state, observed, Instant::now(), |_| false)
    }

    /// Hands the HTTP face a snapshot when one is due.
    pub(super) fn publish_http(&mut self, now: Instant) {
        if self.http.as_mut().is_some_and(|h| h.note_turn(now)) {
            let status = self.light_status();
            if let Some(h) = &self.http {
                h.copy_followed(now, |id| self.live_output(id));
            }
            if let Some(h) = &mut self.http {
                h.publish(status, now);
            }
        }
    }

    /// The output so far of job `id`, if a worker here runs it.
    fn live_output(&self, id: &str) -> Option<crate::http::LiveOutput> {
        let w =
            self.state.workers.values().find(|w| w.job.as_ref().is_some_and(|r| r.job.id == id))?;
        let p = self.processes.get(&w.id)?;
        let (stdout, stderr) = match (&p.output, &p.relay) {
            (Some(o), _) => (Some(o.out.peek()), Some(o.err.peek())),
            (None, Some(r)) => (None, r.job.as_ref().map(|c| c.peek())),
            (None, None) => (None, None),
        };
        Some(crate::http::LiveOutput { running: true, stdout, stderr })
    }

    /// A second stop signal: KILL every worker and escapee, reap the workers, stop.
    pub(super) fn force_stop(&mut self) -> Result<()> {
        for p in self.processes.values() {
            p.signal_group(procyard_core::Signal::KILL);
        }
        for (_, mut p) in self.processes.drain() {
            if let Err(e) = p.child.wait() {
                tracing::error!(pid = %p.child.id(), error = %Report(&e), "unable to reap worker");
            }
        }
        // Jobs of killed workers go back to the queue at shutdown, their attempt not counted.
        self.state.workers.clear();
        // Escapees too, at once (the daemon exits next; init reaps them).
        strays::stop_escapees(self);
        self.escapees.kill_all();
        self.finish_stop()
    }

    pub(super) fn finish_stop(&mut self) -> Result<()> {
        if let Err(e) = self.queue.shutdown() {
            tracing::error!(error = %Report(&e), "queue shutdown failed");
        }
        self.control.shut_down(self.poll.registry());
        match self.fatal.take() {
            Some(e) => {
                tracing::error!(error = %e.chain(), "procyard-daemon stopped");
                Err::<(), Error>(e)
            }
            None => {
                tracing::info!("procyard-daemon stopped");
                Ok(())
            }
        }
    }
}

/// Records with the lease which worker runs `job`.
fn record_holder(queue: &mut dyn crate::queue::QueueBackend, job: &Job, p: &Process) {
    if let Some(holder) = &p.holder
        && let Err(e) = queue.record_holder(job, holder)
    {
        tracing::error!(job = %job.id, error = %Report(&e), "unable to record a job's worker");
    }
}
