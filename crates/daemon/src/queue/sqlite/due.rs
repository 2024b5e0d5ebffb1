//! When the daemon must look at the queue again by itself (step 6 of the queue contract): the
//! earliest retry falling due, a look every [`DUE_CHECK_EVERY`] in case a publisher's poke was
//! lost, and the next attempt after a failed write.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{OptionalExtension, params};

use super::{SqliteQueue, now_ms};
use crate::queue::OpenMode;
use crate::{Error, Result};

/// How often a daemon looks at the queue without being poked.
pub const DUE_CHECK_EVERY: Duration = Duration::from_secs(3);

/// The instant to wake at: the first of a retry falling due, the periodic look, and the next
/// attempt after trouble (if that is still ahead).
fn wake_at(
    retry: Option<Instant>,
    next_check: Instant,
    trouble_retry: Option<Instant>,
    now: Instant,
) -> Instant {
    let due = retry.map_or(next_check, |r| r.min(next_check));
    match trouble_retry.filter(|t| *t > now) {
        Some(t) => due.min(t),
        None => due,
    }
}

/// The instant the wall clock reads `ms` (since the epoch), to the microsecond: a job due at
/// `ms` is claimable from then on (`not_before <= now_ms()`), so the loop wakes no later than
/// that (a whole millisecond of rounding up was most of a due job's lateness). Now, if past.
fn instant_at_ms(ms: i64) -> Instant {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    Instant::now() + at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
}

impl SqliteQueue {
    /// Forgets what was read of delayed jobs (a retry written, a poke, a requeue, the
    /// periodic look): the next look reads the file again.
    pub(super) fn forget_due(&mut self) {
        self.due_cache = None;
        self.delayed_cache = None;
    }

    /// When the earliest delayed job (a retry) becomes available; cached until something
    /// that could change it (a retry written, a poke, a requeue).
    pub(super) fn retry_due(&mut self) -> Result<Option<Instant>> {
        let now = now_ms();
        let due = match self.due_cache {
            Some(Some(due)) if due > now => Some(due),
            Some(None) => None,
            _ => {
                // Prepared once: asked again after every poke.
                let due: Option<i64> = self
                    .conn
                    .prepare_cached(
                        "SELECT MIN(not_before) FROM jobs WHERE state = 0 AND not_before > ?1",
                    )
                    .and_then(|mut stmt| stmt.query_row(params![now], |row| row.get(0)).optional())
                    .map_err(|e| Error::queue("read retry times from", &self.path, e))?
                    .flatten();
                self.due_cache = Some(due);
                due
            }
        };
        Ok(due.map(instant_at_ms))
    }

    /// [`QueueBackend::next_due`](crate::queue::QueueBackend::next_due) for this queue.
    pub(super) fn wake_instant(&mut self) -> Result<Option<Instant>> {
        self.check_served(false)?;
        let retry = self.retry_due()?;
        if self.mode != OpenMode::Daemon {
            return Ok(retry);
        }
        // Once the periodic look's instant is past, the look is being made now.
        let now = Instant::now();
        if self.next_check <= now {
            self.next_check = now + DUE_CHECK_EVERY;
            // A publisher's poke may have been lost: read the delayed jobs again.
            self.forget_due();
        }
        let trouble = self.trouble.as_ref().map(|t| t.retry_at);
        // The periodic look also takes the next pruning step.
        let look = self.next_check.min(self.prune.next());
        // Schedules due now are fired here (the loop asks once per turn, while running);
        // the next due time of the others is a real deadline.
        let schedule = self.fire_due_schedules()?;
        // A rate-limited task's next token is a deadline too.
        let schedule = match (schedule, self.gate.next_wake(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let retry = match (retry, schedule) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(Some(wake_at(retry, look, trouble, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_at_the_first_of_retry_look_and_trouble() {
        let now = Instant::now();
        let at = |ms| now + Duration::from_millis(ms);
        assert_eq!(wake_at(None, at(3000), None, now), at(3000), "the periodic look");
        assert_eq!(wake_at(Some(at(50)), at(3000), None, now), at(50), "a retry first");
        assert_eq!(wake_at(Some(at(5000)), at(3000), None, now), at(3000));
        assert_eq!(wake_at(Some(at(900)), at(3000), Some(at(250)), now), at(250), "trouble");
        assert_eq!(
            wake_at(Some(at(900)), at(3000), Some(now), now),
            at(900),
            "an attempt whose instant came is being made: no wake-up for it"
        );
    }
}
