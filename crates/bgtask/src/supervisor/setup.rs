//! Setting a supervisor up (its sockets, the task's first run), starting a run of the task,
//! its record, and tearing everything down.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use mio::net::{UnixDatagram, UnixListener};
use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Poll};
use procyard_core::socket::{self, SocketPath};
use procyard_core::{Pid, ProcStat, ProcessIdentity, Stdio, report};

use super::state::{self, Event, State};
use super::{
    CHILD, DATA, FIRST_CLIENT, LISTENER, PIPE_SIZE, Pipe, STDERR, STDIN, STDOUT, Supervisor, now,
};
use crate::layout::{DATA_ENV, ID_ENV, POOL_ENV, STATE_FILES, TaskPaths};
use crate::options::SpawnOptions;
use crate::protocol::StreamName;
use crate::record::TaskRecord;

impl Supervisor {
    /// Binds the sockets, starts the task and writes its record; on failure, removes what it
    /// created and says why.
    pub(super) fn start(
        dir: &Path,
        owner: u32,
        id: &str,
        options: &SpawnOptions,
    ) -> Result<Supervisor, String> {
        let poll = Poll::new().map_err(|e| format!("cannot create a poll: {e}"))?;
        let paths = TaskPaths::new(dir, id);
        // Only a stale socket at either path is replaced; anything else there stays, and is
        // reported.
        let (listener, sock_bound) = socket::bind_unix_listener(&paths.socket())
            .map_err(|e| format!("cannot listen: {}", report(&e)))?;
        let mut sockets = vec![sock_bound];
        let cleanup = |sockets: Vec<SocketPath>| {
            for s in sockets {
                let _ = s.remove();
            }
        };
        let (data, data_bound) = match socket::bind_unix_datagram(&paths.data()) {
            Ok(bound) => bound,
            Err(e) => {
                cleanup(sockets);
                return Err(format!("cannot bind the data channel: {}", report(&e)));
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
        match sup.spawn_child() {
            Ok(pid) => {
                sup.emit(Event::Spawned { pid });
                sup.settle();
            }
            Err(message) => {
                sup.abort();
                return Err(message);
            }
        }
        if let Err(e) = sup.write_record() {
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
            tracing::warn!("escapees of task {id} will not be caught: {}", report(&e));
        }
        let identity = ProcessIdentity::current().map_err(|e| report(&e))?;
        let paths = TaskPaths::new(dir, id);
        let pipe = |stream: StreamName| -> Result<Pipe, String> {
            let log = if options.log {
                let path = paths.log(stream);
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .custom_flags(rustix::fs::OFlags::CLOEXEC.bits() as i32)
                    .open(&path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                Some(file)
            } else {
                None
            };
            Ok(Pipe { rx: None, throttled: false, more: false, held: false, hung_up: false, log })
        };
        let pipes = [pipe(StreamName::Stdout)?, pipe(StreamName::Stderr)?];
        let task = state::Task {
            id: id.to_owned(),
            command: options.command.clone(),
            retain: options.retain,
            supervisor: identity.pid,
        };
        let session =
            ProcStat::read(identity.pid).ok().flatten().and_then(|st| Pid::from_raw(st.sid));
        Ok(Supervisor {
            dir: dir.to_owned(),
            owner,
            options: options.clone(),
            poll,
            listener,
            data,
            sockets: Vec::new(),
            child: None,
            process: None,
            session,
            identity,
            pipes,
            stdin: None,
            clients: HashMap::new(),
            next_token: FIRST_CLIENT,
            state: State::new(task, options.meta.clone(), now()),
            queue: VecDeque::new(),
        })
    }

    /// Kills the task and removes every file (start-up failure or fatal loop error).
    pub(super) fn abort(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill_and_reap();
        }
        self.kill_escapees();
        self.remove_files();
    }

    /// Removes the task's files: the state and log files, and the two sockets if their paths
    /// still name the sockets we bound.
    pub(super) fn remove_files(&mut self) {
        for s in std::mem::take(&mut self.sockets) {
            let _ = s.remove();
        }
        let paths = TaskPaths::new(&self.dir, &self.state.task.id);
        for suffix in STATE_FILES {
            let _ = procyard_core::state_file::remove(paths.file(suffix));
        }
    }

    /// Starts a run of the task: its process, with its pipes and pidfd registered. The error
    /// says why, after "unable to spawn PROGRAM" (which whoever reports it says).
    pub(super) fn spawn_child(&mut self) -> Result<Pid, String> {
        let id = &self.state.task.id;
        let cmd = &self.options.command;
        let mut command = procyard_core::Command::new(&cmd[0]);
        command
            .args(&cmd[1..])
            .env(DATA_ENV, TaskPaths::new(&self.dir, id).data())
            .env(ID_ENV, id)
            .env(POOL_ENV, &self.dir)
            .stdin(Stdio::Pipe)
            .stdout(Stdio::Pipe)
            .stderr(Stdio::Pipe);
        for (k, v) in &self.options.env {
            command.env(k, v);
        }
        if let Some(cwd) = &self.options.cwd {
            command.current_dir(cwd);
        }
        let mut child = command.spawn().map_err(|e| spawn_cause(&e))?;
        // Read while the child is unreaped (so its pid is still its own).
        self.process = ProcessIdentity::of(child.id()).ok().flatten();
        let registry = self.poll.registry();
        let mut register = || -> io::Result<()> {
            for (i, token) in [(0, STDOUT), (1, STDERR)] {
                let fd = if i == 0 { child.take_stdout() } else { child.take_stderr() };
                if let Some(fd) = fd {
                    let _ = rustix::pipe::fcntl_setpipe_size(&fd, PIPE_SIZE);
                    let mut rx = Receiver::from(fd);
                    rx.set_nonblocking(true)?;
                    registry.register(&mut rx, token, Interest::READABLE)?;
                    let pipe = &mut self.pipes[i];
                    (pipe.rx, pipe.throttled, pipe.more, pipe.held, pipe.hung_up) =
                        (Some(rx), false, false, false, false);
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
        let pid = child.id();
        self.child = Some(child);
        Ok(pid)
    }

    fn record(&self) -> TaskRecord {
        let s = &self.state;
        TaskRecord {
            id: s.task.id.clone(),
            command: self.options.command.clone(),
            cwd: self.options.cwd.as_ref().map(|c| c.display().to_string()),
            env: self.options.env.clone(),
            meta: s.meta.clone(),
            status: s.status.clone(),
            supervisor: self.identity.clone(),
            pid: s.leader_pid(),
            process: s.leader_pid().and(self.process.clone()),
            session: self.session,
            restarts: s.restarts,
            created_ms: s.created_ms,
            started_ms: s.started_ms,
            ended_ms: s.ended_ms,
            log: self.options.log,
        }
    }

    pub(super) fn write_record(&self) -> Result<(), String> {
        // Compact JSON: `list` parses a thousand of these.
        let mut bytes = serde_json::to_vec(&self.record()).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        // Readers see whole records; durability is moot: after a crash the record reads as lost.
        let path = TaskPaths::new(&self.dir, &self.state.task.id).record();
        procyard_core::state_file::write_atomic_volatile(path, &bytes).map_err(|e| report(&e))
    }
}

/// What a failed spawn adds to "unable to spawn PROGRAM" (core's message begins with it).
fn spawn_cause(e: &procyard_core::Error) -> String {
    match e {
        procyard_core::Error::Spawn { source, .. } => report(source),
        procyard_core::Error::SpawnCwd { cwd, source, .. } => {
            format!("cannot enter working directory {}: {}", cwd.display(), report(source))
        }
        other => report(other),
    }
}
