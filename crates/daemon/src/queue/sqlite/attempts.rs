//! Attempts: a row per attempt in `attempts`, inserted when the job is handed to a worker and
//! completed (end, reason, bounded output) with the job's outcome, both buffered and written
//! in the daemon's next write transaction. An attempt still open when a daemon starts was the
//! dead daemon's: it becomes `daemon lost`.

use rusqlite::{Connection, Transaction, params};

use super::now_ms;
use super::schema::STATE_LEASED;
use crate::queue::{Attempt, AttemptEnd, AttemptReport, Captured, Job, Receipt};

/// An attempt begun and not yet written.
#[derive(Debug)]
struct Begun {
    seq: i64,
    delivery: u32,
    worker_pid: Option<i32>,
    started_ms: i64,
}

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
pub(super) struct AttemptLog {
    begun: Vec<Begun>,
    ended: Vec<Ended>,
}

impl AttemptLog {
    pub(super) fn begin(&mut self, job: &Job, worker_pid: Option<i32>) {
        self.begun.push(Begun {
            seq: job.receipt.0 as i64,
            delivery: job.attempt,
            worker_pid,
            started_ms: now_ms(),
        });
    }

    pub(super) fn end(&mut self, job: &Job, report: AttemptReport) {
        self.ended.push(Ended {
            seq: job.receipt.0 as i64,
            delivery: job.attempt,
            ended_ms: now_ms(),
            report,
        });
    }

    pub(super) fn is_empty(&self) -> bool {
        self.begun.is_empty() && self.ended.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.begun.clear();
        self.ended.clear();
    }

    /// Writes the buffered attempts inside `tx`: beginnings first (an attempt may begin and
    /// end between two writes), then ends (an end without a recorded beginning — the worker
    /// never started — gets a row of its own).
    pub(super) fn write(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let mut begin = tx.prepare_cached(
            "INSERT INTO attempts (job_seq, delivery, worker_pid, started_ms) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for b in &self.begun {
            begin.execute(params![b.seq, b.delivery, b.worker_pid, b.started_ms])?;
        }
        let mut end = tx.prepare_cached(
            "UPDATE attempts SET ended_ms = ?2, outcome = ?3, reason = ?4,
                 stdout = ?5, stdout_total = ?6, stdout_dropped = ?7,
                 stderr = ?8, stderr_total = ?9, stderr_dropped = ?10,
                 worker_pid = COALESCE(worker_pid, ?11)
             WHERE job_seq = ?1 AND ended_ms IS NULL",
        )?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO attempts (job_seq, delivery, worker_pid, ended_ms, outcome, reason,
                 stdout, stdout_total, stdout_dropped, stderr, stderr_total, stderr_dropped)
             VALUES (?1, ?12, ?11, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for e in &self.ended {
            let r = &e.report;
            let outcome = serde_json::to_string(&r.end).unwrap_or_default();
            let (out, out_total, out_dropped) = columns(r.stdout.as_ref());
            let (err, err_total, err_dropped) = columns(r.stderr.as_ref());
            let args = params![
                e.seq,
                e.ended_ms,
                outcome,
                r.reason,
                out,
                out_total,
                out_dropped,
                err,
                err_total,
                err_dropped,
                r.worker_pid,
                e.delivery,
            ];
            if end.execute(&args[..11])? == 0 {
                insert.execute(args)?;
            }
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

/// Ends every open attempt of a leased job (all but `keep`) with `end`: the daemon that ran
/// it is gone (`DaemonLost`, at the next start) or stopped (`DaemonStopped`, at shutdown,
/// only this daemon's leases when `owner` is given).
pub(super) fn end_open(
    conn: &Connection,
    end: &AttemptEnd,
    owner: Option<&str>,
    keep: &str,
) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE attempts SET ended_ms = ?1, outcome = ?2
         WHERE ended_ms IS NULL AND job_seq IN (
             SELECT seq FROM jobs WHERE state = ?3 AND (?4 IS NULL OR lease_owner = ?4)
               AND seq NOT IN (SELECT value FROM json_each(?5)))",
        params![
            now_ms(),
            serde_json::to_string(end).unwrap_or_default(),
            STATE_LEASED,
            owner,
            keep
        ],
    )
}

/// The attempts of the job in row `seq`, oldest first, numbered from 1.
pub(super) fn read(conn: &Connection, seq: i64) -> rusqlite::Result<Vec<Attempt>> {
    let mut stmt = conn.prepare_cached(
        "SELECT delivery, worker_pid, started_ms, ended_ms, outcome, reason,
                stdout, stdout_total, stdout_dropped, stderr, stderr_total, stderr_dropped
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
        })
    })?;
    let mut out = rows.collect::<rusqlite::Result<Vec<Attempt>>>()?;
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
