//! The shell's job children: starting a job (a spare child forked ahead of time, a child
//! forked with its job, or a spawned command), recycling and spares, the function children's
//! side (run the function, report), and reading their reports and exits back as events.

use std::fs::File;
use std::os::fd::OwnedFd;

use procyard_core::fork::ForkConfig;
use procyard_core::mio::Interest;
use procyard_core::mio::Token;
use procyard_core::mio::unix::SourceFd;
use procyard_core::{Child, Forked, Signal};

use super::process::{PIPE_ATOMIC, drain, raw, spawn_command, write_report, write_result};
use super::shell::{FIRST_JOB, JobChild, KEEP_BUFFER, REPORTS, Shell, Spare, TOKENS_PER_JOB};
use super::state::{ChildId, Event, Kind, StartJob};
use crate::wire::{self, TAG_DELIVERED, WireError};

/// A reusable child's job pipe, the jobs it has taken (the current one included), and
/// whether its pidfd is registered already (see `Spare::watched`).
type JobPipe = (OwnedFd, usize, bool);

/// A dispatched function job: its child's id, the child (`None` until the zygote's birth
/// message), a reusable child's job pipe, and an unborn child's job message.
type Dispatched = (ChildId, Option<Child>, Option<JobPipe>, Option<Box<[u8]>>);

impl Shell {
    /// Starts a job: returns its child's id, its kind and how many further jobs the child may
    /// take after this one (see `Event::Started`).
    pub(super) fn start(&mut self, job: StartJob) -> Result<(ChildId, Kind, usize), WireError> {
        let (id, mut child, pipes, kind, job_pipe, unborn) = match (job.function, job.command) {
            (Some(message), _) => {
                let (id, child, job_pipe, unborn) = self.dispatch_function(message)?;
                (id, child, None, Kind::Function, job_pipe, unborn)
            }
            (None, Some(spec)) => {
                let (child, stdout, stderr) = spawn_command(&spec)?;
                (self.new_id(), Some(child), Some((stdout, stderr)), Kind::Command, None, None)
            }
            (None, None) => {
                return Err(WireError::Malformed { reason: "a job with no work".into() });
            }
        };
        let registry = self.poll.registry();
        let token = Token(FIRST_JOB + id * TOKENS_PER_JOB);
        let watched = job_pipe.as_ref().is_some_and(|(_, _, watched)| *watched);
        let registered = child
            .as_mut()
            .filter(|_| !watched)
            .map_or(Ok(()), |child| registry.register(child, token, Interest::READABLE))
            .and_then(|()| {
                let Some((stdout, stderr)) = &pipes else { return Ok(()) };
                for (n, pipe) in [stdout, stderr].into_iter().enumerate() {
                    rustix::io::ioctl_fionbio(pipe, true)?;
                    let token = Token(FIRST_JOB + id * TOKENS_PER_JOB + 1 + n);
                    registry.register(&mut SourceFd(&raw(pipe)), token, Interest::READABLE)?;
                }
                Ok(())
            });
        if let Err(e) = registered {
            if let Some(mut child) = child {
                let _ = child.kill_and_reap();
            }
            return Err(WireError::Failed { message: format!("unable to watch the job: {e}") });
        }
        let (job_pipe, served) =
            job_pipe.map_or((None, 1), |(pipe, served, _)| (Some(pipe), served));
        let further =
            if self.reuse && job_pipe.is_some() { self.max_jobs.saturating_sub(served) } else { 0 };
        let (pipe, err_pipe) = pipes.map_or((None, None), |(o, e)| (Some(o), Some(e)));
        let buf = Vec::new();
        let (err_buf, truncated) = (Vec::new(), false);
        let reported = 0;
        let job = JobChild {
            child,
            unborn,
            pending: None,
            kind,
            pipe,
            job_pipe,
            served,
            reported,
            buf,
            err_pipe,
            err_buf,
            truncated,
        };
        self.children.insert(id, job);
        Ok((id, kind, further))
    }

    /// Forks a spare child when the state wants one; lets the idle ones go when stopping
    /// (closing their job pipes lets them exit; dropping a `Child` reaps it).
    pub(super) fn tend_spares(&mut self) {
        if self.exec_jobs {
            return;
        }
        if self.state.is_stopping() {
            self.idle.clear();
        } else if self.state.wants_spare(self.idle.len()) {
            match self.fork_spare() {
                Ok(spare) => self.idle.push(spare),
                Err(e) => tracing::warn!(?e, "procyard-resultworker: no spare child"),
            }
        }
    }

    /// A new job (or spare child) id.
    fn new_id(&mut self) -> ChildId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends a function job to a spare child, which becomes the job's child; without a spare
    /// (or if it died), orders a child for the job from the zygote (not born yet: no `Child`;
    /// the message is kept until it is) or forks one (either has no job pipe), or in reuse
    /// mode forks a spare to send it to. With a job pipe comes the number of jobs the child
    /// has taken, this one included.
    fn dispatch_function(&mut self, message: Box<[u8]>) -> Result<Dispatched, WireError> {
        if message.len() > procyard_core::MAX_FRAME {
            let reason = format!("job of {} bytes exceeds the frame limit", message.len());
            return Err(WireError::Malformed { reason });
        }
        if self.exec_jobs {
            let id = self.new_id();
            let frame = wire::frame(&message).unwrap_or_default();
            let child = super::job::spawn_job(id, &frame, &self.reports_write)?;
            return Ok((id, Some(child), None, None));
        }
        let mut fresh = 0;
        while fresh < 2 {
            let spare = match self.idle.pop() {
                Some(spare) => spare,
                None if !self.reuse => {
                    let id = self.new_id();
                    // If the zygote died, its births pipe ends, and `read_births` says so.
                    if let Some(zygote) = &self.zygote
                        && zygote.order(id, &message)
                    {
                        return Ok((id, None, None, Some(message)));
                    }
                    let child = self.fork_job(id, &message)?;
                    return Ok((id, Some(child), None, None));
                }
                None => {
                    fresh += 1;
                    self.fork_spare()?
                }
            };
            let Spare { id, child, job, served, watched } = spare;
            // Blocking (the child reads its job as it arrives).
            let frame = wire::frame(&message).unwrap_or_default();
            if super::process::write_all(&job, &frame) {
                return Ok((id, Some(child), Some((job, served + 1, watched)), None));
            }
            // The idle child died (EPIPE): its Child is killed and reaped on drop; next one.
        }
        Err(WireError::Failed { message: "the job's process died before taking the job".into() })
    }

    /// Forks a child `id` that runs the job `message` (it has it in memory: no job pipe, and
    /// it starts at once), reports and exits. Used when no spare is waiting and there is no
    /// zygote: when jobs queue up, a spare would only add its pipe and a wake-up to every job.
    pub(super) fn fork_job(&mut self, id: ChildId, message: &[u8]) -> Result<Child, WireError> {
        let config =
            ForkConfig { new_process_group: true, parent_death_signal: Some(Signal::KILL) };
        match procyard_core::fork(config) {
            Err(e) => Err(WireError::Failed { message: procyard_core::report(&e) }),
            Ok(Forked::Parent(child)) => Ok(child),
            Ok(Forked::Child) => {
                self.close_for_child();
                let (tag, body) = self.run_function(message);
                let code = if self.report(id, message, tag, &body) { 0 } else { 70 };
                procyard_core::exit_immediately(code)
            }
        }
    }

    /// Forks an idle child that waits for function jobs, runs each, reports, and exits after
    /// one (or at the end of its job pipe, in reuse mode). Forking ahead of time keeps the
    /// fork off the path of the next job.
    fn fork_spare(&mut self) -> Result<Spare, WireError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| WireError::Failed {
            message: format!("unable to {what}: {e}"),
        };
        let (job_read, job_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| failed("create a pipe", &e))?;
        let id = self.new_id();
        let config =
            ForkConfig { new_process_group: true, parent_death_signal: Some(Signal::KILL) };
        match procyard_core::fork(config) {
            Err(e) => Err(failed("fork", &e)),
            Ok(Forked::Parent(child)) => {
                Ok(Spare { id, child, job: job_write, served: 0, watched: false })
            }
            Ok(Forked::Child) => {
                drop(job_write);
                self.close_for_child();
                // Buffered: a small job (header and message) is taken in one read.
                let mut input = std::io::BufReader::with_capacity(1024, File::from(job_read));
                loop {
                    let max = procyard_core::MAX_FRAME;
                    let message = match procyard_core::frame::read_frame_bytes(&mut input, max) {
                        Ok(Some(message)) => message,
                        // The worker closed the pipe without a job: it is stopping.
                        _ => procyard_core::exit_immediately(0),
                    };
                    let (tag, body) = self.run_function(&message);
                    if !self.report(id, &message, tag, &body) {
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
    fn run_function(&self, message: &[u8]) -> (u8, Vec<u8>) {
        super::job::run_function(&self.functions, message)
    }

    /// In a job child: sends the report of the job `message`. A small one goes straight to
    /// the application as its result frame, on the direct pipe (so the worker is not a hop on
    /// the result's way, one wake-up fewer per round trip), and the worker gets only a note
    /// that it was delivered, to free the slot; a large one, or one the direct pipe has no
    /// room for now, goes through the worker. False on any error.
    fn report(&self, id: ChildId, message: &[u8], tag: u8, body: &[u8]) -> bool {
        if let Some(direct) = &self.direct
            && let Some((key, _)) = wire::split_job_message(message)
            && write_result(direct, key, tag, body)
        {
            return write_report(&self.reports_write, id, TAG_DELIVERED, &[]);
        }
        // With lazy notes the worker may not watch the report pipe: it is woken first, and
        // watches the pipe until this report is complete (a large one fills the pipe, and this
        // write blocks until the worker reads).
        if let Some(wake) = &self.wake_write
            && !super::process::write_all(wake, &[1])
        {
            return false;
        }
        write_report(&self.reports_write, id, tag, body)
    }

    /// Lazy notes (reuse mode with a direct pipe): a child whose result went straight to the
    /// application leaves only a note in the report pipe, which the worker needs at once only
    /// when the state does (`State::needs_reports`: a queued job, a timeout, a stop). Otherwise
    /// the report pipe is not watched, so a note does not wake the worker (one wake-up fewer
    /// per job, off the result's path but on a core the caller may want): it is taken here, at
    /// the worker's next turn (a request), and reports that must go through the worker wake
    /// it on the wake pipe. A note that comes after the next request (its child was preempted
    /// between its two writes) leaves the child busy for that turn: the job goes to another.
    pub(super) fn take_notes(&mut self) {
        if self.wake.is_some() && !self.reports_watched && self.state.busy() > 0 {
            self.read_reports(None);
        }
    }

    /// Watches the report pipe while the state needs reports at once (see `take_notes`).
    pub(super) fn watch_reports(&mut self) -> std::io::Result<()> {
        if self.state.busy() == 0 {
            // No job runs: none of the announced reports will come (a child died sending one).
            self.full_reports = 0;
        }
        let want = self.wake.is_none() || self.full_reports > 0 || self.state.needs_reports();
        if want == self.reports_watched {
            return Ok(());
        }
        let Some(reports) = &self.reports else { return Ok(()) };
        let registry = self.poll.registry();
        let source = &mut SourceFd(&raw(reports));
        if want {
            // Reports already waiting raise an event at once (edge-triggered: readiness is
            // checked as the descriptor is added).
            registry.register(source, REPORTS, Interest::READABLE)?;
        } else {
            registry.deregister(source)?;
        }
        self.reports_watched = want;
        Ok(())
    }

    /// In a forked job child: closes the worker's descriptors (pipes of the application and of
    /// sibling jobs) without signalling anything.
    fn close_for_child(&mut self) {
        self.input = None;
        self.output = None;
        self.reports = None;
        self.wake = None;
        if let Some(zygote) = self.zygote.take() {
            zygote.detach();
        }
        for spare in self.idle.drain(..) {
            spare.child.detach();
        }
        for (_, job) in self.children.drain() {
            drop((job.pipe, job.err_pipe));
            job.child.map(Child::detach);
        }
    }

    /// Puts a function job's child back among the idle ones, for the next job. Its pidfd stays
    /// registered (under its id's token, which it keeps): an exit while idle is an event for
    /// no job, ignored, and a job written to it then fails and goes to another child.
    pub(super) fn recycle(&mut self, id: ChildId) {
        let Some(mut job) = self.children.remove(&id) else { return };
        let Some(child) = job.child.take() else { return };
        let Some(job_pipe) = job.job_pipe.take() else { return };
        if self.idle.len() < self.max_workers {
            self.idle.push(Spare { id, child, job: job_pipe, served: job.served, watched: true });
        }
    }

    /// A child's pidfd is readable: if it exited, takes what it still wrote and tells the
    /// state.
    pub(super) fn finish(&mut self, id: ChildId) {
        let Some(job) = self.children.get_mut(&id) else { return };
        let Some(child) = job.child.as_mut() else { return };
        let exit = match child.try_wait() {
            Ok(Some(exit)) => exit,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "procyard-resultworker: unable to reap a job");
                return;
            }
        };
        if job.kind == Kind::Function {
            // Everything it wrote is in the pipe by now; nothing is left to read if it
            // reported every job it was sent (saves a read per job with a fork per job).
            if job.reported < job.served {
                self.read_reports(Some(id));
            }
        } else {
            drain(job, &mut self.scratch);
        }
        let Some(mut job) = self.children.remove(&id) else { return };
        let registry = self.poll.registry();
        if let Some(child) = job.child.as_mut() {
            let _ = registry.deregister(child);
        }
        for pipe in [job.pipe.take(), job.err_pipe.take()].into_iter().flatten() {
            let _ = registry.deregister(&mut SourceFd(&raw(&pipe)));
        }
        let output = std::mem::take(&mut job.buf);
        let stderr = std::mem::take(&mut job.err_buf);
        self.step(Event::Exited { id, exit, output, stderr, truncated: job.truncated });
    }

    /// Reads the function children's shared report pipe and hands each complete report to the
    /// state at once, before its child exits. The child `exited` is not recyclable.
    pub(super) fn read_reports(&mut self, exited: Option<ChildId>) {
        let Some(reports) = &self.reports else { return };
        loop {
            let read = procyard_core::event::retry_interrupted(|| {
                rustix::io::read(reports, &mut self.scratch[..]).map_err(Into::into)
            });
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => self.report_chunks.extend_from_slice(&self.scratch[..n]),
            }
            // A pipe read returns all that is buffered, up to the length asked for: a short
            // one emptied the pipe, and a later write raises a new readiness edge (this pipe
            // never reaches end of file: the worker holds a write end). Stopping here saves
            // the read that would only say `EAGAIN` (a syscall, and a write to `errno`, on a
            // page each fork shares with the child) once per wake-up.
            if read.is_ok_and(|n| n < self.scratch.len()) {
                break;
            }
        }
        let mut touched = std::mem::take(&mut self.touched);
        let mut pos = 0;
        while let Some(header) = self.report_chunks.get(pos..pos + 12) {
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if !(8..=PIPE_ATOMIC - 4).contains(&len) {
                // Only this crate's code writes there, whole chunks at a time.
                tracing::error!(len, "procyard-resultworker: corrupt report chunk");
                pos = self.report_chunks.len();
                break;
            }
            if self.report_chunks.len() < pos + 4 + len {
                break;
            }
            let mut id = [0u8; 8];
            id.copy_from_slice(&header[4..12]);
            let id = u64::from_be_bytes(id) as usize;
            if let Some(job) = self.children.get_mut(&id) {
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

    /// Hands every complete report buffered for a function child to the state, in order.
    fn take_reports(&mut self, id: ChildId, recyclable: bool) {
        loop {
            let Some(job) = self.children.get_mut(&id) else { return };
            // A report only once its whole frame is there (the header gives its length).
            let Some(len) = job.buf.first_chunk::<4>().map(|l| u32::from_be_bytes(*l) as usize)
            else {
                return;
            };
            if job.buf.len() < 4 + len {
                return;
            }
            let report = job.buf[4..4 + len].to_vec();
            job.buf.drain(..4 + len);
            job.reported += 1;
            if job.buf.is_empty() && job.buf.capacity() > KEEP_BUFFER {
                job.buf = Vec::new();
            }
            if !wire::is_delivered(&report) {
                self.full_reports = self.full_reports.saturating_sub(1);
            }
            self.step(Event::Report { id, report, recyclable });
        }
    }
}
