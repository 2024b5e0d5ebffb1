//! What a backend is opened with: the `[queue]` section of the config, the tasks it serves,
//! and whether a daemon or a command-line client opens it.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which backend a config asks for (`[queue] backend = "sqlite" | "amqp"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The embedded SQLite file.
    #[default]
    Sqlite,
    /// A RabbitMQ broker.
    Amqp,
    /// A PostgreSQL database (many daemons, one schema).
    Postgres,
}

impl BackendKind {
    /// `sqlite` or `amqp`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Amqp => "amqp",
            BackendKind::Postgres => "postgres",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kind of durable queue the AMQP backend declares (`[queue] queue_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AmqpQueueType {
    /// Quorum queues (replicated, Raft): the default; classic where the broker has none.
    #[default]
    Quorum,
    /// Classic durable queues: no replication, but no log commit per acknowledgement, so
    /// about twice the throughput on a single broker node.
    Classic,
}

/// What a commit of the embedded SQLite queue survives (`[queue] durability`).
///
/// Both keep the file in WAL mode. A commit is one `fsync` of the WAL in `"power"`, none in
/// `"crash"` (the WAL is synced at checkpoints); either way a publish or an outcome commits
/// many jobs at once (a `publish --lines` batch is one commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous = NORMAL`: a committed job survives the daemon's or a client's crash
    /// (even SIGKILL), not a power cut or a kernel crash (the last commits may roll back).
    #[default]
    Crash,
    /// `synchronous = FULL`: a committed job survives a power cut too (an `fsync` per
    /// commit).
    Power,
}

impl Durability {
    /// `crash` or `power`, as the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Crash => "crash",
            Durability::Power => "power",
        }
    }

    /// SQLite's `synchronous` setting for it.
    pub(crate) fn synchronous(self) -> &'static str {
        match self {
            Durability::Crash => "NORMAL",
            Durability::Power => "FULL",
        }
    }
}

/// The `[queue]` section of the config, resolved (paths absolute).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Which backend.
    pub backend: BackendKind,
    /// The SQLite file: the queue (backend `sqlite`), or this daemon's local job history
    /// (backend `amqp`: `[queue] history`, by default beside the control socket; empty: the
    /// backend keeps none).
    pub path: PathBuf,
    /// The broker URL, `amqp://user:pass@host:port/vhost` (backend `amqp`), or the database
    /// URL, `postgres://user:pass@host:port/db` (backend `postgres`).
    pub url: Option<String>,
    /// The topic exchange jobs are published to (default `procyard`).
    pub exchange: String,
    /// The kind of durable queue declared for tasks (backend `amqp`; default quorum).
    pub queue_type: AmqpQueueType,
    /// Whether the daemon publishes job events on `<exchange>.events` (backend `amqp`;
    /// `[queue] events`, default true). Replies to `publish --wait` and cancel requests do not
    /// depend on it.
    pub events: bool,
    /// Whether task queues are declared with `x-max-priority` so that `--priority` orders
    /// jobs (backend `amqp`, classic queues only; `[queue] priorities`, default false).
    pub priorities: bool,
    /// The PostgreSQL schema holding the queue's tables (backend `postgres`; default
    /// `procyard`), so several clusters can share one database.
    pub schema: String,
    /// What a commit of the SQLite queue survives (backend `sqlite`): `crash` (the
    /// default) or `power`.
    pub durability: Durability,
}

/// What a backend needs to know about one task: its name (the queue name) and its bindings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskBinding {
    /// The task's name, unique in the config; also the queue's name.
    pub name: String,
    /// AMQP topic patterns (`*` one word, `#` zero or more) this task receives.
    pub routing_keys: Vec<String>,
    /// How many deliveries a job gets before it is dead-lettered (the daemon decides; AMQP
    /// may use it to size retry queues).
    pub max_attempts: u32,
}

/// Whether a backend serves a daemon (consumes jobs) or a command-line client (publishes,
/// inspects, requeues).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The daemon: exclusive where the backend needs it (SQLite takes a lock), recovers jobs
    /// left claimed by a previous run, consumes.
    Daemon,
    /// A client: never consumes.
    Client,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `status` prints the backend by name and `status --json` carries the same word.
    #[test]
    fn backend_kind_reads_and_writes_its_config_name() {
        for kind in [BackendKind::Sqlite, BackendKind::Amqp, BackendKind::Postgres] {
            assert_eq!(kind.to_string(), kind.name());
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<BackendKind>(&json).unwrap(), kind);
        }
    }
}
