//! The worker's I/O shell: one `mio` loop over the request pipe, the result pipe, the shared
//! report pipe and each job child's pidfd (and a command's stdout). It turns what it reads
//! into [`Event`]s for the [`State`], and performs the [`Action`]s the state answers with.
//! Starting jobs (spare children, forks, spawns) lives in `children.rs`.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::time::Instant;

use procyard_core::event::retry_interrupted;
use procyard_core::mio::unix::SourceFd;
use procyard_core::mio::{Events, Poll, Token};
use procyard_core::{Child, Deadline, FrameDecoder, Report, Signal, StreamState};

use super::process::{drain, raw, write_all};
use super::state::{Action, ChildId, Event, Kind, Queued, State, Verdict, Work};
use super::zygote::Zygote;
use crate::job::ErasedFn;
use crate::wire::{
    self, Request, Spec, TAG_ERROR, TAG_VALUE, WireError, encode_report, error_body, job_message,
    push_result,
};

/// Buffers a large job grew beyond this are freed once empty: every resident page of the
/// worker costs each fork (its page table entries are copied into the child's).
pub(super) const KEEP_BUFFER: usize = 64 * 1024;

pub(super) const IN: Token = Token(0);
pub(super) const OUT: Token = Token(1);
pub(super) const REPORTS: Token = Token(2);
/// The zygote's births pipe (see `zygote`).
pub(super) const BIRTHS: Token = Token(3);
/// The wake pipe of lazy notes (see `Shell::take_notes`).
pub(super) const WAKE: Token = Token(4);
pub(super) const FIRST_JOB: usize = 5;
/// Tokens per job child: its pidfd, then a command's stdout and stderr.
pub(super) const TOKENS_PER_JOB: usize = 3;

/// A job's child as the shell holds it.
pub(super) struct JobChild {
    /// `None` until the zygote that forks it says it was born (see `zygote`).
    pub(super) child: Option<Child>,
    /// A job ordered from the zygote and not born yet: its message (forked here instead if
    /// the zygote cannot), and the signal for its group once born (a timeout, a stop).
    pub(super) unborn: Option<Box<[u8]>>,
    pub(super) pending: Option<Signal>,
    pub(super) kind: Kind,
    /// A command's stdout.
    pub(super) pipe: Option<OwnedFd>,
    /// The write end of a function child's job pipe, kept to reuse the child.
    pub(super) job_pipe: Option<OwnedFd>,
    /// Function jobs sent to the child over its life (its current one and those written
    /// ahead included).
    pub(super) served: usize,
    /// Reports taken from it (a function child): once it reported every job it was sent,
    /// its exit needs no further read of the report pipe.
    pub(super) reported: usize,
    /// What it wrote that is not a complete report yet (a command: its stdout).
    pub(super) buf: Vec<u8>,
    /// A command's stderr.
    pub(super) err_pipe: Option<OwnedFd>,
    /// What a command wrote to stderr.
    pub(super) err_buf: Vec<u8>,
    /// A command wrote more than `OUTPUT_LIMIT` bytes to a stream (the rest was dropped).
    pub(super) truncated: bool,
}

/// An idle child forked ahead of time, waiting for a function job on `job`.
pub(super) struct Spare {
    /// Its id (which tags its reports).
    pub(super) id: ChildId,
    pub(super) child: Child,
    pub(super) job: OwnedFd,
    /// Function jobs it ran before (a recycled child).
    pub(super) served: usize,
    /// Its pidfd is still registered with the poll (a recycled child: it keeps its token, so
    /// reusing it costs no `epoll_ctl`).
    pub(super) watched: bool,
}

pub(super) struct Shell {
    pub(super) state: State,
    pub(super) poll: Poll,
    pub(super) input: Option<File>,
    pub(super) decoder: FrameDecoder,
    pub(super) output: Option<OwnedFd>,
    pub(super) out_buf: Vec<u8>,
    pub(super) out_pos: usize,
    pub(super) children: HashMap<ChildId, JobChild>,
    /// Idle children waiting for a function job (at most one unless `reuse`).
    pub(super) idle: Vec<Spare>,
    pub(super) next_id: ChildId,
    pub(super) max_workers: usize,
    pub(super) functions: HashMap<String, ErasedFn>,
    /// Children run function jobs one after another instead of exiting after one.
    pub(super) reuse: bool,
    /// Function jobs one reused child runs before it is retired (`usize::MAX`: no limit).
    pub(super) max_jobs: usize,
    /// Function jobs are started by exec (the worker has other threads: no fork).
    pub(super) exec_jobs: bool,
    /// The one buffer pipes are read through (see `SCRATCH`).
    pub(super) scratch: Vec<u8>,
    /// The pipe every function child writes its reports into, as chunks of at most
    /// `PIPE_BUF` bytes tagged with the child's id (see `write_report`): one pipe for all,
    /// not one more pipe to create, watch and close per job.
    pub(super) reports: Option<OwnedFd>,
    /// Its write end, which the children inherit.
    pub(super) reports_write: OwnedFd,
    /// The write end of the direct pipe to the application (non-blocking), on which children
    /// send small results straight to it (see `Shell::report`); `None` if the worker got none.
    pub(super) direct: Option<OwnedFd>,
    /// With lazy notes (reuse mode with a direct pipe, see `Shell::take_notes`): the wake
    /// pipe's read end, watched, and its write end (non-blocking), which children inherit.
    pub(super) wake: Option<OwnedFd>,
    pub(super) wake_write: Option<OwnedFd>,
    /// Whether the report pipe is registered with the poll now (always, without lazy notes).
    pub(super) reports_watched: bool,
    /// Full reports announced on the wake pipe and not taken yet: the report pipe is watched
    /// until they are.
    pub(super) full_reports: usize,
    /// Chunks read from `reports`, the last one possibly incomplete.
    pub(super) report_chunks: Vec<u8>,
    /// Ids of the children whose chunks the last read of `reports` brought (reused).
    pub(super) touched: Vec<ChildId>,
    /// The process that forks function jobs' children with a fork per job (see `zygote`).
    pub(super) zygote: Option<Zygote>,
    /// Births read from the zygote (reused).
    pub(super) births: Vec<(ChildId, i32)>,
    /// The state's answers, reused from step to step.
    actions: Vec<Action>,
}

impl Shell {
    #[allow(clippy::too_many_arguments, reason = "called once, from `Worker::new`")]
    pub(super) fn new(
        poll: Poll,
        input: File,
        output: OwnedFd,
        reports: OwnedFd,
        (reports_write, direct, wake): (OwnedFd, Option<OwnedFd>, Option<(OwnedFd, OwnedFd)>),
        max_workers: usize,
        (reuse, max_jobs): (bool, usize),
        (exec_jobs, zygote): (bool, Option<Zygote>),
        functions: HashMap<String, ErasedFn>,
    ) -> Shell {
        let names = functions.keys().cloned().collect();
        let (wake, wake_write) = wake.map_or((None, None), |(r, w)| (Some(r), Some(w)));
        Shell {
            state: State::new(max_workers, reuse, names),
            poll,
            input: Some(input),
            decoder: FrameDecoder::new(),
            output: Some(output),
            out_buf: Vec::new(),
            out_pos: 0,
            children: HashMap::new(),
            idle: Vec::new(),
            next_id: 0,
            max_workers,
            functions,
            reuse,
            max_jobs: max_jobs.max(1),
            exec_jobs,
            scratch: vec![0; super::process::SCRATCH],
            reports: Some(reports),
            reports_write,
            direct,
            wake,
            wake_write,
            reports_watched: true,
            full_reports: 0,
            report_chunks: Vec::new(),
            touched: Vec::new(),
            zygote,
            births: Vec::new(),
            actions: Vec::new(),
        }
    }

    pub(super) fn run(&mut self) -> io::Result<i32> {
        let mut events = Events::with_capacity(64);
        self.send(wire::READY_KEY, &encode_report(TAG_VALUE, b"\"ready\""));
        loop {
            // Results first: starting jobs may fork, which should not delay them.
            self.flush();
            self.take_notes();
            self.step(Event::Admit);
            self.tend_spares();
            match self.state.verdict() {
                Some(Verdict::Done) => {
                    self.flush_blocking();
                    return Ok(0);
                }
                Some(Verdict::Abandoned) => {
                    // The application is gone: nobody wants the results.
                    for (_, job) in self.children.drain() {
                        if let Some(mut child) = job.child {
                            let _ = child.kill_and_reap();
                        }
                    }
                    return Ok(1);
                }
                None => {}
            }
            self.flush();
            self.watch_reports()?;
            let deadline = self.state.next_deadline().map(Deadline::at);
            let timeout = Deadline::poll_timeout(deadline);
            procyard_core::event::poll(&mut self.poll, &mut events, timeout)?;
            for event in events.iter() {
                match event.token() {
                    IN => self.read_requests(),
                    OUT => self.flush(),
                    REPORTS => self.read_reports(None),
                    BIRTHS => self.read_births(),
                    WAKE => {
                        // One byte per full report announced (see `Shell::report`).
                        while let Some(wake) = &self.wake
                            && let Ok(n @ 1..) = rustix::io::read(wake, &mut self.scratch[..])
                        {
                            self.full_reports += n;
                        }
                        self.read_reports(None);
                    }
                    Token(t) => {
                        let id = (t - FIRST_JOB) / TOKENS_PER_JOB;
                        if (t - FIRST_JOB).is_multiple_of(TOKENS_PER_JOB) {
                            self.finish(id);
                        } else if let Some(job) = self.children.get_mut(&id) {
                            drain(job, &mut self.scratch);
                        }
                    }
                }
            }
            self.step(Event::Tick);
        }
    }

    /// Hands `event` to the state and performs its answer.
    pub(super) fn step(&mut self, event: Event) {
        let mut actions = std::mem::take(&mut self.actions);
        self.state.step(event, Instant::now(), &mut actions);
        for action in actions.drain(..) {
            self.perform(action);
        }
        if self.actions.capacity() < actions.capacity() {
            self.actions = actions;
        }
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Send { key, report } => self.send(key, &report),
            Action::Start(job) => {
                let (key, timeout) = (job.key, job.timeout);
                let event = match self.start(job) {
                    Ok((id, kind, further)) => Event::Started { key, id, kind, timeout, further },
                    Err(error) => Event::StartFailed { key, error },
                };
                self.step(event);
            }
            Action::WriteAhead { id, message } => {
                let written = match self.children.get_mut(&id) {
                    Some(JobChild { job_pipe: Some(pipe), served, .. }) => {
                        let written = wire::frame(&message).is_some_and(|f| write_all(pipe, &f));
                        *served += usize::from(written);
                        written
                    }
                    _ => false,
                };
                if !written {
                    self.step(Event::WriteAheadFailed { id });
                }
            }
            Action::Kill { id } => {
                if let Some(job) = self.children.get_mut(&id) {
                    match &job.child {
                        Some(child) => drop(child.kill()),
                        None => job.pending = Some(Signal::KILL),
                    }
                }
            }
            Action::SignalAll(signal) => self.signal_all(signal),
            Action::Recycle { id } => self.recycle(id),
            Action::Retire { id } => {
                // End of its job pipe: a reusable child exits instead of waiting for more.
                if let Some(job) = self.children.get_mut(&id) {
                    job.job_pipe = None;
                }
            }
        }
    }

    fn signal_all(&mut self, signal: Signal) {
        for job in self.children.values_mut() {
            match &job.child {
                Some(child) => drop(child.signal_group(signal)),
                // A KILL already due stays due.
                None if job.pending != Some(Signal::KILL) => job.pending = Some(signal),
                None => {}
            }
        }
    }

    fn read_requests(&mut self) {
        let Some(input) = self.input.as_mut() else { return };
        let state = wire::read_pipe("read requests", input, &mut self.decoder, &mut self.scratch);
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
                Err(e) => return self.close_input(&e),
            }
        }
        match wire::stream_state(state, &self.decoder) {
            Ok(StreamState::Open) => {}
            Ok(StreamState::Closed) => {
                self.input = None;
                self.step(Event::InputClosed);
            }
            Err(e) => self.close_input(&e),
        }
    }

    /// A corrupt request stream: the worker takes no more requests (and exits).
    fn close_input(&mut self, error: &procyard_core::Error) {
        tracing::warn!(error = %Report(error), "procyard-resultworker: bad request stream");
        if let Some(input) = self.input.take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw(&input)));
        }
        self.step(Event::InputClosed);
    }

    fn request(&mut self, payload: &[u8]) {
        let event = match wire::decode_request(payload) {
            Ok((Request::Run { key, spec, timeout_ms }, body)) => {
                let work = match spec {
                    Spec::Function { name } => {
                        Work::Function(job_message(key, &name, body).into_boxed_slice())
                    }
                    Spec::Command(spec) => Work::Command(Box::new(spec)),
                };
                let timeout = timeout_ms.map(std::time::Duration::from_millis);
                Event::Run(Queued { key, work, timeout })
            }
            Ok((Request::Stop { grace_ms }, _)) => {
                Event::Stop { grace: std::time::Duration::from_millis(grace_ms) }
            }
            Err(reason) => {
                tracing::warn!(%reason, "procyard-resultworker: ignoring a bad request");
                return;
            }
        };
        self.step(event);
    }

    pub(super) fn send_error(&mut self, key: u64, error: &WireError) {
        self.send(key, &encode_report(TAG_ERROR, &error_body(error)));
    }

    /// Queues the result frame of `key` (flushed once per pass of the event loop: a burst of
    /// results goes out in one write).
    fn send(&mut self, key: u64, report: &[u8]) {
        if !push_result(&mut self.out_buf, key, report) {
            let reason = format!("result of {} bytes exceeds the frame limit", 8 + report.len());
            self.send_error(key, &WireError::Malformed { reason });
        }
    }

    /// Writes what the pipe takes now; the rest waits for the next writable event.
    fn flush(&mut self) {
        let Some(output) = &self.output else { return };
        while self.out_pos < self.out_buf.len() {
            let pending = &self.out_buf[self.out_pos..];
            match retry_interrupted(|| rustix::io::write(output, pending).map_err(Into::into)) {
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.output = None;
                    self.step(Event::OutputClosed);
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
        let deadline = Deadline::after(std::time::Duration::from_secs(5));
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
