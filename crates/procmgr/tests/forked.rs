//! Scenarios that fork closures or re-execute this binary for registered functions: they need
//! a single-threaded process and a `main` that calls `procyard_procmgr::init` first, so this
//! target runs without libtest (`harness = false`), one test after the other.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use procyard_core::testkit::{self, wait_for};
use procyard_core::{Deadline, Pid, ProcStat, Signal};
use procyard_procmgr::{Endpoint, NamedLock, Outcome, ProcessManager, Scheduler, Strategy, Task};
use serde_json::Value;

#[path = "forked/hardening.rs"]
mod hardening;

fn double(x: u64, _: &mut Endpoint) -> Result<u64, String> {
    Ok(x * 2)
}

fn fail(message: String, _: &mut Endpoint) -> Result<(), String> {
    Err(message)
}

fn count_to(n: u64, endpoint: &mut Endpoint) -> Result<u64, procyard_procmgr::Error> {
    for i in 0..n {
        endpoint.send(&i)?;
    }
    Ok(n)
}

/// Runs `double(x)` as a function task of its own, from inside a function task.
fn nested_double(x: u64, _: &mut Endpoint) -> Result<u64, String> {
    let outcome = hardening::run_function("double", x).map_err(|e| format!("{e:#}"))?;
    outcome.value_as().ok_or_else(|| format!("the nested task: {outcome}"))
}

fn register_functions() {
    procyard_procmgr::register("double", double);
    procyard_procmgr::register("fail", fail);
    procyard_procmgr::register("count_to", count_to);
    procyard_procmgr::register("nested_double", nested_double);
}

/// Each test as a `fn()` for the runner: its error becomes a panic, and a test that leaves a
/// child process of this one behind (live or zombie) fails.
macro_rules! tests {
    ($($name:literal => $test:path),* $(,)?) => {
        &[$(($name, {
            fn checked() {
                checked_test($test)
            }
            checked as fn()
        })),*]
    };
}

fn checked_test(test: fn() -> Result<()>) {
    if let Err(e) = test() {
        panic!("{e:#}");
    }
    let leftovers = my_children();
    assert!(leftovers.is_empty(), "left children behind: {leftovers:?}");
}

fn main() -> ExitCode {
    if let Some(code) = hardening::forgetful_main() {
        return code;
    }
    register_functions();
    procyard_procmgr::init();
    testkit::run_tests(tests![
        "procmgr_closure_value_comes_back" => closure_value_comes_back,
        "procmgr_function_value_comes_back" => function_value_comes_back,
        "procmgr_exit_without_answer_is_typed_and_next_runs" => exit_without_answer,
        "procmgr_100_tasks_leave_no_fds_processes_zombies" => hundred_tasks_leave_nothing,
        "procmgr_10_results_of_64k_intact" => ten_results_of_64k,
        "procmgr_lock_100_tasks_never_overlap" => lock_never_overlaps,
        "procmgr_p3_killed_mid_1mib_message_is_typed" => p3_killed_mid_message,
        "procmgr_p4_1000_messages_in_order" => p4_thousand_messages,
        "procmgr_p4_function_messages_in_order" => p4_function_messages,
        "procmgr_p5_errors_keep_message_code_signal" => p5_errors_kept,
        "procmgr_p8_children_inherit_no_sibling_fds" => p8_no_sibling_fds,
        "procmgr_scheduler_closures_single_threaded" => scheduler_closures,
        "procmgr_threaded_process_runs_functions_refuses_closures" => threaded_process,
        "procmgr_hardening_missing_init_fails_fast" =>
            hardening::procmgr_hardening_missing_init_fails_fast,
    ])
}

/// Live or zombie processes whose parent is this process.
fn my_children() -> Vec<(i32, char)> {
    let me = Pid::current().as_raw();
    let mut found = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(raw) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Some(pid) = Pid::from_raw(raw) else { continue };
            if let Ok(Some(stat)) = ProcStat::read(pid)
                && stat.ppid == me
            {
                found.push((raw, stat.state));
            }
        }
    }
    found
}

/// Runs the manager until it has no children, with a hard deadline.
fn run_all(manager: &mut ProcessManager, timeout: Duration) -> Result<()> {
    let deadline = Deadline::after(timeout);
    while manager.process_count() > 0 {
        ensure!(!deadline.is_expired(), "{} children still running", manager.process_count());
        manager.step_timeout(Some(deadline.remaining()))?;
    }
    Ok(())
}

/// Runs one task and returns its messages and outcome; checks that every message arrived
/// before the completion handler ran.
fn run_one(task: Task) -> Result<(Vec<Value>, Outcome)> {
    let mut manager = ProcessManager::new()?;
    let messages = Arc::new(Mutex::new(Vec::new()));
    let outcome = Arc::new(Mutex::new(None));
    let (m, m2, o) = (messages.clone(), messages.clone(), outcome.clone());
    manager.create_process_with_messages(
        task,
        move |v| m.lock().expect("messages").push(v),
        move |out| {
            let seen = m2.lock().expect("messages").len();
            *o.lock().expect("outcome") = Some((out, seen));
        },
    )?;
    run_all(&mut manager, Duration::from_secs(20))?;
    let messages = std::mem::take(&mut *messages.lock().expect("messages"));
    let (outcome, seen) = outcome.lock().expect("outcome").take().context("no outcome")?;
    ensure!(seen == messages.len(), "{} messages arrived after completion", messages.len() - seen);
    Ok((messages, outcome))
}

fn closure_value_comes_back() -> Result<()> {
    let (_, outcome) = run_one(Task::closure(|_| Ok::<_, String>(6 * 7)))?;
    ensure!(outcome == Outcome::Value(Value::from(42)), "{outcome:?}");
    Ok(())
}

fn function_value_comes_back() -> Result<()> {
    let (_, outcome) = run_one(Task::function("double", &21)?)?;
    ensure!(outcome == Outcome::Value(Value::from(42)), "{outcome:?}");
    let (_, outcome) = run_one(Task::function("no_such_function", &1)?)?;
    match outcome {
        Outcome::UnknownFunction { name } if name == "no_such_function" => Ok(()),
        other => bail!("unexpected {other:?}"),
    }
}

fn exit_without_answer() -> Result<()> {
    let started = Instant::now();
    let (_, outcome) =
        run_one(Task::closure(|_| -> Result<(), String> { procyard_core::exit_immediately(3) }))?;
    // Not waiting for an answer that never comes (a generous bound: the machine may be loaded).
    ensure!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    ensure!(outcome == Outcome::Exited { code: 3 }, "{outcome:?}");
    let (_, outcome) = run_one(Task::closure(|_| Ok::<_, String>("next")))?;
    ensure!(outcome == Outcome::Value(Value::from("next")), "{outcome:?}");
    Ok(())
}

fn hundred_tasks_leave_nothing() -> Result<()> {
    let fds_before = procyard_core::fd::open_fds()?;
    {
        let mut manager = ProcessManager::new()?;
        let done = Arc::new(Mutex::new(0usize));
        for i in 0..100u32 {
            let done = done.clone();
            let task = Task::closure(move |_| Ok::<_, String>(i));
            manager.create_process(task, move |o| {
                if o == Outcome::Value(Value::from(i)) {
                    *done.lock().expect("done") += 1;
                }
            })?;
            if manager.process_count() >= 8 {
                manager.step()?;
            }
        }
        run_all(&mut manager, Duration::from_secs(30))?;
        ensure!(*done.lock().expect("done") == 100, "not all 100 tasks returned their value");
    }
    let fds_after = procyard_core::fd::open_fds()?;
    ensure!(fds_before == fds_after, "fds before {fds_before:?}, after {fds_after:?}");
    let children = my_children();
    ensure!(children.is_empty(), "children left: {children:?}");
    Ok(())
}

fn ten_results_of_64k() -> Result<()> {
    let mut manager = ProcessManager::new()?;
    let results = Arc::new(Mutex::new(Vec::new()));
    for i in 0..10u8 {
        let results = results.clone();
        let task = Task::closure(move |_| {
            let c = char::from(b'a' + i);
            Ok::<_, String>(std::iter::repeat_n(c, 64 * 1024).collect::<String>())
        });
        manager.create_process(task, move |o| results.lock().expect("results").push((i, o)))?;
    }
    run_all(&mut manager, Duration::from_secs(20))?;
    let results = results.lock().expect("results");
    ensure!(results.len() == 10);
    for (i, outcome) in results.iter() {
        let s: String = outcome.value_as().context("no string value")?;
        let c = char::from(b'a' + i);
        ensure!(s.len() == 64 * 1024 && s.chars().all(|x| x == c), "result {i} corrupted");
    }
    Ok(())
}

fn lock_never_overlaps() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let scheduler = Scheduler::new(Strategy::Throttled(8))?;
    let mut handles = Vec::new();
    for i in 0..100u32 {
        let path = dir.path().to_owned();
        handles.push(scheduler.schedule(Task::closure(move |_| -> Result<u32, String> {
            let lock = NamedLock::new(&path, "shared").map_err(|e| e.to_string())?;
            let _guard = lock.lock().map_err(|e| e.to_string())?;
            // O_EXCL: fails if another holder is inside the critical section.
            let marker = path.join("inside");
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&marker)
                .map_err(|e| format!("overlap detected: {e}"))?;
            for _ in 0..50 {
                std::thread::yield_now();
            }
            std::fs::remove_file(&marker).map_err(|e| e.to_string())?;
            Ok(i)
        }))?);
    }
    for (i, h) in handles.into_iter().enumerate() {
        let outcome = h.wait();
        ensure!(outcome == Outcome::Value(Value::from(i)), "task {i}: {outcome:?}");
    }
    scheduler.shutdown();
    Ok(())
}

fn p3_killed_mid_message() -> Result<()> {
    let started = Instant::now();
    let (_, outcome) = run_one(Task::closure(|endpoint| -> Result<(), String> {
        // A frame announcing 1 MiB, of which half is written before the child is killed.
        let mut pipe =
            std::fs::File::from(endpoint.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?);
        let len: u32 = 1024 * 1024;
        pipe.write_all(&len.to_be_bytes()).map_err(|e| e.to_string())?;
        pipe.write_all(&vec![b'x'; 512 * 1024]).map_err(|e| e.to_string())?;
        let _ = procyard_core::kill_process(Pid::current(), Signal::KILL);
        Ok(())
    }))?;
    // No hang on the half-written frame (a generous bound: the machine may be loaded).
    ensure!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    match outcome {
        Outcome::DiedMidMessage { exit, received, expected } => {
            ensure!(exit.signal() == Some(Signal::KILL), "{exit}");
            ensure!(received == 4 + 512 * 1024, "received {received}");
            ensure!(expected == 4 + 1024 * 1024, "expected {expected}");
        }
        other => bail!("unexpected {other:?}"),
    }
    let (_, outcome) = run_one(Task::closure(|_| Ok::<_, String>("still works")))?;
    ensure!(outcome == Outcome::Value(Value::from("still works")), "{outcome:?}");
    Ok(())
}

fn p4_thousand_messages() -> Result<()> {
    let (messages, outcome) = run_one(Task::closure(|endpoint| {
        for i in 0..1000u32 {
            endpoint.send(&i)?;
        }
        Ok::<_, procyard_procmgr::Error>("done")
    }))?;
    let expected: Vec<Value> = (0..1000u32).map(Value::from).collect();
    ensure!(messages == expected, "{} messages, out of order or missing", messages.len());
    ensure!(outcome == Outcome::Value(Value::from("done")), "{outcome:?}");
    Ok(())
}

fn p4_function_messages() -> Result<()> {
    let (messages, outcome) = run_one(Task::function("count_to", &200)?)?;
    let expected: Vec<Value> = (0..200u32).map(Value::from).collect();
    ensure!(messages == expected, "{} messages, out of order or missing", messages.len());
    ensure!(outcome == Outcome::Value(Value::from(200)), "{outcome:?}");
    Ok(())
}

fn p5_errors_kept() -> Result<()> {
    let (_, o) = run_one(Task::closure(|_| Err::<(), _>("boom: disk full")))?;
    ensure!(o == Outcome::TaskError { message: "boom: disk full".into() }, "{o:?}");
    let (_, o) = run_one(Task::closure(|_| -> Result<(), String> {
        panic!("ouch (an expected panic, part of the test)")
    }))?;
    ensure!(matches!(&o, Outcome::TaskError { message } if message.contains("ouch")), "{o:?}");
    let (_, o) = run_one(Task::function("fail", &"bad input")?)?;
    ensure!(o == Outcome::TaskError { message: "bad input".into() }, "{o:?}");
    let (_, o) =
        run_one(Task::closure(|_| -> Result<(), String> { procyard_core::exit_immediately(9) }))?;
    ensure!(o == Outcome::Exited { code: 9 }, "{o:?}");
    let (_, o) = run_one(Task::closure(|_| -> Result<(), String> { std::process::abort() }))?;
    ensure!(o == Outcome::Killed { signal: Signal::ABRT }, "{o:?}");
    let (_, o) = run_one(Task::command(procyard_core::Command::shell("exit 7")))?;
    ensure!(o == Outcome::Exited { code: 7 }, "{o:?}");
    Ok(())
}

fn p8_no_sibling_fds() -> Result<()> {
    let mut manager = ProcessManager::new()?;
    let counts = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..10 {
        let counts = counts.clone();
        let task = Task::closure(|endpoint| -> Result<(), procyard_procmgr::Error> {
            let fds = procyard_core::fd::open_fds()
                .map_err(|e| procyard_procmgr::Error::Send { source: std::io::Error::other(e) })?;
            endpoint.send(&fds.len())?;
            loop {
                std::thread::park();
            }
        });
        manager.create_process_with_messages(
            task,
            move |v| counts.lock().expect("counts").push(v),
            |_| {},
        )?;
    }
    let deadline = Deadline::after(Duration::from_secs(10));
    while counts.lock().expect("counts").len() < 10 {
        ensure!(!deadline.is_expired(), "children did not report");
        manager.step_timeout(Some(deadline.remaining()))?;
    }
    manager.teardown(Duration::from_secs(2))?;
    let counts: BTreeSet<u64> =
        counts.lock().expect("counts").iter().filter_map(Value::as_u64).collect();
    ensure!(counts.len() == 1, "fd counts differ between children: {counts:?}");
    Ok(())
}

fn scheduler_closures() -> Result<()> {
    let scheduler = Scheduler::new(Strategy::Throttled(4))?;
    let handles: Vec<_> = (0..20u32)
        .map(|i| scheduler.schedule(Task::closure(move |_| Ok::<_, String>(i * i))))
        .collect::<Result<_, _>>()?;
    scheduler.join();
    for (i, h) in handles.into_iter().enumerate() {
        let i = i as u32;
        ensure!(h.try_result() == Some(Outcome::Value(Value::from(i * i))));
    }
    let h = scheduler.schedule(Task::closure(|_| Ok::<_, String>("timed")))?;
    let o = h.wait_timeout(Duration::from_secs(10)).context("no outcome within 10 s")?;
    ensure!(o == Outcome::Value(Value::from("timed")), "{o:?}");
    scheduler.shutdown();
    ensure!(matches!(
        scheduler.schedule(Task::closure(|_| Ok::<_, String>(1))),
        Err(procyard_procmgr::Error::ShutDown)
    ));
    Ok(())
}

fn threaded_process() -> Result<()> {
    let worker = std::thread::spawn(|| -> Result<()> {
        // This process has two threads now: forking a closure would be unsound.
        let mut manager = ProcessManager::new()?;
        let refused = manager.create_process(Task::closure(|_| Ok::<_, String>(1)), |_| {});
        ensure!(
            matches!(refused, Err(procyard_procmgr::Error::NotSingleThreaded { threads }) if threads >= 2),
            "closure not refused: {refused:?}"
        );
        let scheduler = Scheduler::new(Strategy::Throttled(2))?;
        let refused = scheduler.schedule(Task::closure(|_| Ok::<_, String>(1)));
        ensure!(matches!(refused, Err(procyard_procmgr::Error::NotSingleThreaded { .. })));
        // Registered functions are re-executed, so they are fine from any thread.
        let outcome = scheduler.schedule(Task::function("double", &5)?)?.wait();
        ensure!(outcome == Outcome::Value(Value::from(10)), "{outcome:?}");
        Ok(())
    });
    worker.join().map_err(|_| anyhow::anyhow!("worker thread panicked"))??;
    // The thread is gone: closures work again.
    // Joined, but the kernel may list the exiting thread a little longer.
    wait_for("the worker thread to leave the process", Duration::from_secs(30), || {
        procyard_core::fork::thread_count().is_ok_and(|n| n == 1)
    });
    let (_, outcome) = run_one(Task::closure(|_| Ok::<_, String>("single again")))?;
    ensure!(outcome == Outcome::Value(Value::from("single again")), "{outcome:?}");
    Ok(())
}
