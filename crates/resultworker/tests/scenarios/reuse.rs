//! Reuse of job processes (issue 19): the default reuses them, `max_jobs_per_process` recycles
//! a child after n jobs, `fork_per_job` gives each job a fresh process.

use std::collections::HashMap;
use std::time::Duration;

use procyard_core::testkit::wait_for;
use procyard_resultworker::{Config, Error, Job, ResultFuture, ResultWorker};

fn cfg(max_workers: usize) -> Config {
    Config::default()
        .max_workers(max_workers)
        .backoff(Duration::from_millis(20), Duration::from_secs(1))
}

/// How many jobs each process ran.
fn per_pid(pids: &[u32]) -> HashMap<u32, usize> {
    let mut counts = HashMap::new();
    for pid in pids {
        *counts.entry(*pid).or_insert(0) += 1;
    }
    counts
}

fn pid_job() -> Job {
    Job::function("pid", &())
}

pub(crate) fn resultworker_default_reuses_job_processes() {
    assert!(Config::default().reuse_processes, "reuse is the default");
    let w = ResultWorker::new(cfg(2)).expect("start");
    let pids: Vec<u32> = (0..30).map(|_| w.submit::<u32>(pid_job()).wait().unwrap()).collect();
    let distinct = per_pid(&pids).len();
    // Two slots and at most a spare: nowhere near a process per job.
    assert!(distinct <= 3, "30 jobs ran in {distinct} processes");
    w.stop(Duration::from_secs(10));
}

pub(crate) fn resultworker_max_jobs_per_process_recycles_children() {
    let w = ResultWorker::new(cfg(1).max_jobs_per_process(3)).expect("start");
    // One after another: each child runs exactly its three jobs, then a fresh one takes over.
    let pids: Vec<u32> = (0..12).map(|_| w.submit::<u32>(pid_job()).wait().unwrap()).collect();
    let counts = per_pid(&pids);
    assert_eq!(counts.len(), 4, "12 jobs, 3 per process: {pids:?}");
    assert!(counts.values().all(|&n| n == 3), "{pids:?}");
    // A burst (jobs written ahead into busy children) keeps the limit too, loses nothing.
    let w2 = ResultWorker::new(cfg(2).max_jobs_per_process(3)).expect("start");
    let burst: Vec<ResultFuture<u32>> = (0..60).map(|_| w2.submit(pid_job())).collect();
    let pids: Vec<u32> = burst.iter().map(|f| f.wait().unwrap()).collect();
    let counts = per_pid(&pids);
    assert!(counts.values().all(|&n| n <= 3), "a child ran more than 3 jobs: {counts:?}");
    assert!(counts.len() >= 20, "60 jobs, at most 3 per process: {counts:?}");
    w.stop(Duration::from_secs(10));
    w2.stop(Duration::from_secs(10));
}

pub(crate) fn resultworker_fork_per_job_runs_each_job_in_a_fresh_process() {
    let w = ResultWorker::new(cfg(2).fork_per_job()).expect("start");
    assert!(!w.config().reuse_processes);
    let pids: Vec<u32> = (0..10).map(|_| w.submit::<u32>(pid_job()).wait().unwrap()).collect();
    assert_eq!(per_pid(&pids).len(), 10, "a process per job: {pids:?}");
    let burst: Vec<ResultFuture<u32>> = (0..20).map(|_| w.submit(pid_job())).collect();
    let pids: Vec<u32> = burst.iter().map(|f| f.wait().unwrap()).collect();
    assert_eq!(per_pid(&pids).len(), 20, "a process per job in a burst: {pids:?}");
    w.stop(Duration::from_secs(10));
}

/// A stop in reuse mode: jobs still in the worker's queue end as stopped at once; the few
/// written ahead into the busy child's pipe (at most 8) run within the grace; none is lost.
pub(crate) fn resultworker_stop_with_jobs_written_ahead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_string_lossy().into_owned();
    let w = ResultWorker::new(cfg(1)).expect("start");
    let running = w.submit::<(u64, u64)>(Job::function("rendezvous", &(&d, "started", "gate")));
    let queued: Vec<ResultFuture<u64>> =
        (0..20u64).map(|i| w.submit(Job::function("square", &i))).collect();
    let started = dir.path().join("started");
    wait_for("the first job to start", Duration::from_secs(60), || started.exists());
    let stopper = {
        let w = w.clone();
        std::thread::spawn(move || w.stop(Duration::from_secs(60)))
    };
    // Those the worker still held end as stopped while the first job is held at its gate.
    let held_back = queued.last().expect("jobs").wait_timeout(Duration::from_secs(60));
    assert!(matches!(held_back, Some(Err(Error::Stopped))), "last job: {held_back:?}");
    std::fs::write(dir.path().join("gate"), b"").expect("open the gate");
    stopper.join().expect("stop panicked");
    assert!(running.wait().is_ok(), "the in-flight job lost its result");
    let mut values = 0;
    for (i, f) in queued.iter().enumerate() {
        match f.wait() {
            Ok(v) => {
                assert_eq!(v, (i * i) as u64);
                values += 1;
            }
            Err(Error::Stopped) => {}
            Err(e) => panic!("job {i}: {e}"),
        }
    }
    assert!(values <= 8, "{values} jobs ran after the stop: only those written ahead may");
}

/// The listener thread held up (a callback that waits): small results fill the direct pipe
/// from the children, the rest go through the worker (which the children wake, whether or not
/// it watches their report pipe), and every result arrives, right, once the listener goes on.
pub(crate) fn resultworker_results_arrive_while_the_listener_is_held_up() {
    const JOBS: u64 = 5_000;
    let w = ResultWorker::new(cfg(2)).expect("start");
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_s = dir.path().to_string_lossy().into_owned();
    let rendezvous = |mark: &str, wait_for: &str| {
        Job::function("rendezvous", &(dir_s.clone(), mark.to_owned(), wait_for.to_owned()))
    };
    // Its callback holds the listener thread until `release`; registered while the job waits
    // at its gate, so it runs there, not here.
    let gate = w.submit::<(u64, u64)>(rendezvous("", "open"));
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = std::sync::Mutex::new(held);
    gate.on_set(move |_| {
        let _ = held.lock().map(|rx| rx.recv_timeout(Duration::from_secs(60)));
    });
    std::fs::write(dir.path().join("open"), b"").expect("open the gate");
    // About 100 KB of result frames, more than a pipe holds; the last job marks that the
    // children have run them all (each child runs its jobs in order).
    let futures: Vec<ResultFuture<u64>> =
        (0..JOBS).map(|i| w.submit(Job::function("square", &i))).collect();
    let last = w.submit::<(u64, u64)>(rendezvous("last", ""));
    let mark = dir.path().join("last");
    wait_for("the last job to run", Duration::from_secs(60), || mark.exists());
    release.send(()).expect("the callback waits");
    for (i, f) in futures.iter().enumerate() {
        let value = f.wait_timeout(Duration::from_secs(60)).expect("a result");
        assert_eq!(value.expect("a value"), (i * i) as u64, "job {i}");
    }
    assert!(gate.wait().is_ok() && last.wait().is_ok());
    w.stop(Duration::from_secs(10));
}
