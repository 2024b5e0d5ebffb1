//! When the daemon must look at the queue again by itself (step 6 of the queue contract): the
//! earliest retry falling due, a look every [`DUE_CHECK_EVERY`] in case a publisher's poke was
//! lost, and the next attempt after a failed write.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{OptionalExtension, Transaction, params};

use super::lease::vm_steps;
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
        self.joined.rewind();
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
                        "SELECT MIN(not_before) FROM jobs WHERE state = 0 AND likely(not_before > 0) AND not_before > ?1",
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

/// The fewest due rows one claim reads in due order (it reads more when it may take more
/// jobs): a few milliseconds of work, however many fell due at once.
pub(super) const DUE_CHUNK: i64 = 512;

/// The earliest `not_before` of a delayed row still ahead of `now`, if any.
pub(super) fn earliest_after(
    tx: &Transaction<'_>,
    now: i64,
    steps: &mut u64,
) -> rusqlite::Result<Option<i64>> {
    let mut st = tx.prepare_cached(
        "SELECT MIN(not_before) FROM jobs WHERE state = 0 AND likely(not_before > 0) AND not_before > ?1",
    )?;
    let earliest = st.query_row(params![now], |r| r.get::<_, Option<i64>>(0))?;
    *steps += vm_steps(&st);
    Ok(earliest)
}

/// Moves every delayed row that fell due by `now` into the claim order (`not_before = 0`),
/// unless `known` (the earliest `not_before` of a delayed row, as last read) says none is due;
/// returns the earliest `not_before` of a delayed row left. Each row is read, then updated by
/// its key (an `UPDATE … WHERE seq IN (SELECT …)` would build a temporary table each time).
pub(super) fn promote_due(
    tx: &Transaction<'_>,
    known: Option<Option<i64>>,
    now: i64,
    steps: &mut u64,
) -> rusqlite::Result<Option<i64>> {
    if let Some(earliest) = known
        && earliest.is_none_or(|t| t > now)
    {
        return Ok(earliest);
    }
    let mut due = Vec::new();
    {
        let mut st = tx.prepare_cached(
            "SELECT seq FROM jobs INDEXED BY jobs_aside
             WHERE state = 0 AND not_before > 0 AND not_before <= ?1",
        )?;
        let mut rows = st.query(params![now])?;
        while let Some(row) = rows.next()? {
            due.push(row.get::<_, i64>(0)?);
        }
        drop(rows);
        *steps += vm_steps(&st);
    }
    if !due.is_empty() {
        let mut st = tx.prepare_cached("UPDATE jobs SET not_before = 0 WHERE seq = ?1")?;
        for seq in &due {
            st.execute(params![seq])?;
        }
        *steps += vm_steps(&st);
    }
    earliest_after(tx, now, steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::sqlite::tests::bound;
    use crate::queue::{Outcome, PublishOptions, QueueBackend};

    /// Publishes `n` jobs with `key`, delayed an hour, then lets their hour pass: they fell
    /// due `ago_ms` ago.
    fn fell_due(q: &mut SqliteQueue, key: &str, n: usize, ago_ms: i64) -> Vec<String> {
        let later = PublishOptions::new().delay(Duration::from_secs(3600));
        let ids = q.publish_with(key, &vec![b"due".to_vec(); n], &later).unwrap().ids;
        let in_an_hour = now_ms() + 3_000_000;
        q.conn
            .execute(
                "UPDATE jobs SET not_before = ?1 WHERE routing_key = ?2 AND not_before > ?3",
                params![now_ms() - ago_ms, key, in_an_hour],
            )
            .unwrap();
        q.forget_due(); // as after the publisher's poke
        ids
    }

    /// The earliest delayed row still ahead is found by a seek to `now` in `jobs_aside`, not
    /// by a walk from its first delayed row over the rows already due (a burst joins the claim
    /// order in memory and stays due in the file until leased): as many VM steps with 2,000
    /// rows due as with none. (`likely(not_before > 0)`: the planner seeks with `now`.)
    #[test]
    fn the_next_delayed_row_is_found_past_the_due_ones() {
        let steps = |due: usize| {
            let dir = tempfile::tempdir().unwrap();
            let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
            let later = PublishOptions::new().delay(Duration::from_secs(3600));
            q.publish_with("x.y", &[b"later".to_vec()], &later).unwrap();
            if due > 0 {
                fell_due(&mut q, "x.z", due, 10);
            }
            let tx = q.conn.transaction().unwrap();
            let mut steps = 0;
            let next = earliest_after(&tx, now_ms(), &mut steps).unwrap();
            assert!(next.is_some_and(|t| t > now_ms()), "{next:?}");
            steps
        };
        let (none, many) = (steps(0), steps(2000));
        assert!(many <= none + 4, "{many} steps with 2,000 rows due, {none} with none");
    }

    /// The claim that finds a burst of jobs due moves a chunk of them into the claim order,
    /// not the whole burst (which held the daemon's loop for the burst's length): its cost is
    /// the same with 20,000 due as with 2,000, and the claims after it still take every job
    /// once.
    #[test]
    fn a_due_burst_joins_the_claim_order_a_chunk_per_claim() {
        let first_claim = |n: usize| {
            let dir = tempfile::tempdir().unwrap();
            let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
            let ids = fell_due(&mut q, "x.y", n, 10);
            let before = q.claim_steps();
            let mut batch = q.claim("all", 64).unwrap();
            let steps = q.claim_steps() - before;
            let mut got = Vec::new();
            while !batch.is_empty() {
                for job in &batch {
                    q.complete(job, Outcome::Done).unwrap();
                }
                got.extend(batch.into_iter().map(|j| j.id));
                batch = q.claim("all", 64).unwrap();
            }
            got.sort();
            got.dedup();
            assert_eq!(got.len(), ids.len(), "every due job claimed once");
            steps
        };
        let (small, burst) = (first_claim(2_000), first_claim(20_000));
        assert!(burst * 10 <= small * 11, "{burst} steps with 20,000 due, {small} with 2,000");
    }

    /// A claim moves chunk after chunk until it finds its task's jobs: another task's burst,
    /// due earlier, does not hide them.
    #[test]
    fn a_claim_finds_its_jobs_behind_another_tasks_burst() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        fell_due(&mut q, "x.other", 3 * DUE_CHUNK as usize, 3_000);
        let mail = fell_due(&mut q, "mail.a", 1, 2_000); // for `mail`, then for `all`
        let jobs = q.claim("mail", 5).unwrap();
        assert_eq!(jobs.iter().map(|j| &j.id).collect::<Vec<_>>(), [&mail[0]]);
    }

    /// Chunks go earliest due first: jobs due later than a whole chunk of others wait for
    /// them, though published before them.
    #[test]
    fn chunks_go_earliest_due_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        let late = fell_due(&mut q, "x.late", 10, 1_000);
        let burst = fell_due(&mut q, "x.burst", DUE_CHUNK as usize, 3_000);
        let first = q.claim("all", 10).unwrap();
        assert_eq!(first.len(), 10);
        assert!(first.iter().all(|j| burst.contains(&j.id) && !late.contains(&j.id)));
    }

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
