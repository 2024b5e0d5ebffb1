//! Unit tests of jobs sent ahead (`prefetch`): who gets them, how many are claimed, what a
//! worker's death and a cancel do to them. No process, no clock.

use std::time::{Duration, Instant};

use procyard_core::{Exit, Signal};

use crate::config::WorkModel;
use crate::control::Request;
use crate::protocol::{Hello, Reply, ReplyOutcome};
use crate::queue::{BackendKind, Health, Outcome};
use crate::supervisor::event::{Action, Event, WorkerId};
use crate::supervisor::snapshot::{Observed, snapshot};
use crate::supervisor::state::State;
use crate::supervisor::testing::{config, job, task};

/// A longlived task of one worker (`prefetch` 3), its worker started; says hello with
/// `prefetch` when `ahead`.
fn started(ahead: bool) -> (State, WorkerId, Instant) {
    let t0 = Instant::now();
    let mut t = task("t", WorkModel::Longlived);
    t.max_workers = 1;
    t.prefetch = 3;
    let mut s = State::new(config(vec![t]), t0);
    s.step(Event::Reconcile, t0);
    let acts = s.step(Event::Claimed { task: "t".into(), max: 1, jobs: vec![] }, t0);
    let [Action::Spawn { worker }] = acts[..] else { panic!("one spawn: {acts:?}") };
    s.step(Event::Spawned { worker, pid: 77 }, t0);
    if ahead {
        s.step(Event::Hello { worker, hello: Hello { cancel: true, prefetch: true } }, t0);
    }
    s.step(Event::QueueWake, t0);
    (s, worker, t0)
}

fn claim_max(acts: &[Action]) -> Option<usize> {
    acts.iter().find_map(|a| match a {
        Action::Claim { max, .. } => Some(*max),
        _ => None,
    })
}

fn sent(acts: &[Action]) -> Vec<String> {
    acts.iter()
        .filter_map(|a| match a {
            Action::SendJob { job, .. } => Some(job.clone()),
            _ => None,
        })
        .collect()
}

fn completed(acts: &[Action]) -> Vec<(String, Outcome, bool)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Complete { job, outcome, attempt } => {
                Some((job.id.clone(), outcome.clone(), attempt.is_some()))
            }
            _ => None,
        })
        .collect()
}

fn done(id: &str) -> Reply {
    Reply { id: id.into(), outcome: ReplyOutcome::Done, message: None }
}

/// Claims `ids` for the group and returns what was done with them.
fn claim(s: &mut State, ids: &[&str], now: Instant) -> Vec<Action> {
    let max = claim_max(&s.step(Event::Reconcile, now)).expect("a claim");
    let jobs = ids.iter().map(|id| job(id, 1)).collect();
    s.step(Event::Claimed { task: "t".into(), max, jobs }, now)
}

#[test]
fn a_worker_that_takes_jobs_ahead_is_sent_up_to_prefetch_and_refilled_per_reply() {
    let (mut s, worker, t0) = started(true);
    assert_eq!(claim_max(&s.step(Event::Reconcile, t0)), Some(3), "a claim takes a batch");
    let acts = s.step(
        Event::Claimed { task: "t".into(), max: 3, jobs: vec![job("a", 1), job("b", 1)] },
        t0,
    );
    assert_eq!(sent(&acts), ["a", "b"]);
    let w = &s.workers[&worker];
    assert_eq!(w.job.as_ref().map(|r| r.job.id.as_str()), Some("a"));
    assert_eq!(w.ahead.len(), 1);
    assert!(w.ahead[0].deadline.is_none(), "a job sent ahead has not started: no timeout yet");
    let observed = Observed {
        pid: 1,
        depths: Default::default(),
        health: Health { backend: BackendKind::Sqlite, ok: true, detail: "q.db".into() },
        dead_letters: vec![],
        control_connections: 0,
    };
    let status = snapshot(&s, observed, t0, |_| false);
    assert_eq!(status.groups[0].in_flight, 2, "both are in flight");
    assert_eq!(status.groups[0].workers[0].ahead, ["b"]);

    s.groups.get_mut("t").unwrap().pending.extend([job("c", 1), job("d", 1)]);
    let later = t0 + Duration::from_secs(2);
    let acts = s.step(Event::Reply { worker, reply: done("a") }, later);
    assert_eq!(completed(&acts), [("a".into(), Outcome::Done, true)]);
    assert_eq!(sent(&acts), ["c", "d"], "refilled to prefetch");
    let w = &s.workers[&worker];
    let run = w.job.as_ref().unwrap();
    assert_eq!(run.job.id, "b", "the next one sent runs now");
    assert_eq!(run.deadline, Some(later + Duration::from_secs(30)), "its timeout counts from now");
    assert_eq!(w.in_flight(), 3);
}

#[test]
fn a_worker_without_the_hello_gets_one_job_at_a_time() {
    let (mut s, worker, t0) = started(false);
    assert_eq!(claim_max(&s.step(Event::Reconcile, t0)), Some(1));
    let acts = s.step(Event::Claimed { task: "t".into(), max: 1, jobs: vec![job("a", 1)] }, t0);
    assert_eq!(sent(&acts), ["a"]);
    s.groups.get_mut("t").unwrap().pending.push_back(job("b", 1));
    s.step(Event::Reconcile, t0);
    assert!(s.workers[&worker].ahead.is_empty());
}

#[test]
fn the_jobs_sent_ahead_of_a_killed_worker_go_back_unstarted_and_uncounted() {
    let (mut s, worker, t0) = started(true);
    claim(&mut s, &["a", "b", "c"], t0);
    assert_eq!(s.workers[&worker].in_flight(), 3);
    let exit = Exit::Signal { signal: Signal::KILL, core_dumped: false };
    let acts = s.step(Event::Exited { worker, exit }, t0);
    let ended = completed(&acts);
    assert_eq!(ended.len(), 1, "only the job it ran ended: {ended:?}");
    assert_eq!(ended[0].0, "a");
    assert!(matches!(ended[0].1, Outcome::Retry { .. }) && ended[0].2, "an attempt, retried");
    let pending: Vec<&str> = s.groups["t"].pending.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(pending, ["b", "c"], "back first, in order, still leased (no outcome)");
    assert!(s.groups["t"].pending.iter().all(|j| j.attempt == 1), "their attempt not counted");
}

#[test]
fn a_job_cancelled_before_its_worker_starts_it_is_told_and_ends_cancelled() {
    let (mut s, worker, t0) = started(true);
    claim(&mut s, &["a", "b", "c"], t0);
    let cancel = Request::Cancel { ids: vec!["b".into()] };
    let acts = s.step(Event::Control { conn: 4, request: cancel }, t0);
    assert!(acts.contains(&Action::SendCancel { worker, job: "b".into() }), "{acts:?}");
    assert!(acts.contains(&Action::AnswerCancel { conn: 4, found: vec!["b".into()] }));
    assert!(s.workers[&worker].stop.is_none(), "the worker and the job it runs carry on");
    let acts = s.step(Event::Reply { worker, reply: done("a") }, t0);
    assert_eq!(completed(&acts), [("a".into(), Outcome::Done, true)]);
    let run = s.workers[&worker].job.as_ref().unwrap();
    assert!(run.cancelled && run.cancel_deadline.is_some(), "it must answer within the grace");
    // Whatever it says, the job ends cancelled.
    let reply = Reply { id: "b".into(), outcome: ReplyOutcome::Done, message: None };
    let acts = s.step(Event::Reply { worker, reply }, t0);
    assert!(
        matches!(completed(&acts)[..], [(ref id, Outcome::Cancelled { .. }, true)] if id == "b")
    );
    // A cancelled job sent ahead of a worker that dies is not put back.
    claim(&mut s, &["d"], t0);
    s.step(Event::Control { conn: 5, request: Request::Cancel { ids: vec!["d".into()] } }, t0);
    let exit = Exit::Signal { signal: Signal::KILL, core_dumped: false };
    let acts = s.step(Event::Exited { worker, exit }, t0);
    let ended = completed(&acts);
    assert!(ended.iter().any(|(id, o, _)| id == "d" && matches!(o, Outcome::Cancelled { .. })));
    assert!(s.groups["t"].pending.iter().all(|j| j.id != "d"));
}
