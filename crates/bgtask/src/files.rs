//! The names of a task's files in its pool: `<id>.<suffix>`.

use std::path::{Path, PathBuf};

/// The suffixes of a task's regular files: its state and, if asked, its output logs.
pub(crate) const STATE_FILES: [&str; 3] = ["json", "stdout.log", "stderr.log"];

/// The suffixes of a task's sockets: its supervisor's listener and its data channel.
pub(crate) const SOCKET_FILES: [&str; 2] = ["sock", "data"];

/// File `suffix` of task `id` in pool `dir`.
pub(crate) fn task_file(dir: &Path, id: &str, suffix: &str) -> PathBuf {
    dir.join(format!("{id}.{suffix}"))
}
