//! End-to-end scenarios with a real worker process. `harness = false`: the worker re-executes
//! this binary, whose `main` calls `procyard_resultworker::init()` first, and then runs the
//! named tests one after the other on the main thread.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use procyard_core::testkit::{self, wait_for};
use procyard_core::{Deadline, Exit, Pid};
use procyard_resultworker::{
    CommandOutput, Config, Error, Job, ResultFuture, ResultWorker, register, wait_all, wait_any,
};
use serde_json::{Value, json};

#[path = "scenarios/hardening.rs"]
mod hardening;
#[path = "scenarios/reuse.rs"]
mod reuse;
#[path = "scenarios/zygote.rs"]
mod zygote;

fn micros_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn register_functions() {
    register("echo_string", |s: String| Ok::<_, String>(s));
    register("echo_value", |v: Value| Ok::<_, String>(v));
    register("square", |x: u64| Ok::<_, String>(x * x));
    register("span", |ms: u64| {
        let start = micros_now();
        std::thread::sleep(Duration::from_millis(ms));
        Ok::<_, String>((start, micros_now()))
    });
    // Records its pid as a file in `dir`, then sleeps.
    register("record_and_sleep", |(dir, ms): (String, u64)| {
        let pid = std::process::id();
        std::fs::write(Path::new(&dir).join(pid.to_string()), b"").map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(ms));
        Ok::<_, String>(pid)
    });
    // Leaves the mark `dir/mark` (unless `mark` is empty), then waits for `dir/wait_for` to
    // appear (at most a minute, then gives up) and returns when it started and ended. Jobs of
    // a test meet through it, or stay pending until the test opens their gate.
    register("rendezvous", |(dir, mark, wait_for): (String, String, String)| {
        let start = micros_now();
        let dir = Path::new(&dir);
        if !mark.is_empty() {
            std::fs::write(dir.join(&mark), b"").map_err(|e| e.to_string())?;
        }
        let deadline = Deadline::after(Duration::from_secs(60));
        while !dir.join(&wait_for).exists() && !deadline.is_expired() {
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok::<_, String>((start, micros_now()))
    });
    register("fail", |msg: String| Err::<(), _>(msg));
    register("panic", |msg: String| -> Result<(), String> { panic!("{msg}") });
    register("exit", |code: i32| -> Result<(), String> { std::process::exit(code) });
    register("pid", |(): ()| Ok::<_, String>(std::process::id()));
    // The descriptors open in the job's process, with what they point to.
    register("fds", |(): ()| {
        let fds = procyard_core::fd::open_fds().map_err(|e| e.to_string())?;
        Ok::<_, String>(
            fds.iter()
                .map(|fd| {
                    let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    format!("{fd} -> {target}")
                })
                .collect::<Vec<String>>(),
        )
    });
}

fn cfg(max_workers: usize) -> Config {
    Config::default()
        .max_workers(max_workers)
        .backoff(Duration::from_millis(20), Duration::from_secs(1))
}

fn worker(max_workers: usize) -> ResultWorker {
    match ResultWorker::new(cfg(max_workers)) {
        Ok(w) => w,
        Err(e) => panic!("unable to start a worker: {e}"),
    }
}

/// How long anything that should take milliseconds may take on a loaded machine.
const LONG: Duration = Duration::from_secs(60);

fn get<T: serde::de::DeserializeOwned>(f: &ResultFuture<T>) -> Result<T, Error> {
    match f.wait_timeout(LONG) {
        Some(r) => r,
        None => panic!("future {} not set within {LONG:?}", f.key()),
    }
}

/// Whether a process is gone (absent, or a zombie waiting for its reaper).
fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pids: &[u32], within: Duration) {
    wait_for(&format!("processes {pids:?} to end"), within, || pids.iter().all(|&p| is_gone(p)));
}

fn recorded_pids(dir: &Path, n: usize) -> Vec<u32> {
    let read = || -> Vec<u32> {
        std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default()
    };
    wait_for(&format!("{n} jobs to record their pids"), LONG, || read().len() >= n);
    read()
}

/// A job that stays pending until [`open_gate`] (see the `rendezvous` function).
fn gated(dir: &Path) -> Job {
    Job::function("rendezvous", &(dir.to_string_lossy(), "", "gate"))
}

fn open_gate(dir: &Path) {
    std::fs::write(dir.join("gate"), b"").expect("open the gate");
}

/// Waits (polling: a job's files have no event to wait on) until `path` exists.
fn wait_for_file(path: &Path) {
    wait_for(&format!("{} to appear", path.display()), LONG, || path.exists());
}

/// Children of this process that are resultworker workers.
fn worker_children() -> Vec<u32> {
    children(false)
}

/// Children of this process (zombies included when `any`), workers only unless `any`.
fn children(any: bool) -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        if fields.get(1) != Some(&me.as_str()) || (!any && fields.first() == Some(&"Z")) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if any || cmdline.starts_with(b"procyard-resultworker\0") {
            out.push(pid);
        }
    }
    out
}

fn sigkill(pid: u32) {
    let pid = Pid::from_raw(pid as i32).expect("positive pid");
    let _ = procyard_core::kill_process(pid, procyard_core::Signal::KILL);
}

// ---- the seed's scenarios ----

fn seed_start_twice_returns_same_worker() {
    let a = ResultWorker::start(cfg(2)).expect("start");
    let b = ResultWorker::start(cfg(2)).expect("start again");
    assert!(a.worker_pid().is_some());
    assert_eq!(a.worker_pid(), b.worker_pid());
    // Another configuration is not silently ignored: an error, and the running one is intact.
    assert!(matches!(ResultWorker::start(cfg(3)), Err(Error::AlreadyRunning)));
    let global = ResultWorker::global().expect("the global worker");
    assert_eq!(global.worker_pid(), a.worker_pid());
    assert_eq!(global.config().max_workers, 2);
    assert_eq!(get(&b.submit::<u64>(Job::function("square", &5))).unwrap(), 25);
    a.stop(Duration::from_secs(5));
    assert!(!b.is_running());
    assert!(ResultWorker::global().is_none());
    let c = ResultWorker::start(cfg(2)).expect("start after stop");
    assert!(c.is_running());
    assert_ne!(c.worker_pid(), a.worker_pid());
    c.stop(Duration::from_secs(5));
}

fn seed_three_futures_get_their_own_results() {
    let w = worker(2);
    let futures: Vec<ResultFuture<u64>> =
        (1..=3).map(|x| w.submit(Job::function("square", &(x * 10)))).collect();
    let keys: Vec<_> = futures.iter().map(ResultFuture::key).collect();
    assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2]);
    let values: Vec<u64> = futures.iter().rev().map(|f| get(f).unwrap()).collect();
    assert_eq!(values, vec![900, 400, 100]);
}

fn seed_key_gone_once_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = worker(1);
    // Pending until its gate opens, however slowly this thread runs meanwhile.
    let f = w.submit::<(u64, u64)>(gated(dir.path()));
    let key = f.key();
    let other = w.get_result_future::<(u64, u64)>(key).expect("the key is known while pending");
    assert_eq!(w.pending_count(), 1);
    open_gate(dir.path());
    let (start, end) = get(&other).unwrap();
    assert!(end >= start);
    assert!(w.get_result_future::<(u64, u64)>(key).is_none(), "key still there once set");
    assert_eq!(w.pending_count(), 0);
    assert_eq!(get(&f).unwrap(), (start, end));
}

fn seed_max_workers_one_runs_one_at_a_time() {
    let w = worker(1);
    let futures: Vec<ResultFuture<(u64, u64)>> =
        (0..4).map(|_| w.submit(Job::function("span", &40u64))).collect();
    let mut spans: Vec<(u64, u64)> = futures.iter().map(|f| get(f).unwrap()).collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "jobs overlapped: {pair:?}");
    }
    // With two workers two jobs do overlap: each waits for the other to have started (one at
    // a time, each would wait in vain for a minute, and their spans would not overlap).
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_string_lossy().into_owned();
    let w2 = worker(2);
    let futures: Vec<ResultFuture<(u64, u64)>> = [("a", "b"), ("b", "a")]
        .into_iter()
        .map(|(me, other)| w2.submit(Job::function("rendezvous", &(&d, me, other))))
        .collect();
    let spans: Vec<(u64, u64)> = futures.iter().map(|f| get(f).unwrap()).collect();
    assert!(spans[0].0 < spans[1].1 && spans[1].0 < spans[0].1, "two workers did not overlap");
}

// ---- R1-R8 ----

fn resultworker_r1_binary_safe_payloads() {
    let w = worker(2);
    let strings = ["abcde", "12345", "a\nb\nc", "\n\n\n\n\n", "x\0y\rz", "\u{1F600}\n\u{e9}"];
    let futures: Vec<_> =
        strings.iter().map(|s| w.submit::<String>(Job::function("echo_string", s))).collect();
    for (s, f) in strings.iter().zip(&futures) {
        assert_eq!(get(f).unwrap(), *s);
    }
    let arrays = [
        json!([1, 2, 3, 4, 5]),
        json!(["a", "b\n", "c", "d", "e"]),
        json!([[], {}, null, 1.5, "\n"]),
    ];
    for a in &arrays {
        assert_eq!(get(&w.submit::<Value>(Job::function("echo_value", a))).unwrap(), *a);
    }
    let big: String = (0..10 * 1024 * 1024).map(|i| if i % 61 == 0 { '\n' } else { 'q' }).collect();
    let back = get(&w.submit::<String>(Job::function("echo_string", &big))).unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back == big, "10 MiB payload changed on the way");
    let out = get(&w.submit::<CommandOutput>(Job::command("printf", ["a\\nb\\0c"]))).unwrap();
    assert_eq!(out.stdout, b"a\nb\0c");
    // The listener survived all of it.
    assert_eq!(get(&w.submit::<u64>(Job::function("square", &3))).unwrap(), 9);
}

fn resultworker_r2_worker_death_fails_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_s = dir.path().to_string_lossy().into_owned();
    let w = worker(10);
    let first = w.worker_pid().expect("worker pid");
    let futures: Vec<ResultFuture<u32>> = (0..10)
        .map(|_| w.submit(Job::function("record_and_sleep", &(dir_s.clone(), 60_000u64))))
        .collect();
    let job_pids = recorded_pids(dir.path(), 10);
    let killed_at = Instant::now();
    sigkill(first.as_raw() as u32);
    for f in &futures {
        assert!(matches!(get(f), Err(Error::WorkerLost)), "expected WorkerLost");
    }
    let took = killed_at.elapsed();
    // At once, not after some long timer (a generous bound: the machine may be loaded).
    assert!(took < Duration::from_secs(30), "pending futures failed only after {took:?}");
    assert_eq!(w.pending_count(), 0);
    // The dead worker's job children die with it.
    wait_gone(&job_pids, LONG);
    // A new worker takes new jobs.
    assert_eq!(get(&w.submit::<u64>(Job::function("square", &12))).unwrap(), 144);
    assert_ne!(w.worker_pid(), Some(first));
    assert!(w.restart_count() >= 1);
}

fn app_helper() {
    let dir = std::env::args().nth(2).unwrap_or_default();
    let w = ResultWorker::start(cfg(2)).expect("start in helper");
    let f = w.submit::<u32>(Job::function("record_and_sleep", &(dir.clone(), 60_000u64)));
    let pid = w.worker_pid().map_or(0, Pid::as_raw);
    println!("worker {pid}");
    let _ = f.wait();
}

fn resultworker_r3_worker_dies_with_killed_app() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current exe");
    let mut app = std::process::Command::new(exe)
        .arg("--app-helper")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn helper app");
    let mut line = String::new();
    let stdout = app.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("read the helper's line");
    let worker_pid: u32 =
        line.trim().strip_prefix("worker ").and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(worker_pid > 0, "helper said {line:?}");
    let job_pids = recorded_pids(dir.path(), 1);
    assert!(!is_gone(worker_pid));
    sigkill(app.id());
    let _ = app.wait();
    wait_gone(&[worker_pid], LONG);
    wait_gone(&job_pids, LONG);
}

fn resultworker_r4_stop_lets_inflight_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_string_lossy().into_owned();
    // A fork per job: the second job waits in the worker's queue, not written ahead into the
    // busy child's pipe (reuse mode; see `resultworker_stop_with_jobs_written_ahead`).
    let w = ResultWorker::new(cfg(1).fork_per_job()).expect("start");
    // The first job runs until its gate opens; the second waits behind it (one at a time).
    let running = w.submit::<(u64, u64)>(Job::function("rendezvous", &(&d, "started", "gate")));
    let queued = w.submit::<u64>(Job::function("square", &3));
    // Stop once the first job is running (it leaves its mark as it starts).
    wait_for_file(&dir.path().join("started"));
    let stopper = {
        let w = w.clone();
        std::thread::spawn(move || w.stop(LONG))
    };
    // The worker drops what it had queued as it takes the stop, while the first job is still
    // held at its gate; then that job may finish, within the grace.
    let queued = queued.wait_timeout(LONG);
    open_gate(dir.path());
    stopper.join().expect("stop panicked");
    assert!(matches!(queued, Some(Err(Error::Stopped))), "queued job: {queued:?}");
    assert!(get(&running).is_ok(), "the in-flight job lost its result");
    assert!(matches!(get(&w.submit::<u64>(Job::function("square", &2))), Err(Error::Stopped)));
    assert_eq!(w.pending_count(), 0);

    // A job that outlives the grace period is TERMed, then resolved as stopped.
    let dir = tempfile::tempdir().expect("tempdir");
    let w = worker(1);
    let long = w.submit::<u32>(Job::function(
        "record_and_sleep",
        &(dir.path().to_string_lossy().into_owned(), 60_000u64),
    ));
    let pids = recorded_pids(dir.path(), 1);
    let began = Instant::now();
    w.stop(Duration::from_millis(100));
    // Not waiting for the minute-long job (a generous bound: the machine may be loaded).
    assert!(began.elapsed() < Duration::from_secs(30), "stop took {:?}", began.elapsed());
    assert!(matches!(get(&long), Err(Error::Stopped)));
    wait_gone(&pids, LONG);
}

fn resultworker_r5_on_set_after_set_fires() {
    let w = worker(1);
    let f = w.submit::<u64>(Job::function("square", &4));
    assert_eq!(get(&f).unwrap(), 16);
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    f.on_set(move |r| {
        if r.is_ok_and(|v| v == 16) {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    assert_eq!(hits.load(Ordering::SeqCst), 1, "on_set after set did not fire at once");
    // Registered before the result: fires once, on the listener thread.
    let (tx, rx) = std::sync::mpsc::channel();
    let g = w.submit::<u64>(Job::function("square", &6));
    g.on_set(move |r| {
        let _ = tx.send(r.ok());
    });
    assert_eq!(rx.recv_timeout(LONG).expect("callback ran"), Some(36));
    assert_eq!(w.pending_count(), 0);
}

fn resultworker_r6_keys_do_not_leak() {
    let w = worker(2);
    let futures: Vec<ResultFuture<u64>> =
        (0..10_000u64).map(|i| w.submit(Job::function("square", &i))).collect();
    for (i, f) in futures.iter().enumerate() {
        assert_eq!(get(f).unwrap(), (i * i) as u64);
    }
    drop(futures);
    assert_eq!(w.pending_count(), 0);
    // Never awaited futures: dropping them forgets their keys at once (their jobs stay
    // pending until the gate opens, however slowly this thread runs).
    let dir = tempfile::tempdir().expect("tempdir");
    let slow: Vec<ResultFuture<(u64, u64)>> = (0..5).map(|_| w.submit(gated(dir.path()))).collect();
    assert_eq!(w.pending_count(), 5);
    drop(slow);
    assert_eq!(w.pending_count(), 0);
    open_gate(dir.path());
    // Failed submissions leave no key: arguments that cannot be serialized.
    let mut bad: HashMap<(u8, u8), u8> = HashMap::new();
    bad.insert((1, 2), 3);
    let f = w.submit::<Value>(Job::function("echo_value", &bad));
    assert!(matches!(f.try_get(), Some(Err(Error::Encode { .. }))));
    assert_eq!(w.pending_count(), 0);
    // The worker is still fine after the discarded results arrive.
    assert_eq!(get(&w.submit::<u64>(Job::function("square", &9))).unwrap(), 81);
    assert_eq!(w.pending_count(), 0);
}

/// glibc's reserved real-time signals (32 and 33, below `SIGRTMIN`): glibc itself installs a
/// handler for one of them when the process starts its first thread (thread cancellation), so
/// they say nothing about what this library does.
const GLIBC_RESERVED_SIGNALS: u64 = (1 << (32 - 1)) | (1 << (33 - 1));

/// The caught signals an application can see (`SigCgt` of `/proc/self/status`, bit n-1 for
/// signal n): 1..=31 and `SIGRTMIN` (34)..=64, without glibc's reserved 32 and 33.
fn signals_caught() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("a SigCgt line in /proc/self/status");
    mask & !GLIBC_RESERVED_SIGNALS
}

fn resultworker_r7_no_signal_handlers_and_term_ends_worker() {
    let before = signals_caught();
    let w = worker(1);
    assert_eq!(get(&w.submit::<u64>(Job::function("square", &2))).unwrap(), 4);
    assert_eq!(
        signals_caught(),
        before,
        "starting a worker installed a signal handler (SigCgt {:#x}, was {before:#x})",
        signals_caught()
    );
    let pending = w.submit::<(u64, u64)>(Job::function("span", &30_000u64));
    let pid = w.worker_pid().expect("worker pid");
    procyard_core::kill_process(pid, procyard_core::Signal::TERM).expect("TERM the worker");
    assert!(matches!(get(&pending), Err(Error::WorkerLost)), "TERM did not end the worker");
    w.stop(Duration::from_secs(2));
    assert_eq!(signals_caught(), before);
}

fn resultworker_r8_wait_any_and_all_have_one_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = worker(2);
    // The first job cannot finish before its gate opens: only the second can be the first.
    let futures: Vec<ResultFuture<(u64, u64)>> =
        vec![w.submit(gated(dir.path())), w.submit(Job::function("span", &1u64))];
    let (index, result) = wait_any(&futures).expect("non-empty");
    assert_eq!(index, 1);
    assert!(result.is_ok());
    open_gate(dir.path());
    // Once both are set, wait_any still returns one pair and wait_all a Vec of both.
    let all = wait_all(&futures);
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(Result::is_ok));
    let (index, _) = wait_any(&futures).expect("non-empty");
    assert_eq!(index, 0);
    let one = wait_all(&futures[..1]);
    assert_eq!(one.len(), 1);
}

// ---- outcomes ----

fn resultworker_outcomes_are_typed() {
    let w = worker(2);
    match get(&w.submit::<()>(Job::function("fail", &"nope"))) {
        Err(Error::Failed { message }) => assert_eq!(message, "nope"),
        other => panic!("expected Failed, got {other:?}"),
    }
    match get(&w.submit::<()>(Job::function("panic", &"boom"))) {
        Err(Error::Failed { message }) => assert!(message.contains("boom"), "{message}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(matches!(
        get(&w.submit::<()>(Job::function("exit", &3))),
        Err(Error::Crashed { exit: Exit::Code(3) })
    ));
    let started = Instant::now();
    let timed = w.submit::<(u64, u64)>(
        Job::function("span", &30_000u64).timeout(Duration::from_millis(100)),
    );
    assert!(matches!(get(&timed), Err(Error::TimedOut { .. })));
    // Not after the job's 30 s (a generous bound: the machine may be loaded).
    assert!(started.elapsed() < Duration::from_secs(25), "took {:?}", started.elapsed());
    assert!(matches!(
        get(&w.submit::<()>(Job::function("no_such_function", &()))),
        Err(Error::UnknownFunction { .. })
    ));
    assert!(matches!(
        get(&w.submit::<String>(Job::function("square", &2))),
        Err(Error::Decode { .. })
    ));
    match get(
        &w.submit::<CommandOutput>(Job::command("sh", ["-c", "echo so; echo far >&2; exit 4"]))
    ) {
        Err(Error::CommandFailed { output }) => {
            assert_eq!(output.status, Exit::Code(4));
            assert_eq!((&output.stdout[..], &output.stderr[..]), (&b"so\n"[..], &b"far\n"[..]));
        }
        other => panic!("expected CommandFailed with the output, got {other:?}"),
    }
    assert!(matches!(
        get(&w.submit::<CommandOutput>(Job::command("/nonexistent/program", Vec::<String>::new()))),
        Err(Error::Failed { .. })
    ));
    let out = get(&w.submit::<CommandOutput>(
        Job::command("sh", ["-c", "echo $GREETING; pwd"]).env("GREETING", "hello").current_dir("/"),
    ))
    .unwrap();
    assert_eq!(out.stdout, b"hello\n/\n");
    // Jobs run in children of the worker, not in the worker or the application.
    let pid = get(&w.submit::<u32>(Job::function("pid", &()))).unwrap();
    assert_ne!(Some(pid as i32), w.worker_pid().map(Pid::as_raw));
    assert_ne!(pid, std::process::id());
}

fn resultworker_concurrent_start_16_threads_one_worker() {
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                ResultWorker::start(cfg(2)).ok().and_then(|w| w.worker_pid())
            })
        })
        .collect();
    let pids: Vec<Option<Pid>> = threads.into_iter().map(|t| t.join().ok().flatten()).collect();
    assert!(pids[0].is_some());
    assert!(pids.iter().all(|p| *p == pids[0]), "several workers: {pids:?}");
    assert_eq!(worker_children().len(), 1, "worker processes: {:?}", worker_children());
    // The threads that started it are gone; the worker is still there and works.
    let w = ResultWorker::start(cfg(2)).expect("start");
    assert_eq!(get(&w.submit::<u64>(Job::function("square", &11))).unwrap(), 121);
    w.stop(Duration::from_secs(5));
    assert!(worker_children().is_empty());
}

fn resultworker_async_await() {
    struct ThreadWaker(std::thread::Thread);
    impl std::task::Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let w = worker(1);
    let mut f = w.submit::<u64>(Job::function("square", &8));
    let waker = std::task::Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let deadline = Deadline::after(LONG);
    loop {
        match std::pin::Pin::new(&mut f).poll(&mut cx) {
            std::task::Poll::Ready(r) => {
                assert_eq!(r.unwrap(), 64);
                break;
            }
            std::task::Poll::Pending => {
                assert!(!deadline.is_expired(), "never woken");
                std::thread::park_timeout(deadline.remaining());
            }
        }
    }
}

fn resultworker_job_children_hold_no_sibling_pipes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_s = dir.path().to_string_lossy().into_owned();
    let w = worker(4);
    let _busy: Vec<ResultFuture<u32>> = (0..3)
        .map(|_| w.submit(Job::function("record_and_sleep", &(dir_s.clone(), 30_000u64))))
        .collect();
    recorded_pids(dir.path(), 3);
    let fds = get(&w.submit::<Vec<String>>(Job::function("fds", &()))).unwrap();
    let private = |f: &&String| f.split(' ').next().and_then(|n| n.parse::<i32>().ok()) >= Some(3);
    let pipes: std::collections::HashSet<&str> = fds
        .iter()
        .filter(private)
        .filter_map(|f| f.split_once("pipe:").map(|(_, inode)| inode))
        .collect();
    // Beyond stdio: its job pipe, and the report pipe, the wake pipe (its write end) and the
    // direct pipe to the application that all job children share (the latter twice: as the
    // worker inherited it, close-on-exec, and reopened), and nothing of its three running
    // siblings or of the application.
    assert!(pipes.len() <= 4, "job child holds {} pipes: {fds:?}", pipes.len());
    assert!(fds.len() <= 10, "job child holds {} descriptors: {fds:?}", fds.len());
}

fn resultworker_reuse_processes_mode() {
    let w = ResultWorker::new(cfg(2).reuse_processes(true)).expect("start");
    // Values, errors and crashes; a crashed or timed-out child is replaced.
    let futures: Vec<ResultFuture<u64>> =
        (0..200u64).map(|i| w.submit(Job::function("square", &i))).collect();
    for (i, f) in futures.iter().enumerate() {
        assert_eq!(get(f).unwrap(), (i * i) as u64);
    }
    let pids: std::collections::HashSet<u32> =
        (0..20).map(|_| get(&w.submit::<u32>(Job::function("pid", &()))).unwrap()).collect();
    assert!(pids.len() <= 3, "children were not reused: {} pids", pids.len());
    assert!(matches!(
        get(&w.submit::<()>(Job::function("panic", &"boom"))),
        Err(Error::Failed { .. })
    ));
    assert!(matches!(
        get(&w.submit::<()>(Job::function("exit", &5))),
        Err(Error::Crashed { exit: Exit::Code(5) })
    ));
    let timed = w.submit::<(u64, u64)>(
        Job::function("span", &30_000u64).timeout(Duration::from_millis(100)),
    );
    assert!(matches!(get(&timed), Err(Error::TimedOut { .. })));
    // Jobs written ahead to a child that then crashes or times out run elsewhere.
    let one = ResultWorker::new(cfg(1).reuse_processes(true)).expect("start");
    let mut burst: Vec<ResultFuture<Value>> = Vec::new();
    for i in 0..60u64 {
        let job = match i {
            20 => Job::function("exit", &9),
            40 => Job::function("span", &30_000u64).timeout(Duration::from_millis(100)),
            _ => Job::function("echo_value", &json!(i)),
        };
        burst.push(one.submit(job));
    }
    for (i, f) in burst.iter().enumerate() {
        match (i, get(f)) {
            (20, r) => assert!(matches!(r, Err(Error::Crashed { .. })), "job 20: {r:?}"),
            (40, r) => assert!(matches!(r, Err(Error::TimedOut { .. })), "job 40: {r:?}"),
            (i, r) => assert_eq!(r.unwrap(), json!(i), "job {i}"),
        }
    }
    one.stop(Duration::from_secs(5));
    let big = "\n12345".repeat(300_000);
    assert_eq!(get(&w.submit::<String>(Job::function("echo_string", &big))).unwrap(), big);
    assert_eq!(get(&w.submit::<u64>(Job::function("square", &7))).unwrap(), 49);
    // Stop is prompt: idle reusable children exit when their job pipes close, long before
    // the grace would be over (a generous bound: the machine may be loaded).
    let began = Instant::now();
    w.stop(LONG);
    assert!(began.elapsed() < LONG / 2, "stop took {:?}", began.elapsed());
    wait_gone(&pids.into_iter().collect::<Vec<_>>(), LONG);
}

fn resultworker_program_without_init_is_a_start_error() {
    let started = Instant::now();
    match ResultWorker::new(cfg(1).program("/bin/true")) {
        Err(Error::WorkerNotReady { reason }) => assert!(reason.contains("init"), "{reason}"),
        Err(other) => panic!("expected WorkerNotReady, got {other}"),
        Ok(w) => panic!("a program without init() started a worker: {w:?}"),
    }
    // Told by the end of its pipe, not by the 30 s ready timeout (a generous bound: the
    // machine may be loaded).
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    match ResultWorker::new(cfg(1).program("/nonexistent/program")) {
        Err(Error::Start { .. }) => {}
        other => panic!("expected Start, got {other:?}"),
    }
}

type Test = testkit::Test;

const TESTS: &[Test] = &[
    (
        "resultworker_concurrent_start_16_threads_one_worker",
        resultworker_concurrent_start_16_threads_one_worker,
    ),
    ("seed_start_twice_returns_same_worker", seed_start_twice_returns_same_worker),
    ("seed_three_futures_get_their_own_results", seed_three_futures_get_their_own_results),
    ("seed_key_gone_once_set", seed_key_gone_once_set),
    ("seed_max_workers_one_runs_one_at_a_time", seed_max_workers_one_runs_one_at_a_time),
    ("resultworker_r1_binary_safe_payloads", resultworker_r1_binary_safe_payloads),
    ("resultworker_r2_worker_death_fails_pending", resultworker_r2_worker_death_fails_pending),
    ("resultworker_r3_worker_dies_with_killed_app", resultworker_r3_worker_dies_with_killed_app),
    ("resultworker_r4_stop_lets_inflight_finish", resultworker_r4_stop_lets_inflight_finish),
    ("resultworker_r5_on_set_after_set_fires", resultworker_r5_on_set_after_set_fires),
    ("resultworker_r6_keys_do_not_leak", resultworker_r6_keys_do_not_leak),
    (
        "resultworker_r7_no_signal_handlers_and_term_ends_worker",
        resultworker_r7_no_signal_handlers_and_term_ends_worker,
    ),
    (
        "resultworker_r8_wait_any_and_all_have_one_shape",
        resultworker_r8_wait_any_and_all_have_one_shape,
    ),
    ("resultworker_outcomes_are_typed", resultworker_outcomes_are_typed),
    ("resultworker_async_await", resultworker_async_await),
    (
        "resultworker_program_without_init_is_a_start_error",
        resultworker_program_without_init_is_a_start_error,
    ),
    (
        "resultworker_hardening_missing_init_fails_fast",
        hardening::resultworker_hardening_missing_init_fails_fast,
    ),
    (
        "resultworker_hardening_command_output_kept_and_bounded",
        hardening::resultworker_hardening_command_output_kept_and_bounded,
    ),
    (
        "resultworker_hardening_call_takes_borrowed_arguments",
        hardening::resultworker_hardening_call_takes_borrowed_arguments,
    ),
    ("resultworker_reuse_processes_mode", resultworker_reuse_processes_mode),
    ("resultworker_default_reuses_job_processes", reuse::resultworker_default_reuses_job_processes),
    (
        "resultworker_max_jobs_per_process_recycles_children",
        reuse::resultworker_max_jobs_per_process_recycles_children,
    ),
    ("resultworker_stop_with_jobs_written_ahead", reuse::resultworker_stop_with_jobs_written_ahead),
    (
        "resultworker_results_arrive_while_the_listener_is_held_up",
        reuse::resultworker_results_arrive_while_the_listener_is_held_up,
    ),
    (
        "resultworker_fork_per_job_runs_each_job_in_a_fresh_process",
        reuse::resultworker_fork_per_job_runs_each_job_in_a_fresh_process,
    ),
    (
        "resultworker_job_children_hold_no_sibling_pipes",
        resultworker_job_children_hold_no_sibling_pipes,
    ),
    (
        "resultworker_fork_per_job_children_are_the_workers",
        zygote::resultworker_fork_per_job_children_are_the_workers,
    ),
    (
        "resultworker_fork_per_job_survives_its_zygote",
        zygote::resultworker_fork_per_job_survives_its_zygote,
    ),
];

fn main() -> std::process::ExitCode {
    register_functions();
    if let Some(code) = hardening::forgetful_main() {
        return code;
    }
    procyard_resultworker::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--app-helper") {
        app_helper();
        return std::process::ExitCode::SUCCESS;
    }
    let result = testkit::run_tests(TESTS);
    // Every worker is gone and reaped: no child process of this one is left, not even a
    // zombie.
    let strays = children(true);
    if !strays.is_empty() {
        println!("stray child processes left behind: {strays:?}");
        return std::process::ExitCode::FAILURE;
    }
    result
}
