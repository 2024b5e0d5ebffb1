//! The monitor: the detached process that runs the job, waits for it by pidfd and is the only
//! writer of the state file. It holds the state file's lock for its whole life, so a free lock
//! with a non-terminal state means it died.
//!
//! The monitor records `invoking`, spawns the job and records `running`; then its event loop
//! ([`shell`]) drives the pure state machine of [`watch`] until the job ends, and the monitor
//! records how.

mod adopter;
mod shell;
mod watch;

use procyard_core::{
    Command, DaemonStatus, FileLock, Pid, ProcessIdentity, Stdio, exit_immediately, report,
};
use serde::{Deserialize, Serialize};

use self::adopter::Adopter;
use crate::options::{JobSpec, Program};
use crate::state::{JobState, Status, unix_now};
use crate::store;
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
            Some(path) => store::write(path, record),
            None => Ok(()),
        }
    };
    if let Err(e) = write(&record) {
        return fail(status, StartFailure::State, report(&e));
    }

    // Before the job exists, so every escapee of it is reparented to us.
    let mut adopter = Adopter::new();
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

    // Escapees are gone before the end is recorded: a `kill` that sees `finished` is done.
    let ending = shell::watch(&mut child, spec, &mut adopter);
    record.status = Status::Finished;
    record.ended_at = Some(unix_now());
    record.timed_out = ending.timed_out;
    match ending.outcome {
        Ok(exit) => {
            record.exitstatus = exit.code().map(i32::from);
            record.signal = exit.signal();
        }
        Err(why) => record.error = Some(why),
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
