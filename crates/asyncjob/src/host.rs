//! Hosting the monitor in another process, for callers of
//! [`AsyncJob::start`](crate::AsyncJob::start) that have threads (where forking is unsound):
//! the `procyard-asyncjob` binary (found by core's one companion rule), or the caller's own
//! program when its `main` calls [`run_if_monitor`].

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use procyard_core::companion::{Companion, find_companion};
use procyard_core::{DaemonConfig, Daemonized, Deadline, FileLock, Pid, Readiness, daemonize};

use crate::entry::{self, MONITOR_HOST_ARG, report, report_failure};
use crate::monitor::{self, StartReport};
use crate::options::JobSpec;
use crate::{Error, Result, StartFailure};

/// The monitor host as core's companion lookup knows it; the install command is run in
/// procyard's source tree.
pub(crate) const MONITOR_HOST: Companion = Companion {
    names: &["procyard-asyncjob"],
    env_var: "PROCYARD_ASYNCJOB_BIN",
    install: "cargo install --locked --path crates/asyncjob",
};

/// How long a threaded caller waits for the monitor host's report.
const HOST_REPORT_LIMIT: Duration = Duration::from_secs(30);

pub(crate) fn start_failed(spec: &JobSpec, kind: StartFailure, message: String) -> Error {
    Error::StartFailed { path: spec.state.clone().unwrap_or_default(), kind, message }
}

/// Runs the monitor in a `procyard-asyncjob` process (forking a threaded process is
/// unsound): the spec goes as an argument, the report comes back on descriptor 3, and the
/// state lock is shared through descriptor 4.
pub(crate) fn detach_by_exec(spec: &JobSpec, lock: Option<&FileLock>) -> Result<Option<Pid>> {
    let program = host_program(spec)?;
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
    if matches!(readiness, Ok(Readiness::Ready(_))) {
        let _ = host.wait_timeout(HOST_REPORT_LIMIT);
    } else {
        // Silent: it is not going to report; it must not linger either.
        let _ = host.kill_and_reap();
    }
    match readiness {
        Ok(Readiness::Ready(line)) => match line.strip_prefix("ok ") {
            Some(pid) => Ok(pid.trim().parse().ok().and_then(Pid::from_raw)),
            None => {
                let report =
                    StartReport::parse(line.strip_prefix("err ").unwrap_or(&line).to_owned());
                Err(start_failed(spec, report.kind, report.message))
            }
        },
        Ok(Readiness::TimedOut) => Err(start_failed(
            spec,
            StartFailure::Detach,
            format!("{} did not report within {HOST_REPORT_LIMIT:?}", program.display()),
        )),
        Ok(_) => Err(start_failed(
            spec,
            StartFailure::Detach,
            format!("{} exited without reporting", program.display()),
        )),
        Err(e) => Err(sys("read the monitor's report", e)),
    }
}

/// The program that hosts the monitor: the one set with
/// [`AsyncJobOptions::monitor_program`](crate::AsyncJobOptions::monitor_program), else the
/// companion rule's `procyard-asyncjob`, else this program when its `main` called
/// [`run_if_monitor`] (never in place of a program `PROCYARD_ASYNCJOB_BIN` names).
fn host_program(spec: &JobSpec) -> Result<PathBuf> {
    if let Some(program) = &spec.monitor_program {
        return Ok(program.clone());
    }
    let source = match find_companion(&MONITOR_HOST) {
        Ok(program) => return Ok(program),
        Err(source) => source,
    };
    let named = std::env::var_os(MONITOR_HOST.env_var).is_some_and(|v| !v.is_empty());
    match std::env::current_exe() {
        Ok(me) if entry::entry_present() && !named => Ok(me),
        _ => Err(Error::NoMonitorProgram { source }),
    }
}

/// Call this first in `main`: if the process was started to host a job's monitor (for a
/// multi-threaded caller of [`AsyncJob::start`](crate::AsyncJob::start)), it does and exits
/// (it never returns then); otherwise it returns at once and lets `start` host monitors by
/// executing this program when no `procyard-asyncjob` program is found
/// (`PROCYARD_ASYNCJOB_BIN`, beside the program, on `PATH`), so a project that only depends
/// on the crate needs nothing installed.
///
/// Call it before any thread starts: the host detaches the monitor by forking, which a
/// multi-threaded process cannot do safely. Under `#[tokio::main]` the runtime's threads exist
/// before the body of `main` runs, so write a plain `fn main` that calls this and then builds
/// the runtime.
///
/// ```no_run
/// fn main() {
///     procyard_asyncjob::run_if_monitor();
///     // ... the program, threads and all; AsyncJob::start works without any companion.
/// }
/// ```
pub fn run_if_monitor() {
    let Some(spec) = entry::monitor_mode_spec() else {
        entry::mark_present();
        return;
    };
    if procyard_core::fork::thread_count().is_ok_and(|n| n != 1) {
        entry::refuse(
            "procyard_asyncjob::run_if_monitor() ran after threads had started; call it first \
             in a plain `fn main`, before any thread or async runtime starts",
        );
    }
    std::process::exit(host_monitor(&spec))
}

/// Hosts a monitor for a threaded caller of [`AsyncJob::start`]: `procyard-asyncjob
/// __monitor-host SPEC` with the report pipe on descriptor 3 and the state lock on
/// descriptor 4. Returns the exit code of the host (the monitor itself never returns).
#[doc(hidden)]
pub fn host_monitor(spec_json: &str) -> i32 {
    let spec: JobSpec = match serde_json::from_str(spec_json) {
        Ok(spec) => spec,
        Err(e) => {
            report_failure(StartFailure::Detach, format!("invalid job spec: {e}"));
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
            report_failure(StartFailure::Detach, procyard_core::report(&e));
            1
        }
    }
}
