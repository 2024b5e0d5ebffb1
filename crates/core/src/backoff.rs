//! Exponential backoff: the one restart/retry delay policy of the workspace.
//!
//! Every component that waits before trying again (a crashed worker's restart, a job's retry,
//! a broker reconnect, a worker-process respawn) uses [`Backoff`]: the first delay is
//! `backoff_initial`, each further attempt doubles it, never past `backoff_max`, optionally with
//! jitter so that many clients do not retry in step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// An exponential backoff policy: `initial × 2^(attempt-1)`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry (`backoff_initial` in configs).
    pub initial: Duration,
    /// The longest delay (`backoff_max` in configs).
    pub max: Duration,
    /// Draw each delay uniformly from `[d/2, d]` instead of `d`.
    pub jitter: bool,
}

impl Backoff {
    /// A policy without jitter. `max` below `initial` is raised to `initial`.
    pub const fn new(initial: Duration, max: Duration) -> Backoff {
        let max = if max.as_nanos() < initial.as_nanos() { initial } else { max };
        Backoff { initial, max, jitter: false }
    }

    /// The same policy with jitter.
    pub const fn with_jitter(mut self) -> Backoff {
        self.jitter = true;
        self
    }

    /// The delay before retry number `attempt` (1 for the first retry; 0 counts as 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(31);
        let full = self.initial.saturating_mul(1u32 << shift).min(self.max);
        if self.jitter { jittered(full) } else { full }
    }
}

/// A uniform draw in `[d/2, d]` from a small per-process generator (splitmix64): jitter only
/// needs to decorrelate clients, not to be unpredictable.
fn jittered(d: Duration) -> Duration {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        ^ u64::from(std::process::id()).rotate_left(32)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.subsec_nanos().into());
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let half = d / 2;
    let span = (d - half).as_nanos() as u64;
    half + Duration::from_nanos(if span == 0 { 0 } else { z % (span + 1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_initial_and_stops_at_max() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let delays: Vec<u64> = (0..6).map(|a| b.delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 1, 2, 4, 5, 5]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_within_half_and_full() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).with_jitter();
        for attempt in 1..12 {
            let full = Backoff { jitter: false, ..b }.delay(attempt);
            let d = b.delay(attempt);
            assert!(d >= full / 2 && d <= full, "{d:?} outside [{:?}, {full:?}]", full / 2);
        }
    }

    #[test]
    fn max_below_initial_is_raised() {
        let b = Backoff::new(Duration::from_secs(3), Duration::from_secs(1));
        assert_eq!(b.delay(4), Duration::from_secs(3));
    }
}
