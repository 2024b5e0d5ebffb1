//! What a backend tells about itself and its jobs: depths, dead letters, health, and which
//! dead letters to put back.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::BackendKind;

/// Queue depth of one task, for `status` and scaling.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    /// Jobs available now.
    pub ready: u64,
    /// Jobs waiting for a retry delay to pass (`None` when the backend cannot tell).
    pub delayed: Option<u64>,
    /// Jobs claimed and not yet completed.
    pub in_flight: u64,
    /// Dead-lettered jobs (`None` when the backend cannot tell).
    pub dead: Option<u64>,
    /// Jobs done since the queue was created (`None` when the backend cannot tell).
    pub done_total: Option<u64>,
    /// Jobs published since the queue was created (`None` when the backend does not count them).
    #[serde(default)]
    pub published_total: Option<u64>,
    /// Ready jobs wait for the task's `rate_limit` (its bucket is empty).
    #[serde(default)]
    pub rate_limited: bool,
}

/// A dead-lettered job, as [`QueueBackend::dead_letters`](super::QueueBackend::dead_letters)
/// lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The job's id.
    pub id: String,
    /// The task.
    pub task: String,
    /// The routing key.
    pub routing_key: String,
    /// How many deliveries it had.
    pub attempts: u32,
    /// Why the last one failed.
    pub reason: String,
    /// The payload size in bytes.
    pub payload_len: usize,
}

/// Which dead letters [`QueueBackend::requeue_dead`](super::QueueBackend::requeue_dead) puts
/// back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Every dead letter (of the task given, or of every task).
    All,
    /// These jobs, by id; an id that names no dead letter is
    /// [`Error::NoSuchJob`](crate::Error::NoSuchJob) (SQLite then puts back none of them,
    /// AMQP the ones it found). No ids puts back nothing.
    Ids(Vec<String>),
}

/// How the backend is doing, for `status` and logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Which backend.
    pub backend: BackendKind,
    /// Whether jobs can flow right now (AMQP: connected).
    pub ok: bool,
    /// What is wrong, or where it is connected.
    pub detail: String,
}

/// How the queue file a daemon serves changed under it
/// ([`Error::QueueFileChanged`](crate::Error::QueueFileChanged)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileChange {
    /// Nothing is at the path any more.
    Deleted,
    /// Another file is at the path.
    Replaced,
}

impl fmt::Display for FileChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileChange::Deleted => "deleted",
            FileChange::Replaced => "replaced by another file",
        })
    }
}
