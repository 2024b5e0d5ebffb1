//! The longlived worker protocol: how the daemon and a `work_model = "longlived"` worker talk
//! over the worker's stdin and stdout.
//!
//! Every message is a procyard frame: a big-endian `u32` length, then that many bytes
//! ([`procyard_core::frame`]); the daemon refuses frames over [`MAX_WORKER_FRAME`].
//!
//! **Daemon → worker (stdin)**, per job, two frames:
//! 1. a JSON [`JobHeader`]: `{"type":"job","id":"0190…","task":"resize","routing_key":"image.png","attempt":1}`
//! 2. the payload, raw bytes (any content, possibly empty).
//!
//! **Worker → daemon (stdout)**, one JSON [`Reply`] frame per job, after the job:
//! `{"id":"0190…","outcome":"done"}`, or `"outcome":"retry"` (temporary failure, like exit
//! 75 for oneshot tasks) or `"outcome":"fail"`, with an optional `"message"`.
//!
//! The daemon sends one job at a time and waits for its reply; a worker takes job after job.
//! End of file on stdin means "stop": finish and exit 0. Write logs to stderr — stdout is the
//! protocol; the daemon relays stderr to its own and keeps what is written during a job with
//! that job's attempt (`procyard-daemon logs ID`). A worker that dies, exits, or replies with a malformed frame or the wrong id
//! during a job fails that job (retried until `max_attempts`), and is replaced with
//! crash-loop backoff. A job's outcome is what its reply says, never the worker's exit code.
//!
//! Python, in full:
//! ```python
//! import json, struct, sys
//! def read(n):
//!     b = sys.stdin.buffer.read(n)
//!     return b if len(b) == n else None
//! while (h := read(4)):
//!     job = json.loads(read(struct.unpack(">I", h)[0]))
//!     payload = read(struct.unpack(">I", read(4))[0])
//!     reply = json.dumps({"id": job["id"], "outcome": "done"}).encode()
//!     sys.stdout.buffer.write(struct.pack(">I", len(reply)) + reply); sys.stdout.flush()
//! ```
//! In Rust, see [`crate::worker`].

use serde::{Deserialize, Serialize};

/// The largest frame the daemon accepts from a worker (replies are small): 1 MiB.
pub const MAX_WORKER_FRAME: usize = 1024 * 1024;

/// The first frame of a job sent to a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "job")]
pub struct JobHeader {
    /// The job's id (stable across retries).
    pub id: String,
    /// The task.
    pub task: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// 1 for the first delivery.
    pub attempt: u32,
}

/// What a worker says about a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyOutcome {
    /// Done: acknowledge.
    Done,
    /// Temporary failure: retry later (counts toward `max_attempts`).
    Retry,
    /// Failure: retry until `max_attempts`, then dead-letter.
    Fail,
}

/// A worker's reply frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The id of the job it answers.
    pub id: String,
    /// The outcome.
    pub outcome: ReplyOutcome,
    /// Why, for failures (shown in dead letters and logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
