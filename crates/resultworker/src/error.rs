//! The one error type of procyard-resultworker: why a job has no value, or why the worker
//! could not start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use procyard_core::Exit;

use crate::output::CommandOutput;

/// Why a job produced no value (the `Err` side of every outcome), or why the worker could not
/// be started.
///
/// It is `Clone` (causes are shared through `Arc`) because one outcome can be read by many
/// waiters and callbacks.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The job ran and returned its own error (or panicked).
    #[error("job failed: {message}")]
    Failed {
        /// The job's own message.
        message: String,
    },
    /// A function job's process ended without delivering a result.
    #[error("job crashed: {exit}")]
    Crashed {
        /// How the process ended.
        exit: Exit,
    },
    /// A command job did not exit with status 0; what it wrote is kept.
    #[error("the command failed: {}", output.status)]
    CommandFailed {
        /// How it ended, and its stdout and stderr.
        output: Box<CommandOutput>,
    },
    /// The job ran past its timeout and was killed.
    #[error("job timed out after {timeout:?}")]
    TimedOut {
        /// The timeout it was given.
        timeout: Duration,
    },
    /// The worker process died while the job was pending.
    #[error("the result worker died while the job was pending")]
    WorkerLost,
    /// The worker was stopped (or belongs to another process, after a fork) before the job
    /// delivered a result.
    #[error("the result worker was stopped before the job finished")]
    Stopped,
    /// The worker knows no function by this name (register it before calling `init`).
    #[error("no function named {name:?} is registered in the worker")]
    UnknownFunction {
        /// The name asked for.
        name: String,
    },
    /// The result frame for this job was malformed.
    #[error("malformed result frame: {reason}")]
    Malformed {
        /// What was wrong with it.
        reason: String,
    },
    /// The job's arguments could not be serialized.
    #[error("unable to serialize the job's arguments")]
    Encode {
        /// The JSON error.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// The job's value did not deserialize into the type the future expects.
    #[error("unable to deserialize the job's result")]
    Decode {
        /// The JSON error.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// The worker process could not be started.
    #[error("unable to start the result worker")]
    Start {
        /// What went wrong.
        #[source]
        source: Arc<procyard_core::Error>,
    },
    /// The program's `main` does not call [`init`](crate::init) first: the worker process
    /// started from it ran `main` again and reached [`ResultWorker::start`] (or `new`) instead
    /// of becoming the worker. That copy exits at once rather than start a worker of its own
    /// (which would start another, and so on).
    ///
    /// [`ResultWorker::start`]: crate::ResultWorker::start
    #[error(
        "{} does not call procyard_resultworker::init() first thing in main: its worker \
         process ran main again and reached ResultWorker::start instead of serving jobs",
        program.display()
    )]
    InitNotCalled {
        /// The program started as the worker.
        program: PathBuf,
    },
    /// [`ResultWorker::start`](crate::ResultWorker::start) was asked for a configuration
    /// other than that of the global worker, which runs already.
    #[error("the global result worker runs already, with another configuration")]
    AlreadyRunning,
    /// The worker process did not report that it was ready.
    #[error("the result worker did not start: {reason}")]
    WorkerNotReady {
        /// What happened instead.
        reason: String,
    },
    /// A system call failed.
    #[error("unable to {action}")]
    Os {
        /// What was being done.
        action: &'static str,
        /// What the kernel said.
        #[source]
        source: Arc<std::io::Error>,
    },
}

/// The outcome of a job: its value, or why there is none.
pub type JobError = Error;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn os(action: &'static str, source: impl Into<std::io::Error>) -> Error {
        Error::Os { action, source: Arc::new(source.into()) }
    }
}
