//! Hardening scenarios (issue 13): a program whose `main` forgets `init()` and runs a
//! function task.

use std::io::Read;
use std::process::{Child, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use procyard_core::{Deadline, Pid, testkit};
use procyard_procmgr::{Outcome, ProcessManager, Task};

/// Set, to a token unique to one run of the test, in the environment of a copy of this binary
/// whose `main` skips `init()` as a program that forgets it would. Every process started from
/// that copy inherits it, so the token counts the whole chain.
const FORGET_INIT: &str = "PROCYARD_TEST_FORGET_INIT";

/// How soon the function task's outcome must say that `init()` was not called (the issue asks
/// for a second; the rest is slack for a loaded machine).
const ANSWER_IN: Duration = Duration::from_secs(2);
/// How long the test waits for the forgetful program's answer before it gives up (before the
/// fix the chain of copies grew until something killed it).
const GIVE_UP_AFTER: Duration = Duration::from_secs(15);

/// `main` of a copy of this binary started with [`FORGET_INIT`]: runs a function task without
/// having called `init()`. Prints one line (`init-not-called MS OUTCOME`, or what happened
/// instead), then waits for its stdin to close, so that the test can count processes while it
/// lives. `None` in every other run.
pub(crate) fn forgetful_main() -> Option<ExitCode> {
    std::env::var_os(FORGET_INIT)?;
    let started = Instant::now();
    let outcome = run_function("double", 21);
    let took = started.elapsed().as_millis();
    match outcome {
        Ok(outcome @ Outcome::InitNotCalled { .. }) => println!("init-not-called {took} {outcome}"),
        Ok(outcome) => println!("other-outcome {took} {outcome}"),
        Err(e) => println!("error {took} {e:#}"),
    }
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Some(ExitCode::SUCCESS)
}

/// Runs the function task `name(arg)` (for at most `GIVE_UP_AFTER` and a bit more).
pub(crate) fn run_function(name: &str, arg: u64) -> Result<Outcome> {
    let mut manager = ProcessManager::new()?;
    let outcome = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&outcome);
    manager.create_process(Task::function(name, &arg)?, move |o| {
        *slot.lock().expect("outcome") = Some(o);
    })?;
    let deadline = Deadline::after(GIVE_UP_AFTER + Duration::from_secs(5));
    while manager.process_count() > 0 {
        ensure!(!deadline.is_expired(), "no outcome within {GIVE_UP_AFTER:?}");
        manager.step_timeout(Some(deadline.remaining()))?;
    }
    let outcome = outcome.lock().expect("outcome").take();
    outcome.context("no outcome")
}

/// Live processes of the chain: those whose environment carries `FORGET_INIT=token`.
fn chain(token: &str) -> Vec<Pid> {
    testkit::processes_with_env(FORGET_INIT, token)
}

/// Ends the forgetful program and every process of its chain (the test failed).
fn stop_chain(app: &mut Child, token: &str) {
    let _ = app.kill();
    let _ = app.wait();
    testkit::kill_processes_with_env(FORGET_INIT, token, Duration::from_secs(60));
}

/// A program that forgets `init()` and runs a function task gets `Outcome::InitNotCalled`
/// within a second or two, naming `init()`; the process started for the task says why on
/// stderr and exits, and no process of the chain is left. A function that runs a function
/// task of its own (its process did call `init()`) still may.
pub(crate) fn procmgr_hardening_missing_init_fails_fast() -> Result<()> {
    let nested = run_function("nested_double", 21)?;
    ensure!(nested == Outcome::Value(42.into()), "a nested function task: {nested}");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let token = format!("{}-{nanos}", std::process::id());
    ensure!(chain(&token).is_empty(), "processes with a fresh token before the test");
    let exe = std::env::current_exe()?;
    // Started without threads of this test process: the helper is single-threaded until it
    // makes its own.
    let mut app = std::process::Command::new(exe)
        .env(FORGET_INIT, &token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start the forgetful program")?;
    let lines = testkit::lines_of(app.stdout.take().context("stdout")?);
    let stderr = testkit::all_of(app.stderr.take().context("stderr")?);
    let line = match lines.recv_timeout(GIVE_UP_AFTER) {
        Ok(line) => line,
        Err(_) => {
            let running = chain(&token).len();
            stop_chain(&mut app, &token);
            bail!(
                "a function task gave no outcome within {GIVE_UP_AFTER:?} in a program without \
                 init(); {running} processes of its chain were running"
            );
        }
    };
    // While the program still runs (it waits for its stdin to close), it is alone.
    let running = chain(&token);
    drop(app.stdin.take());
    let status = app.wait().context("wait for the forgetful program")?;
    let left = chain(&token);
    if !left.is_empty() {
        stop_chain(&mut app, &token);
    }
    let stderr = stderr.recv_timeout(Duration::from_secs(60)).unwrap_or_default();

    let (kind, rest) = line.split_once(' ').unwrap_or((&line, ""));
    let (took_ms, message) = rest.split_once(' ').unwrap_or(("", rest));
    ensure!(kind == "init-not-called", "the task's outcome: {line}\nstderr: {stderr}");
    let took = Duration::from_millis(took_ms.parse().context("milliseconds")?);
    ensure!(took < ANSWER_IN, "{took:?} to say that init() was not called");
    ensure!(message.contains("procyard_procmgr::init()"), "{message}");
    let app_pid = Pid::from_raw(app.id() as i32).context("a pid")?;
    ensure!(running == [app_pid], "processes of the chain besides the program: {running:?}");
    ensure!(left.is_empty(), "processes of the chain left after the program exited: {left:?}");
    ensure!(status.success(), "the forgetful program ended with {status}");
    ensure!(
        stderr.contains("procyard-procmgr:") && stderr.contains("init()"),
        "the process started for the task did not say why on stderr: {stderr:?}"
    );
    Ok(())
}
