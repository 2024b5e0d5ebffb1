//! The supervisor: one detached process per task, a mio loop over the task's pidfd, its
//! stdio pipes, the Unix listener, client connections, the `data` datagram socket and a
//! signalfd.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixDatagram, UnixListener};
use mio::unix::pipe::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token};
use procyard_core::socket::{self, SocketPath};
use procyard_core::{
    Child, DaemonStatus, Deadline, Exit, ProcessIdentity, Signal, SignalFd, Stdio,
};

use crate::buffer::OutputBuffer;
use crate::client::{DATA_ENV, ID_ENV};
use crate::files::{STATE_FILES, task_file};
use crate::pool::{SpawnOptions, now_ms};
use crate::protocol::{
    Event, MAX_READ, MAX_REQUEST, Meta, PROTOCOL_VERSION, Request, Response, StreamInfo,
    StreamName, TaskInfo,
};
use crate::record::{Status, TaskRecord};
use crate::{RefusalKind, error_chain};

const LISTENER: Token = Token(0);
const DATA: Token = Token(1);
const SIGNALS: Token = Token(2);
const CHILD: Token = Token(3);
const STDOUT: Token = Token(4);
const STDERR: Token = Token(5);
const STDIN: Token = Token(6);
const FIRST_CLIENT: usize = 16;

/// A client whose unsent answers exceed this is not read from until they drain.
const OUT_HIGH: usize = 1024 * 1024;
/// A subscriber whose unsent events exceed this is disconnected.
const OUT_MAX: usize = 8 * 1024 * 1024;
/// stdin bytes queued before writers are made to wait.
const STDIN_CAP: usize = 1024 * 1024;
/// Datagrams kept from the data channel.
const MAX_DATAGRAMS: usize = 1024;
/// Longest datagram kept whole (longer ones are cut).
const MAX_DATAGRAM: usize = 64 * 1024;
/// Grace between the steps of the delete ladder.
const GRACE: Duration = Duration::from_secs(2);
/// Time a new connection has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Pipe buffer size asked for (throughput).
const PIPE_SIZE: usize = 1024 * 1024;

struct Output {
    name: StreamName,
    buf: OutputBuffer,
    pipe: Option<Receiver>,
    eof: bool,
    /// Stopped reading because the buffer is full of unconsumed bytes.
    throttled: bool,
    /// Stopped reading after a full budget: the pipe may hold more.
    more: bool,
    log: Option<File>,
}

struct Deleting {
    requester: Option<Token>,
    stop: Stop,
}

struct Supervisor {
    dir: PathBuf,
    id: String,
    owner: u32,
    options: SpawnOptions,
    poll: Poll,
    listener: UnixListener,
    data: UnixDatagram,
    /// The two socket paths we bound, removed (only if still ours) when the task is deleted.
    sockets: Vec<SocketPath>,
    child: Option<Child>,
    /// The running task's identity (pid + start time), written to the record.
    process: Option<ProcessIdentity>,
    /// Our session (the task's too), written to the record.
    session: Option<i32>,
    status: Status,
    outputs: [Output; 2],
    stdin: Option<Sender>,
    stdin_queue: VecDeque<u8>,
    stdin_close: bool,
    datagrams: VecDeque<serde_json::Value>,
    meta: Meta,
    clients: HashMap<Token, Client>,
    next_token: usize,
    identity: ProcessIdentity,
    restarts: u32,
    created_ms: u64,
    started_ms: u64,
    ended_ms: Option<u64>,
    deleting: Option<Deleting>,
    /// Stopping what the task left running after its leader exited (not while deleting).
    sweep: Option<Stop>,
    finished: bool,
}

/// Runs the supervisor of task `id` until it is deleted; reports start-up through `status`.
/// Returns the process exit code.
pub(crate) fn run(
    dir: &Path,
    owner: u32,
    id: &str,
    options: &SpawnOptions,
    status: DaemonStatus,
) -> i32 {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // Our own files only: `start` removes whatever it created before failing.
    let mut sup = match Supervisor::start(dir, owner, id, options) {
        Ok(sup) => sup,
        Err(message) => {
            let _ = status.fail(&message);
            return 1;
        }
    };
    // SIGCHLD: adopted escapees (see `escapees`) exit and must be reaped.
    let signals = match SignalFd::new(&[
        Signal::TERM,
        Signal::INT,
        Signal::HUP,
        Signal::PIPE,
        Signal::CHLD,
    ]) {
        Ok(s) => s,
        Err(e) => {
            sup.abort();
            let _ = status.fail(&format!("cannot set up signals: {}", error_chain(&e)));
            return 1;
        }
    };
    if status.ready().is_err() {
        // The spawner is gone; the task runs on regardless (it must outlive its spawner).
    }
    match sup.run(signals) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("supervisor of {id} failed: {e}");
            sup.abort();
            1
        }
    }
}

impl Supervisor {
    fn start(
        dir: &Path,
        owner: u32,
        id: &str,
        options: &SpawnOptions,
    ) -> Result<Supervisor, String> {
        let poll = Poll::new().map_err(|e| format!("cannot create a poll: {e}"))?;
        let sock_path = task_file(dir, id, "sock");
        let data_path = task_file(dir, id, "data");
        // Only a stale socket at either path is replaced; anything else there stays, and is
        // reported.
        let (listener, sock_bound) = socket::bind_unix_listener(&sock_path)
            .map_err(|e| format!("cannot listen: {}", error_chain(&e)))?;
        let mut sockets = vec![sock_bound];
        let cleanup = |sockets: Vec<SocketPath>| {
            for s in sockets {
                let _ = s.remove();
            }
        };
        let (data, data_bound) = match socket::bind_unix_datagram(&data_path) {
            Ok(bound) => bound,
            Err(e) => {
                cleanup(sockets);
                return Err(format!("cannot bind the data channel: {}", error_chain(&e)));
            }
        };
        sockets.push(data_bound);
        let mut sup = match Supervisor::build(dir, owner, id, options, poll, listener, data) {
            Ok(sup) => sup,
            Err(message) => {
                cleanup(sockets);
                return Err(message);
            }
        };
        sup.sockets = sockets;
        if let Err(e) = sup.spawn_child().and_then(|()| sup.write_record()) {
            sup.abort();
            return Err(e);
        }
        Ok(sup)
    }

    /// Everything but the sockets' paths and the task.
    fn build(
        dir: &Path,
        owner: u32,
        id: &str,
        options: &SpawnOptions,
        poll: Poll,
        listener: std::os::unix::net::UnixListener,
        data: std::os::unix::net::UnixDatagram,
    ) -> Result<Supervisor, String> {
        let prepare = || -> io::Result<(UnixListener, UnixDatagram)> {
            listener.set_nonblocking(true)?;
            data.set_nonblocking(true)?;
            // Every datagram then carries its sender's credentials (checked on receipt).
            rustix::net::sockopt::set_socket_passcred(&data, true)?;
            let mut listener = UnixListener::from_std(listener);
            let mut data = UnixDatagram::from_std(data);
            poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
            poll.registry().register(&mut data, DATA, Interest::READABLE)?;
            Ok((listener, data))
        };
        let (listener, data) = prepare().map_err(|e| format!("cannot set up the sockets: {e}"))?;
        // Orphans of the task (setsid escapees included) are reparented to us, stopped with
        // the task and reaped. A kernel without it leaves them to init, as before.
        if let Err(e) = procyard_core::subreaper::become_subreaper() {
            tracing::warn!("escapees of task {id} will not be caught: {}", error_chain(&e));
        }
        let identity = ProcessIdentity::current().map_err(|e| error_chain(&e))?;
        let retain = usize::try_from(options.retain).unwrap_or(usize::MAX);
        let open_log = |stream: &str| -> Result<Option<File>, String> {
            if !options.log {
                return Ok(None);
            }
            let path = task_file(dir, id, &format!("{stream}.log"));
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::CLOEXEC.bits() as i32)
                .open(&path)
                .map(Some)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))
        };
        let outputs = [
            Output {
                name: StreamName::Stdout,
                buf: OutputBuffer::new(retain),
                pipe: None,
                eof: false,
                throttled: false,
                more: false,
                log: open_log("stdout")?,
            },
            Output {
                name: StreamName::Stderr,
                buf: OutputBuffer::new(retain),
                pipe: None,
                eof: false,
                throttled: false,
                more: false,
                log: open_log("stderr")?,
            },
        ];
        let now = now_ms();
        Ok(Supervisor {
            dir: dir.to_owned(),
            id: id.to_owned(),
            owner,
            options: options.clone(),
            poll,
            listener,
            data,
            sockets: Vec::new(),
            child: None,
            process: None,
            session: procyard_core::ProcStat::read(identity.pid).ok().flatten().map(|st| st.sid),
            status: Status::Running,
            outputs,
            stdin: None,
            stdin_queue: VecDeque::new(),
            stdin_close: false,
            datagrams: VecDeque::new(),
            meta: options.meta.clone(),
            clients: HashMap::new(),
            next_token: FIRST_CLIENT,
            identity,
            restarts: 0,
            created_ms: now,
            started_ms: now,
            ended_ms: None,
            deleting: None,
            sweep: None,
            finished: false,
        })
    }

    /// Kills the task and removes every file (start-up failure or fatal loop error).
    fn abort(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill_and_reap();
        }
        self.kill_escapees();
        self.remove_files();
    }

    /// Removes the task's files: the state and log files, and the two sockets if their paths
    /// still name the sockets we bound.
    fn remove_files(&mut self) {
        for s in std::mem::take(&mut self.sockets) {
            let _ = s.remove();
        }
        for suffix in STATE_FILES {
            let _ = procyard_core::state_file::remove(task_file(&self.dir, &self.id, suffix));
        }
    }

    fn spawn_child(&mut self) -> Result<(), String> {
        let cmd = &self.options.command;
        let mut command = procyard_core::Command::new(&cmd[0]);
        command
            .args(&cmd[1..])
            .env(DATA_ENV, task_file(&self.dir, &self.id, "data"))
            .env(ID_ENV, &self.id)
            .env(crate::pool::POOL_ENV, &self.dir)
            .stdin(Stdio::Pipe)
            .stdout(Stdio::Pipe)
            .stderr(Stdio::Pipe);
        for (k, v) in &self.options.env {
            command.env(k, v);
        }
        if let Some(cwd) = &self.options.cwd {
            command.current_dir(cwd);
        }
        let mut child = command.spawn().map_err(|e| error_chain(&e))?;
        // Read while the child is unreaped (so its pid is still its own).
        self.process = ProcessIdentity::of(child.id()).ok().flatten();
        let registry = self.poll.registry();
        let mut register = || -> io::Result<()> {
            for (i, token) in [(0, STDOUT), (1, STDERR)] {
                let fd = match i {
                    0 => child.take_stdout(),
                    _ => child.take_stderr(),
                };
                if let Some(fd) = fd {
                    let _ = rustix::pipe::fcntl_setpipe_size(&fd, PIPE_SIZE);
                    let mut rx = Receiver::from(fd);
                    rx.set_nonblocking(true)?;
                    registry.register(&mut rx, token, Interest::READABLE)?;
                    self.outputs[i].pipe = Some(rx);
                    self.outputs[i].eof = false;
                    self.outputs[i].throttled = false;
                    self.outputs[i].more = false;
                }
            }
            if let Some(fd) = child.take_stdin() {
                let mut tx = Sender::from(fd);
                tx.set_nonblocking(true)?;
                registry.register(&mut tx, STDIN, Interest::WRITABLE)?;
                self.stdin = Some(tx);
            }
            registry.register(&mut child, CHILD, Interest::READABLE)?;
            Ok(())
        };
        if let Err(e) = register() {
            let _ = child.kill_and_reap();
            return Err(format!("cannot watch the task: {e}"));
        }
        self.stdin_queue.clear();
        self.stdin_close = false;
        self.child = Some(child);
        self.status = Status::Running;
        self.started_ms = now_ms();
        self.ended_ms = None;
        Ok(())
    }

    fn record(&self) -> TaskRecord {
        TaskRecord {
            id: self.id.clone(),
            command: self.options.command.clone(),
            cwd: self.options.cwd.as_ref().map(|c| c.display().to_string()),
            env: self.options.env.clone(),
            meta: self.meta.clone(),
            status: self.status.clone(),
            supervisor: self.identity.clone(),
            pid: self.child_pid(),
            process: self.child_pid().and(self.process.clone()),
            session: self.session,
            restarts: self.restarts,
            created_ms: self.created_ms,
            started_ms: self.started_ms,
            ended_ms: self.ended_ms,
            log: self.options.log,
        }
    }

    fn child_pid(&self) -> Option<i32> {
        match &self.child {
            Some(c) if c.exit().is_none() => Some(c.id().as_raw()),
            _ => None,
        }
    }

    fn write_record(&self) -> Result<(), String> {
        // Compact JSON: `list` parses a thousand of these.
        let mut bytes = serde_json::to_vec(&self.record()).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        // Readers see whole records; durability is moot: after a crash the record reads as lost.
        procyard_core::state_file::write_atomic_volatile(
            task_file(&self.dir, &self.id, "json"),
            &bytes,
        )
        .map_err(|e| error_chain(&e))
    }

    fn save(&self) {
        if let Err(e) = self.write_record() {
            tracing::warn!("cannot save the state of {}: {e}", self.id);
        }
    }

    fn info(&self) -> TaskInfo {
        let mut streams = BTreeMap::new();
        for out in &self.outputs {
            streams.insert(out.name.as_str().to_owned(), stream_info(out));
        }
        TaskInfo {
            id: self.id.clone(),
            command: self.options.command.clone(),
            meta: self.meta.clone(),
            status: self.status.clone(),
            pid: self.child_pid(),
            supervisor_pid: self.identity.pid.as_raw(),
            restarts: self.restarts,
            retain: self.options.retain,
            streams,
            stdin_open: self.stdin.is_some() && !self.stdin_close,
            datagrams: self.datagrams.len(),
            created_ms: self.created_ms,
            started_ms: self.started_ms,
            ended_ms: self.ended_ms,
        }
    }

    fn run(&mut self, mut signals: SignalFd) -> io::Result<()> {
        self.poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let mut events = Events::with_capacity(256);
        // The child may have written or exited before its sources were registered.
        self.read_output(0);
        self.read_output(1);
        self.child_event();
        while !self.finished {
            let busy = self.outputs.iter().any(|o| o.more && o.pipe.is_some());
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                let hellos = self.clients.values().filter(|c| !c.hello).map(|c| c.hello_deadline);
                let idle = self
                    .clients
                    .iter()
                    .filter_map(|(t, c)| admission::idle_deadline(&c.slot(*t)))
                    .map(Deadline::at);
                let hellos = hellos.chain(idle);
                let stops = self.deleting.as_ref().map(|d| &d.stop).into_iter().chain(&self.sweep);
                Deadline::poll_timeout(stops.map(|s| s.deadline).chain(hellos))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    DATA => self.receive_datagrams(),
                    SIGNALS => {
                        for sig in signals.pending().unwrap_or_default() {
                            if sig == Signal::CHLD {
                                self.escapee_exited();
                            } else if sig != Signal::PIPE && sig != Signal::HUP {
                                tracing::info!("{sig} received: deleting task {}", self.id);
                                self.start_delete(None);
                            }
                        }
                    }
                    CHILD => self.child_event(),
                    STDOUT => self.read_output(0),
                    STDERR => self.read_output(1),
                    STDIN => self.flush_stdin(),
                    token => {
                        if let Some(c) = self.clients.get_mut(&token) {
                            if event.is_readable() || event.is_read_closed() {
                                c.readable = true;
                            }
                            if event.is_error() {
                                c.dead = true;
                            }
                        }
                    }
                }
            }
            // A connection that does not greet in time, or stays idle too long, gives its
            // slot back.
            let now = Instant::now();
            for (token, c) in self.clients.iter_mut() {
                let idle_expired =
                    admission::idle_deadline(&c.slot(*token)).is_some_and(|d| d <= now);
                if idle_expired || (!c.hello && c.hello_deadline.is_expired()) {
                    c.dead = true;
                }
            }
            for i in 0..2 {
                if self.outputs[i].more {
                    self.read_output(i);
                }
            }
            self.step_delete();
            self.step_sweep();
            self.service_clients();
        }
        Ok(())
    }

    fn read_output(&mut self, i: usize) {
        let block = self.options.block_when_full;
        let mut got_any = false;
        let out = &mut self.outputs[i];
        let Some(pipe) = out.pipe.as_mut() else { return };
        out.throttled = false;
        out.more = false;
        // Bounded per call so one chatty task cannot starve the clients.
        let mut budget = 4 * PIPE_SIZE;
        loop {
            let want = if block { out.buf.room().min(budget) } else { budget };
            if want == 0 {
                out.throttled = true;
                break;
            }
            let log = &mut out.log;
            let result = out.buf.fill_from(pipe, want, |bytes| {
                if let Some(file) = log.as_mut()
                    && let Err(e) = file.write_all(bytes)
                {
                    tracing::warn!("cannot log output: {e}");
                    *log = None;
                }
            });
            match result {
                Ok(0) => {
                    out.eof = true;
                    break;
                }
                Ok(n) => {
                    got_any = true;
                    budget -= n.min(budget);
                    if budget == 0 {
                        // More may be waiting: come back after serving the clients.
                        out.more = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    out.eof = true;
                    break;
                }
            }
        }
        if out.eof
            && let Some(mut pipe) = out.pipe.take()
        {
            let _ = self.poll.registry().deregister(&mut pipe);
        }
        let (name, limit, eof) = (out.name, out.buf.limit(), out.eof);
        if got_any {
            for c in self.clients.values_mut().filter(|c| c.subscribed) {
                c.dirty[i] = true;
            }
        }
        if eof {
            self.broadcast(&Event::EndOfStream { stream: name, limit });
        }
    }

    fn broadcast(&mut self, event: &Event) {
        let resp = Response::Event(event.clone());
        let limits = [
            (self.outputs[0].name, self.outputs[0].buf.limit()),
            (self.outputs[1].name, self.outputs[1].buf.limit()),
        ];
        for c in self.clients.values_mut().filter(|c| c.subscribed) {
            // Owed output events come first, so "output" never follows "end of stream".
            for (i, (stream, limit)) in limits.into_iter().enumerate() {
                if c.dirty[i] {
                    c.dirty[i] = false;
                    c.send(&Response::Event(Event::Output { stream, limit }));
                }
            }
            c.send(&resp);
            if c.pending() > OUT_MAX {
                tracing::warn!("dropping a subscriber that does not read its events");
                c.dead = true;
            }
        }
    }

    fn child_event(&mut self) {
        let Some(child) = self.child.as_mut() else { return };
        if child.exit().is_some() {
            return;
        }
        let is_zombie =
            matches!(procyard_core::ProcStat::read(child.id()), Ok(Some(st)) if st.is_zombie());
        if is_zombie {
            // While the leader is an unreaped zombie its group id cannot be reused, so this
            // reaches only the task's own leftovers (grandchildren): they end with it.
            let signal = if self.deleting.is_some() { Signal::KILL } else { Signal::TERM };
            let _ = child.signal_group(signal);
            let _ = child.signal_group(Signal::CONT);
        }
        let exit = match child.try_wait() {
            Ok(Some(exit)) => exit,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("cannot wait for the task: {e}");
                return;
            }
        };
        let _ = self.poll.registry().deregister(child);
        // Collect what the task wrote before it exited.
        self.read_output(0);
        self.read_output(1);
        if let Some(mut tx) = self.stdin.take() {
            let _ = self.poll.registry().deregister(&mut tx);
        }
        self.stdin_queue.clear();
        for c in self.clients.values_mut().filter(|c| c.waiting_stdin) {
            c.waiting_stdin = false;
            c.refuse(RefusalKind::NotRunning, "the task exited before reading its stdin");
        }
        self.status = match exit {
            Exit::Code(code) => Status::Exited { code },
            Exit::Signal { signal, .. } => Status::Signaled { signal },
        };
        self.ended_ms = Some(now_ms());
        self.save();
        self.broadcast(&Event::Exit { status: self.status.clone() });
        if self.deleting.is_some() {
            self.escapee_exited();
        } else {
            self.start_sweep();
        }
    }

    fn flush_stdin(&mut self) {
        let Some(tx) = self.stdin.as_mut() else { return };
        while !self.stdin_queue.is_empty() {
            let (a, _) = self.stdin_queue.as_slices();
            match tx.write(a) {
                Ok(n) => {
                    self.stdin_queue.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The task closed its stdin: what is queued can never be written.
                    self.stdin_queue.clear();
                    self.stdin_close = true;
                }
            }
        }
        if self.stdin_queue.len() < STDIN_CAP {
            for c in self.clients.values_mut().filter(|c| c.waiting_stdin) {
                c.waiting_stdin = false;
                c.send(&Response::Ok);
            }
        }
        if self.stdin_close
            && self.stdin_queue.is_empty()
            && let Some(mut tx) = self.stdin.take()
        {
            let _ = self.poll.registry().deregister(&mut tx);
        }
    }

    fn is_alive(&self) -> bool {
        self.child.as_ref().is_some_and(|c| c.exit().is_none())
    }

    fn signal_task(&mut self, signal: Signal) -> Result<(), (RefusalKind, String)> {
        let child = match self.child.as_ref() {
            Some(c) if c.exit().is_none() => c,
            _ => {
                return Err((
                    RefusalKind::NotRunning,
                    format!("task {} is not running ({})", self.id, self.status),
                ));
            }
        };
        child.signal_group(signal).map_err(|e| (RefusalKind::Failed, error_chain(&e)))?;
        // Escapees get what the task gets (they are stopped with it, paused with it).
        self.signal_all_escapees(signal);
        let new_status = if signal == Signal::STOP {
            Some(Status::Paused)
        } else if signal == Signal::CONT {
            Some(Status::Running)
        } else {
            None
        };
        if let Some(s) = new_status
            && s != self.status
        {
            self.status = s;
            self.save();
        }
        Ok(())
    }
}

mod admission;
mod connection;
mod datagrams;
mod requests;
mod stop;

use connection::Client;
use stop::Stop;

fn stream_index(stream: StreamName) -> usize {
    match stream {
        StreamName::Stdout => 0,
        StreamName::Stderr => 1,
    }
}

fn stream_info(out: &Output) -> StreamInfo {
    StreamInfo {
        start: out.buf.start(),
        limit: out.buf.limit(),
        consumed: out.buf.consumed(),
        eof: out.eof,
    }
}

fn merge_meta(meta: &mut Meta, update: &Meta) {
    for (k, v) in update {
        if v.is_null() {
            meta.remove(k);
        } else {
            meta.insert(k.clone(), v.clone());
        }
    }
}
