//! Worker mode: whether this process is a worker its parent started, and what a worker-mode
//! process does when its `main` did not call `init` first and reaches `ResultWorker::start`.
//!
//! Without that refusal each copy would start another worker from the same binary, which
//! would run `main` again and start another: a chain of thousands of processes, and the
//! application told only after its ready timeout.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use procyard_core::event::retry_interrupted;

use crate::wire::{self, TAG_ERROR, WireError, encode_report, error_body, push_result};

/// Set (to the application's pid) in the worker's environment.
pub(crate) const ENV_WORKER: &str = "PROCYARD_RESULTWORKER_PARENT";
/// The worker's `max_workers`.
pub(crate) const ENV_MAX_WORKERS: &str = "PROCYARD_RESULTWORKER_MAX_WORKERS";
/// Set (to `WORKER_PID:CHILD_ID`) in the environment of a job process that a threaded worker
/// started by exec (see `worker::job`).
pub(crate) const ENV_JOB: &str = "PROCYARD_RESULTWORKER_JOB";
/// The descriptor a job process started by exec writes its report to.
pub(crate) const JOB_REPORT_FD: i32 = 3;

/// Set (to the descriptor's number) in the worker's environment: the write end of the direct
/// pipe, on which job children send small results straight to the application's listener
/// (see `worker::children`).
pub(crate) const ENV_DIRECT: &str = "PROCYARD_RESULTWORKER_DIRECT";
/// The descriptor the worker inherits the direct pipe as.
pub(crate) const DIRECT_FD: i32 = 3;

/// `Some(child_id)` when this process is a job process that its parent, a threaded worker,
/// started by exec.
pub(crate) fn job_mode() -> Option<usize> {
    let value = std::env::var(ENV_JOB).ok()?;
    let (worker, id) = value.split_once(':')?;
    let ppid = procyard_core::Pid::parent()?;
    if worker != ppid.as_raw().to_string() {
        return None;
    }
    id.parse().ok()
}

/// How many function jobs one job child runs before it exits: `0` for one (a fork per job,
/// see `Config::fork_per_job`), otherwise the limit (`usize::MAX` for none; see
/// `Config::max_jobs_per_process`).
pub(crate) const ENV_REUSE: &str = "PROCYARD_RESULTWORKER_REUSE";

/// The exit code of a worker-mode process whose `main` reached `ResultWorker::start`
/// (`EX_CONFIG`): the application reads it when the refusal frame could not be read (the
/// program wrote to stdout, the result pipe, before it).
pub(crate) const EXIT_INIT_NOT_CALLED: i32 = 78;

/// `Some(max_workers)` when this process was started as a worker by its parent.
pub(crate) fn worker_mode() -> Option<usize> {
    let parent = std::env::var(ENV_WORKER).ok()?;
    let ppid = procyard_core::Pid::parent()?;
    if parent.trim() != ppid.as_raw().to_string() {
        return None;
    }
    let max = std::env::var(ENV_MAX_WORKERS).ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    Some(usize::max(max, 1))
}

/// In a worker-mode process that reached `ResultWorker::start`: refuses with
/// [`WireError::InitNotCalled`] (see [`refuse`]).
pub(crate) fn refuse_start_in_worker_mode() -> ! {
    let program = program_name();
    let line = format!(
        "procyard-resultworker: {program}: main does not call procyard_resultworker::init() \
         first; this worker process reached ResultWorker::start and exits instead of starting \
         another worker\n"
    );
    refuse(&line, &WireError::InitNotCalled { program })
}

/// Whether this process has other threads (an async runtime or a pool started before `init`):
/// a worker then starts each function job by exec instead of forking it. When the count
/// cannot be read, the fork checks again.
pub(crate) fn is_threaded() -> bool {
    procyard_core::fork::thread_count().is_ok_and(|n| n > 1)
}

fn program_name() -> String {
    std::env::current_exe().map_or_else(|_| "this program".to_owned(), |p| p.display().to_string())
}

/// Sends `error` to the application in place of the ready message (its stdout is the result
/// pipe) and exits with [`EXIT_INIT_NOT_CALLED`], without running destructors or flushing
/// stdout (whatever `main` printed there would land in the result pipe).
///
/// The one `line` on stderr is the exception to "a library does not write to stderr": this
/// process is a copy of the program that exits at once, and the person who wrote its `main`
/// reads that stream. It is written whole, before the refusal (the application kills the
/// copy once it has the refusal).
fn refuse(line: &str, error: &WireError) -> ! {
    let _ = write_all(io::stderr().as_fd(), line.as_bytes());
    let mut frame = Vec::new();
    if push_result(&mut frame, wire::READY_KEY, &encode_report(TAG_ERROR, &error_body(error))) {
        // Best effort: the exit code tells the application too.
        let _ = write_all(io::stdout().as_fd(), &frame);
    }
    procyard_core::exit_immediately(EXIT_INIT_NOT_CALLED)
}

fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match retry_interrupted(|| rustix::io::write(fd, bytes).map_err(Into::into))? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => bytes = &bytes[n..],
        }
    }
    Ok(())
}
