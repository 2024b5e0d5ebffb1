//! A job as a backend hands it to the daemon, what the daemon reports back about it, and the
//! worker process recorded with its lease.

use std::time::Duration;

/// A backend-specific handle that identifies one delivery of a job (SQLite: the row; AMQP:
/// the delivery tag). Only meaningful to the backend that issued it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Receipt(pub u64);

/// A job handed to the daemon by [`QueueBackend::claim`](super::QueueBackend::claim).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// The job's id (a UUID v7 string), stable across retries.
    pub id: String,
    /// The task it was routed to.
    pub task: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// The payload, given to the worker on stdin.
    pub payload: Vec<u8>,
    /// 1 for the first delivery, 2 for the first retry, …
    pub attempt: u32,
    /// The backend's handle for this delivery, passed back in
    /// [`QueueBackend::complete`](super::QueueBackend::complete).
    pub receipt: Receipt,
}

/// What happened to a job, given to [`QueueBackend::complete`](super::QueueBackend::complete).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The job is done: acknowledge it (its record is kept for the retention window).
    Done,
    /// Run it again after `delay`; the next delivery has `attempt + 1`.
    Retry {
        /// How long to wait before the job becomes available again.
        delay: Duration,
        /// Why it failed (kept for `status` and logs).
        reason: String,
    },
    /// Give up: move the job to the dead letters.
    DeadLetter {
        /// Why it failed for the last time.
        reason: String,
    },
    /// It was cancelled: it never runs again (acknowledged like a done job).
    Cancelled {
        /// Why (who cancelled it).
        reason: String,
    },
}

impl Outcome {
    /// Whether the job has ended with this outcome (everything but a retry).
    pub fn is_final(&self) -> bool {
        !matches!(self, Outcome::Retry { .. })
    }
}

/// The worker process a job was handed to, recorded with its lease (step 5 of the [queue
/// contract](super)) so that a daemon starting after this one died can find it and stop it
/// before the job runs again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The worker process: pid, start time and boot, so a recycled pid is never taken for it.
    pub process: procyard_core::ProcessIdentity,
    /// The process group the worker leads, where the job's own subprocesses run too.
    pub process_group: procyard_core::Pid,
}

/// A job that a previous daemon left in flight, as
/// [`QueueBackend::abandoned`](super::QueueBackend::abandoned) lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Abandoned {
    /// The job's id.
    pub id: String,
    /// The task it was routed to.
    pub task: String,
    /// The backend's handle for the lease, as
    /// [`QueueBackend::recover`](super::QueueBackend::recover) takes it.
    pub receipt: Receipt,
    /// The worker it was handed to, when that was recorded before the daemon died.
    pub holder: Option<LeaseHolder>,
}
