//! [`Subscription`]: a connection on which a task's supervisor sends its [`Event`]s.

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;

use procyard_core::event::retry_interrupted;
use procyard_core::{Deadline, FrameDecoder};
use rustix::event::{PollFd, PollFlags};

use crate::protocol::{Event, Response};
use crate::{Error, Result};

/// A connection receiving a task's events.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) id: String,
    pub(crate) sock: UnixStream,
    pub(crate) decoder: FrameDecoder,
    pub(crate) closed: bool,
}

impl Subscription {
    /// The next event, waiting until `deadline`; `Ok(None)` on timeout or once the
    /// supervisor closed the connection (see [`Subscription::is_closed`]).
    pub fn next(&mut self, deadline: Deadline) -> Result<Option<Event>> {
        loop {
            match self.decoder.next::<Response>() {
                Ok(Some(Response::Event(ev))) => return Ok(Some(ev)),
                Ok(Some(other)) => {
                    return Err(Error::Protocol {
                        id: self.id.clone(),
                        what: format!("{other:?}"),
                    });
                }
                Ok(None) => {}
                Err(source) => return Err(Error::Connection { id: self.id.clone(), source }),
            }
            if self.closed || deadline.is_expired() {
                return Ok(None);
            }
            let remaining = deadline.remaining();
            let ts = rustix::event::Timespec {
                tv_sec: remaining.as_secs().min(86_400) as i64,
                tv_nsec: i64::from(remaining.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&self.sock, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(Error::Connection {
                        id: self.id.clone(),
                        source: procyard_core::Error::Os { action: "poll", source: e.into() },
                    });
                }
            }
            // Read what is there; end of stream is noted, whole frames already received are
            // still delivered first.
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match retry_interrupted(|| self.sock.read(&mut chunk)) {
                    Ok(0) => {
                        self.closed = true;
                        break;
                    }
                    Ok(n) => self.decoder.feed(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(Error::connection(&self.id, e)),
                }
            }
        }
    }

    /// Whether the supervisor closed the connection.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}
