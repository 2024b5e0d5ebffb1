//! Periodic jobs on the embedded queue: one row per `[[schedule]]` in `schedules` (its cadence
//! as configured, when it began counting, the last due time dealt with, the last run and job,
//! paused or not). A due time is fired in one transaction that inserts its job and moves
//! `last_due_ms` past it (only forward): a daemon killed at any moment has done both or
//! neither, so the next daemon fires it once — never twice, never not at all. Between fires
//! the daemon keeps the next due time in memory and reads the rows again only when it comes
//! or a client pokes (a `trigger`, `pause`, `resume`).

use std::time::Instant;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::publish::{insert_rows, receivers};
use super::{SqliteQueue, now_ms};
use crate::queue::periodic::{Book, instant_of, ts, zone_of};
use crate::queue::{PublishOptions, ScheduleStatus};
use crate::schedule::ScheduleConfig;
use crate::schedule::{self, Fires};
use crate::{Error, Result};

/// A schedule's stored row.
#[derive(Clone, Debug, Default)]
struct Row {
    spec: String,
    since_ms: i64,
    last_due_ms: Option<i64>,
    last_run_ms: Option<i64>,
    last_job: Option<String>,
    paused: bool,
}

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn read_row(conn: &Connection, name: &str) -> rusqlite::Result<Option<Row>> {
    conn.prepare_cached(
        "SELECT spec, since_ms, last_due_ms, last_run_ms, last_job, paused FROM schedules
         WHERE name = ?1",
    )?
    .query_row([name], |r| {
        Ok(Row {
            spec: r.get(0)?,
            since_ms: r.get(1)?,
            last_due_ms: r.get(2)?,
            last_run_ms: r.get(3)?,
            last_job: r.get(4)?,
            paused: r.get::<_, i64>(5)? != 0,
        })
    })
    .optional()
}

/// Where counting resumes for a row: after its last due time, or when it began.
fn after(row: &Row) -> Timestamp {
    ts(row.last_due_ms.unwrap_or(row.since_ms).max(row.since_ms))
}

/// Makes sure `s` has a row (a new one counts from now).
fn ensure_row(conn: &Connection, s: &ScheduleConfig, now: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO schedules (name, spec, since_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(name) DO NOTHING",
    )?
    .execute(params![s.name, s.spec, now])?;
    Ok(())
}

impl SqliteQueue {
    /// Applies `configs` to the stored schedules as a diff (see
    /// [`QueueBackend::set_schedules`](crate::queue::QueueBackend::set_schedules)).
    pub(super) fn sync_schedules(&mut self, configs: &[ScheduleConfig]) -> Result<()> {
        let path = self.path.clone();
        let e = |err| Error::queue("record the schedules in", &path, err);
        let now = now_ms();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(e)?;
        for s in configs {
            match read_row(&tx, &s.name).map_err(e)? {
                None => {
                    tracing::info!(schedule = %s.name, spec = %s.spec, "new schedule: counting from now")
                }
                Some(row) if row.spec != s.spec => {
                    tracing::info!(schedule = %s.name, from = %row.spec, to = %s.spec, "schedule changed: counting afresh from now");
                    tx.execute(
                        "UPDATE schedules SET spec = ?2, since_ms = ?3, last_due_ms = NULL
                         WHERE name = ?1",
                        params![s.name, s.spec, now],
                    )
                    .map_err(e)?;
                }
                Some(_) => {}
            }
            ensure_row(&tx, s, now).map_err(e)?;
        }
        let names: Vec<&str> = configs.iter().map(|s| s.name.as_str()).collect();
        let names = serde_json::to_string(&names).unwrap_or_else(|_| "[]".into());
        let gone = tx
            .execute(
                "DELETE FROM schedules WHERE name NOT IN (SELECT value FROM json_each(?1))",
                [names],
            )
            .map_err(e)?;
        if gone > 0 {
            tracing::info!(schedules = gone, "forgot schedules no longer configured");
        }
        tx.commit().map_err(e)?;
        self.book = Book::new(configs);
        Ok(())
    }

    /// Daemon: fires every schedule whose due time has come, each in its own transaction with
    /// its due time; returns when to look again (now, if it fired: the new jobs are claimed at
    /// the next turn).
    pub(super) fn fire_due_schedules(&mut self) -> Result<Option<Instant>> {
        let now = now_ms();
        if let Some(wake) = self.book.not_due(now) {
            return Ok(wake);
        }
        let path = self.path.clone();
        let e = |err| Error::queue("fire schedules in", &path, err);
        let mut fired = false;
        let mut earliest: Option<i64> = None;
        let configs = self.book.configs.clone();
        for (s, tz) in &configs {
            let Some(row) = read_row(&self.conn, &s.name).map_err(e)? else { continue };
            if row.paused || row.spec != s.spec {
                continue;
            }
            let f = schedule::fires(&s.cadence, tz, after(&row), ts(now), s.missed);
            if f.settled.is_some() {
                fired |= self.fire(s, &f, now).map_err(e)?;
            }
            let from = f.settled.map_or_else(|| after(&row), |t| t.max(after(&row)));
            if let Some(next) = s.cadence.next_after(from, tz) {
                earliest = Some(earliest.map_or(ms(next), |x| x.min(ms(next))));
            }
        }
        self.book.next = Some(earliest);
        if fired {
            // The new jobs join the claim order at the next turn, which comes at once.
            return Ok(Some(Instant::now()));
        }
        Ok(earliest.map(|due| instant_of(due, now_ms())))
    }

    /// Publishes `f`'s jobs of `s` and records its settled due time, in one transaction.
    /// Returns whether a job was published.
    fn fire(&mut self, s: &ScheduleConfig, f: &Fires, now: i64) -> rusqlite::Result<bool> {
        let Some(settled) = f.settled else { return Ok(false) };
        let targets = receivers(&self.tasks, &s.routing_key);
        if targets.is_empty() && !f.fire.is_empty() {
            tracing::warn!(schedule = %s.name, routing_key = %s.routing_key, "no task is bound to the schedule's key: its due time is skipped");
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut last_job: Option<String> = None;
        if !targets.is_empty() {
            for due in &f.fire {
                let options = PublishOptions::new()
                    .header("schedule", s.name.clone())
                    .header("due", due.to_string());
                let published =
                    insert_rows(&tx, &targets, &s.routing_key, &[s.payload.as_bytes()], &options)?;
                last_job = published.ids.into_iter().next().or(last_job);
            }
        }
        // Only forward: a due time already dealt with is never fired again.
        let moved = tx.execute(
            "UPDATE schedules SET last_due_ms = ?2,
                 last_run_ms = CASE WHEN ?3 IS NULL THEN last_run_ms ELSE ?4 END,
                 last_job = COALESCE(?3, last_job)
             WHERE name = ?1 AND spec = ?5 AND (last_due_ms IS NULL OR last_due_ms < ?2)",
            params![s.name, ms(settled), last_job, now, s.spec],
        )?;
        if moved == 0 {
            return Ok(false); // dropped with the transaction: nothing published
        }
        tx.commit()?;
        let skipped = f.fire.is_empty();
        if skipped {
            tracing::info!(schedule = %s.name, due = %settled, missed = ?s.missed, "due time missed: skipped");
        } else {
            tracing::info!(schedule = %s.name, runs = f.fire.len(), due = %settled, job = ?last_job, "schedule fired");
        }
        Ok(last_job.is_some())
    }

    /// The stored state of `configs`, in their order.
    pub(super) fn schedule_states(
        &mut self,
        configs: &[ScheduleConfig],
    ) -> Result<Vec<ScheduleStatus>> {
        let now = now_ms();
        let mut out = Vec::with_capacity(configs.len());
        for s in configs {
            let row = read_row(&self.conn, &s.name)
                .map_err(|e| Error::queue("read the schedules in", &self.path, e))?;
            // Not stored yet (no daemon has run it) or changed since: it counts from now.
            let row =
                row.filter(|r| r.spec == s.spec).unwrap_or(Row { since_ms: now, ..Row::default() });
            let next = (!row.paused)
                .then(|| s.cadence.next_after(after(&row), &zone_of(s)))
                .flatten()
                .map(ms);
            out.push(ScheduleStatus {
                name: s.name.clone(),
                spec: s.spec.clone(),
                paused: row.paused,
                next_ms: next,
                last_due_ms: row.last_due_ms,
                last_run_ms: row.last_run_ms,
                last_job: row.last_job,
            });
        }
        Ok(out)
    }

    /// Publishes a job of `s` now and records it as its last run (its due times unchanged).
    pub(super) fn trigger(&mut self, s: &ScheduleConfig) -> Result<Vec<String>> {
        let path = self.path.clone();
        let e = |err| Error::queue("trigger a schedule in", &path, err);
        let targets = receivers(&self.tasks, &s.routing_key);
        if targets.is_empty() {
            return Err(Error::Unroutable { routing_key: s.routing_key.clone() });
        }
        let now = now_ms();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(e)?;
        ensure_row(&tx, s, now).map_err(e)?;
        let options =
            PublishOptions::new().header("schedule", s.name.clone()).header("due", "trigger");
        let published =
            insert_rows(&tx, &targets, &s.routing_key, &[s.payload.as_bytes()], &options)
                .map_err(e)?;
        tx.execute(
            "UPDATE schedules SET last_run_ms = ?2, last_job = ?3 WHERE name = ?1",
            params![s.name, now, published.ids.first()],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(published.ids)
    }

    /// Pauses or resumes `s` (a resume counts from now).
    pub(super) fn set_paused(&mut self, s: &ScheduleConfig, paused: bool) -> Result<()> {
        let path = self.path.clone();
        let e = |err| Error::queue("pause or resume a schedule in", &path, err);
        let now = now_ms();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(e)?;
        ensure_row(&tx, s, now).map_err(e)?;
        let sql = if paused {
            "UPDATE schedules SET paused = 1 WHERE name = ?1 AND ?2 = ?2"
        } else {
            "UPDATE schedules SET paused = 0, since_ms = ?2, last_due_ms = NULL
             WHERE name = ?1 AND paused = 1"
        };
        tx.execute(sql, params![s.name, now]).map_err(e)?;
        tx.commit().map_err(e)?;
        self.book.invalidate();
        Ok(())
    }
}

#[cfg(test)]
#[path = "schedules_tests.rs"]
mod tests;
