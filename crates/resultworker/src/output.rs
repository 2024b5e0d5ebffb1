//! [`CommandOutput`]: what a command job wrote and how it ended.

use procyard_core::Exit;
use serde::{Deserialize, Serialize};

/// The most a command job's output keeps of each of stdout and stderr (1 MiB); what comes
/// after is read and dropped, and [`CommandOutput::truncated`] says so.
pub const OUTPUT_LIMIT: usize = 1 << 20;

/// What a command job wrote and how it ended, shaped like `std::process::Output`: the value of
/// a command that exits with status 0, and kept in [`Error::CommandFailed`](crate::Error::CommandFailed) when it does not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutput {
    /// How it ended (exit code 0 in a successful outcome).
    pub status: Exit,
    /// What it wrote to stdout (at most [`OUTPUT_LIMIT`] bytes).
    pub stdout: Vec<u8>,
    /// What it wrote to stderr (at most [`OUTPUT_LIMIT`] bytes).
    pub stderr: Vec<u8>,
    /// Whether stdout or stderr went beyond [`OUTPUT_LIMIT`] (the first bytes are kept).
    pub truncated: bool,
}
