//! Signal delivery, dispositions, masks and signalfd.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

/// `kill(pid, sig)`; a negative pid names a process group.
pub(crate) fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers and touches no memory of this process.
    cvt(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// Sends `sig` to the calling process itself (re-raising after `PR_SET_PDEATHSIG` lost a race).
pub(crate) fn raise_self(sig: i32) -> io::Result<()> {
    // SAFETY: getpid and kill take plain integers; the target is this very process.
    cvt(unsafe { libc::kill(libc::getpid(), sig) })?;
    Ok(())
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`: signals exactly the process the pidfd names.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: the syscall takes a valid descriptor (borrowed for the call), a signal number and
    // a null siginfo pointer, which the kernel accepts as "fill in like kill(2)".
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Resets the disposition of `sig` to `SIG_DFL`.
pub(crate) fn set_default_disposition(sig: i32) -> io::Result<()> {
    // SAFETY: a zeroed sigaction with sa_sigaction = SIG_DFL is a valid argument; the old
    // action pointer is null.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut action.sa_mask);
        cvt(libc::sigaction(sig, &action, std::ptr::null_mut()))?;
    }
    Ok(())
}

/// Builds a `sigset_t` from signal numbers.
fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and modify the set we own on the stack; invalid
    // numbers make sigaddset return EINVAL, which we ignore (they were validated by `Signal`).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks `signals` in the calling thread (threads created later inherit the mask).
pub(crate) fn block_in_thread(signals: &[i32]) -> io::Result<()> {
    let set = sigset(signals);
    // SAFETY: the set is initialised; the old-mask pointer is null.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    super::cvt_errno(ret)
}

/// Unblocks `signals` in the calling thread.
pub(crate) fn unblock_in_thread(signals: &[i32]) -> io::Result<()> {
    let set = sigset(signals);
    // SAFETY: as in `block_in_thread`.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    super::cvt_errno(ret)
}

/// Creates a non-blocking, close-on-exec signalfd for `signals`.
pub(crate) fn signalfd(signals: &[i32]) -> io::Result<OwnedFd> {
    let set = sigset(signals);
    // SAFETY: -1 asks for a new descriptor; the set is initialised.
    let fd = cvt(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: signalfd returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one pending signal from a signalfd; `Ok(None)` when none is pending.
pub(crate) fn signalfd_read(fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    // SAFETY: signalfd_siginfo is plain old data; all-zero is a valid value.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    loop {
        // SAFETY: we read at most `size` bytes into `info`, which is exactly that large.
        let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut info).cast::<libc::c_void>(), size) };
        if n == -1 {
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(err),
            }
        }
        if n as usize != size {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read from signalfd"));
        }
        return Ok(Some(info.ssi_signo as i32));
    }
}
