//! Small I/O helpers of the worker and its job children: reading and writing pipes, the
//! report chunks, spawning a command.

use std::os::fd::OwnedFd;

use procyard_core::event::retry_interrupted;
use procyard_core::{Child, Signal, Stdio};

use super::shell::JobChild;
use super::state::Kind;
use crate::mode::{ENV_DIRECT, ENV_MAX_WORKERS, ENV_REUSE, ENV_WORKER};
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

/// In a function child: writes its report (`tag`, then `body`; framed) into the shared
/// report pipe as chunks of at most [`PIPE_ATOMIC`] bytes, each `u32` length, `u64` child id,
/// data. The pipe is blocking and `PIPE_BUF` is 4096 on Linux, so each chunk is written whole
/// (a `writev` to a pipe is one write), never mixed with another child's. The chunk headers
/// are built on the stack and the body is written from where it lies: no allocation, so the
/// child copies no heap page for it (every page a forked child writes is copied). False on
/// any error.
pub(super) fn write_report(fd: &OwnedFd, id: usize, tag: u8, body: &[u8]) -> bool {
    let Ok(len) = u32::try_from(body.len() + 1) else { return false };
    let mut first = true;
    let mut rest = body;
    loop {
        // Length, id, and in the first chunk the report's own frame header and its tag.
        let mut header = [0u8; 17];
        header[4..12].copy_from_slice(&(id as u64).to_be_bytes());
        let mut head_len = 12;
        if first {
            header[12..16].copy_from_slice(&len.to_be_bytes());
            header[16] = tag;
            head_len = 17;
        }
        let take = (PIPE_ATOMIC - head_len).min(rest.len());
        let n = (head_len - 4 + take) as u32;
        header[..4].copy_from_slice(&n.to_be_bytes());
        if !write_all_vectored(fd, &header[..head_len], &rest[..take]) {
            return false;
        }
        rest = &rest[take..];
        first = false;
        if rest.is_empty() {
            return true;
        }
    }
}

/// In a function child: writes the result frame of the job `key` (frame length, key, `tag`,
/// `body`) into the direct pipe to the application, in one `writev`, if the frame fits in one
/// atomic pipe write ([`PIPE_ATOMIC`]) and the pipe (non-blocking) has room for it now. False
/// otherwise, and then nothing was written (a pipe write of up to `PIPE_BUF` bytes is all or
/// nothing), so the report can still go through the worker.
pub(super) fn write_result(fd: &OwnedFd, key: u64, tag: u8, body: &[u8]) -> bool {
    use std::io::IoSlice;
    let mut header = [0u8; 13];
    let total = header.len() + body.len();
    if total > PIPE_ATOMIC {
        return false;
    }
    header[..4].copy_from_slice(&((total - 4) as u32).to_be_bytes());
    header[4..12].copy_from_slice(&key.to_be_bytes());
    header[12] = tag;
    let written = retry_interrupted(|| {
        rustix::io::writev(fd, &[IoSlice::new(&header), IoSlice::new(body)]).map_err(Into::into)
    });
    written.is_ok_and(|n| n == total)
}

/// Writes `head` then `tail` to a blocking descriptor in one `writev` (one atomic pipe write
/// when they fit in `PIPE_BUF`); false on any error.
pub(super) fn write_all_vectored(fd: &OwnedFd, head: &[u8], tail: &[u8]) -> bool {
    use std::io::IoSlice;
    let total = head.len() + tail.len();
    let written = retry_interrupted(|| {
        rustix::io::writev(fd, &[IoSlice::new(head), IoSlice::new(tail)]).map_err(Into::into)
    });
    match written {
        Ok(n) if n == total => true,
        // A blocking pipe writes up to `PIPE_BUF` bytes whole; anything else finishes here.
        Ok(n) if n < head.len() => write_all(fd, &head[n..]) && write_all(fd, tail),
        Ok(n) if n < total => write_all(fd, &tail[n - head.len()..]),
        Ok(_) | Err(_) => false,
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
        .env_remove(ENV_DIRECT)
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

#[cfg(test)]
mod tests {
    use super::{PIPE_ATOMIC, write_report};

    /// Reads back what `write_report` wrote: checks each chunk (at most `PIPE_ATOMIC` bytes,
    /// tagged with `id`) and returns the report's frame (length, tag, body) reassembled.
    fn chunks_of(bytes: &[u8], id: usize) -> (usize, Vec<u8>) {
        let (mut pos, mut count, mut data) = (0, 0, Vec::new());
        while pos < bytes.len() {
            let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
            assert!(4 + len <= PIPE_ATOMIC, "a chunk of {} bytes", 4 + len);
            let tagged = u64::from_be_bytes(bytes[pos + 4..pos + 12].try_into().unwrap());
            assert_eq!(tagged, id as u64);
            data.extend_from_slice(&bytes[pos + 12..pos + 4 + len]);
            pos += 4 + len;
            count += 1;
        }
        (count, data)
    }

    #[test]
    fn reports_are_written_in_tagged_chunks_without_a_copy() {
        for size in [0, 1, 100, PIPE_ATOMIC - 17, PIPE_ATOMIC - 16, 10_000, 40_000] {
            let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let (read_end, write_end) = rustix::pipe::pipe().unwrap();
            // The reader drains concurrently: a report larger than the pipe would block.
            let reader = std::thread::spawn(move || {
                use std::io::Read;
                let mut all = Vec::new();
                std::fs::File::from(read_end).read_to_end(&mut all).unwrap();
                all
            });
            assert!(write_report(&write_end, 7, 1, &body));
            drop(write_end);
            let (count, frame) = chunks_of(&reader.join().unwrap(), 7);
            // The first chunk carries 17 bytes of headers, the others 12.
            let first = PIPE_ATOMIC - 17;
            let expected = 1 + size.saturating_sub(first).div_ceil(PIPE_ATOMIC - 12);
            assert_eq!(count, expected, "size {size}");
            let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(len, 1 + size);
            assert_eq!(frame[4], 1, "the tag");
            assert_eq!(&frame[5..], &body[..], "size {size}");
        }
    }
}
