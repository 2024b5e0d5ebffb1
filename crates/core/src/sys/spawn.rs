//! Process creation with `posix_spawn` (the vfork-like fast path), and the plan that it and
//! `vfork.rs` (for what `posix_spawn` cannot express: a parent-death signal) both carry out.

use std::ffi::{CStr, CString, c_char};
use std::io;
use std::os::fd::{AsFd, RawFd};

use super::cvt_errno;

/// How the child relates to process groups and sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GroupMode {
    Inherit,
    NewGroup,
    NewSession,
}

/// Everything the spawn call needs, prepared by safe code before any process is created.
pub(crate) struct SpawnPlan<'a> {
    pub program: &'a CStr,
    pub search_path: bool,
    pub argv: &'a [CString],
    /// `None`: the child gets this process's environment as it is (`environ`).
    pub envp: Option<&'a [CString]>,
    pub cwd: Option<&'a CStr>,
    /// `(source, target)`: every source is a close-on-exec descriptor numbered above every
    /// target, so the dup2 sequence never clobbers a later source.
    pub dups: &'a [(RawFd, RawFd)],
    pub group: GroupMode,
    pub parent_death_signal: Option<i32>,
    /// Lowest descriptor number the child does not keep (above every target): everything from
    /// here up is close-on-exec in the child.
    pub min_private_fd: RawFd,
}

/// Null-terminated pointer array over `CString`s; the strings must outlive it.
pub(super) fn pointers(strings: &[CString]) -> Vec<*mut c_char> {
    let mut ptrs: Vec<*mut c_char> = strings.iter().map(|s| s.as_ptr().cast_mut()).collect();
    ptrs.push(std::ptr::null_mut());
    ptrs
}

unsafe extern "C" {
    /// The C library's environment block.
    static environ: *const *mut c_char;
}

/// The environment to hand to exec: the given block, or this process's own `environ`.
///
/// Handing over `environ` as it is avoids copying the environment at every spawn (std does the
/// same when nothing changes). Reading it races only with `std::env::set_var`, which is
/// `unsafe` precisely because its caller must rule out concurrent readers.
pub(super) fn env_pointer(envp: Option<&[*mut c_char]>) -> *const *mut c_char {
    match envp {
        Some(block) => block.as_ptr(),
        // SAFETY: reading the value of the `environ` pointer itself; glibc keeps it valid.
        None => unsafe { environ },
    }
}

/// Spawns with `posix_spawn`/`posix_spawnp`; returns the pid.
pub(crate) fn posix_spawn(plan: &SpawnPlan<'_>) -> io::Result<i32> {
    debug_assert!(plan.parent_death_signal.is_none());
    let argv = pointers(plan.argv);
    let envp = plan.envp.map(pointers);
    // SAFETY: every libc object below is initialised by its `_init` call before use and
    // destroyed by the guards; all pointers passed point to live, NUL-terminated data (the
    // CStrings and pointer arrays outlive the call); posix_spawn writes only `pid`.
    unsafe {
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        cvt_errno(libc::posix_spawnattr_init(&mut attr))?;
        let attr_guard = AttrGuard(&mut attr);
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        cvt_errno(libc::posix_spawn_file_actions_init(&mut actions))?;
        let actions_guard = ActionsGuard(&mut actions);

        let mut flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
        match plan.group {
            GroupMode::Inherit => {}
            GroupMode::NewGroup => {
                flags |= libc::POSIX_SPAWN_SETPGROUP;
                cvt_errno(libc::posix_spawnattr_setpgroup(attr_guard.0, 0))?;
            }
            GroupMode::NewSession => flags |= libc::c_int::from(libc::POSIX_SPAWN_SETSID),
        }
        cvt_errno(libc::posix_spawnattr_setflags(attr_guard.0, flags as libc::c_short))?;
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        cvt_errno(libc::posix_spawnattr_setsigmask(attr_guard.0, &empty))?;
        let all = all_catchable_signals();
        cvt_errno(libc::posix_spawnattr_setsigdefault(attr_guard.0, &all))?;

        for &(source, target) in plan.dups {
            cvt_errno(libc::posix_spawn_file_actions_adddup2(actions_guard.0, source, target))?;
        }
        // Nothing but stdio and the passed descriptors reaches the child, whatever this
        // process inherited without close-on-exec.
        cvt_errno(libc::posix_spawn_file_actions_addclosefrom_np(
            actions_guard.0,
            plan.min_private_fd,
        ))?;
        if let Some(cwd) = plan.cwd {
            cvt_errno(libc::posix_spawn_file_actions_addchdir_np(actions_guard.0, cwd.as_ptr()))?;
        }

        let mut pid: libc::pid_t = 0;
        let spawn_fn = if plan.search_path { libc::posix_spawnp } else { libc::posix_spawn };
        let ret = spawn_fn(
            &mut pid,
            plan.program.as_ptr(),
            actions_guard.0,
            attr_guard.0,
            argv.as_ptr(),
            env_pointer(envp.as_deref()),
        );
        cvt_errno(ret)?;
        Ok(pid)
    }
}

struct AttrGuard(*mut libc::posix_spawnattr_t);
impl Drop for AttrGuard {
    fn drop(&mut self) {
        // SAFETY: the pointer names an attribute object initialised by posix_spawnattr_init
        // that lives on the caller's stack for longer than this guard.
        unsafe { libc::posix_spawnattr_destroy(self.0) };
    }
}

struct ActionsGuard(*mut libc::posix_spawn_file_actions_t);
impl Drop for ActionsGuard {
    fn drop(&mut self) {
        // SAFETY: as for AttrGuard, for the file-actions object.
        unsafe { libc::posix_spawn_file_actions_destroy(self.0) };
    }
}

/// A signal set holding every signal but SIGKILL and SIGSTOP, including the two that glibc
/// reserves (32 and 33), which `sigfillset` leaves out: without them glibc's `posix_spawn`
/// child would start with those two ignored.
fn all_catchable_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain old data (an array of unsigned longs on Linux); all-zero is a
    // valid empty set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    const _: () = assert!(std::mem::size_of::<libc::sigset_t>() >= 8);
    const _: () = assert!(std::mem::align_of::<libc::sigset_t>() >= std::mem::align_of::<u64>());
    let bits: u64 = !((1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1)));
    // SAFETY: the set is at least 8 bytes and aligned for u64 (both checked at compile time);
    // its first 64 bits stand for signals 1 to 64, bit n-1 for signal n, as glibc and the
    // kernel lay the mask out on 64-bit Linux.
    unsafe { (&raw mut set).cast::<u64>().write(bits) };
    set
}

/// Moves `fd` to a close-on-exec descriptor numbered at least `min`.
pub(crate) fn dup_above(fd: impl AsFd, min: RawFd) -> io::Result<std::os::fd::OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, min)?)
}
