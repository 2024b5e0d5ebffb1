//! A fork per job through the worker's zygote (issue 19): each job's process is the worker's
//! child in a group of its own, its outcome typed as when the worker forked it, it dies with
//! the worker, and the worker survives the zygote's death.

use std::path::Path;
use std::time::Duration;

use procyard_core::Exit;
use procyard_resultworker::{Config, Error, Job, ResultFuture, ResultWorker};

use super::{LONG, get, recorded_pids, sigkill, wait_gone};

fn cfg(max_workers: usize) -> Config {
    Config::default()
        .max_workers(max_workers)
        .backoff(Duration::from_millis(20), Duration::from_secs(1))
        .fork_per_job()
}

/// `(ppid, pgid)` of a live process, from `/proc/PID/stat`.
fn parent_and_group(pid: u32) -> (u32, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("a live process");
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    (fields[1].parse().expect("ppid"), fields[2].parse().expect("pgid"))
}

/// The process group of `pid`, unless it has ended (a zombie, or reaped: gone from `/proc`).
/// One read: a job's child can be reaped at any moment.
fn live_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    (fields.first() != Some(&"Z")).then(|| fields.get(2)?.parse().ok()).flatten()
}

/// The worker's zygote: its child in the worker's own process group (job processes and spare
/// children lead groups of their own). A job's child that ends between the listing and its
/// stat is not one.
fn zygote_of(worker: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{worker}/task/{worker}/children"))
        .expect("the worker's children");
    let (_, group) = parent_and_group(worker);
    let zygotes: Vec<u32> = children
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .filter(|&pid| live_group(pid) == Some(group))
        .collect();
    assert_eq!(zygotes.len(), 1, "one zygote among the worker's children: {zygotes:?}");
    zygotes[0]
}

fn sleeper(dir: &Path) -> Job {
    Job::function("record_and_sleep", &(dir.to_string_lossy(), 60_000u64))
}

pub(crate) fn resultworker_fork_per_job_children_are_the_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two slots for the sleepers, two for the jobs after them.
    let w = ResultWorker::new(cfg(4)).expect("start");
    let worker = w.worker_pid().expect("worker pid").as_raw() as u32;
    // Two at once: at most one can be a spare the worker forked itself.
    let sleeping: Vec<ResultFuture<u32>> = (0..2).map(|_| w.submit(sleeper(dir.path()))).collect();
    for pid in recorded_pids(dir.path(), 2) {
        assert_eq!(parent_and_group(pid), (worker, pid), "job process {pid}");
    }
    // Outcomes are typed as ever.
    assert!(matches!(
        get(&w.submit::<()>(Job::function("fail", &"nope"))),
        Err(Error::Failed { message }) if message == "nope"
    ));
    assert!(matches!(
        get(&w.submit::<()>(Job::function("panic", &"boom"))),
        Err(Error::Failed { message }) if message.contains("boom")
    ));
    assert!(matches!(
        get(&w.submit::<()>(Job::function("exit", &3))),
        Err(Error::Crashed { exit: Exit::Code(3) })
    ));
    let timed = w
        .submit::<(u64, u64)>(Job::function("span", &60_000u64).timeout(Duration::from_millis(50)));
    assert!(matches!(get(&timed), Err(Error::TimedOut { .. })));
    assert_eq!(get(&w.submit::<u64>(Job::function("square", &9))).unwrap(), 81);
    // The job processes die with their worker, and their jobs fail as lost.
    let job_pids = recorded_pids(dir.path(), 2);
    sigkill(worker);
    for f in &sleeping {
        let outcome = get(f);
        assert!(matches!(outcome, Err(Error::WorkerLost)), "{outcome:?}");
    }
    wait_gone(&job_pids, LONG);
    assert_eq!(get(&w.submit::<u64>(Job::function("square", &5))).unwrap(), 25);
    w.stop(LONG);
}

pub(crate) fn resultworker_fork_per_job_survives_its_zygote() {
    let w = ResultWorker::new(cfg(2)).expect("start");
    let worker = w.worker_pid().expect("worker pid").as_raw() as u32;
    assert_eq!(get(&w.submit::<u64>(Job::function("square", &3))).unwrap(), 9);
    let zygote = zygote_of(worker);
    // Killed amid a burst: each job gets its value, or fails typed if it was ordered from the
    // zygote and not started; none hangs.
    let burst: Vec<ResultFuture<u64>> =
        (0..2_000u64).map(|i| w.submit(Job::function("square", &i))).collect();
    sigkill(zygote);
    let mut lost = 0;
    for (i, f) in burst.iter().enumerate() {
        match get(f) {
            Ok(v) => assert_eq!(v, (i * i) as u64),
            Err(Error::Failed { message }) if message.contains("zygote") => lost += 1,
            Err(e) => panic!("job {i}: {e}"),
        }
    }
    assert!(lost <= 2, "{lost} jobs lost: at most max_workers were ordered and not born");
    // The same worker goes on, forking each job itself.
    assert_eq!(w.worker_pid().map(|p| p.as_raw() as u32), Some(worker));
    let pids: Vec<u32> =
        (0..10).map(|_| get(&w.submit::<u32>(Job::function("pid", &()))).unwrap()).collect();
    let distinct: std::collections::HashSet<&u32> = pids.iter().collect();
    assert_eq!(distinct.len(), 10, "a process per job: {pids:?}");
    w.stop(LONG);
    wait_gone(&[zygote, worker], LONG);
}
