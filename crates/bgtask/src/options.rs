//! [`SpawnOptions`]: what a task runs and how its output is kept.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::meta::Meta;
use crate::{Error, Result};

/// The retain cap used when none is given: 1 MiB per stream.
pub const DEFAULT_RETAIN: u64 = 1024 * 1024;

/// What to run and how; built with [`SpawnOptions::new`] and its setters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpawnOptions {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the caller's).
    pub cwd: Option<PathBuf>,
    /// Initial metadata.
    pub meta: Meta,
    /// Bytes retained per output stream (oldest dropped beyond it).
    pub retain: u64,
    /// Also append output to `<id>.stdout.log` / `<id>.stderr.log` in the pool.
    pub log: bool,
    /// Instead of dropping unconsumed output beyond `retain`, stop reading the task's pipe
    /// (the task then blocks on its writes until a client consumes).
    pub block_when_full: bool,
}

impl SpawnOptions {
    /// Runs `program` with `args`.
    pub fn new<I, S>(command: I) -> SpawnOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SpawnOptions {
            command: command.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            cwd: None,
            meta: Meta::new(),
            retain: DEFAULT_RETAIN,
            log: false,
            block_when_full: false,
        }
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> SpawnOptions {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets a metadata key.
    pub fn meta(mut self, key: impl Into<String>, value: serde_json::Value) -> SpawnOptions {
        self.meta.insert(key.into(), value);
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> SpawnOptions {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets the retain cap per stream.
    pub fn retain(mut self, bytes: u64) -> SpawnOptions {
        self.retain = bytes;
        self
    }

    /// Logs output to files in the pool.
    pub fn log(mut self, log: bool) -> SpawnOptions {
        self.log = log;
        self
    }

    /// Applies backpressure instead of dropping output (see the field).
    pub fn block_when_full(mut self, block: bool) -> SpawnOptions {
        self.block_when_full = block;
        self
    }
}

/// Refuses options no task can be started with: an empty command or program name, a NUL
/// byte in an argument, an environment variable, or the working directory, an environment
/// name with `=`, a zero retain cap.
pub(crate) fn check_options(options: &SpawnOptions) -> Result<()> {
    let invalid = |reason: String| Err(Error::InvalidSpawn { reason });
    match options.command.first() {
        None => return invalid("empty command".into()),
        Some(program) if program.is_empty() => return invalid("empty program name".into()),
        Some(_) => {}
    }
    if let Some(arg) = options.command.iter().find(|a| a.contains('\0')) {
        return invalid(format!("NUL byte in command argument {arg:?}"));
    }
    for (k, v) in &options.env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return invalid(format!("invalid environment variable {k:?}"));
        }
    }
    if let Some(cwd) = &options.cwd
        && cwd.as_os_str().as_encoded_bytes().contains(&0)
    {
        return invalid(format!("NUL byte in working directory {}", cwd.display()));
    }
    if options.retain == 0 {
        return invalid("retain must be at least 1 byte".into());
    }
    Ok(())
}
