//! Collected output: run a child to its end and keep what it wrote, like
//! `std::process::Command::output`.

use std::fs::File;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::{Child, Command, Error, Exit, Result, Stdio};

/// The most a bounded capture keeps of each of stdout and stderr (1 MiB); what comes after is
/// read and dropped, and [`Output::truncated`] says so.
pub const OUTPUT_LIMIT: usize = 1 << 20;

/// How a child ended and what it wrote on stdout and stderr, shaped like
/// `std::process::Output`. procmgr's and resultworker's command outputs are this type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// How it ended.
    pub status: Exit,
    /// What it wrote on stdout (at most [`OUTPUT_LIMIT`] bytes where the capture is bounded).
    pub stdout: Vec<u8>,
    /// What it wrote on stderr (likewise).
    pub stderr: Vec<u8>,
    /// Whether a bounded capture dropped bytes beyond [`OUTPUT_LIMIT`] on either stream (the
    /// first bytes are kept). Always `false` for [`Command::output`], which keeps everything.
    #[serde(default)]
    pub truncated: bool,
}

impl Command {
    /// Runs the command to its end with stdin from `/dev/null` and stdout and stderr captured.
    pub fn output(&mut self) -> Result<Output> {
        self.stdin(Stdio::Null).stdout(Stdio::Pipe).stderr(Stdio::Pipe);
        self.spawn()?.wait_with_output()
    }

    /// Runs the command to its end (stdio inherited unless set) and returns how it ended.
    pub fn status(&mut self) -> Result<Exit> {
        self.spawn()?.wait()
    }
}

impl Child {
    /// Reads the child's piped stdout and stderr to their ends (both at once, so neither can
    /// fill up and stall the child), then waits for it. Streams that were not piped come back
    /// empty. Closes a piped stdin first, so a child reading it sees the end.
    pub fn wait_with_output(mut self) -> Result<Output> {
        drop(self.take_stdin());
        let pid = self.id();
        let mut streams = [self.take_stdout().map(File::from), self.take_stderr().map(File::from)];
        let mut collected = [Vec::new(), Vec::new()];
        read_both(&mut streams, &mut collected).map_err(|source| Error::Process {
            action: "read the output of",
            pid,
            source,
        })?;
        let status = self.wait()?;
        let [stdout, stderr] = collected;
        Ok(Output { status, stdout, stderr, truncated: false })
    }
}

/// Reads every open stream to its end, polling so that whichever has data is read first.
fn read_both(streams: &mut [Option<File>; 2], out: &mut [Vec<u8>; 2]) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let open: Vec<usize> = (0..2).filter(|i| streams[*i].is_some()).collect();
        if open.is_empty() {
            return Ok(());
        }
        let mut fds: Vec<_> = open
            .iter()
            .map(|i| {
                let fd = streams[*i].as_ref().expect("open stream");
                rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)
            })
            .collect();
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        for (slot, is_ready) in open.into_iter().zip(ready) {
            if !is_ready {
                continue;
            }
            let file = streams[slot].as_mut().expect("open stream");
            match file.read(&mut buf) {
                Ok(0) => streams[slot] = None,
                Ok(n) => out[slot].extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_both_streams_and_the_status() {
        let out = Command::shell("printf out; printf err >&2; exit 3").output().unwrap();
        assert_eq!(out.stdout, b"out");
        assert_eq!(out.stderr, b"err");
        assert_eq!(out.status, Exit::Code(3));
    }

    #[test]
    fn large_output_on_both_streams_does_not_stall() {
        // 1 MiB on each stream: far beyond a pipe's buffer, so reading one stream at a time
        // would deadlock.
        let script = "head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2";
        let out = Command::shell(script).output().unwrap();
        assert_eq!((out.stdout.len(), out.stderr.len()), (1 << 20, 1 << 20));
        assert!(out.status.success());
    }

    #[test]
    fn status_reports_the_exit() {
        assert_eq!(Command::new("false").status().unwrap(), Exit::Code(1));
    }
}
