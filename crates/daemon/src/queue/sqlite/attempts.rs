//! Attempts: a row per ended attempt in `attempts` (how it ended, the reason, the bounded
//! output, what its process cost), written with the job's outcome in the daemon's next write transaction. The
//! attempt's beginning costs no write of its own: it is the lease holder recorded on the job's
//! row (worker pid, `worker_started_ms`), so a running attempt is read from there, and one
//! still open when a daemon starts — the dead daemon's — is written `daemon lost` from it.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::now_ms;
use super::outcomes::PendingOutcome;
use super::schema::STATE_LEASED;
use crate::queue::{Attempt, AttemptEnd, AttemptReport, Captured, Job, Receipt, ResourceUse};

/// An attempt ended and not yet written.
#[derive(Debug)]
struct Ended {
    seq: i64,
    delivery: u32,
    ended_ms: i64,
    report: AttemptReport,
}

/// Attempts reported and not yet written.
#[derive(Debug, Default)]
pub(crate) struct AttemptLog {
    ended: Vec<Ended>,
}

impl AttemptLog {
    pub(crate) fn end(&mut self, job: &Job, report: AttemptReport) {
        self.ended.push(Ended {
            seq: job.receipt.0 as i64,
            delivery: job.attempt,
            ended_ms: now_ms(),
            report,
        });
    }

    /// An attempt of the job in row `seq` (its `delivery`), ended at `ended_ms`.
    pub(crate) fn end_row(
        &mut self,
        seq: i64,
        delivery: u32,
        ended_ms: i64,
        report: AttemptReport,
    ) {
        self.ended.push(Ended { seq, delivery, ended_ms, report });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ended.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.ended.clear();
    }

    /// Writes the buffered attempts inside `tx`, before the outcomes and after the holders
    /// (the attempt's start and pid come from the job's row). Without history, the attempts of
    /// jobs done now are not written at all: their rows go with the outcome.
    pub(crate) fn write(
        &self,
        tx: &Transaction<'_>,
        pending: &[PendingOutcome],
        keep_history: bool,
    ) -> rusqlite::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let gone: HashSet<i64> = if keep_history {
            HashSet::new()
        } else {
            pending.iter().filter_map(PendingOutcome::done_seq).collect()
        };
        let mut insert = tx.prepare_cached(
            "INSERT INTO attempts (job_seq, delivery, worker_pid, started_ms, ended_ms, outcome,
                 reason, stdout, stdout_total, stdout_dropped, stderr, stderr_total, stderr_dropped,
                 max_rss_kib, user_cpu_us, system_cpu_us)
             SELECT ?1, ?2, COALESCE(?3, worker_pid), worker_started_ms, ?4, ?5, ?6, ?7, ?8, ?9,
                 ?10, ?11, ?12, ?13, ?14, ?15
             FROM jobs WHERE seq = ?1",
        )?;
        for e in self.ended.iter().filter(|e| !gone.contains(&e.seq)) {
            let r = &e.report;
            let outcome = serde_json::to_string(&r.end).unwrap_or_default();
            let (out, out_total, out_dropped) = columns(r.stdout.as_ref());
            let (err, err_total, err_dropped) = columns(r.stderr.as_ref());
            let usage = |f: fn(&ResourceUse) -> u64| r.usage.as_ref().map(|u| f(u) as i64);
            insert.execute(params![
                e.seq,
                e.delivery,
                r.worker_pid,
                e.ended_ms,
                outcome,
                r.reason,
                out,
                out_total,
                out_dropped,
                err,
                err_total,
                err_dropped,
                usage(|u| u.max_rss_kib),
                usage(|u| u.user_cpu_us),
                usage(|u| u.system_cpu_us),
            ])?;
        }
        Ok(())
    }
}

fn columns(c: Option<&Captured>) -> (Option<&[u8]>, Option<i64>, Option<i64>) {
    match c {
        Some(c) => (Some(&c.bytes), Some(c.total as i64), Some(c.dropped as i64)),
        None => (None, None, None),
    }
}

/// Writes the open attempt of every job leased and handed to a worker (all but `keep`) as
/// ended with `end`: the daemon that ran it is gone (`DaemonLost`, at the next start) or
/// stopped (`DaemonStopped`, at shutdown, only this daemon's leases when `owner` is given).
pub(crate) fn end_open(
    conn: &Connection,
    end: &AttemptEnd,
    owner: Option<&str>,
    keep: &str,
) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO attempts (job_seq, delivery, worker_pid, started_ms, ended_ms, outcome)
         SELECT seq, attempts, worker_pid, worker_started_ms, ?1, ?2 FROM jobs
         WHERE state = 1 AND worker_pid IS NOT NULL AND (?3 IS NULL OR lease_owner = ?3)
           AND seq NOT IN (SELECT value FROM json_each(?4))",
        params![now_ms(), serde_json::to_string(end).unwrap_or_default(), owner, keep],
    )
}

/// The attempts of the job in row `seq`, oldest first, numbered from 1.
pub(crate) fn read(conn: &Connection, seq: i64) -> rusqlite::Result<Vec<Attempt>> {
    let mut stmt = conn.prepare_cached(
        "SELECT delivery, worker_pid, started_ms, ended_ms, outcome, reason,
                stdout, stdout_total, stdout_dropped, stderr, stderr_total, stderr_dropped,
                max_rss_kib, user_cpu_us, system_cpu_us
         FROM attempts WHERE job_seq = ?1 ORDER BY n",
    )?;
    let rows = stmt.query_map([seq], |r| {
        let captured = |at: usize| -> rusqlite::Result<Option<Captured>> {
            let bytes: Option<Vec<u8>> = r.get(at)?;
            Ok(bytes.map(|bytes| Captured {
                bytes,
                total: r.get::<_, Option<i64>>(at + 1).ok().flatten().unwrap_or(0) as u64,
                dropped: r.get::<_, Option<i64>>(at + 2).ok().flatten().unwrap_or(0) as u64,
            }))
        };
        let outcome: Option<String> = r.get(4)?;
        let max_rss: Option<i64> = r.get(12)?;
        let cpu = |at: usize| r.get::<_, Option<i64>>(at).map(|v| v.unwrap_or(0).max(0) as u64);
        let usage = match max_rss {
            Some(rss) => Some(ResourceUse {
                max_rss_kib: rss.max(0) as u64,
                user_cpu_us: cpu(13)?,
                system_cpu_us: cpu(14)?,
            }),
            None => None,
        };
        Ok(Attempt {
            number: 0,
            delivery: u32::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
            worker_pid: r.get(1)?,
            started_ms: r.get(2)?,
            ended_ms: r.get(3)?,
            end: outcome.and_then(|o| serde_json::from_str(&o).ok()),
            reason: r.get(5)?,
            stdout: captured(6)?,
            stderr: captured(9)?,
            usage,
        })
    })?;
    let mut out = rows.collect::<rusqlite::Result<Vec<Attempt>>>()?;
    // The attempt running now, from the lease holder on the job's row.
    let running = conn
        .prepare_cached(
            "SELECT attempts, worker_pid, worker_started_ms FROM jobs
             WHERE seq = ?1 AND state = ?2 AND worker_pid IS NOT NULL",
        )?
        .query_row(params![seq, STATE_LEASED], |r| {
            Ok(Attempt {
                delivery: u32::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                worker_pid: r.get(1)?,
                started_ms: r.get(2)?,
                ..Attempt::default()
            })
        })
        .optional()?;
    out.extend(running);
    for (i, a) in out.iter_mut().enumerate() {
        a.number = i as u32 + 1;
    }
    Ok(out)
}

/// `keep` as the JSON array `end_open` takes.
pub(super) fn keep_json(keep: &[Receipt]) -> String {
    serde_json::to_string(&keep.iter().map(|r| r.0).collect::<Vec<u64>>())
        .unwrap_or_else(|_| "[]".to_owned())
}
