//! A client connection of the supervisor: framed input, bounded output, flow control.

use std::io::{self, Write};
use std::time::Instant;

use mio::Token;
use mio::net::UnixStream;
use procyard_core::event::retry_interrupted;
use procyard_core::{Deadline, FrameDecoder, frame};

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

    /// Writes what is pending, then `a` and `b`, straight to the socket (one `writev` per
    /// round); whatever the socket does not take is appended to the pending output.
    pub(super) fn write_direct(&mut self, a: &[u8], b: &[u8]) {
        let (mut a, mut b) = (a, b);
        if self.pending() <= 64 * 1024 {
            while !self.dead && (!a.is_empty() || !b.is_empty()) {
                let head = &self.out[self.out_pos..];
                let iov = [io::IoSlice::new(head), io::IoSlice::new(a), io::IoSlice::new(b)];
                match retry_interrupted(|| self.stream.write_vectored(&iov)) {
                    Ok(0) => self.dead = true,
                    Ok(mut n) => {
                        let from_head = n.min(head.len());
                        self.out_pos += from_head;
                        n -= from_head;
                        let from_a = n.min(a.len());
                        a = &a[from_a..];
                        b = &b[n - from_a..];
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => self.dead = true,
                }
            }
            if self.out_pos == self.out.len() {
                self.out.clear();
                self.out_pos = 0;
            }
        }
        if !self.dead {
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b);
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
