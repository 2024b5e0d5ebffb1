//! Small I/O helpers of the worker and its job children: reading and writing pipes, the
//! report chunks, spawning a command.

use std::io;
use std::os::fd::OwnedFd;

use procyard_core::event::retry_interrupted;
use procyard_core::{Child, FrameDecoder, Signal, Stdio, StreamState};

use super::shell::JobChild;
use super::state::Kind;
use crate::mode::{ENV_MAX_WORKERS, ENV_REUSE, ENV_WORKER};
use crate::output::OUTPUT_LIMIT;
use crate::wire::{CommandSpec, WireError};

pub(super) fn raw(fd: &impl std::os::fd::AsRawFd) -> std::os::fd::RawFd {
    fd.as_raw_fd()
}

/// The size of the worker's one read buffer. Every page the worker writes after a fork is
/// copied (the fork shared it copy-on-write): the buffer is allocated once and reused, and a
/// read touches only the pages it fills, where a zeroed buffer on the stack would touch all
/// of them for every read.
pub(super) const SCRATCH: usize = 8 * 1024;

/// [`FrameDecoder::read_from`] through the worker's `scratch` buffer (see [`SCRATCH`]).
pub(super) fn read_small(
    input: &mut std::fs::File,
    decoder: &mut FrameDecoder,
    chunk: &mut [u8],
) -> procyard_core::Result<StreamState> {
    use std::io::Read;
    loop {
        match retry_interrupted(|| input.read(chunk)) {
            Ok(0) => return decoder.finish().map(|()| StreamState::Closed),
            Ok(n) => decoder.feed(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(StreamState::Open),
            Err(e) => return Err(procyard_core::Error::Os { action: "read requests", source: e }),
        }
    }
}

/// Writes below this size fit in a pipe without blocking while a previous small job waits in
/// it (`PIPE_BUF`, and far below the 64 KiB pipe capacity).
pub(super) const PIPE_ATOMIC: usize = 4096;
/// Jobs written ahead into one reusable child's pipe, at most.
pub(super) const PIPELINE_DEPTH: usize = 8;
/// Bytes written ahead into one reusable child's pipe, at most (a quarter of its capacity).
pub(super) const PIPELINE_BYTES: usize = 16 * 1024;

/// Writes all of `bytes` to a blocking descriptor; false on any error.
pub(super) fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match retry_interrupted(|| rustix::io::write(fd, bytes).map_err(Into::into)) {
            Ok(0) | Err(_) => return false,
            Ok(n) => bytes = &bytes[n..],
        }
    }
    true
}

/// In a function child: writes `report` (framed) into the shared report pipe as chunks of at
/// most [`PIPE_ATOMIC`] bytes, each `u32` length, `u64` child id, data. The pipe is blocking
/// and `PIPE_BUF` is 4096 on Linux, so each chunk is written whole, never mixed with another
/// child's. False on any error.
pub(super) fn write_report(fd: &OwnedFd, id: usize, report: &[u8]) -> bool {
    let Ok(len) = u32::try_from(report.len()) else { return false };
    let mut chunk = Vec::with_capacity(PIPE_ATOMIC.min(16 + report.len()));
    let mut rest = report;
    loop {
        chunk.clear();
        chunk.extend_from_slice(&[0; 4]);
        chunk.extend_from_slice(&(id as u64).to_be_bytes());
        if rest.len() == report.len() {
            // The report's own frame header travels as data, like the rest.
            chunk.extend_from_slice(&len.to_be_bytes());
        }
        let take = (PIPE_ATOMIC - chunk.len()).min(rest.len());
        chunk.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        let n = (chunk.len() - 4) as u32;
        chunk[..4].copy_from_slice(&n.to_be_bytes());
        if !write_all(fd, &chunk) {
            return false;
        }
        if rest.is_empty() {
            return true;
        }
    }
}

/// Reads everything available from a command's stdout and stderr (through the worker's
/// `chunk` buffer), keeping at most [`OUTPUT_LIMIT`] bytes of each.
pub(super) fn drain(job: &mut JobChild, chunk: &mut [u8]) {
    let limit = if job.kind == Kind::Command { OUTPUT_LIMIT } else { usize::MAX };
    let streams = [(&job.pipe, &mut job.buf), (&job.err_pipe, &mut job.err_buf)];
    for (pipe, buf) in streams {
        let Some(pipe) = pipe else { continue };
        loop {
            let read =
                retry_interrupted(|| rustix::io::read(pipe, &mut *chunk).map_err(Into::into));
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let keep = n.min(limit.saturating_sub(buf.len()));
                    buf.extend_from_slice(&chunk[..keep]);
                    job.truncated |= keep < n;
                }
            }
        }
    }
}

/// Spawns a command job with its stdout and stderr on pipes (returned in that order).
pub(super) fn spawn_command(spec: &CommandSpec) -> Result<(Child, OwnedFd, OwnedFd), WireError> {
    let mut cmd = procyard_core::Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_remove(ENV_WORKER)
        .env_remove(ENV_MAX_WORKERS)
        .env_remove(ENV_REUSE)
        .stdin(Stdio::Null)
        .stdout(Stdio::Pipe)
        .stderr(Stdio::Pipe)
        .parent_death_signal(Signal::KILL);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut child =
        cmd.spawn().map_err(|e| WireError::Failed { message: procyard_core::report(&e) })?;
    match (child.take_stdout(), child.take_stderr()) {
        (Some(stdout), Some(stderr)) => Ok((child, stdout, stderr)),
        _ => {
            let _ = child.kill_and_reap();
            Err(WireError::Failed { message: "no stdout or stderr pipe".into() })
        }
    }
}
