//! Retention: done and cancelled jobs are deleted once older than `keep_done`, and the oldest
//! beyond `keep_done_max`, by the daemon in steps (one short write transaction each, through
//! the partial index on `finished_ms`), so pruning a million rows never holds the write lock
//! long enough to delay a claim. While jobs flow (the loop claimed or ended a job within
//! [`BUSY_WINDOW`]), a step deletes [`PRUNE_BATCH_BUSY`] rows (or as many as jobs ended since
//! the step before); otherwise up to [`PRUNE_BATCH`], which costs less per row. A full step
//! schedules the next one soon; otherwise the next look is [`PRUNE_EVERY`] later. A daemon's
//! step waits while its write-ahead log is behind (`checkpoint.rs`: more than `PACE_PAGES`
//! pages not yet copied into the file), looking again [`LOG_WAIT`] later: deletes fill the log
//! far faster than the daemon's other writes, and a log that never catches up grows without
//! bound.

use std::time::{Duration, Instant};

use rusqlite::{OptionalExtension, params};

use super::store::History;
use super::{SqliteQueue, now_ms};
use crate::queue::Retention;

/// Rows a pruning step deletes at most while no job flows. A step runs on the daemon's loop
/// and holds the write lock while it deletes: 200 rows a step, 8 ms apart, was measured
/// against 500 rows 20 ms apart on a quiet machine (5 runs each, 1,000,000 records pruned
/// while jobs flow): the longest publish→start 6.9–9.2 ms against 5.2–29.6 ms, the p99
/// 1.11–1.74× of no pruning against 1.53–1.87×, for a prune 20 % longer (72–77 s against
/// 60–64 s). Then 64 rows 2.5 ms apart: the longest 8.5–15.3 ms, the p99 1.51–2.04×.
///
/// Measured per step on a 1,000,000-record file (Python's `sqlite3`, the least of 300 steps):
/// 8 rows 49 µs and 8.6 log pages, 16 rows 64 µs and 12, 64 rows 191 µs and 20, 128 rows
/// 340 µs and 26: a fixed cost (the interior pages of five b-trees, the commit) and about
/// 2.5 µs a row.
pub(super) const PRUNE_BATCH: i64 = 128;
/// Rows a pruning step deletes at most while jobs flow, 2.5 ms apart. Shorter steps are not
/// kinder to the jobs: 16-row steps (about 0.1 ms each) against 64-row ones, quiet, 1,000,000
/// records pruned while jobs flow, the checkpoint thread restarting the log: the p99 of
/// publish→start 1.1–1.3 ms (3 runs) against 1.1 ms, the longest 36.6 ms against 6.4 ms, the
/// prune 250 s against 83 s. Each row of a short step leaves more pages in the log (0.75
/// against 0.31), which the thread copies and syncs again. A step deletes at least as many
/// rows as jobs ended since the one before, so that pruning keeps up with any flow (up to
/// [`PRUNE_BATCH_MOST`]).
pub(super) const PRUNE_BATCH_BUSY: i64 = 64;
/// The most rows a step deletes to keep up with the jobs that end.
const PRUNE_BATCH_MOST: i64 = 4 * PRUNE_BATCH;
/// Jobs flow when the loop claimed or ended one this recently.
const BUSY_WINDOW: Duration = Duration::from_millis(100);
/// How often the daemon looks for expired jobs.
pub(super) const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// The next step after one that found a full batch.
const PRUNE_AGAIN: Duration = Duration::from_micros(2500);
/// The next look while the write-ahead log is behind.
const LOG_WAIT: Duration = Duration::from_millis(5);
/// How often the count-based cutoff (`keep_done_max`) is read again: it walks that many
/// index entries, so not on every step.
const COUNT_EVERY: Duration = Duration::from_secs(30);
/// Index entries walked per step when reading the count-based cutoff: a few milliseconds,
/// so a large `keep_done_max` (or history) never stalls the daemon's loop in one go.
const WALK_CHUNK: u64 = 20_000;

/// When the next pruning step is due, and the last count-based cutoff.
#[derive(Debug)]
pub(crate) struct PruneClock {
    next: Instant,
    count_read: Option<Instant>,
    /// Jobs that ended at or before this (ms, row), in that order, are beyond
    /// `keep_done_max`.
    count_cutoff: Option<(i64, i64)>,
    /// A read of the count-based cutoff under way, newest first: the last entry walked and
    /// the position (from the newest) of the entry after it.
    walk: Option<(Option<(i64, i64)>, u64)>,
    /// Jobs flow until then ([`PruneClock::note_busy`]).
    busy_until: Instant,
    /// Jobs ended since the last step ([`PruneClock::note_ended`]).
    ended: i64,
}

impl PruneClock {
    pub(crate) fn new(now: Instant) -> PruneClock {
        PruneClock {
            next: now + PRUNE_EVERY,
            count_read: None,
            count_cutoff: None,
            walk: None,
            busy_until: now,
            ended: 0,
        }
    }

    pub(crate) fn due(&self, now: Instant) -> bool {
        self.next <= now
    }

    pub(super) fn next(&self) -> Instant {
        self.next
    }

    /// The loop claims or ends a job now: steps stay short for [`BUSY_WINDOW`].
    pub(super) fn note_busy(&mut self, now: Instant) {
        self.busy_until = now + BUSY_WINDOW;
    }

    /// A job ended now: jobs flow, and the next step deletes a row more.
    pub(super) fn note_ended(&mut self, now: Instant) {
        self.note_busy(now);
        self.ended = self.ended.saturating_add(1);
    }

    /// Rows the next step deletes at most (and the count of ended jobs starts again).
    fn batch(&mut self, now: Instant) -> i64 {
        let ended = std::mem::take(&mut self.ended);
        if now < self.busy_until {
            ended.clamp(PRUNE_BATCH_BUSY, PRUNE_BATCH_MOST)
        } else {
            PRUNE_BATCH
        }
    }
}

impl PruneClock {
    /// One pruning step of `history` (errors are logged: pruning is retried at the next
    /// step).
    pub(crate) fn step(&mut self, history: &mut History<'_>, retention: &Retention, now: Instant) {
        let batch = self.batch(now);
        match self.prune_once(history, retention, now, batch) {
            Ok(n) => {
                let full = n as i64 >= batch;
                self.next = now + if full { PRUNE_AGAIN } else { PRUNE_EVERY };
                if n > 0 {
                    tracing::debug!(jobs = n, "pruned ended jobs past their retention");
                }
            }
            Err(e) => {
                self.next = now + PRUNE_EVERY;
                tracing::warn!(error = %procyard_core::Report(&e), "unable to prune ended jobs");
            }
        }
    }

    fn prune_once(
        &mut self,
        history: &mut History<'_>,
        retention: &Retention,
        now: Instant,
        batch: i64,
    ) -> rusqlite::Result<usize> {
        let keep = retention.keep_done.as_millis().min(i64::MAX as u128) as i64;
        let by_age = now_ms().saturating_sub(keep) - 1;
        if self.walk.is_none() && self.count_read.is_none_or(|at| now >= at + COUNT_EVERY) {
            if rows_at_most(history, retention.keep_done_max)? {
                // Too few rows of any state for the count to cut: no walk, whose reads would
                // fill the connection's page cache (the daemon's memory) for nothing.
                self.count_cutoff = None;
                self.count_read = Some(now);
            } else {
                self.walk = Some((None, 0));
            }
        }
        if let Some((cursor, pos)) = self.walk {
            // One chunk of the walk to the entry at position `keep_done_max` (the newest
            // that many stay): the cutoff is known when it gets there, or there is none when
            // the entries end first.
            let max = retention.keep_done_max.min(i64::MAX as u64);
            let skip = (max - pos.min(max)).min(WALK_CHUNK);
            let entry: Option<(i64, i64)> = match cursor {
                None => history
                    .conn
                    .prepare_cached(
                        "SELECT finished_ms, seq FROM jobs WHERE state IN (2, 4)
                     ORDER BY finished_ms DESC, seq DESC LIMIT 1 OFFSET ?1",
                    )?
                    .query_row([skip as i64], |r| Ok((r.get(0)?, r.get(1)?))),
                Some((ms, seq)) => history
                    .conn
                    .prepare_cached(
                        "SELECT finished_ms, seq FROM jobs WHERE state IN (2, 4)
                       AND (finished_ms, seq) < (?1, ?2)
                     ORDER BY finished_ms DESC, seq DESC LIMIT 1 OFFSET ?3",
                    )?
                    .query_row(params![ms, seq, skip as i64], |r| Ok((r.get(0)?, r.get(1)?))),
            }
            .optional()?;
            match entry {
                Some(e) if pos + skip < max => self.walk = Some((Some(e), pos + skip + 1)),
                found => {
                    self.count_cutoff = found;
                    self.walk = None;
                    self.count_read = Some(now);
                }
            }
        }
        // Whichever limit deletes more wins: older than `keep_done`, or beyond the newest
        // `keep_done_max` (ties on the end time broken by row). Both cut the same order (end
        // time, then row), so the rows to go are those up to the later of the two cutoffs.
        let count = self.count_cutoff.unwrap_or((i64::MIN, 0));
        let (cut_ms, cut_seq) = std::cmp::max((by_age, i64::MAX), count);
        let n = history.delete_batch(PRUNE_SELECT, params![cut_ms, cut_seq, batch])?;
        if n < batch as usize && self.walk.is_none() && self.count_cutoff.is_some() {
            // Everything up to the count cutoff is gone: read it again next time. (With no
            // cutoff, the count was under the limit: it is read again [`COUNT_EVERY`] later.)
            self.count_read = None;
        }
        Ok(n)
    }
}

/// The rows a pruning step deletes: ended jobs up to a cutoff (end time, row), oldest first.
/// One range of the index on `finished_ms`: the two limits as `finished_ms <= ?1 OR
/// (finished_ms, seq) <= (?2, ?3)` made SQLite walk the whole index when nothing had expired
/// (no row matched, so the `LIMIT` never stopped it): 574 ms with 1,000,000 records, and a
/// 57 ms stall each second once a prune had caught up with 640,000 records kept.
pub(super) const PRUNE_SELECT: &str = "SELECT seq FROM jobs WHERE state IN (2, 4)
       AND finished_ms <= ?1 AND (finished_ms, seq) <= (?1, ?2)
     ORDER BY finished_ms, seq LIMIT ?3";

/// Whether the jobs table holds at most `max` rows, told from the span of its row numbers (two
/// seeks of the primary key, at any table size): rows are numbered in publish order and never
/// reused, so the span bounds the count from above.
fn rows_at_most(history: &History<'_>, max: u64) -> rusqlite::Result<bool> {
    let span: Option<i64> = history
        .conn
        .prepare_cached("SELECT (SELECT max(seq) FROM jobs) - (SELECT min(seq) FROM jobs) + 1")?
        .query_row([], |r| r.get(0))?;
    Ok(span.is_none_or(|rows| u64::try_from(rows).is_ok_and(|rows| rows <= max)))
}

impl SqliteQueue {
    /// One pruning step (errors are logged: pruning is retried at the next step), unless the
    /// write-ahead log is behind: then it wakes the checkpointer, looks again [`LOG_WAIT`]
    /// later and returns false.
    pub(super) fn prune_step(&mut self) -> bool {
        let now = Instant::now();
        if let Some(checkpointer) = &self._checkpointer
            && checkpointer.behind()
        {
            checkpointer.kick();
            self.prune.next = now + LOG_WAIT;
            return false;
        }
        let retention = self.retention;
        let mut history = History::new(&mut self.conn, &self.path);
        crate::stamp::timed("prune", || self.prune.step(&mut history, &retention, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::sqlite::tests::bound;
    use crate::queue::{JobFilter, OpenMode, Outcome, QueueBackend, Retention};

    /// One pruning step that runs (one put off while the log catches up is tried again).
    fn step(q: &mut SqliteQueue) {
        procyard_core::testkit::wait_for("the log to catch up", Duration::from_secs(30), || {
            q.prune_step()
        });
    }

    /// Every job of task `mail` (the test queue copies each to task `all` too).
    fn mail() -> JobFilter {
        JobFilter { task: Some("mail".into()), limit: usize::MAX, ..JobFilter::default() }
    }

    /// Done jobs beyond `keep_done_max` go, the newest stay; dead letters are never pruned;
    /// a big backlog goes in batches.
    #[test]
    fn prunes_by_count_in_batches_and_keeps_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        q.set_retention(Retention { keep_done: Duration::from_secs(3600), keep_done_max: 10 });
        let n = 1200;
        let payloads: Vec<Vec<u8>> = (0..n).map(|i| format!("{i}").into_bytes()).collect();
        q.publish_batch("mail.a", &payloads).unwrap();
        let jobs = q.claim("mail", n).unwrap();
        for (i, j) in jobs.iter().enumerate() {
            let outcome =
                if i == 0 { Outcome::DeadLetter { reason: "x".into() } } else { Outcome::Done };
            q.complete(j, outcome).unwrap();
        }
        q.flush().unwrap();
        let mut steps = 0;
        loop {
            steps += 1;
            let before = q.jobs(&mail());
            q.prune.next = Instant::now();
            step(&mut q);
            let after = q.jobs(&mail());
            if before.unwrap().len() == after.unwrap().len() {
                break;
            }
        }
        assert!(steps >= 3, "in batches of {PRUNE_BATCH}: {steps} steps");
        let left = q.jobs(&mail()).unwrap();
        let dead = left.iter().filter(|j| j.state == crate::queue::JobState::Dead).count();
        assert_eq!(dead, 1, "dead letters stay");
        let done = left.len() - dead;
        assert_eq!(done, 10, "the newest keep_done_max remain");
    }

    /// A `keep_done_max` beyond one walk chunk is read over several steps (none walks more
    /// than [`WALK_CHUNK`] entries), and then exactly that many of the newest stay.
    #[test]
    fn count_cutoff_is_walked_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        let max = WALK_CHUNK + 1000;
        q.set_retention(Retention { keep_done: Duration::from_secs(3600), keep_done_max: max });
        let now = now_ms();
        let tx = q.conn.transaction().unwrap();
        for i in 0..max + 1200 {
            tx.execute(
                "INSERT INTO jobs (id, task, routing_key, payload, state, published_ms, finished_ms)
                 VALUES (?1, 'mail', 'mail.a', x'', 2, ?2, ?2)",
                params![format!("j{i}"), now - 1000 + (i / 100) as i64],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let count = |q: &SqliteQueue| -> u64 {
            q.conn.query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get::<_, i64>(0)).unwrap()
                as u64
        };
        q.prune.next = Instant::now();
        step(&mut q);
        assert!(q.prune.walk.is_some(), "the walk goes on at the next step");
        assert_eq!(count(&q), max + 1200, "nothing deleted before the cutoff is known");
        for _ in 0..=1200 / PRUNE_BATCH + 1 {
            q.prune.next = Instant::now();
            step(&mut q);
        }
        assert_eq!(count(&q), max, "the newest keep_done_max stay");
        let oldest: i64 = q.conn.query_row("SELECT MIN(seq) FROM jobs", [], |r| r.get(0)).unwrap();
        assert_eq!(oldest, 1201, "the oldest went");
    }

    /// A table whose row numbers span no more than `keep_done_max` is not walked: the count
    /// cannot cut, and the walk's reads would only fill the daemon's page cache (its memory).
    #[test]
    fn no_count_walk_when_the_table_is_smaller_than_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        // More rows than one walk chunk: a walk would still be under way after a step.
        let rows = WALK_CHUNK + 500;
        let limit = |max| Retention { keep_done: Duration::from_secs(3600), keep_done_max: max };
        q.set_retention(limit(3 * WALK_CHUNK));
        let now = now_ms();
        let tx = q.conn.transaction().unwrap();
        for i in 0..rows {
            tx.execute(
                "INSERT INTO jobs (id, task, routing_key, payload, state, published_ms, finished_ms)
                 VALUES (?1, 'mail', 'mail.a', x'', 2, ?2, ?2)",
                params![format!("j{i}"), now - 1000],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        q.prune.next = Instant::now();
        step(&mut q);
        assert!(q.prune.walk.is_none(), "no walk: {:?}", q.prune);
        assert_eq!(q.jobs(&mail()).unwrap().len() as u64, rows, "all kept");
        // Under the row count, the walk runs (over more than one step) and cuts.
        q.set_retention(limit(rows - 10));
        q.prune.count_read = None;
        q.prune.next = Instant::now();
        step(&mut q);
        assert!(q.prune.walk.is_some(), "a walk under way: {:?}", q.prune);
        for _ in 0..60 {
            q.prune.next = Instant::now();
            step(&mut q);
        }
        assert_eq!(q.jobs(&mail()).unwrap().len() as u64, rows - 10, "the oldest went");
    }

    /// `n` done jobs of task `mail` that ended an hour ago, one ms apart.
    fn expired_jobs(q: &mut SqliteQueue, n: i64) {
        let old = now_ms() - 3_600_000;
        let tx = q.conn.transaction().unwrap();
        for i in 0..n {
            tx.execute(
                "INSERT INTO jobs (id, task, routing_key, payload, state, published_ms, finished_ms)
                 VALUES (?1, 'mail', 'mail.a', x'', 2, ?2, ?2)",
                params![format!("j{i}"), old + i],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    /// While jobs flow (the loop just claimed or ended one) a step deletes a short batch;
    /// once they stop for a while, a full one.
    #[test]
    fn steps_are_short_while_jobs_flow() {
        use crate::queue::Outcome;
        let dir = tempfile::tempdir().unwrap();
        let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        q.set_retention(Retention { keep_done: Duration::from_secs(1), keep_done_max: 1 << 40 });
        expired_jobs(&mut q, 3 * PRUNE_BATCH);
        let count = |q: &SqliteQueue| -> i64 {
            q.conn.query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0)).unwrap()
        };
        // A job ran: its claim and its end note the flow.
        q.publish("mail.a", b"x").unwrap();
        let jobs = q.claim("mail", 1).unwrap();
        q.complete(&jobs[0], Outcome::Done).unwrap();
        q.prune.next = Instant::now() + Duration::from_secs(3600);
        q.flush().unwrap();
        let before = count(&q);
        q.prune.next = Instant::now();
        step(&mut q);
        assert_eq!(before - count(&q), PRUNE_BATCH_BUSY, "a short step while jobs flow");
        // More jobs ended since the last step than a short step deletes: the step keeps up.
        let many = PRUNE_BATCH_BUSY + 20;
        q.publish_batch("mail.a", &vec![b"x".to_vec(); many as usize]).unwrap();
        for job in q.claim("mail", many as usize).unwrap() {
            q.complete(&job, Outcome::Done).unwrap();
        }
        q.prune.next = Instant::now() + Duration::from_secs(3600);
        q.flush().unwrap();
        let before = count(&q);
        q.prune.next = Instant::now();
        step(&mut q);
        assert_eq!(before - count(&q), many, "as many rows as jobs ended");
        // No job for a while: a full step.
        q.prune.busy_until = Instant::now();
        let before = count(&q);
        q.prune.next = Instant::now();
        step(&mut q);
        assert_eq!(before - count(&q), PRUNE_BATCH, "a full step once jobs stopped");
    }

    /// Each step deletes a full batch while a publisher commits all the time: a step that
    /// read before taking the write lock failed ("database is locked") whenever a publish
    /// landed in between, and pruning then crawled at one retry a second.
    #[test]
    fn prunes_while_a_publisher_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let mut q = bound(&path, OpenMode::Daemon);
        q.set_retention(Retention { keep_done: Duration::from_secs(1), keep_done_max: 1 << 40 });
        let steps = 20;
        expired_jobs(&mut q, steps * PRUNE_BATCH);
        let expired = |q: &SqliteQueue| -> i64 {
            q.conn.query_row("SELECT COUNT(*) FROM jobs WHERE state = 2", [], |r| r.get(0)).unwrap()
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let published = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let publisher = std::thread::spawn({
            let (stop, published, path) = (stop.clone(), published.clone(), path.clone());
            move || {
                let mut client = bound(&path, OpenMode::Client);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    client.publish("other.a", b"x").unwrap();
                    published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        let mut left = expired(&q);
        for n in 0..steps {
            // A step while the publisher is at work (it has committed since the last one).
            let seen = published.load(std::sync::atomic::Ordering::Relaxed);
            procyard_core::testkit::wait_for("a publish", Duration::from_secs(30), || {
                published.load(std::sync::atomic::Ordering::Relaxed) > seen
            });
            // A step put off while the log catches up deletes nothing; the one that runs,
            // a full batch.
            step(&mut q);
            let now = expired(&q);
            assert_eq!(left - now, PRUNE_BATCH, "step {n} deleted a full batch");
            left = now;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        publisher.join().unwrap();
    }

    /// Jobs older than `keep_done` go.
    #[test]
    fn prunes_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        q.set_retention(Retention { keep_done: Duration::from_millis(1), keep_done_max: 1000 });
        q.publish("mail.a", b"1").unwrap();
        let job = q.claim("mail", 1).unwrap().remove(0);
        q.complete(&job, Outcome::Done).unwrap();
        q.flush().unwrap();
        q.conn.execute("UPDATE jobs SET finished_ms = finished_ms - 10", []).unwrap();
        q.prune.next = Instant::now();
        step(&mut q);
        assert!(q.jobs(&mail()).unwrap().is_empty());
    }
}
