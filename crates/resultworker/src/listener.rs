//! The listener thread: it owns the worker process (so the worker's parent-death signal is
//! tied to a thread that lives as long as the [`ResultWorker`](crate::ResultWorker)), reads
//! its results, notices its death, fails what it held, and restarts it with backoff.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use procyard_core::mio::{Events, Interest, Poll, Token};
use procyard_core::{
    Child, Command, Deadline, Exit, FrameDecoder, Grouping, Report, Signal, Stdio, StopLadder,
    StreamState,
};

use crate::future::lock_map;
use crate::mode::{
    DIRECT_FD, ENV_DIRECT, ENV_MAX_WORKERS, ENV_REUSE, ENV_WORKER, EXIT_INIT_NOT_CALLED,
};
use crate::shared::{Shared, lock};
use crate::stop::GracefulStop;
use crate::wire::{self, Decoded, Request, WireError};
use crate::{Error, Result};

const READER: Token = Token(1);
const PIDFD: Token = Token(2);
/// The direct pipe: job children's small results, straight from them (not through the
/// worker: one wake-up fewer per round trip).
const DIRECT: Token = Token(3);

/// How long the worker may take beyond a stop's grace period (its own TERM → KILL ladder
/// included) before the application TERMs it, and then KILLs it.
const STOP_SLACK: Duration = Duration::from_secs(2);
/// How long a new worker may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a worker that failed before its ready message gets to exit, so that its exit code
/// can say whether it refused to start (see `Listener::not_ready`).
const REFUSAL_EXIT_WAIT: Duration = Duration::from_secs(1);
/// A worker that lived this long resets the restart backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

struct Running {
    child: Child,
    reader: File,
    decoder: FrameDecoder,
    /// The read end of the direct pipe, which the worker's job children write whole result
    /// frames into (each in one atomic write, so frames never interleave).
    direct: File,
    direct_decoder: FrameDecoder,
    started: Instant,
}

pub(crate) struct Listener {
    shared: Arc<Shared>,
    poll: Poll,
    worker: Option<Running>,
    restart_at: Option<Deadline>,
    /// Deaths in a row (the restart backoff's attempt number).
    failures: u32,
    /// The worker's stop, once one was asked for.
    stop: Option<GracefulStop>,
    /// The buffer the result pipes are read through.
    scratch: Vec<u8>,
}

impl Listener {
    fn new(shared: Arc<Shared>, poll: Poll) -> Listener {
        let scratch = vec![0; 64 * 1024];
        Listener { shared, poll, worker: None, restart_at: None, failures: 0, stop: None, scratch }
    }

    pub(crate) fn run(shared: Arc<Shared>, poll: Poll, started: mpsc::Sender<Result<()>>) {
        let mut listener = Listener::new(shared, poll);
        let ready = listener.spawn().and_then(|()| listener.wait_ready(READY_TIMEOUT));
        match ready {
            Ok(()) => {
                let _ = started.send(Ok(()));
            }
            Err(e) => {
                listener.kill_worker();
                lock(&listener.shared.status).worker_pid = None;
                let _ = started.send(Err(e));
                return;
            }
        }
        listener.event_loop();
    }

    /// Waits for the first worker's ready frame, so a program that does not call `init`
    /// first is an error of `start`, not a worker that dies again and again.
    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Deadline::after(timeout);
        loop {
            let Some(worker) = self.worker.as_mut() else {
                return Err(Error::WorkerNotReady { reason: "no worker process".into() });
            };
            let state = worker.decoder.read_from(&mut worker.reader);
            match worker.decoder.next_bytes() {
                Ok(Some(payload)) => {
                    return match wire::decode_result(payload) {
                        Decoded::Result { key: wire::READY_KEY, outcome: Ok(_) } => Ok(()),
                        Decoded::Result {
                            key: wire::READY_KEY,
                            outcome: Err(refusal @ WireError::InitNotCalled { .. }),
                        } => Err(refusal.into()),
                        _ => Err(self.not_ready("its first frame was not a ready message".into())),
                    };
                }
                Ok(None) => {}
                Err(e) => return Err(self.not_ready(procyard_core::report(&e))),
            }
            if !matches!(wire::stream_state(state, &worker.decoder), Ok(StreamState::Open)) {
                let program = self.program();
                return Err(self.not_ready(format!(
                    "{} exited before it was ready (its main must call \
                     procyard_resultworker::init() first)",
                    program.display()
                )));
            }
            if deadline.is_expired() {
                return Err(self.not_ready(format!("no ready message within {timeout:?}")));
            }
            let remaining = deadline.remaining();
            let ts = rustix::event::Timespec {
                tv_sec: remaining.as_secs().min(86_400) as i64,
                tv_nsec: i64::from(remaining.subsec_nanos()),
            };
            let mut fds =
                [rustix::event::PollFd::new(&worker.reader, rustix::event::PollFlags::IN)];
            procyard_core::event::retry_interrupted(|| {
                rustix::event::poll(&mut fds, Some(&ts)).map_err(Into::into)
            })
            .map_err(|e| Error::os("wait for the worker", e))?;
        }
    }

    /// Why the new worker is not ready: [`Error::InitNotCalled`] if it exits with the code of a
    /// worker-mode process that reached `start` (its refusal frame can be lost behind what
    /// `main` printed to stdout, the result pipe, before it), else `reason`.
    fn not_ready(&mut self, reason: String) -> Error {
        if let Some(worker) = self.worker.as_mut()
            && let Ok(Some(Exit::Code(code))) = worker.child.wait_timeout(REFUSAL_EXIT_WAIT)
            && i32::from(code) == EXIT_INIT_NOT_CALLED
        {
            return Error::InitNotCalled { program: self.program() };
        }
        Error::WorkerNotReady { reason }
    }

    /// The program started as the worker.
    fn program(&self) -> PathBuf {
        match &self.shared.config.program {
            Some(program) => program.clone(),
            None => std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
        }
    }

    fn event_loop(&mut self) {
        let mut events = Events::with_capacity(16);
        loop {
            if let Some(grace) = self.shared.stop_grace() {
                if self.worker.is_none() {
                    self.shared.fail_all(&Error::Stopped);
                    return;
                }
                if self.stop.is_none() {
                    // The worker runs its own ladder for its jobs within `grace`; the slack
                    // is for that, before the application TERMs and then KILLs the worker.
                    let ladder = StopLadder::term_then_kill(STOP_SLACK);
                    let grace = grace.saturating_add(STOP_SLACK);
                    self.stop = Some(GracefulStop::new(Instant::now(), grace, ladder));
                }
            }
            let stop_at = self.stop.as_ref().and_then(GracefulStop::deadline).map(Deadline::at);
            let timeout = Deadline::poll_timeout(self.restart_at.into_iter().chain(stop_at));
            if let Err(e) = procyard_core::event::poll(&mut self.poll, &mut events, timeout) {
                tracing::error!(error = %e, "procyard-resultworker: the listener's poll failed");
                self.kill_worker();
                self.shared.fail_all(&Error::WorkerLost);
                return;
            }
            let mut exited = false;
            for event in events.iter() {
                match event.token() {
                    READER => exited |= self.read_results(),
                    DIRECT => exited |= self.read_direct(),
                    PIDFD => exited = true,
                    _ => {}
                }
            }
            if exited {
                self.on_exit();
            }
            self.handle_deadlines();
        }
    }

    fn handle_deadlines(&mut self) {
        if self.restart_at.is_some_and(Deadline::is_expired) {
            self.restart_at = None;
            if self.shared.stop_grace().is_none() {
                lock(&self.shared.status).restarts += 1;
                if let Err(e) = self.spawn() {
                    tracing::warn!(error = %Report(&e), "procyard-resultworker: restart failed");
                    self.shared.fail_backlog(&Error::WorkerLost);
                    self.schedule_restart();
                }
            }
        }
        if let Some(worker) = &self.worker
            && let Some(signal) = self.stop.as_mut().and_then(|s| s.tick(Instant::now()))
        {
            let _ = worker.child.signal_group(signal);
        }
    }

    fn kill_worker(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            let _ = worker.child.kill_and_reap();
        }
    }

    /// Reads and dispatches every complete frame of the direct pipe; returns whether it is
    /// corrupt (the worker is then killed). Its end of file only says that the worker and its
    /// children are gone, which the worker's own pipe and pidfd say too.
    fn read_direct(&mut self) -> bool {
        let Some(worker) = self.worker.as_mut() else { return false };
        let state = wire::read_pipe(
            "read results",
            &mut worker.direct,
            &mut worker.direct_decoder,
            &mut self.scratch,
        );
        loop {
            match worker.direct_decoder.next_bytes() {
                Ok(Some(payload)) => dispatch(&self.shared, payload),
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "procyard-resultworker: corrupt direct results");
                    let _ = worker.child.kill();
                    return true;
                }
            }
        }
        if let Err(e) = wire::stream_state(state, &worker.direct_decoder) {
            tracing::error!(error = %e, "procyard-resultworker: corrupt direct results");
            let _ = worker.child.kill();
            return true;
        }
        false
    }

    /// Reads and dispatches every complete frame, those of the direct pipe first (a result
    /// a child wrote there came before any error the worker sends later for its job, such as
    /// a timeout); returns whether the worker's stream ended (or either is corrupt, in which
    /// case the worker is killed).
    fn read_results(&mut self) -> bool {
        if self.read_direct() {
            return true;
        }
        let Some(worker) = self.worker.as_mut() else { return false };
        let state = wire::read_pipe(
            "read results",
            &mut worker.reader,
            &mut worker.decoder,
            &mut self.scratch,
        );
        loop {
            match worker.decoder.next_bytes() {
                Ok(Some(payload)) => dispatch(&self.shared, payload),
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "procyard-resultworker: corrupt result stream");
                    let _ = worker.child.kill();
                    return true;
                }
            }
        }
        match wire::stream_state(state, &worker.decoder) {
            Ok(StreamState::Open) => false,
            Ok(StreamState::Closed) => true,
            Err(e) => {
                tracing::error!(error = %e, "procyard-resultworker: corrupt result stream");
                let _ = worker.child.kill();
                true
            }
        }
    }

    /// The worker exited (or closed its pipe): take its last results, reap it, fail what it
    /// still had, and restart it unless stopping.
    fn on_exit(&mut self) {
        if self.worker.is_none() {
            return;
        }
        self.read_results();
        let Some(mut worker) = self.worker.take() else { return };
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut worker.child);
        for fd in [raw(&worker.reader), raw(&worker.direct)] {
            let _ = registry.deregister(&mut procyard_core::mio::unix::SourceFd(&fd));
        }
        // A closed pipe with a live worker means it is broken: make sure it is gone.
        if !matches!(worker.child.try_wait(), Ok(Some(_))) {
            let _ = worker.child.kill_and_reap();
        }
        lock(&self.shared.status).worker_pid = None;
        let stopping = self.shared.stop_grace().is_some();
        let error = if stopping { Error::Stopped } else { Error::WorkerLost };
        self.shared.fail_sent(&error);
        if !stopping {
            if worker.started.elapsed() >= STABLE_AFTER {
                self.failures = 0;
            }
            self.schedule_restart();
        }
    }

    fn schedule_restart(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let delay = self.shared.config.restart_backoff().delay(self.failures);
        self.restart_at = Some(Deadline::after(delay));
    }

    fn spawn(&mut self) -> Result<()> {
        let start_err = |e: procyard_core::Error| Error::Start { source: Arc::new(e) };
        let pipe = || {
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| Error::os("create a pipe", e))
        };
        let (job_read, job_write) = pipe()?;
        let (result_read, result_write) = pipe()?;
        let (direct_read, direct_write) = pipe()?;
        let config = &self.shared.config;
        let program = match &config.program {
            Some(p) => p.clone(),
            None => PathBuf::from("/proc/self/exe"),
        };
        let mut cmd = Command::new(&program);
        cmd.arg0("procyard-resultworker")
            .env(ENV_WORKER, self.shared.owner.as_raw().to_string())
            .env(ENV_MAX_WORKERS, config.max_workers.max(1).to_string())
            .env(ENV_REUSE, config.jobs_per_process().to_string())
            .env(ENV_DIRECT, DIRECT_FD.to_string())
            .pass_fd(direct_write, DIRECT_FD)
            .stdin(Stdio::Fd(job_read))
            .stdout(Stdio::Fd(result_write))
            .stderr(Stdio::Inherit)
            .grouping(Grouping::NewProcessGroup)
            .parent_death_signal(Signal::KILL);
        let spawned = cmd.spawn();
        // Closes this process's copies of the worker's ends.
        drop(cmd);
        let mut child = spawned.map_err(start_err)?;
        for read_end in [&result_read, &direct_read] {
            rustix::io::ioctl_fionbio(read_end, true)
                .map_err(|e| Error::os("make the result pipe non-blocking", e))?;
        }
        let registry = self.poll.registry();
        let reader = File::from(result_read);
        let direct = File::from(direct_read);
        registry
            .register(&mut child, PIDFD, Interest::READABLE)
            .and_then(|()| {
                registry.register(
                    &mut procyard_core::mio::unix::SourceFd(&raw(&reader)),
                    READER,
                    Interest::READABLE,
                )
            })
            .and_then(|()| {
                let direct = &mut procyard_core::mio::unix::SourceFd(&raw(&direct));
                registry.register(direct, DIRECT, Interest::READABLE)
            })
            .map_err(|e| Error::os("watch the worker", e))?;
        lock(&self.shared.status).worker_pid = Some(child.id());
        let mut file = File::from(job_write);
        {
            let mut link = lock(&self.shared.link);
            let mut ok = true;
            for (_, payload) in link.backlog.drain(..) {
                if ok && wire::write_frame(&mut file, &payload).is_err() {
                    ok = false;
                }
            }
            if self.shared.stop.get().is_some() {
                let payload = wire::encode_request(&Request::Stop { grace_ms: 0 }, &[]);
                let _ = wire::write_frame(&mut file, &payload);
            } else if ok {
                link.file = Some(file);
            }
        }
        self.worker = Some(Running {
            child,
            reader,
            decoder: FrameDecoder::new(),
            direct,
            direct_decoder: FrameDecoder::new(),
            started: Instant::now(),
        });
        Ok(())
    }
}

fn raw(fd: &impl std::os::fd::AsRawFd) -> std::os::fd::RawFd {
    fd.as_raw_fd()
}

/// Completes the future a result frame names; a malformed frame fails only its own key.
fn dispatch(shared: &Shared, payload: Vec<u8>) {
    let (key, outcome) = match wire::decode_result(payload) {
        Decoded::Result { key, outcome } => (key, outcome.map(Arc::from).map_err(Error::from)),
        Decoded::BadBody { key, reason } => (key, Err(Error::Malformed { reason })),
        Decoded::NoKey { len } => {
            tracing::warn!(len, "procyard-resultworker: ignoring a result frame without a key");
            return;
        }
    };
    let slot = lock_map(&shared.keys).remove(&key).and_then(|w| w.upgrade());
    if let Some(slot) = slot {
        slot.set(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::future::{Key, ResultFuture, Slot};
    use crate::wire::{TAG_ERROR, TAG_VALUE, WireError, encode_report, encode_result, error_body};
    use procyard_core::mio::Waker;

    fn shared(config: Config) -> Arc<Shared> {
        let poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), Token(0)).unwrap();
        Arc::new(Shared::new(config, waker))
    }

    fn pending(shared: &Shared, key: u64) -> ResultFuture<String> {
        let slot = Arc::new(Slot::default());
        lock_map(&shared.keys).insert(key, Arc::downgrade(&slot));
        ResultFuture::new(Key(key), slot, Arc::clone(&shared.keys))
    }

    #[test]
    fn resultworker_r1_malformed_frame_fails_only_its_own_result() {
        let shared = shared(Config::default());
        let a = pending(&shared, 1);
        let b = pending(&shared, 2);
        let c = pending(&shared, 3);
        dispatch(&shared, vec![1, 2, 3]);
        dispatch(&shared, encode_result(2, &[TAG_ERROR, b'{', b'x']));
        dispatch(&shared, encode_result(99, &encode_report(TAG_VALUE, b"\"nobody\"")));
        dispatch(&shared, encode_result(1, &encode_report(TAG_VALUE, b"\"a\\nb\"")));
        let stopped = encode_report(TAG_ERROR, &error_body(&WireError::Stopped));
        dispatch(&shared, encode_result(3, &stopped));
        assert_eq!(a.try_get().unwrap().unwrap(), "a\nb");
        assert!(matches!(b.try_get(), Some(Err(Error::Malformed { .. }))));
        assert!(matches!(c.try_get(), Some(Err(Error::Stopped))));
        assert!(lock_map(&shared.keys).is_empty(), "set keys are removed");
    }

    #[test]
    fn resultworker_r2_worker_loss_fails_sent_jobs_not_the_backlog() {
        let shared = shared(Config::default());
        let sent = pending(&shared, 1);
        let queued = pending(&shared, 2);
        lock(&shared.link).backlog.push((2, Vec::new()));
        shared.fail_sent(&Error::WorkerLost);
        assert!(matches!(sent.try_get(), Some(Err(Error::WorkerLost))));
        assert!(queued.try_get().is_none());
        assert_eq!(lock_map(&shared.keys).len(), 1);
    }

    #[test]
    fn restart_backoff_doubles_up_to_the_cap() {
        let config =
            Config::default().backoff(Duration::from_millis(10), Duration::from_millis(50));
        let mut listener = Listener::new(shared(config), Poll::new().unwrap());
        // The restart is due `delay` after some instant within the call: bracket that instant
        // (this thread may be preempted for any time in between on a loaded machine).
        for expected in [10, 20, 40, 50, 50].map(Duration::from_millis) {
            let before = Instant::now();
            listener.schedule_restart();
            let after = Instant::now();
            let at = listener.restart_at.unwrap().instant();
            assert!(at >= before + expected, "due before {expected:?}");
            assert!(at <= after + expected, "due after {expected:?}");
        }
    }
}
