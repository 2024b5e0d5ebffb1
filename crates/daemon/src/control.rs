//! The control socket: a Unix stream socket (mode 0600, in a directory only the owner can
//! enter, peers checked with `SO_PEERCRED`) that takes one framed JSON [`Request`] per
//! connection and answers one [`Response`]. A connection lives at most [`IDLE_TIMEOUT`]; a
//! user holds at most [`MAX_PER_UID`] of them (a new one closes that user's oldest).

use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::status::Status;
use crate::{Error, Result};

mod server;

pub use server::{ACCEPT_RETRY, IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_HELD, MAX_PER_UID};
pub(crate) use server::{ControlServer, Incoming};

/// A request to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// "New jobs may be in the queue" (sent by `publish` and `requeue`); no answer.
    Poke,
    /// The daemon's status.
    Status,
    /// Cancel these jobs where this daemon holds them (claimed or running); answered with
    /// [`Response::Cancelling`].
    Cancel {
        /// Job ids.
        ids: Vec<String>,
    },
    /// Answer with [`Response::Ended`] once every one of these jobs has ended (or, with
    /// `any_attempt`, once any attempt of them ends). The connection stays open up to
    /// `timeout_ms`.
    Wait {
        /// Job ids.
        ids: Vec<String>,
        /// Answer at the end of any attempt, not only at the jobs' end (`logs -f`).
        #[serde(default)]
        any_attempt: bool,
        /// How long the client waits at most (the daemon holds the connection that long).
        timeout_ms: u64,
    },
    /// Answer with the output of job `id`'s running attempt written after the offsets given
    /// ([`Response::Output`]) as soon as there is some, or when the attempt ends; with no
    /// `run`, from the start of the attempt running now (waiting for one to start). Answered
    /// with [`Response::Ended`] when the job ended, or the run followed is over: read the
    /// record. The connection stays open up to `timeout_ms`.
    Follow {
        /// The job id.
        id: String,
        /// The run followed so far ([`LiveOutput::run`]), with the offsets of
        /// the bytes already seen.
        #[serde(default)]
        run: Option<u64>,
        /// Stdout bytes already seen.
        #[serde(default)]
        stdout_at: u64,
        /// Stderr bytes already seen.
        #[serde(default)]
        stderr_at: u64,
        /// How long the client waits at most.
        timeout_ms: u64,
    },
    /// Stop claiming jobs for this task (running jobs finish); answered with
    /// [`Response::Applied`].
    Pause {
        /// The task's name.
        task: String,
    },
    /// Claim jobs for this task again.
    Resume {
        /// The task's name.
        task: String,
    },
    /// Run at most `max_workers` jobs of this task at once, until the next reload.
    Scale {
        /// The task's name.
        task: String,
        /// The new limit (at least 1).
        max_workers: usize,
    },
}

/// The daemon's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Response {
    /// The status.
    Status(Box<Status>),
    /// What [`Request::Wait`] waited for happened: read the records.
    Ended,
    /// New output of a followed attempt ([`Request::Follow`]).
    Output(Box<LiveOutput>),
    /// The jobs of a [`Request::Cancel`] that this daemon found and is cancelling.
    Cancelling {
        /// Their ids.
        found: Vec<String>,
    },
    /// A [`Request::Pause`], [`Request::Resume`] or [`Request::Scale`] was applied.
    Applied {
        /// What the daemon did.
        message: String,
    },
    /// The request was malformed or refused.
    Error {
        /// Why.
        message: String,
    },
}

/// New output of a running attempt, as the daemon sends it (`logs -f`, [`crate::follow`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveOutput {
    /// Which run of the job this is (the daemon's token; pass it back to go on).
    pub run: u64,
    /// The attempt's delivery count (`PROCYARD_ATTEMPT`; an attempt's `delivery`).
    pub delivery: u32,
    /// The worker's pid.
    pub worker_pid: Option<i32>,
    /// Stdout bytes written after the offset asked for (a marker line stands for bytes
    /// the bounded capture dropped).
    pub stdout: Vec<u8>,
    /// Stderr bytes likewise.
    pub stderr: Vec<u8>,
    /// Stdout bytes written so far (the next offset to ask from).
    pub stdout_at: u64,
    /// Stderr bytes written so far.
    pub stderr_at: u64,
    /// The attempt ended: these are its last bytes.
    pub ended: bool,
}

fn connect(socket: &Path, timeout: Duration) -> Result<Option<UnixStream>> {
    match UnixStream::connect(socket) {
        Ok(s) => {
            s.set_read_timeout(Some(timeout)).map_err(|e| Error::io("configure", socket, e))?;
            s.set_write_timeout(Some(timeout)).map_err(|e| Error::io("configure", socket, e))?;
            Ok(Some(s))
        }
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            Ok(None)
        }
        Err(e) => Err(Error::io("connect to control socket", socket, e)),
    }
}

/// Tells a running daemon that jobs may be waiting. Returns `false` if no daemon listens
/// (fine: it will find the jobs when it starts).
pub fn poke(socket: &Path) -> Result<bool> {
    let Some(mut s) = connect(socket, Duration::from_secs(5))? else { return Ok(false) };
    match procyard_core::frame::write_frame(&mut s, &Request::Poke) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Error::io("write to control socket", socket, e)),
    }
}

/// Asks the daemon for its status.
pub fn status(socket: &Path) -> Result<Status> {
    match ask(socket, &Request::Status, Duration::from_secs(10))? {
        Some(Response::Status(status)) => Ok(*status),
        Some(Response::Error { message }) => Err(Error::Refused { message }),
        _ => Err(Error::NotRunning { socket: PathBuf::from(socket) }),
    }
}

/// Asks the daemon to pause, resume or scale a task; returns what it did.
pub fn steer(socket: &Path, request: &Request) -> Result<String> {
    match ask(socket, request, Duration::from_secs(10))? {
        Some(Response::Applied { message }) => Ok(message),
        Some(Response::Error { message }) => Err(Error::Refused { message }),
        _ => Err(Error::NotRunning { socket: PathBuf::from(socket) }),
    }
}

/// Sends `request` and reads the answer, waiting at most `timeout` for it: `Ok(None)` when
/// the daemon closed the connection without one; a read that timed out is an
/// [`Error::Io`] of kind `WouldBlock`/`TimedOut` ([`is_timeout`]).
pub fn ask(socket: &Path, request: &Request, timeout: Duration) -> Result<Option<Response>> {
    let not_running = || Error::NotRunning { socket: PathBuf::from(socket) };
    let mut s = connect(socket, timeout.max(Duration::from_millis(1)))?.ok_or_else(not_running)?;
    procyard_core::frame::write_frame(&mut s, request)
        .map_err(|e| Error::io("write to control socket", socket, e))?;
    match procyard_core::frame::read_frame(&mut s) {
        Ok(r) => Ok(r),
        Err(procyard_core::Error::Os { source, .. })
            if matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
        {
            Err(Error::io("read from control socket", socket, source))
        }
        Err(procyard_core::Error::Os { source, .. })
            if source.kind() == ErrorKind::ConnectionReset =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::Protocol {
            peer: format!("control socket {}", socket.display()),
            reason: e.to_string(),
        }),
    }
}

/// Whether `e` is a read from the control socket that timed out.
pub fn is_timeout(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. }
        if matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
}
