//! The worker process: this same program started again by exec, single-threaded, which
//! forks one child per function job (or spawns the command) up to `max_workers` at once and
//! sends each outcome back as a frame.
//!
//! Its stdin is the request pipe and its stdout the result pipe; both are moved to private
//! descriptors at start, so a job that prints writes to stderr. It dies with the application:
//! parent-death signal (set by the spawner) and end of file on the request pipe (R3). It
//! installs no signal handler, so TERM and INT end it (R7).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use procyard_core::fork::ForkConfig;
use procyard_core::mio::unix::SourceFd;
use procyard_core::mio::{Events, Interest, Poll, Token};
use procyard_core::{Child, Deadline, Forked, FrameDecoder, Signal, StreamState};

use crate::job::{ErasedFn, registered};
use crate::wire::{
    self, Request, Spec, TAG_ERROR, TAG_VALUE, WireError, decode_report, encode_report,
    encode_result, error_body,
};

mod process;

pub(crate) use process::chain;
use process::{
    PIPE_ATOMIC, PIPELINE_BYTES, PIPELINE_DEPTH, drain, frame, job_message, outcome, pipelined_len,
    raw, read_small, spawn_command, write_all,
};

/// Set (to the application's pid) in the worker's environment.
pub(crate) const ENV_WORKER: &str = "PROCYARD_RESULTWORKER_PARENT";
/// The worker's `max_workers`.
pub(crate) const ENV_MAX_WORKERS: &str = "PROCYARD_RESULTWORKER_MAX_WORKERS";
/// `1` when job children are reused (see `Config::reuse_processes`).
pub(crate) const ENV_REUSE: &str = "PROCYARD_RESULTWORKER_REUSE";

/// How long a job gets between TERM and KILL during a stop.
const TERM_GRACE: Duration = Duration::from_millis(500);

const IN: Token = Token(0);
const OUT: Token = Token(1);
const FIRST_JOB: usize = 2;

/// `Some(max_workers)` when this process was started as a worker by its parent.
pub(crate) fn worker_mode() -> Option<usize> {
    let parent = std::env::var(ENV_WORKER).ok()?;
    let ppid = procyard_core::Pid::parent()?;
    if parent.trim() != ppid.as_raw().to_string() {
        return None;
    }
    let max = std::env::var(ENV_MAX_WORKERS).ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    Some(usize::max(max, 1))
}

/// Runs the worker until it is stopped or its parent goes away; returns the exit code.
pub(crate) fn run(max_workers: usize) -> i32 {
    match Worker::new(max_workers).and_then(|mut w| w.run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("procyard-resultworker: worker failed: {e}");
            1
        }
    }
}

enum Kind {
    Function,
    Command,
}

struct Running {
    key: u64,
    kind: Kind,
    child: Child,
    pipe: Option<OwnedFd>,
    /// The write end of a function child's job pipe, kept to reuse the child.
    job_pipe: Option<OwnedFd>,
    buf: Vec<u8>,
    timeout: Option<Duration>,
    deadline: Option<Deadline>,
    timed_out: bool,
    stopped: bool,
    /// The outcome was already sent (a complete report arrived before the exit).
    sent: bool,
    /// Reuse mode: the job written into the child's pipe behind the current one.
    next: VecDeque<Queued>,
    /// Bytes of the jobs in `next` (bounded so that writing them never blocks for long).
    next_bytes: usize,
}

struct Queued {
    key: u64,
    spec: Spec,
    body: Vec<u8>,
    timeout: Option<Duration>,
}

struct Stopping {
    grace: Deadline,
    kill_at: Option<Deadline>,
    killed: bool,
}

struct Worker {
    poll: Poll,
    input: Option<std::fs::File>,
    decoder: FrameDecoder,
    output: Option<OwnedFd>,
    out_buf: Vec<u8>,
    out_pos: usize,
    queue: VecDeque<Queued>,
    running: HashMap<usize, Running>,
    next_id: usize,
    max_workers: usize,
    functions: HashMap<String, ErasedFn>,
    stopping: Option<Stopping>,
    input_closed: bool,
    /// Idle children waiting for a function job (at most one unless `reuse`).
    idle: Vec<Spare>,
    /// Children run function jobs one after another instead of exiting after one.
    reuse: bool,
}

/// An idle child forked ahead of time, waiting for one function job on `job`.
struct Spare {
    child: Child,
    job: OwnedFd,
    report: OwnedFd,
}

fn io_err(e: impl Into<io::Error>) -> io::Error {
    e.into()
}

/// Moves a standard descriptor to a private close-on-exec one.
fn take_std(fd: impl AsFd) -> io::Result<OwnedFd> {
    rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(io_err)
}

impl Worker {
    fn new(max_workers: usize) -> io::Result<Worker> {
        let input = take_std(io::stdin().as_fd())?;
        let output = take_std(io::stdout().as_fd())?;
        let null = std::fs::OpenOptions::new().read(true).open("/dev/null")?;
        rustix::stdio::dup2_stdin(&null).map_err(io_err)?;
        rustix::stdio::dup2_stdout(io::stderr().as_fd()).map_err(io_err)?;
        rustix::io::ioctl_fionbio(&input, true).map_err(io_err)?;
        rustix::io::ioctl_fionbio(&output, true).map_err(io_err)?;
        let poll = Poll::new()?;
        poll.registry().register(&mut SourceFd(&raw(&input)), IN, Interest::READABLE)?;
        poll.registry().register(&mut SourceFd(&raw(&output)), OUT, Interest::WRITABLE)?;
        Ok(Worker {
            poll,
            input: Some(std::fs::File::from(input)),
            decoder: FrameDecoder::new(),
            output: Some(output),
            out_buf: Vec::new(),
            out_pos: 0,
            queue: VecDeque::new(),
            running: HashMap::new(),
            next_id: 0,
            max_workers,
            functions: registered(),
            stopping: None,
            input_closed: false,
            idle: Vec::new(),
            reuse: std::env::var(ENV_REUSE).is_ok_and(|v| v == "1"),
        })
    }

    fn run(&mut self) -> io::Result<i32> {
        let mut events = Events::with_capacity(64);
        self.send(wire::READY_KEY, &encode_report(TAG_VALUE, b"\"ready\""));
        loop {
            // Results first: starting jobs may fork, which should not delay them.
            self.flush();
            self.start_queued();
            if self.stopping.is_some() && self.running.is_empty() && self.queue.is_empty() {
                self.flush_blocking();
                return Ok(0);
            }
            if self.output.is_none() || (self.input_closed && self.stopping.is_none()) {
                // The application is gone: nobody wants the results.
                self.kill_all(Signal::KILL);
                for (_, mut job) in self.running.drain() {
                    let _ = job.child.kill_and_reap();
                }
                return Ok(1);
            }
            self.flush();
            let timeout = Deadline::poll_timeout(self.deadlines());
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    IN => self.read_requests(),
                    OUT => self.flush(),
                    Token(t) => {
                        let id = (t - FIRST_JOB) / 2;
                        if (t - FIRST_JOB).is_multiple_of(2) {
                            self.finish(id);
                        } else {
                            self.read_job(id);
                        }
                    }
                }
            }
            self.handle_deadlines();
        }
    }

    fn deadlines(&self) -> Vec<Deadline> {
        let mut out: Vec<Deadline> = self
            .running
            .values()
            .filter(|j| !j.timed_out && !j.sent)
            .filter_map(|j| j.deadline)
            .collect();
        if let Some(s) = &self.stopping {
            match s.kill_at {
                None => out.push(s.grace),
                Some(k) if !s.killed => out.push(k),
                Some(_) => {}
            }
        }
        out
    }

    fn handle_deadlines(&mut self) {
        for job in self.running.values_mut() {
            if !job.timed_out && !job.sent && job.deadline.is_some_and(Deadline::is_expired) {
                job.timed_out = true;
                let _ = job.child.kill();
            }
        }
        let mut signal = None;
        if let Some(s) = &mut self.stopping {
            if s.kill_at.is_none() && s.grace.is_expired() {
                s.kill_at = Some(Deadline::after(TERM_GRACE));
                signal = Some(Signal::TERM);
            } else if !s.killed && s.kill_at.is_some_and(Deadline::is_expired) {
                s.killed = true;
                signal = Some(Signal::KILL);
            }
        }
        if let Some(signal) = signal {
            self.kill_all(signal);
        }
    }

    fn kill_all(&mut self, signal: Signal) {
        for job in self.running.values_mut() {
            job.stopped = true;
            let _ = job.child.signal_group(signal);
        }
    }

    fn read_requests(&mut self) {
        let Some(input) = self.input.as_mut() else { return };
        let state = read_small(input, &mut self.decoder);
        loop {
            match self.decoder.next_bytes() {
                Ok(Some(payload)) => self.request(&payload),
                Ok(None) => break,
                Err(e) => {
                    eprintln!("procyard-resultworker: bad request stream: {e}");
                    self.close_input();
                    return;
                }
            }
        }
        match wire::stream_state(state, &self.decoder) {
            Ok(StreamState::Open) => {}
            Ok(StreamState::Closed) => self.close_input(),
            Err(e) => {
                eprintln!("procyard-resultworker: bad request stream: {e}");
                self.close_input();
            }
        }
    }

    fn close_input(&mut self) {
        if let Some(input) = self.input.take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw(&input)));
        }
        self.input_closed = true;
    }

    fn request(&mut self, payload: &[u8]) {
        match wire::decode_request(payload) {
            Ok((Request::Run { key, spec, timeout_ms }, body)) => {
                let queued = Queued {
                    key,
                    spec,
                    body: body.to_vec(),
                    timeout: timeout_ms.map(Duration::from_millis),
                };
                if self.stopping.is_some() {
                    self.send_error(key, &WireError::Stopped);
                } else {
                    self.queue.push_back(queued);
                }
            }
            Ok((Request::Stop { grace_ms }, _)) => {
                if self.stopping.is_none() {
                    self.stopping = Some(Stopping {
                        grace: Deadline::after(Duration::from_millis(grace_ms)),
                        kill_at: None,
                        killed: false,
                    });
                    for queued in std::mem::take(&mut self.queue) {
                        self.send_error(queued.key, &WireError::Stopped);
                    }
                }
            }
            Err(reason) => eprintln!("procyard-resultworker: ignoring a bad request: {reason}"),
        }
    }

    fn start_queued(&mut self) {
        while self.stopping.is_none() && self.busy() < self.max_workers {
            let Some(job) = self.queue.pop_front() else { break };
            self.start(job);
        }
        self.pipeline();
        if self.stopping.is_some() {
            // Closing their job pipes lets idle children exit; dropping a Child reaps it.
            self.idle.clear();
        } else if self.idle.is_empty() && (self.busy() == 0 || !self.queue.is_empty()) {
            // Forked while idle (or when jobs wait), not while a lone job runs: the fork
            // would then delay forwarding that job's result.
            match self.fork_spare() {
                Ok(spare) => self.idle.push(spare),
                Err(e) => eprintln!("procyard-resultworker: no spare child: {e:?}"),
            }
        }
    }

    /// Jobs whose outcome is not known yet (a job that reported but has not exited yet no
    /// longer counts against `max_workers`).
    fn busy(&self) -> usize {
        self.running.values().filter(|j| !j.sent).count()
    }

    fn start(&mut self, job: Queued) {
        let key = job.key;
        let started = match &job.spec {
            Spec::Function { name } if !self.functions.contains_key(name) => {
                Err(WireError::UnknownFunction { name: name.clone() })
            }
            Spec::Function { name } => self
                .dispatch_function(name, &job.body)
                .map(|(c, p, j)| (c, p, Kind::Function, Some(j))),
            Spec::Command(spec) => spawn_command(spec).map(|(c, p)| (c, p, Kind::Command, None)),
        };
        let (mut child, pipe, kind, job_pipe) = match started {
            Ok(started) => started,
            Err(e) => return self.send_error(key, &e),
        };
        let id = self.next_id;
        self.next_id += 1;
        let pid_token = Token(FIRST_JOB + id * 2);
        let pipe_token = Token(FIRST_JOB + id * 2 + 1);
        let registry = self.poll.registry();
        let registered =
            registry.register(&mut child, pid_token, Interest::READABLE).and_then(|()| {
                rustix::io::ioctl_fionbio(&pipe, true).map_err(io_err)?;
                registry.register(&mut SourceFd(&raw(&pipe)), pipe_token, Interest::READABLE)
            });
        if let Err(e) = registered {
            let _ = child.kill_and_reap();
            let message = format!("unable to watch the job: {e}");
            return self.send_error(key, &WireError::Failed { message });
        }
        self.running.insert(
            id,
            Running {
                key,
                kind,
                child,
                pipe: Some(pipe),
                job_pipe,
                buf: Vec::new(),
                timeout: job.timeout,
                deadline: job.timeout.map(Deadline::after),
                timed_out: false,
                stopped: false,
                sent: false,
                next: VecDeque::new(),
                next_bytes: 0,
            },
        );
    }

    /// Sends a function job to the spare child (forking one if there is none, or if the spare
    /// died), which becomes the job's child.
    fn dispatch_function(
        &mut self,
        name: &str,
        body: &[u8],
    ) -> Result<(Child, OwnedFd, OwnedFd), WireError> {
        let message = job_message(name, body);
        if message.len() > procyard_core::MAX_FRAME {
            let reason = format!("job of {} bytes exceeds the frame limit", message.len());
            return Err(WireError::Malformed { reason });
        }
        let mut fresh = 0;
        while fresh < 2 {
            let spare = match self.idle.pop() {
                Some(spare) => spare,
                None => {
                    fresh += 1;
                    self.fork_spare()?
                }
            };
            let Spare { child, job, report } = spare;
            // Blocking (the child reads its job as it arrives).
            let mut file = std::fs::File::from(job);
            if wire::write_frame(&mut file, &message).is_ok() {
                return Ok((child, report, OwnedFd::from(file)));
            }
            // The idle child died (EPIPE): its Child is killed and reaped on drop; next one.
        }
        Err(WireError::Failed { message: "the job's process died before taking the job".into() })
    }

    /// Forks an idle child that waits for one function job, runs it, reports and exits.
    /// Forking ahead of time keeps the fork off the path of the next job.
    fn fork_spare(&mut self) -> Result<Spare, WireError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| WireError::Failed {
            message: format!("unable to {what}: {e}"),
        };
        let pipe = || {
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| failed("create a pipe", &e))
        };
        let (job_read, job_write) = pipe()?;
        let (report_read, report_write) = pipe()?;
        let config =
            ForkConfig { new_process_group: true, parent_death_signal: Some(Signal::KILL) };
        match procyard_core::fork(config) {
            Err(e) => Err(failed("fork", &e)),
            Ok(Forked::Parent(child)) => Ok(Spare { child, job: job_write, report: report_read }),
            Ok(Forked::Child) => {
                drop(job_write);
                drop(report_read);
                self.close_for_child();
                let mut input = std::fs::File::from(job_read);
                let mut output = std::fs::File::from(report_write);
                loop {
                    let message = match procyard_core::frame::read_frame_bytes(
                        &mut input,
                        procyard_core::MAX_FRAME,
                    ) {
                        Ok(Some(message)) => message,
                        // The worker closed the pipe without a job: it is stopping.
                        _ => procyard_core::exit_immediately(0),
                    };
                    let report = self.run_function(&message);
                    if wire::write_frame(&mut output, &report).is_err() {
                        procyard_core::exit_immediately(70);
                    }
                    if !self.reuse {
                        procyard_core::exit_immediately(0);
                    }
                }
            }
        }
    }

    /// In a job child: runs the function a job message names and returns the report.
    fn run_function(&self, message: &[u8]) -> Vec<u8> {
        let failed =
            |message: String| encode_report(TAG_ERROR, &error_body(&WireError::Failed { message }));
        let Some((len, rest)) = message.split_first_chunk::<4>() else {
            return failed("truncated job message".into());
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > rest.len() {
            return failed("truncated job message".into());
        }
        let (name, body) = rest.split_at(len);
        let name = String::from_utf8_lossy(name);
        let Some(f) = self.functions.get(name.as_ref()) else {
            let error = WireError::UnknownFunction { name: name.into_owned() };
            return encode_report(TAG_ERROR, &error_body(&error));
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(body))) {
            Ok(Ok(value)) => encode_report(TAG_VALUE, &value),
            Ok(Err(message)) => failed(message),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string payload".into());
                failed(format!("panicked: {what}"))
            }
        }
    }

    /// In a forked job child: closes the worker's descriptors (pipes of the application and of
    /// sibling jobs) without signalling anything.
    fn close_for_child(&mut self) {
        self.input = None;
        self.output = None;
        for spare in self.idle.drain(..) {
            spare.child.detach();
        }
        for (_, job) in self.running.drain() {
            drop(job.pipe);
            job.child.detach();
        }
    }

    /// Reads a job's pipe; a function's complete report is sent at once, before its exit.
    fn read_job(&mut self, id: usize) {
        let Some(job) = self.running.get_mut(&id) else { return };
        drain(job);
        self.take_reports(id, true);
    }

    /// Sends every complete report buffered for a function child, in order: the current job's,
    /// then (in reuse mode) the pipelined next job's, which becomes current. A child left
    /// without a job is recycled if `recycle` allows, or told to exit (end of its job pipe).
    fn take_reports(&mut self, id: usize, recycle: bool) {
        loop {
            let Some(job) = self.running.get_mut(&id) else { return };
            if job.sent || job.timed_out || job.stopped || !matches!(job.kind, Kind::Function) {
                return;
            }
            // Take a report only once its whole frame is there (the header gives its length).
            let Some(len) = job.buf.first_chunk::<4>().map(|l| u32::from_be_bytes(*l) as usize)
            else {
                return;
            };
            if job.buf.len() < 4 + len {
                return;
            }
            let rest = job.buf.split_off(4 + len);
            let report = std::mem::replace(&mut job.buf, rest).split_off(4);
            let key = job.key;
            if decode_report(&report).is_none() {
                // The child is in no state to trust: its exit settles what it still holds.
                job.sent = true;
                let _ = job.child.kill();
                let reason = "the job's process sent an undecodable report".to_owned();
                self.send_error(key, &WireError::Malformed { reason });
                return;
            }
            if let Some(next) = job.next.pop_front() {
                job.next_bytes = job.next_bytes.saturating_sub(pipelined_len(&next));
                job.key = next.key;
                job.timeout = next.timeout;
                job.deadline = next.timeout.map(Deadline::after);
                self.send(key, &report);
                continue;
            }
            job.sent = true;
            job.buf = Vec::new();
            self.send(key, &report);
            if recycle && self.reuse && self.stopping.is_none() {
                self.recycle(id);
            } else if let Some(job) = self.running.get_mut(&id) {
                // End of its job pipe: a reusable child exits instead of waiting for more.
                job.job_pipe = None;
            }
            return;
        }
    }

    /// In reuse mode, writes the next queued function job into the pipe of a child that is
    /// running one, so it starts without waiting for the worker (small jobs only: the write
    /// must fit in the pipe without blocking while the child works).
    fn pipeline(&mut self) {
        if !self.reuse || self.stopping.is_some() || self.queue.is_empty() {
            return;
        }
        let ids: Vec<usize> = self
            .running
            .iter()
            .filter(|(_, j)| {
                matches!(j.kind, Kind::Function)
                    && j.job_pipe.is_some()
                    && !(j.sent || j.timed_out || j.stopped)
            })
            .map(|(id, _)| *id)
            .collect();
        // One more job per child per round, so they share the queue evenly.
        for depth in 0..PIPELINE_DEPTH {
            for &id in &ids {
                let Some(front) = self.queue.front() else { return };
                let Spec::Function { name } = &front.spec else { return };
                let len = pipelined_len(front);
                if !self.functions.contains_key(name) || len > PIPE_ATOMIC {
                    return;
                }
                let Some(job) = self.running.get_mut(&id) else { continue };
                if job.next.len() != depth || job.next_bytes + len > PIPELINE_BYTES {
                    continue;
                }
                let Some(next) = self.queue.pop_front() else { return };
                let Spec::Function { name } = &next.spec else { return };
                let frame = frame(&job_message(name, &next.body));
                if job.job_pipe.as_ref().is_some_and(|pipe| write_all(pipe, &frame)) {
                    job.next_bytes += len;
                    job.next.push_back(next);
                } else {
                    self.queue.push_front(next);
                    return;
                }
            }
        }
    }

    /// Puts a function job's child back among the idle ones, for the next job.
    fn recycle(&mut self, id: usize) {
        let Some(mut job) = self.running.remove(&id) else { return };
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut job.child);
        let (Some(pipe), Some(job_pipe)) = (job.pipe.take(), job.job_pipe.take()) else {
            return;
        };
        let _ = registry.deregister(&mut SourceFd(&raw(&pipe)));
        if self.idle.len() < self.max_workers {
            self.idle.push(Spare { child: job.child, job: job_pipe, report: pipe });
        }
    }

    fn finish(&mut self, id: usize) {
        let Some(job) = self.running.get_mut(&id) else { return };
        let exit = match job.child.try_wait() {
            Ok(Some(exit)) => exit,
            Ok(None) => return,
            Err(e) => {
                eprintln!("procyard-resultworker: {e}");
                return;
            }
        };
        drain(job);
        self.take_reports(id, false);
        let Some(mut job) = self.running.remove(&id) else { return };
        // Written to the child but never started: run them elsewhere (or not, if stopping).
        while let Some(next) = job.next.pop_back() {
            if self.stopping.is_some() {
                self.send_error(next.key, &WireError::Stopped);
            } else {
                self.queue.push_front(next);
            }
        }
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut job.child);
        if let Some(pipe) = job.pipe.take() {
            let _ = registry.deregister(&mut SourceFd(&raw(&pipe)));
        }
        if !job.sent {
            let report = outcome(&mut job, exit);
            self.send(job.key, &report);
        }
    }

    fn send_error(&mut self, key: u64, error: &WireError) {
        self.send(key, &encode_report(TAG_ERROR, &error_body(error)));
    }

    fn send(&mut self, key: u64, report: &[u8]) {
        let payload = encode_result(key, report);
        if payload.len() > procyard_core::MAX_FRAME {
            let reason = format!("result of {} bytes exceeds the frame limit", payload.len());
            return self.send_error(key, &WireError::Malformed { reason });
        }
        self.out_buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        self.out_buf.extend_from_slice(&payload);
        // Flushed once per pass of the event loop: a burst of results goes out in one write.
    }

    /// Writes what the pipe takes now; the rest waits for the next writable event.
    fn flush(&mut self) {
        let Some(output) = &self.output else { return };
        while self.out_pos < self.out_buf.len() {
            match rustix::io::write(output, &self.out_buf[self.out_pos..]) {
                Ok(n) => self.out_pos += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => break,
                Err(_) => {
                    self.output = None;
                    return;
                }
            }
        }
        if self.out_pos == self.out_buf.len() {
            self.out_buf.clear();
            self.out_pos = 0;
        } else if self.out_pos > 1 << 20 {
            self.out_buf.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Flushes everything before exiting, waiting for the pipe (at most a few seconds).
    fn flush_blocking(&mut self) {
        let deadline = Deadline::after(Duration::from_secs(5));
        while !self.out_buf.is_empty() && !deadline.is_expired() {
            self.flush();
            let Some(output) = &self.output else { return };
            if self.out_buf.is_empty() {
                return;
            }
            let mut fds = [rustix::event::PollFd::new(output, rustix::event::PollFlags::OUT)];
            let ts = rustix::event::Timespec { tv_sec: 0, tv_nsec: 100_000_000 };
            let _ = rustix::event::poll(&mut fds, Some(&ts));
        }
    }
}
