//! Lasting trouble with a queue's store (a full disk, an I/O error, an unreachable database):
//! what failed, since when, and when to try again — a real deadline with exponential backoff,
//! so a daemon whose claims fail recovers by itself once the cause goes away, without waiting
//! for a publish. Shared by the SQLite and PostgreSQL backends, each with its own delays.

use std::time::Instant;

use procyard_core::Backoff;

/// The queue's failing state.
#[derive(Debug)]
pub(crate) struct Trouble {
    /// The last error, with its causes.
    pub(crate) cause: String,
    since: Instant,
    failures: u32,
    /// When the daemon should try again.
    pub(crate) retry_at: Instant,
}

impl Trouble {
    /// Records a failure: the first one starts the trouble, later ones lengthen the delay.
    pub(crate) fn note(trouble: &mut Option<Trouble>, cause: String, backoff: &Backoff) {
        let now = Instant::now();
        let t = trouble.get_or_insert(Trouble {
            cause: String::new(),
            since: now,
            failures: 0,
            retry_at: now,
        });
        t.failures = t.failures.saturating_add(1);
        t.retry_at = now + backoff.delay(t.failures);
        t.cause = cause;
    }

    /// For `status`: what fails and for how long.
    pub(crate) fn describe(&self) -> String {
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn delays_double_up_to_the_max() {
        let mut t = None;
        let mut delays = Vec::new();
        for _ in 0..8 {
            let backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
            Trouble::note(&mut t, "database or disk is full".into(), &backoff);
            let t = t.as_ref().unwrap();
            delays.push(t.retry_at.duration_since(Instant::now()).as_millis().div_ceil(50) * 50);
        }
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
        assert!(t.unwrap().describe().starts_with("database or disk is full (failing for"));
    }
}
