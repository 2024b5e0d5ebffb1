//! One worker's process, as the shell holds it: the child, its pipes, the reply decoder and
//! the lease holder. What the worker does is the state's ([`super::worker`]).

use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;

use mio::unix::pipe;
use mio::{Interest, Registry, Token};
use procyard_core::{Child, Command, FrameDecoder, Signal, Stdio, frame};

use super::capture::Capture;
use crate::config::{TaskConfig, WorkModel};
use crate::protocol::{CancelFrame, JobHeader, MAX_WORKER_FRAME, PROTOCOL_ENV, PROTOCOL_VERSION};
use crate::queue::{Captured, Job, LeaseHolder};
use crate::{Error, Result};

/// Token kinds in the low three bits.
pub(crate) const KIND_PIDFD: usize = 0;
pub(crate) const KIND_STDOUT: usize = 1;
pub(crate) const KIND_STDIN: usize = 2;
pub(crate) const KIND_CONN: usize = 3;
pub(crate) const KIND_STDERR: usize = 4;
/// How many low bits of a token say its kind.
pub(crate) const KIND_BITS: usize = 3;

pub(crate) fn token(id: u64, kind: usize) -> Token {
    Token(((id as usize) << KIND_BITS) | kind)
}

/// A longlived worker's stderr: relayed to the daemon's stderr as it comes (as when it was
/// inherited), and what it writes while it runs a job is also kept with that job's attempt.
#[derive(Debug)]
pub(crate) struct Relay {
    pub rx: Option<pipe::Receiver>,
    /// The current job's stderr, when the worker runs one.
    pub job: Option<Capture>,
    /// Read since the replies being fed were read from stdout: whatever their jobs wrote on
    /// stderr (before replying) is already taken, so the attempts they end need no read of
    /// their own (one `read` per batch of replies instead of one per job).
    pub fresh: bool,
}

impl Relay {
    /// Reads what the worker wrote until the pipe is empty; closes it at its end.
    pub fn read(&mut self, registry: &Registry) {
        let Some(rx) = self.rx.as_mut() else { return };
        let mut buf = [0u8; 16 * 1024];
        loop {
            match procyard_core::event::retry_interrupted(|| rx.read(&mut buf)) {
                Ok(0) => break,
                Ok(n) => {
                    let _ = std::io::stderr().lock().write_all(&buf[..n]);
                    if let Some(c) = self.job.as_mut() {
                        c.push(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        if let Some(mut rx) = self.rx.take() {
            let _ = registry.deregister(&mut rx);
        }
    }
}

/// A oneshot job's captured output streams.
#[derive(Debug)]
pub(crate) struct Output {
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    pub out: Capture,
    pub err: Capture,
}

impl Output {
    /// Reads what the job wrote on `kind` (stdout or stderr) until the pipe is empty; closes
    /// it at its end.
    pub fn read(&mut self, kind: usize, registry: &Registry) {
        let (pipe, capture) = match kind {
            KIND_STDOUT => (&mut self.stdout, &mut self.out),
            _ => (&mut self.stderr, &mut self.err),
        };
        let Some(rx) = pipe.as_mut() else { return };
        let mut buf = [0u8; 64 * 1024];
        loop {
            match procyard_core::event::retry_interrupted(|| rx.read(&mut buf)) {
                Ok(0) => break,
                Ok(n) => capture.push(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        if let Some(mut rx) = pipe.take() {
            let _ = registry.deregister(&mut rx);
        }
    }

    /// Stops reading (whatever is still unread is lost) and hands over the captures.
    pub fn finish(mut self, registry: &Registry) -> (Option<Captured>, Option<Captured>) {
        for rx in [self.stdout.as_mut(), self.stderr.as_mut()].into_iter().flatten() {
            let _ = registry.deregister(rx);
        }
        self.stdout = None;
        self.stderr = None;
        (Some(self.out.finish()), Some(self.err.finish()))
    }
}

#[derive(Debug)]
pub(crate) struct Process {
    pub model: WorkModel,
    pub child: Child,
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub decoder: FrameDecoder,
    pub out: Vec<u8>,
    pub out_pos: usize,
    /// Who the worker is, recorded with the lease of each job it is handed.
    pub holder: Option<LeaseHolder>,
    /// A oneshot job's output, captured.
    pub output: Option<Output>,
    /// A longlived worker's stderr.
    pub relay: Option<Relay>,
    /// The per-stream limit of the task's captures.
    pub output_limit: usize,
}

/// The environment variable that tags a worker and everything it starts with
/// `<daemon pid>-<daemon start time>-<worker id>`, so a descendant that escapes the worker's
/// process group (`setsid`) and is reparented to the daemon (a child subreaper) is still
/// stopped with that worker.
pub(crate) const WORKER_TAG_ENV: &str = "PROCYARD_WORKER";

/// This daemon's part of [`WORKER_TAG_ENV`].
pub(crate) fn daemon_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let pid = procyard_core::Pid::current();
        let start =
            procyard_core::ProcessIdentity::of(pid).ok().flatten().map_or(0, |me| me.start_time);
        format!("{pid}-{start}")
    })
}

/// The payload as a sealed memfd read from offset 0: it is complete before the worker's
/// program starts, and nothing (not the worker, not a daemon killed half-way) can change it
/// afterwards. With a pipe that the daemon filled after the spawn, a daemon killed in between
/// left the job reading a cut payload — or none — to its end.
fn sealed_payload(payload: &[u8]) -> std::io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "procyard-payload",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(payload)?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file.into())
}

fn nonblocking(fd: OwnedFd) -> Result<OwnedFd> {
    rustix::io::ioctl_fionbio(&fd, true)
        .map_err(|e| Error::Os { action: "make a pipe non-blocking", source: e.into() })?;
    Ok(fd)
}

impl Process {
    /// Spawns worker `id` for `cfg`; for a oneshot worker `job` is its job.
    pub fn spawn(
        id: u64,
        cfg: &TaskConfig,
        job: Option<&Job>,
        registry: &Registry,
    ) -> Result<Process> {
        let mut cmd = Command::new(&cfg.command[0]);
        cmd.args(&cfg.command[1..]);
        for (k, v) in &cfg.env {
            cmd.env(k, v);
        }
        cmd.env("PROCYARD_TASK", &cfg.name);
        cmd.env(WORKER_TAG_ENV, format!("{}-{id}", daemon_tag()));
        if let Some(cwd) = &cfg.cwd {
            cmd.current_dir(cwd);
        }
        // A worker must not outlive its daemon: the next daemon (or, on AMQP, the broker at
        // once) gives its job to another worker, and both would run it. (The job's own
        // subprocesses are the next daemon's to stop, by the identity recorded with the lease.)
        cmd.parent_death_signal(Signal::KILL);
        match cfg.work_model {
            WorkModel::Oneshot => {
                // Captured (bounded), kept with the attempt.
                cmd.stdout(Stdio::Pipe).stderr(Stdio::Pipe);
                match job {
                    Some(job) => {
                        let payload = sealed_payload(&job.payload).map_err(|e| Error::Os {
                            action: "write a job's payload to a sealed memfd",
                            source: e,
                        })?;
                        cmd.stdin(Stdio::Fd(payload))
                            .env("PROCYARD_JOB_ID", &job.id)
                            .env("PROCYARD_ROUTING_KEY", &job.routing_key)
                            .env("PROCYARD_ATTEMPT", job.attempt.to_string());
                    }
                    None => {
                        cmd.stdin(Stdio::Null);
                    }
                }
            }
            WorkModel::Longlived => {
                cmd.stdin(Stdio::Pipe).stdout(Stdio::Pipe).stderr(Stdio::Pipe);
                cmd.env(PROTOCOL_ENV, PROTOCOL_VERSION.to_string());
            }
        }
        let mut child = crate::stamp::timed("exec", || cmd.spawn())
            .map_err(|e| Error::process(format!("spawn a worker for task {}", cfg.name), e))?;
        let stdin = child.take_stdin().map(nonblocking).transpose()?.map(pipe::Sender::from);
        let mut stdout =
            child.take_stdout().map(nonblocking).transpose()?.map(pipe::Receiver::from);
        let stderr = child.take_stderr().map(nonblocking).transpose()?.map(pipe::Receiver::from);
        let (output, relay) = match cfg.work_model {
            WorkModel::Oneshot => (
                Some(Output {
                    stdout: stdout.take(),
                    stderr,
                    out: Capture::new(cfg.output_limit),
                    err: Capture::new(cfg.output_limit),
                }),
                None,
            ),
            WorkModel::Longlived => (None, Some(Relay { rx: stderr, job: None, fresh: false })),
        };
        let holder = worker_holder(&child);
        let mut worker = Process {
            model: cfg.work_model,
            child,
            stdin,
            stdout,
            decoder: FrameDecoder::with_max(MAX_WORKER_FRAME),
            out: Vec::new(),
            out_pos: 0,
            holder,
            output,
            relay,
            output_limit: cfg.output_limit,
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
        if let Some(o) = worker.output.as_mut() {
            if let Some(s) = o.stdout.as_mut() {
                registry.register(s, token(id, KIND_STDOUT), Interest::READABLE).map_err(reg)?;
            }
            if let Some(s) = o.stderr.as_mut() {
                registry.register(s, token(id, KIND_STDERR), Interest::READABLE).map_err(reg)?;
            }
        }
        if let Some(s) = worker.relay.as_mut().and_then(|r| r.rx.as_mut()) {
            registry.register(s, token(id, KIND_STDERR), Interest::READABLE).map_err(reg)?;
        }
        Ok(worker)
    }

    /// Longlived: sends `job` (header frame + payload frame).
    pub fn send_job(&mut self, job: &Job, registry: &Registry) -> Result<()> {
        self.queue_job(job)?;
        self.flush_stdin(registry);
        Ok(())
    }

    /// Longlived: adds `job` to what is to be written to the worker's stdin; the caller
    /// flushes ([`Process::flush_stdin`]), once for several jobs.
    pub fn queue_job(&mut self, job: &Job) -> Result<()> {
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
        Ok(())
    }

    /// Longlived: what the worker writes on stderr from now on is kept with the job it runs
    /// now (a new capture, bounded by the task's `output_limit`).
    pub fn begin_capture(&mut self) {
        if let Some(r) = self.relay.as_mut() {
            r.job = Some(Capture::new(self.output_limit));
        }
    }

    /// Longlived: sends a cancel frame for job `id`.
    pub fn send_cancel(&mut self, id: &str, registry: &Registry) -> Result<()> {
        let cancel = CancelFrame { id: id.to_owned() };
        let bytes =
            frame::encode_frame(&cancel).map_err(|e| Error::process("encode a cancel frame", e))?;
        self.out.extend_from_slice(&bytes);
        self.flush_stdin(registry);
        Ok(())
    }

    /// Writes what it can of the pending stdin bytes (longlived workers). A worker that closed
    /// its stdin (EPIPE) just loses them: its exit tells the rest.
    pub fn flush_stdin(&mut self, registry: &Registry) {
        let Some(stdin) = self.stdin.as_mut() else {
            self.out.clear();
            self.out_pos = 0;
            return;
        };
        while self.out_pos < self.out.len() {
            let pending = &self.out[self.out_pos..];
            match procyard_core::event::retry_interrupted(|| stdin.write(pending)) {
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
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

    /// Signals the worker's process group (continuing it too, in case it was stopped).
    pub fn signal_group(&self, signal: Signal) {
        if let Err(e) = self.child.signal_group(signal) {
            tracing::debug!(pid = %self.child.id(), %signal, error = %e, "signal not delivered");
        }
        if signal != Signal::KILL {
            let _ = self.child.signal_group(Signal::CONT);
        }
    }

    pub fn deregister_all(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.child);
        self.close_stdin(registry);
        self.close_stdout(registry);
        if let Some(o) = self.output.take() {
            let _ = o.finish(registry);
        }
        if let Some(mut rx) = self.relay.take().and_then(|r| r.rx) {
            let _ = registry.deregister(&mut rx);
        }
    }
}

/// The worker's identity for the lease, read right after the spawn (a worker that is already
/// gone has none: there is nothing left to stop).
fn worker_holder(child: &Child) -> Option<LeaseHolder> {
    let process = procyard_core::ProcessIdentity::of(child.id()).ok().flatten()?;
    Some(LeaseHolder { process, process_group: child.process_group()? })
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// The payload reads back whole from the start, and nobody can write to it, grow it or
    /// shrink it once it is handed over.
    #[test]
    fn sealed_payload_is_complete_and_immutable() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let fd = sealed_payload(&payload).unwrap();
        let mut file = std::fs::File::from(fd);
        assert!(file.write_all(b"x").is_err(), "sealed against writes");
        assert!(file.set_len(1).is_err(), "sealed against shrinking");
        assert!(file.set_len(1 << 20).is_err(), "sealed against growing");
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert_eq!(back, payload);
        assert!(sealed_payload(b"").is_ok(), "an empty payload is a valid one");
    }
}
