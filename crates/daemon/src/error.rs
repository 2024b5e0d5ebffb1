//! The one error type of procyard-daemon.

use std::io;
use std::path::PathBuf;

/// A boxed cause, for errors from libraries whose types we do not expose (the AMQP client).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in procyard-daemon.
///
/// Each variant names what it concerns (a file and line, a path, a routing key, a task); the
/// underlying cause, when there is one, is the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file could not be read.
    #[error("unable to read config {}", path.display())]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The configuration is invalid. `line` is 1-based; `field` is a dotted path such as
    /// `task[2].max_workers`.
    #[error("{}{}: {}{message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Config {
        /// The file.
        path: PathBuf,
        /// The line, when known.
        line: Option<usize>,
        /// The field, when known.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// An operation on the SQLite queue failed.
    #[error("unable to {action} queue {}", path.display())]
    Queue {
        /// What was being done ("open", "claim jobs from").
        action: &'static str,
        /// The queue file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// An operation on the message broker failed.
    #[error("unable to {action} on the AMQP broker")]
    Broker {
        /// What was being done ("connect", "declare the topology", "publish").
        action: &'static str,
        /// What the client library said.
        #[source]
        source: BoxError,
    },
    /// An operation on the PostgreSQL queue failed (backend `postgres`).
    #[error("unable to {action} the PostgreSQL queue {target}")]
    Postgres {
        /// What was being done ("connect to", "claim jobs from").
        action: &'static str,
        /// Where: the database (its URL without the password) and the schema.
        target: String,
        /// What the driver or the server said.
        #[source]
        source: BoxError,
    },
    /// This build has no AMQP backend.
    #[error("AMQP backend not available in this build")]
    AmqpUnavailable,
    /// No task is bound to the routing key, so a published job would be dropped.
    #[error("no task is bound to routing key {routing_key:?}")]
    Unroutable {
        /// The key.
        routing_key: String,
    },
    /// The broker refused a published message (negative confirm).
    #[error("the broker refused the job published to {routing_key:?}: {reason}")]
    PublishRejected {
        /// The key.
        routing_key: String,
        /// What the broker said.
        reason: String,
    },
    /// A routing key or pattern is malformed.
    #[error("invalid routing key {key:?}: {reason}")]
    InvalidRoutingKey {
        /// The key or pattern.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A payload is invalid (too large, unreadable).
    #[error("invalid payload: {reason}")]
    InvalidPayload {
        /// What is wrong.
        reason: String,
    },
    /// A file-system or socket operation on a path failed.
    #[error("unable to {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A system call that concerns no path failed.
    #[error("unable to {action}")]
    Os {
        /// What was being done.
        action: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A process primitive from procyard-core failed.
    #[error("unable to {action}")]
    Process {
        /// What was being done ("spawn worker for task mail").
        action: String,
        /// The cause.
        #[source]
        source: procyard_core::Error,
    },
    /// No daemon answers on the control socket.
    #[error("no daemon is running on control socket {}", socket.display())]
    NotRunning {
        /// The socket path.
        socket: PathBuf,
    },
    /// Something already answers on the control socket's path.
    #[error("another process listens on control socket {} (is a daemon already running with it?)", socket.display())]
    ControlSocketInUse {
        /// The socket path.
        socket: PathBuf,
    },
    /// Another daemon already serves this queue.
    #[error("another daemon already serves queue {} (lock {} is held)", queue.display(), lock.display())]
    AlreadyRunning {
        /// The queue.
        queue: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// A peer spoke the control or worker protocol wrongly.
    #[error("protocol error on {peer}: {reason}")]
    Protocol {
        /// Who ("control socket", "worker 1234").
        peer: String,
        /// What was wrong.
        reason: String,
    },
    /// The daemon answered a control request with an error.
    #[error("the daemon refused the request: {message}")]
    Refused {
        /// The daemon's message.
        message: String,
    },
    /// The backend cannot do this.
    #[error("the {backend} backend cannot {what}")]
    Unsupported {
        /// `sqlite` or `amqp`.
        backend: &'static str,
        /// The operation.
        what: &'static str,
    },
    /// A job id names no job in the expected state.
    #[error("no dead-lettered job {id}")]
    NoSuchJob {
        /// The id.
        id: String,
    },
    /// A string that is not a job id (ids are UUIDs, as `publish` prints them).
    #[error("{id:?} is not a job id (job ids look like 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b)")]
    InvalidJobId {
        /// What was given.
        id: String,
    },
    /// No job has this id (never published here, or pruned after `keep_done`).
    #[error("no job {id} (never published to this queue, or pruned after its retention)")]
    UnknownJob {
        /// The id.
        id: String,
    },
    /// On RabbitMQ: no job has this id in this daemon's local history (another daemon ran it,
    /// it never ran, or it was pruned after its retention).
    #[error("no job {id} in this daemon's history {} (from this daemon's history: jobs run by other daemons are not here; or it was pruned after its retention)", history.display())]
    NotInHistory {
        /// The id.
        id: String,
        /// The history file looked in.
        history: PathBuf,
    },
    /// The job has already ended: it cannot be cancelled.
    #[error("job {id} is already {state}: nothing to cancel")]
    JobFinished {
        /// The id.
        id: String,
        /// Its final state.
        state: crate::queue::JobState,
    },
    /// A command-line value is malformed.
    #[error("invalid {what} {value:?}: expected {expected}")]
    InvalidArgument {
        /// What it is ("job state", "--timeout").
        what: &'static str,
        /// What was given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// `--config` was not given and no config file was found where one is looked for.
    #[error("no config given (--config FILE) and none found; tried: {}", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoConfig {
        /// Every path looked at, in order.
        tried: Vec<PathBuf>,
    },
    /// `PRAGMA quick_check` found damage in the queue file.
    #[error("queue {} is corrupt ({report}): restore it from a backup or move it aside", path.display())]
    QueueCorrupt {
        /// The queue file.
        path: PathBuf,
        /// The first problems SQLite reported.
        report: String,
    },
    /// The queue file the daemon opened is no longer the file at its path: it was deleted,
    /// or another file was put in its place. Jobs published now would go to a file nobody
    /// serves, so the daemon stops.
    #[error("queue {} was {change} while the daemon ran: stopping (start it again to serve the file now at that path)", path.display())]
    QueueFileChanged {
        /// The queue file.
        path: PathBuf,
        /// How it changed.
        change: crate::queue::FileChange,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// This error with its whole chain of causes (`what: why: deeper why`), for messages and
    /// logs: [`Error`]'s own message never repeats its cause, so anything shown to a user goes
    /// through this and the cause is never lost.
    pub fn chain(&self) -> procyard_core::Report<'_> {
        procyard_core::Report(self)
    }

    /// Whether the daemon cannot go on with its queue (it was deleted or replaced): it stops.
    pub fn is_queue_lost(&self) -> bool {
        matches!(self, Error::QueueFileChanged { .. })
    }

    pub(crate) fn queue(
        action: &'static str,
        path: &std::path::Path,
        source: rusqlite::Error,
    ) -> Self {
        Error::Queue { action, path: path.to_owned(), source }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { action, path: path.into(), source }
    }

    pub(crate) fn process(action: impl Into<String>, source: procyard_core::Error) -> Self {
        Error::Process { action: action.into(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_every_cause_once() {
        let e = Error::io(
            "open",
            "/srv/q.db",
            io::Error::new(io::ErrorKind::NotFound, "No such file or directory"),
        );
        assert_eq!(e.chain().to_string(), "unable to open /srv/q.db: No such file or directory");
        let sqlite = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        );
        let e = Error::queue("claim jobs from", std::path::Path::new("/q.db"), sqlite);
        assert!(
            e.chain()
                .to_string()
                .starts_with("unable to claim jobs from queue /q.db: database or disk is full"),
            "{}",
            e.chain()
        );
    }
}
