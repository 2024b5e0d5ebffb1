//! [`CommandOutput`]: what a command task wrote and how it ended (core's `Output`, the same
//! type procyard-resultworker's command jobs give), and the capture of its two streams from the
//! manager's event loop, each bounded by [`OUTPUT_LIMIT`].

use std::io::Read;

use procyard_core::Exit;
use procyard_core::event::retry_interrupted;
use procyard_core::mio::unix::pipe::Receiver;

pub use procyard_core::{OUTPUT_LIMIT, Output as CommandOutput};

/// The two captured streams of a running command, read as they become readable.
#[derive(Default)]
pub(crate) struct Capture {
    /// stdout and stderr, until each reaches its end.
    pub(crate) pipes: [Option<Receiver>; 2],
    bytes: [Vec<u8>; 2],
    truncated: bool,
}

impl Capture {
    pub(crate) fn new(stdout: Receiver, stderr: Receiver) -> Capture {
        Capture { pipes: [Some(stdout), Some(stderr)], ..Capture::default() }
    }

    /// Whether a stream is still open.
    pub(crate) fn is_open(&self) -> bool {
        self.pipes.iter().any(Option::is_some)
    }

    /// Reads what stream `which` (0: stdout, 1: stderr) has, until it would block; closes it
    /// at its end or on an error.
    pub(crate) fn drain(&mut self, which: usize, buf: &mut [u8]) {
        let Some(pipe) = self.pipes.get_mut(which).and_then(Option::as_mut) else { return };
        let bytes = &mut self.bytes[which];
        loop {
            match retry_interrupted(|| pipe.read(buf)) {
                Ok(0) => break,
                Ok(n) => {
                    let keep = n.min(OUTPUT_LIMIT.saturating_sub(bytes.len()));
                    bytes.extend_from_slice(&buf[..keep]);
                    self.truncated |= keep < n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        self.pipes[which] = None;
    }

    /// After the child's exit: takes what both streams hold and closes them (a grandchild
    /// that still holds a copy does not keep the task from completing).
    pub(crate) fn close(&mut self, buf: &mut [u8]) {
        for which in 0..2 {
            self.drain(which, buf);
            self.pipes[which] = None;
        }
    }

    pub(crate) fn into_output(self, status: Exit) -> CommandOutput {
        let [stdout, stderr] = self.bytes;
        CommandOutput { status, stdout, stderr, truncated: self.truncated }
    }
}
