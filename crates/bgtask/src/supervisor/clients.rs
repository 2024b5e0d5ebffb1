//! Serving connections: reading their frames, the handshake, and turning each request into an
//! [`Event`] for the transition.

use std::io::{self, Read};
use std::time::Instant;

use mio::Token;
use procyard_core::event::retry_interrupted;
use procyard_core::report;

use super::Supervisor;
use super::state::Event;
use crate::RefusalKind;
use crate::protocol::{MAX_REQUEST, PROTOCOL_VERSION, Request, Response};

impl Supervisor {
    pub(super) fn service_clients(&mut self) {
        for _round in 0..64 {
            // Output freed by consumers may let throttled pipes flow again.
            let mut progress = self.resume_throttled();
            let tokens: Vec<Token> = self.clients.keys().copied().collect();
            for token in tokens {
                progress |= self.service_client(token);
                if self.state.is_finished() {
                    return;
                }
            }
            if !progress {
                break;
            }
        }
        let dead: Vec<Token> =
            self.clients.iter().filter(|(_, c)| c.dead).map(|(t, _)| *t).collect();
        for token in dead {
            if let Some(mut c) = self.clients.remove(&token) {
                let _ = self.poll.registry().deregister(&mut c.stream);
            }
            self.emit(Event::ClientGone { client: token });
        }
        self.settle();
    }

    fn resume_throttled(&mut self) -> bool {
        let mut resumed = false;
        for i in 0..2 {
            let buf = &self.state.outputs[i].buf;
            let room = !self.options.block_when_full || buf.room() > 0;
            if self.pipes[i].throttled && room && buf.writable() > 0 {
                self.read_output(i);
                resumed = true;
            }
        }
        self.settle();
        resumed
    }

    /// Serves one client as far as it can go now; returns whether anything happened.
    fn service_client(&mut self, token: Token) -> bool {
        let mut progress = false;
        if self.state.owes_events(token)
            && self.clients.get(&token).is_some_and(|c| c.pending() < 64 * 1024)
        {
            self.emit(Event::ClientReady { client: token });
            self.settle();
        }
        loop {
            let busy = self.state.is_busy(token);
            let Some(c) = self.clients.get_mut(&token) else { return progress };
            c.flush();
            if !c.can_process(busy) {
                break;
            }
            let frame = match c.decoder.next_bytes() {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    if !c.readable {
                        break;
                    }
                    // Small: every page of the stack it touches stays resident.
                    let mut chunk = [0u8; 8 * 1024];
                    match retry_interrupted(|| c.stream.read(&mut chunk)) {
                        Ok(0) => {
                            c.readable = false;
                            c.dead = true;
                        }
                        Ok(n) => {
                            c.decoder.feed(&chunk[..n]);
                            progress = true;
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                        Err(_) => c.dead = true,
                    }
                    break;
                }
                Err(e) => {
                    // An oversized frame: the stream cannot be resynchronised.
                    c.refuse(RefusalKind::BadRequest, report(&e));
                    c.closing = true;
                    c.flush();
                    break;
                }
            };
            progress = true;
            c.last_active = Instant::now();
            if let Some(len) = c.raw_write.take() {
                // The bytes of a stdin write.
                if frame.len() as u64 != len {
                    c.refuse(RefusalKind::BadRequest, "a write's raw frame has the wrong length");
                    c.closing = true;
                    continue;
                }
                self.emit(Event::Write { client: token, data: frame });
                self.settle();
                continue;
            }
            let request: Request = match serde_json::from_slice(&frame) {
                Ok(r) => r,
                Err(e) => {
                    c.refuse(RefusalKind::BadRequest, format!("invalid request: {e}"));
                    if !c.hello {
                        c.closing = true;
                    }
                    continue;
                }
            };
            if !c.hello {
                self.greet(token, request);
                continue;
            }
            if let Request::Write { len } = request {
                if len > MAX_REQUEST as u64 {
                    c.refuse(RefusalKind::BadRequest, format!("a write of {len} bytes is too big"));
                    c.closing = true;
                } else {
                    c.raw_write = Some(len);
                }
                continue;
            }
            self.emit(Event::Request { client: token, request });
            self.settle();
            if self.state.is_finished() {
                return true;
            }
        }
        if let Some(c) = self.clients.get_mut(&token) {
            c.flush();
        }
        progress
    }

    /// The first request on a connection: a hello in our version, for our task.
    fn greet(&mut self, token: Token, request: Request) {
        let id = self.state.task.id.clone();
        let Some(c) = self.clients.get_mut(&token) else { return };
        match request {
            Request::Hello { version, task } if version == PROTOCOL_VERSION && task == id => {
                c.hello = true;
                c.send(&Response::Hello { version: PROTOCOL_VERSION, task: id });
                return;
            }
            Request::Hello { version, .. } if version != PROTOCOL_VERSION => c.refuse(
                RefusalKind::UnsupportedVersion,
                format!(
                    "protocol version {version} is not supported (this supervisor speaks \
                     version {PROTOCOL_VERSION})"
                ),
            ),
            Request::Hello { task, .. } => c.refuse(
                RefusalKind::BadRequest,
                format!("this supervisor serves task {id}, not {task:?}"),
            ),
            _ => c.refuse(RefusalKind::BadRequest, "the first request must be hello"),
        }
        c.closing = true;
    }
}
