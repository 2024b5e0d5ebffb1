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

/// The kernel's `struct clone_args` as `clone3` takes it (its first version, 64 bytes).
#[cfg(target_env = "gnu")]
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// A fork whose child is the caller's parent's child (`clone3` with `CLONE_PARENT`), done as
/// glibc's `_Fork` does a fork: the child's thread id is written where glibc keeps it
/// (`CLONE_CHILD_SETTID` at the address glibc gave `set_tid_address`, read back with
/// `PR_GET_TID_ADDRESS`) and its robust-mutex list is registered again (the kernel clears it
/// in a new process). Like `_Fork`, it runs no `pthread_atfork` handler. glibc only (musl
/// keeps its thread id elsewhere): `Unsupported` otherwise, and wherever `clone3` or
/// `PR_GET_TID_ADDRESS` is unavailable.
///
/// # Safety
/// As for [`fork`]: one thread, or only async-signal-safe calls in the child.
#[cfg(target_env = "gnu")]
pub(crate) unsafe fn fork_sibling() -> io::Result<ForkSide> {
    let mut tid_address: *mut libc::c_int = std::ptr::null_mut();
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer through its second argument, which points
    // to a live local of that type.
    let ret =
        unsafe { libc::prctl(libc::PR_GET_TID_ADDRESS, &mut tid_address as *mut *mut libc::c_int) };
    super::cvt(ret)?;
    if tid_address.is_null() {
        return Err(io::ErrorKind::Unsupported.into());
    }
    let mut head: *mut libc::c_void = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: get_robust_list for the calling thread (0) writes the list head's address and
    // its length through two pointers to live locals of those types.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0 as libc::c_long,
            &mut head as *mut *mut libc::c_void,
            &mut len as *mut libc::size_t,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    // glibc's fork empties the child's list of held robust mutexes; this cannot (the list's
    // bookkeeping is glibc's), so it refuses while the list is not empty. The list head is
    // the kernel's `struct robust_list_head`, whose first member points to the first entry,
    // or back to the head itself when there is none.
    if !head.is_null() && len >= std::mem::size_of::<*const libc::c_void>() {
        // SAFETY: `head` is the address this thread registered with the kernel (glibc's, in
        // its thread descriptor, alive as long as the thread), at least a pointer long.
        let first = unsafe { (head as *const *const libc::c_void).read() };
        if (first as usize & !1) != head as usize {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "a robust mutex is held"));
        }
    }
    let flags = libc::CLONE_PARENT | libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID;
    // With CLONE_PARENT the exit signal is the caller's own (clone3 wants 0 here).
    let args =
        CloneArgs { flags: flags as u64, child_tid: tid_address as u64, ..Default::default() };
    // SAFETY: clone3 reads `size` bytes of `args`, a live, initialised repr(C) struct of the
    // kernel's layout. Without CLONE_VM the child runs on a copy of this stack, returning here
    // like fork; the address it writes its tid to is glibc's own slot for it in the child's
    // copy of this thread's descriptor. The caller upholds fork's contract.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>() as libc::size_t,
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: registers the list head glibc registered for this thread at start-up
            // (the child's copy of it, at the same address), as glibc's own fork does.
            unsafe { libc::syscall(libc::SYS_set_robust_list, head, len) };
            Ok(ForkSide::Child)
        }
        pid => Ok(ForkSide::Parent(pid as i32)),
    }
}

/// See the glibc version: unsupported elsewhere.
///
/// # Safety
/// None needed; the signature matches the glibc version's.
#[cfg(not(target_env = "gnu"))]
pub(crate) unsafe fn fork_sibling() -> io::Result<ForkSide> {
    Err(io::ErrorKind::Unsupported.into())
}
