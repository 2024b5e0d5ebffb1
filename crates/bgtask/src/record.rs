//! `<id>.json`: what a supervisor writes about its task, read by `list` without connecting,
//! and the filters `list`/`search` apply.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use procyard_core::{ProcessIdentity, Signal, owner, state_file};
use serde::{Deserialize, Serialize};

use crate::protocol::Meta;
use crate::{Error, Result};

/// A task's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    /// Running.
    Running,
    /// Stopped by [`Task::pause`](crate::Task::pause).
    Paused,
    /// Exited with a code.
    Exited {
        /// The exit code.
        code: u8,
    },
    /// Killed by a signal.
    Signaled {
        /// The signal.
        signal: Signal,
    },
    /// The supervisor is gone (its output went with it unless logged).
    Lost,
}

impl Status {
    /// The state's name: `running`, `paused`, `exited`, `signaled`, `lost`.
    pub fn name(&self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Exited { .. } => "exited",
            Status::Signaled { .. } => "signaled",
            Status::Lost => "lost",
        }
    }

    /// Whether the task's process is alive (running or paused).
    pub fn is_alive(&self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }

    /// Whether the task ended (exited or signaled).
    pub fn is_finished(&self) -> bool {
        matches!(self, Status::Exited { .. } | Status::Signaled { .. })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Exited { code } => write!(f, "exited({code})"),
            Status::Signaled { signal } => write!(f, "signaled({signal})"),
            other => f.write_str(other.name()),
        }
    }
}

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
    /// The supervisor.
    pub supervisor: ProcessIdentity,
    /// The task's pid while it runs.
    pub pid: Option<i32>,
    /// The task's process (pid + start time) while it runs: what lets a client stop the task
    /// of a lost supervisor without ever signalling a recycled pid. Kept as last written when
    /// the supervisor is lost; checked against `/proc` before any use.
    #[serde(default)]
    pub process: Option<ProcessIdentity>,
    /// The session the supervisor runs its tasks in: a lost task's process must still be in
    /// it (or lead a session of its own) to be recognised as the task.
    #[serde(default)]
    pub session: Option<i32>,
    /// Restart count.
    pub restarts: u32,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Start of the current run.
    pub started_ms: u64,
    /// End of the last run.
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

/// Which tasks `list`/`search` return: every condition must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// Status names accepted (`running`, `paused`, `exited`, `signaled`, `lost`); empty = any.
    pub statuses: Vec<String>,
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
    pub fn status(mut self, status: &str) -> Filter {
        self.statuses.push(status.to_owned());
        self
    }

    /// Requires `meta[key] == value`.
    pub fn meta(mut self, key: &str, value: serde_json::Value) -> Filter {
        self.meta.insert(key.to_owned(), value);
        self
    }

    /// Whether a task with this status and metadata passes.
    pub fn matches(&self, status: &Status, meta: &Meta) -> bool {
        (self.statuses.is_empty() || self.statuses.iter().any(|s| s == status.name()))
            && meta_matches(&self.meta, meta)
    }
}

/// Subset match: every key of `wanted` is in `meta` with an equal value. Arrays are compared
/// element by element over their whole length (the seed skipped the last element).
pub fn meta_matches(wanted: &Meta, meta: &Meta) -> bool {
    wanted.iter().all(|(k, v)| meta.get(k) == Some(v))
}

/// Parses a `K=V` metadata argument: `V` is taken as JSON when it parses, else as a string.
pub fn parse_meta_arg(arg: &str) -> Option<(String, serde_json::Value)> {
    let (k, v) = arg.split_once('=')?;
    if k.is_empty() {
        return None;
    }
    let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
    Some((k.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: serde_json::Value) -> Meta {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn arrays_compare_whole() {
        let task = meta(json!({"tags": ["a", "b", "c"], "name": "x"}));
        assert!(meta_matches(&meta(json!({"tags": ["a", "b", "c"]})), &task));
        assert!(!meta_matches(&meta(json!({"tags": ["a", "b", "d"]})), &task));
        assert!(!meta_matches(&meta(json!({"tags": ["a", "b"]})), &task));
        assert!(!meta_matches(&meta(json!({"tags": ["a", "b", "c", "d"]})), &task));
        assert!(meta_matches(&meta(json!({})), &task));
        assert!(!meta_matches(&meta(json!({"missing": 1})), &task));
    }

    #[test]
    fn filter_status_and_meta() {
        let m = meta(json!({"name": "Hello World"}));
        let f = Filter::new().status("running").meta("name", json!("Hello World"));
        assert!(f.matches(&Status::Running, &m));
        assert!(!f.matches(&Status::Paused, &m));
        assert!(!f.matches(&Status::Running, &Meta::new()));
        assert!(Filter::new().matches(&Status::Lost, &m));
    }

    #[test]
    fn meta_args() {
        assert_eq!(parse_meta_arg("a=1"), Some(("a".into(), json!(1))));
        assert_eq!(parse_meta_arg("a=hi there"), Some(("a".into(), json!("hi there"))));
        assert_eq!(parse_meta_arg("t=[1,2]"), Some(("t".into(), json!([1, 2]))));
        assert_eq!(parse_meta_arg("=x"), None);
        assert_eq!(parse_meta_arg("novalue"), None);
    }

    #[test]
    fn status_serde_shape() {
        let s = Status::Signaled { signal: Signal::TERM };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"{"state":"signaled","signal":"SIGTERM"}"#);
        assert_eq!(serde_json::from_str::<Status>(&j).unwrap(), s);
    }
}
