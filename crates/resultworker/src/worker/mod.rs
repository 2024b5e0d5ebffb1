//! The worker process: this same program started again by exec, single-threaded, which
//! forks one child per function job (or spawns the command) up to `max_workers` at once and
//! sends each outcome back as a frame.
//!
//! Its stdin is the request pipe and its stdout the result pipe; both are moved to private
//! descriptors at start, so a job that prints writes to stderr. Function children report
//! through one pipe they all share (see `write_report`), or, for a small result, straight to
//! the application on the direct pipe it passed (descriptor `DIRECT_FD`), with a note to the
//! worker (see `Shell::report`); commands through their stdout. It
//! dies with the application: parent-death signal (set by the spawner) and end of file on the
//! request pipe. It installs no signal handler, so TERM and INT end it.
//!
//! # Shape
//!
//! - `state.rs`: the decisions, a closed state machine (`Event` → `State::step` → `Action`s)
//!   with no process, descriptor or clock in it, unit-tested per event.
//! - `shell.rs`: the `mio` loop that turns readiness into events and performs actions.
//! - `children.rs`: starting jobs (spare children, forks, spawns) and reading their reports.
//! - `job.rs`: a job process started by exec, for a worker that has other threads.
//! - `process.rs`: small pipe helpers shared by the worker and its children.
//! - `zygote.rs`: the small process that forks the children of a fork per job.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use procyard_core::mio::unix::SourceFd;
use procyard_core::mio::{Interest, Poll};

use crate::job::registered;
use crate::mode::{ENV_DIRECT, ENV_REUSE};

mod children;
mod job;
mod process;
mod shell;
mod state;
mod zygote;

pub(crate) use job::run_job;
use process::raw;
use shell::{BIRTHS, IN, OUT, REPORTS, Shell, WAKE};

/// Runs the worker until it is stopped or its parent goes away; returns the exit code.
///
/// `exec_jobs`: this process has other threads (the program started an async runtime or a
/// thread pool before calling `init`), so forking a job from it would be unsound; each
/// function job is then a new process of this program started by exec (see [`run_job`]), and
/// children are not reused.
pub(crate) fn run(max_workers: usize, exec_jobs: bool) -> i32 {
    match new_shell(max_workers, exec_jobs).and_then(|mut shell| shell.run()) {
        Ok(code) => code,
        Err(e) => {
            // Nobody to tell but the exit code (and tracing, when the program set it up): the
            // application sees the worker die and fails its jobs with `WorkerLost`.
            tracing::error!(error = %e, "procyard-resultworker: the worker failed");
            1
        }
    }
}

/// Moves a standard descriptor to a private close-on-exec one.
fn take_std(fd: impl AsFd) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 3)?)
}

/// The direct pipe to the application that the worker inherited (see `ENV_DIRECT`), made
/// non-blocking: a child whose result does not fit in it now sends it through the worker.
fn direct_pipe() -> Option<OwnedFd> {
    let fd = std::env::var(ENV_DIRECT).ok()?.parse().ok()?;
    let fd = procyard_core::ReadyWriter::inherited(fd).ok()?.into_fd();
    rustix::io::ioctl_fionbio(&fd, true).ok()?;
    Some(fd)
}

fn new_shell(max_workers: usize, exec_jobs: bool) -> io::Result<Shell> {
    let max_jobs: usize = std::env::var(ENV_REUSE).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let reuse = !exec_jobs && max_jobs > 0;
    let (reports, reports_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let functions = registered();
    let direct = direct_pipe();
    // A fork per job: the zygote is forked first, while the worker is small (see `zygote`).
    let zygote = if exec_jobs || reuse {
        None
    } else {
        match zygote::fork() {
            Ok(zygote::Side::Zygote(ends)) => {
                drop(reports);
                zygote::run(ends, &functions, &reports_write)
            }
            Ok(zygote::Side::Worker(zygote)) => Some(zygote),
            Err(e) => {
                tracing::warn!(error = %e, "procyard-resultworker: no zygote; the worker forks");
                None
            }
        }
    };
    let input = take_std(io::stdin().as_fd())?;
    let output = take_std(io::stdout().as_fd())?;
    let null = std::fs::OpenOptions::new().read(true).open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(io::stderr().as_fd())?;
    rustix::io::ioctl_fionbio(&input, true)?;
    rustix::io::ioctl_fionbio(&output, true)?;
    // The read end only: the children's writes block (a write of up to PIPE_BUF bytes is
    // then all or nothing, never split or mixed with another child's).
    rustix::io::ioctl_fionbio(&reports, true)?;
    let poll = Poll::new()?;
    poll.registry().register(&mut SourceFd(&raw(&input)), IN, Interest::READABLE)?;
    poll.registry().register(&mut SourceFd(&raw(&output)), OUT, Interest::WRITABLE)?;
    poll.registry().register(&mut SourceFd(&raw(&reports)), REPORTS, Interest::READABLE)?;
    // Reuse mode with a direct pipe: children's notes are taken lazily (see
    // `Shell::take_notes`), and a report that must go through the worker wakes it here.
    let wake = match &direct {
        Some(_) if reuse => {
            let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            // The read end only: a child's announcement is never lost to a full pipe.
            rustix::io::ioctl_fionbio(&read, true)?;
            poll.registry().register(&mut SourceFd(&raw(&read)), WAKE, Interest::READABLE)?;
            Some((read, write))
        }
        _ => None,
    };
    if let Some(zygote) = &zygote {
        poll.registry().register(
            &mut SourceFd(&raw(zygote.births())),
            BIRTHS,
            Interest::READABLE,
        )?;
    }
    Ok(Shell::new(
        poll,
        std::fs::File::from(input),
        output,
        reports,
        (reports_write, direct, wake),
        max_workers,
        (reuse, max_jobs),
        (exec_jobs, zygote),
        functions,
    ))
}
