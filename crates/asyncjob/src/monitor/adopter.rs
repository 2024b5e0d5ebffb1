//! The monitor as a child subreaper: a job's descendants that escape its process group
//! (`setsid`, double forks) are reparented to the monitor when their parent exits, stopped
//! with the job when the job is stopped, and reaped.
//!
//! The monitor owns all its children (it is a daemon of its own, started only to run the job),
//! so it may become a subreaper and reap adopted processes by pid; it still never waits for
//! "any" child. While the job runs, adopted processes that exit are reaped as they go (on
//! `SIGCHLD`, read from a signalfd), so they do not pile up as zombies.

use std::time::Duration;

use procyard_core::subreaper::{become_subreaper, reap_adopted, stop_adopted};
use procyard_core::{Pid, Signal, SignalFd};

/// The monitor's view of the processes it adopted.
pub(crate) struct Adopter {
    /// `SIGCHLD` as a descriptor, when the monitor could become a subreaper (and block it).
    children: Option<SignalFd>,
}

impl Adopter {
    /// Makes this process (the monitor) a child subreaper, before the job exists so that every
    /// escapee of it is reparented here. Where the kernel refuses, the monitor still runs the
    /// job; escapees then go to init as before.
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

    /// Whether there are adopted processes to reap and stop.
    pub fn is_adopting(&self) -> bool {
        self.children.is_some()
    }

    /// The `SIGCHLD` descriptor, to register with the monitor's event loop.
    pub fn child_signals(&mut self) -> Option<&mut SignalFd> {
        self.children.as_mut()
    }

    /// Drains the pending `SIGCHLD`s and reaps the adopted processes (every child but `job`)
    /// that have exited.
    pub fn reap(&self, job: Pid) {
        if let Some(children) = &self.children {
            let _ = children.pending();
            reap_adopted(&[job]);
        }
    }

    /// After the job ended (and was reaped): stops the escapees adopted meanwhile with
    /// `signal`, then SIGKILL after `grace`, and reaps them.
    pub fn stop_escapees(&self, signal: Signal, grace: Duration) {
        if self.children.is_none() {
            return;
        }
        match stop_adopted(&[], signal, grace) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(n, %signal, "stopped processes that escaped the job's group"),
            Err(e) => tracing::debug!(error = %e, "escapees outlived SIGKILL"),
        }
    }
}
