//! `examples/multithreaded.rs` run as a project that only depends on the crate runs it: a copy
//! of the program alone in a directory, with no supervisor program beside it, above it, on
//! `PATH` or named by `PROCYARD_BGTASK_BIN`, and a cleared environment.
//!
//! `harness = false`: this file's `main` is the example's own `main` (the file is included
//! with `#[path]`) when the test runs the copy, so the test and the example are one program.

use std::path::Path;
use std::process::{Command, ExitCode, Output};
use std::time::{Duration, Instant};

use procyard_bgtask::{SUPERVISOR_ENTRY_ARG, report, run_if_supervisor};
use procyard_core::testkit::{self, Sandbox, wait_for};

#[path = "../examples/multithreaded.rs"]
mod example;

/// Set in the copy's environment: `run` for the example's `main`, `forget-entry` for a `main`
/// that skips the entry in the copy started to run a supervisor.
const AS_PROGRAM: &str = "PROCYARD_BGTASK_TEST_AS_PROGRAM";

fn main() -> ExitCode {
    match std::env::var(AS_PROGRAM).as_deref() {
        Ok("run") => example::main(),
        Ok("forget-entry") => forgetful_main(),
        Ok("no-entry") => main_without_entry(),
        _ => testkit::run_tests(&[
            ("bgtask_example_multithreaded_runs_with_no_supervisor_program", runs_embedded),
            ("bgtask_example_multithreaded_names_the_missing_program", names_missing_program),
            ("bgtask_hardening_supervisor_copy_without_the_entry_refuses", forgotten_entry),
            ("bgtask_example_without_entry_or_program_says_what_to_do", without_entry),
        ]),
    }
}

/// A `main` that calls the entry only when not started to run a supervisor (as a `main` that
/// calls it behind a condition would): the copy started to run one reaches `spawn` instead.
fn forgetful_main() -> ExitCode {
    if std::env::args_os().nth(1).is_none_or(|a| a != SUPERVISOR_ENTRY_ARG) {
        run_if_supervisor();
    }
    match example::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("forgetful: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// A `main` that never calls the entry: the trap of a multi-threaded program with nothing
/// installed.
fn main_without_entry() -> ExitCode {
    match example::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("without entry: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs `program` with nothing but `PATH` (no procyard program on it), the pool, the mode and
/// `extra` in its environment.
fn run(sb: &Sandbox, program: &Path, mode: &str, extra: &[(&str, &Path)]) -> (Output, Duration) {
    let started = Instant::now();
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PROCYARD_POOL", sb.join("pool"))
        .env(AS_PROGRAM, mode)
        .current_dir(sb.path());
    for (key, value) in extra {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    (out, started.elapsed())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn runs_embedded() {
    let sb = Sandbox::new("bgtask-example-embedded", Duration::from_secs(120));
    let app = sb.installed_copy();
    let (out, _) = run(&sb, &app, "run", &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "the example failed: {}{stdout}", text(&out.stderr));
    let supervised = format!("supervised by {}", app.display());
    assert_eq!(stdout.matches(&supervised).count(), 3, "{stdout}");
    for n in 0..3 {
        assert!(stdout.contains(&format!("worker {n} said: hello from {n}\nping\n")), "{stdout}");
    }
    // Every task was deleted: its supervisor is gone and so are its files.
    wait_for("the supervisors to exit", Duration::from_secs(20), || {
        testkit::processes_running(&app).is_empty()
    });
    let left: Vec<_> = std::fs::read_dir(sb.join("pool")).unwrap().flatten().collect();
    assert!(left.is_empty(), "files left in the pool: {left:?}");
}

fn names_missing_program() {
    let sb = Sandbox::new("bgtask-example-missing", Duration::from_secs(60));
    let app = sb.installed_copy();
    let missing = sb.join("no-such-supervisor");
    let (out, _) = run(&sb, &app, "run", &[("PROCYARD_BGTASK_BIN", &missing)]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "the example ran without its supervisor program: {stderr}");
    // The variable was set: the error names it and what it points at (not the install hint).
    let named =
        format!("PROCYARD_BGTASK_BIN names {}, which is not an executable file", missing.display());
    for needed in [named.as_str(), "run_if_supervisor()"] {
        assert!(stderr.contains(needed), "{needed:?} missing from: {stderr}");
    }
    assert!(!stderr.contains("single-threaded"), "{stderr}");
    // Each worker thread says it once; no line repeats its own words.
    for line in stderr.lines() {
        assert_eq!(line.matches("PROCYARD_BGTASK_BIN").count(), 1, "{line}");
    }
    assert!(testkit::processes_running(&app).is_empty());
}

fn forgotten_entry() {
    let sb = Sandbox::new("bgtask-forgotten-entry", Duration::from_secs(60));
    let app = sb.installed_copy();
    let (out, took) = run(&sb, &app, "forget-entry", &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("did not call procyard_bgtask::run_if_supervisor() first"), "{stderr}");
    assert!(took < Duration::from_secs(10), "the refusal took {took:?}");
    // No chain of copies: the refusing copies ended, and no supervisor was started.
    wait_for("the refusing copies to exit", Duration::from_secs(10), || {
        testkit::processes_running(&app).is_empty()
    });
    let tasks: Vec<_> = std::fs::read_dir(sb.join("pool")).unwrap().flatten().collect();
    assert!(tasks.is_empty(), "tasks were started: {tasks:?}");
}

/// Threads, no program anywhere, no entry in `main`: the error names the variable, the install
/// command and the entry (never "needs a single-threaded process"), and nothing was started.
fn without_entry() {
    let sb = Sandbox::new("bgtask-without-entry", Duration::from_secs(60));
    let app = sb.installed_copy();
    let (out, _) = run(&sb, &app, "no-entry", &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for needed in [
        "procyard-bgtask-supervise not found",
        "PROCYARD_BGTASK_BIN",
        "cargo install --locked --path",
        "run_if_supervisor()",
    ] {
        assert!(stderr.contains(needed), "{needed:?} missing from: {stderr}");
    }
    assert!(!stderr.contains("single-threaded"), "{stderr}");
    assert!(testkit::processes_running(&app).is_empty());
}
