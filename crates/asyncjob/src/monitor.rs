//! The monitor: the detached process that runs the job, waits for it by pidfd and is the only
//! writer of the state file. It holds the state file's lock for its whole life, so a free lock
//! with a non-terminal state means it died.

use procyard_core::{
    Child, Command, DaemonStatus, Deadline, Exit, FileLock, Pid, ProcessIdentity, Signal, Stdio,
    exit_immediately, report,
};
use serde::{Deserialize, Serialize};

use crate::options::{JobSpec, Program};
use crate::state::{self, JobState, Status, unix_now};
use crate::subreaper::Adopter;
use crate::{Error, StartFailure};

/// What the monitor tells `start` when it cannot start the job (sent through the daemon status
/// pipe as JSON).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StartReport {
    pub kind: StartFailure,
    pub message: String,
}

impl StartReport {
    /// Parses a report; a plain message becomes a `detach` failure.
    pub fn parse(message: String) -> StartReport {
        serde_json::from_str(&message)
            .unwrap_or(StartReport { kind: StartFailure::Detach, message })
    }
}

/// Runs the monitor in the freshly daemonized process and ends the process; never returns (it
/// is a fork of the caller, whose code must not run twice).
pub(crate) fn run(spec: &JobSpec, status: DaemonStatus, lock: Option<FileLock>) -> ! {
    let code = monitor(spec, status);
    // The lock goes with the process; it must outlive every state write.
    drop(lock);
    exit_immediately(code)
}

fn fail(status: DaemonStatus, kind: StartFailure, message: String) -> i32 {
    let report = StartReport { kind, message };
    let text = serde_json::to_string(&report).unwrap_or_else(|_| report.message.clone());
    let _ = status.fail(&text);
    1
}

fn monitor(spec: &JobSpec, status: DaemonStatus) -> i32 {
    let me = ProcessIdentity::current().ok();
    let now = unix_now();
    let mut record = JobState {
        status: Status::Invoking,
        ppid: Pid::current().as_raw(),
        time: now as i64,
        started_at: Some(now),
        monitor_start_time: me.as_ref().map(|id| id.start_time),
        boot_id: Some(procyard_core::boot_id().to_owned()),
        command: spec.command_words(),
        ..JobState::absent()
    };
    let write = |record: &JobState| -> Result<(), Error> {
        match &spec.state {
            Some(path) => state::write(path, record),
            None => Ok(()),
        }
    };
    if let Err(e) = write(&record) {
        return fail(status, StartFailure::State, report(&e));
    }

    // Before the job exists, so every escapee of it is reparented to us.
    let adopter = Adopter::new();
    let mut child = match command(spec).spawn() {
        Ok(child) => child,
        Err(e) => {
            let kind = match &e {
                procyard_core::Error::SpawnCwd { .. } => StartFailure::Cwd,
                procyard_core::Error::Path { .. } => StartFailure::Output,
                _ => StartFailure::Spawn,
            };
            let message = report(&e);
            record.status = Status::Failed;
            record.error = Some(message.clone());
            record.error_kind = Some(kind);
            record.ended_at = Some(unix_now());
            let _ = write(&record);
            return fail(status, kind, message);
        }
    };

    record.status = Status::Running;
    record.pid = child.id().as_raw();
    record.started_at = Some(unix_now());
    record.job_start_time = ProcessIdentity::of(child.id()).ok().flatten().map(|id| id.start_time);
    if let Err(e) = write(&record) {
        let _ = child.kill_and_reap();
        return fail(status, StartFailure::State, report(&e));
    }
    if status.ready().is_err() {
        tracing::debug!("the caller of start went away before the job was reported running");
    }

    let (outcome, timed_out) = wait_job(&mut child, spec, &adopter);
    // Escapees are gone before the end is recorded: a `kill` that sees `finished` is done.
    adopter.finish(outcome.as_ref().ok().copied(), timed_out, spec.grace);
    record.ended_at = Some(unix_now());
    record.timed_out = timed_out;
    match outcome {
        Ok(exit) => {
            record.status = Status::Finished;
            record.exitstatus = exit.code().map(i32::from);
            record.signal = exit.signal();
        }
        Err(e) => {
            record.status = Status::Finished;
            record.error = Some(report(&e));
        }
    }
    match write(&record) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn command(spec: &JobSpec) -> Command {
    let mut cmd = match &spec.program {
        Some(Program::Argv(argv)) if !argv.is_empty() => {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            cmd
        }
        Some(Program::Shell(script)) => Command::shell(script),
        // `start` refuses a job without a command before forking.
        _ => Command::new("/bin/false"),
    };
    for (key, value) in &spec.env {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    let output = |path: &Option<std::path::PathBuf>| match path {
        None => Stdio::Null,
        Some(p) if spec.append => Stdio::Append(p.clone()),
        Some(p) => Stdio::Truncate(p.clone()),
    };
    cmd.current_dir(&spec.cwd)
        .stdin(Stdio::Null)
        .stdout(output(&spec.stdout))
        .stderr(output(&spec.stderr));
    cmd
}

/// Waits for the job; with a timeout, stops its group with TERM, then KILL after the grace.
fn wait_job(
    child: &mut Child,
    spec: &JobSpec,
    adopter: &Adopter,
) -> (procyard_core::Result<Exit>, bool) {
    let Some(timeout) = spec.timeout else {
        // Without a deadline the wait returns only with the exit (or an error).
        let outcome = match adopter.wait(child, None) {
            Ok(Some(exit)) => Ok(exit),
            Ok(None) => child.wait(),
            Err(e) => Err(e),
        };
        return (outcome, false);
    };
    match adopter.wait(child, Some(Deadline::after(timeout))) {
        Ok(Some(exit)) => return (Ok(exit), false),
        Ok(None) => {}
        Err(e) => return (Err(e), false),
    }
    tracing::debug!(pid = %child.id(), "timeout: stopping the job's process group");
    let _ = child.signal_group(Signal::TERM);
    match adopter.wait(child, Some(Deadline::after(spec.grace))) {
        Ok(Some(exit)) => return (Ok(exit), true),
        Ok(None) => {}
        Err(e) => return (Err(e), true),
    }
    (child.kill_and_reap(), true)
}
