//! [`ProcessManager`]: runs tasks in child processes and hands their messages and outcomes to
//! handlers, from one `mio` event loop. No strategy here: that is the scheduler's job.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use procyard_core::mio::unix::pipe::Receiver;
use procyard_core::mio::{Events, Interest, Poll, Token, Waker};
use procyard_core::{Escalation, FrameDecoder, Pid, Signal, StopLadder, fork::ForkConfig};
use serde_json::Value;

use crate::output::Capture;
use crate::registry::WORKER_FLAG;
use crate::running::{CompletionHandler, MessageHandler, Running};
use crate::task::{ClosureFn, TaskKind, panic_message};
use crate::{Endpoint, Error, Outcome, Result, Task};

const WAKER: Token = Token(usize::MAX);
/// Tokens per child: its pidfd, its frame pipe, a captured command's stdout and stderr.
const TOKENS_PER_CHILD: usize = 4;
const CHILD: usize = 0;
const FRAMES: usize = 1;
const STDOUT: usize = 2;

fn token(id: u64, which: usize) -> Token {
    Token(id as usize * TOKENS_PER_CHILD + which)
}
/// Bytes read from a task's pipe per `read` call.
const READ_CHUNK: usize = 64 * 1024;

/// Identifies one child of a [`ProcessManager`] (never reused by that manager).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessId(u64);

/// A cloneable handle that wakes a [`ProcessManager`] blocked in [`ProcessManager::step`]
/// from any thread. It never blocks (an `eventfd` behind `mio::Waker`).
#[derive(Clone, Debug)]
pub struct WakeHandle(Arc<Waker>);

impl WakeHandle {
    /// Makes the manager's current or next `step` return.
    pub fn wakeup(&self) {
        if let Err(e) = self.0.wake() {
            tracing::warn!("procyard-procmgr: unable to wake the process manager: {e}");
        }
    }
}

/// Runs tasks in child processes; see the crate documentation for an example.
///
/// Each child is watched through its pidfd and the read end of its pipe, both registered with
/// one `mio::Poll`: [`step`](ProcessManager::step) sleeps until something happens and never
/// polls on a timer. The manager reaps only its own children, by pidfd, and installs no signal
/// handler, so several managers (and any other child-spawning code) live in one process.
///
/// Dropping a manager SIGKILLs the process groups of its remaining children and reaps them
/// without running their handlers (a safety net: call [`teardown`](ProcessManager::teardown)
/// for an orderly stop).
pub struct ProcessManager {
    poll: Poll,
    events: Events,
    waker: WakeHandle,
    children: HashMap<u64, Running>,
    next_id: u64,
    wakeups: u64,
    read_buf: Vec<u8>,
    /// The tokens of the last poll, kept to reuse the allocation.
    tokens: Vec<Token>,
}

impl fmt::Debug for ProcessManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessManager")
            .field("children", &self.children.len())
            .field("wakeups", &self.wakeups)
            .finish()
    }
}

impl ProcessManager {
    /// A manager with no children.
    ///
    /// In a process started for a function task whose `main` did not call
    /// [`init`](crate::init) first, this does not return: the process reports
    /// [`Outcome::InitNotCalled`] to its parent, says why on stderr and exits, instead of
    /// starting a copy of the program in turn.
    pub fn new() -> Result<ProcessManager> {
        crate::registry::refuse_if_init_skipped();
        let poll = Poll::new().map_err(|e| Error::os("create an event loop", e))?;
        let waker = Waker::new(poll.registry(), WAKER)
            .map_err(|e| Error::os("create the event loop's waker", e))?;
        Ok(ProcessManager {
            poll,
            events: Events::with_capacity(256),
            waker: WakeHandle(Arc::new(waker)),
            children: HashMap::new(),
            next_id: 0,
            wakeups: 0,
            read_buf: vec![0; READ_CHUNK],
            tokens: Vec::new(),
        })
    }

    /// Runs `task` in a new child; `on_complete` is called (in the thread that calls `step`)
    /// with its outcome once it has exited and all its messages were delivered.
    pub fn create_process<F>(&mut self, task: Task, on_complete: F) -> Result<ProcessId>
    where
        F: FnOnce(Outcome) + Send + 'static,
    {
        self.start(task, None, Box::new(on_complete))
    }

    /// Like [`create_process`](ProcessManager::create_process), with `on_message` called for
    /// every message the task sends, in order, before `on_complete`.
    pub fn create_process_with_messages<M, F>(
        &mut self,
        task: Task,
        on_message: M,
        on_complete: F,
    ) -> Result<ProcessId>
    where
        M: FnMut(Value) + Send + 'static,
        F: FnOnce(Outcome) + Send + 'static,
    {
        self.start(task, Some(Box::new(on_message)), Box::new(on_complete))
    }

    fn start(
        &mut self,
        task: Task,
        on_message: Option<MessageHandler>,
        on_complete: CompletionHandler,
    ) -> Result<ProcessId> {
        // A task's description is made only when it fails to start.
        let mut capture = None;
        let (child, pipe) = match task.kind {
            TaskKind::Command { mut command, capture: wanted } => {
                if wanted {
                    command.stdout(procyard_core::Stdio::Pipe).stderr(procyard_core::Stdio::Pipe);
                }
                let mut child = command.spawn().map_err(|source| Error::Spawn {
                    task: format!("command {}", command.get_program().to_string_lossy()),
                    source,
                })?;
                if wanted {
                    let (stdout, stderr) = (child.take_stdout(), child.take_stderr());
                    let pipes =
                        stdout.zip(stderr).map(|(o, e)| (Receiver::from(o), Receiver::from(e)));
                    capture =
                        Some(Box::new(pipes.map(|(o, e)| Capture::new(o, e)).unwrap_or_default()));
                }
                (child, None)
            }
            TaskKind::Function { name, args } => {
                let (read, write) = pipe()?;
                let exe = std::env::current_exe()
                    .map_err(|e| Error::os("find the current executable", e))?;
                let mut command = procyard_core::Command::new(exe);
                command.args([WORKER_FLAG, &name, &args]).stdin(procyard_core::Stdio::Fd(write));
                let child = command
                    .spawn()
                    .map_err(|source| Error::Spawn { task: format!("function {name}"), source })?;
                (child, Some(read))
            }
            TaskKind::Closure(f) => {
                let (read, write) = pipe()?;
                let config = ForkConfig { new_process_group: true, parent_death_signal: None };
                match procyard_core::fork(config) {
                    Ok(procyard_core::Forked::Parent(child)) => {
                        drop(write);
                        (child, Some(read))
                    }
                    Ok(procyard_core::Forked::Child) => {
                        drop(read);
                        self.run_forked_child(f, write)
                    }
                    Err(procyard_core::Error::NotSingleThreaded { threads, .. }) => {
                        return Err(Error::NotSingleThreaded { threads });
                    }
                    Err(source) => {
                        return Err(Error::Spawn { task: "closure".to_owned(), source });
                    }
                }
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let mut running = Running {
            child,
            pipe: pipe.map(Receiver::from),
            decoder: FrameDecoder::new(),
            result: None,
            truncated: None,
            broken: None,
            exit: None,
            on_message,
            on_complete,
            capture,
        };
        let registry = self.poll.registry();
        let pid = running.child.id();
        let registered = registry
            .register(&mut running.child, token(id, CHILD), Interest::READABLE)
            .and_then(|()| match &mut running.pipe {
                Some(pipe) => {
                    pipe.set_nonblocking(true)?;
                    registry.register(pipe, token(id, FRAMES), Interest::READABLE)
                }
                None => Ok(()),
            })
            .and_then(|()| {
                let pipes = running.capture.iter_mut().flat_map(|c| c.pipes.iter_mut().flatten());
                for (n, pipe) in pipes.enumerate() {
                    pipe.set_nonblocking(true)?;
                    registry.register(pipe, token(id, STDOUT + n), Interest::READABLE)?;
                }
                Ok(())
            });
        if let Err(e) = registered {
            // Dropping `running` kills and reaps the child.
            tracing::warn!("procyard-procmgr: unable to register process {pid}: {e}");
            return Err(Error::os("register a child with the event loop", e));
        }
        self.children.insert(id, running);
        Ok(ProcessId(id))
    }

    /// In the forked child: release what the manager holds for other children (their pipes
    /// and pidfds, without killing them), run the closure, report, `_exit`.
    ///
    /// The siblings' memory is left as it is (the process ends with `_exit` anyway): freeing
    /// it, or dropping the handlers' captures, would write to pages shared with the parent and
    /// so copy each of them (copy-on-write) for nothing.
    fn run_forked_child(&mut self, mut f: ClosureFn, write: std::os::fd::OwnedFd) -> ! {
        let mut siblings = std::mem::take(&mut self.children).into_iter();
        for (_, sibling) in siblings.by_ref() {
            let Running {
                child,
                pipe,
                decoder,
                result,
                truncated: _,
                broken,
                exit,
                on_message,
                on_complete,
                capture,
            } = sibling;
            drop((pipe, capture));
            let _ = child.detach();
            std::mem::forget((decoder, result, broken, exit, on_message, on_complete));
        }
        std::mem::forget(siblings);
        let mut endpoint = Endpoint::new(write);
        // The closure's wrapper sends the final frame itself (straight from the value's type).
        let sent = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut endpoint)))
        {
            Ok(sent) => sent,
            Err(payload) => endpoint.finish(Err(panic_message(payload.as_ref()))),
        };
        let code = if sent.is_ok() { 0 } else { 1 };
        std::mem::forget(f);
        // Stderr is unbuffered: only stdout may hold output of the task.
        let _ = std::io::stdout().flush();
        procyard_core::exit_immediately(code)
    }

    /// The pid of a live child.
    pub fn pid(&self, id: ProcessId) -> Option<Pid> {
        self.children.get(&id.0).map(|r| r.child.id())
    }

    /// Children whose completion handler has not run yet (an exited child counts until its
    /// messages and outcome were delivered).
    pub fn process_count(&self) -> usize {
        self.children.len()
    }

    /// How many times the event loop woke up so far (events, wake-ups and timeouts).
    pub fn wakeup_count(&self) -> u64 {
        self.wakeups
    }

    /// A handle that wakes this manager from any thread.
    pub fn waker(&self) -> WakeHandle {
        self.waker.clone()
    }

    /// Makes the current or next `step` return; never blocks.
    pub fn wakeup(&self) {
        self.waker.wakeup();
    }

    /// Sleeps until a child exits, a message arrives or [`wakeup`](ProcessManager::wakeup) is
    /// called, and handles what happened. Returns the number of events handled. With no
    /// children and no wake-up, it sleeps until the next wake-up.
    pub fn step(&mut self) -> Result<usize> {
        self.step_timeout(None)
    }

    /// [`step`](ProcessManager::step), returning after `timeout` at the latest (a real
    /// deadline: nothing is polled on a timer).
    pub fn step_timeout(&mut self, timeout: Option<Duration>) -> Result<usize> {
        procyard_core::event::poll(&mut self.poll, &mut self.events, timeout)
            .map_err(|e| Error::os("wait for events", e))?;
        self.wakeups += 1;
        let mut handled = 0;
        let mut tokens = std::mem::take(&mut self.tokens);
        tokens.clear();
        tokens.extend(self.events.iter().map(|e| e.token()));
        for &token in &tokens {
            handled += 1;
            if token == WAKER {
                continue;
            }
            let id = (token.0 / TOKENS_PER_CHILD) as u64;
            match token.0 % TOKENS_PER_CHILD {
                CHILD => self.on_exit(id),
                FRAMES => self.on_pipe(id),
                stream => self.on_output(id, stream - STDOUT),
            }
        }
        self.tokens = tokens;
        Ok(handled)
    }

    fn on_output(&mut self, id: u64, which: usize) {
        if let Some(capture) = self.children.get_mut(&id).and_then(|r| r.capture.as_mut()) {
            capture.drain(which, &mut self.read_buf);
        }
        self.maybe_complete(id);
    }

    fn on_pipe(&mut self, id: u64) {
        if let Some(running) = self.children.get_mut(&id) {
            running.drain_pipe(&mut self.read_buf);
        }
        self.maybe_complete(id);
    }

    fn on_exit(&mut self, id: u64) {
        let Some(running) = self.children.get_mut(&id) else { return };
        if running.exit.is_some() {
            return;
        }
        match running.child.try_wait() {
            Ok(Some(exit)) => running.exit = Some(Ok(exit)),
            Ok(None) => return, // spurious readiness: not exited yet
            Err(e) => running.exit = Some(Err(procyard_core::report(&e))),
        }
        // No `epoll_ctl` to deregister the pidfd and the pipe: closing a descriptor takes it
        // out of the `epoll` set (once a sibling forked meanwhile has closed its copy too; until
        // then a late event carries the token of a finished id, never reused, and is ignored).
        // Everything the child wrote is in the pipe now: take it all, then complete even if a
        // grandchild still holds a copy of the write end.
        running.drain_pipe(&mut self.read_buf);
        if let Some(capture) = running.capture.as_mut() {
            capture.close(&mut self.read_buf);
        }
        if running.pipe.take().is_some()
            && running.truncated.is_none()
            && running.broken.is_none()
            && let Err(procyard_core::Error::FrameTruncated { expected, got }) =
                running.decoder.finish()
        {
            running.truncated = Some((got, expected));
        }
        self.maybe_complete(id);
    }

    fn maybe_complete(&mut self, id: u64) {
        let done = self.children.get(&id).is_some_and(|r| {
            r.exit.is_some() && r.pipe.is_none() && !r.capture.as_ref().is_some_and(|c| c.is_open())
        });
        if !done {
            return;
        }
        if let Some(mut running) = self.children.remove(&id) {
            let outcome = running.outcome();
            (running.on_complete)(outcome);
        }
    }

    /// Sends `signal` to every live child's process group (or to the child itself when it has
    /// no group of its own). Children already exited are skipped: no reaped pid is ever
    /// signalled. Returns how many children were signalled.
    pub fn kill_processes(&mut self, signal: Signal) -> Result<usize> {
        let mut count = 0;
        for running in self.children.values() {
            if running.exit.is_some() {
                continue;
            }
            let child = &running.child;
            let sent = if child.process_group().is_some() {
                child.signal_group(signal)
            } else {
                child.signal(signal)
            };
            match sent {
                Ok(()) => count += 1,
                // The group is empty but the leader is not reaped yet: it is exiting.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) => {}
                Err(source) => return Err(Error::Signal { pid: child.id(), source }),
            }
        }
        Ok(count)
    }

    /// Stops every child and waits for all of them: SIGTERM to their groups, SIGKILL to those
    /// still running after `grace`. Every completion handler runs before this returns.
    pub fn teardown(&mut self, grace: Duration) -> Result<()> {
        if self.children.is_empty() {
            return Ok(());
        }
        let (signal, mut stopping) = StopLadder::term_then_kill(grace).begin(Instant::now());
        self.kill_processes(signal)?;
        while !self.children.is_empty() {
            if let Escalation::Send(signal) = stopping.escalate(Instant::now()) {
                self.kill_processes(signal)?;
            }
            // After the KILL every child exits: wait for the exits, however long reaping takes.
            let timeout = (!stopping.is_last_step()).then(|| stopping.deadline().remaining());
            self.step_timeout(timeout)?;
        }
        Ok(())
    }
}

fn pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::os("create a pipe for a task", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_outcomes_are_typed() {
        let mut mgr = ProcessManager::new().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, script) in ["exit 0", "exit 7", "kill -TERM $$"].into_iter().enumerate() {
            let tx = tx.clone();
            let task = Task::command(procyard_core::Command::shell(script));
            mgr.create_process(task, move |o| tx.send((i, o)).unwrap()).unwrap();
        }
        while mgr.process_count() > 0 {
            mgr.step().unwrap();
        }
        let mut got: Vec<(usize, Outcome)> = rx.try_iter().collect();
        got.sort_by_key(|(i, _)| *i);
        assert_eq!(got[0].1, Outcome::Exited { code: 0 });
        assert_eq!(got[1].1, Outcome::Exited { code: 7 });
        assert_eq!(got[2].1, Outcome::Killed { signal: Signal::TERM });
    }

    #[test]
    fn closure_refused_in_threaded_process() {
        // libtest runs this on a thread of its own: the process has several threads.
        let mut mgr = ProcessManager::new().unwrap();
        let err = mgr.create_process(Task::closure(|_| Ok::<_, String>(1)), |_| {}).unwrap_err();
        assert!(matches!(err, Error::NotSingleThreaded { .. }), "{err}");
        assert_eq!(mgr.process_count(), 0);
    }
}
