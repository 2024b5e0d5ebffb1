//! Escapees: processes of the task that left its group.
//!
//! The supervisor is a child subreaper: when a process of the task's tree loses its parent —
//! a `setsid` grandchild whose parent exited, a background job of the task's shell once the
//! shell is gone — it is reparented to the supervisor instead of to init. Those *escapees* are
//! found in `/proc` as children of ours that are not the task ([`subreaper::adopted_children`]),
//! receive every signal the task receives, are stopped when the task ends or is deleted (the
//! ladders of `state/ladder.rs`), and are reaped by pid on `SIGCHLD`. A child's pid cannot be
//! recycled before we reap it, so signalling an escapee (or the process group it leads) by pid
//! is race-free.
//!
//! Without cgroups a descendant still escapes while its own parent lives on outside the task's
//! group (a daemon that double-forks and whose intermediate process stays alive): it is
//! reparented to us, and so stopped, only once that parent exits.

use procyard_core::{Pid, ProcStat, Signal, subreaper};

use super::Supervisor;

impl Supervisor {
    /// Our children by birth: the task's leader until it is reaped.
    pub(super) fn known_children(&self) -> Vec<Pid> {
        self.child.as_ref().filter(|c| c.exit().is_none()).map(|c| c.id()).into_iter().collect()
    }

    /// The escapees now (children of ours that are not the task, zombies included).
    pub(super) fn escapees(&self) -> Vec<Pid> {
        subreaper::adopted_children(&self.known_children())
    }

    /// Sends `signal` to each of `pids` (our adopted children): to the process group it leads,
    /// or to the task's group once its leader is gone while the escapee is in it (the unreaped
    /// escapee keeps that group id from being reused), else to the escapee alone.
    pub(super) fn signal_escapees(&self, pids: &[Pid], signal: Signal) {
        let old_group = self.process.as_ref().map(|p| p.pid.as_raw());
        // While the leader runs, its group is signalled through it.
        let leader_alive = self.child.as_ref().is_some_and(|c| c.exit().is_none());
        // (pid, whether it names a group), each target once.
        let mut targets: Vec<(Pid, bool)> = Vec::new();
        for pid in pids {
            let target = match ProcStat::read(*pid) {
                Ok(Some(st)) if st.pgid == pid.as_raw() => (*pid, true),
                Ok(Some(st)) if Some(st.pgid) == old_group => {
                    if leader_alive {
                        continue;
                    }
                    Pid::from_raw(st.pgid).map_or((*pid, false), |g| (g, true))
                }
                _ => (*pid, false),
            };
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        for (pid, group) in targets {
            let sent = if group {
                procyard_core::kill_process_group(pid, signal)
            } else {
                procyard_core::kill_process(pid, signal)
            };
            if let Err(e) = sent {
                tracing::debug!("cannot signal escapee {pid} of task {}: {e}", self.state.task.id);
            }
        }
    }

    /// SIGKILL to every escapee, no grace (start-up failure, fatal error, restart).
    pub(super) fn kill_escapees(&mut self) {
        self.signal_escapees(&self.escapees(), Signal::KILL);
        subreaper::reap_adopted(&self.known_children());
    }
}
