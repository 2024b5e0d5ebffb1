//! [`TaskChannel`]: the task's side of its data channel.

use std::path::PathBuf;

use crate::layout::DATA_ENV;
use crate::meta::Meta;
use crate::{Error, Result};

/// The task's side: the data channel its supervisor announced in `PROCYARD_BGTASK_DATA`: messages
/// and metadata updates a task sends to its own supervisor.
#[derive(Debug)]
pub struct TaskChannel {
    sock: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

impl TaskChannel {
    /// Opens the channel named by `PROCYARD_BGTASK_DATA` (`None` outside a task).
    pub fn from_env() -> Result<Option<TaskChannel>> {
        let Some(path) = std::env::var_os(DATA_ENV) else { return Ok(None) };
        let path = PathBuf::from(path);
        let sock = std::os::unix::net::UnixDatagram::unbound()
            .map_err(|e| Error::path("create a socket for", &path, e))?;
        Ok(Some(TaskChannel { sock, path }))
    }

    /// Sends one message (kept by the supervisor, read with [`Task::read_data`](crate::Task::read_data)).
    pub fn send(&self, message: &serde_json::Value) -> Result<()> {
        let bytes = serde_json::to_vec(message)
            .map_err(|source| Error::Core(procyard_core::Error::Encode { source }))?;
        self.sock.send_to(&bytes, &self.path).map_err(|e| Error::path("send to", &self.path, e))?;
        Ok(())
    }

    /// Merges keys into the task's own metadata.
    pub fn apply_meta(&self, meta: Meta) -> Result<()> {
        self.send(&serde_json::json!({ "apply_meta": meta }))
    }
}
