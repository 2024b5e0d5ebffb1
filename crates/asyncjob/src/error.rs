//! The one error type of procyard-asyncjob.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Status;

/// Everything that can go wrong with an [`AsyncJob`](crate::AsyncJob).
///
/// Each variant names the state file (or the object) it concerns; an underlying cause is the
/// [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The options named no command to run.
    #[error("no command given")]
    NoCommand,
    /// The caller's working directory, needed to resolve a relative path, is unreadable.
    #[error("unable to resolve relative path {}", path.display())]
    ResolvePath {
        /// The relative path.
        path: PathBuf,
        /// Why the working directory could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A job already holds this state file (running, or terminal and not yet reaped).
    #[error("a job already holds {} (status {status})", path.display())]
    AlreadyExists {
        /// The state file.
        path: PathBuf,
        /// The status it holds.
        status: Status,
    },
    /// Another process (a monitor, a `start` or a `reap`) holds the state file's lock.
    #[error("state file {} is busy", path.display())]
    Busy {
        /// The state file.
        path: PathBuf,
    },
    /// The job could not be started; the monitor (or the caller) reported why. When the
    /// monitor could record it, the state file says `failed` with the same message.
    #[error("unable to start job {}: {message}", path.display())]
    StartFailed {
        /// The state file (empty when none is used).
        path: PathBuf,
        /// What failed.
        kind: StartFailure,
        /// The cause, in words.
        message: String,
    },
    /// The job is not in a state that allows the operation.
    #[error("job {} is {status}, not {expected}", path.display())]
    WrongStatus {
        /// The state file.
        path: PathBuf,
        /// The status it holds.
        status: Status,
        /// What the operation needed ("running", "terminal").
        expected: &'static str,
    },
    /// The process named in the state is no longer the job (its pid was recycled): it is
    /// never signalled.
    #[error("job {} names process {pid}, which is no longer the job", path.display())]
    IdentityMismatch {
        /// The state file.
        path: PathBuf,
        /// The pid the state named.
        pid: i32,
    },
    /// The state named process 1 (or a lower pid): pid 1 is the init of some pid namespace and
    /// `kill(-1)` would signal every process the caller may signal, so it is never signalled,
    /// whatever the rest of the state says.
    #[error("job {} names process {pid}, which is never signalled", path.display())]
    RefusedSignalTarget {
        /// The state file.
        path: PathBuf,
        /// The pid the state named.
        pid: i32,
    },
    /// The state file, its lock file or its directory cannot be trusted, so nothing in it is
    /// acted on: it belongs to another user, others can write it, or it is not a regular file
    /// (a FIFO, a socket, a device or a symbolic link). The source says which and why.
    #[error("unsafe state file {}", path.display())]
    UnsafeStateFile {
        /// The state file.
        path: PathBuf,
        /// What was found (`NotOwned`, `InsecurePermissions` or `WrongFileType`).
        #[source]
        source: procyard_core::Error,
    },
    /// The state file is far larger than any state (a few hundred bytes): it is not read.
    #[error("state file {} is {size} bytes, more than a state can be", path.display())]
    StateTooLarge {
        /// The state file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// The operation needs a state file, and the job has none.
    #[error("the job has no state file")]
    NoStateFile,
    /// The state file exists but does not hold a job state.
    #[error("corrupt state file {}", path.display())]
    CorruptState {
        /// The state file.
        path: PathBuf,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// A deadline passed first.
    #[error("timed out waiting for job {}", path.display())]
    Timeout {
        /// The state file.
        path: PathBuf,
    },
    /// No program to host the monitor was found for a multi-threaded caller of
    /// [`AsyncJob::start`](crate::AsyncJob::start) (which cannot fork). The message names
    /// `PROCYARD_ASYNCJOB_BIN`, the command that installs `procyard-asyncjob` (run in
    /// procyard's source tree) and the embedded entry [`run_if_monitor`](crate::run_if_monitor)
    /// that needs nothing installed.
    #[error(
        "{source}; or let this program host monitors: call procyard_asyncjob::run_if_monitor() \
         first in main"
    )]
    NoMonitorProgram {
        /// Core's [`CompanionNotFound`](procyard_core::Error::CompanionNotFound).
        #[source]
        source: procyard_core::Error,
    },
    /// A system-level operation failed.
    #[error("unable to {action} for job {}", path.display())]
    Sys {
        /// What was being done ("read the state", "lock", "signal the job").
        action: &'static str,
        /// The state file.
        path: PathBuf,
        /// What failed underneath.
        #[source]
        source: procyard_core::Error,
    },
}

/// What kept a job from starting (the `error_kind` of a `failed` state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StartFailure {
    /// The program could not be executed (not found, not executable).
    Spawn,
    /// The working directory could not be entered.
    Cwd,
    /// An output file could not be opened.
    Output,
    /// The state file could not be written.
    State,
    /// The monitor could not be detached (or its host could not run).
    Detach,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StartFailure::Spawn => "spawn",
            StartFailure::Cwd => "cwd",
            StartFailure::Output => "output",
            StartFailure::State => "state",
            StartFailure::Detach => "detach",
        })
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
