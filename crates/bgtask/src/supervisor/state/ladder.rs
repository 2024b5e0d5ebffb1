//! The transition for stopping: the delete (INT → TERM → KILL to the task's group and its
//! escapees) and the sweep of what an exited task left running (TERM → KILL), both on core's
//! [`StopLadder`], one grace period a step.

use std::time::Duration;

use procyard_core::{Deadline, Escalation, Pid, Signal, StopLadder, Stopping};

use super::{Action, ClientId, Now, State};
use crate::protocol::{Event as Announce, Response};

/// Grace between the steps of a ladder.
pub(in crate::supervisor) const GRACE: Duration = Duration::from_secs(2);

/// KILLs re-sent to what outlives the first one before the ladder gives up on escapees (a
/// process stuck in the kernel).
const KILL_RETRIES: usize = 3;

/// The delete: the task's group and its escapees get INT, TERM, then KILL.
pub(super) fn delete_ladder() -> StopLadder {
    ladder(&[Signal::INT, Signal::TERM])
}

/// The sweep after the task's leader exited: what it left running gets TERM, then KILL.
pub(super) fn sweep_ladder() -> StopLadder {
    ladder(&[Signal::TERM])
}

fn ladder(polite: &[Signal]) -> StopLadder {
    let kills = std::iter::repeat_n(Signal::KILL, 1 + KILL_RETRIES);
    StopLadder::new(polite.iter().copied().chain(kills).map(|s| (s, GRACE)))
}

/// A stop in progress.
#[derive(Debug)]
pub(in crate::supervisor) struct Stop {
    stopping: Stopping,
    /// Escapees given the current step's signal; `None` right after a step (the next report
    /// of escapees is what the step reached).
    signalled: Option<Vec<Pid>>,
}

impl Stop {
    pub(in crate::supervisor) fn deadline(&self) -> Deadline {
        self.stopping.deadline()
    }

    /// The signal of the step in force.
    pub(in crate::supervisor) fn signal(&self) -> Signal {
        self.stopping.signal()
    }
}

impl State {
    /// Starts the delete (or, during one, adds `requester` to those answered at its end).
    pub(super) fn start_delete(
        &mut self,
        requester: Option<ClientId>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        if let Some(requesters) = &mut self.deleting {
            requesters.extend(requester);
            return;
        }
        self.deleting = Some(requester.into_iter().collect());
        self.sweep_pending = false;
        if self.stop.is_some() {
            // A sweep in progress goes on as the delete's ladder (no step back to INT).
            out.push(Action::CheckEscapees);
        } else {
            self.begin(&delete_ladder(), now, out);
        }
    }

    fn begin(&mut self, ladder: &StopLadder, now: Now, out: &mut Vec<Action>) {
        let (signal, stopping) = ladder.begin(now.at);
        self.stop = Some(Stop { stopping, signalled: None });
        self.send_step(signal, out);
    }

    /// One step of the ladder: `signal` (and CONT, so a paused process acts on it) to the
    /// task's group while its leader is unreaped, and to every escapee.
    fn send_step(&mut self, signal: Signal, out: &mut Vec<Action>) {
        if self.running() {
            out.extend([Action::SignalGroup(signal), Action::SignalGroup(Signal::CONT)]);
        }
        out.extend([Action::SignalEscapees(signal), Action::SignalEscapees(Signal::CONT)]);
        if let Some(stop) = &mut self.stop {
            stop.signalled = None;
        }
        out.push(Action::CheckEscapees);
    }

    pub(super) fn timer(&mut self, now: Now, out: &mut Vec<Action>) {
        let running = self.running();
        let Some(stop) = &mut self.stop else { return };
        match stop.stopping.escalate(now.at) {
            Escalation::Wait => {}
            Escalation::Send(signal) => self.send_step(signal, out),
            Escalation::Exhausted if running => {
                // The leader outlived every KILL (stuck in the kernel): KILL again.
                let signal = stop.stopping.force(now.at);
                self.send_step(signal, out);
            }
            // Escapees that survive SIGKILL are given up on.
            Escalation::Exhausted => self.stop_over(out),
        }
    }

    /// A report of the escapees there are now.
    pub(super) fn escapees_seen(&mut self, pids: Vec<Pid>, now: Now, out: &mut Vec<Action>) {
        self.escapees = pids;
        if let Some(stop) = &mut self.stop {
            let signal = stop.signal();
            match &mut stop.signalled {
                None => stop.signalled = Some(self.escapees.clone()),
                Some(done) => {
                    // Adopted since the step (orphans of those that died): the signal in force.
                    let new: Vec<Pid> =
                        self.escapees.iter().filter(|p| !done.contains(p)).copied().collect();
                    if !new.is_empty() {
                        out.push(Action::SignalSome(new.clone(), signal));
                        out.push(Action::SignalSome(new.clone(), Signal::CONT));
                        done.extend(new);
                    }
                }
            }
            if !self.running() && self.escapees.is_empty() {
                self.stop_over(out);
            }
        } else if std::mem::take(&mut self.sweep_pending)
            && !self.running()
            && !self.escapees.is_empty()
        {
            self.begin(&sweep_ladder(), now, out);
        }
    }

    /// The stop is over: the sweep ends, or the delete finishes.
    fn stop_over(&mut self, out: &mut Vec<Action>) {
        self.stop = None;
        let Some(requesters) = self.deleting.take() else { return };
        out.push(Action::RemoveFiles);
        self.announce(Announce::Deleted, out);
        for client in requesters {
            out.push(Action::Send(client, Response::Ok));
        }
        out.push(Action::Finish);
        self.finished = true;
    }
}
