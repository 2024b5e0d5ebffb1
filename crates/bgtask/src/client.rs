//! The client side: [`Task`] (one task, reached through its supervisor's socket), [`Stream`]
//! (one of its output streams) and [`Subscription`] (its events).

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use procyard_core::{Deadline, FrameDecoder, Signal, frame};
use rustix::event::{PollFd, PollFlags};

use crate::protocol::{
    Event, MAX_READ, Meta, PROTOCOL_VERSION, Request, Response, StreamInfo, StreamName, TaskInfo,
};
use crate::record::TaskRecord;
use crate::{Error, RefusalKind, Result};

/// Largest stdin chunk per request (JSON encodes each byte as up to 4 characters).
const WRITE_CHUNK: usize = 128 * 1024;

/// An interface to one task. Creating it is cheap; the connection to the supervisor is
/// opened on first use and kept.
#[derive(Debug)]
pub struct Task {
    dir: PathBuf,
    id: String,
    conn: Option<UnixStream>,
    timeout: Option<Duration>,
}

/// Bytes read from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Absolute offset of `data[0]` (above the requested offset if older bytes were dropped).
    pub offset: u64,
    /// How many bytes between the requested offset (or the consumed mark) and `offset` were
    /// dropped beyond the retain cap before they could be read: 0 when `data` follows on
    /// from what was asked for, otherwise a gap no reader should mistake for contiguous output.
    pub dropped: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// The stream's offsets after the read.
    pub info: StreamInfo,
    /// Whether the task had ended (with all its output collected) at the time of the read.
    pub exited: bool,
}

impl Chunk {
    /// The offset just past the bytes read.
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }

    /// Whether nothing more can come for the current run: the stream ended, or the task
    /// ended and everything retained was read.
    pub fn is_final(&self) -> bool {
        self.end() >= self.info.limit && (self.info.eof || self.exited)
    }
}

impl Task {
    pub(crate) fn new(dir: PathBuf, id: String) -> Task {
        Task { dir, id, conn: None, timeout: None }
    }

    /// Bounds how long each call waits for the supervisor (connecting, sending, and the
    /// answer, including a waiting read); `None` (the default) waits as long as it takes.
    /// A call that runs out of time returns [`Error::TimedOut`] and drops the connection.
    /// A zero duration is raised to one millisecond.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout.map(|t| t.max(Duration::from_millis(1)));
        if let Some(sock) = &self.conn
            && self.apply_timeout(sock).is_err()
        {
            self.conn = None;
        }
    }

    fn apply_timeout(&self, sock: &UnixStream) -> std::io::Result<()> {
        sock.set_read_timeout(self.timeout)?;
        sock.set_write_timeout(self.timeout)
    }

    /// Turns an I/O timeout on the connection into [`Error::TimedOut`].
    fn classify(&self, e: Error) -> Error {
        match &e {
            Error::Connection { source: procyard_core::Error::Os { source, .. }, .. }
                if matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                Error::TimedOut { id: self.id.clone(), after: self.timeout.unwrap_or_default() }
            }
            _ => e,
        }
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `<pool>/<id>.sock`.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join(format!("{}.sock", self.id))
    }

    /// `<pool>/<id>.json`, read without connecting (status `lost` if the supervisor died).
    pub fn record(&self) -> Result<TaskRecord> {
        crate::TaskPool::open(&self.dir)?.record(&self.id)
    }

    /// Connects to the supervisor now (if not connected yet) and checks the handshake.
    pub fn connect(&mut self) -> Result<()> {
        if self.conn.is_none() {
            self.conn = Some(self.open_connection().map_err(|e| self.classify(e))?);
        }
        Ok(())
    }

    /// Drops the connection.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    fn open_connection(&self) -> Result<UnixStream> {
        let path = self.socket_path();
        let mut sock = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                let json = self.dir.join(format!("{}.json", self.id));
                return Err(if json.exists() {
                    Error::SupervisorGone { id: self.id.clone() }
                } else {
                    Error::NoSuchTask { id: self.id.clone() }
                });
            }
            Err(e) => return Err(Error::path("connect to", path, e)),
        };
        self.apply_timeout(&sock).map_err(|e| self.io_err(e))?;
        let hello = Request::Hello { version: PROTOCOL_VERSION, task: self.id.clone() };
        // A refused client may find the socket closed before its hello is written: the
        // supervisor's refusal is still waiting to be read.
        let sent = frame::write_frame(&mut sock, &hello);
        let answer = self.read_response(&mut sock);
        if let (Err(e), Err(_)) = (&sent, &answer) {
            return Err(self_io_err(&self.id, std::io::Error::new(e.kind(), e.to_string())));
        }
        match answer? {
            Response::Hello { version, task } if version == PROTOCOL_VERSION && task == self.id => {
                Ok(sock)
            }
            Response::Hello { version, task } => Err(Error::Handshake {
                id: self.id.clone(),
                reason: format!("supervisor speaks version {version} for task {task}"),
            }),
            // Refused: not the owner, busy, an unsupported version, another task.
            Response::Error { kind, message } => {
                Err(Error::Refused { id: self.id.clone(), kind, message })
            }
            other => Err(self.unexpected(&other)),
        }
    }

    fn io_err(&self, e: std::io::Error) -> Error {
        Error::Connection {
            id: self.id.clone(),
            source: procyard_core::Error::Os { action: "talk to the supervisor", source: e },
        }
    }

    fn unexpected(&self, r: &Response) -> Error {
        Error::Protocol { id: self.id.clone(), what: format!("{r:?}") }
    }

    fn read_response(&self, sock: &mut UnixStream) -> Result<Response> {
        match frame::read_frame::<_, Response>(sock) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(Error::Connection {
                id: self.id.clone(),
                source: procyard_core::Error::FrameTruncated { expected: 4, got: 0 },
            }),
            Err(source) => Err(Error::Connection { id: self.id.clone(), source }),
        }
    }

    /// Sends one request and returns its answer (refusals become [`Error::Refused`]).
    ///
    /// A kept connection that the supervisor closed while it was idle (idle timeout, or room
    /// made for a new connection) is found closed before any answer: the request was never
    /// served, so it is sent again once on a new connection.
    fn call(&mut self, request: &Request) -> Result<Response> {
        let reused = self.conn.is_some();
        self.connect()?;
        let mut result = self.call_connected(request).map_err(|e| self.classify(e));
        if reused && result.as_ref().is_err_and(closed_before_answer) {
            self.conn = None;
            self.connect()?;
            result = self.call_connected(request).map_err(|e| self.classify(e));
        }
        if matches!(result, Err(Error::Connection { .. } | Error::TimedOut { .. })) {
            self.conn = None;
        }
        result
    }

    fn call_connected(&mut self, request: &Request) -> Result<Response> {
        let mut sock = match self.conn.take() {
            Some(s) => s,
            None => return Err(Error::SupervisorGone { id: self.id.clone() }),
        };
        let result = (|| {
            frame::write_frame(&mut sock, request).map_err(|e| self.io_err(e))?;
            match self.read_response(&mut sock)? {
                Response::Error { kind, message } => {
                    Err(Error::Refused { id: self.id.clone(), kind, message })
                }
                r => Ok(r),
            }
        })();
        self.conn = Some(sock);
        result
    }

    fn expect_ok(&mut self, request: &Request) -> Result<()> {
        match self.call(request)? {
            Response::Ok => Ok(()),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The supervisor's view of the task.
    pub fn info(&mut self) -> Result<TaskInfo> {
        match self.call(&Request::Info)? {
            Response::Info(info) => Ok(*info),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Merges keys into the metadata (a `null` value removes a key).
    pub fn apply_meta(&mut self, meta: Meta) -> Result<()> {
        self.expect_ok(&Request::ApplyMeta { meta })
    }

    /// One output stream.
    pub fn stream(&mut self, name: StreamName) -> Stream<'_> {
        Stream { task: self, name }
    }

    /// The datagrams the task sent on its data channel (consumed, or peeked).
    pub fn read_data(&mut self, consume: bool) -> Result<Vec<serde_json::Value>> {
        match self.call(&Request::ReadData { consume })? {
            Response::Datagrams { messages } => Ok(messages),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Writes to the task's stdin; returns once the supervisor has queued the bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(WRITE_CHUNK) {
            self.expect_ok(&Request::Write { data: chunk.to_vec() })?;
        }
        Ok(())
    }

    /// Closes the task's stdin once the queued bytes are written.
    pub fn close_stdin(&mut self) -> Result<()> {
        self.expect_ok(&Request::CloseStdin)
    }

    /// Sends `signal` to the task's process group; refused once the task has exited.
    ///
    /// For a `lost` task (its supervisor died), the signal goes to the group the record names
    /// once its identity is checked (pid, start time, boot, session); if that process is gone,
    /// [`Error::SupervisorGone`].
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        match self.expect_ok(&Request::Signal { signal }) {
            Err(Error::SupervisorGone { id }) => crate::lost::signal(&self.dir, &id, signal),
            other => other,
        }
    }

    /// [`Task::signal`] (the seed's name; the CLI defaults to SIGTERM).
    pub fn kill(&mut self, signal: Signal) -> Result<()> {
        self.signal(signal)
    }

    /// SIGSTOP to the group; refused once the task has exited.
    pub fn pause(&mut self) -> Result<()> {
        self.expect_ok(&Request::Pause)
    }

    /// SIGCONT to the group.
    pub fn resume(&mut self) -> Result<()> {
        self.expect_ok(&Request::Resume)
    }

    /// Runs a finished task again, keeping its output and offsets.
    pub fn restart(&mut self) -> Result<()> {
        self.expect_ok(&Request::Restart)
    }

    /// Kills the task (INT, TERM, KILL with grace) and removes every file of it; returns
    /// once that is done.
    ///
    /// A `lost` task (its supervisor died) is stopped all the same: its process group gets
    /// TERM, then KILL after a grace period, once the record's identity (pid, start time,
    /// boot, session) proves the process is still the task — a recycled pid is never
    /// signalled — and then its files are removed (a socket only if it is stale).
    pub fn delete(mut self) -> Result<()> {
        match self.expect_ok(&Request::Delete) {
            Err(Error::SupervisorGone { id }) => crate::lost::delete(&self.dir, &id),
            other => other,
        }
    }

    /// Opens a second connection that receives [`Event`]s.
    pub fn subscribe(&self) -> Result<Subscription> {
        let mut sock = self.open_connection().map_err(|e| self.classify(e))?;
        frame::write_frame(&mut sock, &Request::Subscribe)
            .map_err(|e| self.classify(self.io_err(e)))?;
        match self.read_response(&mut sock).map_err(|e| self.classify(e))? {
            Response::Ok => {}
            other => return Err(self.unexpected(&other)),
        }
        sock.set_nonblocking(true).map_err(|e| self.io_err(e))?;
        Ok(Subscription { id: self.id.clone(), sock, decoder: FrameDecoder::new(), closed: false })
    }

    fn read(&mut self, req: Request) -> Result<Chunk> {
        let mut data = Vec::new();
        let meta = self.read_into(req, &mut data)?;
        Ok(Chunk {
            offset: meta.offset,
            dropped: meta.dropped,
            data,
            info: meta.info,
            exited: meta.exited,
        })
    }

    /// Sends a read request and appends the bytes to `buf` (reusing its capacity).
    fn read_into(&mut self, req: Request, buf: &mut Vec<u8>) -> Result<ReadMeta> {
        let (offset, len, dropped, info, exited) = match self.call(&req)? {
            Response::Data { offset, len, dropped, info, exited, .. } => {
                (offset, len, dropped, info, exited)
            }
            other => return Err(self.unexpected(&other)),
        };
        if len > MAX_READ {
            self.conn = None;
            return Err(Error::Protocol { id: self.id.clone(), what: format!("{len}-byte read") });
        }
        let Some(sock) = self.conn.as_mut() else {
            return Err(Error::SupervisorGone { id: self.id.clone() });
        };
        let mut header = [0u8; 4];
        let before = buf.len();
        let got = sock.read_exact(&mut header).and_then(|()| {
            buf.reserve(len as usize);
            (&mut *sock).take(len).read_to_end(buf)
        });
        match got {
            Ok(n) if n as u64 == len && u64::from(u32::from_be_bytes(header)) == len => {
                Ok(ReadMeta { offset, len, dropped, info, exited })
            }
            Ok(_) => {
                buf.truncate(before);
                self.conn = None;
                Err(Error::Protocol {
                    id: self.id.clone(),
                    what: "data frame missing or of the wrong length".into(),
                })
            }
            Err(e) => {
                buf.truncate(before);
                self.conn = None;
                Err(self.classify(self.io_err(e)))
            }
        }
    }
}

/// What a read into a caller's buffer returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadMeta {
    /// Absolute offset of the first byte appended.
    pub offset: u64,
    /// Bytes appended.
    pub len: u64,
    /// Bytes dropped before `offset` that were asked for (see [`Chunk::dropped`]).
    pub dropped: u64,
    /// The stream's offsets after the read.
    pub info: StreamInfo,
    /// Whether the task had ended (with all its output collected).
    pub exited: bool,
}

impl ReadMeta {
    /// The offset just past the bytes read.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// Whether nothing more can come for the current run (see [`Chunk::is_final`]).
    pub fn is_final(&self) -> bool {
        self.end() >= self.info.limit && (self.info.eof || self.exited)
    }
}

/// One output stream of a task, read by absolute offset.
#[derive(Debug)]
pub struct Stream<'a> {
    task: &'a mut Task,
    name: StreamName,
}

impl Stream<'_> {
    /// `start` (first retained offset), `limit` (next offset) and the consumed mark.
    pub fn info(&mut self) -> Result<StreamInfo> {
        let info = self.task.info()?;
        info.streams.get(self.name.as_str()).copied().ok_or_else(|| Error::Protocol {
            id: self.task.id.clone(),
            what: format!("no stream {}", self.name.as_str()),
        })
    }

    /// First retained offset.
    pub fn start(&mut self) -> Result<u64> {
        Ok(self.info()?.start)
    }

    /// Next offset to be written.
    pub fn limit(&mut self) -> Result<u64> {
        Ok(self.info()?.limit)
    }

    /// Reads (and consumes) up to `count` bytes from the consumed mark.
    pub fn read(&mut self, count: u64) -> Result<Chunk> {
        self.read_request(None, count, true, false)
    }

    /// Reads (and consumes) everything retained from the consumed mark.
    pub fn read_all(&mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let chunk = self.read(MAX_READ)?;
            if chunk.data.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&chunk.data);
        }
    }

    /// Reads `count` bytes at `offset` without consuming them (`offset` is raised to `start`
    /// if those bytes were dropped, and [`Chunk::dropped`] says by how much).
    pub fn peek(&mut self, offset: u64, count: u64) -> Result<Chunk> {
        self.read_request(Some(offset), count, false, false)
    }

    /// The general read: `offset` (`None`: the consumed mark), `consume`, and `wait` (block
    /// until bytes arrive, the stream ends, the task exits, or the time set with
    /// [`Task::set_timeout`] runs out: [`Error::TimedOut`]).
    pub fn read_request(
        &mut self,
        offset: Option<u64>,
        count: u64,
        consume: bool,
        wait: bool,
    ) -> Result<Chunk> {
        self.task.read(Request::Read {
            stream: self.name,
            offset,
            count: count.min(MAX_READ),
            consume,
            wait,
        })
    }

    /// [`Stream::read_request`] appending to `buf` instead of allocating (for high
    /// throughput readers).
    pub fn read_request_into(
        &mut self,
        offset: Option<u64>,
        count: u64,
        consume: bool,
        wait: bool,
        buf: &mut Vec<u8>,
    ) -> Result<ReadMeta> {
        self.task.read_into(
            Request::Read { stream: self.name, offset, count: count.min(MAX_READ), consume, wait },
            buf,
        )
    }

    /// Drops retained bytes before `upto`.
    pub fn discard(&mut self, upto: u64) -> Result<()> {
        self.task.expect_ok(&Request::Discard { stream: self.name, upto })
    }
}

/// A connection receiving a task's events.
#[derive(Debug)]
pub struct Subscription {
    id: String,
    sock: UnixStream,
    decoder: FrameDecoder,
    closed: bool,
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
                match self.sock.read(&mut chunk) {
                    Ok(0) => {
                        self.closed = true;
                        break;
                    }
                    Ok(n) => self.decoder.feed(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(self_io_err(&self.id, e)),
                }
            }
        }
    }

    /// Whether the supervisor closed the connection.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// The task's side: the data channel its supervisor announced in `PROCYARD_BGTASK_DATA`.
#[derive(Debug)]
pub struct TaskChannel {
    sock: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

/// Environment variable holding the data channel's path.
pub const DATA_ENV: &str = "PROCYARD_BGTASK_DATA";

/// Environment variable holding the task's own id.
pub const ID_ENV: &str = "PROCYARD_BGTASK_ID";

impl TaskChannel {
    /// Opens the channel named by `PROCYARD_BGTASK_DATA` (`None` outside a task).
    pub fn from_env() -> Result<Option<TaskChannel>> {
        let Some(path) = std::env::var_os(DATA_ENV) else { return Ok(None) };
        let path = PathBuf::from(path);
        let sock = std::os::unix::net::UnixDatagram::unbound()
            .map_err(|e| Error::path("create a socket for", &path, e))?;
        Ok(Some(TaskChannel { sock, path }))
    }

    /// Sends one message (kept by the supervisor, read with [`Task::read_data`]).
    pub fn send(&self, message: &serde_json::Value) -> Result<()> {
        let bytes = serde_json::to_vec(message)
            .map_err(|source| Error::Core(procyard_core::Error::Encode { source }))?;
        self.sock.send_to(&bytes, &self.path).map_err(|e| Error::path("send to", &self.path, e))?;
        Ok(())
    }

    /// Merges keys into the task's own metadata.
    pub fn apply_meta(&self, meta: Meta) -> Result<()> {
        self.send(&serde_json::json!({ "apply_meta": meta }))
    }
}

/// Whether `e` says the connection was closed before any byte of the answer arrived (or
/// before the request could be written).
fn closed_before_answer(e: &Error) -> bool {
    let Error::Connection { source, .. } = e else { return false };
    match source {
        procyard_core::Error::FrameTruncated { got: 0, .. } => true,
        procyard_core::Error::Os { source, .. } => matches!(
            source.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

fn self_io_err(id: &str, e: std::io::Error) -> Error {
    Error::Connection {
        id: id.to_owned(),
        source: procyard_core::Error::Os { action: "talk to the supervisor", source: e },
    }
}

impl Error {
    /// Whether this is a refusal of the given kind.
    pub fn is_refusal(&self, kind: RefusalKind) -> bool {
        matches!(self, Error::Refused { kind: k, .. } if *k == kind)
    }
}
