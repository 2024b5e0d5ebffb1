//! The supervisor as a closed state machine: every [`Event`] the shell observes goes through
//! one pure transition, [`State::step`], which answers with the [`Action`]s to perform. No
//! process, socket or clock is touched here: the unit tests (in `tests.rs`) drive it with
//! events and a made-up `now`.
//!
//! Rules the transition keeps:
//! 1. The task's group is signalled only while its leader is unreaped (running, or a zombie
//!    whose group id cannot be reused); escapees (adopted orphans, see `escapees.rs`) get the
//!    signals the task gets.
//! 2. One stop at a time: the sweep of what an exited task left running, or the delete. A
//!    delete during a sweep carries on the sweep's ladder (no step back to INT); a second
//!    delete only adds its requester to those answered when the delete is over.
//! 3. A stop is over when the leader is gone and no escapee is left, or when the ladder gave
//!    up on escapees that outlived every KILL. A leader stuck after the last KILL gets KILL
//!    again, one grace period apart.
//! 4. Events about a leader that is not the one running (a second exit, an exit before the
//!    spawn was recorded) change nothing twice; after the delete, nothing changes.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use mio::Token;
use procyard_core::{Deadline, Exit, Pid, Signal};

use crate::RefusalKind;
use crate::buffer::OutputBuffer;
use crate::meta::Meta;
use crate::protocol::{Event as Announce, Request, Response, StreamInfo, StreamName, TaskInfo};
use crate::status::Status;

/// A client connection, as the shell names it.
pub(super) type ClientId = Token;

/// stdin bytes queued before writers are made to wait.
pub(super) const STDIN_CAP: usize = 1024 * 1024;
/// Datagrams kept from the data channel.
pub(super) const MAX_DATAGRAMS: usize = 1024;

/// What the shell observed or received.
#[derive(Debug)]
pub(super) enum Event {
    /// The leader of the run being started is recorded.
    Spawned { pid: Pid },
    /// Starting the task again failed.
    SpawnFailed { message: String },
    /// The leader's pidfd is readable: it exited and is a zombie (its group id still held).
    LeaderExited,
    /// The leader was reaped (what it wrote before was collected first).
    Reaped { exit: Exit },
    /// Bytes were appended to `stream`'s buffer (`grew`), its pipe ended (`eof`), and/or the
    /// shell stopped reading it with bytes perhaps left in it (`held`: the buffer is full of
    /// unconsumed bytes, or the read budget ran out), or no longer does.
    Output { stream: StreamName, grew: bool, eof: bool, held: bool },
    /// Queued stdin bytes were written; `broken`: the task closed its stdin.
    StdinFlushed { broken: bool },
    /// A greeted client's request (not [`Request::Write`]: see [`Event::Write`]).
    Request { client: ClientId, request: Request },
    /// A client's stdin write, with the bytes of its raw frame.
    Write { client: ClientId, data: Vec<u8> },
    /// A subscriber's connection has room for the output events it is owed.
    ClientReady { client: ClientId },
    /// A connection closed.
    ClientGone { client: ClientId },
    /// A signal to the supervisor.
    Signal(Signal),
    /// Datagrams from the task's data channel (their senders already checked).
    Datagrams(Vec<serde_json::Value>),
    /// The escapees there are now (our children that are not the leader).
    Escapees(Vec<Pid>),
    /// Time passed: [`State::deadline`] may be due.
    Timer,
}

/// What the shell is to do, in order.
#[derive(Debug, PartialEq)]
pub(super) enum Action {
    /// `signal` to the task's process group, then to every escapee there is now; answers
    /// `reply` with `Ok` or the failure.
    SignalTask { signal: Signal, reply: Option<ClientId> },
    /// `signal` to the task's process group (its leader is unreaped).
    SignalGroup(Signal),
    /// `signal` to every escapee there is now.
    SignalEscapees(Signal),
    /// `signal` to these escapees.
    SignalSome(Vec<Pid>, Signal),
    /// Reap the leader; collect its output and report [`Event::Reaped`].
    Reap,
    /// Reap escapees that exited and report [`Event::Escapees`].
    CheckEscapees,
    /// SIGKILL to every escapee, and reap them (nothing carries over into a new run).
    KillEscapees,
    /// Collect what is left in the last run's pipes and close them.
    ReleasePipes,
    /// Start the task; report [`Event::Spawned`] or [`Event::SpawnFailed`].
    Spawn,
    /// Write queued stdin bytes; report [`Event::StdinFlushed`].
    FlushStdin,
    /// Close the task's stdin.
    CloseStdin,
    /// Write the task's record.
    Save,
    /// Send a response.
    Send(ClientId, Response),
    /// Send `response` (a `Data`), then `len` raw bytes of `stream` from offset `at`.
    SendData { client: ClientId, response: Response, stream: StreamName, at: u64, len: u64 },
    /// Send [`Response::OutputFile`] with a read-only descriptor of `stream`'s memfd.
    SendOutputFile { client: ClientId, stream: StreamName },
    /// Remove the task's files.
    RemoveFiles,
    /// Deliver the last answers and end the supervisor.
    Finish,
}

/// Wall-clock and monotonic time of an event.
#[derive(Clone, Copy, Debug)]
pub(super) struct Now {
    pub(super) at: Instant,
    pub(super) wall_ms: u64,
}

/// What does not change over the task's life.
#[derive(Clone, Debug)]
pub(super) struct Task {
    pub(super) id: String,
    pub(super) command: Vec<String>,
    pub(super) retain: u64,
    pub(super) supervisor: Pid,
}

/// The task's leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Leader {
    /// Being started (no pid recorded yet).
    Starting,
    /// Unreaped (running, paused, or a zombie).
    Running(Pid),
    /// Reaped.
    Exited,
}

/// One output stream's retained bytes.
#[derive(Debug)]
pub(super) struct Output {
    pub(super) buf: OutputBuffer,
    /// The pipe of the current run closed.
    pub(super) eof: bool,
    /// The pipe may hold bytes not read yet: more output comes even after the task exited.
    pub(super) held: bool,
}

/// The task's stdin.
#[derive(Debug, Default)]
pub(super) struct Stdin {
    /// The pipe is open.
    pub(super) open: bool,
    /// Close once the queue is written.
    pub(super) closing: bool,
    /// Bytes not yet written (the shell drains it into the pipe).
    pub(super) queue: VecDeque<u8>,
    /// Writers owed an answer once their bytes are queued below [`STDIN_CAP`].
    waiting: Vec<ClientId>,
}

/// What the transition knows of a connection.
#[derive(Debug, Default)]
struct Peer {
    subscribed: bool,
    /// A read waiting for output.
    parked: Option<Request>,
    /// Output events owed (coalesced), per stream.
    owed: [bool; 2],
}

/// Everything the supervisor knows about its task.
#[derive(Debug)]
pub(super) struct State {
    pub(super) task: Task,
    pub(super) leader: Leader,
    pub(super) status: Status,
    pub(super) restarts: u32,
    pub(super) meta: Meta,
    pub(super) datagrams: VecDeque<serde_json::Value>,
    pub(super) outputs: [Output; 2],
    pub(super) stdin: Stdin,
    pub(super) created_ms: u64,
    pub(super) started_ms: u64,
    pub(super) ended_ms: Option<u64>,
    peers: HashMap<ClientId, Peer>,
    /// The escapees as last seen.
    pub(super) escapees: Vec<Pid>,
    pub(super) stop: Option<Stop>,
    /// Requesters of the delete in progress (`Some` while deleting).
    deleting: Option<Vec<ClientId>>,
    /// The requester of the restart in progress.
    restarting: Option<ClientId>,
    /// The next escapee report decides whether a sweep starts (the leader just exited).
    sweep_pending: bool,
    finished: bool,
}

pub(super) fn stream_index(stream: StreamName) -> usize {
    match stream {
        StreamName::Stdout => 0,
        StreamName::Stderr => 1,
    }
}

const STREAMS: [StreamName; 2] = [StreamName::Stdout, StreamName::Stderr];

impl State {
    /// A task about to be started for the first time.
    pub(super) fn new(task: Task, meta: Meta, now: Now) -> State {
        let retain = usize::try_from(task.retain).unwrap_or(usize::MAX);
        let output = || Output { buf: OutputBuffer::new(retain), eof: false, held: false };
        State {
            task,
            leader: Leader::Starting,
            status: Status::Running,
            restarts: 0,
            meta,
            datagrams: VecDeque::new(),
            outputs: [output(), output()],
            stdin: Stdin::default(),
            created_ms: now.wall_ms,
            started_ms: now.wall_ms,
            ended_ms: None,
            peers: HashMap::new(),
            escapees: Vec::new(),
            stop: None,
            deleting: None,
            restarting: None,
            sweep_pending: false,
            finished: false,
        }
    }

    /// The pid of the task's leader while it is unreaped.
    pub(super) fn leader_pid(&self) -> Option<Pid> {
        match self.leader {
            Leader::Running(pid) => Some(pid),
            _ => None,
        }
    }

    fn running(&self) -> bool {
        self.leader_pid().is_some()
    }

    /// Whether the delete is over and the supervisor is to end.
    pub(super) fn is_finished(&self) -> bool {
        self.finished
    }

    /// Whether the task is being deleted (new connections are refused).
    pub(super) fn is_deleting(&self) -> bool {
        self.deleting.is_some()
    }

    /// When [`Event::Timer`] is next due.
    pub(super) fn deadline(&self) -> Option<Deadline> {
        self.stop.as_ref().map(Stop::deadline)
    }

    /// Whether the client waits for something (a parked read, room for its stdin bytes):
    /// its further requests wait, and it is not idle.
    pub(super) fn is_busy(&self, client: ClientId) -> bool {
        self.peers.get(&client).is_some_and(|p| p.parked.is_some())
            || self.stdin.waiting.contains(&client)
    }

    /// Whether the client is a subscriber.
    pub(super) fn is_subscribed(&self, client: ClientId) -> bool {
        self.peers.get(&client).is_some_and(|p| p.subscribed)
    }

    /// Whether the client is owed output events.
    pub(super) fn owes_events(&self, client: ClientId) -> bool {
        self.peers.get(&client).is_some_and(|p| p.owed.contains(&true))
    }

    /// The transition: `event` at `now`, and what to do about it.
    pub(super) fn step(&mut self, event: Event, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        match event {
            Event::Spawned { pid } => self.spawned(pid, now, &mut out),
            Event::SpawnFailed { message } => {
                self.leader = Leader::Exited;
                if let Some(client) = self.restarting.take() {
                    out.push(refuse(client, RefusalKind::Failed, message));
                }
            }
            Event::LeaderExited => {
                if self.running() {
                    // Its group id is still held: this reaches only the task's leftovers.
                    let signal = if self.is_deleting() { Signal::KILL } else { Signal::TERM };
                    out.extend([
                        Action::SignalGroup(signal),
                        Action::SignalGroup(Signal::CONT),
                        Action::Reap,
                    ]);
                }
            }
            Event::Reaped { exit } => self.reaped(exit, now, &mut out),
            Event::Output { stream, grew, eof, held } => {
                self.outputs[stream_index(stream)].held = held;
                self.output(stream, grew, eof, &mut out);
            }
            Event::StdinFlushed { broken } => self.stdin_flushed(broken, &mut out),
            Event::Request { client, request } => self.request(client, request, now, &mut out),
            Event::Write { client, data } => self.write(client, data, &mut out),
            Event::ClientReady { client } => self.send_owed(client, &mut out),
            Event::ClientGone { client } => {
                self.peers.remove(&client);
                for o in &mut self.outputs {
                    o.buf.unpin(client.0);
                }
                self.stdin.waiting.retain(|c| *c != client);
                if let Some(requesters) = &mut self.deleting {
                    requesters.retain(|c| *c != client);
                }
                if self.restarting == Some(client) {
                    self.restarting = None;
                }
            }
            Event::Signal(Signal::CHLD) => out.push(Action::CheckEscapees),
            Event::Signal(Signal::PIPE | Signal::HUP) => {}
            Event::Signal(_) => self.start_delete(None, now, &mut out),
            Event::Datagrams(values) => self.datagrams(values, &mut out),
            Event::Escapees(pids) => self.escapees_seen(pids, now, &mut out),
            Event::Timer => self.timer(now, &mut out),
        }
        out
    }

    fn spawned(&mut self, pid: Pid, now: Now, out: &mut Vec<Action>) {
        if self.leader == Leader::Starting {
            self.leader = Leader::Running(pid);
            self.status = Status::Running;
            self.ended_ms = None;
            self.stdin = Stdin { open: true, ..Stdin::default() };
            for o in &mut self.outputs {
                o.eof = false;
            }
        }
        // Else the exit came first: the run happened, and is over.
        self.started_ms = now.wall_ms;
        if let Some(client) = self.restarting.take() {
            self.restarts = self.restarts.saturating_add(1);
            out.push(Action::Save);
            self.announce(Announce::Restarted, out);
            out.push(Action::Send(client, Response::Ok));
        }
    }

    fn reaped(&mut self, exit: Exit, now: Now, out: &mut Vec<Action>) {
        if self.leader == Leader::Exited {
            return;
        }
        self.leader = Leader::Exited;
        self.stdin.open = false;
        self.stdin.queue.clear();
        out.push(Action::CloseStdin);
        for client in std::mem::take(&mut self.stdin.waiting) {
            out.push(refuse(
                client,
                RefusalKind::NotRunning,
                "the task exited before reading its stdin",
            ));
        }
        self.status = match exit {
            Exit::Code(code) => Status::Exited { code },
            Exit::Signal { signal, .. } => Status::Signaled { signal },
        };
        self.ended_ms = Some(now.wall_ms);
        out.push(Action::Save);
        self.announce(Announce::Exit { status: self.status.clone() }, out);
        self.release_parked(None, out);
        // What it left running is stopped: by the delete's ladder, or by a sweep.
        self.sweep_pending = !self.is_deleting();
        out.push(Action::CheckEscapees);
    }

    fn request(&mut self, client: ClientId, request: Request, now: Now, out: &mut Vec<Action>) {
        self.peers.entry(client).or_default();
        match request {
            Request::Signal { signal } => self.signal(client, signal, out),
            Request::Pause => self.signal(client, Signal::STOP, out),
            Request::Resume => self.signal(client, Signal::CONT, out),
            Request::Restart => self.restart(client, out),
            Request::Delete => self.start_delete(Some(client), now, out),
            other => self.serve(client, other, out),
        }
    }

    fn signal(&mut self, client: ClientId, signal: Signal, out: &mut Vec<Action>) {
        if !self.running() {
            let message = format!("task {} is not running ({})", self.task.id, self.status);
            out.push(refuse(client, RefusalKind::NotRunning, message));
            return;
        }
        out.push(Action::SignalTask { signal, reply: Some(client) });
        let status = match signal {
            Signal::STOP => Status::Paused,
            Signal::CONT => Status::Running,
            _ => return,
        };
        if status != self.status {
            self.status = status;
            out.push(Action::Save);
        }
    }

    fn restart(&mut self, client: ClientId, out: &mut Vec<Action>) {
        if self.is_deleting() || self.restarting.is_some() {
            out.push(refuse(client, RefusalKind::Failed, "the task is being deleted or restarted"));
            return;
        }
        if self.leader != Leader::Exited {
            let message = format!("task {} is still running", self.task.id);
            out.push(refuse(client, RefusalKind::StillRunning, message));
            return;
        }
        // What the last run left running does not carry over into the new one.
        self.stop = None;
        self.sweep_pending = false;
        self.leader = Leader::Starting;
        self.restarting = Some(client);
        out.extend([Action::ReleasePipes, Action::KillEscapees, Action::Spawn]);
    }

    /// Task info for [`Request::Info`].
    pub(super) fn info(&self) -> TaskInfo {
        TaskInfo {
            id: self.task.id.clone(),
            command: self.task.command.clone(),
            meta: self.meta.clone(),
            status: self.status.clone(),
            pid: self.leader_pid(),
            supervisor_pid: self.task.supervisor,
            restarts: self.restarts,
            retain: self.task.retain,
            streams: STREAMS.into_iter().map(|s| (s, self.stream_info(s))).collect(),
            stdin_open: self.stdin.open && !self.stdin.closing,
            datagrams: self.datagrams.len(),
            created_ms: self.created_ms,
            started_ms: self.started_ms,
            ended_ms: self.ended_ms,
        }
    }

    pub(super) fn stream_info(&self, stream: StreamName) -> StreamInfo {
        let o = &self.outputs[stream_index(stream)];
        StreamInfo {
            start: o.buf.start(),
            limit: o.buf.limit(),
            consumed: o.buf.consumed(),
            eof: o.eof,
        }
    }
}

/// A refusal sent to `client`.
pub(super) fn refuse(client: ClientId, kind: RefusalKind, message: impl Into<String>) -> Action {
    Action::Send(client, Response::Error { kind, message: message.into() })
}

mod ladder;
mod serve;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_data;

use ladder::Stop;
