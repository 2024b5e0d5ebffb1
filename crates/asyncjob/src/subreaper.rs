//! The monitor as a child subreaper: a job's descendants that escape its process group
//! (`setsid`, double forks) are reparented to the monitor when their parent exits, stopped
//! with the job when the job is stopped, and reaped.
//!
//! The monitor owns all its children (it is a daemon of its own, started only to run the job),
//! so it may become a subreaper and reap adopted processes by pid; it still never waits for
//! "any" child. While the job runs, adopted processes that exit are reaped as they go (on
//! `SIGCHLD`, read from a signalfd), so they do not pile up as zombies.

use std::os::fd::AsFd;
use std::time::Duration;

use procyard_core::subreaper::{become_subreaper, reap_adopted, stop_adopted};
use procyard_core::{Child, Deadline, Exit, Signal, SignalFd};
use rustix::event::{PollFd, PollFlags, Timespec};

/// The monitor's view of the processes it adopted.
pub(crate) struct Adopter {
    /// `SIGCHLD` as a descriptor, when the monitor could become a subreaper (and block it).
    children: Option<SignalFd>,
}

impl Adopter {
    /// Makes this process (the monitor) a child subreaper. Where the kernel refuses, the
    /// monitor still runs the job; escapees then go to init as before.
    pub fn new() -> Adopter {
        if let Err(e) = become_subreaper() {
            tracing::debug!(error = %e, "not a child subreaper: escapees will not be stopped");
            return Adopter { children: None };
        }
        let children = SignalFd::new(&[Signal::CHLD])
            .inspect_err(|e| tracing::debug!(error = %e, "no SIGCHLD descriptor"))
            .ok();
        Adopter { children }
    }

    /// Waits for the job until `deadline` (forever without one), reaping adopted processes
    /// that exit meanwhile; `Ok(None)` if the job still runs at the deadline.
    pub fn wait(
        &self,
        child: &mut Child,
        deadline: Option<Deadline>,
    ) -> procyard_core::Result<Option<Exit>> {
        let Some(children) = &self.children else {
            return match deadline {
                Some(deadline) => child.wait_deadline(deadline),
                None => child.wait().map(Some),
            };
        };
        let job = [child.id()];
        loop {
            if let Some(exit) = child.try_wait()? {
                return Ok(Some(exit));
            }
            let timeout = match deadline {
                Some(d) if d.is_expired() => return Ok(None),
                Some(d) => Some(
                    Timespec::try_from(d.remaining())
                        .unwrap_or(Timespec { tv_sec: i64::MAX / 2, tv_nsec: 0 }),
                ),
                None => None,
            };
            let mut fds = [
                PollFd::from_borrowed_fd(child.pidfd(), PollFlags::IN),
                PollFd::from_borrowed_fd(children.as_fd(), PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(procyard_core::Error::Process {
                        action: "poll",
                        pid: child.id(),
                        source: e.into(),
                    });
                }
            }
            if fds[0].revents().contains(PollFlags::IN) {
                // The job ended: reaped at the top of the loop, adopted ones by `finish`.
                continue;
            }
            if fds[1].revents().contains(PollFlags::IN) {
                let _ = children.pending();
                reap_adopted(&job);
            }
        }
    }

    /// After the job ended: when it was stopped (ended by a signal, or by its timeout), stops
    /// the escapees adopted meanwhile — SIGKILL if SIGKILL ended the job, otherwise SIGTERM and
    /// SIGKILL after `grace` — and reaps them. After a normal exit, escapees are left alone (as
    /// the other members of the job's process group are): they go to init, which reaps them,
    /// when the monitor exits right after.
    pub fn finish(&self, outcome: Option<Exit>, timed_out: bool, grace: Duration) {
        if self.children.is_none() {
            return;
        }
        let ended_by = outcome.and_then(Exit::signal);
        let signal = match ended_by {
            Some(Signal::KILL) => Signal::KILL,
            Some(_) => Signal::TERM,
            None if timed_out => Signal::TERM,
            None => return,
        };
        match stop_adopted(&[], signal, grace) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(n, %signal, "stopped processes that escaped the job's group"),
            Err(e) => tracing::debug!(error = %e, "escapees outlived SIGKILL"),
        }
    }
}
