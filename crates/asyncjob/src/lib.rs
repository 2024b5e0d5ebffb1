//! Detached jobs tracked by a state file: start a long command in the background, return at
//! once, and later check, kill, reap or wait for it — each time from a new process (a serf
//! handler, a cron job, a shell script).
//!
//! # Concepts
//!
//! - [`AsyncJob::start`] detaches a *monitor* (daemonized, in its own session) that spawns the
//!   command in a process group of its own, waits for it by pidfd and records its end (exit
//!   code or signal, end time) in the state file. `start` returns only once the state says
//!   `running`, or with the real error (missing program, missing working directory, unwritable
//!   output file, missing state directory), reported through the daemon's status pipe.
//! - The monitor is the only writer of the state file (atomic replacement) and holds an `flock`
//!   on the sidecar `<state>.lock` for its whole life. `start` takes that lock before forking,
//!   so concurrent starts yield exactly one job; a free lock with a non-terminal state reads as
//!   [`Status::Lost`] (the monitor died).
//! - [`AsyncJob::signal`] signals the job's process group only if the job's identity (pid +
//!   start time + boot id) still matches, and never pid 1 or its group (the init of some pid
//!   namespace; a group kill of it would be `kill(-1)`), then waits for the monitor to record
//!   the end. [`AsyncJob::kill`] is `signal(Signal::KILL)`; [`AsyncJob::stop`] sends SIGTERM,
//!   then SIGKILL after a grace period.
//!   [`AsyncJob::reap`] removes any terminal state. [`AsyncJob::wait`] blocks on a pidfd of
//!   the monitor.
//! - Nothing in a state file is believed unless the file is ours: every operation first checks
//!   that the state file, its lock file and their directory are owned by the caller's
//!   effective uid (or root) and not writable by others (a world-writable directory must be
//!   sticky, as `/tmp` is), and that the state and lock paths are regular files, opened without
//!   following a symbolic link and without blocking. Anything else is
//!   [`Error::UnsafeStateFile`]: a forged state cannot make root signal a process of the
//!   forger's choosing, and a FIFO at the path cannot make a command hang.
//! - The monitor is a child subreaper: a descendant that leaves the job's process group
//!   (`setsid`, a double fork) is reparented to the monitor when its parent exits. When the job
//!   is stopped (it ends by a signal, from [`AsyncJob::signal`] or its timeout), the monitor
//!   stops those escapees too (SIGTERM, SIGKILL after the grace; SIGKILL at once after a
//!   SIGKILL) and reaps them before it records the end.
//!
//! # Example
//!
//! ```
//! use procyard_asyncjob::{AsyncJob, Status};
//! let dir = tempfile::tempdir().unwrap();
//! let job = AsyncJob::options()
//!     .state_file(dir.path().join("job.state"))
//!     .shell("exit 7")
//!     .build()?;
//! // Nothing started yet.
//! assert_eq!(job.check()?.status, Status::Absent);
//! assert_eq!(job.state_info()?, r#"{"status":"absent"}"#);
//! # Ok::<(), procyard_asyncjob::Error>(())
//! ```
//!
//! The whole life of a job, as a serf handler would drive it (each call may come from a new
//! process):
//!
//! ```no_run
//! use std::time::Duration;
//! use procyard_asyncjob::{AsyncJob, Signal, Status};
//! let job = AsyncJob::options()
//!     .state_file("/var/lib/serf/long_task")
//!     .shell("for i in $(seq 1 300); do echo $i; sleep 1; done")
//!     .stdout("/var/log/long_task.log")
//!     .timeout(Duration::from_secs(600))
//!     .build()?;
//! assert_eq!(job.start()?.status, Status::Running); // returns once it runs
//! println!("{}", job.state_info()?); // {"status":"running","pid":…}
//! let ended = job.stop(Duration::from_secs(5))?; // TERM, KILL after 5 s; the whole group
//! assert_eq!(ended.signal, Some(Signal::TERM));
//! job.reap()?; // back to {"status":"absent"}
//! # Ok::<(), procyard_asyncjob::Error>(())
//! ```
//!
//! # Limitations
//!
//! `start` forks the calling process when it is single-threaded; from a multi-threaded process
//! another process must host the monitor (see [Monitor hosts](#monitor-hosts)).
//! When the job's leader exits normally, other members of its process group, and escapees the
//! monitor adopted, are left running (they go to init when the monitor exits).
//!
//! Without cgroups (not mounted on the machines procyard targets) some escapes remain
//! possible. A descendant is adopted only once every process between it and the monitor has
//! exited, so one whose ancestor lives on outside the job's group when the job is stopped (a
//! descendant that made itself a subreaper, say) is not stopped with the job. Escapees of a
//! monitor that died (SIGKILLed: the job reads `lost`) go to init. A process tree that forks
//! faster than the monitor's stop rounds scan `/proc` can outrun them. A job that must never
//! leave anything behind should run in a cgroup or a pid namespace of its own.

//!
//! # One dependency
//!
//! The types the API takes and returns are re-exported here, so a program needs only this
//! crate: [`Signal`] (what [`AsyncJob::signal`] sends and [`JobState::signal`] records), core's
//! error as [`CoreError`] (the source of [`Error::Sys`], [`Error::UnsafeStateFile`] and
//! [`Error::NoMonitorProgram`]), and [`report`] to print an error with its causes, each once.
//!
//! ```
//! use procyard_asyncjob::{CoreError, Error, JobState, Signal, report};
//! fn ended_by(state: &JobState) -> Option<Signal> {
//!     state.signal
//! }
//! let err = Error::Sys {
//!     action: "signal the job",
//!     path: "/run/job.state".into(),
//!     source: CoreError::InvalidSignal { input: "TREM".into() },
//! };
//! assert!(report(&err).starts_with("unable to signal the job for job /run/job.state: "));
//! # let _ = ended_by;
//! ```
//!
//! # Monitor hosts
//!
//! A multi-threaded caller of [`AsyncJob::start`] cannot fork, so another process hosts the
//! monitor: the `procyard-asyncjob` program. A project that depends on this crate does not
//! get that program built; it has two ways:
//!
//! - Call [`run_if_monitor`] first in `main` (before any thread starts): the program then
//!   hosts monitors itself, executing itself in host mode, and needs nothing installed (see
//!   `examples/library.rs`, where a library starts, checks, waits for and reaps a job):
//!
//!   ```no_run
//!   fn main() {
//!       procyard_asyncjob::run_if_monitor();
//!       // threads, a runtime, AsyncJob::start …
//!   }
//!   ```
//! - Or install it: `cargo install --locked --path crates/asyncjob`, run in procyard's source
//!   tree, puts it in `~/.cargo/bin` (on `PATH`); or set `PROCYARD_ASYNCJOB_BIN` to it, or call
//!   [`AsyncJobOptions::monitor_program`].
//!
//! It is looked for in this order: [`AsyncJobOptions::monitor_program`],
//! `PROCYARD_ASYNCJOB_BIN`, beside the current executable, the directory above it, `PATH` (the
//! one rule of [`procyard_core::companion`]), then this program if its `main` called
//! [`run_if_monitor`]. A multi-threaded caller with none of them gets
//! [`Error::NoMonitorProgram`], whose message says all this.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![allow(clippy::needless_doctest_main, reason = "the docs show where `main` calls the entry")]

mod entry;
mod error;
mod host;
mod job;
mod monitor;
mod options;
mod pidfd;
mod state;
mod store;
mod trust;

pub use entry::MONITOR_HOST_ARG;
pub use error::{Error, Result, StartFailure};
pub use host::{host_monitor, run_if_monitor};
pub use job::{AsyncJob, SIGNAL_SETTLE};
pub use options::{AsyncJobOptions, DEFAULT_GRACE};
pub use procyard_core::{Error as CoreError, Report, Signal, report};
pub use state::{JobState, Status};
