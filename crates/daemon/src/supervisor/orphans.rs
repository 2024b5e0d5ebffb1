//! Workers of a dead daemon: found by the identity recorded with their leases and stopped
//! before their jobs are put back, so no job runs twice at the same time.
//!
//! A worker dies with its daemon (a parent-death SIGKILL), but the job's own subprocesses
//! live on in the worker's process group. For each recorded holder:
//! - the pid still names the recorded process (same start time, same boot): its group is
//!   ours; it is signalled as a group;
//! - the pid names another process: it was recycled, which the kernel does only once no
//!   process group of that number is left — nothing of ours remains;
//! - no process has the pid: the members of the group of that number that started no earlier
//!   than the worker are ours (the kernel keeps a pid reserved while a group of that number
//!   has members); they are signalled one by one.
//!
//! Each target gets TERM (and CONT), then KILL after the grace, and is waited for with a
//! deadline on pidfds. What is still there after that (a process stuck in the kernel) is
//! reported, and its job stays leased.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::time::Duration;

use procyard_core::{Deadline, KILL_SETTLE, Pid, ProcStat, ProcessIdentity, Signal};

use crate::queue::{Abandoned, LeaseHolder, QueueBackend, Receipt};
use crate::{Error, Result};

/// The longest single wait, so a process forked meanwhile into a group is signalled too.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Stops the workers the previous daemon left running and puts their jobs back; jobs whose
/// worker would not die stay leased. Returns how many jobs were put back.
pub(crate) fn recover(queue: &mut dyn QueueBackend, grace: Duration) -> Result<u64> {
    let abandoned = queue.abandoned()?;
    let holders: Vec<&LeaseHolder> = abandoned.iter().filter_map(|a| a.holder.as_ref()).collect();
    let mut keep: Vec<Receipt> = Vec::new();
    if !holders.is_empty() {
        let survivors = stop_holders(&holders, grace);
        for a in &abandoned {
            if a.holder.as_ref().is_some_and(|h| survivors.contains(&h.process_group)) {
                tracing::error!(job = %a.id, task = %a.task, "a worker of the previous daemon would not die: its job stays in flight (it is checked again at the next start)");
                keep.push(a.receipt);
            }
        }
        log_stopped(&abandoned, &keep);
    }
    queue.recover(&keep)
}

fn log_stopped(abandoned: &[Abandoned], keep: &[Receipt]) {
    let stopped = abandoned.iter().filter(|a| a.holder.is_some()).count() - keep.len();
    if stopped > 0 {
        tracing::info!(workers = stopped, "the previous daemon's workers are stopped");
    }
}

/// What to signal for one holder.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// The recorded process still leads its group; these are its live members.
    Group(Pid, Vec<Pid>),
    /// The leader is gone: these members of its group are left.
    Members(Vec<ProcessIdentity>),
    /// Nothing of the worker is left.
    Nothing,
}

/// A process as the `/proc` scan sees it.
#[derive(Clone, Debug)]
struct Seen {
    pid: Pid,
    stat: ProcStat,
}

fn scan() -> Vec<Seen> {
    let me = Pid::current();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Pid::from_raw)
        .filter(|pid| *pid != me)
        .filter_map(|pid| Some(Seen { pid, stat: ProcStat::read(pid).ok()?? }))
        .collect()
}

/// Decides what is left of `holder`, from a scan of `/proc`.
fn target(holder: &LeaseHolder, procs: &[Seen], boot: &str) -> Target {
    if holder.process.boot_id != boot {
        return Target::Nothing;
    }
    let group = holder.process_group;
    let live_members = || {
        procs.iter().filter(|p| {
            p.stat.pgid == group.as_raw()
                && !p.stat.is_zombie()
                && p.stat.start_time >= holder.process.start_time
        })
    };
    match procs.iter().find(|p| p.pid == holder.process.pid) {
        Some(p) if p.stat.start_time == holder.process.start_time => {
            let members: Vec<Pid> = live_members().map(|p| p.pid).collect();
            if p.stat.pgid == group.as_raw() && !members.is_empty() {
                Target::Group(group, members)
            } else {
                Target::Nothing
            }
        }
        // Recycled: the old group had emptied before the kernel gave its number away.
        Some(_) => Target::Nothing,
        None => {
            let members: Vec<ProcessIdentity> = live_members()
                .map(|p| ProcessIdentity {
                    pid: p.pid,
                    start_time: p.stat.start_time,
                    boot_id: boot.to_owned(),
                })
                .collect();
            if members.is_empty() { Target::Nothing } else { Target::Members(members) }
        }
    }
}

fn signal(target: &Target, sig: Signal) {
    let result = |r: procyard_core::Result<()>, pid: Pid| {
        if let Err(e) = r {
            tracing::debug!(%pid, %sig, error = %e, "signal to a previous daemon's worker not delivered");
        }
    };
    match target {
        Target::Group(group, _) => {
            result(procyard_core::kill_process_group(*group, sig), *group);
            if sig != Signal::KILL {
                let _ = procyard_core::kill_process_group(*group, Signal::CONT);
            }
        }
        Target::Members(members) => {
            for m in members {
                // Checked right before: a member that exited meanwhile is not signalled.
                if m.is_running().unwrap_or(false) {
                    result(procyard_core::kill_process(m.pid, sig), m.pid);
                    if sig != Signal::KILL {
                        let _ = procyard_core::kill_process(m.pid, Signal::CONT);
                    }
                }
            }
        }
        Target::Nothing => {}
    }
}

/// Stops what is left of every holder: TERM, then KILL after `grace`. Returns the process
/// groups that still had live processes when the last deadline passed.
fn stop_holders(holders: &[&LeaseHolder], grace: Duration) -> HashSet<Pid> {
    let boot = procyard_core::boot_id();
    let term_until = Deadline::after(grace);
    let mut kill_until: Option<Deadline> = None;
    let mut termed: HashSet<Pid> = HashSet::new();
    loop {
        let procs = scan();
        let targets: Vec<(Pid, Target)> = holders
            .iter()
            .map(|h| (h.process_group, target(h, &procs, boot)))
            .filter(|(_, t)| *t != Target::Nothing)
            .collect();
        if targets.is_empty() {
            return HashSet::new();
        }
        if kill_until.is_none() && term_until.is_expired() {
            kill_until = Some(Deadline::after(KILL_SETTLE));
        }
        for (group, t) in &targets {
            if kill_until.is_some() {
                signal(t, Signal::KILL);
            } else if termed.insert(*group) {
                tracing::warn!(process_group = %group, "stopping a worker the previous daemon left running");
                signal(t, Signal::TERM);
            } else if let Target::Members(_) = t {
                // Members forked since the last round get their TERM too.
                signal(t, Signal::TERM);
            }
        }
        let slice = match kill_until {
            Some(d) if d.is_expired() => {
                return targets.into_iter().map(|(g, _)| g).collect();
            }
            Some(d) => d.remaining(),
            None => term_until.remaining(),
        };
        wait_any_exit(&targets, slice.min(WAIT_SLICE));
    }
}

/// Waits until one of the processes behind `targets` exits (its pidfd turns readable) or
/// `timeout` passes.
fn wait_any_exit(targets: &[(Pid, Target)], timeout: Duration) {
    let pids = targets.iter().flat_map(|(_, t)| match t {
        Target::Group(_, members) => members.clone(),
        Target::Members(m) => m.iter().map(|m| m.pid).collect(),
        Target::Nothing => Vec::new(),
    });
    let fds: Vec<OwnedFd> = pids
        .filter_map(|pid| {
            let pid = rustix::process::Pid::from_raw(pid.as_raw())?;
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
        })
        .collect();
    let mut polls: Vec<_> =
        fds.iter().map(|fd| rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)).collect();
    let timeout = rustix::event::Timespec::try_from(timeout)
        .unwrap_or(rustix::event::Timespec { tv_sec: 0, tv_nsec: 50_000_000 });
    if let Err(e) = rustix::event::poll(&mut polls, Some(&timeout)) {
        tracing::debug!(error = %Error::Os { action: "wait for a worker to exit", source: e.into() }, "wait interrupted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(pid: i32, pgid: i32, start: u64, state: char) -> Seen {
        Seen {
            pid: Pid::from_raw(pid).unwrap(),
            stat: ProcStat { state, ppid: 1, pgid, sid: 1, num_threads: 1, start_time: start },
        }
    }

    fn holder(pid: i32, start: u64) -> LeaseHolder {
        LeaseHolder {
            process: ProcessIdentity {
                pid: Pid::from_raw(pid).unwrap(),
                start_time: start,
                boot_id: "boot".into(),
            },
            process_group: Pid::from_raw(pid).unwrap(),
        }
    }

    #[test]
    fn the_recorded_leader_means_its_group() {
        let procs = [seen(100, 100, 50, 'S'), seen(101, 100, 60, 'S')];
        let pid = |n| Pid::from_raw(n).unwrap();
        assert_eq!(
            target(&holder(100, 50), &procs, "boot"),
            Target::Group(pid(100), vec![pid(100), pid(101)])
        );
        // A zombie leader (its daemon died before reaping it) with live members: still ours.
        let procs = [seen(100, 100, 50, 'Z'), seen(101, 100, 60, 'S')];
        assert_eq!(
            target(&holder(100, 50), &procs, "boot"),
            Target::Group(pid(100), vec![pid(101)])
        );
    }

    #[test]
    fn a_recycled_pid_or_another_boot_means_nothing() {
        let procs = [seen(100, 100, 999, 'S'), seen(101, 100, 1000, 'S')];
        assert_eq!(target(&holder(100, 50), &procs, "boot"), Target::Nothing);
        let procs = [seen(100, 100, 50, 'S')];
        assert_eq!(target(&holder(100, 50), &procs, "another boot"), Target::Nothing);
    }

    #[test]
    fn without_the_leader_only_later_live_members_are_left() {
        let procs = [
            seen(101, 100, 60, 'S'),
            seen(102, 100, 40, 'S'), // older than the worker: not of it
            seen(103, 100, 70, 'Z'), // already dead
            seen(104, 7, 80, 'S'),   // another group
        ];
        match target(&holder(100, 50), &procs, "boot") {
            Target::Members(m) => {
                assert_eq!(m.iter().map(|m| m.pid.as_raw()).collect::<Vec<_>>(), [101])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(target(&holder(100, 50), &[], "boot"), Target::Nothing);
    }

    #[test]
    fn a_leader_alone_and_dead_is_nothing() {
        let procs = [seen(100, 100, 50, 'Z')];
        assert_eq!(target(&holder(100, 50), &procs, "boot"), Target::Nothing);
    }
}
