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
//! bound. A daemon's step deletes only rows a thread has read ahead (`warm.rs`), so that it
//! never waits for the disk with the write lock held.

use std::time::{Duration, Instant};

use rusqlite::{OptionalExtension, params};

use super::store::History;
use super::warm::Warmer;
use super::{SqliteQueue, now_ms};
use crate::queue::{OpenMode, Retention};

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
    /// A daemon's queue: the thread that reads the rows ahead of the steps (`warm.rs`).
    warm: Warm,
}

/// The thread that reads ahead of the steps: started by the first step that deletes a row
/// (with the queue, a connection and a thread cost an idle daemon 0.5 MiB), on a daemon's queue
/// only.
#[derive(Debug)]
enum Warm {
    /// No thread (a history beside AMQP or PostgreSQL, or the thread failed to start).
    Off,
    /// The queue file whose pruning has not deleted anything yet.
    Later(std::path::PathBuf),
    On(Warmer),
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
            warm: Warm::Off,
        }
    }

    /// A queue's clock: a daemon's with a thread reading ahead of its steps in the file at
    /// `path` (a client never prunes).
    pub(super) fn of_queue(now: Instant, path: &std::path::Path, mode: OpenMode) -> PruneClock {
        let warm = if mode == OpenMode::Daemon { Warm::Later(path.to_owned()) } else { Warm::Off };
        PruneClock { warm, ..PruneClock::new(now) }
    }

    /// The thread reading ahead of the steps, once started.
    fn warmer(&self) -> Option<&Warmer> {
        match &self.warm {
            Warm::On(w) => Some(w),
            Warm::Off | Warm::Later(_) => None,
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
    /// Returns false when the step ran out of rows read ahead (`warm.rs`) before its batch:
    /// the next one waits for the thread.
    pub(crate) fn step(
        &mut self,
        history: &mut History<'_>,
        retention: &Retention,
        now: Instant,
    ) -> bool {
        let ended = self.ended;
        let batch = self.batch(now);
        match self.prune_once(history, retention, now, batch) {
            Ok((n, ran_out)) => {
                if ran_out {
                    // The jobs that ended count toward the next step, which waits for the
                    // thread.
                    self.ended = ended.saturating_sub(n as i64);
                }
                let full = n as i64 >= batch;
                // Out of rows read ahead: the next step once the thread has read more.
                let wait = if ran_out { LOG_WAIT } else { PRUNE_EVERY };
                self.next = now + if full { PRUNE_AGAIN } else { wait };
                if n > 0 {
                    tracing::debug!(jobs = n, "pruned ended jobs past their retention");
                }
                !ran_out
            }
            Err(e) => {
                self.next = now + PRUNE_EVERY;
                tracing::warn!(error = %procyard_core::Report(&e), "unable to prune ended jobs");
                true
            }
        }
    }

    fn prune_once(
        &mut self,
        history: &mut History<'_>,
        retention: &Retention,
        now: Instant,
        batch: i64,
    ) -> rusqlite::Result<(usize, bool)> {
        let keep = retention.keep_done.as_millis().min(i64::MAX as u128) as i64;
        let by_age = now_ms().saturating_sub(keep) - 1;
        if self.warmer().is_some_and(|w| !w.started((by_age, i64::MAX))) {
            return Ok((0, true));
        }
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
        let cut = std::cmp::max((by_age, i64::MAX), count);
        // Only rows the warm thread has read: their pages are in memory.
        let bound = self.warmer().map_or(cut, |w| w.bound(cut));
        let n = history.delete_batch(PRUNE_SELECT, params![bound.0, bound.1, batch])?;
        let short = bound < cut && (n as i64) < batch;
        let ran_out = self.warmer().is_some_and(|w| w.deleted(n, short, bound, cut));
        if n > 0
            && let Warm::Later(path) = &self.warm
        {
            self.warm = Warmer::start(path).map_or(Warm::Off, Warm::On);
        }
        if ran_out {
            return Ok((n, true));
        }
        if n < batch as usize && self.walk.is_none() && self.count_cutoff.is_some() {
            // Everything up to the count cutoff is gone: read it again next time. (With no
            // cutoff, the count was under the limit: it is read again [`COUNT_EVERY`] later.)
            self.count_read = None;
        }
        Ok((n, false))
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
    /// write-ahead log is behind or the rows ahead are not read yet (`warm.rs`): then it wakes
    /// the thread that catches up, looks again [`LOG_WAIT`] later and returns false (also
    /// after a step that ran out of rows read ahead before its batch).
    pub(super) fn prune_step(&mut self) -> bool {
        let now = Instant::now();
        if self.prune.warmer().is_some_and(Warmer::waiting) {
            self.prune.next = now + LOG_WAIT;
            return false;
        }
        if let Some(checkpointer) = &self._checkpointer
            && checkpointer.behind()
        {
            checkpointer.kick();
            self.prune.next = now + LOG_WAIT;
            return false;
        }
        let retention = self.retention;
        let mut history = History::new(&mut self.conn, &self.path);
        crate::stamp::timed("prune", || self.prune.step(&mut history, &retention, now))
    }
}

#[cfg(test)]
#[path = "retention_tests.rs"]
mod tests;
