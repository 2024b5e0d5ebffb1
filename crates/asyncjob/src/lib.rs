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
//! - [`AsyncJob::kill`] signals the job's process group only if the job's identity (pid + start
//!   time + boot id) still matches, then waits for the monitor to record the end.
//!   [`AsyncJob::reap`] removes any terminal state. [`AsyncJob::wait`] blocks on a pidfd of
//!   the monitor.
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
//! let ended = job.kill(Signal::TERM)?; // the whole process group
//! assert_eq!(ended.signal.as_deref(), Some("SIGTERM"));
//! job.reap()?; // back to {"status":"absent"}
//! # Ok::<(), procyard_asyncjob::Error>(())
//! ```
//!
//! # Limitations
//!
//! `start` forks the calling process when it is single-threaded; from a multi-threaded process
//! it runs the `procyard-asyncjob` binary to host the monitor, which must then be installed
//! (in `PATH`, named by `$PROCYARD_ASYNCJOB_BIN`, or given with
//! [`AsyncJobOptions::monitor_program`]). Only named signals (not real-time ones) can be sent by [`AsyncJob::kill`].
//! When the job's leader exits, other members of its process group are left running.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod host;
mod job;
mod monitor;
mod options;
mod state;

pub use error::{Error, Result, StartFailure, error_chain};
pub use host::{MONITOR_HOST_ARG, host_monitor};
pub use job::{AsyncJob, KILL_SETTLE};
pub use options::{AsyncJobOptions, DEFAULT_GRACE};
pub use procyard_core::Signal;
pub use state::{JobState, Status};
