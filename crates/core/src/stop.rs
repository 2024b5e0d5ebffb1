//! The stop ladder: signal, wait a grace period, escalate.
//!
//! Stopping a child is the same everywhere: send a polite signal (TERM), give it a grace
//! period, then KILL. [`StopLadder`] is that sequence as data, `[(Signal, Duration)]`;
//! [`Stopping`] is one stop in progress. Both are pure: an event loop asks which signal to send
//! and when the next deadline is, and performs the sending itself.

use std::time::{Duration, Instant};

use crate::{Deadline, Signal};

/// How long a process gets to vanish after SIGKILL before the stop is called stuck.
pub const KILL_SETTLE: Duration = Duration::from_secs(2);

/// A sequence of signals, each followed by how long to wait for the exit before the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopLadder {
    steps: Vec<(Signal, Duration)>,
}

impl StopLadder {
    /// A ladder from its steps. An empty list means "KILL at once".
    pub fn new(steps: impl IntoIterator<Item = (Signal, Duration)>) -> StopLadder {
        let mut steps: Vec<_> = steps.into_iter().collect();
        if steps.is_empty() {
            steps.push((Signal::KILL, KILL_SETTLE));
        }
        StopLadder { steps }
    }

    /// TERM, `grace`, then KILL.
    pub fn term_then_kill(grace: Duration) -> StopLadder {
        StopLadder::new([(Signal::TERM, grace), (Signal::KILL, KILL_SETTLE)])
    }

    /// The steps.
    pub fn steps(&self) -> &[(Signal, Duration)] {
        &self.steps
    }

    /// Begins a stop at `now`: the first signal to send, and the stop's progress.
    pub fn begin(&self, now: Instant) -> (Signal, Stopping) {
        let (signal, wait) = self.steps[0];
        (signal, Stopping { ladder: self.clone(), step: 0, deadline: Deadline::at(now + wait) })
    }
}

/// A stop in progress: which step it is on and when the next one is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopping {
    ladder: StopLadder,
    step: usize,
    deadline: Deadline,
}

impl Stopping {
    /// When the current step's wait ends.
    pub fn deadline(&self) -> Deadline {
        self.deadline
    }

    /// The signal of the current step.
    pub fn signal(&self) -> Signal {
        self.ladder.steps[self.step].0
    }

    /// Whether the last step (normally KILL) has been reached.
    pub fn is_last_step(&self) -> bool {
        self.step + 1 >= self.ladder.steps.len()
    }

    /// Called at `now`: if the current step's wait is over, moves to the next step and returns
    /// its signal to send. Returns `Escalation::Wait` before the deadline, and
    /// `Escalation::Exhausted` once the last step's wait has passed too (the process is stuck).
    pub fn escalate(&mut self, now: Instant) -> Escalation {
        if now < self.deadline.instant() {
            return Escalation::Wait;
        }
        if self.is_last_step() {
            return Escalation::Exhausted;
        }
        self.step += 1;
        let (signal, wait) = self.ladder.steps[self.step];
        self.deadline = Deadline::at(now + wait);
        Escalation::Send(signal)
    }

    /// Jumps straight to the last step (a second stop request): returns its signal.
    pub fn force(&mut self, now: Instant) -> Signal {
        self.step = self.ladder.steps.len() - 1;
        let (signal, wait) = self.ladder.steps[self.step];
        self.deadline = Deadline::at(now + wait);
        signal
    }
}

/// What [`Stopping::escalate`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escalation {
    /// The current step's wait is not over.
    Wait,
    /// Send this signal now; the next deadline is [`Stopping::deadline`].
    Send(Signal),
    /// Every step has been tried and its wait has passed.
    Exhausted,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn term_grace_kill_then_exhausted() {
        let t0 = Instant::now();
        let ladder = StopLadder::term_then_kill(Duration::from_secs(5));
        let (first, mut stop) = ladder.begin(t0);
        assert_eq!(first, Signal::TERM);
        assert_eq!(stop.escalate(t0 + Duration::from_secs(4)), Escalation::Wait);
        assert_eq!(stop.escalate(t0 + Duration::from_secs(5)), Escalation::Send(Signal::KILL));
        assert!(stop.is_last_step());
        assert_eq!(stop.deadline().instant(), t0 + Duration::from_secs(5) + KILL_SETTLE);
        assert_eq!(stop.escalate(t0 + Duration::from_secs(6)), Escalation::Wait);
        assert_eq!(stop.escalate(t0 + Duration::from_secs(60)), Escalation::Exhausted);
    }

    #[test]
    fn force_skips_to_kill_and_empty_ladder_kills() {
        let t0 = Instant::now();
        let ladder = StopLadder::new([
            (Signal::INT, Duration::from_secs(1)),
            (Signal::TERM, Duration::from_secs(1)),
            (Signal::KILL, Duration::from_secs(1)),
        ]);
        let (_, mut stop) = ladder.begin(t0);
        assert_eq!(stop.force(t0), Signal::KILL);
        assert!(stop.is_last_step());
        let (first, _) = StopLadder::new([]).begin(t0);
        assert_eq!(first, Signal::KILL);
    }
}
