//! Background tasks you can check on and talk to later from any process: each task runs
//! under a supervisor of its own, reachable over a Unix socket in a task pool directory.
//!
//! # Concepts
//!
//! - A [`TaskPool`] is a directory (mode 0700, owned by the caller or root; another user's
//!   pool is refused). Each task has `<id>.sock` (its supervisor's socket, mode 0600, serving
//!   only the pool owner and root, checked with `SO_PEERCRED`), `<id>.json` (its state,
//!   written atomically and read by [`TaskPool::list`] without connecting), `<id>.data` (a
//!   datagram channel the task finds in `PROCYARD_BGTASK_DATA`, see [`TaskChannel`]; each
//!   datagram's sender is checked with `SCM_CREDENTIALS`, so only the owner and root are heard)
//!   and, if asked, `<id>.stdout.log`/`<id>.stderr.log` (files 0600). Only a stale socket is
//!   ever replaced at a socket path; a regular file there is an error and stays.
//! - [`TaskPool::spawn`] starts a supervisor fully detached from the caller (its own session)
//!   and returns once the task runs, with a unique id (not a pid) — or the real spawn error.
//! - The supervisor runs the command in its own process group, retains output per stream up
//!   to a cap (oldest bytes dropped) with absolute offsets ([`Stream`]: `start`, `limit`,
//!   read/peek/discard; a read asking for dropped bytes says how many in [`Chunk::dropped`];
//!   the bytes sit in a memfd ring per stream, sealed at its size, which a reader is handed
//!   read-only, maps and copies from itself, so they cross no socket),
//!   writes stdin, signals the group, pauses/resumes, restarts a finished task keeping its
//!   output, announces [`Event`]s to subscribers, and on delete kills the task (INT → TERM →
//!   KILL with grace) and removes every file.
//! - The supervisor is a child subreaper: processes of the task that escape its group
//!   (`setsid`) are reparented to it once their parent exits; they get the signals the task
//!   gets (kill, pause, resume, delete), and when the task's leader exits whatever it left
//!   running is stopped (TERM, then KILL after a grace period) and reaped.
//! - A task whose supervisor died is reported [`Status::Lost`] (the supervisor's identity is
//!   pid + start time + boot id, so a recycled pid is not mistaken for it). Its process group
//!   is still ours: [`Task::signal`] signals it and [`Task::delete`] stops it (TERM, grace, KILL)
//!   before removing its files, once the task's recorded identity (pid, start time, boot,
//!   session) matches `/proc`.
//! - Connections that stay idle are closed after a minute, and when the connection caps (in
//!   all, and per uid) are reached the oldest idle connection makes room, so idle connections
//!   never lock the owner out; [`Task`] reconnects by itself when its idle connection was
//!   closed.
//!
//! # Example
//!
//! The same steps, from several threads, as a program that runs with nothing installed:
//! `examples/multithreaded.rs` (`cargo run -p procyard-bgtask --example multithreaded`; the
//! crate's tests run it).
//!
//! ```no_run
//! use procyard_bgtask::{Filter, SpawnOptions, StatusKind, StreamName, TaskPool};
//! use serde_json::json;
//!
//! let pool = TaskPool::open_default()?;
//! let options = SpawnOptions::new(["sh", "-c", "echo hello; echo oops >&2; cat"])
//!     .env("DEBUG_STUFF", "1")
//!     .meta("name", json!("Hello World"));
//! let mut task = pool.spawn(&options)?;
//! for record in pool.search(&Filter::new().status(StatusKind::Running))? {
//!     let mut t = pool.task(&record.id)?;
//!     t.pause()?;
//!     t.apply_meta(json!({ "note": "paused" }).as_object().cloned().unwrap_or_default())?;
//!     t.resume()?;
//! }
//! let mut stdout = task.stream(StreamName::Stdout);
//! println!("bytes {}..{} on stdout", stdout.start()?, stdout.limit()?);
//! let segment = stdout.peek(0, 5)?;
//! assert_eq!(segment.offset, 0);
//! task.delete()?;
//! # Ok::<(), procyard_bgtask::Error>(())
//! ```
//!
//! # Limitations
//!
//! Linux only. Output retained in memory goes with the supervisor unless `log` is set.
//! Without cgroups, a process can still leave a task for good: one that escapes its group
//! while its own parent lives on outside the group is reparented to the supervisor only when
//! that parent exits; and the escapees of a supervisor that was SIGKILLed went to init with
//! it, where nothing tells them from strangers (a lost task's delete stops its group only).
//! Command arguments, environment and metadata must be UTF-8.
//!
//! # One dependency
//!
//! The types the API takes and returns are re-exported here, so a program needs only this
//! crate: [`Signal`], [`Pid`], [`Deadline`], [`ProcessIdentity`], core's error as
//! [`CoreError`] (inside [`Error::Core`] and [`Error::NoSupervisorBinary`]), [`report`] to
//! print an error with its causes, each once, and [`serde_json`] for metadata.
//!
//! ```
//! use procyard_bgtask::{CoreError, Deadline, Error, Pid, Signal, Status, report, serde_json};
//! let ended = Status::Signaled { signal: Signal::TERM };
//! let _deadline = Deadline::after(std::time::Duration::from_secs(1));
//! let _me: Option<Pid> = Pid::from_raw(std::process::id() as i32);
//! let _meta = serde_json::json!({ "ended": format!("{ended:?}") });
//! let err = Error::Core(CoreError::InvalidSignal { input: "TREM".into() });
//! assert!(report(&err).contains("TREM"));
//! ```
//!
//! # Supervisor programs
//!
//! Supervisors are started by executing a small program, `procyard-bgtask-supervise` (or the
//! `procyard-bgtask` CLI's hidden mode); a single-threaded program may fork them instead. A
//! project that depends on this crate does not get those programs built; it has two ways:
//!
//! - Call [`run_if_supervisor`] first in `main` (before any thread starts): the program then
//!   runs its own supervisors, executing itself in supervisor mode, and needs nothing
//!   installed (see `examples/multithreaded.rs`):
//!
//!   ```no_run
//!   fn main() {
//!       procyard_bgtask::run_if_supervisor();
//!       // threads, a runtime, TaskPool::spawn …
//!   }
//!   ```
//! - Or install the programs: `cargo install --locked --path crates/bgtask`, run in
//!   procyard's source tree, puts them in `~/.cargo/bin` (on `PATH`); or set
//!   `PROCYARD_BGTASK_BIN` to the program, or call [`TaskPool::supervisor_binary`].
//!
//! They are looked for in this order: [`TaskPool::supervisor_binary`], `PROCYARD_BGTASK_BIN`,
//! beside the current executable, the directory above it, `PATH` (the one rule of
//! [`procyard_core::companion`]), then this program if its `main` called
//! [`run_if_supervisor`]. A multi-threaded program with none of them gets
//! [`Error::NoSupervisorBinary`], whose message says all this.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![allow(clippy::needless_doctest_main, reason = "the docs show where `main` calls the entry")]

mod buffer;
mod channel;
mod client;
mod entry;
mod error;
mod handoff;
mod launch;
mod layout;
mod lost;
mod meta;
mod options;
mod pool;
pub mod protocol;
mod record;
mod status;
mod stream;
mod subscription;
mod supervise;
mod supervisor;

pub use channel::TaskChannel;
pub use client::{DEFAULT_TIMEOUT, Task};
pub use entry::SUPERVISOR_ENTRY_ARG;
pub use error::{Error, RefusalKind, Result};
pub use launch::Launch;
pub use layout::{BIN_ENV, DATA_ENV, ID_ENV, POOL_ENV, SUPERVISOR_BIN};
pub use meta::{Meta, meta_matches};
pub use options::{DEFAULT_RETAIN, SpawnOptions};
pub use pool::{TaskPool, default_pool_dir};
pub use procyard_core::{
    Deadline, Error as CoreError, Pid, ProcessIdentity, Report, Signal, report,
};
pub use protocol::{Event, StreamInfo, StreamName, TaskInfo};
pub use record::{Filter, TaskRecord};
/// The JSON crate of metadata and data-channel messages ([`Meta`], [`SpawnOptions::meta`]),
/// so a program needs no dependency of its own for `json!`.
pub use serde_json;
pub use status::{Status, StatusKind};
pub use stream::{Chunk, ReadMeta, ReadOptions, Stream};
pub use subscription::Subscription;
pub use supervise::run_if_supervisor;

/// Plumbing for this crate's own binaries (the hidden supervisor entry point); not an API.
#[doc(hidden)]
pub mod __private {
    pub use crate::supervise::supervise_from_stdio;
}
