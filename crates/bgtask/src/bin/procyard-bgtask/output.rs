//! What the CLI writes: tables, gaps in read output, and a stdout whose closing ends the
//! program quietly.

use std::io::Write;

use anyhow::Result;
use procyard_bgtask::{StreamName, TaskRecord};

/// Exit status of `read` and `tail` when bytes asked for had been dropped.
pub(crate) const EXIT_GAP: u8 = 3;

/// Bytes a reader asked for that were dropped before it could read them: the bytes written to
/// stdout are not contiguous with what was asked for.
#[derive(Debug)]
pub(crate) struct Gap {
    id: String,
    stream: StreamName,
    dropped: u64,
    /// Where output resumed after the first gap.
    resumed_at: u64,
}

impl Gap {
    pub(crate) fn new(id: &str, stream: StreamName) -> Gap {
        Gap { id: id.to_owned(), stream, dropped: 0, resumed_at: 0 }
    }

    pub(crate) fn note(&mut self, chunk: &procyard_bgtask::Chunk) {
        if chunk.dropped > 0 {
            if self.dropped == 0 {
                self.resumed_at = chunk.offset;
            }
            self.dropped += chunk.dropped;
        }
    }

    /// Fails with the gap, if there was one.
    pub(crate) fn check(self) -> Result<()> {
        if self.dropped == 0 { Ok(()) } else { Err(self.into()) }
    }
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "task {} {}: {} bytes asked for were dropped (beyond the retain cap) before they \
             could be read; the output written resumes at offset {}",
            self.id,
            self.stream.as_str(),
            self.dropped,
            self.resumed_at
        )
    }
}

impl std::error::Error for Gap {}

/// Standard output, whose "broken pipe" errors say that it was stdout that closed (and not,
/// say, a supervisor's socket), so `main` can end quietly.
pub(crate) struct Stdout(pub(crate) std::io::StdoutLock<'static>);

/// The payload of a stdout write error meaning the reader is gone.
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

pub(crate) fn is_stdout_closed(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<StdoutClosed>())
}

fn mark_closed(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(mark_closed)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf).map_err(mark_closed)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(mark_closed)
    }
}

pub(crate) fn print_table(out: &mut dyn Write, records: &[TaskRecord]) -> std::io::Result<()> {
    writeln!(out, "{:<32}  {:<18}  {:>7}  {:<30}  META", "ID", "STATUS", "PID", "COMMAND")?;
    for r in records {
        let mut cmd = r.command.join(" ");
        if cmd.chars().count() > 30 {
            cmd = cmd.chars().take(27).collect::<String>() + "...";
        }
        writeln!(
            out,
            "{:<32}  {:<18}  {:>7}  {:<30}  {}",
            r.id,
            r.status.to_string(),
            r.pid.map_or("-".into(), |p| p.to_string()),
            cmd,
            serde_json::Value::Object(r.meta.clone())
        )?;
    }
    Ok(())
}
