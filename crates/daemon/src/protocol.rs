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
//! **Cancel** (optional; older workers need not know it). The daemon sets
//! `PROCYARD_PROTOCOL=2` ([`PROTOCOL_ENV`]) in a longlived worker's environment. A worker that
//! can stop a job part-way says so once, first thing on stdout, with a [`Hello`] frame
//! `{"type":"hello","cancel":true}`. When such a job is cancelled (`procyard-daemon cancel ID`)
//! the daemon sends it a [`CancelFrame`] `{"type":"cancel","id":"0190…"}` (one frame, no
//! payload; it may arrive while the job runs, so the worker must read stdin while it works);
//! the worker stops that job and replies as usual (`"outcome":"cancelled"`, or any other: the
//! job ends `cancelled` whatever it says) and takes the next job. A worker that does not reply
//! within the daemon's `kill_timeout` gets the stop ladder (TERM to its process group, then
//! KILL after `kill_timeout`), and so does, at once, a worker that sent no hello: its job ends
//! `cancelled` either way and is never retried. A cancel for a job the worker no longer runs
//! is to be ignored.
//!
//! **Jobs sent ahead** (the task's `prefetch = N`, protocol 2). A worker whose hello also says
//! `"prefetch":true` (`{"type":"hello","cancel":true,"prefetch":true}`) may be sent up to N
//! jobs before it replies to the first: it serves them one after another in the order sent
//! and replies in that order, and a cancel frame for a job it has read but not started means
//! "do not run it": it replies `"outcome":"cancelled"` without running it. The daemon counts
//! every job sent as in flight (leased; shown by `status`); if the worker dies, the job it ran
//! fails as usual and the ones sent after it go to other workers (they never started).
//!
//! Otherwise the daemon sends one job at a time and waits for its reply; a worker takes job after job.
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

/// The environment variable, set in a longlived worker's environment, that says which
/// version of this protocol the daemon speaks: `2` accepts a [`Hello`] and sends
/// [`CancelFrame`]s to the workers that announced them.
pub const PROTOCOL_ENV: &str = "PROCYARD_PROTOCOL";

/// The protocol version this daemon speaks (the value of [`PROTOCOL_ENV`]).
pub const PROTOCOL_VERSION: u32 = 2;

/// Daemon → worker: stop the job `id` (sent only to a worker that announced `cancel` in its
/// [`Hello`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "cancel")]
pub struct CancelFrame {
    /// The job to stop.
    pub id: String,
}

/// Worker → daemon, once, before any reply: what the worker understands beyond version 1.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "hello")]
pub struct Hello {
    /// The worker stops a job when sent a [`CancelFrame`].
    #[serde(default)]
    pub cancel: bool,
    /// The worker takes jobs sent ahead (the task's `prefetch`): it serves them in the order
    /// sent, replies in that order, and does not run a job whose cancel frame it read before
    /// starting it (it replies `cancelled` instead). Only with `cancel`.
    #[serde(default)]
    pub prefetch: bool,
}

/// A frame a worker sent: a reply, or its hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerFrame {
    /// A reply to a job.
    Reply(Reply),
    /// The worker's hello.
    Hello(Hello),
}

impl WorkerFrame {
    /// Parses one frame's bytes; a frame that is neither is an error saying why it is not a
    /// reply.
    pub fn parse(bytes: &[u8]) -> Result<WorkerFrame, String> {
        match serde_json::from_slice::<Reply>(bytes) {
            Ok(reply) => Ok(WorkerFrame::Reply(reply)),
            Err(e) => {
                /// A hello as read: its `type` checked by hand (serde does not check a
                /// struct's tag).
                #[derive(Deserialize)]
                struct Tagged {
                    #[serde(rename = "type")]
                    kind: String,
                    #[serde(default)]
                    cancel: bool,
                    #[serde(default)]
                    prefetch: bool,
                }
                match serde_json::from_slice::<Tagged>(bytes) {
                    Ok(t) if t.kind == "hello" => {
                        Ok(WorkerFrame::Hello(Hello { cancel: t.cancel, prefetch: t.prefetch }))
                    }
                    _ => Err(format!("bad reply frame: {e}")),
                }
            }
        }
    }
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
    /// The worker stopped the job when told to cancel it: it ends `cancelled`, never
    /// retried.
    Cancelled,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_frames_parse() {
        let reply = WorkerFrame::parse(br#"{"id":"a","outcome":"cancelled"}"#).unwrap();
        assert!(matches!(reply, WorkerFrame::Reply(r) if r.outcome == ReplyOutcome::Cancelled));
        let hello = WorkerFrame::parse(br#"{"type":"hello","cancel":true}"#).unwrap();
        assert_eq!(hello, WorkerFrame::Hello(Hello { cancel: true, prefetch: false }));
        let hello =
            WorkerFrame::parse(br#"{"type":"hello","cancel":true,"prefetch":true}"#).unwrap();
        assert_eq!(hello, WorkerFrame::Hello(Hello { cancel: true, prefetch: true }));
        let err = WorkerFrame::parse(br#"{"type":"hi"}"#).unwrap_err();
        assert!(err.contains("bad reply frame") && err.contains("id"), "{err}");
        let cancel = serde_json::to_string(&CancelFrame { id: "j".into() }).unwrap();
        assert_eq!(cancel, r#"{"type":"cancel","id":"j"}"#);
    }
}
