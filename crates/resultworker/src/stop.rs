//! A stop with a grace period first: running work gets `grace` to finish on its own, then
//! the stop ladder runs (core's [`StopLadder`]: TERM, a wait, KILL). Both the worker (for its
//! jobs) and the listener (for the worker) stop this way.

use std::time::{Duration, Instant};

use procyard_core::{Escalation, Signal, StopLadder, Stopping};

/// A stop in progress.
#[derive(Debug)]
pub(crate) enum GracefulStop {
    /// Nothing is signalled before `until`; then the ladder begins.
    Draining { until: Instant, ladder: StopLadder },
    /// The ladder is under way.
    Signalling(Stopping),
    /// Every step was taken: nothing is left to send.
    Done,
}

impl GracefulStop {
    /// A stop asked for at `now`, with `grace` before `ladder` begins.
    pub(crate) fn new(now: Instant, grace: Duration, ladder: StopLadder) -> GracefulStop {
        GracefulStop::Draining { until: now.checked_add(grace).unwrap_or(now), ladder }
    }

    /// When [`tick`](GracefulStop::tick) has something to do next.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self {
            GracefulStop::Draining { until, .. } => Some(*until),
            GracefulStop::Signalling(stopping) => Some(stopping.deadline().instant()),
            GracefulStop::Done => None,
        }
    }

    /// Called at `now`: the signal to send, if one is due.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<Signal> {
        match self {
            GracefulStop::Draining { until, ladder } if *until <= now => {
                let (signal, stopping) = ladder.begin(now);
                *self = GracefulStop::Signalling(stopping);
                Some(signal)
            }
            GracefulStop::Signalling(stopping) => match stopping.escalate(now) {
                Escalation::Wait => None,
                Escalation::Send(signal) => {
                    if stopping.is_last_step() {
                        *self = GracefulStop::Done;
                    }
                    Some(signal)
                }
                Escalation::Exhausted => {
                    *self = GracefulStop::Done;
                    None
                }
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_then_term_then_kill_then_nothing() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let ladder = StopLadder::new([(Signal::TERM, ms(500)), (Signal::KILL, Duration::ZERO)]);
        let mut stop = GracefulStop::new(t0, ms(100), ladder);
        assert_eq!(stop.deadline(), Some(t0 + ms(100)));
        assert_eq!(stop.tick(t0 + ms(99)), None);
        assert_eq!(stop.tick(t0 + ms(100)), Some(Signal::TERM));
        assert_eq!(stop.deadline(), Some(t0 + ms(600)));
        assert_eq!(stop.tick(t0 + ms(599)), None);
        assert_eq!(stop.tick(t0 + ms(600)), Some(Signal::KILL));
        assert_eq!(stop.deadline(), None);
        assert_eq!(stop.tick(t0 + ms(10_000)), None);
    }
}
