//! Lasting trouble with the queue file (a full disk, an I/O error): what failed, since when,
//! and when to try again — a real deadline with exponential backoff, so a daemon whose claims
//! fail recovers by itself once the cause goes away, without waiting for a publish.

use std::time::{Duration, Instant};

use procyard_core::Backoff;

/// Retry delays after a failed write: 250 ms, doubling, at most 5 s.
pub(super) const BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(250), Duration::from_secs(5));

/// The queue's failing state.
#[derive(Debug)]
pub(super) struct Trouble {
    /// The last error, with its causes.
    pub(super) cause: String,
    since: Instant,
    failures: u32,
    /// When the daemon should try again.
    pub(super) retry_at: Instant,
}

impl Trouble {
    /// Records a failure: the first one starts the trouble, later ones lengthen the delay.
    pub(super) fn note(trouble: &mut Option<Trouble>, cause: String) {
        let now = Instant::now();
        let t = trouble.get_or_insert(Trouble {
            cause: String::new(),
            since: now,
            failures: 0,
            retry_at: now,
        });
        t.failures = t.failures.saturating_add(1);
        t.retry_at = now + BACKOFF.delay(t.failures);
        t.cause = cause;
    }

    /// For `status`: what fails and for how long.
    pub(super) fn describe(&self) -> String {
        format!(
            "{} (failing for {:.0}s, {} attempts; retrying)",
            self.cause,
            self.since.elapsed().as_secs_f64(),
            self.failures
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_max() {
        let mut t = None;
        let mut delays = Vec::new();
        for _ in 0..8 {
            Trouble::note(&mut t, "database or disk is full".into());
            let t = t.as_ref().unwrap();
            delays.push(t.retry_at.duration_since(Instant::now()).as_millis().div_ceil(50) * 50);
        }
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
        assert!(t.unwrap().describe().starts_with("database or disk is full (failing for"));
    }
}
