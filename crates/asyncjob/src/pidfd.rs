//! Watching a process that is not our child (the job's monitor, the job itself) through a
//! pidfd: readable once the process has exited, and pinning its pid while it is held.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use procyard_core::event::retry_interrupted;
use procyard_core::{Backoff, Deadline, Pid, ProcessIdentity};
use rustix::event::{PollFd, PollFlags, Timespec};

use crate::state::JobState;

/// A pidfd of `pid`, if it names a live (or unreaped) process.
pub(crate) fn open(pid: Pid) -> Option<OwnedFd> {
    let raw = rustix::process::Pid::from_raw(pid.as_raw())?;
    rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).ok()
}

/// A pidfd of the monitor named by `state`, if that process still runs (checked by identity
/// after opening the pidfd, so the pidfd names the monitor and not a recycled pid).
pub(crate) fn monitor(state: &JobState) -> Option<OwnedFd> {
    let pid = Pid::from_raw(state.ppid)?;
    let fd = open(pid)?;
    let identity = ProcessIdentity {
        pid,
        start_time: state.monitor_start_time?,
        boot_id: state.boot_id.clone()?,
    };
    identity.is_running().ok()?.then_some(fd)
}

/// Waits until `fd` is readable (the process exited); false if the deadline passed first.
pub(crate) fn wait_exit(fd: &OwnedFd, deadline: Option<Deadline>) -> bool {
    loop {
        if deadline.is_some_and(Deadline::is_expired) {
            return false;
        }
        let ready = retry_interrupted(|| {
            let timeout = deadline.map(|d| {
                Timespec::try_from(d.remaining())
                    .unwrap_or(Timespec { tv_sec: i64::MAX / 2, tv_nsec: 0 })
            });
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            rustix::event::poll(&mut fds, timeout.as_ref()).map_err(io::Error::from)
        });
        match ready {
            // Timed out: the loop looks at the deadline again.
            Ok(0) => continue,
            // Readable, or a pidfd that cannot be polled: either way, read the state again.
            Ok(_) | Err(_) => return true,
        }
    }
}

/// The pauses between looks at a state whose monitor cannot be watched by pidfd (gone, or
/// not yet named in the state): short at first, never long.
const LOOK_AGAIN: Backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(20));

/// Pauses before look number `attempt` (1 for the first) at a state that offers no pidfd,
/// but never past `deadline`.
pub(crate) fn pause(attempt: u32, deadline: Option<Deadline>) {
    let delay = LOOK_AGAIN.delay(attempt);
    std::thread::sleep(deadline.map_or(delay, |d| delay.min(d.remaining())));
}
