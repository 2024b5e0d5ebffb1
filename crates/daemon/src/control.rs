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

pub use server::{ACCEPT_RETRY, IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_PER_UID};
pub(crate) use server::{ControlServer, Incoming};

/// A request to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// "New jobs may be in the queue" (sent by `publish` and `requeue`); no answer.
    Poke,
    /// The daemon's status.
    Status,
}

/// The daemon's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Response {
    /// The status.
    Status(Box<Status>),
    /// The request was malformed or refused.
    Error {
        /// Why.
        message: String,
    },
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
    let not_running = || Error::NotRunning { socket: PathBuf::from(socket) };
    let mut s = connect(socket, Duration::from_secs(10))?.ok_or_else(not_running)?;
    procyard_core::frame::write_frame(&mut s, &Request::Status)
        .map_err(|e| Error::io("write to control socket", socket, e))?;
    let response: Option<Response> =
        procyard_core::frame::read_frame(&mut s).map_err(|e| Error::Protocol {
            peer: format!("control socket {}", socket.display()),
            reason: e.to_string(),
        })?;
    match response {
        Some(Response::Status(status)) => Ok(*status),
        Some(Response::Error { message }) => Err(Error::Refused { message }),
        None => Err(not_running()),
    }
}
