//! The spawn for what `posix_spawn` cannot express (a parent-death signal), as cheap as
//! `posix_spawn`: `clone(CLONE_VM | CLONE_VFORK)` on a small stack of its own, the way glibc's
//! `posix_spawn` works inside.
//!
//! The child shares this process's memory until it execs, so nothing is copied (no page
//! tables, no copy-on-write faults in the parent afterwards) and the calling thread sleeps
//! until the child has exec'd or died. The rules that make that sound:
//! - the child runs on a separate `mmap`ed stack with a guard page below it, sized for the
//!   child's own frames and for glibc's `execvpe` (which builds a new argv on the stack to run a
//!   script through `/bin/sh`);
//! - every signal (glibc's internal two too) is blocked in the calling thread around `clone`, so
//!   no handler of this process ever runs in the child; the child sets every disposition to
//!   the default before it unblocks them, just before exec;
//! - the child reads only what the parent prepared (the plan, argv, envp), which the suspended
//!   calling thread keeps alive, calls only async-signal-safe system-call wrappers (no
//!   allocation, no lock, no thread-local state of Rust's, no panic), and reports a failure by
//!   storing its errno in memory the parent reads after `clone` returns, then `_exit(127)`.
//!
//! No file-descriptor table is shared (`CLONE_FILES` is not set), so the child's `dup2`s and
//! `close_range` never touch this process's descriptors.

use std::ffi::{c_char, c_int, c_void};
use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

use super::spawn::{GroupMode, SpawnPlan, env_pointer, pointers};

/// Stack for the child's frames and glibc's `execvpe`: its path buffer (at most `PATH_MAX` +
/// `NAME_MAX`) and, for a script without `#!`, a copy of argv (added per argument).
const CHILD_STACK_BASE: usize = 64 * 1024;

/// Highest signal number to reset in the child (covers real-time signals).
const MAX_SIGNAL: c_int = 64;

/// The kernel's signal-set size on 64-bit Linux (64 signals, one bit each).
///
/// The kernel's `struct sigaction` (handler, flags, restorer where the architecture has one,
/// mask) is at most 32 bytes on 64-bit Linux, and all zeros is `SIG_DFL` with no flags and an
/// empty mask on every layout: `[0u64; 4]` is the default action.
const KERNEL_SIGSET_BYTES: libc::c_long = 8;

/// What the child reads (prepared by the parent, kept alive by the suspended calling thread)
/// and the one thing it writes.
struct ChildArgs<'a> {
    plan: &'a SpawnPlan<'a>,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
    parent_pid: c_int,
    /// The errno of the step that failed; 0 while nothing has.
    error: AtomicI32,
}

/// Spawns `plan` with `clone(CLONE_VM | CLONE_VFORK)`; returns the pid once the child has
/// exec'd, or the errno of the step that failed (the child is reaped then).
pub(crate) fn vfork_exec(plan: &SpawnPlan<'_>) -> io::Result<i32> {
    let argv = pointers(plan.argv);
    let envp_block = plan.envp.map(pointers);
    let envp = env_pointer(envp_block.as_deref());
    let stack = ChildStack::take(CHILD_STACK_BASE + (plan.argv.len() + 3) * size_of::<usize>())?;
    let args = ChildArgs {
        plan,
        argv: argv.as_ptr(),
        envp,
        parent_pid: rustix::process::getpid().as_raw_nonzero().get(),
        error: AtomicI32::new(0),
    };
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    let pid = {
        let _blocked = AllSignalsBlocked::new()?;
        // SAFETY: `child_main` runs on `stack` (mapped read-write, its top 16-byte aligned,
        // unmapped only after clone returns, which CLONE_VFORK delays until the child has
        // exec'd or exited, so the child never runs on freed memory) with a pointer to `args`,
        // which lives on this frame until then too. Every signal is blocked, so no handler runs
        // on the child's stack in our memory; the child keeps to the rules of `child_main`.
        let pid = unsafe {
            libc::clone(child_main, stack.top(), flags, (&raw const args).cast_mut().cast())
        };
        if pid == -1 {
            return Err(io::Error::last_os_error());
        }
        pid
    };
    stack.give_back();
    let errno = args.error.load(Ordering::Acquire);
    if errno == 0 {
        return Ok(pid);
    }
    // The child failed before exec and called _exit: reap it by its own pid.
    loop {
        // SAFETY: waits for our own child by pid; the status pointer may be null.
        let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        if r != -1 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    Err(io::Error::from_raw_os_error(errno))
}

/// The child's entry point: runs the plan, execs, or stores the errno and `_exit`s.
///
/// Runs on the child's own stack in memory shared with the parent: it may call only
/// async-signal-safe functions, must not allocate, panic, take a lock or touch Rust's
/// thread-local state (the thread pointer is the parent thread's), and never returns.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` that `vfork_exec` passed to clone, alive until we exec or
    // exit (the parent thread is suspended until then).
    let args = unsafe { &*arg.cast::<ChildArgs<'_>>() };
    // SAFETY: we are the freshly cloned child; `run_child` keeps to the rules above.
    let errno = unsafe { run_child(args) };
    args.error.store(if errno == 0 { libc::EINVAL } else { errno }, Ordering::Release);
    // SAFETY: ends the child without running destructors or atexit handlers (which belong to
    // the parent, whose memory we share).
    unsafe { libc::_exit(127) }
}

/// The steps between clone and exec. Returns the errno of the step that failed.
///
/// # Safety
/// Only for the child made by `vfork_exec`'s clone, before it execs or `_exit`s.
unsafe fn run_child(args: &ChildArgs<'_>) -> c_int {
    let plan = args.plan;
    // SAFETY: `__errno_location` returns the calling thread's errno slot (the parent thread's,
    // which is suspended: nothing else reads or writes it meanwhile).
    let errno = || unsafe { *libc::__errno_location() };
    // SAFETY: each call is an async-signal-safe system-call wrapper taking plain integers or
    // pointers to data the parent prepared and keeps alive (the plan's C strings, argv, envp)
    // or to live buffers on this stack at least as large as the kernel reads (a zeroed kernel
    // sigaction, a signal set).
    unsafe {
        // Default dispositions first, while every signal is still blocked: a handler of the
        // parent must never run here. By system call, as glibc's `posix_spawn` does, since
        // glibc's `sigaction` refuses its own two (32 and 33), which the parent may ignore
        // (an ignored signal stays ignored across exec).
        let default_action = [0u64; 4];
        for sig in 1..=MAX_SIGNAL {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    default_action.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    KERNEL_SIGSET_BYTES,
                );
            }
        }
        match plan.group {
            GroupMode::Inherit => {}
            GroupMode::NewGroup => {
                if libc::setpgid(0, 0) == -1 {
                    return errno();
                }
            }
            GroupMode::NewSession => {
                if libc::setsid() == -1 {
                    return errno();
                }
            }
        }
        if let Some(sig) = plan.parent_death_signal {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) == -1 {
                return errno();
            }
            // The parent may have died before prctl took effect: then we were reparented and
            // send the signal ourselves (delivered once the mask is emptied, if blockable).
            if libc::getppid() != args.parent_pid {
                libc::kill(libc::getpid(), sig);
            }
        }
        for &(source, target) in plan.dups {
            if libc::dup2(source, target) == -1 {
                return errno();
            }
        }
        // Nothing but stdio and the passed descriptors reaches the program, whatever this
        // process inherited without close-on-exec.
        libc::syscall(
            libc::SYS_close_range,
            plan.min_private_fd as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        );
        if let Some(cwd) = plan.cwd
            && libc::chdir(cwd.as_ptr()) == -1
        {
            return errno();
        }
        let empty: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const empty,
            std::ptr::null_mut::<u64>(),
            KERNEL_SIGSET_BYTES,
        );
        if plan.search_path {
            libc::execvpe(plan.program.as_ptr(), args.argv.cast(), args.envp.cast());
        } else {
            libc::execve(plan.program.as_ptr(), args.argv.cast(), args.envp.cast());
        }
        errno()
    }
}

/// Every signal blocked in the calling thread (glibc's internal ones too, which
/// `pthread_sigmask` would leave out) until dropped, which restores the previous mask.
struct AllSignalsBlocked {
    previous: u64,
}

impl AllSignalsBlocked {
    fn new() -> io::Result<AllSignalsBlocked> {
        let all: u64 = !0;
        let mut previous: u64 = 0;
        // SAFETY: rt_sigprocmask reads one kernel signal set (8 bytes on 64-bit Linux) from
        // `all` and writes the old one to `previous`, both live u64s on this stack.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &raw const all,
                &raw mut previous,
                KERNEL_SIGSET_BYTES,
            )
        };
        if ret == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(AllSignalsBlocked { previous })
    }
}

impl Drop for AllSignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: as in `new`, restoring the mask saved there; no old mask is written.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &raw const self.previous,
                std::ptr::null_mut::<u64>(),
                KERNEL_SIGSET_BYTES,
            );
        }
    }
}

/// An anonymous private mapping for the child's stack, with a `PROT_NONE` guard page at its
/// low end (stacks grow down), unmapped on drop.
///
/// Each thread keeps the last one it used for its next spawn (its pages stay mapped and
/// resident, a few KiB, so no spawn pays mmap, mprotect, munmap and their page faults and TLB
/// flushes): the calling thread sleeps while its child runs on it, so one thread's spawns never
/// share a stack; a spawn that finds none (the first, or one from a signal handler in the
/// middle of another) maps a new one.
struct ChildStack {
    base: *mut c_void,
    len: usize,
    /// The bytes above the guard page.
    usable: usize,
}

thread_local! {
    static SPARE_STACK: std::cell::Cell<Option<ChildStack>> = const { std::cell::Cell::new(None) };
}

impl ChildStack {
    /// This thread's spare stack if it has one of at least `size` bytes, else a new one.
    fn take(size: usize) -> io::Result<ChildStack> {
        if let Ok(Some(stack)) = SPARE_STACK.try_with(std::cell::Cell::take)
            && stack.usable >= size
        {
            return Ok(stack);
        }
        ChildStack::new(size)
    }

    /// Keeps this stack as the thread's spare (dropping, so unmapping, any other).
    fn give_back(self) {
        // Where the thread-local is already gone (a spawn from a thread-local destructor), the
        // closure is dropped uncalled, and with it this stack.
        let _ = SPARE_STACK.try_with(|spare| spare.set(Some(self)));
    }

    fn new(size: usize) -> io::Result<ChildStack> {
        // SAFETY: sysconf takes a plain integer; glibc answers this one from the auxiliary
        // vector (never -1 on Linux; 4096 stands in if it ever were).
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = size.div_ceil(page) * page + page;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing; it
        // overlaps nothing of ours.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len, usable: len - page };
        // SAFETY: the first page of the mapping we own; nothing points into it.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The initial stack pointer: one past the mapping's end (page-aligned).
    fn top(&self) -> *mut c_void {
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing references any more
        // (the child that ran on it has exec'd or exited).
        unsafe { libc::munmap(self.base, self.len) };
    }
}
