//! The control requests about jobs, as transitions (pure): `cancel` (a claimed job that has
//! not started is completed as cancelled; a running one's worker gets the stop ladder and its
//! attempt ends `cancelled`, never retried) and `wait` (the connection is answered when every
//! job it waits for has ended — or, for `logs -f`, when any attempt of them ends).

use std::collections::BTreeSet;
use std::time::Instant;

use super::event::{Action, ConnId};
use super::state::State;
use crate::queue::Outcome;

/// A control connection waiting for jobs.
#[derive(Debug)]
pub(crate) struct Waiter {
    conn: ConnId,
    /// The jobs not ended yet.
    ids: BTreeSet<String>,
    /// Answer when any attempt of them ends, not only at their end.
    any_attempt: bool,
}

impl State {
    /// Cancels the jobs of `ids` this daemon holds; answers `conn` (when a control connection
    /// asked) with those it found.
    pub(super) fn cancel(
        &mut self,
        conn: Option<ConnId>,
        ids: Vec<String>,
        now: Instant,
        acts: &mut Vec<Action>,
    ) {
        let kill_timeout = self.config.daemon.kill_timeout;
        let mut found = Vec::new();
        for id in ids {
            let pending = self.groups.values_mut().find_map(|g| {
                let at = g.pending.iter().position(|j| j.id == id)?;
                g.pending.remove(at)
            });
            if let Some(job) = pending {
                tracing::info!(job = %id, "job cancelled before it started");
                let outcome = Outcome::Cancelled { reason: "cancelled".into() };
                acts.push(Action::Complete { job, outcome, attempt: None });
                found.push(id);
                continue;
            }
            // A job sent ahead to a worker that has not started it: the worker is told not
            // to run it (only workers that promised so are sent jobs ahead).
            if self.workers.values_mut().any(|w| w.cancel_ahead(&id, acts)) {
                found.push(id);
                continue;
            }
            let running = self
                .workers
                .values_mut()
                .find(|w| w.job.as_ref().is_some_and(|r| r.job.id == id && !r.cancelled));
            // A oneshot job's group gets TERM, then KILL after the kill timeout; a longlived
            // worker that understands cancel frames gets one and the kill timeout to answer.
            if let Some(w) = running
                && w.cancel_job(kill_timeout, kill_timeout, now, acts)
            {
                found.push(id);
            }
        }
        if let Some(conn) = conn {
            acts.push(Action::AnswerCancel { conn, found });
        }
    }

    /// Pauses (`paused`) or resumes task `task`: a paused group claims nothing (its running
    /// jobs finish; the queue keeps the rest); resuming looks at the queue again.
    pub(super) fn pause(&mut self, conn: ConnId, task: &str, paused: bool, acts: &mut Vec<Action>) {
        let Some(g) = self.groups.get_mut(task).filter(|g| g.configured) else {
            let result = Err(format!("no task named {task:?}"));
            acts.push(Action::AnswerApplied { conn, result });
            return;
        };
        g.paused = paused;
        g.maybe_more = true;
        let (capacity, what) = if paused { (0, "paused") } else { (g.cfg.held_jobs(), "resumed") };
        tracing::info!(%task, "task {what} at run time");
        acts.push(Action::SetCapacity { task: task.to_owned(), capacity });
        acts.push(Action::AnswerApplied { conn, result: Ok(format!("task {task} {what}")) });
    }

    /// Sets task `task`'s `max_workers` until the next reload (at least 1).
    pub(super) fn scale(&mut self, conn: ConnId, task: &str, max: usize, acts: &mut Vec<Action>) {
        let result = match self.groups.get_mut(task).filter(|g| g.configured) {
            None => Err(format!("no task named {task:?}")),
            Some(_) if max == 0 => {
                Err("max_workers must be at least 1 (pause the task to stop it taking jobs)".into())
            }
            Some(g) => {
                let was = g.cfg.max_workers;
                g.cfg.max_workers = max;
                g.cfg.min_workers = g.cfg.min_workers.min(max);
                g.maybe_more = true;
                tracing::info!(%task, from = was, to = max, "task scaled at run time");
                if !g.paused {
                    let capacity = g.cfg.held_jobs();
                    acts.push(Action::SetCapacity { task: task.to_owned(), capacity });
                }
                Ok(format!("task {task}: max_workers {was} -> {max}"))
            }
        };
        acts.push(Action::AnswerApplied { conn, result });
    }

    /// The shell found which of the jobs waited for have not ended: wait for those.
    pub(super) fn watch(
        &mut self,
        conn: ConnId,
        pending: Vec<String>,
        any_attempt: bool,
        acts: &mut Vec<Action>,
    ) {
        if pending.is_empty() {
            acts.push(Action::AnswerWait { conn });
        } else {
            self.waiters.push(Waiter { conn, ids: pending.into_iter().collect(), any_attempt });
        }
    }

    /// Answers the waiters whose jobs ended with the completions in `acts`.
    pub(super) fn resolve_waiters(&mut self, acts: &mut Vec<Action>) {
        if self.waiters.is_empty() {
            return;
        }
        let mut answered = Vec::new();
        for a in acts.iter() {
            let Action::Complete { job, outcome, attempt } = a else { continue };
            for w in &mut self.waiters {
                let attempt_ended = w.any_attempt && attempt.is_some();
                if w.ids.contains(&job.id) && (outcome.is_final() || attempt_ended) {
                    if attempt_ended {
                        w.ids.clear();
                    } else {
                        w.ids.remove(&job.id);
                    }
                    if w.ids.is_empty() {
                        answered.push(w.conn);
                    }
                }
            }
        }
        self.waiters.retain(|w| !w.ids.is_empty());
        acts.extend(answered.into_iter().map(|conn| Action::AnswerWait { conn }));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use procyard_core::{Exit, Signal};

    use super::*;
    use crate::config::WorkModel;
    use crate::control::Request;
    use crate::queue::AttemptEnd;
    use crate::supervisor::event::{Ended, Event, WorkerId};
    use crate::supervisor::testing::{config, job, task};

    fn started(model: WorkModel) -> (State, Instant) {
        let t0 = Instant::now();
        let mut s = State::new(config(vec![task("t", model)]), t0);
        s.step(Event::Claimed { task: "t".into(), max: 2, jobs: vec![job("a", 1)] }, t0);
        (s, t0)
    }

    fn complete_of(acts: &[Action]) -> Vec<(String, Outcome, Option<Ended>)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Complete { job, outcome, attempt } => {
                    Some((job.id.clone(), outcome.clone(), attempt.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// A running oneshot job: TERM to its group, and when it exits (however) it is cancelled,
    /// never retried; a waiter on it is answered.
    #[test]
    fn cancel_running_oneshot_stops_it_and_never_retries() {
        let (mut s, t0) = started(WorkModel::Oneshot);
        let worker = *s.workers.keys().next().unwrap();
        s.step(Event::Spawned { worker, pid: 77 }, t0);
        let acts =
            s.step(Event::Watching { conn: 9, pending: vec!["a".into()], any_attempt: false }, t0);
        assert!(acts.is_empty(), "waiting");
        let acts = s.step(
            Event::Control {
                conn: 1,
                request: Request::Cancel { ids: vec!["a".into(), "zz".into()] },
            },
            t0,
        );
        assert!(acts.contains(&Action::Signal { worker, signal: Signal::TERM }), "{acts:?}");
        assert!(acts.contains(&Action::AnswerCancel { conn: 1, found: vec!["a".into()] }));
        let later = t0 + Duration::from_secs(5);
        let acts = s.step(Event::Tick, later);
        assert!(
            acts.contains(&Action::Signal { worker, signal: Signal::KILL }),
            "the ladder climbs"
        );
        let exit = Exit::Signal { signal: Signal::KILL, core_dumped: false };
        let acts = s.step(Event::Exited { worker, exit }, later);
        let done = complete_of(&acts);
        assert_eq!(done.len(), 1);
        assert!(matches!(done[0].1, Outcome::Cancelled { .. }));
        assert_eq!(done[0].2.as_ref().map(|e| e.end.clone()), Some(AttemptEnd::Cancelled));
        assert!(acts.contains(&Action::AnswerWait { conn: 9 }));
        assert!(s.waiters.is_empty());
    }

    /// A longlived worker that answers `retry` after its job was cancelled does not get it
    /// run again: the job ends cancelled.
    #[test]
    fn a_reply_after_cancel_keeps_it_cancelled() {
        use crate::protocol::{Reply, ReplyOutcome};
        let t0 = Instant::now();
        let mut s = State::new(config(vec![task("t", WorkModel::Longlived)]), t0);
        s.step(Event::Claimed { task: "t".into(), max: 2, jobs: vec![] }, t0);
        let worker = *s.workers.keys().next().unwrap();
        s.step(Event::Spawned { worker, pid: 9 }, t0);
        s.step(Event::Claimed { task: "t".into(), max: 2, jobs: vec![job("a", 1)] }, t0);
        assert!(s.workers[&worker].job.is_some(), "dispatched");
        s.step(Event::Control { conn: 1, request: Request::Cancel { ids: vec!["a".into()] } }, t0);
        let reply = Reply { id: "a".into(), outcome: ReplyOutcome::Retry, message: None };
        let acts = s.step(Event::Reply { worker, reply }, t0);
        let done = complete_of(&acts);
        assert!(matches!(done[..], [(_, Outcome::Cancelled { .. }, Some(_))]), "{done:?}");
    }

    /// A claimed job not yet handed to a worker is cancelled at once, without an attempt.
    #[test]
    fn cancel_pending_job_completes_it_without_an_attempt() {
        let t0 = Instant::now();
        let mut s = State::new(config(vec![task("t", WorkModel::Longlived)]), t0);
        s.groups.get_mut("t").unwrap().pending.push_back(job("p", 1));
        let acts = s.step(
            Event::Control { conn: 2, request: Request::Cancel { ids: vec!["p".into()] } },
            t0,
        );
        let done = complete_of(&acts);
        assert_eq!(done.len(), 1);
        assert!(matches!(&done[0], (id, Outcome::Cancelled { .. }, None) if id == "p"));
        assert!(s.groups["t"].pending.is_empty());
    }

    /// A graceful stop puts interrupted jobs back, but not a cancelled one.
    #[test]
    fn a_cancelled_job_is_not_put_back_by_a_stop() {
        let (mut s, t0) = started(WorkModel::Oneshot);
        let worker = *s.workers.keys().next().unwrap();
        s.step(Event::Spawned { worker, pid: 77 }, t0);
        s.step(Event::Control { conn: 1, request: Request::Cancel { ids: vec!["a".into()] } }, t0);
        s.step(Event::Signal(Signal::TERM), t0);
        let grace = t0 + Duration::from_secs(11);
        s.step(Event::Tick, grace);
        let acts = s.step(Event::Exited { worker, exit: Exit::Code(0) }, grace);
        assert!(matches!(complete_of(&acts)[..], [(_, Outcome::Cancelled { .. }, _)]));
    }

    /// A paused task claims nothing until resumed; scale changes how many it claims.
    #[test]
    fn pause_resume_and_scale_steer_the_claims() {
        let t0 = Instant::now();
        let mut s = State::new(config(vec![task("t", WorkModel::Oneshot)]), t0);
        let max = s.groups["t"].cfg.max_workers;
        let pause = Request::Pause { task: "t".into() };
        let acts = s.step(Event::Control { conn: 1, request: pause }, t0);
        assert!(acts.contains(&Action::SetCapacity { task: "t".into(), capacity: 0 }));
        assert!(matches!(&acts[..], [.., Action::AnswerApplied { conn: 1, result: Ok(_) }]));
        let acts = s.step(Event::Reconcile, t0);
        assert!(!acts.iter().any(|a| matches!(a, Action::Claim { .. })), "paused: {acts:?}");
        assert!(s.groups["t"].paused);

        let scale = Request::Scale { task: "t".into(), max_workers: max + 3 };
        s.step(Event::Control { conn: 2, request: scale }, t0);
        s.step(Event::Control { conn: 3, request: Request::Resume { task: "t".into() } }, t0);
        let acts = s.step(Event::Reconcile, t0);
        assert!(acts.contains(&Action::Claim { task: "t".into(), max: max + 3 }), "{acts:?}");

        let bad = Request::Scale { task: "t".into(), max_workers: 0 };
        let acts = s.step(Event::Control { conn: 4, request: bad }, t0);
        assert!(matches!(&acts[..], [Action::AnswerApplied { conn: 4, result: Err(_) }]));
        let acts =
            s.step(Event::Control { conn: 5, request: Request::Pause { task: "x".into() } }, t0);
        assert!(
            matches!(&acts[..], [Action::AnswerApplied { conn: 5, result: Err(m) }] if m.contains("\"x\""))
        );
    }

    /// `logs -f` waits for any attempt; `wait` only for the end; nothing pending answers now.
    #[test]
    fn waiters_for_attempts_and_for_ends() {
        let (mut s, t0) = started(WorkModel::Oneshot);
        let worker = *s.workers.keys().next().unwrap();
        s.step(Event::Spawned { worker, pid: 77 }, t0);
        let acts = s.step(Event::Watching { conn: 5, pending: vec![], any_attempt: false }, t0);
        assert_eq!(acts, vec![Action::AnswerWait { conn: 5 }]);
        s.step(Event::Watching { conn: 6, pending: vec!["a".into()], any_attempt: true }, t0);
        s.step(Event::Watching { conn: 7, pending: vec!["a".into()], any_attempt: false }, t0);
        let acts = s.step(Event::Exited { worker, exit: Exit::Code(3) }, t0);
        assert!(matches!(complete_of(&acts)[..], [(_, Outcome::Retry { .. }, Some(_))]));
        assert!(acts.contains(&Action::AnswerWait { conn: 6 }));
        assert!(!acts.contains(&Action::AnswerWait { conn: 7 }), "a retry is not the end");
        assert_eq!(s.waiters.len(), 1);
    }

    /// A longlived worker with its job dispatched; `hello` when it announced cancel frames.
    fn longlived_running(hello: bool) -> (State, WorkerId, Instant) {
        use crate::protocol::Hello;
        let t0 = Instant::now();
        let mut s = State::new(config(vec![task("t", WorkModel::Longlived)]), t0);
        s.step(Event::Claimed { task: "t".into(), max: 2, jobs: vec![] }, t0);
        let worker = *s.workers.keys().next().unwrap();
        s.step(Event::Spawned { worker, pid: 9 }, t0);
        if hello {
            s.step(Event::Hello { worker, hello: Hello { cancel: true, prefetch: false } }, t0);
        }
        s.step(Event::Claimed { task: "t".into(), max: 2, jobs: vec![job("a", 1)] }, t0);
        assert!(s.workers[&worker].job.is_some(), "dispatched");
        (s, worker, t0)
    }

    fn signals(acts: &[Action]) -> Vec<Signal> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Signal { signal, .. } => Some(*signal),
                _ => None,
            })
            .collect()
    }

    /// A worker that said hello gets a cancel frame, no signal; its answer ends the job
    /// `cancelled` and it stays alive to take the next job.
    #[test]
    fn cancel_frame_answered_keeps_the_worker() {
        use crate::protocol::{Reply, ReplyOutcome};
        let (mut s, worker, t0) = longlived_running(true);
        s.groups.get_mut("t").unwrap().pending.push_back(job("b", 1));
        let cancel = Request::Cancel { ids: vec!["a".into()] };
        let acts = s.step(Event::Control { conn: 1, request: cancel }, t0);
        assert!(acts.contains(&Action::SendCancel { worker, job: "a".into() }), "{acts:?}");
        assert!(acts.contains(&Action::AnswerCancel { conn: 1, found: vec!["a".into()] }));
        assert!(signals(&acts).is_empty(), "no signal: {acts:?}");
        assert_eq!(s.workers[&worker].next_deadline(), Some(t0 + Duration::from_secs(5)));
        let again = s.step(
            Event::Control { conn: 2, request: Request::Cancel { ids: vec!["a".into()] } },
            t0,
        );
        assert!(again.contains(&Action::AnswerCancel { conn: 2, found: vec![] }), "once");
        let reply = Reply { id: "a".into(), outcome: ReplyOutcome::Cancelled, message: None };
        let acts = s.step(Event::Reply { worker, reply }, t0 + Duration::from_secs(1));
        let done = complete_of(&acts);
        assert!(matches!(done[..], [(_, Outcome::Cancelled { .. }, Some(_))]), "{done:?}");
        assert_eq!(done[0].2.as_ref().map(|e| e.end.clone()), Some(AttemptEnd::Cancelled));
        assert!(
            acts.contains(&Action::SendJob { worker, job: "b".into() }),
            "takes the next job: {acts:?}"
        );
        let w = &s.workers[&worker];
        assert!(w.stop.is_none() && w.job.as_ref().is_some_and(|r| r.job.id == "b"));
        assert_eq!(w.next_deadline(), Some(t0 + Duration::from_secs(31)), "b's timeout only");
    }

    /// A worker that does not answer the cancel within the kill timeout gets TERM, then
    /// KILL; its job ends `cancelled`, never retried, whatever its exit.
    #[test]
    fn cancel_frame_unanswered_gets_the_ladder() {
        let (mut s, worker, t0) = longlived_running(true);
        let cancel = Request::Cancel { ids: vec!["a".into()] };
        s.step(Event::Control { conn: 1, request: cancel }, t0);
        let acts = s.step(Event::Tick, t0 + Duration::from_millis(4900));
        assert!(signals(&acts).is_empty(), "still within the grace");
        let t1 = t0 + Duration::from_secs(5);
        let acts = s.step(Event::Tick, t1);
        assert_eq!(signals(&acts), [Signal::TERM], "{acts:?}");
        assert!(acts.contains(&Action::CloseStdin { worker }));
        let acts = s.step(Event::Tick, t1 + Duration::from_secs(5));
        assert_eq!(signals(&acts), [Signal::KILL]);
        let exit = Exit::Signal { signal: Signal::KILL, core_dumped: false };
        let acts = s.step(Event::Exited { worker, exit }, t1 + Duration::from_secs(5));
        let done = complete_of(&acts);
        assert!(matches!(done[..], [(_, Outcome::Cancelled { .. }, Some(_))]), "{done:?}");
        assert_eq!(done[0].2.as_ref().map(|e| e.end.clone()), Some(AttemptEnd::Cancelled));
    }

    /// An older worker (no hello) gets no cancel frame: the stop ladder at once.
    #[test]
    fn cancel_without_hello_signals_at_once() {
        let (mut s, worker, t0) = longlived_running(false);
        let cancel = Request::Cancel { ids: vec!["a".into()] };
        let acts = s.step(Event::Control { conn: 1, request: cancel }, t0);
        assert_eq!(signals(&acts), [Signal::TERM], "{acts:?}");
        assert!(!acts.iter().any(|a| matches!(a, Action::SendCancel { .. })));
        let _ = worker;
    }

    /// A worker may decide on its own that a job is cancelled: it ends `cancelled`.
    #[test]
    fn an_unsolicited_cancelled_reply_cancels() {
        use crate::protocol::{Reply, ReplyOutcome};
        let (mut s, worker, t0) = longlived_running(true);
        let reply = Reply { id: "a".into(), outcome: ReplyOutcome::Cancelled, message: None };
        let done = complete_of(&s.step(Event::Reply { worker, reply }, t0));
        assert!(matches!(done[..], [(_, Outcome::Cancelled { .. }, Some(_))]), "{done:?}");
    }
}
