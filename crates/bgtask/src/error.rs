//! The one error type of procyard-bgtask.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in procyard-bgtask.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system operation on a path failed.
    #[error("unable to {action} {}", path.display())]
    Path {
        /// What was being done ("create", "read", "connect to").
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The pool directory is not safe to use (wrong owner, or writable by others).
    #[error("refusing task pool {}: {reason}", path.display())]
    InsecurePool {
        /// The pool directory.
        path: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The task could not be started; the supervisor's own words.
    #[error("unable to spawn {program}: {message}")]
    Spawn {
        /// The program that was to run (the command's first word).
        program: String,
        /// Why it did not start, as the supervisor said.
        message: String,
    },
    /// The spawn request itself was invalid (empty command, non-UTF-8 argument, …).
    #[error("invalid spawn request: {reason}")]
    InvalidSpawn {
        /// What is wrong with it.
        reason: String,
    },
    /// No task with this id exists in the pool.
    #[error("no task {id} in the pool")]
    NoSuchTask {
        /// The id asked for.
        id: String,
    },
    /// A task id is malformed (ids are letters, digits, `-` and `_`).
    #[error("invalid task id {id:?}")]
    InvalidId {
        /// The text given as an id.
        id: String,
    },
    /// A status name that is none of `running`, `paused`, `exited`, `signaled`, `lost`.
    #[error("unknown task status {given:?} (expected running, paused, exited, signaled or lost)")]
    UnknownStatus {
        /// The text given as a status.
        given: String,
    },
    /// A stream name that is neither `stdout` nor `stderr`.
    #[error("unknown stream {given:?} (expected stdout or stderr)")]
    UnknownStream {
        /// The text given as a stream.
        given: String,
    },
    /// The task's supervisor is gone (killed, crashed, or the machine rebooted).
    #[error("the supervisor of task {id} is not running")]
    SupervisorGone {
        /// The task whose supervisor is gone.
        id: String,
    },
    /// The supervisor answered with another task's id or protocol version.
    #[error("handshake with the supervisor of task {id} failed: {reason}")]
    Handshake {
        /// The task the client asked for.
        id: String,
        /// What did not match.
        reason: String,
    },
    /// The supervisor refused a request.
    #[error("task {id}: {message}")]
    Refused {
        /// The task whose supervisor refused.
        id: String,
        /// Why, for a program to act on.
        kind: RefusalKind,
        /// Why, in the supervisor's words.
        message: String,
    },
    /// Talking to the supervisor failed.
    #[error("lost the connection to the supervisor of task {id}")]
    Connection {
        /// The task whose supervisor was being talked to.
        id: String,
        /// What failed on the connection.
        #[source]
        source: procyard_core::Error,
    },
    /// The supervisor did not answer within the time set with
    /// [`Task::set_timeout`](crate::Task::set_timeout); the connection was dropped (the next
    /// call opens a new one).
    #[error("the supervisor of task {id} did not answer within {after:?}")]
    TimedOut {
        /// The task whose supervisor did not answer.
        id: String,
        /// The timeout that expired.
        after: std::time::Duration,
    },
    /// The supervisor sent something that does not follow the protocol.
    #[error("unexpected answer from the supervisor of task {id}: {what}")]
    Protocol {
        /// The task whose supervisor answered.
        id: String,
        /// What was wrong.
        what: String,
    },
    /// A primitive from procyard-core failed.
    #[error(transparent)]
    Core(#[from] procyard_core::Error),
    /// No program to run a supervisor was found (and this program cannot fork one: it has
    /// several threads). The message names [`BIN_ENV`](crate::BIN_ENV), the command that
    /// installs the programs (run in procyard's source tree), and the embedded entry
    /// [`run_if_supervisor`](crate::run_if_supervisor) that needs nothing installed.
    #[error(
        "{source}; or let this program run supervisors: call procyard_bgtask::run_if_supervisor() \
         first in main"
    )]
    NoSupervisorBinary {
        /// Core's [`CompanionNotFound`](procyard_core::Error::CompanionNotFound).
        #[source]
        source: procyard_core::Error,
    },
}

/// Why a supervisor refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RefusalKind {
    /// The task is not running (it exited): signals would reach nobody, or the wrong process.
    NotRunning,
    /// The task is still running (restart of a live task).
    StillRunning,
    /// stdin was closed already.
    StdinClosed,
    /// The request was malformed or unknown.
    BadRequest,
    /// The operation failed inside the supervisor.
    Failed,
    /// The connecting user is neither the pool owner nor root (or the supervisor is busy).
    PermissionDenied,
    /// The handshake named a protocol version the supervisor does not speak.
    UnsupportedVersion,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on the connection to the supervisor of task `id`.
    pub(crate) fn connection(id: &str, e: io::Error) -> Self {
        Error::Connection {
            id: id.to_owned(),
            source: procyard_core::Error::Os { action: "talk to the supervisor", source: e },
        }
    }

    pub(crate) fn path(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Path { action, path: path.into(), source }
    }
}
