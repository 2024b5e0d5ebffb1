//! `pause`, `resume` and `scale`: steering a task group of the running daemon through its
//! control socket.

use std::path::Path;

use procyard_daemon::control;

use crate::{load, unable};

/// Pause, resume or scale a task of the running daemon; prints what it did.
pub(crate) fn steer(config: &Path, request: control::Request) -> Result<u8, String> {
    let c = load(config)?;
    let message =
        control::steer(&c.daemon.control_socket, &request).map_err(|e| unable("do that", &e))?;
    println!("{message}");
    Ok(0)
}
