//! One worker process: its child, pipes, current job and stop ladder.

use std::io::{ErrorKind, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use mio::unix::pipe;
use mio::{Interest, Registry, Token};
use procyard_core::{Child, Command, FrameDecoder, Signal, Stdio, frame};

use crate::config::{TaskConfig, WorkModel};
use crate::protocol::{JobHeader, MAX_WORKER_FRAME};
use crate::queue::Job;
use crate::{Error, Result};

/// Token kinds in the low two bits.
pub(crate) const KIND_PIDFD: usize = 0;
pub(crate) const KIND_STDOUT: usize = 1;
pub(crate) const KIND_STDIN: usize = 2;
pub(crate) const KIND_CONN: usize = 3;

pub(crate) fn token(id: u64, kind: usize) -> Token {
    Token(((id as usize) << 2) | kind)
}

/// A job a worker runs.
#[derive(Debug)]
pub(crate) struct Running {
    pub job: Job,
    pub deadline: Option<Instant>,
    pub timed_out: bool,
}

/// Where a worker is in being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopStage {
    /// Stdin closed; TERM at the instant.
    Eof(Instant),
    /// TERM sent; KILL at the instant.
    Term(Instant),
    /// KILL sent.
    Killed,
}

#[derive(Debug)]
pub(crate) struct Worker {
    pub id: u64,
    pub group: String,
    pub generation: u64,
    pub model: WorkModel,
    pub child: Child,
    pub started: Instant,
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub decoder: FrameDecoder,
    pub out: Vec<u8>,
    pub out_pos: usize,
    pub job: Option<Running>,
    pub idle_since: Instant,
    pub stop: Option<StopStage>,
    /// The job must not be completed when the worker exits (it was stopped by a shutdown;
    /// the queue gets it back without counting the attempt).
    pub abandon_job: bool,
    pub jobs_done: u64,
}

fn nonblocking(fd: OwnedFd) -> Result<OwnedFd> {
    rustix::io::ioctl_fionbio(&fd, true)
        .map_err(|e| Error::Os { action: "make a pipe non-blocking", source: e.into() })?;
    Ok(fd)
}

impl Worker {
    /// Spawns a worker for `cfg`; for a oneshot worker `job` is its job.
    pub fn spawn(
        id: u64,
        cfg: &TaskConfig,
        generation: u64,
        job: Option<Job>,
        registry: &Registry,
    ) -> Result<Worker> {
        let mut cmd = Command::new(&cfg.command[0]);
        cmd.args(&cfg.command[1..]);
        for (k, v) in &cfg.env {
            cmd.env(k, v);
        }
        cmd.env("PROCYARD_TASK", &cfg.name);
        if let Some(cwd) = &cfg.cwd {
            cmd.current_dir(cwd);
        }
        cmd.stdin(Stdio::Pipe).stderr(Stdio::Inherit);
        match cfg.work_model {
            WorkModel::Oneshot => {
                cmd.stdout(Stdio::Inherit);
                if let Some(job) = &job {
                    cmd.env("PROCYARD_JOB_ID", &job.id)
                        .env("PROCYARD_ROUTING_KEY", &job.routing_key)
                        .env("PROCYARD_ATTEMPT", job.attempt.to_string());
                }
            }
            WorkModel::Longlived => {
                cmd.stdout(Stdio::Pipe);
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::process(format!("spawn a worker for task {}", cfg.name), e))?;
        let stdin = child.take_stdin().map(nonblocking).transpose()?.map(pipe::Sender::from);
        let stdout = child.take_stdout().map(nonblocking).transpose()?.map(pipe::Receiver::from);
        let now = Instant::now();
        let mut worker = Worker {
            id,
            group: cfg.name.clone(),
            generation,
            model: cfg.work_model,
            child,
            started: now,
            stdin,
            stdout,
            decoder: FrameDecoder::with_max(MAX_WORKER_FRAME),
            out: Vec::new(),
            out_pos: 0,
            job: None,
            idle_since: now,
            stop: None,
            abandon_job: false,
            jobs_done: 0,
        };
        let reg = |e: std::io::Error| Error::Os {
            action: "register a worker with the event loop",
            source: e,
        };
        registry
            .register(&mut worker.child, token(id, KIND_PIDFD), Interest::READABLE)
            .map_err(reg)?;
        if let Some(s) = worker.stdout.as_mut() {
            registry.register(s, token(id, KIND_STDOUT), Interest::READABLE).map_err(reg)?;
        }
        if let Some(s) = worker.stdin.as_mut() {
            registry.register(s, token(id, KIND_STDIN), Interest::WRITABLE).map_err(reg)?;
        }
        if let Some(job) = job {
            worker.out = job.payload.clone();
            worker.start_job(job, cfg.timeout, now);
            worker.flush_stdin(registry);
            if worker.out.is_empty() {
                worker.close_stdin(registry);
            }
        }
        Ok(worker)
    }

    fn start_job(&mut self, job: Job, timeout: Option<Duration>, now: Instant) {
        self.job = Some(Running { job, deadline: timeout.map(|t| now + t), timed_out: false });
    }

    /// Longlived: sends `job` (header frame + payload frame).
    pub fn send_job(
        &mut self,
        job: Job,
        timeout: Option<Duration>,
        registry: &Registry,
    ) -> Result<()> {
        let header = JobHeader {
            id: job.id.clone(),
            task: job.task.clone(),
            routing_key: job.routing_key.clone(),
            attempt: job.attempt,
        };
        let head =
            frame::encode_frame(&header).map_err(|e| Error::process("encode a job header", e))?;
        self.out.extend_from_slice(&head);
        frame::write_frame_bytes(&mut self.out, &job.payload)
            .map_err(|e| Error::Os { action: "encode a payload", source: e })?;
        self.start_job(job, timeout, Instant::now());
        self.flush_stdin(registry);
        Ok(())
    }

    /// Writes what it can of the pending stdin bytes. A worker that closed its stdin (EPIPE)
    /// just loses them: its exit tells the rest.
    pub fn flush_stdin(&mut self, registry: &Registry) {
        let Some(stdin) = self.stdin.as_mut() else {
            self.out.clear();
            self.out_pos = 0;
            return;
        };
        while self.out_pos < self.out.len() {
            match stdin.write(&self.out[self.out_pos..]) {
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close_stdin(registry);
                    return;
                }
            }
        }
        self.out.clear();
        self.out_pos = 0;
        if self.model == WorkModel::Oneshot {
            self.close_stdin(registry);
        }
    }

    pub fn close_stdin(&mut self, registry: &Registry) {
        if let Some(mut s) = self.stdin.take() {
            let _ = registry.deregister(&mut s);
        }
        self.out.clear();
        self.out_pos = 0;
    }

    pub fn close_stdout(&mut self, registry: &Registry) {
        if let Some(mut s) = self.stdout.take() {
            let _ = registry.deregister(&mut s);
        }
    }

    pub fn is_idle(&self) -> bool {
        self.job.is_none() && self.stop.is_none()
    }

    /// Signals the worker's process group (continuing it too, in case it was stopped).
    pub fn signal_group(&self, signal: Signal) {
        if let Err(e) = self.child.signal_group(signal) {
            tracing::debug!(pid = %self.child.id(), %signal, error = %e, "signal not delivered");
        }
        if signal != Signal::KILL {
            let _ = self.child.signal_group(Signal::CONT);
        }
    }

    /// Starts the stop ladder: close stdin, then TERM after `eof_grace` (immediately when
    /// zero), then KILL after `kill_timeout`.
    pub fn begin_stop(&mut self, registry: &Registry, eof_grace: Duration, kill_timeout: Duration) {
        if self.stop.is_some() {
            return;
        }
        self.close_stdin(registry);
        let now = Instant::now();
        if eof_grace.is_zero() {
            self.signal_group(Signal::TERM);
            self.stop = Some(StopStage::Term(now + kill_timeout));
        } else {
            self.stop = Some(StopStage::Eof(now + eof_grace));
        }
    }

    /// SIGKILLs the process group now.
    pub fn kill(&mut self) {
        self.signal_group(Signal::KILL);
        self.stop = Some(StopStage::Killed);
    }

    /// Advances the stop ladder or the job timeout if their deadline passed.
    pub fn on_deadline(&mut self, now: Instant, kill_timeout: Duration) {
        if let Some(run) = self.job.as_mut()
            && !run.timed_out
            && run.deadline.is_some_and(|d| d <= now)
        {
            run.timed_out = true;
            tracing::warn!(pid = %self.child.id(), job = %run.job.id, task = %self.group, "job timed out: killing the worker's process group");
            self.kill();
            return;
        }
        match self.stop {
            Some(StopStage::Eof(at)) if at <= now => {
                self.signal_group(Signal::TERM);
                self.stop = Some(StopStage::Term(now + kill_timeout));
            }
            Some(StopStage::Term(at)) if at <= now => {
                tracing::warn!(pid = %self.child.id(), task = %self.group, "worker ignored SIGTERM: sending SIGKILL");
                self.kill();
            }
            _ => {}
        }
    }

    /// The next instant this worker needs attention.
    pub fn next_deadline(&self) -> Option<Instant> {
        let job = self.job.as_ref().filter(|r| !r.timed_out).and_then(|r| r.deadline);
        let stop = match self.stop {
            Some(StopStage::Eof(at) | StopStage::Term(at)) => Some(at),
            _ => None,
        };
        job.into_iter().chain(stop).min()
    }

    pub fn deregister_all(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.child);
        self.close_stdin(registry);
        self.close_stdout(registry);
    }

    pub fn state_name(&self) -> &'static str {
        let stopped = procyard_core::ProcStat::read(self.child.id())
            .ok()
            .flatten()
            .is_some_and(|s| s.is_stopped());
        if stopped {
            return "stopped";
        }
        match (self.stop, &self.job) {
            (Some(StopStage::Eof(_)), _) => "draining",
            (Some(_), _) => "stopping",
            (None, Some(_)) => "busy",
            (None, None) => "idle",
        }
    }
}
