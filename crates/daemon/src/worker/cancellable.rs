//! Serving jobs that can be cancelled while they run ([`serve_cancellable`]): a thread reads
//! stdin (job frames and cancel frames) while the handler works, and a job's [`Cancel`] tells
//! the handler that the daemon asked it to stop.

use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use procyard_core::frame;
use serde::Deserialize;

use super::{Outcome, WorkerJob, protocol_err, reply_of};
use crate::protocol::{Hello, PROTOCOL_ENV};
use crate::{Error, Result};

/// Whether the daemon asked to stop a job: handed to the handler of [`serve_cancellable`]
/// with each job. Cheap to clone; every clone sees the same request.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<(Mutex<bool>, Condvar)>);

impl Cancel {
    /// A cancel signal that nothing has triggered yet.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Whether the job was cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.0.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until the job is cancelled or `timeout` passes; returns whether it was
    /// cancelled (at once if it already was). For handlers that wait on time.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.0;
        let mut cancelled = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while !*cancelled {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            cancelled =
                cvar.wait_timeout(cancelled, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }

    /// Marks the job cancelled and wakes whoever waits on it.
    pub fn cancel(&self) {
        let (lock, cvar) = &*self.0;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cvar.notify_all();
    }
}

/// A frame from the daemon, by its `type`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum FromDaemon {
    Job { id: String, task: String, routing_key: String, attempt: u32 },
    Cancel { id: String },
}

/// What the reading thread hands to the serving one.
enum FromReader {
    Job(WorkerJob, Cancel),
    /// Stdin ended (`Ok`) or broke the protocol.
    End(Result<()>),
}

/// Like [`super::serve`], but the handler also gets the job's [`Cancel`], triggered when the
/// daemon cancels the job (`procyard-daemon cancel ID`). Stop soon after, and return
/// [`Outcome::Cancelled`] (whatever it returns, the job ends `cancelled`); the worker then
/// takes the next job. Announces cancel support to a daemon that speaks protocol 2 (the
/// [`PROTOCOL_ENV`] variable); an older daemon never sends cancel frames.
///
/// ```no_run
/// use std::time::Duration;
/// use procyard_daemon::worker::{self, Outcome};
/// fn main() -> Result<(), procyard_daemon::Error> {
///     worker::serve_cancellable(|job, cancel| {
///         for _chunk in 0..100 {
///             if cancel.wait_timeout(Duration::from_millis(10)) {
///                 return Outcome::Cancelled;
///             }
///             // … a slice of the work on job.payload …
///         }
///         Outcome::Done
///     })
/// }
/// ```
pub fn serve_cancellable(handler: impl FnMut(&WorkerJob, &Cancel) -> Outcome) -> Result<()> {
    let announce = std::env::var(PROTOCOL_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .is_some_and(|v| v >= 2);
    let stdout = std::io::stdout().lock();
    serve_cancellable_on(
        BufReader::new(std::io::stdin()),
        BufWriter::new(stdout),
        announce,
        handler,
    )
}

/// [`serve_cancellable`] over any reader (read on a thread of its own) and writer; `announce`
/// writes the hello frame first.
pub fn serve_cancellable_on<R: Read + Send + 'static, W: Write>(
    input: R,
    mut output: W,
    announce: bool,
    mut handler: impl FnMut(&WorkerJob, &Cancel) -> Outcome,
) -> Result<()> {
    let write_err = |e| Error::Os { action: "write a frame to stdout", source: e };
    if announce {
        let hello = Hello { cancel: true, prefetch: true };
        frame::write_frame(&mut output, &hello).map_err(write_err)?;
        output.flush().map_err(write_err)?;
    }
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("procyard-worker-stdin".into())
        .spawn(move || read_frames(input, &tx))
        .map_err(|e| Error::Os { action: "start the thread that reads stdin", source: e })?;
    loop {
        match rx.recv() {
            Ok(FromReader::Job(job, cancel)) => {
                // A job sent ahead whose cancel came before it started is not run at all.
                let outcome =
                    if cancel.is_cancelled() { Outcome::Cancelled } else { handler(&job, &cancel) };
                let reply = reply_of(job.id.clone(), outcome);
                frame::write_frame(&mut output, &reply).map_err(write_err)?;
            }
            Ok(FromReader::End(result)) => return result,
            Err(_) => return Err(protocol_err("the thread reading stdin ended")),
        }
    }
}

/// The jobs read lately whose cancel a frame may still trigger (one runs; more wait when the
/// daemon sends jobs ahead).
const RECENT: usize = 64;

/// Reads frames until stdin ends, handing jobs on and triggering a recent job's cancel.
fn read_frames<R: Read>(mut input: R, tx: &mpsc::Sender<FromReader>) {
    let mut recent: std::collections::VecDeque<(String, Cancel)> =
        std::collections::VecDeque::new();
    let end = loop {
        let bytes = match frame::read_frame_bytes(&mut input, frame::MAX_FRAME) {
            Ok(None) => break Ok(()),
            Ok(Some(bytes)) => bytes,
            Err(e) => break Err(protocol_err(e.to_string())),
        };
        let msg: FromDaemon = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => break Err(protocol_err(format!("bad frame from the daemon: {e}"))),
        };
        match msg {
            FromDaemon::Cancel { id } => {
                // A cancel for a job that already ended is ignored.
                if let Some((_, cancel)) = recent.iter().find(|(job, _)| *job == id) {
                    cancel.cancel();
                }
            }
            FromDaemon::Job { id, task, routing_key, attempt } => {
                let payload = match frame::read_frame_bytes(&mut input, frame::MAX_FRAME) {
                    Ok(Some(p)) => p,
                    Ok(None) => {
                        break Err(protocol_err(
                            "stdin ended between a job header and its payload",
                        ));
                    }
                    Err(e) => break Err(protocol_err(e.to_string())),
                };
                let cancel = Cancel::new();
                if recent.len() == RECENT {
                    recent.pop_front();
                }
                recent.push_back((id.clone(), cancel.clone()));
                let job = WorkerJob { id, task, routing_key, attempt, payload };
                if tx.send(FromReader::Job(job, cancel)).is_err() {
                    return;
                }
            }
        }
    };
    let _ = tx.send(FromReader::End(end));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CancelFrame, JobHeader, Reply, ReplyOutcome, WorkerFrame};

    fn job_frames(out: &mut Vec<u8>, id: &str, payload: &[u8]) {
        let h = JobHeader { id: id.into(), task: "t".into(), routing_key: "k".into(), attempt: 1 };
        frame::write_frame(out, &h).unwrap();
        frame::write_frame_bytes(out, payload).unwrap();
    }

    /// A cancel frame read while the handler works triggers that job's cancel (and only
    /// that job's); the worker replies `cancelled` and serves the next job; a hello comes
    /// first when announced.
    #[test]
    fn a_cancel_frame_stops_the_running_job_and_the_next_one_runs() {
        let mut input = Vec::new();
        job_frames(&mut input, "a", b"wait");
        frame::write_frame(&mut input, &CancelFrame { id: "a".into() }).unwrap();
        frame::write_frame(&mut input, &CancelFrame { id: "gone".into() }).unwrap();
        job_frames(&mut input, "b", b"quick");
        let mut out = Vec::new();
        serve_cancellable_on(std::io::Cursor::new(input), &mut out, true, |job, cancel| {
            if job.payload == b"wait" {
                assert!(cancel.wait_timeout(Duration::from_secs(30)), "the cancel arrives");
                Outcome::Cancelled
            } else {
                assert!(!cancel.is_cancelled(), "a new job starts uncancelled");
                Outcome::Done
            }
        })
        .unwrap();
        let mut r = &out[..];
        let mut frames = Vec::new();
        while let Some(b) = frame::read_frame_bytes(&mut r, frame::MAX_FRAME).unwrap() {
            frames.push(WorkerFrame::parse(&b).unwrap());
        }
        let reply =
            |id: &str, outcome| WorkerFrame::Reply(Reply { id: id.into(), outcome, message: None });
        assert_eq!(
            frames,
            vec![
                WorkerFrame::Hello(Hello { cancel: true, prefetch: true }),
                reply("a", ReplyOutcome::Cancelled),
                reply("b", ReplyOutcome::Done)
            ]
        );
    }

    /// A reader that says when it reached its end (every frame before it was handled).
    struct Ends(std::io::Cursor<Vec<u8>>, mpsc::Sender<()>);

    impl Read for Ends {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            if n == 0 {
                let _ = self.1.send(());
            }
            Ok(n)
        }
    }

    /// A job sent ahead whose cancel frame arrives before it starts is never run: it is
    /// answered `cancelled`, in its place, and the jobs around it run.
    #[test]
    fn a_job_cancelled_before_it_starts_never_runs() {
        let mut input = Vec::new();
        job_frames(&mut input, "a", b"first");
        job_frames(&mut input, "b", b"ahead");
        frame::write_frame(&mut input, &CancelFrame { id: "b".into() }).unwrap();
        job_frames(&mut input, "c", b"last");
        let (end_tx, end_rx) = mpsc::channel();
        let mut out = Vec::new();
        let mut ran = Vec::new();
        let reader = Ends(std::io::Cursor::new(input), end_tx);
        serve_cancellable_on(reader, &mut out, false, |job, _| {
            if job.id == "a" {
                // Job a runs until every frame sent after it was read.
                end_rx.recv_timeout(Duration::from_secs(30)).expect("stdin read to its end");
            }
            ran.push(job.id.clone());
            Outcome::Done
        })
        .unwrap();
        assert_eq!(ran, ["a", "c"]);
        let mut r = &out[..];
        let mut replies = Vec::new();
        while let Some(b) = frame::read_frame_bytes(&mut r, frame::MAX_FRAME).unwrap() {
            let WorkerFrame::Reply(reply) = WorkerFrame::parse(&b).unwrap() else { panic!() };
            replies.push((reply.id, reply.outcome));
        }
        let expected = [
            ("a".to_owned(), ReplyOutcome::Done),
            ("b".to_owned(), ReplyOutcome::Cancelled),
            ("c".to_owned(), ReplyOutcome::Done),
        ];
        assert_eq!(replies, expected);
    }

    #[test]
    fn garbage_from_the_daemon_is_an_error_and_no_hello_unless_announced() {
        let mut out = Vec::new();
        let input = std::io::Cursor::new(b"\x00\x00\x00\x02{x".to_vec());
        assert!(serve_cancellable_on(input, &mut out, false, |_, _| Outcome::Done).is_err());
        assert!(out.is_empty());
        let cancel = Cancel::new();
        assert!(!cancel.wait_timeout(Duration::from_millis(1)));
    }
}
