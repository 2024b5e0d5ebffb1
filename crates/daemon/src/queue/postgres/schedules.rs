//! Periodic jobs on PostgreSQL, fired exactly once per due time by whichever daemons run
//! them: one row per `[[schedule]]` in `schedules` (cadence as configured, when it began
//! counting, the last due time dealt with, the last run and job, paused or not).
//!
//! A daemon fires a due time in one transaction that locks the schedule's row (`FOR
//! UPDATE`), reads its last due time, publishes the jobs of the due times after it and moves
//! `last_due_ms` forward (only forward: `last_due_ms < due`). Two daemons due at once
//! serialize on the row: the second finds the due time dealt with and publishes nothing. A
//! daemon killed at any moment has committed both or neither (its session ends, its
//! transaction rolls back, the lock goes), so the next look of any daemon fires that due time
//! once — never twice, never not at all.
//!
//! Between fires each daemon keeps the next due time in memory (a deadline of its loop). A
//! `trigger`, `pause`, `resume` or a changed cadence notifies `<schema>_schedules`, and every
//! daemon reads the rows again. A schedule removed from one daemon's config keeps its row
//! (another daemon may still run it); two daemons configuring one name with different
//! cadences start it afresh at each start or reload, and only the one matching the row fires.

use std::time::Instant;

use jiff::Timestamp;
use postgres::{GenericClient, Row};

use super::{PgQueue, now_ms};
use crate::queue::ScheduleStatus;
use crate::queue::periodic::{Book, instant_of, ts, zone_of};
use crate::schedule::{self, ScheduleConfig};
use crate::{Error, Result};

const READ: &str = "SELECT spec, since_ms, last_due_ms, last_run_ms, last_job, paused
    FROM schedules WHERE name = $1";

/// A new schedule counts from now.
const ENSURE: &str = "INSERT INTO schedules (name, spec, since_ms) VALUES ($1, $2, now_ms())
    ON CONFLICT (name) DO NOTHING";

/// One job of a schedule (headers `schedule` and `due`), notifying its task.
const INSERT: &str = "WITH ins AS (
        INSERT INTO jobs (id, task, routing_key, payload, state, published_ms, headers)
        SELECT u.id, u.task, $1, $2, 0, now_ms(), $3
        FROM unnest($4::text[], $5::text[]) AS u(id, task)
        RETURNING seq, task, priority),
    q AS (INSERT INTO queue (seq, task, priority, state) SELECT seq, task, priority, 0 FROM ins)
    SELECT pg_notify($6, t) FROM (SELECT DISTINCT task FROM ins) AS x(t)";

/// A schedule's stored row.
#[derive(Clone, Debug, Default)]
struct Stored {
    spec: String,
    since_ms: i64,
    last_due_ms: Option<i64>,
    last_run_ms: Option<i64>,
    last_job: Option<String>,
    paused: bool,
}

impl Stored {
    fn of(r: &Row) -> Stored {
        Stored {
            spec: r.get(0),
            since_ms: r.get(1),
            last_due_ms: r.get(2),
            last_run_ms: r.get(3),
            last_job: r.get(4),
            paused: r.get(5),
        }
    }

    /// Where counting resumes: after the last due time, or when it began.
    fn after(&self) -> Timestamp {
        ts(self.last_due_ms.unwrap_or(self.since_ms).max(self.since_ms))
    }
}

/// Publishes one job of `s` to `targets` with these headers; returns the first id.
fn publish(
    c: &mut impl GenericClient,
    s: &ScheduleConfig,
    targets: &[String],
    due: &str,
    channel: &str,
) -> std::result::Result<Option<String>, postgres::Error> {
    let headers = serde_json::json!({ "schedule": s.name, "due": due }).to_string();
    let ids: Vec<String> = targets.iter().map(|_| uuid::Uuid::now_v7().to_string()).collect();
    c.execute(
        INSERT,
        &[&s.routing_key, &s.payload.as_bytes(), &headers, &ids, &targets, &channel],
    )?;
    Ok(ids.into_iter().next())
}

impl PgQueue {
    /// Applies `configs` (see [`QueueBackend::set_schedules`](crate::queue::QueueBackend)):
    /// new ones count from now, a changed cadence starts afresh.
    pub(super) fn sync_schedules(&mut self, configs: &[ScheduleConfig]) -> Result<()> {
        let channel = self.target.schedules_channel();
        if !configs.is_empty() {
            self.with("record the schedules in", |c| {
                let mut tx = c.transaction()?;
                let mut changed = false;
                for s in configs {
                    let n = tx.execute(
                        "UPDATE schedules SET spec = $2, since_ms = now_ms(), last_due_ms = NULL
                         WHERE name = $1 AND spec <> $2",
                        &[&s.name, &s.spec],
                    )?;
                    if n > 0 {
                        tracing::info!(schedule = %s.name, spec = %s.spec, "schedule changed: counting afresh from now");
                    }
                    changed |= n > 0;
                    changed |= tx.execute(ENSURE, &[&s.name, &s.spec])? > 0;
                }
                if changed {
                    tx.execute("SELECT pg_notify($1, '')", &[&channel])?;
                }
                tx.commit()
            })?;
        }
        self.book = Book::new(configs);
        Ok(())
    }

    /// Daemon: fires every schedule whose due time has come, each in its own transaction;
    /// returns when to look again (now, if it fired: the new jobs are claimed next turn).
    pub(super) fn fire_due_schedules(&mut self) -> Result<Option<Instant>> {
        let now = now_ms();
        if let Some(wake) = self.book.not_due(now) {
            return Ok(wake);
        }
        let mut fired = false;
        let mut earliest: Option<i64> = None;
        for (s, tz) in self.book.configs.clone() {
            let targets = self.receivers(&s.routing_key);
            let channel = self.target.channel();
            let (did, after) = self.with("fire schedules in", |c| {
                let mut tx = c.transaction()?;
                // The row lock: a daemon firing this schedule now finishes first.
                let Some(row) = tx.query_opt(&format!("{READ} FOR UPDATE"), &[&s.name])? else {
                    return Ok((false, None));
                };
                let row = Stored::of(&row);
                if row.paused || row.spec != s.spec {
                    return Ok((false, None));
                }
                let now = now_ms();
                let f = schedule::fires(&s.cadence, &tz, row.after(), ts(now), s.missed);
                let Some(settled) = f.settled else { return Ok((false, Some(row.after()))) };
                if targets.is_empty() && !f.fire.is_empty() {
                    tracing::warn!(schedule = %s.name, routing_key = %s.routing_key, "no task is bound to the schedule's key: its due time is skipped");
                }
                let mut last_job = None;
                if !targets.is_empty() {
                    for due in &f.fire {
                        last_job = publish(&mut tx, &s, &targets, &due.to_string(), &channel)?
                            .or(last_job);
                    }
                }
                // Only forward: a due time dealt with is never fired again.
                tx.execute(
                    "UPDATE schedules SET last_due_ms = $2,
                         last_run_ms = CASE WHEN $3::text IS NULL THEN last_run_ms ELSE $4 END,
                         last_job = COALESCE($3, last_job)
                     WHERE name = $1 AND (last_due_ms IS NULL OR last_due_ms < $2)",
                    &[&s.name, &settled.as_millisecond(), &last_job, &now],
                )?;
                tx.commit()?;
                if f.fire.is_empty() {
                    tracing::info!(schedule = %s.name, due = %settled, missed = ?s.missed, "due time missed: skipped");
                } else {
                    tracing::info!(schedule = %s.name, runs = f.fire.len(), due = %settled, job = ?last_job, "schedule fired");
                }
                Ok((last_job.is_some(), Some(settled.max(row.after()))))
            })?;
            fired |= did;
            if let Some(next) = after.and_then(|a| s.cadence.next_after(a, &tz)) {
                let next = next.as_millisecond();
                earliest = Some(earliest.map_or(next, |x| x.min(next)));
            }
        }
        self.book.next = Some(earliest);
        if fired {
            return Ok(Some(Instant::now()));
        }
        Ok(earliest.map(|due| instant_of(due, now_ms())))
    }

    /// The stored state of `configs`, in their order.
    pub(super) fn schedule_states(
        &mut self,
        configs: &[ScheduleConfig],
    ) -> Result<Vec<ScheduleStatus>> {
        let rows = self.with("read the schedules in", |c| {
            let mut rows = Vec::with_capacity(configs.len());
            for s in configs {
                rows.push(c.query_opt(READ, &[&s.name])?.map(|r| Stored::of(&r)));
            }
            Ok(rows)
        })?;
        let now = now_ms();
        Ok(configs
            .iter()
            .zip(rows)
            .map(|(s, row)| {
                // Not stored yet (no daemon has run it) or changed since: it counts from now.
                let row = row
                    .filter(|r| r.spec == s.spec)
                    .unwrap_or(Stored { since_ms: now, ..Stored::default() });
                let next = (!row.paused)
                    .then(|| s.cadence.next_after(row.after(), &zone_of(s)))
                    .flatten()
                    .map(|t| t.as_millisecond());
                ScheduleStatus {
                    name: s.name.clone(),
                    spec: s.spec.clone(),
                    paused: row.paused,
                    next_ms: next,
                    last_due_ms: row.last_due_ms,
                    last_run_ms: row.last_run_ms,
                    last_job: row.last_job,
                }
            })
            .collect())
    }

    /// Publishes a job of `s` now and records it as its last run (its due times unchanged).
    pub(super) fn trigger(&mut self, s: &ScheduleConfig) -> Result<Vec<String>> {
        let targets = self.receivers(&s.routing_key);
        if targets.is_empty() {
            return Err(Error::Unroutable { routing_key: s.routing_key.clone() });
        }
        let channel = self.target.channel();
        let first = self.with("trigger a schedule in", |c| {
            let mut tx = c.transaction()?;
            tx.execute(ENSURE, &[&s.name, &s.spec])?;
            let first = publish(&mut tx, s, &targets, "trigger", &channel)?;
            tx.execute(
                "UPDATE schedules SET last_run_ms = now_ms(), last_job = $2 WHERE name = $1",
                &[&s.name, &first],
            )?;
            tx.commit()?;
            Ok(first)
        })?;
        Ok(first.into_iter().collect())
    }

    /// Pauses or resumes `s` (a resume counts from now); every daemon is told.
    pub(super) fn set_paused(&mut self, s: &ScheduleConfig, paused: bool) -> Result<()> {
        let channel = self.target.schedules_channel();
        self.with("pause or resume a schedule in", |c| {
            let mut tx = c.transaction()?;
            tx.execute(ENSURE, &[&s.name, &s.spec])?;
            let sql = if paused {
                "UPDATE schedules SET paused = true WHERE name = $1"
            } else {
                "UPDATE schedules SET paused = false, since_ms = now_ms(), last_due_ms = NULL
                 WHERE name = $1 AND paused"
            };
            tx.execute(sql, &[&s.name])?;
            tx.execute("SELECT pg_notify($1, '')", &[&channel])?;
            tx.commit()
        })?;
        self.book.invalidate();
        Ok(())
    }
}
