//! The worker process: this same program started again by exec, single-threaded, which
//! forks one child per function job (or spawns the command) up to `max_workers` at once and
//! sends each outcome back as a frame.
//!
//! Its stdin is the request pipe and its stdout the result pipe; both are moved to private
//! descriptors at start, so a job that prints writes to stderr. Function children report
//! through one pipe they all share (see `write_report`); commands through their stdout. It
//! dies with the application: parent-death signal (set by the spawner) and end of file on the
//! request pipe (R3). It installs no signal handler, so TERM and INT end it (R7).

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
    self, CommandSpec, Request, Spec, TAG_ERROR, TAG_VALUE, WireError, encode_report, error_body,
    is_report, push_result,
};

mod mode;
mod process;

pub(crate) use mode::{EXIT_INIT_NOT_CALLED, refuse_start_in_worker_mode, worker_mode};
pub(crate) use process::chain;
use process::{
    PIPE_ATOMIC, PIPELINE_BYTES, PIPELINE_DEPTH, SCRATCH, drain, frame, function_name, job_message,
    outcome, pipelined_len, raw, read_small, spawn_command, write_all, write_report,
};

/// Set (to the application's pid) in the worker's environment.
pub(crate) const ENV_WORKER: &str = "PROCYARD_RESULTWORKER_PARENT";
/// The worker's `max_workers`.
pub(crate) const ENV_MAX_WORKERS: &str = "PROCYARD_RESULTWORKER_MAX_WORKERS";
/// `1` when job children are reused (see `Config::reuse_processes`).
pub(crate) const ENV_REUSE: &str = "PROCYARD_RESULTWORKER_REUSE";

/// Buffers a large job grew beyond this are freed once empty: every resident page of the
/// worker costs each fork (its page table entries are copied into the child's).
const KEEP_BUFFER: usize = 64 * 1024;

/// How long a job gets between TERM and KILL during a stop.
const TERM_GRACE: Duration = Duration::from_millis(500);

const IN: Token = Token(0);
const OUT: Token = Token(1);
const REPORTS: Token = Token(2);
const FIRST_JOB: usize = 3;

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

/// A job waiting for a free slot. Kept small (48 bytes and one allocation): a burst of
/// submissions can queue thousands, and every page the queue occupies is copied into the page
/// tables of each child forked meanwhile.
struct Queued {
    key: u64,
    work: Work,
    timeout: Option<Duration>,
}

enum Work {
    /// A function job's message as its child reads it (see [`job_message`]).
    Function(Box<[u8]>),
    Command(Box<CommandSpec>),
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
    /// The one buffer pipes are read through (see [`SCRATCH`]).
    scratch: Vec<u8>,
    /// The pipe every function child writes its reports into, as chunks of at most
    /// `PIPE_BUF` bytes tagged with the child's id (see [`write_report`]): one pipe for all,
    /// not one more pipe to create, watch and close per job.
    reports: Option<OwnedFd>,
    /// Its write end, which the children inherit.
    reports_write: OwnedFd,
    /// Chunks read from `reports`, the last one possibly incomplete.
    report_chunks: Vec<u8>,
    /// Ids of the children whose chunks the last read of `reports` brought (reused).
    touched: Vec<usize>,
}

/// An idle child forked ahead of time, waiting for one function job on `job`.
struct Spare {
    /// Its id (which tags its reports).
    id: usize,
    child: Child,
    job: OwnedFd,
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
        let (reports, reports_write) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(io_err)?;
        // The read end only: the children's writes block (a write of up to PIPE_BUF bytes is
        // then all or nothing, never split or mixed with another child's).
        rustix::io::ioctl_fionbio(&reports, true).map_err(io_err)?;
        let poll = Poll::new()?;
        poll.registry().register(&mut SourceFd(&raw(&input)), IN, Interest::READABLE)?;
        poll.registry().register(&mut SourceFd(&raw(&output)), OUT, Interest::WRITABLE)?;
        poll.registry().register(&mut SourceFd(&raw(&reports)), REPORTS, Interest::READABLE)?;
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
            scratch: vec![0; SCRATCH],
            reports: Some(reports),
            reports_write,
            report_chunks: Vec::new(),
            touched: Vec::new(),
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
                    REPORTS => self.read_reports(None),
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
        let state = read_small(input, &mut self.decoder, &mut self.scratch);
        let mut large = false;
        loop {
            match self.decoder.next_bytes() {
                Ok(Some(payload)) => {
                    large |= payload.len() > KEEP_BUFFER;
                    self.request(&payload);
                }
                Ok(None) => {
                    if large && self.decoder.buffered() == 0 {
                        self.decoder = FrameDecoder::new();
                    }
                    break;
                }
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
                let work = match spec {
                    Spec::Function { name } => {
                        Work::Function(job_message(&name, body).into_boxed_slice())
                    }
                    Spec::Command(spec) => Work::Command(Box::new(spec)),
                };
                let queued = Queued { key, work, timeout: timeout_ms.map(Duration::from_millis) };
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
        } else if self.idle.is_empty()
            && (self.busy() == 0 || (self.reuse && !self.queue.is_empty()))
        {
            // Forked while idle, not while a lone job runs: the fork would then delay
            // forwarding that job's result. Nor while jobs wait for a free slot (unless
            // children are reused): each is then forked with its job, see `fork_job`.
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
        let started = match &job.work {
            Work::Function(message) if !self.is_registered(message) => {
                let name = String::from_utf8_lossy(function_name(message)).into_owned();
                Err(WireError::UnknownFunction { name })
            }
            Work::Function(message) => {
                self.dispatch_function(message).map(|(id, c, j)| (id, c, None, Kind::Function, j))
            }
            Work::Command(spec) => {
                spawn_command(spec).map(|(c, p)| (self.new_id(), c, Some(p), Kind::Command, None))
            }
        };
        let (id, mut child, pipe, kind, job_pipe) = match started {
            Ok(started) => started,
            Err(e) => return self.send_error(key, &e),
        };
        let pid_token = Token(FIRST_JOB + id * 2);
        let pipe_token = Token(FIRST_JOB + id * 2 + 1);
        let registry = self.poll.registry();
        let registered =
            registry.register(&mut child, pid_token, Interest::READABLE).and_then(|()| {
                let Some(pipe) = &pipe else { return Ok(()) };
                rustix::io::ioctl_fionbio(pipe, true).map_err(io_err)?;
                registry.register(&mut SourceFd(&raw(pipe)), pipe_token, Interest::READABLE)
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
                pipe,
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

    /// Sends a function job to the spare child, which becomes the job's child; without a
    /// spare (or if it died), forks a child for the job (which then has no job pipe), or in
    /// reuse mode a spare to send it to.
    fn dispatch_function(
        &mut self,
        message: &[u8],
    ) -> Result<(usize, Child, Option<OwnedFd>), WireError> {
        if message.len() > procyard_core::MAX_FRAME {
            let reason = format!("job of {} bytes exceeds the frame limit", message.len());
            return Err(WireError::Malformed { reason });
        }
        let mut fresh = 0;
        while fresh < 2 {
            let spare = match self.idle.pop() {
                Some(spare) => spare,
                None if !self.reuse => {
                    let (id, child) = self.fork_job(message)?;
                    return Ok((id, child, None));
                }
                None => {
                    fresh += 1;
                    self.fork_spare()?
                }
            };
            let Spare { id, child, job } = spare;
            // Blocking (the child reads its job as it arrives).
            let mut file = std::fs::File::from(job);
            if wire::write_frame(&mut file, message).is_ok() {
                return Ok((id, child, Some(OwnedFd::from(file))));
            }
            // The idle child died (EPIPE): its Child is killed and reaped on drop; next one.
        }
        Err(WireError::Failed { message: "the job's process died before taking the job".into() })
    }

    /// Forks a child that runs the job `message` (it has it in memory: no job pipe, and it
    /// starts at once), reports and exits. Used when no spare is waiting: when jobs queue up,
    /// a spare would only add its pipe and a wake-up to every job.
    fn fork_job(&mut self, message: &[u8]) -> Result<(usize, Child), WireError> {
        let id = self.new_id();
        let config =
            ForkConfig { new_process_group: true, parent_death_signal: Some(Signal::KILL) };
        match procyard_core::fork(config) {
            Err(e) => Err(WireError::Failed { message: format!("unable to fork: {e}") }),
            Ok(Forked::Parent(child)) => Ok((id, child)),
            Ok(Forked::Child) => {
                self.close_for_child();
                let report = self.run_function(message);
                let code = if write_report(&self.reports_write, id, &report) { 0 } else { 70 };
                procyard_core::exit_immediately(code)
            }
        }
    }

    /// A new job (or spare child) id.
    fn new_id(&mut self) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        id
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
        let id = self.new_id();
        let config =
            ForkConfig { new_process_group: true, parent_death_signal: Some(Signal::KILL) };
        match procyard_core::fork(config) {
            Err(e) => Err(failed("fork", &e)),
            Ok(Forked::Parent(child)) => Ok(Spare { id, child, job: job_write }),
            Ok(Forked::Child) => {
                drop(job_write);
                self.close_for_child();
                let mut input = std::fs::File::from(job_read);
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
                    if !write_report(&self.reports_write, id, &report) {
                        procyard_core::exit_immediately(70);
                    }
                    if !self.reuse {
                        procyard_core::exit_immediately(0);
                    }
                }
            }
        }
    }

    /// Whether the function a job message names is registered.
    fn is_registered(&self, message: &[u8]) -> bool {
        self.functions.contains_key(String::from_utf8_lossy(function_name(message)).as_ref())
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
        self.reports = None;
        for spare in self.idle.drain(..) {
            spare.child.detach();
        }
        for (_, job) in self.running.drain() {
            drop(job.pipe);
            job.child.detach();
        }
    }

    /// Reads the function children's shared report pipe and sends each complete report at
    /// once, before its child exits. The child `exited` is not recycled.
    fn read_reports(&mut self, exited: Option<usize>) {
        let Some(reports) = &self.reports else { return };
        loop {
            match rustix::io::read(reports, &mut self.scratch[..]) {
                Ok(0) => break,
                Ok(n) => self.report_chunks.extend_from_slice(&self.scratch[..n]),
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => break,
            }
        }
        let mut touched = std::mem::take(&mut self.touched);
        let mut pos = 0;
        while let Some(header) = self.report_chunks.get(pos..pos + 12) {
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if !(8..=PIPE_ATOMIC - 4).contains(&len) {
                // Only this crate's code writes there, whole chunks at a time.
                eprintln!("procyard-resultworker: corrupt report chunk of {len} bytes");
                pos = self.report_chunks.len();
                break;
            }
            if self.report_chunks.len() < pos + 4 + len {
                break;
            }
            let mut id = [0u8; 8];
            id.copy_from_slice(&header[4..12]);
            let id = u64::from_be_bytes(id) as usize;
            if let Some(job) = self.running.get_mut(&id) {
                job.buf.extend_from_slice(&self.report_chunks[pos + 12..pos + 4 + len]);
                if touched.last() != Some(&id) {
                    touched.push(id);
                }
            }
            pos += 4 + len;
        }
        self.report_chunks.drain(..pos);
        if self.report_chunks.is_empty() && self.report_chunks.capacity() > KEEP_BUFFER {
            self.report_chunks = Vec::new();
        }
        for &id in &touched {
            self.take_reports(id, Some(id) != exited);
        }
        touched.clear();
        self.touched = touched;
    }

    /// Reads a command's pipe.
    fn read_job(&mut self, id: usize) {
        let Some(job) = self.running.get_mut(&id) else { return };
        drain(job, &mut self.scratch);
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
            let key = job.key;
            let report = &job.buf[4..4 + len];
            if !is_report(report) {
                // The child is in no state to trust: its exit settles what it still holds.
                job.sent = true;
                let _ = job.child.kill();
                let reason = "the job's process sent an undecodable report".to_owned();
                self.send_error(key, &WireError::Malformed { reason });
                return;
            }
            // Straight from the child's buffer into the output (no copy of its own).
            let fits = push_result(&mut self.out_buf, key, report);
            job.buf.drain(..4 + len);
            if !fits {
                self.send_too_large(key, len);
            }
            let Some(job) = self.running.get_mut(&id) else { return };
            if let Some(next) = job.next.pop_front() {
                job.next_bytes = job.next_bytes.saturating_sub(pipelined_len(&next));
                job.key = next.key;
                job.timeout = next.timeout;
                job.deadline = next.timeout.map(Deadline::after);
                continue;
            }
            job.sent = true;
            job.buf = Vec::new();
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
                let Work::Function(message) = &front.work else { return };
                let len = pipelined_len(front);
                if !self.is_registered(message) || len > PIPE_ATOMIC {
                    return;
                }
                let Some(job) = self.running.get_mut(&id) else { continue };
                if job.next.len() != depth || job.next_bytes + len > PIPELINE_BYTES {
                    continue;
                }
                let Some(next) = self.queue.pop_front() else { return };
                let Work::Function(message) = &next.work else { return };
                let frame = frame(message);
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
        let Some(job_pipe) = job.job_pipe.take() else { return };
        if self.idle.len() < self.max_workers {
            self.idle.push(Spare { id, child: job.child, job: job_pipe });
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
        if matches!(job.kind, Kind::Function) {
            // Everything it wrote is in the pipe by now.
            self.read_reports(Some(id));
        } else {
            drain(job, &mut self.scratch);
        }
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

    /// Queues the result frame of `key` (flushed once per pass of the event loop: a burst of
    /// results goes out in one write).
    fn send(&mut self, key: u64, report: &[u8]) {
        if !push_result(&mut self.out_buf, key, report) {
            self.send_too_large(key, report.len());
        }
    }

    fn send_too_large(&mut self, key: u64, report_len: usize) {
        let reason = format!("result of {} bytes exceeds the frame limit", 8 + report_len);
        self.send_error(key, &WireError::Malformed { reason });
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
            if self.out_buf.capacity() > KEEP_BUFFER {
                self.out_buf = Vec::new();
            }
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
