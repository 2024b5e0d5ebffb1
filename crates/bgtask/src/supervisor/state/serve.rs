//! The transition for the task's data: info, metadata, output (reads parked until there is
//! something to say, events to subscribers), datagrams, stdin.

use super::{Action, ClientId, MAX_DATAGRAMS, STDIN_CAP, STREAMS, State, refuse, stream_index};
use crate::RefusalKind;
use crate::meta::merge_meta;
use crate::protocol::{Event as Announce, MAX_READ, Request, Response, StreamName};

impl State {
    /// Answers a request that does not act on the task's processes.
    pub(super) fn serve(&mut self, client: ClientId, request: Request, out: &mut Vec<Action>) {
        let reply = match request {
            Request::Hello { .. } => {
                Response::Error { kind: RefusalKind::BadRequest, message: "already greeted".into() }
            }
            Request::Info => Response::Info(Box::new(self.info())),
            Request::ApplyMeta { meta } => {
                merge_meta(&mut self.meta, &meta);
                out.push(Action::Save);
                Response::Ok
            }
            Request::Read { .. } => return self.read(client, request, out),
            Request::Discard { stream, upto } => {
                self.outputs[stream_index(stream)].buf.discard(upto);
                Response::Ok
            }
            Request::ReadData { consume } => {
                let messages: Vec<_> = if consume {
                    self.datagrams.drain(..).collect()
                } else {
                    self.datagrams.iter().cloned().collect()
                };
                Response::Datagrams { messages }
            }
            Request::Write { .. } => Response::Error {
                kind: RefusalKind::BadRequest,
                message: "a write's bytes must follow it as a raw frame".into(),
            },
            Request::CloseStdin => {
                if !self.stdin.open {
                    Response::Error {
                        kind: RefusalKind::StdinClosed,
                        message: "stdin is closed".into(),
                    }
                } else {
                    self.stdin.closing = true;
                    out.push(Action::FlushStdin);
                    Response::Ok
                }
            }
            Request::OutputFile { stream } => {
                out.push(Action::SendOutputFile { client, stream });
                return;
            }
            Request::Release { stream } => {
                self.outputs[stream_index(stream)].buf.unpin(client.0);
                return;
            }
            Request::Subscribe => {
                self.peers.entry(client).or_default().subscribed = true;
                Response::Ok
            }
            // Acted on by `State::request`.
            Request::Signal { .. }
            | Request::Pause
            | Request::Resume
            | Request::Restart
            | Request::Delete => return self.request_again(client, request, out),
        };
        out.push(Action::Send(client, reply));
    }

    fn request_again(&mut self, client: ClientId, request: Request, out: &mut Vec<Action>) {
        let message = format!("{request:?} cannot be served here");
        out.push(refuse(client, RefusalKind::BadRequest, message));
    }

    /// A read: answered now with what is retained, or parked (`wait`) until bytes arrive,
    /// the stream ends or the task exits.
    fn read(&mut self, client: ClientId, request: Request, out: &mut Vec<Action>) {
        let Request::Read { stream, offset, count, consume, wait, at_least, file } = request else {
            return;
        };
        let running = self.running();
        let o = &mut self.outputs[stream_index(stream)];
        // Bytes left in the pipe of a task that exited are output still to come.
        let live = running || o.held;
        // Below `start`, the bytes asked for were dropped: the answer says how many.
        let requested = offset.unwrap_or_else(|| o.buf.consumed_mark());
        let at = requested.clamp(o.buf.start(), o.buf.limit());
        let dropped = o.buf.start().saturating_sub(requested);
        // What the read waits for: one byte, or `at_least` when more can still come (never
        // more than the answer holds or the retention can hold; never while it is full, when
        // a blocked task would wait for the reader).
        let want = at_least.min(count.min(MAX_READ)).min(o.buf.cap() as u64).max(1);
        let want = if o.buf.room() == 0 { 1 } else { want };
        if wait && o.buf.limit() - at < want && !o.eof && live {
            self.peers.entry(client).or_default().parked = Some(request);
            return;
        }
        let len = (o.buf.limit() - at).min(count.min(MAX_READ));
        if consume {
            o.buf.consume(at + len);
        }
        // A reader holding the memfd copies the bytes itself; they stay put until it is done.
        let ring = if file && o.buf.file().is_some() { o.buf.cap() as u64 } else { 0 };
        if ring > 0 {
            o.buf.pin(client.0, at);
        }
        let info = self.stream_info(stream);
        let response =
            Response::Data { stream, offset: at, len, dropped, info, exited: !live, ring };
        if ring > 0 {
            out.push(Action::Send(client, response));
        } else {
            out.push(Action::SendData { client, response, stream, at, len });
        }
    }

    /// A stdin write: queued, and answered once the queue is below its cap.
    pub(super) fn write(&mut self, client: ClientId, data: Vec<u8>, out: &mut Vec<Action>) {
        if !self.stdin.open || self.stdin.closing {
            out.push(refuse(client, RefusalKind::StdinClosed, "stdin is closed"));
            return;
        }
        self.stdin.queue.extend(data);
        self.stdin.waiting.push(client);
        out.push(Action::FlushStdin);
    }

    pub(super) fn stdin_flushed(&mut self, broken: bool, out: &mut Vec<Action>) {
        if broken {
            // The task closed its stdin: what is queued can never be written.
            self.stdin.queue.clear();
            self.stdin.closing = true;
            for client in std::mem::take(&mut self.stdin.waiting) {
                out.push(refuse(client, RefusalKind::StdinClosed, "the task closed its stdin"));
            }
        } else if self.stdin.queue.len() < STDIN_CAP {
            for client in std::mem::take(&mut self.stdin.waiting) {
                out.push(Action::Send(client, Response::Ok));
            }
        }
        if self.stdin.open && self.stdin.closing && self.stdin.queue.is_empty() {
            self.stdin.open = false;
            out.push(Action::CloseStdin);
        }
    }

    pub(super) fn output(
        &mut self,
        stream: StreamName,
        grew: bool,
        eof: bool,
        out: &mut Vec<Action>,
    ) {
        let i = stream_index(stream);
        if grew {
            for p in self.peers.values_mut().filter(|p| p.subscribed) {
                p.owed[i] = true;
            }
        }
        if eof && !self.outputs[i].eof {
            self.outputs[i].eof = true;
            let limit = self.outputs[i].buf.limit();
            self.announce(Announce::EndOfStream { stream, limit }, out);
        }
        self.release_parked(Some(stream), out);
    }

    /// Sends `event` to every subscriber, after the output events it is owed (so "output"
    /// never follows "end of stream").
    pub(super) fn announce(&mut self, event: Announce, out: &mut Vec<Action>) {
        let mut clients: Vec<ClientId> =
            self.peers.iter().filter(|(_, p)| p.subscribed).map(|(c, _)| *c).collect();
        clients.sort();
        for client in clients {
            self.send_owed(client, out);
            out.push(Action::Send(client, Response::Event(event.clone())));
        }
    }

    pub(super) fn send_owed(&mut self, client: ClientId, out: &mut Vec<Action>) {
        let Some(peer) = self.peers.get_mut(&client) else { return };
        for (i, stream) in STREAMS.into_iter().enumerate() {
            if std::mem::take(&mut peer.owed[i]) {
                let limit = self.outputs[i].buf.limit();
                out.push(Action::Send(client, Response::Event(Announce::Output { stream, limit })));
            }
        }
    }

    /// Parked reads (of `stream`, or of any stream) that can now be answered are answered.
    pub(super) fn release_parked(&mut self, stream: Option<StreamName>, out: &mut Vec<Action>) {
        let mut ready: Vec<(ClientId, Request)> = Vec::new();
        for (client, peer) in &mut self.peers {
            let matches = match (&peer.parked, stream) {
                (Some(Request::Read { stream: s, .. }), Some(want)) => *s == want,
                (Some(_), None) => true,
                _ => false,
            };
            if matches && let Some(req) = peer.parked.take() {
                ready.push((*client, req));
            }
        }
        ready.sort_by_key(|(c, _)| *c);
        for (client, request) in ready {
            // Parks again if there is still nothing to say.
            self.serve(client, request, out);
        }
    }

    pub(super) fn datagrams(&mut self, values: Vec<serde_json::Value>, out: &mut Vec<Action>) {
        let mut changed = false;
        for value in values {
            if let Some(meta) = value.get("apply_meta").and_then(|m| m.as_object())
                && value.as_object().is_some_and(|o| o.len() == 1)
            {
                merge_meta(&mut self.meta, meta);
                changed = true;
                continue;
            }
            if self.datagrams.len() >= MAX_DATAGRAMS {
                self.datagrams.pop_front();
            }
            self.datagrams.push_back(value);
        }
        if changed {
            out.push(Action::Save);
        }
    }
}
