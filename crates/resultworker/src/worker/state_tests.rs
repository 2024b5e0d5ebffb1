//! The worker's transitions, one event kind at a time, without a process or a clock.

use super::*;
use crate::output::CommandOutput;
use crate::wire::{TAG_VALUE, job_message};

const MS: Duration = Duration::from_millis(1);

fn state(max_workers: usize, reuse: bool) -> State {
    State::new(max_workers, reuse, HashSet::from(["f".to_owned()]))
}

fn function(key: u64, timeout: Option<Duration>) -> Queued {
    let message = job_message(key, "f", b"1").into_boxed_slice();
    Queued { key, work: Work::Function(message), timeout }
}

fn command(key: u64) -> Queued {
    Queued { key, work: Work::Command(Box::default()), timeout: None }
}

fn step(state: &mut State, event: Event, now: Instant) -> Vec<Action> {
    let mut actions = Vec::new();
    state.step(event, now, &mut actions);
    actions
}

fn killed(signal: Signal) -> Exit {
    Exit::Signal { signal, core_dumped: false }
}

fn value(body: &[u8]) -> Vec<u8> {
    encode_report(TAG_VALUE, body)
}

/// The keys the actions start, in order.
fn starts(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| if let Action::Start(j) = a { Some(j.key) } else { None })
        .collect()
}

/// The error an action sends for `key`.
fn error_for(actions: &[Action], key: u64) -> WireError {
    for action in actions {
        if let Action::Send { key: k, report } = action
            && *k == key
            && let Some((&TAG_ERROR, body)) = report.split_first()
        {
            return serde_json::from_slice(body).expect("an error body");
        }
    }
    panic!("no error sent for key {key}: {actions:?}");
}

/// Runs `key` as child `id` (a function job, started and recorded).
fn running(state: &mut State, key: u64, id: ChildId, timeout: Option<Duration>, t: Instant) {
    step(state, Event::Run(function(key, timeout)), t);
    assert_eq!(starts(&step(state, Event::Admit, t)), [key]);
    let started = Event::Started { key, id, kind: Kind::Function, timeout, further: 0 };
    assert!(step(state, started, t).is_empty());
}

#[test]
fn run_and_admit_start_at_most_max_workers() {
    let t = Instant::now();
    let mut s = state(2, false);
    for key in 1..=3 {
        assert!(step(&mut s, Event::Run(function(key, None)), t).is_empty());
    }
    assert_eq!(starts(&step(&mut s, Event::Admit, t)), [1, 2]);
    assert!(step(&mut s, Event::Admit, t).is_empty(), "both slots are taken by starts");
    for (key, id) in [(1, 10), (2, 11)] {
        let started = Event::Started { key, id, kind: Kind::Function, timeout: None, further: 0 };
        step(&mut s, started, t);
    }
    assert!(step(&mut s, Event::Admit, t).is_empty());
    // A job that reported no longer counts, even before its child exits.
    let actions = step(&mut s, Event::Report { id: 10, report: value(b"1"), recyclable: true }, t);
    assert_eq!(actions, [Action::Send { key: 1, report: value(b"1") }, Action::Retire { id: 10 }]);
    assert_eq!(starts(&step(&mut s, Event::Admit, t)), [3]);
    assert!(step(&mut s, Event::Admit, t).is_empty());
}

#[test]
fn admit_refuses_an_unknown_function_without_starting_it() {
    let t = Instant::now();
    let mut s = state(1, false);
    let message = job_message(4, "nope", b"1").into_boxed_slice();
    step(&mut s, Event::Run(Queued { key: 4, work: Work::Function(message), timeout: None }), t);
    step(&mut s, Event::Run(command(5)), t);
    let actions = step(&mut s, Event::Admit, t);
    assert_eq!(error_for(&actions, 4), WireError::UnknownFunction { name: "nope".into() });
    assert_eq!(starts(&actions), [5], "the slot goes to the next job");
}

#[test]
fn start_failed_sends_the_error_and_frees_the_slot() {
    let t = Instant::now();
    let mut s = state(1, false);
    step(&mut s, Event::Run(function(1, None)), t);
    step(&mut s, Event::Run(function(2, None)), t);
    assert_eq!(starts(&step(&mut s, Event::Admit, t)), [1]);
    let failed = WireError::Failed { message: "unable to fork".into() };
    let actions = step(&mut s, Event::StartFailed { key: 1, error: failed.clone() }, t);
    assert_eq!(error_for(&actions, 1), failed);
    assert_eq!(starts(&step(&mut s, Event::Admit, t)), [2]);
}

#[test]
fn a_child_never_born_fails_its_job_typed_and_frees_the_slot() {
    let t = Instant::now();
    let mut s = state(1, false);
    running(&mut s, 1, 0, None, t);
    step(&mut s, Event::Run(function(2, None)), t);
    assert!(starts(&step(&mut s, Event::Admit, t)).is_empty(), "the one slot is taken");
    let lost = WireError::Failed { message: "the zygote died".into() };
    let actions = step(&mut s, Event::Lost { id: 0, error: lost.clone() }, t);
    assert_eq!(error_for(&actions, 1), lost);
    assert_eq!(starts(&step(&mut s, Event::Admit, t)), [2]);
    // One that timed out meanwhile ends as timed out; one that reported, as reported.
    let started =
        Event::Started { key: 2, id: 1, kind: Kind::Function, timeout: Some(MS), further: 0 };
    step(&mut s, started, t);
    assert_eq!(step(&mut s, Event::Tick, t + 2 * MS), [Action::Kill { id: 1 }]);
    let actions = step(&mut s, Event::Lost { id: 1, error: lost.clone() }, t + 3 * MS);
    assert!(matches!(error_for(&actions, 2), WireError::TimedOut { timeout_ms: 1 }));
    running(&mut s, 3, 2, None, t);
    step(&mut s, Event::Report { id: 2, report: value(b"9"), recyclable: false }, t);
    assert!(step(&mut s, Event::Lost { id: 2, error: lost }, t).is_empty());
    assert_eq!(s.verdict(), None);
}

#[test]
fn report_sends_the_value_once_and_a_bad_one_kills_the_child() {
    let t = Instant::now();
    let mut s = state(2, false);
    running(&mut s, 1, 0, None, t);
    let report = Event::Report { id: 0, report: value(b"42"), recyclable: true };
    let actions = step(&mut s, report, t);
    assert_eq!(actions[0], Action::Send { key: 1, report: value(b"42") });
    let again = Event::Report { id: 0, report: value(b"43"), recyclable: true };
    assert!(step(&mut s, again, t).is_empty(), "a second report is ignored");
    // Its exit sends nothing more.
    let exited = Event::Exited {
        id: 0,
        exit: Exit::Code(0),
        output: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
    };
    assert!(step(&mut s, exited, t).is_empty());

    running(&mut s, 2, 1, None, t);
    let actions = step(&mut s, Event::Report { id: 1, report: vec![7, 1], recyclable: true }, t);
    assert_eq!(actions[0], Action::Kill { id: 1 });
    assert!(matches!(error_for(&actions, 2), WireError::Malformed { .. }));
    let exited = Event::Exited {
        id: 1,
        exit: killed(Signal::KILL),
        output: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
    };
    assert!(step(&mut s, exited, t).is_empty(), "its outcome was sent already");
}

#[test]
fn exited_judges_how_a_job_ended() {
    let t = Instant::now();
    let mut s = state(4, false);
    // A function child that exits without a complete report: crashed, or malformed at 0.
    running(&mut s, 1, 0, None, t);
    let actions = step(
        &mut s,
        Event::Exited {
            id: 0,
            exit: Exit::Code(3),
            output: vec![0],
            stderr: Vec::new(),
            truncated: false,
        },
        t,
    );
    assert_eq!(error_for(&actions, 1), WireError::Crashed { exit: Exit::Code(3) });
    running(&mut s, 2, 1, None, t);
    let actions = step(
        &mut s,
        Event::Exited {
            id: 1,
            exit: Exit::Code(0),
            output: vec![],
            stderr: Vec::new(),
            truncated: false,
        },
        t,
    );
    assert!(matches!(error_for(&actions, 2), WireError::Malformed { .. }));
    // A command: its stdout and stderr, in the value on success and in the error otherwise.
    for (key, id, exit) in [(3, 2, Exit::Code(0)), (4, 3, killed(Signal::TERM))] {
        step(&mut s, Event::Run(command(key)), t);
        assert_eq!(starts(&step(&mut s, Event::Admit, t)), [key]);
        let started = Event::Started { key, id, kind: Kind::Command, timeout: None, further: 0 };
        step(&mut s, started, t);
        let (output, stderr) = (b"hi\n".to_vec(), b"oops\n".to_vec());
        let exited = Event::Exited { id, exit, output, stderr, truncated: true };
        let actions = step(&mut s, exited, t);
        let expected = CommandOutput {
            status: exit,
            stdout: b"hi\n".to_vec(),
            stderr: b"oops\n".to_vec(),
            truncated: true,
        };
        if exit.success() {
            let json = serde_json::to_vec(&expected).unwrap();
            assert_eq!(actions, [Action::Send { key, report: value(&json) }]);
        } else {
            let output = Box::new(expected);
            assert_eq!(error_for(&actions, key), WireError::CommandFailed { output });
        }
    }
    assert_eq!(s.verdict(), None);
}

#[test]
fn exited_before_the_start_was_recorded_is_ignored() {
    let t = Instant::now();
    let mut s = state(1, false);
    step(&mut s, Event::Run(function(1, None)), t);
    assert_eq!(starts(&step(&mut s, Event::Admit, t)), [1]);
    // The child's exit arrives before its start is recorded (or it is a spare's): nothing.
    let early = Event::Exited {
        id: 0,
        exit: Exit::Code(0),
        output: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
    };
    assert!(step(&mut s, early, t).is_empty());
    let started = Event::Started { key: 1, id: 0, kind: Kind::Function, timeout: None, further: 0 };
    step(&mut s, started, t);
    let report = Event::Report { id: 0, report: value(b"1"), recyclable: false };
    assert_eq!(step(&mut s, report, t)[0], Action::Send { key: 1, report: value(b"1") });
}

#[test]
fn tick_kills_a_job_past_its_timeout_and_a_late_report_is_ignored() {
    let t = Instant::now();
    let mut s = state(1, false);
    running(&mut s, 1, 0, Some(100 * MS), t);
    assert_eq!(s.next_deadline(), Some(t + 100 * MS));
    assert!(step(&mut s, Event::Tick, t + 99 * MS).is_empty());
    assert_eq!(step(&mut s, Event::Tick, t + 100 * MS), [Action::Kill { id: 0 }]);
    assert_eq!(s.next_deadline(), None, "a timed-out job has no deadline left");
    assert!(step(&mut s, Event::Tick, t + 200 * MS).is_empty(), "killed once");
    // The reply that arrives after the timeout: too late.
    let late = Event::Report { id: 0, report: value(b"1"), recyclable: true };
    assert!(step(&mut s, late, t + 201 * MS).is_empty());
    let exited = Event::Exited {
        id: 0,
        exit: killed(Signal::KILL),
        output: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
    };
    let actions = step(&mut s, exited, t + 202 * MS);
    assert_eq!(error_for(&actions, 1), WireError::TimedOut { timeout_ms: 100 });
}

#[test]
fn stop_drains_then_term_then_kill_and_a_second_stop_changes_nothing() {
    let t = Instant::now();
    let mut s = state(1, false);
    running(&mut s, 1, 0, None, t);
    step(&mut s, Event::Run(function(2, None)), t);
    let actions = step(&mut s, Event::Stop { grace: 1000 * MS }, t);
    assert_eq!(error_for(&actions, 2), WireError::Stopped, "a queued job ends as stopped");
    assert!(s.is_stopping());
    // A second stop with a shorter grace does not cut the first one short.
    assert!(step(&mut s, Event::Stop { grace: Duration::ZERO }, t + MS).is_empty());
    assert_eq!(s.next_deadline(), Some(t + 1000 * MS));
    let late = step(&mut s, Event::Run(function(3, None)), t + 2 * MS);
    assert_eq!(error_for(&late, 3), WireError::Stopped);
    assert!(step(&mut s, Event::Admit, t + 2 * MS).is_empty(), "nothing starts while stopping");
    assert!(step(&mut s, Event::Tick, t + 999 * MS).is_empty());
    assert_eq!(step(&mut s, Event::Tick, t + 1000 * MS), [Action::SignalAll(Signal::TERM)]);
    assert_eq!(s.next_deadline(), Some(t + 1000 * MS + TERM_GRACE));
    let kill_at = t + 1000 * MS + TERM_GRACE;
    assert_eq!(step(&mut s, Event::Tick, kill_at), [Action::SignalAll(Signal::KILL)]);
    assert_eq!(s.next_deadline(), None);
    assert!(step(&mut s, Event::Tick, kill_at + 1000 * MS).is_empty());
    assert_eq!(s.verdict(), None, "a job still runs");
    let exited = Event::Exited {
        id: 0,
        exit: killed(Signal::TERM),
        output: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
    };
    let actions = step(&mut s, exited, kill_at);
    assert_eq!(error_for(&actions, 1), WireError::Stopped);
    assert_eq!(s.verdict(), Some(Verdict::Done));
}

#[test]
fn stop_lets_a_job_that_finishes_within_the_grace_deliver() {
    let t = Instant::now();
    let mut s = state(1, false);
    running(&mut s, 1, 0, None, t);
    step(&mut s, Event::Stop { grace: 1000 * MS }, t);
    let report = Event::Report { id: 0, report: value(b"9"), recyclable: true };
    let actions = step(&mut s, report, t + 10 * MS);
    assert_eq!(actions, [Action::Send { key: 1, report: value(b"9") }, Action::Retire { id: 0 }]);
    let exited = Event::Exited {
        id: 0,
        exit: Exit::Code(0),
        output: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
    };
    assert!(step(&mut s, exited, t + 11 * MS).is_empty());
    assert_eq!(s.verdict(), Some(Verdict::Done));
}

#[test]
fn closed_pipes_abandon_the_worker_unless_it_is_stopping() {
    let t = Instant::now();
    let mut s = state(1, false);
    assert_eq!(s.verdict(), None);
    step(&mut s, Event::InputClosed, t);
    assert_eq!(s.verdict(), Some(Verdict::Abandoned), "the application is gone");

    let mut s = state(1, false);
    running(&mut s, 1, 0, None, t);
    step(&mut s, Event::Stop { grace: MS }, t);
    step(&mut s, Event::InputClosed, t);
    assert_eq!(s.verdict(), None, "a stop closes the request pipe and finishes its jobs");
    step(&mut s, Event::OutputClosed, t);
    assert_eq!(s.verdict(), Some(Verdict::Abandoned), "nobody reads the results any more");
}

#[test]
fn reuse_writes_jobs_ahead_and_recycles_the_child() {
    let t = Instant::now();
    let mut s = state(1, true);
    for key in 1..=3 {
        step(&mut s, Event::Run(function(key, None)), t);
    }
    assert_eq!(starts(&step(&mut s, Event::Admit, t)), [1]);
    let started =
        Event::Started { key: 1, id: 0, kind: Kind::Function, timeout: None, further: usize::MAX };
    // As soon as the child is recorded, not at the next admission (it would finish its one
    // job first and be recycled for nothing).
    let actions = step(&mut s, started, t);
    let ahead: Vec<ChildId> = actions
        .iter()
        .filter_map(|a| if let Action::WriteAhead { id, .. } = a { Some(*id) } else { None })
        .collect();
    assert_eq!(ahead, [0, 0], "jobs 2 and 3 are written into the busy child's pipe");
    assert!(step(&mut s, Event::Admit, t).is_empty(), "nothing left to start or write");
    // The first write-ahead failed: job 3 goes back to the queue.
    step(&mut s, Event::WriteAheadFailed { id: 0 }, t);
    let report = Event::Report { id: 0, report: value(b"1"), recyclable: true };
    assert_eq!(step(&mut s, report, t), [Action::Send { key: 1, report: value(b"1") }]);
    // Job 2 was the last written ahead: its report ends the child's work, and it is recycled.
    let report = Event::Report { id: 0, report: value(b"2"), recyclable: true };
    assert_eq!(
        step(&mut s, report, t),
        [Action::Send { key: 2, report: value(b"2") }, Action::Recycle { id: 0 }]
    );
    let stray = Event::Report { id: 0, report: value(b"3"), recyclable: true };
    assert!(step(&mut s, stray, t).is_empty(), "a recycled child's job is not the state's");
    assert_eq!(starts(&step(&mut s, Event::Admit, t)), [3], "job 3 went back to the queue");
}

#[test]
fn reuse_recycles_and_an_exit_requeues_jobs_written_ahead() {
    let t = Instant::now();
    let mut s = state(1, true);
    for key in 1..=2 {
        step(&mut s, Event::Run(function(key, None)), t);
    }
    step(&mut s, Event::Admit, t);
    let started =
        Event::Started { key: 1, id: 0, kind: Kind::Function, timeout: None, further: usize::MAX };
    assert!(matches!(step(&mut s, started, t)[..], [Action::WriteAhead { id: 0, .. }]));
    // The child dies during job 1: its outcome is a crash, job 2 runs elsewhere.
    let exited = Event::Exited {
        id: 0,
        exit: killed(Signal::SEGV),
        output: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
    };
    let actions = step(&mut s, exited, t);
    assert_eq!(error_for(&actions, 1), WireError::Crashed { exit: killed(Signal::SEGV) });
    assert_eq!(starts(&step(&mut s, Event::Admit, t)), [2]);
    let started =
        Event::Started { key: 2, id: 1, kind: Kind::Function, timeout: None, further: usize::MAX };
    step(&mut s, started, t);
    let report = Event::Report { id: 1, report: value(b"2"), recyclable: true };
    assert_eq!(
        step(&mut s, report, t),
        [Action::Send { key: 2, report: value(b"2") }, Action::Recycle { id: 1 }]
    );
    assert!(s.wants_spare(0) && !s.wants_spare(1));
}

#[test]
fn reuse_stops_writing_ahead_at_the_job_limit_and_retires_the_child() {
    let t = Instant::now();
    let mut s = state(1, true);
    for key in 1..=5 {
        step(&mut s, Event::Run(function(key, None)), t);
    }
    assert_eq!(starts(&step(&mut s, Event::Admit, t)), [1]);
    // A child that may take two more jobs after job 1 (a limit of 3 per process).
    let started = Event::Started { key: 1, id: 0, kind: Kind::Function, timeout: None, further: 2 };
    let ahead = step(&mut s, started, t);
    assert_eq!(ahead.len(), 2, "only jobs 2 and 3 are written ahead: {ahead:?}");
    for key in 1..=2u64 {
        let report = Event::Report { id: 0, report: value(b"1"), recyclable: true };
        assert_eq!(step(&mut s, report, t), [Action::Send { key, report: value(b"1") }]);
    }
    // Its third job is its last: it is retired (exits), not recycled.
    let report = Event::Report { id: 0, report: value(b"3"), recyclable: true };
    assert_eq!(
        step(&mut s, report, t),
        [Action::Send { key: 3, report: value(b"3") }, Action::Retire { id: 0 }]
    );
    assert_eq!(starts(&step(&mut s, Event::Admit, t)), [4], "a new child takes job 4");
}

#[test]
fn spares_are_wanted_only_when_idle_or_reusing_under_load() {
    let t = Instant::now();
    let mut s = state(2, false);
    assert!(s.wants_spare(0));
    assert!(!s.wants_spare(1));
    running(&mut s, 1, 0, None, t);
    assert!(!s.wants_spare(0), "a fork would delay the lone job's result");
    step(&mut s, Event::Stop { grace: MS }, t);
    let mut idle = state(1, false);
    step(&mut idle, Event::Stop { grace: MS }, t);
    assert!(!idle.wants_spare(0), "no spare while stopping");
}

#[test]
fn a_burst_queue_shrinks_as_it_drains() {
    let (mut s, t) = (state(1, false), Instant::now());
    for key in 0..4_000 {
        step(&mut s, Event::Run(function(key, None)), t);
    }
    assert!(s.queue.capacity() >= 4_000);
    for key in 0..4_000 {
        assert_eq!(starts(&step(&mut s, Event::Admit, t)), [key]);
        let (len, capacity) = (s.queue.len(), s.queue.capacity());
        assert!(capacity <= QUEUE_KEEP || capacity <= 4 * (len + 1), "{len} in {capacity}");
        let error = WireError::Failed { message: "no fork".into() };
        step(&mut s, Event::StartFailed { key, error }, t);
    }
    assert!(s.queue.capacity() <= QUEUE_KEEP, "{} slots kept", s.queue.capacity());
}

#[test]
fn a_report_delivered_straight_to_the_application_is_not_sent_again() {
    let t = Instant::now();
    let mut s = state(1, false);
    running(&mut s, 1, 0, None, t);
    let note = Event::Report { id: 0, report: vec![crate::wire::TAG_DELIVERED], recyclable: true };
    assert_eq!(step(&mut s, note, t), [Action::Retire { id: 0 }], "no Send");
    step(&mut s, Event::Run(function(2, None)), t);
    assert_eq!(starts(&step(&mut s, Event::Admit, t)), [2], "its slot is free");
}

#[test]
fn reports_are_needed_at_once_only_for_a_queue_a_timeout_or_a_stop() {
    let t = Instant::now();
    let mut s = state(1, true);
    running(&mut s, 1, 0, None, t);
    assert!(!s.needs_reports(), "a lone job without a timeout: its note can wait");
    step(&mut s, Event::Run(function(2, None)), t);
    assert!(s.needs_reports(), "a job queued behind it");
    let mut s = state(2, true);
    running(&mut s, 1, 0, Some(MS), t);
    assert!(s.needs_reports(), "a timeout");
    let mut s = state(1, true);
    step(&mut s, Event::Stop { grace: MS }, t);
    assert!(s.needs_reports(), "a stop");
}
