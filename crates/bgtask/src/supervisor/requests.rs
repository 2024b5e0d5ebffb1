//! Serving clients: reading their frames, the handshake, and each request of the protocol.

use std::io::{self, Read};
use std::time::Instant;

use mio::Token;
use procyard_core::Signal;

use super::{
    Event, MAX_READ, PROTOCOL_VERSION, Request, Response, STDIN_CAP, Supervisor, merge_meta,
    stream_index, stream_info,
};
use crate::{RefusalKind, error_chain};

impl Supervisor {
    pub(super) fn service_clients(&mut self) {
        // Output freed by consumers may let throttled pipes flow again.
        for i in 0..2 {
            if self.outputs[i].throttled && self.outputs[i].buf.room() > 0 {
                self.read_output(i);
            }
        }
        for _round in 0..64 {
            let mut progress = false;
            let tokens: Vec<Token> = self.clients.keys().copied().collect();
            for token in tokens {
                progress |= self.service_client(token);
                if self.finished {
                    return;
                }
            }
            for i in 0..2 {
                if self.outputs[i].throttled && self.outputs[i].buf.room() > 0 {
                    self.read_output(i);
                    progress = true;
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
        }
    }

    /// Serves one client as far as it can go now; returns whether anything happened.
    pub(super) fn service_client(&mut self, token: Token) -> bool {
        let mut progress = false;
        // A parked read completes once there is something to say.
        if let Some(Request::Read { stream, .. }) =
            self.clients.get(&token).and_then(|c| c.parked.clone())
        {
            let out = &self.outputs[stream_index(stream)];
            let offset = self.read_offset(token);
            if (offset < out.buf.limit() || out.eof || !self.is_alive())
                && let Some(req) = self.clients.get_mut(&token).and_then(|c| c.parked.take())
            {
                if let Some(c) = self.clients.get_mut(&token) {
                    c.last_active = Instant::now();
                }
                self.handle(token, req);
                progress = true;
            }
        }
        if let Some(c) = self.clients.get_mut(&token)
            && c.subscribed
            && c.pending() < 64 * 1024
        {
            for i in 0..2 {
                if c.dirty[i] {
                    c.dirty[i] = false;
                    let o = &self.outputs[i];
                    c.send(&Response::Event(Event::Output {
                        stream: o.name,
                        limit: o.buf.limit(),
                    }));
                }
            }
        }
        loop {
            let Some(c) = self.clients.get_mut(&token) else { return progress };
            c.flush();
            if !c.can_process() {
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
                    match c.stream.read(&mut chunk) {
                        Ok(0) => {
                            c.readable = false;
                            c.dead = true;
                            break;
                        }
                        Ok(n) => {
                            c.decoder.feed(&chunk[..n]);
                            progress = true;
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            c.readable = false;
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => {
                            c.dead = true;
                            break;
                        }
                    }
                }
                Err(e) => {
                    // An oversized frame: the stream cannot be resynchronised.
                    c.refuse(RefusalKind::BadRequest, error_chain(&e));
                    c.closing = true;
                    c.flush();
                    break;
                }
            };
            progress = true;
            c.last_active = Instant::now();
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
                match request {
                    Request::Hello { version, task }
                        if version == PROTOCOL_VERSION && task == self.id =>
                    {
                        c.hello = true;
                        c.send(&Response::Hello {
                            version: PROTOCOL_VERSION,
                            task: self.id.clone(),
                        });
                    }
                    Request::Hello { version, .. } if version != PROTOCOL_VERSION => {
                        c.refuse(
                            RefusalKind::UnsupportedVersion,
                            format!(
                                "protocol version {version} is not supported (this supervisor \
                                 speaks version {PROTOCOL_VERSION})"
                            ),
                        );
                        c.closing = true;
                    }
                    Request::Hello { task, .. } => {
                        c.refuse(
                            RefusalKind::BadRequest,
                            format!("this supervisor serves task {}, not {task:?}", self.id),
                        );
                        c.closing = true;
                    }
                    _ => {
                        c.refuse(RefusalKind::BadRequest, "the first request must be hello");
                        c.closing = true;
                    }
                }
                continue;
            }
            self.handle(token, request);
            if self.finished {
                return true;
            }
        }
        if let Some(c) = self.clients.get_mut(&token) {
            c.flush();
        }
        progress
    }

    pub(super) fn read_offset(&self, token: Token) -> u64 {
        match self.clients.get(&token).and_then(|c| c.parked.as_ref()) {
            Some(Request::Read { stream, offset, .. }) => {
                let buf = &self.outputs[stream_index(*stream)].buf;
                offset.unwrap_or_else(|| buf.consumed()).max(buf.start())
            }
            _ => 0,
        }
    }

    pub(super) fn handle(&mut self, token: Token, request: Request) {
        let reply = match request {
            Request::Hello { .. } => Some(Response::Error {
                kind: RefusalKind::BadRequest,
                message: "already greeted".into(),
            }),
            Request::Info => Some(Response::Info(Box::new(self.info()))),
            Request::ApplyMeta { meta } => {
                merge_meta(&mut self.meta, &meta);
                self.save();
                Some(Response::Ok)
            }
            Request::Read { stream, offset, count, consume, wait } => {
                let i = stream_index(stream);
                let out = &mut self.outputs[i];
                // Below `start`, the bytes asked for were dropped: the answer says how many.
                let requested = offset.unwrap_or_else(|| out.buf.consumed_mark());
                let at = requested.clamp(out.buf.start(), out.buf.limit());
                let dropped = out.buf.start().saturating_sub(requested);
                if wait
                    && at >= out.buf.limit()
                    && !out.eof
                    && self.child.as_ref().is_some_and(|c| c.exit().is_none())
                {
                    if let Some(c) = self.clients.get_mut(&token) {
                        c.parked = Some(Request::Read { stream, offset, count, consume, wait });
                    }
                    return;
                }
                let exited = self.child.as_ref().is_none_or(|c| c.exit().is_some());
                let Some(c) = self.clients.get_mut(&token) else { return };
                let count = count.min(MAX_READ) as usize;
                let len = (out.buf.limit() - at).min(count as u64);
                if consume {
                    out.buf.consume(at + len);
                }
                let info = stream_info(out);
                c.send(&Response::Data { stream, offset: at, len, dropped, info, exited });
                // The raw frame, written straight from the retained bytes; only what the
                // socket does not take now is copied.
                c.out.extend_from_slice(&(len as u32).to_be_bytes());
                let (a, b) = out.buf.slices(at, len as usize);
                c.write_direct(a, b);
                None
            }
            Request::Discard { stream, upto } => {
                self.outputs[stream_index(stream)].buf.discard(upto);
                Some(Response::Ok)
            }
            Request::ReadData { consume } => {
                let messages: Vec<_> = if consume {
                    self.datagrams.drain(..).collect()
                } else {
                    self.datagrams.iter().cloned().collect()
                };
                Some(Response::Datagrams { messages })
            }
            Request::Write { data } => {
                if self.stdin.is_none() || self.stdin_close {
                    Some(Response::Error {
                        kind: RefusalKind::StdinClosed,
                        message: "stdin is closed".into(),
                    })
                } else {
                    self.stdin_queue.extend(data);
                    self.flush_stdin();
                    if self.stdin_queue.len() >= STDIN_CAP && self.stdin.is_some() {
                        if let Some(c) = self.clients.get_mut(&token) {
                            c.waiting_stdin = true;
                        }
                        None
                    } else if self.stdin.is_none() && self.stdin_close {
                        Some(Response::Error {
                            kind: RefusalKind::StdinClosed,
                            message: "the task closed its stdin".into(),
                        })
                    } else {
                        Some(Response::Ok)
                    }
                }
            }
            Request::CloseStdin => {
                if self.stdin.is_none() {
                    Some(Response::Error {
                        kind: RefusalKind::StdinClosed,
                        message: "stdin is closed".into(),
                    })
                } else {
                    self.stdin_close = true;
                    self.flush_stdin();
                    Some(Response::Ok)
                }
            }
            Request::Signal { signal } => Some(self.signal_reply(signal)),
            Request::Pause => Some(self.signal_reply(Signal::STOP)),
            Request::Resume => Some(self.signal_reply(Signal::CONT)),
            Request::Restart => Some(self.restart()),
            Request::Subscribe => {
                if let Some(c) = self.clients.get_mut(&token) {
                    c.subscribed = true;
                }
                Some(Response::Ok)
            }
            Request::Delete => {
                self.start_delete(Some(token));
                self.step_delete();
                None
            }
        };
        if let (Some(reply), Some(c)) = (reply, self.clients.get_mut(&token)) {
            c.send(&reply);
        }
    }

    pub(super) fn signal_reply(&mut self, signal: Signal) -> Response {
        match self.signal_task(signal) {
            Ok(()) => Response::Ok,
            Err((kind, message)) => Response::Error { kind, message },
        }
    }

    pub(super) fn restart(&mut self) -> Response {
        if self.is_alive() {
            return Response::Error {
                kind: RefusalKind::StillRunning,
                message: format!("task {} is still running", self.id),
            };
        }
        // Whatever is left in the old pipes (held open by a grandchild) is collected first.
        for i in 0..2 {
            self.read_output(i);
            if let Some(mut pipe) = self.outputs[i].pipe.take() {
                let _ = self.poll.registry().deregister(&mut pipe);
            }
        }
        self.child = None;
        // What the last run left running does not carry over into the new one.
        self.sweep = None;
        self.kill_escapees();
        match self.spawn_child() {
            Ok(()) => {
                self.restarts = self.restarts.saturating_add(1);
                self.save();
                self.broadcast(&Event::Restarted);
                Response::Ok
            }
            Err(message) => Response::Error { kind: RefusalKind::Failed, message },
        }
    }
}
