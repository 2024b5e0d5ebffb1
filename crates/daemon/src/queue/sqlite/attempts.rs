//! Attempts: a row per ended attempt in `attempts` (how it ended, the reason, the bounded
//! output, what its process cost), written with the job's outcome in the daemon's next write transaction. The
//! attempt's beginning costs no write of its own: it is the lease holder recorded on the job's
//! row (worker pid, `worker_started_ms`), so a running attempt is read from there, and one
//! still open when a daemon starts — the dead daemon's — is written `daemon lost` from it.
//! Nor does the clean end of a job done by a longlived worker (`done`, nothing on stderr):
//! the done row holds the worker, the start and the end, and [`read`] shows the attempt.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::now_ms;
use super::outcomes::PendingOutcome;
use super::schema::{STATE_DONE, STATE_LEASED};
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
    /// jobs done now are not written at all: their rows go with the outcome. With history, a
    /// job done now by a clean attempt (a longlived worker's `done`, nothing on stderr) gets no
    /// row either: its done row holds all of it (holder, start, end), and [`read`] shows it.
    pub(crate) fn write(
        &self,
        tx: &Transaction<'_>,
        pending: &[PendingOutcome],
        keep_history: bool,
    ) -> rusqlite::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let done: HashSet<i64> = pending.iter().filter_map(PendingOutcome::done_seq).collect();
        let written =
            |e: &&Ended| !done.contains(&e.seq) || (keep_history && !is_implied(&e.report));
        let mut insert = tx.prepare_cached(
            "INSERT INTO attempts (job_seq, delivery, worker_pid, started_ms, ended_ms, outcome,
                 reason, stdout, stdout_total, stdout_dropped, stderr, stderr_total, stderr_dropped,
                 max_rss_kib, user_cpu_us, system_cpu_us)
             SELECT ?1, ?2, COALESCE(?3, worker_pid), worker_started_ms, ?4, ?5, ?6, ?7, ?8, ?9,
                 ?10, ?11, ?12, ?13, ?14, ?15
             FROM jobs WHERE seq = ?1",
        )?;
        for e in self.ended.iter().filter(written) {
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

/// Whether `report` is the clean end of a longlived attempt (the worker answered `done`,
/// wrote nothing on stderr, no resource use of its own): a job done by it keeps no attempt
/// row, its done row says it all ([`implied`]).
fn is_implied(report: &AttemptReport) -> bool {
    matches!(&report.end, AttemptEnd::Replied { outcome } if outcome == IMPLIED_OUTCOME)
        && report.reason.is_none()
        && report.stdout.is_none()
        && report.stderr.is_none()
        && report.usage.is_none()
}

/// The worker's answer of an attempt [`is_implied`] holds for.
const IMPLIED_OUTCOME: &str = "done";

/// The attempt a done row implies when no attempt row has its delivery ([`is_implied`]):
/// delivery `attempts`, the worker recorded on the row, from its hand-over to `finished_ms`.
fn implied(
    delivery: i64,
    worker_pid: Option<i32>,
    started: Option<i64>,
    ended: Option<i64>,
) -> Attempt {
    Attempt {
        delivery: u32::try_from(delivery).unwrap_or(0),
        worker_pid,
        started_ms: started,
        ended_ms: ended,
        end: Some(AttemptEnd::Replied { outcome: IMPLIED_OUTCOME.to_owned() }),
        ..Attempt::default()
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
    // The attempt running now, from the lease holder on the job's row; or the clean last
    // attempt a done row implies (it has no row of its own).
    let row = conn
        .prepare_cached(
            "SELECT attempts, worker_pid, worker_started_ms, state, finished_ms FROM jobs
             WHERE seq = ?1",
        )?
        .query_row(params![seq], |r| {
            Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)?, r.get(4)?))
        })
        .optional()?;
    match row {
        Some((delivery, Some(pid), started, STATE_LEASED, _)) => out.push(Attempt {
            delivery: u32::try_from(delivery).unwrap_or(0),
            worker_pid: Some(pid),
            started_ms: started,
            ..Attempt::default()
        }),
        Some((delivery, pid, started, STATE_DONE, ended))
            if delivery > 0 && !out.iter().any(|a| i64::from(a.delivery) == delivery) =>
        {
            out.push(implied(delivery, pid, started, ended));
        }
        _ => {}
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::sqlite::SqliteQueue;
    use crate::queue::sqlite::tests::bound;
    use crate::queue::{LeaseHolder, OpenMode, Outcome, QueueBackend, Retention};

    fn replied(outcome: &str) -> AttemptReport {
        AttemptReport {
            worker_pid: Some(std::process::id() as i32),
            end: AttemptEnd::Replied { outcome: outcome.into() },
            reason: None,
            stdout: None,
            stderr: None,
            usage: None,
        }
    }

    fn rows(q: &SqliteQueue) -> i64 {
        q.conn.query_row("SELECT COUNT(*) FROM attempts", [], |r| r.get(0)).unwrap()
    }

    /// A longlived job done cleanly writes no attempt row, yet its record shows the attempt
    /// (worker, start, end) after the failed one before it, which keeps its row.
    #[test]
    fn a_clean_longlived_done_is_read_from_the_job_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        q.set_retention(Retention::default());
        let id = q.publish("mail.a", b"x").unwrap().remove(0);
        let me = procyard_core::ProcessIdentity::current().unwrap();
        let holder = LeaseHolder { process_group: me.pid, process: me.clone() };
        let job = q.claim("mail", 1).unwrap().remove(0);
        q.record_holder(&job, &holder).unwrap();
        q.flush().unwrap();
        q.record_attempt(&job, replied("retry"));
        let retry = Outcome::Retry { delay: std::time::Duration::ZERO, reason: "later".into() };
        q.complete(&job, retry).unwrap();
        q.flush().unwrap();
        let job = q.claim("mail", 1).unwrap().remove(0);
        q.record_holder(&job, &holder).unwrap();
        q.flush().unwrap();
        q.record_attempt(&job, replied("done"));
        q.complete(&job, Outcome::Done).unwrap();
        q.flush().unwrap();
        assert_eq!(rows(&q), 1, "only the retried attempt has a row");
        let rec = q.job(&id).unwrap();
        assert_eq!(rec.attempts.len(), 2);
        let last = &rec.attempts[1];
        assert_eq!((last.number, last.delivery), (2, 2));
        assert_eq!(last.end, Some(AttemptEnd::Replied { outcome: "done".into() }));
        assert_eq!(last.worker_pid, Some(me.pid.as_raw()));
        assert!(last.duration().is_some(), "start and end known: {last:?}");
        assert_eq!(rec.attempts[0].end, Some(AttemptEnd::Replied { outcome: "retry".into() }));
    }

    /// A done job whose worker wrote on stderr keeps its attempt row, with the output.
    #[test]
    fn a_done_attempt_with_output_keeps_its_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        q.set_retention(Retention::default());
        let id = q.publish("mail.a", b"x").unwrap().remove(0);
        let job = q.claim("mail", 1).unwrap().remove(0);
        let stderr = Some(Captured { bytes: b"warn".to_vec(), total: 4, dropped: 0 });
        q.record_attempt(&job, AttemptReport { stderr, ..replied("done") });
        q.complete(&job, Outcome::Done).unwrap();
        q.flush().unwrap();
        assert_eq!(rows(&q), 1);
        let rec = q.job(&id).unwrap();
        assert_eq!(rec.attempts.len(), 1);
        assert_eq!(
            rec.attempts[0].stderr.as_ref().map(|c| c.bytes.clone()),
            Some(b"warn".to_vec())
        );
    }
}
