//! `<id>.json`: what a supervisor writes about its task, read by `list` without connecting,
//! and the filters `list`/`search` apply.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use procyard_core::{Pid, ProcessIdentity, owner, state_file};
use serde::{Deserialize, Serialize};

use crate::layout::{TaskPaths, valid_id};
use crate::meta::{Meta, meta_matches};
use crate::status::{Status, StatusKind};
use crate::{Error, Result};

/// The content of `<id>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task id.
    pub id: String,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// The working directory of the task.
    pub cwd: Option<String>,
    /// Environment variables set for the task (beyond the inherited ones).
    pub env: BTreeMap<String, String>,
    /// Metadata.
    pub meta: Meta,
    /// The status the supervisor last wrote (`list` turns it into `lost` when the supervisor
    /// is gone).
    pub status: Status,
    /// Who the supervisor is (pid, start time, boot): tells a live one from a recycled pid.
    pub supervisor: ProcessIdentity,
    /// The task's pid while it runs.
    pub pid: Option<Pid>,
    /// The task's process (pid + start time) while it runs: what lets a client stop the task
    /// of a lost supervisor without ever signalling a recycled pid. Kept as last written when
    /// the supervisor is lost; checked against `/proc` before any use.
    #[serde(default)]
    pub process: Option<ProcessIdentity>,
    /// The session the supervisor runs its tasks in: a lost task's process must still be in
    /// it (or lead a session of its own) to be recognised as the task.
    #[serde(default)]
    pub session: Option<Pid>,
    /// How many times the task was restarted.
    pub restarts: u32,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When the current (or last) run started, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When the last run ended (`None` while it runs).
    pub ended_ms: Option<u64>,
    /// Whether output is also logged to `<id>.stdout.log` / `<id>.stderr.log`.
    pub log: bool,
}

/// Reads `path` as a task record: a regular file (no symlink followed, no FIFO waited on),
/// owned by us or root and writable by nobody else. `Ok(None)` when it does not exist.
pub(crate) fn read_owned_record(path: &Path) -> Result<Option<TaskRecord>> {
    let mut file = match state_file::open_regular(path, std::fs::OpenOptions::new().read(true)) {
        Ok(f) => f,
        Err(procyard_core::Error::Path { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata().map_err(|e| Error::path("inspect", path, e))?;
    owner::check_owned(path, &meta)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| Error::path("read", path, e))?;
    serde_json::from_slice(&bytes).map(Some).map_err(|source| {
        Error::Core(procyard_core::Error::CorruptState { path: path.to_owned(), source })
    })
}

/// The record of task `id` in pool `dir`, with `lost` computed.
pub(crate) fn read_record(dir: &Path, id: &str) -> Result<TaskRecord> {
    if !valid_id(id) {
        return Err(Error::InvalidId { id: id.to_owned() });
    }
    match read_owned_record(&TaskPaths::new(dir, id).record())? {
        Some(r) if r.id == id => Ok(Liveness::default().apply(r)),
        _ => Err(Error::NoSuchTask { id: id.to_owned() }),
    }
}

/// Marks records whose supervisor is no longer running `lost`, asking `/proc` once per
/// supervisor ([`ProcessIdentity::is_running`]: pid, start time and boot must match).
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    known: HashMap<ProcessIdentity, bool>,
}

impl Liveness {
    pub(crate) fn apply(&mut self, mut record: TaskRecord) -> TaskRecord {
        let running = match self.known.get(&record.supervisor) {
            Some(running) => *running,
            None => {
                let running = record.supervisor.is_running().unwrap_or(false);
                self.known.insert(record.supervisor.clone(), running);
                running
            }
        };
        if !running {
            record.status = Status::Lost;
            record.pid = None;
        }
        record
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Which tasks `list`/`search` return: every condition must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// The kinds of status accepted; empty = any.
    pub statuses: Vec<StatusKind>,
    /// Metadata subset: each key must be present with an equal value (arrays and objects are
    /// compared whole).
    pub meta: Meta,
}

impl Filter {
    /// A filter accepting everything.
    pub fn new() -> Filter {
        Filter::default()
    }

    /// Accepts tasks in this status (may be called several times: any of them).
    ///
    /// A status is a [`StatusKind`], so a misspelt one does not compile; text from a user
    /// parses into one, and a misspelt name is [`Error::UnknownStatus`](crate::Error::UnknownStatus):
    ///
    /// ```
    /// use procyard_bgtask::{Filter, StatusKind};
    /// let running = Filter::new().status(StatusKind::Running);
    /// let from_text = Filter::new().status("running".parse::<StatusKind>()?);
    /// assert_eq!(running, from_text);
    /// assert!("runing".parse::<StatusKind>().is_err());
    /// # Ok::<(), procyard_bgtask::Error>(())
    /// ```
    ///
    /// ```compile_fail
    /// let misspelt = procyard_bgtask::Filter::new().status("runing");
    /// ```
    pub fn status(mut self, status: StatusKind) -> Filter {
        self.statuses.push(status);
        self
    }

    /// Requires `meta[key] == value`.
    pub fn meta(mut self, key: &str, value: serde_json::Value) -> Filter {
        self.meta.insert(key.to_owned(), value);
        self
    }

    /// Whether a task with this status and metadata passes.
    pub fn matches(&self, status: &Status, meta: &Meta) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&status.kind()))
            && meta_matches(&self.meta, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filter_status_and_meta() {
        let m = json!({"name": "Hello World"}).as_object().cloned().unwrap_or_default();
        let f = Filter::new().status(StatusKind::Running).meta("name", json!("Hello World"));
        assert!(f.matches(&Status::Running, &m));
        assert!(!f.matches(&Status::Paused, &m));
        assert!(!f.matches(&Status::Running, &Meta::new()));
        assert!(Filter::new().matches(&Status::Lost, &m));
    }
}
