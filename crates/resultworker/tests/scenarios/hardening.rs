//! Hardening scenarios (issue 13): a program whose `main` forgets `init()`.

use std::io::Read;
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use procyard_core::{Pid, testkit};
use procyard_resultworker::{Config, Error, ResultWorker};

/// Set, to a token unique to one run of the test, in the environment of a copy of this binary
/// whose `main` skips `init()` as a program that forgets it would. Every process started from
/// that copy inherits it, so the token counts the whole chain.
const FORGET_INIT: &str = "PROCYARD_TEST_FORGET_INIT";
/// Set (to anything) beside [`FORGET_INIT`]: the forgetful `main` prints a line to stdout
/// first, which in its worker-mode copy lands in the result pipe ahead of the refusal.
const PRINT_FIRST: &str = "PROCYARD_TEST_FORGET_INIT_PRINT_FIRST";

/// How soon `start` must say that `init()` was not called (the issue asks for a second; the
/// rest is slack for a loaded machine).
const ANSWER_IN: Duration = Duration::from_secs(2);
/// How long the test waits for the forgetful program's answer before it gives up (before the
/// fix it took 30 s and 11,000 processes).
const GIVE_UP_AFTER: Duration = Duration::from_secs(15);

/// `main` of a copy of this binary started with [`FORGET_INIT`]: straight to
/// `ResultWorker::start` without `init()`. Prints one line (`init-not-called MS MESSAGE`, or
/// what happened instead), then waits for its stdin to close, so that the test can count
/// processes while it lives. `None` in every other run.
pub(crate) fn forgetful_main() -> Option<ExitCode> {
    std::env::var_os(FORGET_INIT)?;
    if std::env::var_os(PRINT_FIRST).is_some() {
        println!("hello from main");
    }
    let started = Instant::now();
    let result = ResultWorker::start(Config::default().max_workers(1));
    let took = started.elapsed().as_millis();
    match &result {
        Err(e @ Error::InitNotCalled { .. }) => println!("init-not-called {took} {e}"),
        Err(e) => println!("other-error {took} {e}"),
        Ok(w) => println!("started {took} {w:?}"),
    }
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(result);
    Some(ExitCode::SUCCESS)
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

/// A program that forgets `init()` and calls `ResultWorker::start` gets
/// `Error::InitNotCalled` within a second or two, naming `init()`; its worker-mode copy says
/// why on stderr and exits, and no process of the chain is left. The same when `main` prints
/// to stdout first (in the worker-mode copy, into the result pipe ahead of the refusal).
pub(crate) fn resultworker_hardening_missing_init_fails_fast() {
    forgetful_program_is_told(false);
    forgetful_program_is_told(true);
}

fn forgetful_program_is_told(print_first: bool) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let token = format!("{}-{nanos}", std::process::id());
    assert!(chain(&token).is_empty(), "processes with a fresh token before the test");
    let exe = std::env::current_exe().expect("current exe");
    let mut app = std::process::Command::new(exe);
    app.env(FORGET_INIT, &token).env_remove("PROCYARD_RESULTWORKER_PARENT").env_remove(PRINT_FIRST);
    if print_first {
        app.env(PRINT_FIRST, "1");
    }
    let mut app = app
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the forgetful program");
    let lines = testkit::lines_of(app.stdout.take().expect("stdout"));
    let stderr = testkit::all_of(app.stderr.take().expect("stderr"));
    if print_first {
        let hello = lines.recv_timeout(GIVE_UP_AFTER);
        assert_eq!(hello.as_deref(), Ok("hello from main"), "the program's own first line");
    }
    let line = match lines.recv_timeout(GIVE_UP_AFTER) {
        Ok(line) => line,
        Err(_) => {
            let running = chain(&token).len();
            stop_chain(&mut app, &token);
            panic!(
                "start() gave no answer within {GIVE_UP_AFTER:?} in a program without init(); \
                 {running} processes of its chain were running"
            );
        }
    };
    // While the program still runs (it waits for its stdin to close), it is alone.
    let running = chain(&token);
    drop(app.stdin.take());
    let status = app.wait().expect("wait for the forgetful program");
    let left = chain(&token);
    if !left.is_empty() {
        stop_chain(&mut app, &token);
    }
    let stderr = stderr.recv_timeout(Duration::from_secs(60)).unwrap_or_default();

    let (kind, rest) = line.split_once(' ').unwrap_or((&line, ""));
    let (took_ms, message) = rest.split_once(' ').unwrap_or(("", rest));
    let case = if print_first { " (main printed first)" } else { "" };
    assert_eq!(kind, "init-not-called", "start() answered{case}: {line}\nstderr: {stderr}");
    let took = Duration::from_millis(took_ms.parse().expect("milliseconds"));
    assert!(took < ANSWER_IN, "start() took {took:?} to say that init() was not called");
    assert!(message.contains("procyard_resultworker::init()"), "{message}");
    let app_pid = Pid::from_raw(app.id() as i32).expect("a pid");
    assert_eq!(running, [app_pid], "processes of the chain besides the program itself");
    assert!(left.is_empty(), "processes of the chain left after the program exited: {left:?}");
    assert!(status.success(), "the forgetful program ended with {status}");
    assert!(
        stderr.contains("procyard-resultworker:") && stderr.contains("init()"),
        "the worker-mode copy did not say why on stderr: {stderr:?}"
    );
}

/// A command's stdout and stderr are both kept, on success and on failure, each bounded by
/// `OUTPUT_LIMIT` (the rest is read and dropped, and `truncated` says so).
pub(crate) fn resultworker_hardening_command_output_kept_and_bounded() {
    use procyard_resultworker::{CommandOutput, Exit, Job, OUTPUT_LIMIT};
    let w = super::worker(2);
    let ok = super::get(
        &w.submit::<CommandOutput>(Job::command("sh", ["-c", "echo out; echo err >&2"])),
    )
    .expect("a command that exits 0");
    assert_eq!(
        (ok.status, &ok.stdout[..], &ok.stderr[..], ok.truncated),
        (Exit::Code(0), &b"out\n"[..], &b"err\n"[..], false)
    );
    let script = format!("head -c {} /dev/zero; echo why >&2; exit 9", OUTPUT_LIMIT + 4096);
    match super::get(&w.submit::<CommandOutput>(Job::command("sh", ["-c", script.as_str()]))) {
        Err(Error::CommandFailed { output }) => {
            assert_eq!(output.status, Exit::Code(9));
            assert_eq!(output.stdout.len(), OUTPUT_LIMIT);
            assert_eq!(output.stderr, b"why\n");
            assert!(output.truncated);
            let message = procyard_core::report(&Error::CommandFailed { output });
            assert_eq!(message, "the command failed: exit code 9");
        }
        other => panic!("expected CommandFailed with its output, got {other:?}"),
    }
    w.stop(Duration::from_secs(5));
}

/// `call` takes the borrowed forms of an argument type: `"x"` and `&"x"` for a `String`.
pub(crate) fn resultworker_hardening_call_takes_borrowed_arguments() {
    let echo = procyard_resultworker::register("echo_string", |s: String| Ok::<_, String>(s));
    let w = super::worker(1);
    let a = w.call(&echo, "plain");
    let b = w.call(&echo, &"ref");
    let c = w.call(&echo, &String::from("owned"));
    let all = procyard_resultworker::wait_all_timeout(&[a, b, c], super::LONG)
        .expect("three answers in time");
    let all: Vec<String> = all.into_iter().map(|r| r.expect("echo")).collect();
    assert_eq!(all, ["plain", "ref", "owned"]);
    w.stop(Duration::from_secs(5));
}
