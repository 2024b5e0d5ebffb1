//! `examples/library.rs` run as a project that only depends on the crate runs it: a copy of
//! the program alone in a directory, with no `procyard-asyncjob` beside it, above it, on `PATH`
//! or named by `PROCYARD_ASYNCJOB_BIN`, and a cleared environment.
//!
//! `harness = false`: this file's `main` is the example's own `main` (the file is included
//! with `#[path]`) when the test runs the copy, so the test and the example are one program.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};
use std::time::{Duration, Instant};

use procyard_asyncjob::{MONITOR_HOST_ARG, report, run_if_monitor};
use procyard_core::testkit::{self, Sandbox, wait_for};

#[path = "../examples/library.rs"]
mod example;

/// Set in the copy's environment: `run` for the example's `main`, `forget-entry` for a `main`
/// that skips the entry in the copy started to host a monitor.
const AS_PROGRAM: &str = "PROCYARD_ASYNCJOB_TEST_AS_PROGRAM";

fn main() -> ExitCode {
    match std::env::var(AS_PROGRAM).as_deref() {
        Ok("run") => example::main(),
        Ok("forget-entry") => forgetful_main(),
        Ok("no-entry") => main_without_entry(),
        _ => testkit::run_tests(&[
            ("asyncjob_example_library_runs_with_no_monitor_program", runs_embedded),
            ("asyncjob_example_library_names_the_missing_program", names_missing_program),
            ("asyncjob_hardening_monitor_copy_without_the_entry_refuses", forgotten_entry),
            ("asyncjob_example_without_entry_or_program_says_what_to_do", without_entry),
        ]),
    }
}

/// A `main` that calls the entry only when not started to host a monitor (as a `main` that
/// calls it behind a condition would): the copy started to host one reaches `start` instead.
fn forgetful_main() -> ExitCode {
    if std::env::args_os().nth(1).is_none_or(|a| a != MONITOR_HOST_ARG) {
        run_if_monitor();
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

/// Runs `program` with nothing but `PATH` (no procyard program on it), `TMPDIR` (the
/// sandbox), the mode and `extra` in its environment.
fn run(sb: &Sandbox, program: &Path, mode: &str, extra: &[(&str, &Path)]) -> (Output, Duration) {
    let started = Instant::now();
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TMPDIR", sb.path())
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

/// What the example left in the sandbox besides the program (it removes its directory).
fn leftovers(sb: &Sandbox) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(sb.path()).unwrap().flatten();
    entries.map(|e| e.path()).filter(|p| !p.ends_with("app")).collect()
}

fn runs_embedded() {
    let sb = Sandbox::new("asyncjob-example-embedded", Duration::from_secs(120));
    let app = sb.installed_copy();
    let (out, _) = run(&sb, &app, "run", &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "the example failed: {}{stdout}", text(&out.stderr));
    assert!(stdout.contains(&format!("monitor runs {}\n", app.display())), "{stdout}");
    assert!(stdout.contains("status running\n"), "{stdout}");
    assert!(stdout.ends_with("log:\nbuilding the report\nreport done\n"), "{stdout}");
    wait_for("the monitor to exit", Duration::from_secs(20), || {
        testkit::processes_running(&app).is_empty()
    });
    assert!(leftovers(&sb).is_empty(), "left behind: {:?}", leftovers(&sb));
}

fn names_missing_program() {
    let sb = Sandbox::new("asyncjob-example-missing", Duration::from_secs(60));
    let app = sb.installed_copy();
    let missing = sb.join("no-such-asyncjob");
    let (out, _) = run(&sb, &app, "run", &[("PROCYARD_ASYNCJOB_BIN", &missing)]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "the example ran without its monitor host: {stderr}");
    // The variable was set: the error names it and what it points at (not the install hint).
    let named = format!(
        "PROCYARD_ASYNCJOB_BIN names {}, which is not an executable file",
        missing.display()
    );
    for needed in [named.as_str(), "run_if_monitor()"] {
        assert!(stderr.contains(needed), "{needed:?} missing from: {stderr}");
    }
    assert!(!stderr.contains("single-threaded"), "{stderr}");
    assert_eq!(stderr.matches("PROCYARD_ASYNCJOB_BIN").count(), 1, "{stderr}");
    assert!(testkit::processes_running(&app).is_empty());
}

fn forgotten_entry() {
    let sb = Sandbox::new("asyncjob-forgotten-entry", Duration::from_secs(60));
    let app = sb.installed_copy();
    let (out, took) = run(&sb, &app, "forget-entry", &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("did not call procyard_asyncjob::run_if_monitor() first"), "{stderr}");
    assert!(took < Duration::from_secs(10), "the refusal took {took:?}");
    // No chain of copies: the refusing copy ended, and no monitor was started.
    wait_for("the refusing copy to exit", Duration::from_secs(10), || {
        testkit::processes_running(&app).is_empty()
    });
}

/// Threads, no program anywhere, no entry in `main`: the error names the variable, the install
/// command and the entry (never "needs a single-threaded process"), and nothing was started.
fn without_entry() {
    let sb = Sandbox::new("asyncjob-without-entry", Duration::from_secs(60));
    let app = sb.installed_copy();
    let (out, _) = run(&sb, &app, "no-entry", &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for needed in [
        "procyard-asyncjob not found",
        "PROCYARD_ASYNCJOB_BIN",
        "cargo install --locked --path",
        "run_if_monitor()",
    ] {
        assert!(stderr.contains(needed), "{needed:?} missing from: {stderr}");
    }
    assert!(!stderr.contains("single-threaded"), "{stderr}");
    assert!(testkit::processes_running(&app).is_empty());
}
