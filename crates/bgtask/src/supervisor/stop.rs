//! Stopping a task and what it leaves behind.
//!
//! The supervisor is a child subreaper: when a process of the task's tree loses its parent —
//! a `setsid` grandchild whose parent exited, a background job of the task's shell once the
//! shell is gone — it is reparented to the supervisor instead of to init. Those *escapees* are
//! found in `/proc` as children of ours that are not the task ([`subreaper::adopted_children`]),
//! receive every signal the task receives, are stopped when the task ends or is deleted, and
//! are reaped by pid on `SIGCHLD`. A child's pid cannot be recycled before we reap it, so
//! signalling an escapee (or the process group it leads) by pid is race-free.
//!
//! [`Stop`] is the ladder used for both: on delete, INT → TERM → KILL to the task's group and
//! the escapees; after the task's leader exited, TERM → KILL to what it left running.
//!
//! Without cgroups a descendant still escapes while its own parent lives on outside the task's
//! group (a daemon that double-forks and whose intermediate process stays alive): it is
//! reparented to us, and so stopped, only once that parent exits.

use std::time::Duration;

use mio::Token;
use procyard_core::{Deadline, Pid, ProcStat, Signal, subreaper};

use super::{Deleting, Event, GRACE, Response, Supervisor};

/// KILLs re-sent to processes that outlive the last step before the ladder gives up on them
/// (a process stuck in the kernel).
const KILL_RETRIES: u8 = 3;

/// The delete ladder: the task's group and its escapees.
pub(super) const DELETE_LADDER: &[Signal] = &[Signal::INT, Signal::TERM, Signal::KILL];

/// The sweep after the task's leader exited: what it left running.
pub(super) const SWEEP_LADDER: &[Signal] = &[Signal::TERM, Signal::KILL];

/// A signal ladder in progress: one step per grace period.
#[derive(Debug)]
pub(super) struct Stop {
    ladder: &'static [Signal],
    /// Steps taken (0: none yet).
    step: u8,
    pub(super) deadline: Deadline,
    /// Escapees already given the current step's signal.
    signalled: Vec<Pid>,
}

impl Stop {
    /// A ladder whose first step is due now.
    pub(super) fn new(ladder: &'static [Signal]) -> Stop {
        Stop { ladder, step: 0, deadline: Deadline::after(Duration::ZERO), signalled: Vec::new() }
    }

    /// The signal of the step in force (`None` before the first step).
    fn current(&self) -> Option<Signal> {
        let i = usize::from(self.step.checked_sub(1)?);
        Some(self.ladder[i.min(self.ladder.len() - 1)])
    }

    /// Whether KILL was sent and re-sent enough times that waiting longer is pointless.
    fn exhausted(&self) -> bool {
        usize::from(self.step) >= self.ladder.len() + usize::from(KILL_RETRIES)
    }
}

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
        let leader_alive = self.is_alive();
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
                tracing::debug!("cannot signal escapee {pid} of task {}: {e}", self.id);
            }
        }
    }

    /// `signal` to every escapee (with the signals the task itself gets).
    pub(super) fn signal_all_escapees(&self, signal: Signal) {
        self.signal_escapees(&self.escapees(), signal);
    }

    /// SIGKILL to every escapee, no grace (start-up failure, fatal error, restart).
    pub(super) fn kill_escapees(&mut self) {
        self.signal_all_escapees(Signal::KILL);
        subreaper::reap_adopted(&self.known_children());
    }

    /// Takes the next step of `stop` once its deadline passed: the step's signal to the task's
    /// group (while its leader runs) and to every escapee, then SIGCONT so a paused process
    /// acts on it.
    pub(super) fn step_stop(&mut self, mut stop: Stop) -> Stop {
        if !stop.deadline.is_expired() {
            return stop;
        }
        let signal = stop.ladder[usize::from(stop.step).min(stop.ladder.len() - 1)];
        stop.step = stop.step.saturating_add(1);
        stop.deadline = Deadline::after(GRACE);
        if let Some(child) = self.child.as_ref().filter(|c| c.exit().is_none()) {
            let _ = child.signal_group(signal);
            let _ = child.signal_group(Signal::CONT);
        }
        stop.signalled = self.escapees();
        self.signal_escapees(&stop.signalled, signal);
        self.signal_escapees(&stop.signalled, Signal::CONT);
        stop
    }

    /// Reaps escapees that exited, and gives escapees adopted since the last step (orphans of
    /// those that died) the signal in force.
    pub(super) fn catch_escapees(&self, stop: Option<&mut Stop>) {
        subreaper::reap_adopted(&self.known_children());
        let Some(stop) = stop else { return };
        let Some(signal) = stop.current() else { return };
        let new: Vec<Pid> =
            self.escapees().into_iter().filter(|p| !stop.signalled.contains(p)).collect();
        if !new.is_empty() {
            self.signal_escapees(&new, signal);
            self.signal_escapees(&new, Signal::CONT);
            stop.signalled.extend(new);
        }
    }

    /// Whether `stop` is over: the leader is gone and so are the escapees (or they outlived
    /// every KILL).
    pub(super) fn stop_done(&self, stop: &Stop) -> bool {
        if self.is_alive() {
            return false;
        }
        if self.escapees().is_empty() {
            return true;
        }
        if stop.exhausted() {
            tracing::warn!("escapees of task {} survive SIGKILL; giving up on them", self.id);
            return true;
        }
        false
    }

    /// After the leader exited on its own: starts the sweep of what it left running.
    pub(super) fn start_sweep(&mut self) {
        if self.deleting.is_none() && self.sweep.is_none() && !self.escapees().is_empty() {
            self.sweep = Some(Stop::new(SWEEP_LADDER));
        }
    }

    /// Advances the sweep (if any); ends it once nothing is left.
    pub(super) fn step_sweep(&mut self) {
        let Some(mut stop) = self.sweep.take() else { return };
        self.catch_escapees(Some(&mut stop));
        if self.stop_done(&stop) {
            return;
        }
        self.sweep = Some(self.step_stop(stop));
    }
}

impl Supervisor {
    pub(super) fn start_delete(&mut self, requester: Option<Token>) {
        if self.deleting.is_some() {
            return;
        }
        // A sweep in progress goes on as the delete's ladder (no step back to INT).
        let stop = self.sweep.take().unwrap_or_else(|| Stop::new(DELETE_LADDER));
        if self.stop_done(&stop) {
            self.deleting = Some(Deleting { requester, stop });
            self.finish_delete();
        } else {
            self.deleting = Some(Deleting { requester, stop });
        }
    }

    /// The INT → TERM → KILL ladder, one step per grace period, to the task's group and its
    /// escapees.
    pub(super) fn step_delete(&mut self) {
        if self.finished {
            return;
        }
        let Some(mut del) = self.deleting.take() else { return };
        del.stop = self.step_stop(del.stop);
        let done = self.stop_done(&del.stop);
        self.deleting = Some(del);
        if done {
            self.finish_delete();
        }
    }

    pub(super) fn finish_delete(&mut self) {
        let Some(del) = self.deleting.take() else { return };
        self.remove_files();
        self.broadcast(&Event::Deleted);
        if let Some(token) = del.requester
            && let Some(c) = self.clients.get_mut(&token)
        {
            c.send(&Response::Ok);
        }
        // Deliver the last answers (bounded: a few small frames per client).
        let deadline = Deadline::after(Duration::from_secs(1));
        for c in self.clients.values_mut() {
            let _ = c.stream_blocking_flush(deadline);
        }
        self.finished = true;
    }

    /// SIGCHLD (or the leader's exit): reaps escapees, signals new ones, and ends a delete
    /// once nothing of the task is left.
    pub(super) fn escapee_exited(&mut self) {
        if let Some(mut del) = self.deleting.take() {
            self.catch_escapees(Some(&mut del.stop));
            let done = self.stop_done(&del.stop);
            self.deleting = Some(del);
            if done {
                self.finish_delete();
            }
        } else if let Some(mut sweep) = self.sweep.take() {
            self.catch_escapees(Some(&mut sweep));
            if !self.stop_done(&sweep) {
                self.sweep = Some(sweep);
            }
        } else {
            self.catch_escapees(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_steps_and_gives_up_after_kill_retries() {
        let mut stop = Stop::new(DELETE_LADDER);
        assert_eq!(stop.current(), None);
        let mut seen = Vec::new();
        while !stop.exhausted() {
            stop.step += 1;
            seen.push(stop.current().unwrap());
        }
        assert_eq!(seen[..3], [Signal::INT, Signal::TERM, Signal::KILL]);
        assert!(seen[3..].iter().all(|s| *s == Signal::KILL));
        assert_eq!(seen.len(), DELETE_LADDER.len() + usize::from(KILL_RETRIES));
    }
}
