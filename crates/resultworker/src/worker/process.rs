//! The job processes' side of the worker: reading their pipes, judging how they ended,
//! spawning commands, and the small framing helpers the worker and its children share.

use std::io;
use std::os::fd::OwnedFd;

use procyard_core::{Child, Exit, FrameDecoder, Signal, Stdio, StreamState};

use super::{ENV_MAX_WORKERS, ENV_REUSE, ENV_WORKER, Kind, Queued, Running, Work};
use crate::job::CommandOutput;
use crate::wire::{
    CommandSpec, TAG_ERROR, TAG_VALUE, WireError, encode_report, error_body, is_report,
};

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
        match input.read(chunk) {
            Ok(0) => return decoder.finish().map(|()| StreamState::Closed),
            Ok(n) => decoder.feed(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(StreamState::Open),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
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

/// The framed size of a queued function job.
pub(super) fn pipelined_len(job: &Queued) -> usize {
    match &job.work {
        Work::Function(message) => 4 + message.len(),
        Work::Command(_) => 0,
    }
}

/// The name a job message (see [`job_message`]) calls; empty if it is truncated.
pub(super) fn function_name(message: &[u8]) -> &[u8] {
    let Some((len, rest)) = message.split_first_chunk::<4>() else { return &[] };
    rest.get(..u32::from_be_bytes(*len) as usize).unwrap_or(&[])
}

/// A function job as a child reads it: name length, name, JSON arguments.
pub(super) fn job_message(name: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(4 + name.len() + body.len());
    message.extend_from_slice(&(name.len() as u32).to_be_bytes());
    message.extend_from_slice(name.as_bytes());
    message.extend_from_slice(body);
    message
}

/// `payload` with its frame header.
pub(super) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Writes all of `bytes` to a blocking descriptor; false on any error.
pub(super) fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
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

/// Reads everything available from a job's pipe (through the worker's `chunk` buffer).
pub(super) fn drain(job: &mut Running, chunk: &mut [u8]) {
    let Some(pipe) = &job.pipe else { return };
    loop {
        match rustix::io::read(pipe, &mut *chunk) {
            Ok(0) => break,
            Ok(n) => job.buf.extend_from_slice(&chunk[..n]),
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
}

/// The report for a job that exited.
pub(super) fn outcome(job: &mut Running, exit: Exit) -> Vec<u8> {
    let error = |e: WireError| encode_report(TAG_ERROR, &error_body(&e));
    if job.timed_out {
        let timeout_ms = job.timeout.map_or(0, |t| t.as_millis() as u64);
        return error(WireError::TimedOut { timeout_ms });
    }
    if job.stopped {
        return error(WireError::Stopped);
    }
    match job.kind {
        Kind::Function => {
            let mut bytes = &job.buf[..];
            let report =
                procyard_core::frame::read_frame_bytes(&mut bytes, procyard_core::MAX_FRAME);
            match (exit, report) {
                (Exit::Code(0), Ok(Some(report))) if is_report(&report) => report,
                (Exit::Code(0), _) => error(WireError::Malformed {
                    reason: "the job exited without a complete report".into(),
                }),
                _ => error(WireError::Crashed { exit }),
            }
        }
        Kind::Command => {
            if !exit.success() {
                return error(WireError::Crashed { exit });
            }
            let output = CommandOutput { exit, stdout: std::mem::take(&mut job.buf) };
            match serde_json::to_vec(&output) {
                Ok(json) => encode_report(TAG_VALUE, &json),
                Err(e) => error(WireError::Malformed { reason: e.to_string() }),
            }
        }
    }
}

pub(super) fn spawn_command(spec: &CommandSpec) -> Result<(Child, OwnedFd), WireError> {
    let mut cmd = procyard_core::Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_remove(ENV_WORKER)
        .env_remove(ENV_MAX_WORKERS)
        .env_remove(ENV_REUSE)
        .stdin(Stdio::Null)
        .stdout(Stdio::Pipe)
        .stderr(Stdio::Inherit)
        .parent_death_signal(Signal::KILL);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn().map_err(|e| WireError::Failed { message: chain(&e) })?;
    match child.take_stdout() {
        Some(stdout) => Ok((child, stdout)),
        None => {
            let _ = child.kill_and_reap();
            Err(WireError::Failed { message: "no stdout pipe".into() })
        }
    }
}

/// An error and its causes on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
