//! The monitor's watch over a running job, as a closed state machine: the events that reach
//! the monitor while the job runs, what it does about each, and nothing else. [`Watch::step`]
//! is pure (no processes, no clock: `now` is given), so every transition is unit-tested here;
//! the monitor's event loop ([`super::shell`]) performs the [`Action`]s.
//!
//! The rules:
//! 1. While the job runs, an adopted process that exits (SIGCHLD) is reaped.
//! 2. When the job's timeout passes, its process group gets the stop ladder: SIGTERM, then
//!    SIGKILL after the grace. If even SIGKILL does not end it, the watch waits for the exit
//!    without further deadlines.
//! 3. When the job exits, escapees (descendants that left its group and were adopted) are
//!    stopped if the job was stopped: SIGKILL if SIGKILL ended it, otherwise SIGTERM (then
//!    SIGKILL after the grace); after a normal exit they are left alone. Then the end is
//!    recorded, and the watch is over: later events change nothing.

use std::time::{Duration, Instant};

use procyard_core::{Escalation, Exit, Signal, StopLadder, Stopping};

/// What reaches the monitor while it watches the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The job exited and was reaped.
    JobExited(Exit),
    /// Waiting for the job failed (the text says why): the job can no longer be watched.
    WaitFailed(String),
    /// SIGCHLD: a child of the monitor (an adopted escapee, or the job) changed state.
    ChildSignal,
    /// The earliest deadline ([`Watch::deadline`]) may have passed.
    Timer,
}

/// What the monitor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Signal the job's process group.
    SignalJob(Signal),
    /// Reap the adopted processes that have exited.
    ReapAdopted,
    /// Stop the adopted escapees: this signal, then SIGKILL after the grace; reap them.
    StopEscapees(Signal),
    /// Record the end in the state file; the watch is over.
    Record(Ending),
}

/// How the job ended, as the state file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ending {
    /// The exit, or why it is unknown.
    pub outcome: Result<Exit, String>,
    /// Whether the monitor stopped the job because its timeout passed.
    pub timed_out: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// The job runs; it is stopped at `timeout_at` if there is one.
    Running { timeout_at: Option<Instant> },
    /// The timeout passed and the ladder is under way.
    Stopping(Stopping),
    /// Even the last signal's wait has passed: the exit may come, no deadline is left.
    Stuck,
    /// The end was recorded.
    Over,
}

/// The monitor's watch over one job.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    phase: Phase,
    ladder: StopLadder,
    /// Whether the monitor is a child subreaper (there are escapees to reap and stop).
    adopting: bool,
}

impl Watch {
    /// A watch over a job started at `started`, stopped after `timeout` (if any) with SIGTERM
    /// and, `grace` later, SIGKILL.
    pub fn new(
        started: Instant,
        timeout: Option<Duration>,
        grace: Duration,
        adopting: bool,
    ) -> Watch {
        Watch {
            phase: Phase::Running { timeout_at: timeout.map(|t| started + t) },
            ladder: StopLadder::term_then_kill(grace),
            adopting,
        }
    }

    /// When the watch next needs a [`Event::Timer`], if ever.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Running { timeout_at } => *timeout_at,
            Phase::Stopping(stopping) => Some(stopping.deadline().instant()),
            Phase::Stuck | Phase::Over => None,
        }
    }

    /// Whether the end has been recorded.
    #[cfg(test)]
    pub fn is_over(&self) -> bool {
        self.phase == Phase::Over
    }

    /// The transition: what `event`, arriving at `now`, makes the monitor do.
    pub fn step(&mut self, event: Event, now: Instant) -> Vec<Action> {
        if self.phase == Phase::Over {
            return Vec::new();
        }
        match event {
            Event::JobExited(exit) => self.end(Ok(exit)),
            Event::WaitFailed(why) => self.end(Err(why)),
            Event::ChildSignal if self.adopting => vec![Action::ReapAdopted],
            Event::ChildSignal => Vec::new(),
            Event::Timer => self.timer(now),
        }
    }

    fn timer(&mut self, now: Instant) -> Vec<Action> {
        match &mut self.phase {
            Phase::Running { timeout_at: Some(at) } if now >= *at => {
                let (signal, stopping) = self.ladder.begin(now);
                self.phase = Phase::Stopping(stopping);
                vec![Action::SignalJob(signal)]
            }
            Phase::Stopping(stopping) => match stopping.escalate(now) {
                Escalation::Wait => Vec::new(),
                Escalation::Send(signal) => vec![Action::SignalJob(signal)],
                Escalation::Exhausted => {
                    self.phase = Phase::Stuck;
                    Vec::new()
                }
            },
            // Early, or no deadline at all: nothing is due.
            _ => Vec::new(),
        }
    }

    fn end(&mut self, outcome: Result<Exit, String>) -> Vec<Action> {
        let timed_out = matches!(self.phase, Phase::Stopping(_) | Phase::Stuck);
        self.phase = Phase::Over;
        let escapees = match outcome.as_ref().ok().and_then(|exit| exit.signal()) {
            _ if !self.adopting => None,
            Some(Signal::KILL) => Some(Signal::KILL),
            Some(_) => Some(Signal::TERM),
            None if timed_out => Some(Signal::TERM),
            None => None,
        };
        let mut actions: Vec<Action> = escapees.map(Action::StopEscapees).into_iter().collect();
        actions.push(Action::Record(Ending { outcome, timed_out }));
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use procyard_core::KILL_SETTLE;

    const GRACE: Duration = Duration::from_secs(5);
    const TIMEOUT: Duration = Duration::from_secs(60);

    fn watch(timeout: Option<Duration>) -> (Watch, Instant) {
        let t0 = Instant::now();
        (Watch::new(t0, timeout, GRACE, true), t0)
    }

    fn record(outcome: Result<Exit, String>, timed_out: bool) -> Action {
        Action::Record(Ending { outcome, timed_out })
    }

    /// Ended by `signal`.
    fn by(signal: Signal) -> Exit {
        Exit::Signal { signal, core_dumped: false }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_normal_exit_is_recorded_and_escapees_are_left_alone() {
        let (mut w, t0) = watch(None);
        assert_eq!(w.deadline(), None);
        let actions = w.step(Event::JobExited(Exit::Code(3)), t0 + secs(1));
        assert_eq!(actions, vec![record(Ok(Exit::Code(3)), false)]);
        assert!(w.is_over());
    }

    #[test]
    fn an_exit_before_the_first_look_is_recorded_at_once() {
        // The job may be gone before the loop first waits (before `running` was even
        // written): the first event is its exit, at the start time itself.
        let (mut w, t0) = watch(Some(TIMEOUT));
        let actions = w.step(Event::JobExited(Exit::Code(0)), t0);
        assert_eq!(actions, vec![record(Ok(Exit::Code(0)), false)]);
    }

    #[test]
    fn a_job_ended_by_a_signal_takes_its_escapees_with_it() {
        let (mut w, t0) = watch(None);
        let actions = w.step(Event::JobExited(by(Signal::TERM)), t0);
        assert_eq!(
            actions,
            vec![Action::StopEscapees(Signal::TERM), record(Ok(by(Signal::TERM)), false)]
        );
        // SIGKILL for the job means SIGKILL for its escapees, at once.
        let (mut w, t0) = watch(None);
        let actions = w.step(Event::JobExited(by(Signal::KILL)), t0);
        assert_eq!(actions[0], Action::StopEscapees(Signal::KILL));
    }

    #[test]
    fn without_a_subreaper_there_are_no_escapees_to_reap_or_stop() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0, None, GRACE, false);
        assert_eq!(w.step(Event::ChildSignal, t0), vec![]);
        let actions = w.step(Event::JobExited(by(Signal::KILL)), t0);
        assert_eq!(actions, vec![record(Ok(by(Signal::KILL)), false)]);
    }

    #[test]
    fn child_signals_reap_adopted_processes_while_the_job_runs_or_stops() {
        let (mut w, t0) = watch(Some(TIMEOUT));
        assert_eq!(w.step(Event::ChildSignal, t0), vec![Action::ReapAdopted]);
        w.step(Event::Timer, t0 + TIMEOUT);
        assert_eq!(w.step(Event::ChildSignal, t0 + TIMEOUT), vec![Action::ReapAdopted]);
    }

    #[test]
    fn the_timeout_sends_term_then_kill_after_the_grace() {
        let (mut w, t0) = watch(Some(TIMEOUT));
        assert_eq!(w.deadline(), Some(t0 + TIMEOUT));
        // A timer that fires early (a wake-up before the deadline) does nothing.
        assert_eq!(w.step(Event::Timer, t0 + secs(59)), vec![]);
        assert_eq!(w.step(Event::Timer, t0 + TIMEOUT), vec![Action::SignalJob(Signal::TERM)]);
        assert_eq!(w.deadline(), Some(t0 + TIMEOUT + GRACE));
        assert_eq!(w.step(Event::Timer, t0 + TIMEOUT + secs(1)), vec![]);
        let kill_at = t0 + TIMEOUT + GRACE;
        assert_eq!(w.step(Event::Timer, kill_at), vec![Action::SignalJob(Signal::KILL)]);
        assert_eq!(w.deadline(), Some(kill_at + KILL_SETTLE));
    }

    #[test]
    fn an_exit_during_the_stop_is_a_timeout() {
        let (mut w, t0) = watch(Some(TIMEOUT));
        w.step(Event::Timer, t0 + TIMEOUT);
        let actions = w.step(Event::JobExited(by(Signal::TERM)), t0 + TIMEOUT);
        assert_eq!(
            actions,
            vec![Action::StopEscapees(Signal::TERM), record(Ok(by(Signal::TERM)), true)]
        );
        // A job that catches TERM and exits 0 within the grace: still timed out, and its
        // escapees are stopped all the same.
        let (mut w, t0) = watch(Some(TIMEOUT));
        w.step(Event::Timer, t0 + TIMEOUT);
        let actions = w.step(Event::JobExited(Exit::Code(0)), t0 + TIMEOUT + secs(1));
        assert_eq!(
            actions,
            vec![Action::StopEscapees(Signal::TERM), record(Ok(Exit::Code(0)), true)]
        );
    }

    #[test]
    fn a_job_that_outlives_kill_is_waited_for_without_deadlines() {
        let (mut w, t0) = watch(Some(TIMEOUT));
        w.step(Event::Timer, t0 + TIMEOUT);
        w.step(Event::Timer, t0 + TIMEOUT + GRACE);
        let late = t0 + TIMEOUT + GRACE + KILL_SETTLE;
        assert_eq!(w.step(Event::Timer, late), vec![]);
        assert_eq!(w.deadline(), None, "no more signals to send");
        // The exit that finally comes is recorded as a timeout, escapees killed.
        let actions = w.step(Event::JobExited(by(Signal::KILL)), late + secs(30));
        assert_eq!(
            actions,
            vec![Action::StopEscapees(Signal::KILL), record(Ok(by(Signal::KILL)), true)]
        );
    }

    #[test]
    fn a_failed_wait_records_why_and_stops_escapees_only_after_a_timeout() {
        let (mut w, t0) = watch(None);
        let actions = w.step(Event::WaitFailed("poll: EBADF".into()), t0);
        assert_eq!(actions, vec![record(Err("poll: EBADF".into()), false)]);
        let (mut w, t0) = watch(Some(TIMEOUT));
        w.step(Event::Timer, t0 + TIMEOUT);
        let actions = w.step(Event::WaitFailed("gone".into()), t0 + TIMEOUT);
        assert_eq!(
            actions,
            vec![Action::StopEscapees(Signal::TERM), record(Err("gone".into()), true)]
        );
    }

    #[test]
    fn events_after_the_end_change_nothing() {
        let (mut w, t0) = watch(Some(TIMEOUT));
        w.step(Event::JobExited(Exit::Code(0)), t0);
        assert_eq!(w.deadline(), None);
        // A timer that was due as the job exited, a late SIGCHLD, a second exit report.
        assert_eq!(w.step(Event::Timer, t0 + TIMEOUT), vec![]);
        assert_eq!(w.step(Event::ChildSignal, t0 + TIMEOUT), vec![]);
        assert_eq!(w.step(Event::JobExited(Exit::Code(1)), t0 + TIMEOUT), vec![]);
        assert!(w.is_over());
    }
}
