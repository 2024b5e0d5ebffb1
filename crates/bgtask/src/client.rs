//! [`Task`]: one task, reached through its supervisor's socket (request, answer), with its
//! [`Stream`]s and [`Subscription`]s.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use procyard_core::{FrameDecoder, Signal, frame};

use crate::layout::TaskPaths;
use crate::meta::Meta;
use crate::protocol::{
    MAX_READ, MAX_REQUEST, PROTOCOL_VERSION, Request, Response, StreamName, TaskInfo,
};
use crate::record::TaskRecord;
use crate::stream::{ReadMeta, Stream};
use crate::subscription::Subscription;
use crate::{Error, RefusalKind, Result};
use output_file::{RingFile, stream_slot};

mod output_file;

/// Largest stdin chunk per request (sent as a raw frame).
const WRITE_CHUNK: usize = MAX_REQUEST / 4;

/// How long each call to a supervisor waits by default (see [`Task::set_timeout`]): well
/// above the longest answer a working supervisor takes (a delete's stop ladder, about 12 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// An interface to one task. Creating it is cheap; the connection to the supervisor is
/// opened on first use and kept. Each call waits at most [`DEFAULT_TIMEOUT`] for the
/// supervisor unless [`Task::set_timeout`] says otherwise.
#[derive(Debug)]
pub struct Task {
    dir: PathBuf,
    id: String,
    conn: Option<UnixStream>,
    timeout: Option<Duration>,
    /// Per stream, the supervisor's memfd of retained bytes (read-only, mapped where it is
    /// sealed), once asked for: reads then copy the bytes straight from it.
    files: [Option<RingFile>; 2],
    /// The supervisor does not hand out its memfds (an older one): reads take the socket.
    no_files: bool,
}

impl Task {
    pub(crate) fn new(dir: PathBuf, id: String) -> Task {
        Task {
            dir,
            id,
            conn: None,
            timeout: Some(DEFAULT_TIMEOUT),
            files: [None, None],
            no_files: false,
        }
    }

    /// Bounds how long each call waits for the supervisor (connecting, sending, and the
    /// answer, including a waiting read): [`DEFAULT_TIMEOUT`] unless set; `None` waits as long
    /// as it takes (what a reader following a quiet stream wants, see
    /// [`ReadOptions::wait`](crate::ReadOptions::wait)). A call that runs out of time — a
    /// supervisor that is stopped or stuck — returns [`Error::TimedOut`] and drops the
    /// connection; a request already sent may still be carried out if the supervisor gets to
    /// it later. A zero duration is raised to one millisecond.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout.map(|t| t.max(Duration::from_millis(1)));
        if let Some(sock) = &self.conn
            && self.apply_timeout(sock).is_err()
        {
            self.conn = None;
        }
    }

    /// The time each call waits for the supervisor (see [`Task::set_timeout`]).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
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

    fn paths(&self) -> TaskPaths<'_> {
        TaskPaths::new(&self.dir, &self.id)
    }

    /// `<pool>/<id>.sock`.
    pub fn socket_path(&self) -> PathBuf {
        self.paths().socket()
    }

    /// `<pool>/<id>.<stream>.log`: where the output of `stream` is logged when the task was
    /// spawned with [`SpawnOptions::log`](crate::SpawnOptions::log).
    pub fn log_path(&self, stream: StreamName) -> PathBuf {
        self.paths().log(stream)
    }

    /// `<pool>/<id>.json`, read without connecting (status `lost` if the supervisor died).
    pub fn record(&self) -> Result<TaskRecord> {
        crate::record::read_record(&self.dir, &self.id)
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
                return Err(if self.paths().record().exists() {
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
            return Err(Error::connection(&self.id, std::io::Error::new(e.kind(), e.to_string())));
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
        Error::connection(&self.id, e)
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
        self.call_with(request, &[])
    }

    /// [`Task::call`] with `raw` sent as a raw frame after the request (a stdin write).
    fn call_with(&mut self, request: &Request, raw: &[u8]) -> Result<Response> {
        let reused = self.conn.is_some();
        self.connect()?;
        let mut result = self.call_connected(request, raw).map_err(|e| self.classify(e));
        if reused && result.as_ref().is_err_and(closed_before_answer) {
            self.conn = None;
            self.connect()?;
            result = self.call_connected(request, raw).map_err(|e| self.classify(e));
        }
        if matches!(result, Err(Error::Connection { .. } | Error::TimedOut { .. })) {
            self.conn = None;
        }
        result
    }

    fn call_connected(&mut self, request: &Request, raw: &[u8]) -> Result<Response> {
        let mut sock = match self.conn.take() {
            Some(s) => s,
            None => return Err(Error::SupervisorGone { id: self.id.clone() }),
        };
        let result = (|| {
            let mut bytes = frame::encode_frame(request)
                .map_err(|source| Error::Connection { id: self.id.clone(), source })?;
            if let Request::Write { .. } = request {
                bytes.extend_from_slice(&(raw.len() as u32).to_be_bytes());
                bytes.extend_from_slice(raw);
            }
            sock.write_all(&bytes).map_err(|e| self.io_err(e))?;
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

    pub(crate) fn expect_ok(&mut self, request: &Request) -> Result<()> {
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
            match self.call_with(&Request::Write { len: chunk.len() as u64 }, chunk)? {
                Response::Ok => {}
                other => return Err(self.unexpected(&other)),
            }
        }
        Ok(())
    }

    /// Closes the task's stdin once the queued bytes are written.
    pub fn close_stdin(&mut self) -> Result<()> {
        self.expect_ok(&Request::CloseStdin)
    }

    /// Sends `signal` (any signal) to the task's process group; refused once the task has
    /// exited.
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

    /// SIGKILL to the task's process group ([`Task::signal`] sends any other signal; the
    /// CLI's `kill --signal` is that); refused once the task has exited.
    pub fn kill(&mut self) -> Result<()> {
        self.signal(Signal::KILL)
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

    /// Opens a second connection that receives [`Event`](crate::Event)s.
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

    /// Sends a read request and appends the bytes to `buf` (reusing its capacity).
    pub(crate) fn read_into(&mut self, mut req: Request, buf: &mut Vec<u8>) -> Result<ReadMeta> {
        let Request::Read { stream, file, .. } = &mut req else {
            return Err(Error::Protocol { id: self.id.clone(), what: "not a read".into() });
        };
        let i = stream_slot(*stream);
        if self.files[i].is_none() && !self.no_files {
            self.fetch_file(*stream)?;
        }
        *file = self.files[i].is_some();
        let (offset, len, dropped, info, exited, ring) = match self.call(&req)? {
            Response::Data { offset, len, dropped, info, exited, ring, .. } => {
                (offset, len, dropped, info, exited, ring)
            }
            other => return Err(self.unexpected(&other)),
        };
        if len > MAX_READ {
            self.conn = None;
            return Err(Error::Protocol { id: self.id.clone(), what: format!("{len}-byte read") });
        }
        let meta = ReadMeta { offset, len, dropped, info, exited };
        if ring > 0 {
            return self.read_from_file(i, ring, meta, buf);
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
            Ok(n) if n as u64 == len && u64::from(u32::from_be_bytes(header)) == len => Ok(meta),
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

impl Error {
    /// Whether this is a refusal of the given kind.
    pub fn is_refusal(&self, kind: RefusalKind) -> bool {
        matches!(self, Error::Refused { kind: k, .. } if *k == kind)
    }
}
