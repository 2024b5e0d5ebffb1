//! The transition, driven event by event: no process, socket or clock.

use std::time::{Duration, Instant};

use mio::Token;
use procyard_core::{Exit, Pid, Signal};
use serde_json::json;

use super::ladder::GRACE;
use super::{Action, ClientId, Event, Leader, Now, State, Task};
use crate::RefusalKind;
use crate::meta::Meta;
use crate::protocol::{Event as Announce, Request, Response, StreamName};
use crate::status::Status;

pub(super) const C1: ClientId = Token(20);
pub(super) const C2: ClientId = Token(21);

pub(super) fn pid(n: i32) -> Pid {
    Pid::from_raw(n).unwrap()
}

/// A test clock: `at(s)` is `s` seconds after the start.
pub(super) struct Clock(Instant);

impl Clock {
    pub(super) fn at(&self, secs: f64) -> Now {
        Now { at: self.0 + Duration::from_secs_f64(secs), wall_ms: 1_000 + (secs * 1e3) as u64 }
    }
}

pub(super) fn fresh() -> (State, Clock) {
    let clock = Clock(Instant::now());
    let task = State::new(
        Task { id: "t".into(), command: vec!["sh".into()], retain: 16, supervisor: pid(10) },
        Meta::new(),
        clock.at(0.0),
    );
    (task, clock)
}

/// A task whose leader (pid 100) runs.
pub(super) fn running() -> (State, Clock) {
    let (mut s, clock) = fresh();
    assert!(s.step(Event::Spawned { pid: pid(100) }, clock.at(0.0)).is_empty());
    (s, clock)
}

pub(super) fn request(s: &mut State, client: ClientId, request: Request, now: Now) -> Vec<Action> {
    s.step(Event::Request { client, request }, now)
}

fn step_actions(signal: Signal, group: bool) -> Vec<Action> {
    let mut out = Vec::new();
    if group {
        out.extend([Action::SignalGroup(signal), Action::SignalGroup(Signal::CONT)]);
    }
    out.extend([
        Action::SignalEscapees(signal),
        Action::SignalEscapees(Signal::CONT),
        Action::CheckEscapees,
    ]);
    out
}

pub(super) fn ok(client: ClientId) -> Action {
    Action::Send(client, Response::Ok)
}

pub(super) fn refused(actions: &[Action], want: RefusalKind) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Send(_, Response::Error { kind, .. }) if *kind == want))
}

/// The leader exits (code 0) with no escapees left.
pub(super) fn exit(s: &mut State, clock: &Clock, t: f64) {
    s.step(Event::LeaderExited, clock.at(t));
    s.step(Event::Reaped { exit: Exit::Code(0) }, clock.at(t));
    s.step(Event::Escapees(vec![]), clock.at(t));
}

#[test]
fn spawned_records_the_leader() {
    let (s, _) = running();
    let info = s.info();
    assert_eq!(info.pid, Some(pid(100)));
    assert_eq!(info.status, Status::Running);
    assert!(info.stdin_open);
    assert_eq!(
        info.streams.keys().copied().collect::<Vec<_>>(),
        [StreamName::Stdout, StreamName::Stderr]
    );
}

#[test]
fn leader_exit_signals_its_group_reaps_and_records() {
    let (mut s, clock) = running();
    // The zombie still holds its group id: leftovers in the group get TERM before the reap.
    assert_eq!(
        s.step(Event::LeaderExited, clock.at(1.0)),
        [Action::SignalGroup(Signal::TERM), Action::SignalGroup(Signal::CONT), Action::Reap]
    );
    let actions = s.step(Event::Reaped { exit: Exit::Code(3) }, clock.at(1.0));
    assert_eq!(s.status, Status::Exited { code: 3 });
    assert_eq!(s.ended_ms, Some(2_000));
    assert!(actions.contains(&Action::Save) && actions.contains(&Action::CloseStdin));
    assert_eq!(actions.last(), Some(&Action::CheckEscapees));
    // Nothing left running: no sweep.
    assert!(s.step(Event::Escapees(vec![]), clock.at(1.0)).is_empty());
    assert!(s.deadline().is_none());
    assert!(!s.is_finished());
}

#[test]
fn an_exit_before_the_spawn_was_recorded_wins() {
    let (mut s, clock) = fresh();
    s.step(
        Event::Reaped { exit: Exit::Signal { signal: Signal::TERM, core_dumped: false } },
        clock.at(0.0),
    );
    assert!(s.step(Event::Spawned { pid: pid(100) }, clock.at(0.0)).is_empty());
    assert_eq!(s.leader, Leader::Exited);
    assert_eq!(s.status, Status::Signaled { signal: Signal::TERM });
    assert_eq!(s.info().pid, None);
}

#[test]
fn a_second_exit_changes_nothing() {
    let (mut s, clock) = running();
    exit(&mut s, &clock, 1.0);
    assert!(s.step(Event::LeaderExited, clock.at(2.0)).is_empty());
    assert!(s.step(Event::Reaped { exit: Exit::Code(9) }, clock.at(2.0)).is_empty());
    assert_eq!(s.status, Status::Exited { code: 0 });
}

#[test]
fn what_an_exited_task_left_running_is_swept() {
    let (mut s, clock) = running();
    s.step(Event::Reaped { exit: Exit::Code(0) }, clock.at(1.0));
    assert_eq!(
        s.step(Event::Escapees(vec![pid(200)]), clock.at(1.0)),
        step_actions(Signal::TERM, false)
    );
    assert!(s.step(Event::Timer, clock.at(2.0)).is_empty(), "within the grace");
    let t = 1.0 + GRACE.as_secs_f64();
    assert_eq!(s.step(Event::Timer, clock.at(t)), step_actions(Signal::KILL, false));
    assert!(s.step(Event::Escapees(vec![]), clock.at(t)).is_empty());
    assert!(s.deadline().is_none(), "the sweep is over");
    assert!(!s.is_finished(), "a sweep does not end the supervisor");
}

#[test]
fn delete_climbs_int_term_kill_and_answers_at_the_end() {
    let (mut s, clock) = running();
    assert_eq!(
        request(&mut s, C1, Request::Delete, clock.at(0.0)),
        step_actions(Signal::INT, true)
    );
    assert!(s.is_deleting());
    assert!(s.step(Event::Escapees(vec![]), clock.at(0.0)).is_empty(), "the leader still runs");
    let g = GRACE.as_secs_f64();
    assert_eq!(s.step(Event::Timer, clock.at(g)), step_actions(Signal::TERM, true));
    // Deleting: the zombie's group gets KILL.
    assert_eq!(s.step(Event::LeaderExited, clock.at(g))[0], Action::SignalGroup(Signal::KILL));
    s.step(Event::Reaped { exit: Exit::Code(0) }, clock.at(g));
    let end = s.step(Event::Escapees(vec![]), clock.at(g));
    assert_eq!(end.first(), Some(&Action::RemoveFiles));
    assert!(end.ends_with(&[ok(C1), Action::Finish]), "{end:?}");
    assert!(s.is_finished());
    // After the delete, nothing changes.
    assert!(s.step(Event::Timer, clock.at(60.0)).is_empty());
    assert!(request(&mut s, C2, Request::Info, clock.at(60.0)).is_empty());
}

#[test]
fn a_delete_during_a_sweep_goes_on_with_the_sweep_ladder() {
    let (mut s, clock) = running();
    s.step(Event::Reaped { exit: Exit::Code(0) }, clock.at(0.0));
    s.step(Event::Escapees(vec![pid(200)]), clock.at(0.0));
    // No step back to INT: the sweep's TERM stands, its deadline too.
    assert_eq!(request(&mut s, C1, Request::Delete, clock.at(0.5)), [Action::CheckEscapees]);
    assert!(s.step(Event::Escapees(vec![pid(200)]), clock.at(0.5)).is_empty());
    assert_eq!(
        s.step(Event::Timer, clock.at(GRACE.as_secs_f64())),
        step_actions(Signal::KILL, false)
    );
    let end = s.step(Event::Escapees(vec![]), clock.at(2.5));
    assert!(end.ends_with(&[ok(C1), Action::Finish]));
}

#[test]
fn a_second_delete_is_answered_when_the_first_ends() {
    let (mut s, clock) = running();
    request(&mut s, C1, Request::Delete, clock.at(0.0));
    assert!(request(&mut s, C2, Request::Delete, clock.at(0.1)).is_empty());
    assert!(s.step(Event::Signal(Signal::TERM), clock.at(0.2)).is_empty(), "a second stop signal");
    s.step(Event::Reaped { exit: Exit::Code(0) }, clock.at(0.3));
    let end = s.step(Event::Escapees(vec![]), clock.at(0.3));
    assert!(end.ends_with(&[ok(C1), ok(C2), Action::Finish]), "{end:?}");
}

#[test]
fn a_requester_gone_before_the_end_is_not_answered() {
    let (mut s, clock) = running();
    request(&mut s, C1, Request::Delete, clock.at(0.0));
    s.step(Event::ClientGone { client: C1 }, clock.at(0.1));
    s.step(Event::Reaped { exit: Exit::Code(0) }, clock.at(0.2));
    let end = s.step(Event::Escapees(vec![]), clock.at(0.2));
    assert_eq!(end, [Action::RemoveFiles, Action::Finish]);
}

#[test]
fn supervisor_signals() {
    let (mut s, clock) = running();
    assert_eq!(s.step(Event::Signal(Signal::CHLD), clock.at(0.0)), [Action::CheckEscapees]);
    assert!(s.step(Event::Signal(Signal::HUP), clock.at(0.0)).is_empty());
    assert!(s.step(Event::Signal(Signal::PIPE), clock.at(0.0)).is_empty());
    assert_eq!(s.step(Event::Signal(Signal::TERM), clock.at(0.0)), step_actions(Signal::INT, true));
}

#[test]
fn kill_requests_go_to_the_group_while_it_runs_and_are_refused_after() {
    let (mut s, clock) = running();
    let kill = || Request::Signal { signal: Signal::KILL };
    let want = [Action::SignalTask { signal: Signal::KILL, reply: Some(C1) }];
    assert_eq!(request(&mut s, C1, kill(), clock.at(0.0)), want);
    // A second kill before the exit is seen goes out too.
    assert_eq!(request(&mut s, C1, kill(), clock.at(0.0)), want);
    exit(&mut s, &clock, 0.1);
    assert!(refused(&request(&mut s, C1, kill(), clock.at(0.2)), RefusalKind::NotRunning));
}

#[test]
fn a_kill_during_a_delete_still_reaches_the_group() {
    let (mut s, clock) = running();
    request(&mut s, C1, Request::Delete, clock.at(0.0));
    let actions = request(&mut s, C2, Request::Signal { signal: Signal::KILL }, clock.at(0.1));
    assert_eq!(actions, [Action::SignalTask { signal: Signal::KILL, reply: Some(C2) }]);
}

#[test]
fn pause_and_resume_record_the_status() {
    let (mut s, clock) = running();
    let paused = request(&mut s, C1, Request::Pause, clock.at(0.0));
    assert_eq!(
        paused,
        [Action::SignalTask { signal: Signal::STOP, reply: Some(C1) }, Action::Save]
    );
    assert_eq!(s.status, Status::Paused);
    request(&mut s, C1, Request::Resume, clock.at(0.0));
    assert_eq!(s.status, Status::Running);
}

#[test]
fn a_leader_stuck_after_every_kill_gets_kill_again() {
    let (mut s, clock) = running();
    request(&mut s, C1, Request::Delete, clock.at(0.0));
    let g = GRACE.as_secs_f64();
    // INT, TERM, then KILL and its three retries, one grace apart.
    for i in 1..=5 {
        assert!(!s.step(Event::Timer, clock.at(g * i as f64)).is_empty());
    }
    // The ladder is exhausted, the leader still there: KILL again, not a busy loop.
    let again = s.step(Event::Timer, clock.at(g * 6.0));
    assert_eq!(again, step_actions(Signal::KILL, true));
    assert!(s.step(Event::Timer, clock.at(g * 6.5)).is_empty());
    assert!(!s.is_finished());
}

#[test]
fn escapees_that_survive_every_kill_are_given_up_on() {
    let (mut s, clock) = running();
    s.step(Event::Reaped { exit: Exit::Code(0) }, clock.at(0.0));
    request(&mut s, C1, Request::Delete, clock.at(0.0));
    let g = GRACE.as_secs_f64();
    for i in 1..=5 {
        s.step(Event::Escapees(vec![pid(300)]), clock.at(g * (i - 1) as f64));
        s.step(Event::Timer, clock.at(g * i as f64));
    }
    let end = s.step(Event::Timer, clock.at(g * 6.0));
    assert!(end.ends_with(&[ok(C1), Action::Finish]), "{end:?}");
}

#[test]
fn escapees_adopted_during_a_stop_get_the_signal_in_force() {
    let (mut s, clock) = running();
    request(&mut s, C1, Request::Delete, clock.at(0.0));
    // The step reached pid 200; pid 201 is adopted afterwards.
    assert!(s.step(Event::Escapees(vec![pid(200)]), clock.at(0.0)).is_empty());
    assert_eq!(
        s.step(Event::Escapees(vec![pid(200), pid(201)]), clock.at(0.1)),
        [
            Action::SignalSome(vec![pid(201)], Signal::INT),
            Action::SignalSome(vec![pid(201)], Signal::CONT)
        ]
    );
    assert!(s.step(Event::Escapees(vec![pid(200), pid(201)]), clock.at(0.2)).is_empty());
}

#[test]
fn restart_runs_a_finished_task_again() {
    let (mut s, clock) = running();
    assert!(refused(
        &request(&mut s, C1, Request::Restart, clock.at(0.0)),
        RefusalKind::StillRunning
    ));
    exit(&mut s, &clock, 1.0);
    request(&mut s, C2, Request::Subscribe, clock.at(1.0));
    assert_eq!(
        request(&mut s, C1, Request::Restart, clock.at(2.0)),
        [Action::ReleasePipes, Action::KillEscapees, Action::Spawn]
    );
    let actions = s.step(Event::Spawned { pid: pid(101) }, clock.at(2.0));
    assert_eq!(
        actions,
        [Action::Save, Action::Send(C2, Response::Event(Announce::Restarted)), ok(C1)]
    );
    assert_eq!((s.restarts, s.info().pid, s.status.clone()), (1, Some(pid(101)), Status::Running));
    assert_eq!(s.ended_ms, None);
}

#[test]
fn a_failed_restart_is_refused_and_a_restart_during_a_delete_too() {
    let (mut s, clock) = running();
    exit(&mut s, &clock, 1.0);
    request(&mut s, C1, Request::Restart, clock.at(2.0));
    let failed = s.step(Event::SpawnFailed { message: "no such program".into() }, clock.at(2.0));
    assert!(refused(&failed, RefusalKind::Failed));
    assert_eq!(s.leader, Leader::Exited);
    let (mut s, clock) = running();
    request(&mut s, C1, Request::Delete, clock.at(0.0));
    s.step(Event::Reaped { exit: Exit::Code(0) }, clock.at(0.0));
    assert!(refused(&request(&mut s, C2, Request::Restart, clock.at(0.0)), RefusalKind::Failed));
}

#[test]
fn metadata_and_info_requests() {
    let (mut s, clock) = running();
    let meta = json!({"owner": "alice"}).as_object().cloned().unwrap();
    assert_eq!(
        request(&mut s, C1, Request::ApplyMeta { meta }, clock.at(0.0)),
        [Action::Save, ok(C1)]
    );
    let info = request(&mut s, C1, Request::Info, clock.at(0.0));
    assert!(
        matches!(&info[..], [Action::Send(C1, Response::Info(i))] if i.meta.get("owner") == Some(&json!("alice")))
    );
    let hello = Request::Hello { version: 2, task: "t".into() };
    assert!(refused(&request(&mut s, C1, hello, clock.at(0.0)), RefusalKind::BadRequest));
}
