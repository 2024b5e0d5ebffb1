//! Issue 15: one waiting shape (by reference, all, any, as completed, across schedulers),
//! captured command output, and messages that say each thing once.

use std::time::Duration;

use procyard_procmgr::{
    Command, Exit, OUTPUT_LIMIT, Outcome, Scheduler, Strategy, Task, as_completed, wait_all,
    wait_all_timeout, wait_any, wait_any_timeout,
};

const LONG: Duration = Duration::from_secs(30);

fn schedule(scheduler: &Scheduler, script: &str) -> procyard_procmgr::Handle {
    scheduler.schedule(Task::command(Command::shell(script))).expect("schedule")
}

#[test]
fn procmgr_hardening_handles_wait_by_reference_from_threads() {
    let scheduler = Scheduler::new(Strategy::Throttled(4)).unwrap();
    let handles: Vec<_> = (0..6).map(|i| schedule(&scheduler, &format!("exit {i}"))).collect();
    // Clones waited on from other threads, the originals by reference afterwards.
    let waiters: Vec<_> =
        handles.iter().cloned().map(|h| std::thread::spawn(move || h.wait_timeout(LONG))).collect();
    for (i, w) in waiters.into_iter().enumerate() {
        assert_eq!(w.join().unwrap(), Some(Outcome::Exited { code: i as u8 }));
    }
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(h.wait(), Outcome::Exited { code: i as u8 });
    }
    assert_eq!(wait_all(&handles).len(), 6);
}

#[test]
fn procmgr_hardening_wait_any_and_as_completed_across_schedulers() {
    let (a, b) =
        (Scheduler::new(Strategy::Simple).unwrap(), Scheduler::new(Strategy::Simple).unwrap());
    let (gate_dir, gate) = {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("gate");
        (dir, gate)
    };
    // The first waits for a line on a FIFO that the test writes later; the second ends at once.
    let made = std::process::Command::new("mkfifo").arg(&gate).status().unwrap();
    assert!(made.success(), "mkfifo: {made}");
    let script = format!("read _ < {}; exit 7", gate.display());
    let handles = vec![schedule(&a, &script), schedule(&b, "exit 0")];
    assert!(wait_all_timeout(&handles, Duration::from_millis(50)).is_none());
    let (index, outcome) = wait_any_timeout(&handles, LONG).expect("the quick one");
    assert_eq!((index, outcome), (1, Outcome::Exited { code: 0 }));
    let mut order = as_completed(&handles);
    assert_eq!(order.next().map(|(i, _)| i), Some(1), "the finished one first");
    assert!(order.next_timeout(Duration::from_millis(50)).is_none(), "the gated one still runs");
    std::fs::write(&gate, b"go\n").unwrap();
    assert_eq!(order.next(), Some((0, Outcome::Exited { code: 7 })));
    assert_eq!(order.next(), None);
    assert_eq!(wait_any(&handles).map(|(i, _)| i), Some(0), "the lowest index of those done");
    drop(gate_dir);
}

#[test]
fn procmgr_hardening_captured_output_is_kept_and_bounded() {
    let scheduler = Scheduler::new(Strategy::Simple).unwrap();
    let script = format!("head -c {} /dev/zero; echo why >&2; exit 9", OUTPUT_LIMIT + 4096);
    let task = Task::command(Command::shell(script)).capture_output();
    let outcome = scheduler.schedule(task).unwrap().wait_timeout(LONG).expect("done in time");
    assert!(!outcome.is_success());
    let output = outcome.output().expect("captured");
    assert_eq!(output.status, Exit::Code(9));
    assert_eq!(output.stdout.len(), OUTPUT_LIMIT);
    assert_eq!(output.stderr, b"why\n");
    assert!(output.truncated);
    // A grandchild that keeps the streams open does not hold the outcome back.
    let task = Task::command(Command::shell("sleep 30 & echo started")).capture_output();
    let outcome = scheduler.schedule(task).unwrap().wait_timeout(LONG).expect("done in time");
    assert_eq!(outcome.output().map(|o| &o.stdout[..]), Some(&b"started\n"[..]));
    scheduler.stop(Duration::ZERO).unwrap();
}

#[test]
fn procmgr_hardening_start_failure_names_its_cause_once() {
    let scheduler = Scheduler::new(Strategy::Simple).unwrap();
    let task = Task::command(Command::new("/nonexistent/procyard-program"));
    let outcome = scheduler.schedule(task).unwrap().wait_timeout(LONG).expect("done in time");
    let Outcome::Lost { reason } = outcome else { panic!("expected Lost, got {outcome:?}") };
    assert!(reason.starts_with("not started: unable to start command /nonexistent"), "{reason}");
    assert!(reason.contains("No such file"), "the cause is missing: {reason}");
    let segments: Vec<&str> = reason.split(": ").collect();
    let mut unique = segments.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), segments.len(), "a segment repeats: {reason}");
}
