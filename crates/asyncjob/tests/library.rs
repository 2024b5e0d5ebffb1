//! The library API from a multi-threaded process (a test harness): `start` cannot fork here,
//! so the monitor is hosted by the `procyard-asyncjob` binary.

mod common;

use std::time::Duration;

use common::{BIN, Sandbox, is_alive, try_wait_for, wait_for};
use procyard_asyncjob::{AsyncJob, Error, Signal, StartFailure, Status};

fn job(sb: &Sandbox) -> procyard_asyncjob::AsyncJobOptions {
    AsyncJob::options()
        .state_file(sb.path("lib.state"))
        .monitor_program(BIN)
        .env(common::TAG_VAR, &sb.tag)
}

#[test]
fn threaded_caller_starts_kills_and_reaps() {
    let sb = Sandbox::new("threaded_caller_starts_kills_and_reaps");
    let job = job(&sb).command(["sleep", "30"]).build().unwrap();
    let started = job.start().unwrap();
    assert_eq!(started.status, Status::Running);
    assert!(is_alive(started.pid));
    assert!(matches!(job.start(), Err(Error::AlreadyExists { status: Status::Running, .. })));
    assert!(matches!(job.reap(), Err(Error::WrongStatus { status: Status::Running, .. })));
    assert!(matches!(job.wait(Some(Duration::from_millis(50))), Err(Error::Timeout { .. })));
    let killed = job.signal(Signal::TERM).unwrap();
    assert_eq!(killed.status, Status::Finished);
    assert_eq!(killed.signal, Some(Signal::TERM));
    assert_eq!(job.reap().unwrap().status, Status::Finished);
    assert_eq!(job.check().unwrap().status, Status::Absent);
    sb.assert_no_strays();
}

#[test]
fn threaded_caller_stops_with_term_then_kill() {
    let sb = Sandbox::new("threaded_caller_stops_with_term_then_kill");
    // A job that obeys SIGTERM ends with it, well within the grace.
    let obeys = job(&sb).command(["sleep", "30"]).build().unwrap();
    obeys.start().unwrap();
    let stopped = obeys.stop(Duration::from_secs(20)).unwrap();
    assert_eq!(stopped.status, Status::Finished);
    assert_eq!(stopped.signal, Some(Signal::TERM));
    obeys.reap().unwrap();
    // One that ignores it is SIGKILLed once the grace is over.
    let ready = sb.path("trapped");
    let script = format!("trap '' TERM; touch {}; sleep 30", ready.display());
    let job = job(&sb).shell(script).build().unwrap();
    job.start().unwrap();
    wait_for("the job to set its trap", Duration::from_secs(20), || ready.exists());
    let stopped = job.stop(Duration::from_millis(200)).unwrap();
    assert_eq!(stopped.status, Status::Finished);
    assert_eq!(stopped.signal, Some(Signal::KILL));
    assert!(!stopped.timed_out, "a stop is not a timeout");
    // Only a running job can be stopped.
    assert!(matches!(
        job.stop(Duration::from_secs(1)),
        Err(Error::WrongStatus { status: Status::Finished, .. })
    ));
    job.reap().unwrap();
    sb.assert_no_strays();
}

#[test]
fn threaded_caller_gets_start_errors() {
    let sb = Sandbox::new("threaded_caller_gets_start_errors");
    let job = job(&sb).command(["procyard-no-such-program"]).build().unwrap();
    match job.start() {
        Err(Error::StartFailed { kind, message, .. }) => {
            assert_eq!(kind, StartFailure::Spawn);
            assert!(message.contains("procyard-no-such-program"), "{message}");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    let failed = job.check().unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(job.reap().unwrap().status, Status::Failed);
    // A missing monitor host is a clear error too.
    let job = AsyncJob::options()
        .state_file(sb.path("other.state"))
        .monitor_program(sb.path("no-such-binary"))
        .command(["true"])
        .build()
        .unwrap();
    assert!(matches!(job.start(), Err(Error::StartFailed { .. })));
    sb.assert_no_strays();
}

#[test]
fn threaded_concurrent_starts_yield_one_job_and_wait_sees_the_end() {
    let sb = Sandbox::new("threaded_concurrent_starts_yield_one_job_and_wait_sees_the_end");
    let job = job(&sb).shell("exit 5").build().unwrap();
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8).map(|_| scope.spawn(|| job.start())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    let done = job.wait(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(done.status, Status::Finished);
    assert_eq!(done.exitstatus, Some(5));
    assert!(done.ended_at.is_some());
    job.reap().unwrap();
    sb.assert_no_strays();
}

#[test]
fn no_state_file_runs_but_tracks_nothing() {
    let sb = Sandbox::new("no_state_file_runs_but_tracks_nothing");
    let job = AsyncJob::options()
        .monitor_program(BIN)
        .env(common::TAG_VAR, &sb.tag)
        .stdout(sb.path("out"))
        .shell("echo ran")
        .build()
        .unwrap();
    assert_eq!(job.start().unwrap().status, Status::Running);
    assert_eq!(job.check().unwrap().status, Status::Absent);
    assert!(matches!(job.kill(), Err(Error::NoStateFile)));
    assert!(matches!(job.stop(Duration::from_secs(1)), Err(Error::NoStateFile)));
    assert!(matches!(job.reap(), Err(Error::NoStateFile)));
    // Nothing tracks this job, so its output is the only sign of its end. `start` returns once
    // the job's exec is committed, which may be before the new program (and its tagged
    // environment, which `assert_no_strays` looks for) is in place: wait for the output first.
    let out = sb.path("out");
    assert!(
        try_wait_for(Duration::from_secs(20), || std::fs::read_to_string(&out)
            .is_ok_and(|s| s == "ran\n")),
        "the job never wrote its output: {:?}",
        std::fs::read_to_string(&out)
    );
    sb.assert_no_strays();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "ran\n");
}

/// A start failure says each thing once (the state file, the program, the kernel's reason),
/// from a threaded caller (the monitor hosted by the binary) and from the CLI (forked).
#[test]
fn asyncjob_dependency_start_error_says_each_thing_once() {
    let sb = Sandbox::new("asyncjob_dependency_start_error_says_each_thing_once");
    let job = job(&sb).command(["procyard-no-such-program"]).build().unwrap();
    let text = procyard_asyncjob::report(&job.start().unwrap_err());
    let cli = sb.job(&["start", "--", "procyard-no-such-program"]);
    assert_eq!(cli.stdout, "failed");
    for text in [text.as_str(), cli.stderr.trim()] {
        assert!(text.contains("unable to start job"), "{text}");
        assert!(text.contains("No such file"), "{text}");
        assert_eq!(text.matches("procyard-no-such-program").count(), 1, "{text}");
        assert_eq!(text.matches("unable to spawn").count(), 1, "{text}");
        assert_eq!(text.matches("lib.state").count() + text.matches("job.state").count(), 1);
    }
    sb.assert_no_strays();
}
