//! [`AsyncJob`]: start, check, kill, reap and wait on a job tracked by a state file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use procyard_core::{
    DaemonConfig, Daemonized, Deadline, Escalation, FileLock, Pid, ProcStat, ProcessIdentity,
    Signal, StopLadder, daemonize,
};

use crate::monitor::{self, StartReport};
use crate::options::{AsyncJobOptions, JobSpec};
use crate::state::{JobState, Status};
use crate::store;
use crate::{Error, Result, StartFailure};
use crate::{host, pidfd};

/// How long [`AsyncJob::signal`] and [`AsyncJob::kill`] wait for the monitor to record the
/// end after the signal.
pub const SIGNAL_SETTLE: Duration = Duration::from_secs(10);

/// A job run in the background by a detached monitor, and tracked through a state file, so
/// that each operation can come from a new process (a serf handler, a cron job, a shell).
#[derive(Clone, Debug)]
pub struct AsyncJob {
    spec: JobSpec,
}

impl AsyncJob {
    /// Starts building a job.
    pub fn options() -> AsyncJobOptions {
        AsyncJobOptions::new()
    }

    pub(crate) fn from_spec(spec: JobSpec) -> AsyncJob {
        AsyncJob { spec }
    }

    #[cfg(test)]
    pub(crate) fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// The state file (absolute), if the job has one.
    pub fn state_file(&self) -> Option<&Path> {
        self.spec.state.as_deref()
    }

    fn state_path(&self) -> Result<&Path> {
        self.spec.state.as_deref().ok_or(Error::NoStateFile)
    }

    fn path_for_errors(&self) -> PathBuf {
        self.spec.state.clone().unwrap_or_default()
    }

    /// Starts the job: detaches a monitor (its own session) that spawns the command in a
    /// process group of its own, and returns once the state says `running`.
    ///
    /// It refuses ([`Error::AlreadyExists`] or [`Error::Busy`]) when a job already holds the
    /// state file: two concurrent starts, from any processes, yield exactly one job. A command
    /// that cannot start (missing program or working directory, unwritable output file) is
    /// [`Error::StartFailed`], with the state recorded as `failed` when it can be written.
    ///
    /// In a single-threaded process the monitor is forked from this one (the fast path). In a
    /// multi-threaded process, where forking is unsound, the monitor is hosted by another
    /// process: the program set with [`AsyncJobOptions::monitor_program`], else
    /// `procyard-asyncjob` named by `PROCYARD_ASYNCJOB_BIN`, beside this program, in the
    /// directory above it or on `PATH` (core's [`find_companion`] rule), else this program
    /// itself when its `main` called [`run_if_monitor`](crate::run_if_monitor) first; with none
    /// of them, [`Error::NoMonitorProgram`], whose message says what to set, install or call.
    ///
    /// In a process started to host a monitor whose `main` did not call
    /// [`run_if_monitor`](crate::run_if_monitor) first, this never returns: the process refuses
    /// at once and exits (a monitor host never starts another), and the program that started
    /// it gets [`Error::StartFailed`] saying so.
    ///
    /// [`find_companion`]: procyard_core::companion::find_companion
    pub fn start(&self) -> Result<JobState> {
        if crate::entry::monitor_mode_spec().is_some() {
            crate::entry::refuse_nested_start();
        }
        if self.spec.program.is_none() {
            return Err(Error::NoCommand);
        }
        let mut lock = match &self.spec.state {
            Some(path) => {
                let Some(lock) = store::try_lock(path)? else {
                    let status = store::read(path)?.status;
                    if status == Status::Absent {
                        return Err(Error::Busy { path: path.clone() });
                    }
                    return Err(Error::AlreadyExists { path: path.clone(), status });
                };
                if let Some(mut existing) = store::read_raw(path)? {
                    if !existing.status.is_terminal() {
                        // We hold the lock, so no monitor does.
                        existing.status = Status::Lost;
                    }
                    return Err(Error::AlreadyExists {
                        path: path.clone(),
                        status: existing.status,
                    });
                }
                Some(lock)
            }
            None => None,
        };
        let single_threaded = procyard_core::fork::thread_count().is_ok_and(|n| n == 1);
        let monitor_pid = if single_threaded {
            self.detach_by_fork(lock.take())?
        } else {
            host::detach_by_exec(&self.spec, lock.as_ref())?
        };
        drop(lock);
        match &self.spec.state {
            Some(path) => store::read(path),
            None => Ok(JobState {
                status: Status::Running,
                ppid: monitor_pid.map_or(-1, Pid::as_raw),
                command: self.spec.command_words(),
                ..JobState::absent()
            }),
        }
    }

    fn start_failed(&self, kind: StartFailure, message: String) -> Error {
        host::start_failed(&self.spec, kind, message)
    }

    /// Forks the monitor from this (single-threaded) process.
    fn detach_by_fork(&self, lock: Option<FileLock>) -> Result<Option<Pid>> {
        match daemonize(&DaemonConfig::default()) {
            Ok(Daemonized::Daemon(status)) => monitor::run(&self.spec, status, lock),
            Ok(Daemonized::Parent(monitor_pid)) => Ok(Some(monitor_pid)),
            Err(procyard_core::Error::DetachFailed { message }) => {
                let report = StartReport::parse(message);
                Err(self.start_failed(report.kind, report.message))
            }
            Err(source) => Err(Error::Sys {
                action: "detach the monitor",
                path: self.path_for_errors(),
                source,
            }),
        }
    }

    /// The current state (`absent` without a state file or job; `lost` when the monitor died
    /// without recording an end).
    pub fn check(&self) -> Result<JobState> {
        match &self.spec.state {
            Some(path) => store::read(path),
            None => Ok(JobState::absent()),
        }
    }

    /// The current state as JSON, as `procyard-asyncjob check` prints it:
    /// `{"status":"absent"}` when there is no job.
    pub fn state_info(&self) -> Result<String> {
        self.check().map(|state| state.to_json())
    }

    /// Sends `signal` to the job's process group, if the job is `running` and its process is
    /// still the one the monitor started (pid + start time + boot). Then waits (up to
    /// [`SIGNAL_SETTLE`]) for the monitor to record the end, and returns the state it finds:
    /// `finished` with the signal when the signal ended the job, still `running` when the job
    /// survived it (SIGHUP to a job that ignores it, SIGSTOP).
    pub fn signal(&self, signal: Signal) -> Result<JobState> {
        let path = self.state_path()?;
        self.send(path, &store::read(path)?, signal)?;
        self.settle(path, Deadline::after(SIGNAL_SETTLE))
    }

    /// SIGKILLs the job's process group: [`signal`](AsyncJob::signal) with [`Signal::KILL`].
    pub fn kill(&self) -> Result<JobState> {
        self.signal(Signal::KILL)
    }

    /// Stops the job gracefully: SIGTERM to its process group, then SIGKILL if it has not
    /// ended within `grace`, and returns the state once the monitor has recorded the end (or,
    /// if even SIGKILL does not end it within [`SIGNAL_SETTLE`], the state then). The job is
    /// checked by identity before each signal, as for [`signal`](AsyncJob::signal).
    pub fn stop(&self, grace: Duration) -> Result<JobState> {
        let path = self.state_path()?;
        let ladder = StopLadder::new([(Signal::TERM, grace), (Signal::KILL, SIGNAL_SETTLE)]);
        let (first, mut stopping) = ladder.begin(Instant::now());
        self.send(path, &store::read(path)?, first)?;
        loop {
            let current = self.settle(path, stopping.deadline())?;
            if current.status != Status::Running {
                return Ok(current);
            }
            match stopping.escalate(Instant::now()) {
                Escalation::Send(signal) => match self.send(path, &current, signal) {
                    Ok(()) => {}
                    // It ended between the look and the signal: the state says how.
                    Err(Error::IdentityMismatch { .. }) => return store::read(path),
                    Err(e) => return Err(e),
                },
                Escalation::Wait => {}
                Escalation::Exhausted => return Ok(current),
            }
        }
    }

    /// Signals the job's process group, if `current` is a running job whose process is still
    /// the one the monitor started.
    fn send(&self, path: &Path, current: &JobState, signal: Signal) -> Result<()> {
        if current.status != Status::Running {
            return Err(Error::WrongStatus {
                path: path.to_owned(),
                status: current.status,
                expected: "running",
            });
        }
        // Pid 1 (any namespace's init) leading "its group" would make the group kill a
        // kill(-1): refused before anything else is looked at.
        if current.pid <= 1 {
            return Err(Error::RefusedSignalTarget { path: path.to_owned(), pid: current.pid });
        }
        let mismatch = || Error::IdentityMismatch { path: path.to_owned(), pid: current.pid };
        let pid = Pid::from_raw(current.pid).ok_or_else(mismatch)?;
        let identity = ProcessIdentity {
            pid,
            start_time: current.job_start_time.ok_or_else(mismatch)?,
            boot_id: current.boot_id.clone().ok_or_else(mismatch)?,
        };
        // Hold the job by pidfd while checking who it is: the pid cannot be recycled until the
        // monitor reaps it, which needs it to exit first.
        let _job = pidfd::open(pid).ok_or_else(mismatch)?;
        let alive = identity.is_running().map_err(|source| Error::Sys {
            action: "check the job's identity",
            path: path.to_owned(),
            source,
        })?;
        let leads_group =
            ProcStat::read(pid).ok().flatten().is_some_and(|s| s.pgid == pid.as_raw());
        if !alive || !leads_group {
            return Err(mismatch());
        }
        procyard_core::kill_process_group(pid, signal).map_err(|source| Error::Sys {
            action: "signal the job",
            path: path.to_owned(),
            source,
        })?;
        tracing::debug!(%pid, %signal, "signalled the job's process group");
        Ok(())
    }

    /// Waits until the monitor records the end or `deadline` passes; the state then.
    fn settle(&self, path: &Path, deadline: Deadline) -> Result<JobState> {
        match self.wait_until(path, Some(deadline)) {
            Err(Error::Timeout { .. }) => store::read(path),
            other => other,
        }
    }

    /// Removes the state of a terminal job (`finished`, `failed` or `lost`) and returns it;
    /// refuses a live one. A corrupt state with no monitor is reaped as `lost`.
    pub fn reap(&self) -> Result<JobState> {
        let path = self.state_path()?;
        // A terminal state whose lock is still held belongs to a monitor that is exiting
        // right after its last write: wait for it (by pidfd) rather than fail.
        let deadline = Deadline::after(SIGNAL_SETTLE);
        let mut looks = 0;
        let lock = loop {
            if let Some(lock) = store::try_lock(path)? {
                break lock;
            }
            let current = store::read(path)?;
            if !current.status.is_terminal() {
                return Err(Error::WrongStatus {
                    path: path.to_owned(),
                    status: current.status,
                    expected: "terminal",
                });
            }
            if deadline.is_expired() {
                return Err(Error::Busy { path: path.to_owned() });
            }
            match pidfd::monitor(&current) {
                Some(fd) => {
                    pidfd::wait_exit(&fd, Some(deadline));
                }
                None => {
                    looks += 1;
                    pidfd::pause(looks, Some(deadline));
                }
            }
        };
        let existing = match store::read_raw(path) {
            Ok(existing) => existing,
            // No monitor holds the lock, so nothing will ever rewrite a corrupt state: it is
            // reaped as a lost job rather than left to block the state file forever.
            Err(Error::CorruptState { source, .. }) => Some(JobState {
                status: Status::Lost,
                error: Some(format!("corrupt state file: {source}")),
                ..JobState::absent()
            }),
            Err(Error::StateTooLarge { size, .. }) => Some(JobState {
                status: Status::Lost,
                error: Some(format!("corrupt state file: {size} bytes")),
                ..JobState::absent()
            }),
            Err(e) => return Err(e),
        };
        let Some(mut current) = existing else {
            return Err(Error::WrongStatus {
                path: path.to_owned(),
                status: Status::Absent,
                expected: "terminal",
            });
        };
        if !current.status.is_terminal() {
            current.status = Status::Lost;
        }
        store::remove(path, &lock)?;
        Ok(current)
    }

    /// Blocks until the job is terminal (or absent), or until `timeout` passes
    /// ([`Error::Timeout`]). It waits on a pidfd of the monitor, not by polling the file.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<JobState> {
        match &self.spec.state {
            Some(path) => self.wait_until(path, timeout.map(Deadline::after)),
            None => Ok(JobState::absent()),
        }
    }

    fn wait_until(&self, path: &Path, deadline: Option<Deadline>) -> Result<JobState> {
        let mut looks = 0;
        loop {
            let current = store::read(path)?;
            if current.status.is_terminal() || current.status == Status::Absent {
                return Ok(current);
            }
            if deadline.is_some_and(Deadline::is_expired) {
                return Err(Error::Timeout { path: path.to_owned() });
            }
            match pidfd::monitor(&current) {
                Some(fd) => {
                    if !pidfd::wait_exit(&fd, deadline) {
                        return Err(Error::Timeout { path: path.to_owned() });
                    }
                }
                // The monitor is gone (or not yet named): the next read tells terminal or
                // lost; a lock still held by a `start` that is returning lets go at once.
                None => {
                    looks += 1;
                    pidfd::pause(looks, deadline);
                }
            }
        }
    }
}
