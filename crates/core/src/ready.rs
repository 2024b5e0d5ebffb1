//! Readiness notification through a pipe (s6's notification-fd idea): the child writes a line
//! when it is ready; the parent waits for it with a deadline. End of file before the line
//! means the child died or gave up.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use rustix::event::{PollFd, PollFlags};

use crate::{Deadline, Error, Result, sys};

/// What [`ReadyReader::wait`] observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// The child wrote a line (given without its newline).
    Ready(String),
    /// Every copy of the write end closed without a line: the child died or refused.
    Closed,
    /// The deadline passed first.
    TimedOut,
}

/// The parent's end of a readiness pipe.
#[derive(Debug)]
pub struct ReadyReader {
    fd: OwnedFd,
    buf: Vec<u8>,
}

/// The child's end of a readiness pipe; pass it to the child with
/// [`Command::pass_fd`](crate::Command::pass_fd).
#[derive(Debug)]
pub struct ReadyWriter {
    fd: OwnedFd,
}

/// Makes a readiness pipe (both ends close-on-exec).
pub fn ready_pipe() -> Result<(ReadyReader, ReadyWriter)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::os("create a readiness pipe", e))?;
    Ok((ReadyReader { fd: r, buf: Vec::new() }, ReadyWriter { fd: w }))
}

impl ReadyReader {
    /// Waits until a full line arrives, the writers all close, or `deadline` passes.
    pub fn wait(&mut self, deadline: Deadline) -> Result<Readiness> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..=pos);
                return Ok(Readiness::Ready(line));
            }
            if deadline.is_expired() {
                return Ok(Readiness::TimedOut);
            }
            let remaining = deadline.remaining();
            let ts = rustix::event::Timespec {
                tv_sec: remaining.as_secs().min(i64::MAX as u64 / 2) as i64,
                tv_nsec: i64::from(remaining.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(Error::os("poll a readiness pipe", e)),
            }
            let mut chunk = [0u8; 512];
            match rustix::io::read(&self.fd, &mut chunk) {
                Ok(0) => {
                    if self.buf.is_empty() {
                        return Ok(Readiness::Closed);
                    }
                    let line = String::from_utf8_lossy(&self.buf).into_owned();
                    self.buf.clear();
                    return Ok(Readiness::Ready(line));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(Error::os("read a readiness pipe", e)),
            }
        }
    }
}

impl AsFd for ReadyReader {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl ReadyWriter {
    /// The descriptor, for [`Command::pass_fd`](crate::Command::pass_fd).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Wraps a descriptor this process owns.
    pub fn from_fd(fd: OwnedFd) -> ReadyWriter {
        ReadyWriter { fd }
    }

    /// Opens the readiness pipe this process inherited as descriptor `fd`, through
    /// `/proc/self/fd`, without taking ownership of `fd` itself (which is marked
    /// close-on-exec so grandchildren do not hold the pipe open).
    pub fn inherited(fd: RawFd) -> Result<ReadyWriter> {
        if !sys::fd::is_open(fd) {
            return Err(Error::path(
                "open inherited readiness descriptor",
                format!("/proc/self/fd/{fd}"),
                std::io::Error::from_raw_os_error(libc::EBADF),
            ));
        }
        let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::path("open", &path, e))?;
        let _ = sys::fd::set_cloexec(fd);
        Ok(ReadyWriter { fd: file.into() })
    }

    /// Reports readiness with `line` (no newline inside) and closes this end.
    pub fn notify(self, line: &str) -> Result<()> {
        let mut file = std::fs::File::from(self.fd);
        let mut msg = line.replace('\n', " ");
        msg.push('\n');
        file.write_all(msg.as_bytes()).map_err(|e| Error::os("write a readiness pipe", e))
    }
}
