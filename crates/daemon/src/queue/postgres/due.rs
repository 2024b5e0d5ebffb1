//! Delayed jobs falling due: jobs published with `--delay`/`--at` and retries waiting for
//! their backoff sit in state 5 (`STATE_DELAYED`), with no row in `queue` (so outside the
//! claim index), until their `not_before` (only delayed jobs have one: `jobs_delayed`). The
//! daemon keeps the earliest due time (one read of `jobs_delayed`, cached until a
//! notification says something was published or requeued) as a real deadline of its loop;
//! when it comes, one statement makes the jobs that fell due ready (a batch at a time, `SKIP
//! LOCKED`, so daemons doing it together never wait for each other) and notifies their
//! tasks, so every daemon claims them — no polling.

use std::time::{Duration, Instant};

use postgres::Row;
use postgres::types::ToSql;

use super::PgQueue;
use crate::Result;

/// The most jobs made ready by one statement (more: the next turn takes the rest at once).
const PROMOTE_BATCH: i64 = 10_000;

/// Jobs whose time came become ready (their `not_before` cleared, a row in `queue` each);
/// each of their tasks notified; returns how many.
const PROMOTE: &str = "WITH p AS (
        UPDATE jobs SET state = 0, not_before = NULL
        WHERE seq IN (SELECT seq FROM jobs WHERE not_before <= now_ms() AND state = 5
                      ORDER BY not_before LIMIT $2 FOR UPDATE SKIP LOCKED)
        RETURNING seq, task, priority),
    q AS (INSERT INTO queue (seq, task, priority, state) SELECT seq, task, priority, 0 FROM p)
    SELECT (SELECT COUNT(*) FROM p),
           (SELECT COUNT(pg_notify($1, t)) FROM (SELECT DISTINCT task FROM p) AS x(t))";

/// The earliest due time, in ms from now (a statement asked after every notification).
/// Only delayed jobs have a `not_before` (`jobs_delayed`).
const DUE: &str = "SELECT MIN(not_before) - now_ms() FROM jobs WHERE not_before IS NOT NULL";

impl PgQueue {
    /// Runs `sql` (prepared once per connection: one round trip) for its one row.
    fn query_prepared(
        &mut self,
        action: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row> {
        let ran = match self.conn() {
            Ok(c) => Ok(c.stmt(sql).and_then(|st| c.client.query_one(&st, params))),
            Err(e) => Err(e),
        };
        let result = ran.and_then(|r| r.map_err(|e| self.target.err(action, e)));
        self.note(&result);
        result
    }

    /// When the earliest delayed job falls due (cached until something could change it).
    /// An instant already past means jobs wait to be made ready.
    pub(super) fn retry_due(&mut self) -> Result<Option<Instant>> {
        if let Some(due) = self.due_cache
            && due.is_none_or(|d| d > Instant::now())
        {
            return Ok(due);
        }
        let left: Option<i64> = self.query_prepared("read due times from", DUE, &[])?.get(0);
        let due = left.map(|ms| {
            if ms <= 0 { Instant::now() } else { Instant::now() + Duration::from_millis(ms as u64) }
        });
        self.due_cache = Some(due);
        Ok(due)
    }

    /// Makes the jobs that fell due ready, if the cached due time says some did (no round
    /// trip otherwise).
    pub(super) fn promote_if_due(&mut self) -> Result<()> {
        let due = matches!(self.due_cache, Some(Some(t)) if t <= Instant::now());
        if !due {
            return Ok(());
        }
        let channel = self.target.channel();
        let n: i64 = self
            .query_prepared("make delayed jobs ready in", PROMOTE, &[&channel, &PROMOTE_BATCH])?
            .get(0);
        // A full batch: more are due, the next call takes them; otherwise read the next time.
        self.due_cache = if n >= PROMOTE_BATCH { Some(Some(Instant::now())) } else { None };
        Ok(())
    }

    /// The next instant the daemon must wake for delayed jobs: those already due are made
    /// ready first, so this is never an instant already past (no spin when the daemon has no
    /// free worker to claim them: other daemons are told by the notification).
    pub(super) fn delayed_due(&mut self) -> Result<Option<Instant>> {
        for _ in 0..3 {
            match self.retry_due()? {
                Some(t) if t <= Instant::now() => self.promote_if_due()?,
                other => return Ok(other),
            }
        }
        // Still due after three batches: wake again at once.
        Ok(Some(Instant::now()))
    }
}
