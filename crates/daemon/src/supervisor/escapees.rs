//! Escapees: descendants of a worker that left its process group (`setsid`, a double fork)
//! and so survive every signal to the group.
//!
//! The daemon binary makes itself a child subreaper ([`crate::RunOptions::subreaper`]): when an
//! escapee's parent exits, the kernel reparents it to the daemon instead of init. Each worker's
//! environment carries a tag ([`WORKER_TAG_ENV`]) that its descendants inherit; when a worker
//! is gone (and whenever a child of the daemon exits), the daemon looks at its adopted
//! children and stops those tagged with one of its workers that no longer runs: TERM (and
//! CONT), then KILL after `kill_timeout`. They are reaped by pid with the daemon's other
//! unknown children, never with `waitpid(-1)`.
//!
//! Untagged adopted children (descendants of processes the daemon inherited, or a job's
//! descendant that cleared its environment) are never signalled, only reaped once they exit.
//! Without cgroups some escapes remain possible: a descendant whose own parent is still alive
//! is not the daemon's child yet (it is caught when that parent exits); a process that clears
//! its environment is not recognised; and the descendants of a daemon killed by SIGKILL go to
//! init (the next daemon stops what is left in the recorded process groups, not these).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use procyard_core::{Escalation, Pid, ProcStat, Signal, StopLadder, Stopping};

use super::process::{WORKER_TAG_ENV, daemon_tag};

/// The daemon's adopted escapees.
#[derive(Debug, Default)]
pub(crate) struct Escapees {
    /// Children the daemon had before it started a worker, by pid and start time: never ours
    /// to stop.
    foreign: HashSet<(i32, u64)>,
    /// Escapees being stopped (TERM, `kill_timeout`, KILL, then given up on after
    /// [`procyard_core::KILL_SETTLE`]).
    stopping: HashMap<Pid, Stopping>,
}

impl Escapees {
    /// Remembers the children the daemon already has (call before the first worker starts).
    pub fn note_foreign(&mut self, children: &[i32]) {
        for &pid in children {
            if let Some(start) = start_time(pid) {
                self.foreign.insert((pid, start));
            }
        }
    }

    /// Starts stopping every adopted child tagged with a worker not in `running` (worker ids);
    /// `known` are the pids of the daemon's own workers.
    pub fn stop_orphaned(
        &mut self,
        children: &[i32],
        known: &HashSet<i32>,
        running: &HashSet<u64>,
        kill_timeout: Duration,
    ) {
        for &raw in children {
            if known.contains(&raw) {
                continue;
            }
            let Some(pid) = Pid::from_raw(raw) else { continue };
            if self.stopping.contains_key(&pid) {
                continue;
            }
            let Some(stat) = ProcStat::read(pid).ok().flatten() else { continue };
            if stat.is_zombie() || self.foreign.contains(&(raw, stat.start_time)) {
                continue;
            }
            let Some(worker) = tagged_worker(pid) else { continue };
            if running.contains(&worker) {
                continue;
            }
            tracing::info!(%pid, worker, "stopping a process that escaped its worker's process group");
            // Our child, not reaped yet: the pid cannot name another process.
            let (first, stopping) = StopLadder::term_then_kill(kill_timeout).begin(Instant::now());
            signal(pid, first);
            signal(pid, Signal::CONT);
            self.stopping.insert(pid, stopping);
        }
    }

    /// KILLs escapees whose TERM deadline passed; gives up on those KILL did not end.
    pub fn on_deadlines(&mut self, now: Instant) {
        self.stopping.retain(|pid, stopping| match stopping.escalate(now) {
            Escalation::Wait => true,
            Escalation::Send(sig) => {
                tracing::warn!(%pid, "escaped process ignored SIGTERM: sending SIGKILL");
                signal(*pid, sig);
                true
            }
            Escalation::Exhausted => {
                tracing::error!(%pid, "escaped process still there after SIGKILL: giving up on it");
                false
            }
        });
    }

    /// KILLs every escapee being stopped now (a forceful stop); returns their pids.
    pub fn kill_all(&mut self) -> Vec<Pid> {
        let pids: Vec<Pid> = self.stopping.drain().map(|(pid, _)| pid).collect();
        for pid in &pids {
            signal(*pid, Signal::KILL);
        }
        pids
    }

    /// Forgets an escapee that was reaped; whether it was one being stopped.
    pub fn reaped(&mut self, pid: Pid) -> bool {
        self.stopping.remove(&pid).is_some()
    }

    /// The next instant an escapee needs attention.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.stopping.values().map(|s| s.deadline().instant()).min()
    }

    /// Whether no escapee is being stopped.
    pub fn is_empty(&self) -> bool {
        self.stopping.is_empty()
    }
}

fn signal(pid: Pid, sig: Signal) {
    if let Err(e) = procyard_core::kill_process(pid, sig) {
        tracing::debug!(%pid, %sig, error = %e, "signal to an escaped process not delivered");
    }
}

fn start_time(pid: i32) -> Option<u64> {
    Some(ProcStat::read(Pid::from_raw(pid)?).ok()??.start_time)
}

/// The id of this daemon's worker that `pid` descends from, from the tag in its environment.
fn tagged_worker(pid: Pid) -> Option<u64> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    worker_in_environ(&environ, daemon_tag())
}

fn worker_in_environ(environ: &[u8], daemon: &str) -> Option<u64> {
    let prefix = format!("{WORKER_TAG_ENV}={daemon}-");
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .and_then(|id| std::str::from_utf8(id).ok()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_names_a_worker_of_this_daemon_only() {
        let env = b"A=1\0PROCYARD_WORKER=42-7-13\0B=2\0";
        assert_eq!(worker_in_environ(env, "42-7"), Some(13));
        assert_eq!(worker_in_environ(env, "42-8"), None, "another daemon's worker");
        assert_eq!(worker_in_environ(b"PROCYARD_WORKER=42-7-x\0", "42-7"), None);
        assert_eq!(worker_in_environ(b"", "42-7"), None);
        assert_eq!(worker_in_environ(b"XPROCYARD_WORKER=42-7-1", "42-7"), None);
    }
}
