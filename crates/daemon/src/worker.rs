//! Helpers for writing workers in Rust: [`serve`] runs the longlived protocol
//! ([`crate::protocol`]) over stdin/stdout; [`serve_cancellable`] too, and tells the handler
//! when the daemon cancels the job it runs ([`Cancel`]); [`OneshotJob::from_env`] reads a
//! oneshot job.
//!
//! ```no_run
//! use procyard_daemon::worker::{self, Outcome};
//! fn main() -> Result<(), procyard_daemon::Error> {
//!     worker::serve(|job| {
//!         eprintln!("got {} bytes on {}", job.payload.len(), job.routing_key);
//!         Outcome::Done
//!     })
//! }
//! ```

use std::io::{BufReader, BufWriter, Read, Write};

use procyard_core::frame;

use crate::protocol::{JobHeader, Reply, ReplyOutcome};
use crate::{Error, Result};

mod cancellable;

pub use cancellable::{Cancel, serve_cancellable, serve_cancellable_on};

/// A job, as a worker sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerJob {
    /// The job's id.
    pub id: String,
    /// The task.
    pub task: String,
    /// The routing key.
    pub routing_key: String,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

/// What a handler says about a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Done,
    /// Temporary failure: retry later.
    Retry(String),
    /// Failure: retry until `max_attempts`, then dead-letter.
    Fail(String),
    /// Stopped because the daemon cancelled the job ([`serve_cancellable`]): it ends
    /// `cancelled`, never retried.
    Cancelled,
}

/// The reply frame for job `id`'s `outcome`.
fn reply_of(id: String, outcome: Outcome) -> Reply {
    let (outcome, message) = match outcome {
        Outcome::Done => (ReplyOutcome::Done, None),
        Outcome::Retry(m) => (ReplyOutcome::Retry, Some(m)),
        Outcome::Fail(m) => (ReplyOutcome::Fail, Some(m)),
        Outcome::Cancelled => (ReplyOutcome::Cancelled, None),
    };
    Reply { id, outcome, message }
}

fn protocol_err(reason: impl Into<String>) -> Error {
    Error::Protocol { peer: "daemon (stdin)".into(), reason: reason.into() }
}

/// Serves jobs from stdin, replying on stdout, until stdin ends. Returns `Ok` at a clean end.
pub fn serve(handler: impl FnMut(&WorkerJob) -> Outcome) -> Result<()> {
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    serve_on(BufReader::new(stdin), BufWriter::new(stdout), handler)
}

/// [`serve`] over any reader and writer.
pub fn serve_on<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    mut handler: impl FnMut(&WorkerJob) -> Outcome,
) -> Result<()> {
    loop {
        let header = match frame::read_frame_bytes(&mut input, frame::MAX_FRAME) {
            Ok(None) => return Ok(()),
            Ok(Some(bytes)) => bytes,
            Err(e) => return Err(protocol_err(e.to_string())),
        };
        let header: JobHeader = serde_json::from_slice(&header)
            .map_err(|e| protocol_err(format!("bad job header: {e}")))?;
        let payload = frame::read_frame_bytes(&mut input, frame::MAX_FRAME)
            .map_err(|e| protocol_err(e.to_string()))?
            .ok_or_else(|| protocol_err("stdin ended between a job header and its payload"))?;
        let job = WorkerJob {
            id: header.id,
            task: header.task,
            routing_key: header.routing_key,
            attempt: header.attempt,
            payload,
        };
        let reply = reply_of(job.id.clone(), handler(&job));
        frame::write_frame(&mut output, &reply)
            .map_err(|e| Error::Os { action: "write a reply to stdout", source: e })?;
    }
}

/// A oneshot job: the environment the daemon sets plus the payload on stdin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneshotJob {
    /// `PROCYARD_JOB_ID`.
    pub id: String,
    /// `PROCYARD_ROUTING_KEY`.
    pub routing_key: String,
    /// `PROCYARD_ATTEMPT`.
    pub attempt: u32,
    /// Stdin, read to the end.
    pub payload: Vec<u8>,
}

impl OneshotJob {
    /// Reads the job from the environment and stdin.
    pub fn from_env() -> Result<OneshotJob> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                protocol_err(format!("{name} is not set (not started by procyard-daemon?)"))
            })
        };
        let id = var("PROCYARD_JOB_ID")?;
        let routing_key = var("PROCYARD_ROUTING_KEY")?;
        let attempt = var("PROCYARD_ATTEMPT")?
            .parse()
            .map_err(|_| protocol_err("PROCYARD_ATTEMPT is not a number"))?;
        let mut payload = Vec::new();
        std::io::stdin()
            .read_to_end(&mut payload)
            .map_err(|e| Error::Os { action: "read the payload from stdin", source: e })?;
        Ok(OneshotJob { id, routing_key, attempt, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_jobs_until_eof() {
        let mut input = Vec::new();
        for (i, payload) in [&b"a\nb"[..], b""].iter().enumerate() {
            let h = JobHeader {
                id: format!("j{i}"),
                task: "t".into(),
                routing_key: "k".into(),
                attempt: 1,
            };
            frame::write_frame(&mut input, &h).unwrap();
            frame::write_frame_bytes(&mut input, payload).unwrap();
        }
        let mut out = Vec::new();
        let mut seen = Vec::new();
        serve_on(&input[..], &mut out, |job| {
            seen.push(job.payload.clone());
            if job.payload.is_empty() { Outcome::Fail("empty".into()) } else { Outcome::Done }
        })
        .unwrap();
        assert_eq!(seen, vec![b"a\nb".to_vec(), vec![]]);
        let mut r = &out[..];
        let first: Reply = frame::read_frame(&mut r).unwrap().unwrap();
        let second: Reply = frame::read_frame(&mut r).unwrap().unwrap();
        assert_eq!(first.outcome, ReplyOutcome::Done);
        assert_eq!(second.outcome, ReplyOutcome::Fail);
        assert_eq!(second.message.as_deref(), Some("empty"));
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut input = Vec::new();
        let h = JobHeader { id: "x".into(), task: "t".into(), routing_key: "k".into(), attempt: 1 };
        frame::write_frame(&mut input, &h).unwrap();
        assert!(serve_on(&input[..], Vec::new(), |_| Outcome::Done).is_err());
        assert!(serve_on(&b"\x00\x00\x00\x02{x"[..], Vec::new(), |_| Outcome::Done).is_err());
    }

    /// A payload frame cut short (the daemon died while writing it) is an error, and the
    /// handler never sees the job.
    #[test]
    fn truncated_payload_never_runs() {
        let mut input = Vec::new();
        let h = JobHeader { id: "x".into(), task: "t".into(), routing_key: "k".into(), attempt: 1 };
        frame::write_frame(&mut input, &h).unwrap();
        frame::write_frame_bytes(&mut input, b"0123456789").unwrap();
        for cut in 1..10 {
            let mut ran = false;
            let result = serve_on(&input[..input.len() - cut], Vec::new(), |_| {
                ran = true;
                Outcome::Done
            });
            assert!(result.is_err() && !ran, "a payload cut {cut} bytes short ran");
        }
    }
}
