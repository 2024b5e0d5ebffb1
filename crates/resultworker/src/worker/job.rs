//! A job process started by exec: what a worker that has other threads does instead of
//! forking (the program started an async runtime or a thread pool before calling `init`, as
//! under `#[tokio::main]`). Forking a multi-threaded process is unsound; executing a program
//! is not. The job process is this program again: its `main` reaches `init`, which sees
//! [`ENV_JOB`] and runs the one job given on its stdin, reports it into the worker's shared
//! report pipe (inherited as descriptor [`JOB_REPORT_FD`]) the way a forked child does, and
//! exits. Slower than a fork (a whole program start per job), but sound.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::panic::AssertUnwindSafe;

use procyard_core::{Child, Command, Signal, Stdio};

use super::process::write_report;
use crate::job::{ErasedFn, registered};
use crate::mode::{ENV_DIRECT, ENV_JOB, ENV_MAX_WORKERS, ENV_REUSE, ENV_WORKER, JOB_REPORT_FD};
use crate::wire::{TAG_ERROR, TAG_VALUE, WireError, error_body};

/// In the worker: starts the job process for child `id` and hands it `frame` (the job
/// message, framed) on its stdin.
pub(super) fn spawn_job(id: usize, frame: &[u8], reports: &OwnedFd) -> Result<Child, WireError> {
    let failed = |what: &str, e: &(dyn std::error::Error + 'static)| WireError::Failed {
        message: format!("unable to {what}: {}", procyard_core::report(e)),
    };
    let program = std::env::current_exe().map_err(|e| failed("find this program", &e))?;
    let reports = reports.try_clone().map_err(|e| failed("share the report pipe", &e))?;
    let (job_read, job_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| failed("create a job pipe", &std::io::Error::from(e)))?;
    let mut command = Command::new(program);
    command
        .arg0("procyard-resultworker-job")
        .env(ENV_JOB, format!("{}:{id}", std::process::id()))
        .env_remove(ENV_WORKER)
        .env_remove(ENV_MAX_WORKERS)
        .env_remove(ENV_REUSE)
        .env_remove(ENV_DIRECT)
        .stdin(Stdio::Fd(job_read))
        .pass_fd(reports, JOB_REPORT_FD)
        .parent_death_signal(Signal::KILL);
    let mut child =
        command.spawn().map_err(|e| WireError::Failed { message: procyard_core::report(&e) })?;
    drop(command);
    // Blocking, as for a spare: the job process reads its job once its `main` reaches `init`.
    if !super::process::write_all(&job_write, frame) {
        let _ = child.kill_and_reap();
        let message = "the job's process ended before taking the job (does its main call \
                       procyard_resultworker::init() first?)";
        return Err(WireError::Failed { message: message.into() });
    }
    Ok(child)
}

/// In a job process (see the module docs): runs the job and exits; never returns.
pub(crate) fn run_job(id: usize) -> ! {
    // Opened anew through /proc/self/fd (the inherited descriptor is made close-on-exec, so
    // what the function starts does not hold the worker's report pipe). Core offers this for
    // readiness pipes; it is the same mechanism.
    let reports = procyard_core::ReadyWriter::inherited(JOB_REPORT_FD)
        .ok()
        .map(procyard_core::ReadyWriter::into_fd);
    let mut stdin = std::io::stdin().lock();
    let message = procyard_core::frame::read_frame_bytes(&mut stdin, procyard_core::MAX_FRAME);
    let (tag, body) = match message {
        Ok(Some(message)) => run_function(&registered(), &message),
        Ok(None) | Err(_) => {
            let message = "the job process got no job".to_owned();
            (TAG_ERROR, error_body(&WireError::Failed { message }))
        }
    };
    let code = match reports {
        Some(fd) if write_report(&fd, id, tag, &body) => 0,
        _ => 70,
    };
    procyard_core::exit_immediately(code)
}

/// Runs the function a job message names (from `functions`) and returns its report: the
/// tag ([`TAG_VALUE`] or [`TAG_ERROR`]) and the body.
pub(super) fn run_function(functions: &HashMap<String, ErasedFn>, message: &[u8]) -> (u8, Vec<u8>) {
    match lookup(functions, message) {
        Ok((f, body)) => call(f, body),
        Err(report) => report,
    }
}

/// A report: its tag ([`TAG_VALUE`] or [`TAG_ERROR`]) and its body.
type Report = (u8, Vec<u8>);

/// The function a job message names (from `functions`) and its JSON arguments; or, if there
/// is none, the report that says so.
pub(super) fn lookup<'a>(
    functions: &'a HashMap<String, ErasedFn>,
    message: &'a [u8],
) -> Result<(&'a ErasedFn, &'a [u8]), Report> {
    let failed = |message: &str| {
        let message = message.to_owned();
        (TAG_ERROR, error_body(&WireError::Failed { message }))
    };
    let Some((_key, message)) = crate::wire::split_job_message(message) else {
        return Err(failed("truncated job message"));
    };
    let Some((len, rest)) = message.split_first_chunk::<4>() else {
        return Err(failed("truncated job message"));
    };
    let len = u32::from_be_bytes(*len) as usize;
    if len > rest.len() {
        return Err(failed("truncated job message"));
    }
    let (name, body) = rest.split_at(len);
    let name = String::from_utf8_lossy(name);
    match functions.get(name.as_ref()) {
        Some(f) => Ok((f, body)),
        None => {
            let error = WireError::UnknownFunction { name: name.into_owned() };
            Err((TAG_ERROR, error_body(&error)))
        }
    }
}

/// Calls `f` with `body` and returns its report (a panic is a failure).
pub(super) fn call(f: &ErasedFn, body: &[u8]) -> (u8, Vec<u8>) {
    let failed = |message: String| (TAG_ERROR, error_body(&WireError::Failed { message }));
    match std::panic::catch_unwind(AssertUnwindSafe(|| f(body))) {
        Ok(Ok(value)) => (TAG_VALUE, value),
        Ok(Err(message)) => failed(message),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".into());
            failed(format!("panicked: {what}"))
        }
    }
}
