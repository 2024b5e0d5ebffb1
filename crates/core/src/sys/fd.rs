//! File-descriptor helpers that need raw fd numbers.

use std::io;
use std::os::fd::RawFd;

use super::cvt;

/// Whether `fd` names an open file descriptor in this process.
pub(crate) fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags; any integer is a valid argument and an
    // unknown descriptor yields EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Sets close-on-exec on a raw descriptor that this process inherited.
pub(crate) fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD change only descriptor flags, never memory; an invalid fd gives
    // EBADF.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    Ok(())
}
