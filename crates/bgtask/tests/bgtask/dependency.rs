//! Issue 15, "the crates as dependencies": what a newcomer writes from the docs works, and
//! what goes wrong says so (once) instead of hanging.

use std::time::Instant;

use procyard_bgtask::{DEFAULT_TIMEOUT, report};

use super::*;

/// A supervisor that never answers (SIGSTOPped) costs a call its timeout, not forever: every
/// handle starts with [`DEFAULT_TIMEOUT`], and a call that runs out gets `TimedOut`.
#[test]
fn bgtask_dependency_stuck_supervisor_times_out() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(SpawnOptions::new(["sleep", "300"]));
    let sup = ProcessIdentity::of(task.info().unwrap().supervisor_pid).unwrap().expect("alive");
    procyard_core::kill_process(sup.pid, Signal::STOP).unwrap();
    let short = Duration::from_millis(300);
    // A new handle: the connect is accepted by the kernel, the handshake never answered.
    let mut fresh = sb.pool.task(task.id()).unwrap();
    assert_eq!(fresh.timeout(), Some(DEFAULT_TIMEOUT));
    fresh.set_timeout(Some(short));
    let started = Instant::now();
    let err = fresh.info().unwrap_err();
    assert!(matches!(err, Error::TimedOut { after, .. } if after == short), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    // A kept connection: the request is written, the answer never comes.
    assert_eq!(task.timeout(), Some(DEFAULT_TIMEOUT));
    task.set_timeout(Some(short));
    let err = task.info().unwrap_err();
    assert!(matches!(err, Error::TimedOut { .. }), "{err}");
    assert!(report(&err).contains("did not answer within 300ms"), "{}", report(&err));
    // Running again, it answers the next call (on a new connection).
    procyard_core::kill_process(sup.pid, Signal::CONT).unwrap();
    task.set_timeout(None);
    assert_eq!(task.info().unwrap().status, Status::Running);
    task.delete().unwrap();
}

/// A misspelt status is an error, not a filter that silently matches nothing; in Rust it does
/// not compile (`Filter::status` takes a `StatusKind`, see its doc-test).
#[test]
fn bgtask_dependency_misspelt_status_is_an_error() {
    let sb = Sandbox::new();
    let err = "runing".parse::<StatusKind>().unwrap_err();
    assert!(matches!(&err, Error::UnknownStatus { given } if given == "runing"), "{err}");
    assert_eq!("running".parse::<StatusKind>().unwrap(), StatusKind::Running);
    let out = sb.cli(&["list", "--status", "runing"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("runing"), "{out:?}");
}

/// A start failure says each thing once: the program, then the kernel's reason.
#[test]
fn bgtask_dependency_spawn_error_says_each_thing_once() {
    let sb = Sandbox::new();
    for pool in [sb.pool.clone(), TaskPool::open(&sb.pool_dir).unwrap().launch(Launch::Exec)] {
        let err = pool.spawn(&SpawnOptions::new(["/nonexistent/program"])).unwrap_err();
        let text = report(&err);
        assert!(text.starts_with("unable to spawn /nonexistent/program: "), "{text}");
        assert_eq!(text.matches("/nonexistent/program").count(), 1, "{text}");
        assert_eq!(text.matches("unable to").count(), 1, "{text}");
        assert!(text.contains("No such file"), "{text}");
    }
}
