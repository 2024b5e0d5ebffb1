//! Platform code: every `unsafe` block of procyard lives below this module.
//!
//! Each function here wraps one or a few system calls that `rustix` does not offer with the
//! semantics procyard needs (`posix_spawn` with `POSIX_SPAWN_SETSID`, `fork`, signal masks and
//! dispositions, `signalfd`, `pidfd_send_signal` for every signal number, `waitid` with the
//! child's rusage, `mmap` of a file that only `read(2)` fills). Each `unsafe` block carries
//! a `// SAFETY:` comment; every function exported
//! from here is safe to call with any argument, except the ones marked `unsafe fn`, whose
//! `# Safety` section says what the caller must uphold.
#![allow(unsafe_code, reason = "the one place where procyard talks to libc directly")]

pub(crate) mod fd;
pub(crate) mod fork;
pub(crate) mod forking;
pub(crate) mod map;
pub(crate) mod signal;
pub(crate) mod spawn;
pub(crate) mod vfork;
pub(crate) mod wait;

use std::io;

/// Turns a `-1`-and-errno return into an `io::Result`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// Turns a `0`-or-errno return (the `posix_spawn` family) into an `io::Result`.
fn cvt_errno(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(ret)) }
}
