//! A client connection of the supervisor: framed input, bounded output, flow control.

use std::fs::File;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::time::Instant;

use mio::Token;
use mio::net::UnixStream;
use procyard_core::event::retry_interrupted;
use procyard_core::{Deadline, FrameDecoder, frame};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

use super::OUT_HIGH;
use super::admission::Slot;
use crate::RefusalKind;
use crate::protocol::Response;

pub(super) struct Client {
    pub(super) stream: UnixStream,
    pub(super) decoder: FrameDecoder,
    pub(super) out: Vec<u8>,
    pub(super) out_pos: usize,
    pub(super) readable: bool,
    pub(super) hello: bool,
    pub(super) hello_deadline: Deadline,
    /// The length of the raw frame expected next: the bytes of a stdin write.
    pub(super) raw_write: Option<u64>,
    /// Close once `out` is flushed.
    pub(super) closing: bool,
    pub(super) dead: bool,
    /// The connecting uid (`SO_PEERCRED`).
    pub(super) uid: u32,
    /// When it last sent a request or was last answered.
    pub(super) last_active: Instant,
}

impl Client {
    /// What the admission sees of it; `busy`: the supervisor owes it an answer (a parked
    /// read, room for its stdin bytes).
    pub(super) fn slot(&self, token: Token, busy: bool, subscribed: bool) -> Slot {
        let idle = !self.dead
            && !self.readable
            && !busy
            && self.raw_write.is_none()
            && self.pending() == 0
            && self.decoder.buffered() == 0;
        Slot { token, uid: self.uid, idle_since: idle.then_some(self.last_active), subscribed }
    }

    pub(super) fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    pub(super) fn send(&mut self, response: &Response) {
        match frame::encode_frame(response) {
            Ok(bytes) => self.out.extend_from_slice(&bytes),
            Err(e) => {
                tracing::warn!("cannot encode a response: {e}");
                self.dead = true;
            }
        }
    }

    pub(super) fn refuse(&mut self, kind: RefusalKind, message: impl Into<String>) {
        self.send(&Response::Error { kind, message: message.into() });
    }

    pub(super) fn flush(&mut self) {
        while self.out_pos < self.out.len() {
            match retry_interrupted(|| self.stream.write(&self.out[self.out_pos..])) {
                Ok(0) => {
                    self.dead = true;
                    return;
                }
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.closing {
                self.dead = true;
            }
        } else if self.out_pos > 1024 * 1024 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Sends `response` with `file`'s descriptor attached (`SCM_RIGHTS`), after what is
    /// pending; refuses instead when the pending output does not drain now.
    pub(super) fn send_with_fd(&mut self, response: &Response, file: &File) {
        self.flush();
        let bytes = match frame::encode_frame(response) {
            Ok(bytes) if self.pending() == 0 => bytes,
            Ok(_) => return self.refuse(RefusalKind::Failed, "the connection is busy"),
            Err(e) => {
                tracing::warn!("cannot encode a response: {e}");
                self.dead = true;
                return;
            }
        };
        let fds = [file.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        match retry_interrupted(|| {
            rustix::net::sendmsg(&self.stream, &[io::IoSlice::new(&bytes)], &mut control, flags)
                .map_err(io::Error::from)
        }) {
            // The descriptor went with the first byte; the rest is ordinary output.
            Ok(n) if n > 0 => self.out.extend_from_slice(&bytes[n..]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.refuse(RefusalKind::Failed, "the connection is busy")
            }
            _ => self.dead = true,
        }
    }

    /// Whether its next request may be read (`busy`: it waits for an answer).
    pub(super) fn can_process(&self, busy: bool) -> bool {
        !self.dead && !self.closing && !busy && self.pending() < OUT_HIGH
    }

    /// Flushes with a deadline, blocking (used only on the way out).
    pub(super) fn blocking_flush(&mut self, deadline: Deadline) {
        while self.pending() > 0 && !self.dead && !deadline.is_expired() {
            self.flush();
            if self.pending() > 0 {
                let remaining = deadline.remaining();
                let ts = rustix::event::Timespec {
                    tv_sec: remaining.as_secs() as i64,
                    tv_nsec: i64::from(remaining.subsec_nanos()),
                };
                let mut fds =
                    [rustix::event::PollFd::new(&self.stream, rustix::event::PollFlags::OUT)];
                let _ = rustix::event::poll(&mut fds, Some(&ts));
            }
        }
    }
}
