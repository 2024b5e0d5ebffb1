//! What a supervisor program gets and answers when `spawn` executes it: a spawn request frame
//! on its stdin, an answer frame on its stdout.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::options::SpawnOptions;

/// What a `__supervise` process answers on its stdout.
#[derive(Serialize, Deserialize)]
pub(crate) struct SuperviseReply {
    pub(crate) error: Option<String>,
}

/// What a `__supervise` process reads on its stdin.
#[derive(Serialize, Deserialize)]
pub(crate) struct SuperviseRequest {
    pub(crate) pool: PathBuf,
    pub(crate) id: String,
    pub(crate) options: SpawnOptions,
}
