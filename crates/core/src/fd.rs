//! Descriptor facts, for checks and tests.

use std::os::fd::{AsFd, RawFd};

use crate::{Error, Result};

/// Whether `fd` is close-on-exec.
pub fn is_close_on_exec(fd: impl AsFd) -> Result<bool> {
    let flags = rustix::io::fcntl_getfd(fd).map_err(|e| Error::os("read descriptor flags", e))?;
    Ok(flags.contains(rustix::io::FdFlags::CLOEXEC))
}

/// The descriptors open in this process right now (from `/proc/self/fd`).
pub fn open_fds() -> Result<Vec<RawFd>> {
    let dir =
        std::fs::read_dir("/proc/self/fd").map_err(|e| Error::path("read", "/proc/self/fd", e))?;
    let mut fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    fds.sort_unstable();
    Ok(fds)
}
