//! procyard-bgtask from a multi-threaded program, written as a project that only depends on
//! the crate would write it: nothing installed, [`run_if_supervisor`] first in `main`, then
//! threads that start tasks, talk to them and delete them.
//!
//! ```text
//! cargo run -p procyard-bgtask --example multithreaded
//! ```
//!
//! The pool is `$PROCYARD_POOL` (else the default pool). The crate's test
//! `tests/example_multithreaded.rs` runs this program with no supervisor program anywhere.

use std::process::ExitCode;
use std::time::Duration;

use procyard_bgtask::serde_json::json;
use procyard_bgtask::{
    Deadline, Event, Filter, SpawnOptions, Status, StatusKind, StreamName, TaskPool, report,
    run_if_supervisor,
};

/// How many threads start a task each.
const THREADS: usize = 3;

/// The program: the embedded supervisor entry first, then [`run`].
pub fn main() -> ExitCode {
    // First, before any thread: a copy of this program started to run a supervisor does that
    // here and exits; otherwise this returns and lets `spawn` run supervisors from this
    // program when no `procyard-bgtask-supervise` is installed.
    run_if_supervisor();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("multithreaded: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// Starts [`THREADS`] threads that each run [`one_task`] in the pool.
pub fn run() -> procyard_bgtask::Result<()> {
    let pool = &TaskPool::open_default()?;
    std::thread::scope(|scope| {
        let workers: Vec<_> =
            (0..THREADS).map(|n| scope.spawn(move || one_task(pool, n))).collect();
        workers.into_iter().try_for_each(|w| w.join().expect("a worker thread panicked"))
    })
}

/// Starts a task, finds it by its metadata, pauses and resumes it, feeds its stdin, reads
/// its output and deletes it.
fn one_task(pool: &TaskPool, n: usize) -> procyard_bgtask::Result<()> {
    let options = SpawnOptions::new(["sh", "-c", "echo hello from $WORKER; echo oops >&2; cat"])
        .env("WORKER", n.to_string())
        .meta("name", json!(format!("worker {n}")));
    let mut task = pool.spawn(&options)?;
    let record = task.record()?;
    let supervisor = std::fs::read_link(format!("/proc/{}/exe", record.supervisor.pid));
    let supervisor = supervisor.map(|p| p.display().to_string()).unwrap_or_default();
    println!("task {} (worker {n}) supervised by {supervisor}", task.id());

    let running =
        Filter::new().status(StatusKind::Running).meta("name", json!(format!("worker {n}")));
    let found = pool.list(&running)?;
    assert_eq!(found.len(), 1, "worker {n}'s task is running");
    let mut same = pool.task(&found[0].id)?;
    same.pause()?;
    same.apply_meta(json!({ "note": "paused once" }).as_object().cloned().unwrap_or_default())?;
    same.resume()?;

    let mut events = task.subscribe()?;
    task.write(b"ping\n")?;
    task.close_stdin()?;
    let deadline = Deadline::after(Duration::from_secs(30));
    let status = loop {
        match events.next(deadline)? {
            Some(Event::Exit { status }) => break Some(status),
            Some(_) => {}
            None => break None,
        }
    };
    assert_eq!(status, Some(Status::Exited { code: 0 }), "worker {n}'s task ended");
    let stdout = task.stream(StreamName::Stdout).read_all()?;
    let stderr = task.stream(StreamName::Stderr).read_all()?;
    print!("worker {n} said: {}", String::from_utf8_lossy(&stdout));
    assert_eq!(stdout, format!("hello from {n}\nping\n").into_bytes());
    assert_eq!(stderr, b"oops\n");
    assert_eq!(task.record()?.meta.get("note"), Some(&json!("paused once")));
    task.delete()
}
