//! Unit tests of the daemon's transition function: at least one per event kind, and the
//! awkward orders (a reply after a timeout, a second stop during a reload, an exit before the
//! spawn was recorded). No process, no clock: `now` is a fixed instant moved by hand.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use procyard_core::{Exit, Signal};

use super::*;
use crate::config::TaskConfig;
use crate::control::Request;
use crate::protocol::{Reply, ReplyOutcome};
use crate::queue::{BackendKind, Health};
use crate::status::{DaemonState, WorkerState};
use crate::supervisor::outcome::EX_TEMPFAIL;
use crate::supervisor::snapshot::{Observed, snapshot};
use crate::supervisor::testing::{config, job, task};

const SEC: Duration = Duration::from_secs(1);

fn machine(tasks: Vec<TaskConfig>) -> (State, Instant) {
    let t0 = Instant::now();
    (State::new(config(tasks), t0), t0)
}

fn oneshot() -> (State, Instant) {
    machine(vec![task("t", WorkModel::Oneshot)])
}

fn longlived() -> (State, Instant) {
    machine(vec![task("t", WorkModel::Longlived)])
}

fn signals(acts: &[Action]) -> Vec<(WorkerId, Signal)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Signal { worker, signal } => Some((*worker, *signal)),
            _ => None,
        })
        .collect()
}

fn outcomes(acts: &[Action]) -> Vec<(String, Outcome)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Complete { job, outcome, .. } => Some((job.id.clone(), outcome.clone())),
            _ => None,
        })
        .collect()
}

fn spawns(acts: &[Action]) -> Vec<WorkerId> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Spawn { worker } => Some(*worker),
            _ => None,
        })
        .collect()
}

/// Steps `event` and answers claims (`jobs` for `task`, none for the others) and starts at
/// once, as the shell does; returns every action.
fn feed(s: &mut State, event: Event, task: &str, mut jobs: Vec<Job>, now: Instant) -> Vec<Action> {
    let mut todo: VecDeque<Action> = s.step(event, now).into();
    let mut all = Vec::new();
    while let Some(action) = todo.pop_front() {
        let answer = match &action {
            Action::Claim { task: t, max } => {
                let jobs = if t == task { std::mem::take(&mut jobs) } else { Vec::new() };
                Some(Event::Claimed { task: t.clone(), max: *max, jobs })
            }
            Action::Spawn { worker } => {
                Some(Event::Spawned { worker: *worker, pid: 1000 + *worker as i32 })
            }
            _ => None,
        };
        all.push(action);
        if let Some(event) = answer {
            todo.extend(s.step(event, now));
        }
    }
    all
}

/// A reconcile answered as [`feed`] does; returns the workers started for `task`.
fn claim(s: &mut State, task: &str, jobs: Vec<Job>, now: Instant) -> Vec<WorkerId> {
    let acts = feed(s, Event::Reconcile, task, jobs, now);
    spawns(&acts).into_iter().filter(|w| s.workers[w].group == task).collect()
}

fn reply(id: &str, outcome: ReplyOutcome) -> Reply {
    Reply { id: id.into(), outcome, message: None }
}

// --- Reconcile, Claimed, ClaimFailed, Spawned, SpawnFailed -------------------------------

#[test]
fn reconcile_claims_the_free_capacity_and_starts_one_worker_per_job() {
    let (mut s, t0) = oneshot();
    let acts = s.step(Event::Reconcile, t0);
    assert_eq!(acts, vec![Action::Claim { task: "t".into(), max: 2 }]);
    let acts = s.step(Event::Claimed { task: "t".into(), max: 2, jobs: vec![job("a", 1)] }, t0);
    let first = spawns(&acts);
    assert_eq!(first.len(), 1, "one start at a time");
    assert!(!s.groups["t"].maybe_more, "a short claim means the queue is empty");
    assert!(s.step(Event::Spawned { worker: first[0], pid: 42 }, t0).is_empty());
    assert_eq!(s.workers[&first[0]].pid, Some(42));
    assert_eq!(s.step(Event::Reconcile, t0), vec![], "no claim while the queue is empty");
}

#[test]
fn a_failed_start_fails_the_job_and_backs_off_the_rest() {
    let (mut s, t0) = oneshot();
    s.step(Event::Reconcile, t0);
    let acts = s.step(
        Event::Claimed { task: "t".into(), max: 2, jobs: vec![job("a", 1), job("b", 1)] },
        t0,
    );
    let worker = spawns(&acts)[0];
    let acts = s.step(Event::SpawnFailed { worker, error: "no such program".into() }, t0);
    assert!(spawns(&acts).is_empty(), "the crash backoff stops the round");
    assert!(matches!(&outcomes(&acts)[..], [(id, Outcome::Retry { .. })] if id == "a"));
    assert_eq!(s.groups["t"].pending.len(), 1);
    assert!(s.groups["t"].next_spawn.is_some());
    assert!(s.workers.is_empty());
    assert_eq!(s.next_deadline(), s.groups["t"].next_spawn, "woken when the backoff ends");
    assert_eq!(claim(&mut s, "t", vec![], t0 + SEC).len(), 1, "then it starts");
}

#[test]
fn a_failed_claim_stops_asking_until_poked() {
    let (mut s, t0) = oneshot();
    s.step(Event::Reconcile, t0);
    assert!(s.step(Event::ClaimFailed { task: "t".into() }, t0).is_empty());
    assert_eq!(s.step(Event::Reconcile, t0), vec![]);
    s.step(Event::QueueWake, t0);
    assert_eq!(s.step(Event::Reconcile, t0), vec![Action::Claim { task: "t".into(), max: 2 }]);
}

#[test]
fn longlived_workers_start_to_min_and_take_jobs_one_at_a_time() {
    let (mut s, t0) = longlived();
    s.step(Event::Reconcile, t0);
    let acts = s.step(Event::Claimed { task: "t".into(), max: 2, jobs: vec![] }, t0);
    let w = spawns(&acts)[0];
    assert!(s.step(Event::Spawned { worker: w, pid: 7 }, t0).is_empty(), "min_workers is 1");
    s.step(Event::QueueWake, t0);
    s.step(Event::Reconcile, t0);
    let acts = s.step(Event::Claimed { task: "t".into(), max: 2, jobs: vec![job("a", 1)] }, t0);
    assert_eq!(acts, vec![Action::SendJob { worker: w, job: "a".into() }]);
    assert_eq!(s.workers[&w].state(false), WorkerState::Busy);
}

// --- Exited ---------------------------------------------------------------------------

#[test]
fn a_oneshot_exit_settles_its_job_by_exit_code() {
    let cases = [
        (Exit::Code(0), 1, "done"),
        (Exit::Code(EX_TEMPFAIL), 1, "retry"),
        (Exit::Code(1), 1, "retry"),
        (Exit::Code(1), 3, "dead"),
        (Exit::Signal { signal: Signal::SEGV, core_dumped: true }, 3, "dead"),
    ];
    for (exit, attempt, want) in cases {
        let (mut s, t0) = oneshot();
        let w = claim(&mut s, "t", vec![job("a", attempt)], t0)[0];
        let acts = s.step(Event::Exited { worker: w, exit }, t0 + SEC);
        let got = match &outcomes(&acts)[..] {
            [(_, Outcome::Done)] => "done",
            [(_, Outcome::Retry { delay, .. })] => {
                assert_eq!(*delay, SEC, "backoff_initial after the first attempt");
                "retry"
            }
            [(_, Outcome::DeadLetter { .. })] => "dead",
            other => panic!("{other:?}"),
        };
        assert_eq!(got, want, "{exit} at attempt {attempt}");
        assert!(acts.contains(&Action::StopEscapees));
        assert!(s.workers.is_empty());
    }
}

#[test]
fn an_exit_of_an_unknown_worker_changes_nothing() {
    let (mut s, t0) = oneshot();
    assert!(s.step(Event::Exited { worker: 99, exit: Exit::Code(0) }, t0).is_empty());
}

#[test]
fn an_exit_before_the_spawn_was_recorded_still_settles_the_job() {
    let (mut s, t0) = oneshot();
    s.step(Event::Reconcile, t0);
    let acts = s.step(Event::Claimed { task: "t".into(), max: 2, jobs: vec![job("a", 1)] }, t0);
    let w = spawns(&acts)[0];
    // The exit is seen before `Spawned` (no pid yet).
    let acts = s.step(Event::Exited { worker: w, exit: Exit::Code(0) }, t0);
    assert_eq!(outcomes(&acts), vec![("a".into(), Outcome::Done)]);
    // The late answer to the spawn is ignored.
    assert!(s.step(Event::Spawned { worker: w, pid: 5 }, t0).is_empty());
    assert!(s.workers.is_empty());
}

#[test]
fn a_longlived_crash_fails_its_job_and_backs_off_the_restart() {
    let (mut s, t0) = longlived();
    let w = claim(&mut s, "t", vec![], t0)[0];
    s.step(Event::QueueWake, t0);
    s.step(Event::Reconcile, t0);
    s.step(Event::Claimed { task: "t".into(), max: 2, jobs: vec![job("a", 1)] }, t0);
    let acts = s.step(Event::Exited { worker: w, exit: Exit::Code(0) }, t0 + SEC);
    assert!(
        matches!(&outcomes(&acts)[..], [(_, Outcome::Retry { reason, .. })] if reason.contains("worker died"))
    );
    assert_eq!(s.groups["t"].crashes, 1);
    assert_eq!(s.groups["t"].next_spawn, Some(t0 + SEC + Duration::from_millis(100)));
}

// --- Reply, ProtocolError -------------------------------------------------------------

#[test]
fn a_reply_settles_the_job_and_the_worker_takes_the_next() {
    let (mut s, t0) = longlived();
    let w = claim(&mut s, "t", vec![], t0)[0];
    s.step(Event::QueueWake, t0);
    s.step(Event::Reconcile, t0);
    s.step(Event::Claimed { task: "t".into(), max: 2, jobs: vec![job("a", 1), job("b", 1)] }, t0);
    // "b" waits for a worker (the second one is being started by the claim's round).
    s.groups.get_mut("t").unwrap().pending.push_back(job("c", 1));
    let acts = s.step(Event::Reply { worker: w, reply: reply("a", ReplyOutcome::Done) }, t0);
    assert_eq!(outcomes(&acts), vec![("a".into(), Outcome::Done)]);
    assert!(acts.contains(&Action::SendJob { worker: w, job: "b".into() }));
    assert_eq!(s.workers[&w].jobs_done, 1);
    let acts = s.step(Event::Reply { worker: w, reply: reply("b", ReplyOutcome::Retry) }, t0);
    let retried = outcomes(&acts);
    assert!(retried.is_empty() || matches!(&retried[0].1, Outcome::Retry { .. }));
}

#[test]
fn a_reply_after_the_timeout_is_a_protocol_error_and_settles_nothing() {
    let (mut s, t0) = longlived();
    let w = claim(&mut s, "t", vec![], t0)[0];
    s.step(Event::QueueWake, t0);
    s.step(Event::Reconcile, t0);
    s.step(Event::Claimed { task: "t".into(), max: 2, jobs: vec![job("a", 1)] }, t0);
    let acts = s.step(Event::Tick, t0 + 30 * SEC);
    assert_eq!(signals(&acts), vec![(w, Signal::KILL)], "timed out");
    let acts =
        s.step(Event::Reply { worker: w, reply: reply("a", ReplyOutcome::Done) }, t0 + 31 * SEC);
    assert!(outcomes(&acts).is_empty(), "the late reply does not make it done");
    assert!(acts.contains(&Action::CloseStdout { worker: w }));
    let acts = s.step(
        Event::Exited {
            worker: w,
            exit: Exit::Signal { signal: Signal::KILL, core_dumped: false },
        },
        t0 + 31 * SEC,
    );
    assert!(
        matches!(&outcomes(&acts)[..], [(_, Outcome::Retry { reason, .. })] if reason.starts_with("timed out"))
    );
    assert_eq!(s.groups["t"].timeouts, 1);
}

#[test]
fn a_protocol_error_kills_the_worker() {
    let (mut s, t0) = longlived();
    let w = claim(&mut s, "t", vec![], t0)[0];
    let acts = s.step(Event::ProtocolError { worker: w, reason: "frame too long".into() }, t0);
    assert_eq!(
        acts,
        vec![Action::CloseStdout { worker: w }, Action::Signal { worker: w, signal: Signal::KILL }]
    );
    let acts = s.step(Event::Reply { worker: w, reply: reply("x", ReplyOutcome::Done) }, t0);
    assert!(outcomes(&acts).is_empty(), "a reply for a job it was not running");
}

// --- Signal ---------------------------------------------------------------------------

#[test]
fn a_stop_signal_stops_idle_workers_and_gives_busy_ones_the_grace() {
    let (mut s, t0) = machine(vec![task("t", WorkModel::Oneshot), task("l", WorkModel::Longlived)]);
    let busy = claim(&mut s, "t", vec![job("a", 1)], t0)[0];
    let idle = *s.workers.keys().find(|w| **w != busy).unwrap();
    let acts = s.step(Event::Signal(Signal::TERM), t0);
    assert!(acts.contains(&Action::Notify("STOPPING=1")));
    assert!(acts.contains(&Action::SetCapacity { task: "t".into(), capacity: 0 }));
    assert_eq!(signals(&acts), vec![(idle, Signal::TERM)]);
    assert!(s.step(Event::Reconcile, t0).is_empty(), "no claims while stopping");
    assert_eq!(s.next_deadline(), Some(t0 + 5 * SEC), "the idle worker's KILL is first");
    let acts = s.step(Event::Tick, t0 + 5 * SEC);
    assert_eq!(signals(&acts), vec![(idle, Signal::KILL)]);
    assert_eq!(s.next_deadline(), Some(t0 + 10 * SEC), "then the end of the grace");
    let acts = s.step(Event::Tick, t0 + 10 * SEC);
    assert_eq!(signals(&acts), vec![(busy, Signal::TERM)], "grace over");
    assert!(s.workers[&busy].abandon_job);
    let acts = s.step(Event::Exited { worker: busy, exit: Exit::Code(143) }, t0 + 11 * SEC);
    assert!(outcomes(&acts).is_empty(), "an interrupted job goes back without an attempt");
    s.step(Event::Exited { worker: idle, exit: Exit::Code(0) }, t0 + 11 * SEC);
    assert!(s.is_finished());
}

#[test]
fn a_second_stop_signal_forces_the_stop() {
    let (mut s, t0) = oneshot();
    s.step(Event::Signal(Signal::INT), t0);
    assert_eq!(s.step(Event::Signal(Signal::QUIT), t0), vec![Action::ForceStop]);
}

#[test]
fn hup_asks_for_a_reload_and_chld_for_a_reap() {
    let (mut s, t0) = oneshot();
    assert_eq!(s.step(Event::Signal(Signal::HUP), t0), vec![Action::Reload]);
    assert_eq!(s.step(Event::Signal(Signal::CHLD), t0), vec![Action::ReapStrays]);
    assert!(s.step(Event::Signal(Signal::USR1), t0).is_empty());
}

#[test]
fn a_second_stop_signal_during_a_reload_forces_and_the_reload_is_dropped() {
    let (mut s, t0) = oneshot();
    assert_eq!(s.step(Event::Signal(Signal::HUP), t0), vec![Action::Reload]);
    s.step(Event::Signal(Signal::TERM), t0);
    assert_eq!(s.step(Event::Signal(Signal::TERM), t0), vec![Action::ForceStop]);
    let new = config(vec![task("t", WorkModel::Oneshot), task("u", WorkModel::Oneshot)]);
    assert!(s.step(Event::Reloaded(Box::new(new)), t0).is_empty(), "no capacity restored");
    assert_eq!(s.reloads, 0);
    assert!(!s.groups.contains_key("u"));
    assert!(s.step(Event::Signal(Signal::HUP), t0).is_empty(), "no reload while stopping");
}

// --- Reloaded, ReloadFailed -------------------------------------------------------------

#[test]
fn a_reload_drains_removed_tasks_replaces_changed_workers_and_adds_tasks() {
    let (mut s, t0) = machine(vec![task("t", WorkModel::Oneshot), task("l", WorkModel::Longlived)]);
    s.step(Event::Reconcile, t0);
    let acts = s.step(Event::Claimed { task: "l".into(), max: 2, jobs: vec![] }, t0);
    let old = spawns(&acts)[0];
    s.step(Event::Spawned { worker: old, pid: 9 }, t0);
    s.groups.get_mut("t").unwrap().pending.push_back(job("p", 1));
    let mut l2 = task("l", WorkModel::Longlived);
    l2.command = vec!["new-worker".into()];
    let new = config(vec![l2, task("n", WorkModel::Oneshot)]);
    let acts = s.step(Event::Reloaded(Box::new(new)), t0);
    assert!(acts.contains(&Action::SetCapacity { task: "t".into(), capacity: 0 }));
    assert!(acts.contains(&Action::SetCapacity { task: "n".into(), capacity: 2 }));
    assert!(acts.contains(&Action::CloseStdin { worker: old }), "the old worker drains");
    assert_eq!(s.groups["l"].generation, 1);
    assert_eq!(s.reloads, 1);
    let acts = s.step(Event::Reconcile, t0);
    assert!(
        matches!(&outcomes(&acts)[..], [(id, Outcome::Retry { delay, .. })] if id == "p" && delay.is_zero())
    );
    assert!(!s.groups.contains_key("t"), "a drained removed task is gone");
    s.step(Event::ReloadFailed { error: "bad toml".into() }, t0);
    assert_eq!((s.failed_reloads, s.last_reload_error.as_deref()), (1, Some("bad toml")));
}

// --- Tick ---------------------------------------------------------------------------------

#[test]
fn ticks_time_jobs_out_and_stop_idle_workers_above_min() {
    let (mut s, t0) = oneshot();
    let w = claim(&mut s, "t", vec![job("a", 1)], t0)[0];
    assert!(s.step(Event::Tick, t0 + 29 * SEC).is_empty());
    assert_eq!(signals(&s.step(Event::Tick, t0 + 30 * SEC)), vec![(w, Signal::KILL)]);

    let (mut s, t0) = longlived();
    let first = claim(&mut s, "t", vec![], t0)[0];
    s.step(Event::QueueWake, t0);
    s.step(Event::Reconcile, t0);
    let acts = s.step(
        Event::Claimed { task: "t".into(), max: 2, jobs: vec![job("a", 1), job("b", 1)] },
        t0,
    );
    let second = spawns(&acts)[0];
    let acts = s.step(Event::Spawned { worker: second, pid: 8 }, t0);
    assert_eq!(acts, vec![Action::SendJob { worker: second, job: "b".into() }]);
    s.step(Event::Reply { worker: first, reply: reply("a", ReplyOutcome::Done) }, t0);
    s.step(Event::Reply { worker: second, reply: reply("b", ReplyOutcome::Done) }, t0 + SEC);
    assert_eq!(s.next_deadline(), Some(t0 + 60 * SEC));
    let acts = s.step(Event::Tick, t0 + 61 * SEC);
    assert_eq!(acts, vec![Action::CloseStdin { worker: first }], "one idle worker stops; min is 1");
}

#[test]
fn a_due_retry_pokes_the_groups() {
    let (mut s, t0) = oneshot();
    s.step(Event::Reconcile, t0);
    s.step(Event::Claimed { task: "t".into(), max: 2, jobs: vec![] }, t0);
    s.note_queue_due(Some(t0 + 5 * SEC));
    s.note_queue_due(Some(t0 + 9 * SEC));
    assert_eq!(s.next_deadline(), Some(t0 + 5 * SEC));
    s.step(Event::Tick, t0 + 5 * SEC);
    assert!(s.groups["t"].maybe_more);
    assert_eq!(s.queue_due, None);
}

// --- Control, QueueWake, QueueLost ------------------------------------------------------

#[test]
fn control_requests() {
    let (mut s, t0) = oneshot();
    s.groups.get_mut("t").unwrap().maybe_more = false;
    let acts = s.step(Event::Control { conn: 4, request: Request::Poke }, t0);
    assert_eq!(acts, vec![Action::WakeQueue, Action::CloseConnection { conn: 4 }]);
    assert!(s.groups["t"].maybe_more);
    let acts = s.step(Event::Control { conn: 5, request: Request::Status }, t0);
    assert_eq!(acts, vec![Action::AnswerStatus { conn: 5 }]);
}

#[test]
fn a_lost_queue_stops_the_daemon() {
    let (mut s, t0) = oneshot();
    s.groups.get_mut("t").unwrap().maybe_more = false;
    s.step(Event::QueueWake, t0);
    assert!(s.groups["t"].maybe_more);
    let acts = s.step(Event::QueueLost, t0);
    assert!(acts.contains(&Action::Notify("STOPPING=1")));
    assert!(s.is_finished(), "no workers: nothing to wait for");
    assert!(s.step(Event::QueueLost, t0).is_empty());
}

// --- Status snapshot --------------------------------------------------------------------

#[test]
fn the_snapshot_shows_groups_workers_and_the_phase() {
    let (mut s, t0) = oneshot();
    let w = claim(&mut s, "t", vec![job("a", 1)], t0)[0];
    let observed = || Observed {
        pid: 1,
        depths: Default::default(),
        health: Health { backend: BackendKind::Sqlite, ok: true, detail: "q.db".into() },
        dead_letters: vec![],
        control_connections: 1,
    };
    let status = snapshot(&s, observed(), t0 + 2 * SEC, |_| false);
    assert_eq!(status.state, DaemonState::Running);
    let g = &status.groups[0];
    assert_eq!((g.name.as_str(), g.in_flight, g.workers.len()), ("t", 1, 1));
    assert_eq!(g.workers[0].pid, 1000 + w as i32);
    assert_eq!(g.workers[0].state, WorkerState::Busy);
    assert_eq!(g.workers[0].job.as_deref(), Some("a"));
    assert_eq!(g.workers[0].uptime_secs, 2.0);
    let stopped = snapshot(&s, observed(), t0, |_| true);
    assert_eq!(stopped.groups[0].workers[0].state, WorkerState::Stopped);
    s.step(Event::Signal(Signal::TERM), t0);
    assert_eq!(snapshot(&s, observed(), t0, |_| false).state, DaemonState::Stopping);
}
