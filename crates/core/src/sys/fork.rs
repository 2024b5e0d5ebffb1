//! `fork`, `_exit` and the process-attribute calls used around them.

use std::io;

/// Which side of a fork we are on.
pub(crate) enum ForkSide {
    Parent(i32),
    Child,
}

/// `fork()`.
///
/// # Safety
/// The process must have exactly one thread, or the child must call only async-signal-safe
/// functions until it execs or `_exit`s: any lock held by another thread at the fork stays
/// locked forever in the child.
pub(crate) unsafe fn fork() -> io::Result<ForkSide> {
    // SAFETY: the caller upholds the contract above.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(ForkSide::Child),
        pid => Ok(ForkSide::Parent(pid)),
    }
}

/// `_exit(code)`: ends the process at once, without destructors, atexit handlers or flushing
/// stdio buffers (which a forked child shares with its parent).
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}

/// Sets the signal this process receives when its parent thread dies.
pub(crate) fn set_parent_death_signal(sig: i32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a plain integer argument.
    let ret = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
    super::cvt(ret)?;
    Ok(())
}
