//! Where a task lives in its pool: `<pool>/<id>.<suffix>` for its socket, data channel, state
//! and logs, and the environment variables that name them. The one place these names are
//! written.

use std::path::{Path, PathBuf};

use crate::protocol::StreamName;

/// Environment variable naming the pool directory (the default pool for clients, and the
/// pool of its task for a task's process).
pub const POOL_ENV: &str = "PROCYARD_POOL";

/// Environment variable holding the data channel's path, set for a task's process.
pub const DATA_ENV: &str = "PROCYARD_BGTASK_DATA";

/// Environment variable holding the task's own id, set for a task's process.
pub const ID_ENV: &str = "PROCYARD_BGTASK_ID";

/// Environment variable naming the program that runs supervisors: `procyard-bgtask-supervise`
/// or the `procyard-bgtask` CLI (which has the same hidden mode).
pub const BIN_ENV: &str = "PROCYARD_BGTASK_BIN";

/// The small program that runs one supervisor (it links only the supervisor's code, so each
/// supervisor keeps fewer pages resident than the CLI would).
pub const SUPERVISOR_BIN: &str = "procyard-bgtask-supervise";

/// The CLI, which can also run a supervisor (hidden `__supervise` mode).
pub(crate) const CLI_BIN: &str = "procyard-bgtask";

/// The suffixes of a task's regular files: its state and, if asked, its output logs.
pub(crate) const STATE_FILES: [&str; 3] = ["json", "stdout.log", "stderr.log"];

/// The suffixes of a task's sockets: its supervisor's listener and its data channel.
pub(crate) const SOCKET_FILES: [&str; 2] = ["sock", "data"];

/// Whether `id` is a task id: 1 to 64 letters, digits, `-` and `_` (no path tricks).
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The paths of one task in its pool.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TaskPaths<'a> {
    pub(crate) dir: &'a Path,
    pub(crate) id: &'a str,
}

impl<'a> TaskPaths<'a> {
    pub(crate) fn new(dir: &'a Path, id: &'a str) -> TaskPaths<'a> {
        TaskPaths { dir, id }
    }

    /// File `suffix` of the task (one of [`STATE_FILES`] or [`SOCKET_FILES`]).
    pub(crate) fn file(self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}.{suffix}", self.id))
    }

    /// The supervisor's socket.
    pub(crate) fn socket(self) -> PathBuf {
        self.file("sock")
    }

    /// The data channel.
    pub(crate) fn data(self) -> PathBuf {
        self.file("data")
    }

    /// The state record.
    pub(crate) fn record(self) -> PathBuf {
        self.file("json")
    }

    /// The log of `stream`.
    pub(crate) fn log(self, stream: StreamName) -> PathBuf {
        self.file(&format!("{}.log", stream.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_the_pool() {
        let p = TaskPaths::new(Path::new("/pool"), "t1");
        assert_eq!(p.socket(), Path::new("/pool/t1.sock"));
        assert_eq!(p.data(), Path::new("/pool/t1.data"));
        assert_eq!(p.record(), Path::new("/pool/t1.json"));
        assert_eq!(p.log(StreamName::Stderr), Path::new("/pool/t1.stderr.log"));
        for suffix in STATE_FILES.iter().chain(&SOCKET_FILES) {
            assert!(p.file(suffix).starts_with("/pool"));
        }
    }

    #[test]
    fn ids() {
        assert!(valid_id("0193f3c2a1b27d10a5c4e2f0b1d2c3e4"));
        assert!(!valid_id(""));
        assert!(!valid_id("../x"));
        assert!(!valid_id(&"a".repeat(65)));
    }
}
