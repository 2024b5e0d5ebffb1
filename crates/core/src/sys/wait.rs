//! `waitid(P_PIDFD)` with the reaped child's resource use: the system call's fifth argument,
//! which neither libc's `waitid` nor rustix pass. Reaping through the pidfd names exactly our
//! child, so no pid is ever recycled under us and nothing else is reaped.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// What `waitid` reported: how the child changed state (`si_code`, `si_status`) and, when it
/// was reaped, its resource use (its own and that of the descendants it reaped).
pub(crate) struct Waited {
    /// `CLD_EXITED`, `CLD_KILLED`, `CLD_DUMPED`, …
    pub(crate) code: libc::c_int,
    /// The exit code or the signal number.
    pub(crate) status: libc::c_int,
    /// The kernel's rusage of the child.
    pub(crate) usage: libc::rusage,
}

/// `waitid(P_PIDFD, pidfd, &info, options, &usage)`; `Ok(None)` when `WNOHANG` is in
/// `options` and the child has not changed state.
pub(crate) fn waitid_pidfd(
    pidfd: BorrowedFd<'_>,
    options: libc::c_int,
) -> io::Result<Option<Waited>> {
    // SAFETY: siginfo_t and rusage are plain C structs of integers, for which all-zero bytes
    // are a valid value.
    let (mut info, mut usage): (libc::siginfo_t, libc::rusage) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: the kernel writes at most one siginfo_t and one rusage through the two pointers,
    // which point to live, writable, correctly typed locals; the pidfd is borrowed, so it stays
    // open for the call. Every argument is passed as a long, as the system call expects.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_waitid,
            libc::P_PIDFD as libc::c_long,
            pidfd.as_raw_fd() as libc::c_long,
            &mut info as *mut libc::siginfo_t,
            options as libc::c_long,
            &mut usage as *mut libc::rusage,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a successful waitid with WEXITED fills the SIGCHLD member of the union, which
    // si_pid and si_status read; with WNOHANG and no change it leaves the zeroed struct as is
    // (si_pid 0), which is still a valid read of integers.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(Waited { code: info.si_code, status, usage }))
}
