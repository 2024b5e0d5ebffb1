//! Deadlines: the only timers procyard uses are real ones (grace periods, timeouts, backoff).

use std::time::{Duration, Instant};

/// A point in time by which something must have happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// `timeout` from now (saturating far in the future for huge values).
    pub fn after(timeout: Duration) -> Deadline {
        let now = Instant::now();
        Deadline(
            now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365)),
        )
    }

    /// At `instant`.
    pub fn at(instant: Instant) -> Deadline {
        Deadline(instant)
    }

    /// The instant.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// Time left, zero once passed.
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn is_expired(self) -> bool {
        Instant::now() >= self.0
    }

    /// The timeout to give `mio::Poll::poll` for the earliest of `deadlines` (`None`: wait
    /// forever).
    pub fn poll_timeout(deadlines: impl IntoIterator<Item = Deadline>) -> Option<Duration> {
        deadlines.into_iter().min().map(Deadline::remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_and_earliest() {
        let near = Deadline::after(Duration::from_millis(10));
        let far = Deadline::after(Duration::from_secs(100));
        assert!(!far.is_expired());
        let t = Deadline::poll_timeout([far, near]).unwrap();
        assert!(t <= Duration::from_millis(10));
        assert_eq!(Deadline::poll_timeout(std::iter::empty()), None);
        let past = Deadline::at(Instant::now() - Duration::from_secs(1));
        assert!(past.is_expired());
        assert_eq!(past.remaining(), Duration::ZERO);
        let _ = Deadline::after(Duration::MAX);
    }
}
