//! Jobs sent ahead to a longlived worker (`prefetch`, issue 19), with the real Rust worker of
//! `cancel.rs` (`serve_cancellable`, which says in its hello that it takes jobs ahead):
//! they are in flight (leased, shown by `status`), a worker SIGKILLed with jobs sent ahead
//! loses none of them and none runs twice, and a job cancelled before its worker starts it
//! never runs.

use std::time::Duration;

use procyard_core::Signal;
use procyard_daemon::Client;
use procyard_daemon::queue::{AttemptEnd, JobState};

use crate::cancel::rust_worker_task;
use crate::sandbox::Sandbox;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// The one worker of task `pf` holds `n` jobs: one running, `n - 1` sent ahead.
fn holds(sb: &Sandbox, n: usize) -> bool {
    let status = sb.status();
    let g = status.groups.iter().find(|g| g.name == "pf").expect("group pf");
    g.in_flight == n && g.workers.iter().any(|w| w.job.is_some() && w.ahead.len() == n - 1)
}

fn task() -> String {
    let mut t = rust_worker_task("pf");
    t.push_str("prefetch = 4\nbackoff_initial = \"50ms\"\n");
    t
}

#[test]
fn daemon_prefetch_sigkilled_worker_loses_no_job_sent_ahead() {
    let mut sb = Sandbox::new(&task());
    sb.start();
    let out = sb.out_dir();
    let first = sb.publish("pf.a", b"hold-first").remove(0);
    let ahead: Vec<String> = (0..3)
        .map(|i| {
            let payload = format!("mark:{}", out.join(format!("job{i}")).display());
            sb.publish("pf.b", payload.as_bytes()).remove(0)
        })
        .collect();
    sb.wait_until("one job running and three sent ahead", SECS(30), |sb| holds(sb, 4));
    let status = sb.status();
    let g = status.groups.iter().find(|g| g.name == "pf").expect("group");
    let w = &g.workers[0];
    assert_eq!(w.job.as_deref(), Some(first.as_str()));
    assert_eq!(w.ahead, ahead, "sent ahead in publish order");
    assert!(sb.side_effects().is_empty(), "none of them started");

    let pid = procyard_core::Pid::from_raw(w.pid).expect("pid");
    procyard_core::kill_process(pid, Signal::KILL).expect("kill the worker");
    let mut all = vec![first.clone()];
    all.extend(ahead.iter().cloned());
    let mut client = Client::new(sb.load_config());
    let waited = client.wait(&all, Some(SECS(60))).expect("wait");
    assert!(!waited.timed_out, "every job ends: {}", sb.log());
    for j in &waited.jobs {
        assert_eq!(j.state, JobState::Done, "job {} done", j.id);
    }
    // The ones sent ahead ran exactly once, in the new worker, their attempt not counted.
    let runs: Vec<(String, usize)> = (0..3).map(|i| (format!("job{i}"), 1)).collect();
    assert_eq!(sb.side_effects(), runs);
    for id in &ahead {
        let j = client.job(id).expect("job");
        assert_eq!((j.attempts.len(), j.deliveries), (1, 1), "job {id}: one attempt");
        assert_eq!(j.attempts[0].delivery, 1, "job {id}: its first delivery");
    }
    // The one it ran when it was killed: that attempt failed, the next was done.
    assert_eq!(client.job(&first).expect("job").attempts.len(), 2);
}

/// A job cancelled while it waits in its worker (sent ahead) is never run. The job before it
/// waits for its own cancel, which the daemon sends after the other one (one `cancel` of
/// both, in that order, on the same pipe): when it ends, the worker has read both.
#[test]
fn daemon_prefetch_cancel_before_start_never_runs() {
    let mut sb = Sandbox::new(&task());
    sb.start();
    let out = sb.out_dir();
    let first = sb.publish("pf.a", b"wait-cancel").remove(0);
    let doomed = sb.publish("pf.b", format!("mark:{}", out.join("doomed").display()).as_bytes());
    let doomed = doomed[0].clone();
    let after = sb.publish("pf.c", format!("mark:{}", out.join("after").display()).as_bytes());
    sb.wait_until("one job running and two sent ahead", SECS(30), |sb| holds(sb, 3));
    let cancel = sb.cli(&["cancel", &doomed, &first]);
    assert!(cancel.status.success(), "{}", String::from_utf8_lossy(&cancel.stderr));
    let mut client = Client::new(sb.load_config());
    let all = [first.clone(), doomed.clone(), after[0].clone()];
    let waited = client.wait(&all, Some(SECS(60))).expect("wait");
    assert!(!waited.timed_out, "{}", sb.log());
    let states: Vec<JobState> = waited.jobs.iter().map(|j| j.state).collect();
    assert_eq!(states, [JobState::Cancelled, JobState::Cancelled, JobState::Done]);
    assert_eq!(sb.side_effects(), [("after".to_owned(), 1)], "the cancelled one never ran");
    let record = client.job(&doomed).expect("job");
    assert_eq!(record.attempts.len(), 1);
    assert_eq!(record.attempts[0].end, Some(AttemptEnd::Cancelled));
}
