//! The supervisor: one detached process per task. Its decisions are a pure state machine
//! ([`state::State::step`]: an [`Event`] in, [`Action`]s out); this module is the thin mio
//! shell around it, which turns readiness on the task's pidfd, its stdio pipes, the Unix
//! listener, client connections, the `data` datagram socket and a signalfd into events, and
//! performs the actions (`effects.rs`).
//!
//! The shell keeps what only I/O needs: file descriptors, the [`Child`], connection buffers and
//! the admission of connections. Events the shell raises while performing actions (a reap, a
//! spawn, escapees found) are queued and stepped after the actions of the current event, so
//! the transition always sees one event at a time.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixDatagram, UnixListener};
use mio::unix::pipe::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token};
use procyard_core::socket::SocketPath;
use procyard_core::{
    Child, DaemonStatus, Deadline, Pid, ProcessIdentity, Signal, SignalFd, report,
};

use crate::options::SpawnOptions;
use crate::record::now_ms;
use state::{Event, Now, State};

mod admission;
mod clients;
mod connection;
mod datagrams;
mod effects;
mod escapees;
mod setup;
mod state;

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
/// Time a new connection has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Pipe buffer size asked for (throughput).
const PIPE_SIZE: usize = 1024 * 1024;

/// One output pipe of the task, as the shell reads it.
struct Pipe {
    rx: Option<Receiver>,
    /// Stopped reading because the buffer is full of unconsumed bytes.
    throttled: bool,
    /// Stopped reading after a full budget: the pipe may hold more.
    more: bool,
    /// What the state was last told: stopped reading with bytes perhaps left in the pipe.
    held: bool,
    /// The pipe reported a hang-up (its writers closed): read it on to its end.
    hung_up: bool,
    log: Option<File>,
}

struct Supervisor {
    dir: PathBuf,
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
    session: Option<Pid>,
    identity: ProcessIdentity,
    pipes: [Pipe; 2],
    stdin: Option<Sender>,
    clients: HashMap<Token, connection::Client>,
    next_token: usize,
    state: State,
    /// Events raised while performing actions, stepped in order.
    queue: VecDeque<Event>,
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
            let _ = status.fail(&format!("cannot set up signals: {}", report(&e)));
            return 1;
        }
    };
    // A spawner that is gone changes nothing: the task must outlive it.
    let _ = status.ready();
    match sup.run(signals) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("supervisor of {id} failed: {e}");
            sup.abort();
            1
        }
    }
}

fn now() -> Now {
    Now { at: Instant::now(), wall_ms: now_ms() }
}

impl Supervisor {
    /// Queues an event (stepped by [`Supervisor::settle`]).
    fn emit(&mut self, event: Event) {
        self.queue.push_back(event);
    }

    /// Steps every queued event and performs its actions (which may queue more).
    fn settle(&mut self) {
        while let Some(event) = self.queue.pop_front() {
            for action in self.state.step(event, now()) {
                self.perform(action);
            }
        }
    }

    fn run(&mut self, mut signals: SignalFd) -> io::Result<()> {
        self.poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let mut events = Events::with_capacity(256);
        // The task may have written before its pipes were registered.
        self.drain_output(0);
        self.drain_output(1);
        self.settle();
        while !self.state.is_finished() {
            let busy = self.pipes.iter().any(|p| p.more && p.rx.is_some());
            let timeout = if busy { Some(Duration::ZERO) } else { self.poll_timeout() };
            procyard_core::event::poll(&mut self.poll, &mut events, timeout)?;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    DATA => self.receive_datagrams(),
                    SIGNALS => {
                        for sig in signals.pending().unwrap_or_default() {
                            if sig != Signal::CHLD && sig != Signal::PIPE && sig != Signal::HUP {
                                tracing::info!(
                                    "{sig} received: deleting task {}",
                                    self.state.task.id
                                );
                            }
                            self.emit(Event::Signal(sig));
                        }
                    }
                    CHILD => self.emit(Event::LeaderExited),
                    STDOUT | STDERR => {
                        let i = usize::from(event.token() == STDERR);
                        if event.is_read_closed() || event.is_error() {
                            self.pipes[i].hung_up = true;
                        }
                        self.read_output(i);
                    }
                    STDIN => {
                        let broken = self.flush_stdin();
                        self.emit(Event::StdinFlushed { broken });
                    }
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
            self.settle();
            self.expire_clients();
            for i in 0..2 {
                if self.pipes[i].more {
                    self.read_output(i);
                }
            }
            if self.state.deadline().is_some_and(Deadline::is_expired) {
                self.emit(Event::Timer);
            }
            self.settle();
            if !self.state.is_finished() {
                self.service_clients();
            }
        }
        Ok(())
    }

    /// The nearest deadline: the stop's next step, a hello owed, an idle connection's end.
    fn poll_timeout(&self) -> Option<Duration> {
        let hellos = self.clients.values().filter(|c| !c.hello).map(|c| c.hello_deadline);
        let idle = self
            .clients
            .iter()
            .filter_map(|(t, c)| admission::idle_deadline(&self.slot(*t, c)))
            .map(Deadline::at);
        Deadline::poll_timeout(self.state.deadline().into_iter().chain(hellos).chain(idle))
    }

    /// A connection that does not greet in time, or stays idle too long, gives its slot back.
    fn expire_clients(&mut self) {
        let now = Instant::now();
        let expired: Vec<Token> = self
            .clients
            .iter()
            .filter(|(t, c)| {
                admission::idle_deadline(&self.slot(**t, c)).is_some_and(|d| d <= now)
                    || (!c.hello && c.hello_deadline.is_expired())
            })
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            if let Some(c) = self.clients.get_mut(&token) {
                c.dead = true;
            }
        }
    }

    /// What the admission sees of a connection.
    fn slot(&self, token: Token, c: &connection::Client) -> admission::Slot {
        c.slot(token, self.state.is_busy(token), self.state.is_subscribed(token))
    }
}
