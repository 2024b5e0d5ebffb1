//! Hosting the monitor in the `procyard-asyncjob` binary, for callers of
//! [`AsyncJob::start`](crate::AsyncJob::start) that have threads (where forking is unsound).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use procyard_core::{DaemonConfig, Daemonized, Deadline, FileLock, Pid, Readiness, daemonize};

use crate::monitor::{self, StartReport};
use crate::options::JobSpec;
use crate::{Error, Result, StartFailure};

/// The argument that makes `procyard-asyncjob` host a monitor for a threaded caller.
#[doc(hidden)]
pub const MONITOR_HOST_ARG: &str = "__monitor-host";

/// How long a threaded caller waits for the monitor host's report.
const HOST_REPORT_LIMIT: Duration = Duration::from_secs(30);

pub(crate) fn start_failed(spec: &JobSpec, kind: StartFailure, message: String) -> Error {
    Error::StartFailed { path: spec.state.clone().unwrap_or_default(), kind, message }
}

/// Runs the monitor in a `procyard-asyncjob` process (forking a threaded process is
/// unsound): the spec goes as an argument, the report comes back on descriptor 3, and the
/// state lock is shared through descriptor 4.
pub(crate) fn detach_by_exec(spec: &JobSpec, lock: Option<&FileLock>) -> Result<Option<Pid>> {
    let program = spec
        .monitor_program
        .clone()
        .or_else(|| std::env::var_os("PROCYARD_ASYNCJOB_BIN").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("procyard-asyncjob"));
    let spec_json = serde_json::to_string(spec)
        .map_err(|e| start_failed(spec, StartFailure::Detach, e.to_string()))?;
    let sys = |action, source| Error::Sys {
        action,
        path: spec.state.clone().unwrap_or_default(),
        source,
    };
    let (mut reader, writer) = procyard_core::ready_pipe().map_err(|e| sys("make a pipe", e))?;
    let mut cmd = procyard_core::Command::new(&program);
    cmd.arg(MONITOR_HOST_ARG)
        .arg(spec_json)
        .stdin(procyard_core::Stdio::Null)
        .stdout(procyard_core::Stdio::Null)
        .stderr(procyard_core::Stdio::Null)
        .pass_fd(writer.into_fd(), 3);
    if let Some(lock) = lock {
        let shared = lock.file().try_clone().map_err(|e| {
            sys(
                "share the lock",
                procyard_core::Error::Path {
                    action: "duplicate",
                    path: lock.path().to_owned(),
                    source: e,
                },
            )
        })?;
        cmd.pass_fd(OwnedFd::from(shared), 4);
    }
    let mut host = cmd
        .spawn()
        .map_err(|e| start_failed(spec, StartFailure::Detach, procyard_core::report(&e)))?;
    let readiness = reader.wait(Deadline::after(HOST_REPORT_LIMIT));
    let _ = host.wait_timeout(HOST_REPORT_LIMIT);
    match readiness {
        Ok(Readiness::Ready(line)) => match line.strip_prefix("ok ") {
            Some(pid) => Ok(pid.trim().parse().ok().and_then(Pid::from_raw)),
            None => {
                let report =
                    StartReport::parse(line.strip_prefix("err ").unwrap_or(&line).to_owned());
                Err(start_failed(spec, report.kind, report.message))
            }
        },
        Ok(_) => Err(start_failed(
            spec,
            StartFailure::Detach,
            format!("{} exited without reporting", program.display()),
        )),
        Err(e) => Err(sys("read the monitor's report", e)),
    }
}

/// Hosts a monitor for a threaded caller of [`AsyncJob::start`]: `procyard-asyncjob
/// __monitor-host SPEC` with the report pipe on descriptor 3 and the state lock on
/// descriptor 4. Returns the exit code of the host (the monitor itself never returns).
#[doc(hidden)]
pub fn host_monitor(spec_json: &str) -> i32 {
    let report = |line: &str| {
        if let Ok(writer) = procyard_core::ReadyWriter::inherited(3) {
            let _ = writer.notify(line);
        }
    };
    let failure = |kind: StartFailure, message: String| {
        let text = serde_json::to_string(&StartReport { kind, message }).unwrap_or_default();
        format!("err {text}")
    };
    let spec: JobSpec = match serde_json::from_str(spec_json) {
        Ok(spec) => spec,
        Err(e) => {
            report(&failure(StartFailure::Detach, format!("invalid job spec: {e}")));
            return 2;
        }
    };
    // The lock arrives as descriptor 4 (an open file description shared with the caller);
    // it stays open, unowned, in the daemon for its whole life, and the job never inherits it
    // (procyard-core's spawn passes only stdio).
    match daemonize(&DaemonConfig::default()) {
        Ok(Daemonized::Daemon(status)) => monitor::run(&spec, status, None),
        Ok(Daemonized::Parent(pid)) => {
            report(&format!("ok {pid}"));
            0
        }
        Err(procyard_core::Error::DetachFailed { message }) => {
            report(&format!("err {message}"));
            1
        }
        Err(e) => {
            report(&failure(StartFailure::Detach, procyard_core::report(&e)));
            1
        }
    }
}
