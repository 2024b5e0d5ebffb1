//! Child subreaping: catch the processes that escape a job's process group.
//!
//! A job may start a grandchild in a new session (`setsid`): it leaves the job's process group,
//! so stopping the group misses it, and when its parent exits it is reparented — to init, where
//! nobody stops it. A process that has called [`become_subreaper`] (`PR_SET_CHILD_SUBREAPER`)
//! receives those orphans instead: they become its children, which it can find
//! ([`adopted_children`]), stop ([`stop_adopted`]) and reap ([`reap_adopted`]) by pid, never with
//! `waitpid(-1)`. A child's pid cannot be recycled before its parent reaps it, so signalling an
//! adopted child by pid is race-free.
//!
//! Only a process that owns all its children should become a subreaper (a supervisor binary,
//! a job's monitor): a library must not do it behind its caller's back.
//!
//! # Limitations
//! Without cgroups, a descendant still escapes while the process that would adopt it is alive
//! between it and us: a daemonizing grandchild whose intermediate parent keeps running stays that
//! parent's child until it exits. Processes reparented to us are found only when we look (when a
//! job stops), and a process that changes its own parent chain faster than we scan can be missed.

use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::identity::ProcStat;
use crate::signal::kill_process;
use crate::{Deadline, Error, Pid, Result, Signal};

/// Makes the calling process a child subreaper: orphaned descendants are reparented to it.
pub fn become_subreaper() -> Result<()> {
    rustix::process::set_child_subreaper(Some(Pid::current().to_rustix()))
        .map_err(|e| Error::os("become a child subreaper", e))
}

/// The children of this process that are not in `known`: descendants it adopted as a
/// subreaper. Processes that vanish while this is read are skipped.
pub fn adopted_children(known: &[Pid]) -> Vec<Pid> {
    children().into_iter().filter(|pid| !known.contains(pid)).collect()
}

/// Every child of this process (started or adopted), from `/proc/self/task/*/children`, or by
/// scanning `/proc` where the kernel lacks that file.
pub fn children() -> Vec<Pid> {
    let mut out = Vec::new();
    let mut listed = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                listed = true;
                out.extend(
                    text.split_whitespace()
                        .filter_map(|s| s.parse().ok())
                        .filter_map(Pid::from_raw),
                );
            }
        }
    }
    if listed {
        return out;
    }
    let me = Pid::current().as_raw();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Pid::from_raw)
        .filter(|pid| matches!(ProcStat::read(*pid), Ok(Some(stat)) if stat.ppid == me))
        .collect()
}

/// Reaps adopted children (not in `known`) that have exited; returns their pids.
pub fn reap_adopted(known: &[Pid]) -> Vec<Pid> {
    let mut reaped = Vec::new();
    for pid in adopted_children(known) {
        let options =
            rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG;
        if let Ok(Some(_)) =
            rustix::process::waitid(rustix::process::WaitId::Pid(pid.to_rustix()), options)
        {
            reaped.push(pid);
        }
    }
    reaped
}

/// Stops every adopted child (not in `known`): `signal` (and SIGCONT) first, then SIGKILL for
/// those still there after `grace`, reaping them all. Returns how many were found; fails with
/// [`Error::Timeout`] if some are still there a second after SIGKILL (stuck in the kernel).
/// Children adopted while this runs (an escapee's own orphans) are caught by later rounds.
pub fn stop_adopted(known: &[Pid], signal: Signal, grace: Duration) -> Result<usize> {
    let term_deadline = Deadline::after(grace);
    let mut kill_deadline: Option<Deadline> = None;
    let mut found: Vec<Pid> = Vec::new();
    loop {
        reap_adopted(known);
        let alive = adopted_children(known);
        if alive.is_empty() {
            return Ok(found.len());
        }
        if kill_deadline.is_none() && term_deadline.is_expired() {
            kill_deadline = Some(Deadline::after(KILL_SETTLE));
        }
        for pid in &alive {
            if !found.contains(pid) {
                found.push(*pid);
                if kill_deadline.is_none() {
                    let _ = kill_process(*pid, signal);
                    let _ = kill_process(*pid, Signal::CONT);
                }
            }
            if kill_deadline.is_some() {
                let _ = kill_process(*pid, Signal::KILL);
            }
        }
        let wait = match kill_deadline {
            Some(d) if d.is_expired() => {
                return Err(Error::Timeout { what: "adopted processes to exit after SIGKILL" });
            }
            Some(d) => d.remaining().min(POLL_SLICE),
            None => term_deadline.remaining().min(POLL_SLICE),
        };
        wait_any_exit(&alive, wait);
    }
}

/// How long adopted processes get to vanish after SIGKILL.
const KILL_SETTLE: Duration = Duration::from_secs(1);
/// The longest single wait, so processes adopted meanwhile are signalled promptly too.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// Waits until one of `pids` exits (its pidfd becomes readable) or `timeout` passes.
fn wait_any_exit(pids: &[Pid], timeout: Duration) {
    let fds: Vec<OwnedFd> = pids
        .iter()
        .filter_map(|pid| {
            rustix::process::pidfd_open(pid.to_rustix(), rustix::process::PidfdFlags::empty()).ok()
        })
        .collect();
    if fds.is_empty() {
        return;
    }
    let mut polls: Vec<_> =
        fds.iter().map(|fd| rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)).collect();
    let timeout = rustix::event::Timespec::try_from(timeout)
        .unwrap_or(rustix::event::Timespec { tv_sec: 1, tv_nsec: 0 });
    let _ = rustix::event::poll(&mut polls, Some(&timeout));
}
