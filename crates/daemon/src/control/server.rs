//! The daemon's side of the control socket: accept, check the peer, read one request, write
//! one answer, close — with limits, so idle or stuck clients cannot starve the daemon of
//! descriptors or lock its owner out:
//!
//! - only the daemon's user and root get in (`SO_PEERCRED`); others are closed at once;
//! - a connection lives at most [`IDLE_TIMEOUT`] (request read and answer written), a real
//!   deadline the event loop sleeps to;
//! - each uid holds at most [`MAX_PER_UID`] connections and all together at most
//!   [`MAX_CONNECTIONS`]: a new connection over a limit closes the oldest one (a new client is
//!   likely a live one; an old one is likely idle), and when the process runs out of
//!   descriptors the oldest connection makes room, or accepting resumes after
//!   [`ACCEPT_RETRY`];
//! - a connection that waits for jobs (`wait`) is held apart: it lives until the client's own
//!   timeout, does not count against the limits above, and at most [`MAX_HELD`] are held
//!   (a new one closes the oldest; its client asks again).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use procyard_core::socket::SocketPath;
use procyard_core::{FrameDecoder, StreamState};

use super::{Request, Response};
use crate::{Error, Result};

/// The longest a control connection may stay open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most connections one uid may hold open at once.
pub const MAX_PER_UID: usize = 16;
/// The most connections open at once.
pub const MAX_CONNECTIONS: usize = 32;
/// How soon to try accepting again when the process has no descriptor left and no
/// connection to close.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(250);
/// The most connections held open waiting for jobs.
pub const MAX_HELD: usize = 256;
/// The longest a waiting connection is held (its client then asks again).
const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);
/// The largest request accepted.
const MAX_REQUEST: usize = 64 * 1024;

struct Conn {
    stream: UnixStream,
    uid: u32,
    decoder: FrameDecoder,
    out: Vec<u8>,
    answered: bool,
    deadline: Instant,
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error().map(Errno::from_raw_os_error).is_some_and(|errno| {
        [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&errno)
    })
}

/// What a readable connection brought.
pub(crate) enum Incoming {
    /// Nothing complete yet.
    Nothing,
    /// A request to handle; answer it with [`ControlServer::respond`] or close it.
    Request(Request),
}

/// The listening control socket and its open connections.
pub(crate) struct ControlServer {
    listener: UnixListener,
    socket: Option<SocketPath>,
    /// In accept order (ids grow), so the first is the oldest and the next to expire.
    conns: BTreeMap<u64, Conn>,
    /// Connections waiting for jobs, each until its own deadline.
    held: BTreeMap<u64, Conn>,
    next_id: u64,
    token_of: fn(u64) -> Token,
    /// Accepting stopped for lack of descriptors: try again at this instant.
    accept_retry: Option<Instant>,
}

impl ControlServer {
    /// Binds the socket at `path` (only a stale socket there is replaced; anything else is
    /// an error and stays untouched), in a directory created 0700 when missing, and
    /// registers it under `token`. Connection `id`s get the tokens `token_of(id)`.
    pub(crate) fn bind(
        path: &Path,
        registry: &Registry,
        token: Token,
        token_of: fn(u64) -> Token,
    ) -> Result<ControlServer> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io("create directory", dir, e))?;
        }
        let (listener, socket) =
            procyard_core::socket::bind_unix_listener(path).map_err(|e| match e {
                procyard_core::Error::SocketInUse { .. } => {
                    Error::ControlSocketInUse { socket: path.to_owned() }
                }
                e => Error::process(format!("listen on control socket {}", path.display()), e),
            })?;
        listener.set_nonblocking(true).map_err(|e| Error::io("configure", path, e))?;
        let mut listener = UnixListener::from_std(listener);
        registry
            .register(&mut listener, token, Interest::READABLE)
            .map_err(|source| Error::Os { action: "register the control socket", source })?;
        Ok(ControlServer {
            listener,
            socket: Some(socket),
            conns: BTreeMap::new(),
            held: BTreeMap::new(),
            next_id: 1,
            token_of,
            accept_retry: None,
        })
    }

    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        self.socket.as_ref().map_or(Path::new(""), SocketPath::path)
    }

    /// Accepts every waiting connection; returns the requests that arrived with them.
    pub(crate) fn accept(&mut self, registry: &Registry) -> Vec<(u64, Request)> {
        self.accept_retry = None;
        let mut requests = Vec::new();
        loop {
            match procyard_core::event::retry_interrupted(|| self.listener.accept()) {
                Ok((stream, _)) => {
                    if let Some(id) = self.admit(stream, registry)
                        && let Incoming::Request(r) = self.on_ready(id, registry)
                    {
                        requests.push((id, r));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if out_of_descriptors(&e) => {
                    // The oldest connection makes room.
                    let oldest = self.conns.keys().next().copied();
                    match oldest {
                        Some(id) => {
                            tracing::warn!(error = %e, "out of descriptors: closing the oldest control connection");
                            self.close(id, registry);
                        }
                        None => {
                            tracing::warn!(error = %e, "unable to accept a control connection; trying again shortly");
                            self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                            break;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "unable to accept a control connection");
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    break;
                }
            }
        }
        requests
    }

    /// Checks the peer and the limits; registers the connection.
    fn admit(&mut self, mut stream: UnixStream, registry: &Registry) -> Option<u64> {
        let me = rustix::process::geteuid();
        let uid = match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(cred) if cred.uid == me || cred.uid.is_root() => cred.uid.as_raw(),
            Ok(cred) => {
                tracing::warn!(
                    uid = cred.uid.as_raw(),
                    "refused a control connection from another user"
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "refused a control connection: unable to read its credentials");
                return None;
            }
        };
        let same_uid: Vec<u64> =
            self.conns.iter().filter(|(_, c)| c.uid == uid).map(|(id, _)| *id).collect();
        if same_uid.len() >= MAX_PER_UID {
            tracing::warn!(
                uid,
                limit = MAX_PER_UID,
                "too many control connections from one user: closing its oldest"
            );
            self.close(same_uid[0], registry);
        }
        if self.conns.len() >= MAX_CONNECTIONS
            && let Some(&oldest) = self.conns.keys().next()
        {
            tracing::warn!(
                limit = MAX_CONNECTIONS,
                "too many control connections: closing the oldest"
            );
            self.close(oldest, registry);
        }
        let id = self.next_id;
        self.next_id += 1;
        if let Err(e) = registry.register(
            &mut stream,
            (self.token_of)(id),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::error!(error = %e, "unable to register a control connection");
            return None;
        }
        self.conns.insert(
            id,
            Conn {
                stream,
                uid,
                decoder: FrameDecoder::with_max(MAX_REQUEST),
                out: Vec::new(),
                answered: false,
                deadline: Instant::now() + IDLE_TIMEOUT,
            },
        );
        Some(id)
    }

    fn conn_mut(&mut self, id: u64) -> Option<&mut Conn> {
        match self.conns.get_mut(&id) {
            Some(c) => Some(c),
            None => self.held.get_mut(&id),
        }
    }

    /// Keeps connection `id` open until `timeout` from now (at most a day), apart from the
    /// idle limits: it waits for jobs and is answered by [`ControlServer::respond`].
    pub(crate) fn hold(&mut self, id: u64, timeout: Duration, registry: &Registry) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        if self.held.len() >= MAX_HELD
            && let Some(&oldest) = self.held.keys().next()
        {
            tracing::warn!(limit = MAX_HELD, "too many waiting connections: closing the oldest");
            self.close(oldest, registry);
        }
        conn.deadline = Instant::now() + timeout.min(MAX_HOLD);
        self.held.insert(id, conn);
    }

    /// Handles readiness of connection `id`: reads its request, or writes its answer.
    pub(crate) fn on_ready(&mut self, id: u64, registry: &Registry) -> Incoming {
        let Some(conn) = self.conn_mut(id) else { return Incoming::Nothing };
        if conn.answered {
            self.write_out(id, registry);
            return Incoming::Nothing;
        }
        if self.held.contains_key(&id) {
            // A waiting client sends nothing more; its end of file means it gave up.
            let conn = self.held.get_mut(&id).expect("held");
            let mut buf = [0u8; 256];
            loop {
                match procyard_core::event::retry_interrupted(|| {
                    std::io::Read::read(&mut conn.stream, &mut buf)
                }) {
                    Ok(0) => {
                        self.close(id, registry);
                        return Incoming::Nothing;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Incoming::Nothing,
                    Err(_) => {
                        self.close(id, registry);
                        return Incoming::Nothing;
                    }
                }
            }
        }
        let Some(conn) = self.conns.get_mut(&id) else { return Incoming::Nothing };
        let state = conn.decoder.read_from(&mut conn.stream);
        match conn.decoder.next::<Request>() {
            Ok(Some(request)) => Incoming::Request(request),
            Ok(None) => {
                match state {
                    Ok(StreamState::Open) => {}
                    Ok(StreamState::Closed) => self.close(id, registry),
                    Err(e) => {
                        self.respond(id, &Response::Error { message: e.to_string() }, registry)
                    }
                }
                Incoming::Nothing
            }
            Err(e) => {
                let message = format!("bad request: {e}");
                self.respond(id, &Response::Error { message }, registry);
                Incoming::Nothing
            }
        }
    }

    /// Sends `response` on connection `id`, then closes it.
    pub(crate) fn respond(&mut self, id: u64, response: &Response, registry: &Registry) {
        let Some(conn) = self.conn_mut(id) else { return };
        conn.answered = true;
        match procyard_core::frame::encode_frame(response) {
            Ok(bytes) => conn.out = bytes,
            Err(e) => tracing::error!(error = %e, "unable to encode a control response"),
        }
        self.write_out(id, registry);
    }

    fn write_out(&mut self, id: u64, registry: &Registry) {
        let Some(conn) = self.conn_mut(id) else { return };
        while !conn.out.is_empty() {
            let (stream, out) = (&mut conn.stream, &conn.out);
            match procyard_core::event::retry_interrupted(|| stream.write(out)) {
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => conn.out.clear(),
            }
        }
        self.close(id, registry);
    }

    /// Closes connection `id` (done, or no longer wanted).
    pub(crate) fn close(&mut self, id: u64, registry: &Registry) {
        if let Some(mut conn) = self.conns.remove(&id).or_else(|| self.held.remove(&id)) {
            let _ = registry.deregister(&mut conn.stream);
        }
    }

    /// When the oldest connection expires, or accepting should be tried again.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let expiry = self.conns.values().next().map(|c| c.deadline);
        let held = self.held.values().map(|c| c.deadline).min();
        [expiry, held, self.accept_retry].into_iter().flatten().min()
    }

    /// Closes connections past their deadline; accepts again if that was postponed. Returns
    /// the requests that came with newly accepted connections.
    pub(crate) fn on_deadlines(
        &mut self,
        now: Instant,
        registry: &Registry,
    ) -> Vec<(u64, Request)> {
        let mut expired: Vec<u64> =
            self.conns.iter().take_while(|(_, c)| c.deadline <= now).map(|(id, _)| *id).collect();
        expired.extend(self.held.iter().filter(|(_, c)| c.deadline <= now).map(|(id, _)| *id));
        if !expired.is_empty() {
            tracing::debug!(connections = expired.len(), "closing idle control connections");
        }
        for id in expired {
            self.close(id, registry);
        }
        match self.accept_retry {
            Some(at) if at <= now => self.accept(registry),
            _ => Vec::new(),
        }
    }

    /// How many connections are open.
    pub(crate) fn connections(&self) -> usize {
        self.conns.len() + self.held.len()
    }

    /// Stops listening and removes the socket file if it is still the one bound here.
    pub(crate) fn shut_down(&mut self, registry: &Registry) {
        let ids: Vec<u64> = self.conns.keys().chain(self.held.keys()).copied().collect();
        for id in ids {
            self.close(id, registry);
        }
        let _ = registry.deregister(&mut self.listener);
        if let Some(socket) = self.socket.take()
            && let Err(e) = socket.remove()
        {
            tracing::warn!(error = %procyard_core::Report(&e), "unable to remove the control socket");
        }
    }
}
