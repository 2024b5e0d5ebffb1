//! The one error type of procyard-procmgr.

use std::io;
use std::path::PathBuf;

use procyard_core::Pid;

/// Everything that can go wrong in procyard-procmgr. A task's own failure is not an error:
/// it is an [`Outcome`](crate::Outcome).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A child process for a task could not be started.
    #[error("unable to start {task}")]
    Spawn {
        /// What kind of task ("command /bin/true", "function double", "closure").
        task: String,
        /// Why.
        #[source]
        source: procyard_core::Error,
    },
    /// A closure task was given to a manager in a process that has other threads: forking
    /// it there would be unsound.
    #[error("a closure task needs a single-threaded process, but this one has {threads} threads")]
    NotSingleThreaded {
        /// Threads counted when the fork was refused.
        threads: usize,
    },
    /// An operating-system call around a task failed (pipe, poll, registration).
    #[error("unable to {action}")]
    Os {
        /// What was being done.
        action: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Signalling a child failed.
    #[error("unable to signal process {pid}")]
    Signal {
        /// The child.
        pid: Pid,
        /// Why.
        #[source]
        source: procyard_core::Error,
    },
    /// A value (function arguments, a message, a result) could not be serialized.
    #[error("unable to serialize {what}")]
    Encode {
        /// What was being serialized.
        what: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A value (a message of a task) did not deserialize into the type asked for.
    #[error("unable to deserialize {what}")]
    Decode {
        /// What was being deserialized.
        what: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Serialized function arguments exceed what one `argv` string may hold.
    #[error("arguments of function {name} take {len} bytes, above the limit of {max}")]
    ArgumentsTooLarge {
        /// The function.
        name: String,
        /// Their serialized size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A task's endpoint could not deliver a message to the parent (it is gone, or closed
    /// the pipe).
    #[error("unable to send a message to the parent process")]
    Send {
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The scheduler no longer accepts work.
    #[error("the scheduler is shut down")]
    ShutDown,
    /// A lock name that is empty or contains `/` or a NUL byte.
    #[error("invalid lock name {name:?} (expected a non-empty name without '/')")]
    InvalidLockName {
        /// The name given.
        name: String,
    },
    /// A named lock could not be taken.
    #[error("unable to lock {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: procyard_core::Error,
    },
    /// The server's supervising thread could not be started or died.
    #[error("the server's supervising thread {what}")]
    ServerThread {
        /// What happened ("could not be started", "panicked").
        what: &'static str,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn os(action: &'static str, source: impl Into<io::Error>) -> Error {
        Error::Os { action, source: source.into() }
    }
}
