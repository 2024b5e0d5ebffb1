//! Outcomes: buffered as the daemon reports them (a retry's delay counted from then), written
//! with the next claim or flush in one transaction, with the attempts that led to them — done
//! rows kept (or deleted at once when the retention keeps no history) and counted, retries
//! made ready after their delay, dead letters and cancelled jobs kept with their reason.

use std::collections::BTreeMap;

use rusqlite::{Transaction, TransactionBehavior, params};

use super::schema::{STATE_CANCELLED, STATE_DEAD, STATE_DONE, STATE_READY};
use super::{SqliteQueue, holders, now_ms};
use crate::queue::{Job, Outcome};
use crate::{Error, Result};

/// An outcome reported and not yet written.
#[derive(Debug)]
pub(crate) struct PendingOutcome {
    /// The job's row.
    seq: i64,
    /// Its task, for the count of jobs done.
    task: String,
    outcome: Outcome,
    /// When it was reported (ms since the epoch): a retry's delay counts from here.
    reported_ms: i64,
}

impl PendingOutcome {
    /// The job's row, when this outcome is `Done`.
    pub(crate) fn done_seq(&self) -> Option<i64> {
        matches!(self.outcome, Outcome::Done).then_some(self.seq)
    }

    /// The outcome of the job in row `seq` of `task`, reported at `reported_ms`.
    pub(crate) fn row(seq: i64, task: &str, outcome: Outcome, reported_ms: i64) -> PendingOutcome {
        PendingOutcome { seq, task: task.to_owned(), outcome, reported_ms }
    }

    /// `job`'s outcome, reported now.
    pub(crate) fn now(job: &Job, outcome: Outcome) -> PendingOutcome {
        PendingOutcome {
            seq: job.receipt.0 as i64,
            task: job.task.clone(),
            outcome,
            reported_ms: now_ms(),
        }
    }
}

/// Writes buffered outcomes inside `tx`; `true` if one of them is a retry. A done job's row
/// stays (state done) when `keep_history`, and is deleted with its attempts otherwise.
pub(crate) fn write_outcomes(
    tx: &Transaction<'_>,
    pending: &[PendingOutcome],
    keep_history: bool,
) -> rusqlite::Result<bool> {
    if pending.is_empty() {
        return Ok(false);
    }
    let now = now_ms();
    let mut done_per_task: BTreeMap<&str, i64> = BTreeMap::new();
    let mut retried = false;
    // Done rows a run of consecutive rows at a time, one statement each: the workers' jobs
    // interleave, so a turn's done rows are mostly one run.
    let mut done: Vec<i64> = pending.iter().filter_map(PendingOutcome::done_seq).collect();
    done.sort_unstable();
    done.dedup();
    if keep_history {
        let mut finish = tx.prepare_cached(
            "UPDATE jobs SET state = ?1, finished_ms = ?2, last_error = NULL, lease_owner = NULL
             WHERE seq BETWEEN ?3 AND ?4",
        )?;
        for (first, last) in runs(&done) {
            finish.execute(params![STATE_DONE, now, first, last])?;
        }
    } else {
        let mut del = tx.prepare_cached("DELETE FROM jobs WHERE seq BETWEEN ?1 AND ?2")?;
        let mut del_attempts =
            tx.prepare_cached("DELETE FROM attempts WHERE job_seq BETWEEN ?1 AND ?2")?;
        for (first, last) in runs(&done) {
            del.execute(params![first, last])?;
            del_attempts.execute(params![first, last])?;
        }
    }
    let mut retry = tx.prepare_cached(
        "UPDATE jobs SET state = ?1, not_before = ?2, last_error = ?3, lease_owner = NULL
         WHERE seq = ?4",
    )?;
    let mut dead = tx.prepare_cached(
        "UPDATE jobs SET state = ?1, finished_ms = ?2, last_error = ?3, lease_owner = NULL
         WHERE seq = ?4",
    )?;
    for p in pending {
        match &p.outcome {
            Outcome::Done => *done_per_task.entry(&p.task).or_default() += 1,
            Outcome::Cancelled { reason } => {
                dead.execute(params![STATE_CANCELLED, now, reason, p.seq])?;
            }
            Outcome::Retry { delay, reason } => {
                let delay_ms = delay.as_millis().min(i64::MAX as u128) as i64;
                let due = p.reported_ms.saturating_add(delay_ms);
                retry.execute(params![STATE_READY, due, reason, p.seq])?;
                retried = true;
            }
            Outcome::DeadLetter { reason } => {
                dead.execute(params![STATE_DEAD, now, reason, p.seq])?;
            }
        }
    }
    let mut stats = tx.prepare_cached(
        "INSERT INTO stats (task, done) VALUES (?1, ?2)
         ON CONFLICT(task) DO UPDATE SET done = done + excluded.done",
    )?;
    for (task, n) in done_per_task {
        stats.execute(params![task, n])?;
    }
    Ok(retried)
}

/// The runs of consecutive numbers in `sorted` (ascending, no repeats), as (first, last).
fn runs(sorted: &[i64]) -> impl Iterator<Item = (i64, i64)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = *sorted.get(i)?;
        let mut last = first;
        i += 1;
        while last < i64::MAX && sorted.get(i) == Some(&(last + 1)) {
            last += 1;
            i += 1;
        }
        Some((first, last))
    })
}

impl SqliteQueue {
    /// Writes the buffered outcomes and holders in one transaction.
    pub(super) fn write_pending(&mut self) -> Result<()> {
        // Kept until the transaction commits: after a failure (a writer holding the file past
        // its 10 s lock wait) the next flush writes them, instead of leaving the jobs leased.
        let path = self.path.clone();
        let e = |err| Error::queue("record job outcomes in", &path, err);
        let keep = self.keeps_history();
        // `IMMEDIATE`, as a claim's (`lease.rs`): never a read that cannot wait for the lock.
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(e)?;
        holders::clear(&tx, &self.unheld).map_err(e)?;
        holders::write(&tx, &self.holders).map_err(e)?;
        self.attempts.write(&tx, &self.pending, keep).map_err(e)?;
        let retried = write_outcomes(&tx, &self.pending, keep).map_err(e)?;
        tx.commit().map_err(e)?;
        self.written(retried);
        Ok(())
    }

    /// After a commit that wrote the buffers: they are empty again, and a retry written
    /// changes when the next job falls due.
    pub(super) fn written(&mut self, retried: bool) {
        self.pending.clear();
        self.holders.clear();
        self.unheld.clear();
        self.attempts.clear();
        if retried {
            self.forget_due();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::queue::sqlite::tests::{bindings, bound};
    use crate::queue::{OpenMode, QueueBackend};

    /// The daemon computes when a retry falls due right after `complete`; a flush that comes
    /// later (a busy loop iteration, a loaded machine) must not push the job's time back, or
    /// the daemon claims at its instant, finds nothing, and the job waits for an unrelated
    /// wake-up (it was once lost this way until the next publish).
    #[test]
    fn retry_delay_counts_from_complete_not_from_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let mut daemon = bound(&path, OpenMode::Daemon);
        daemon.publish("mail.a", b"1").unwrap();
        let job = daemon.claim("mail", 1).unwrap().remove(0);
        let delay = Duration::from_millis(50);
        daemon.complete(&job, Outcome::Retry { delay, reason: "x".into() }).unwrap();
        let due = Instant::now() + delay;
        // A late flush: the delay has fully passed by the time the outcome is written.
        std::thread::sleep(delay * 2);
        daemon.flush().unwrap();
        assert!(Instant::now() >= due);
        let again = daemon.claim("mail", 1).unwrap();
        assert_eq!(again.len(), 1, "the retry is claimable once its delay after complete passed");
        assert_eq!(again[0].attempt, 2);
    }

    #[test]
    fn done_rows_are_written_a_run_at_a_time() {
        let got: Vec<_> = runs(&[1, 2, 3, 5, 7, 8]).collect();
        assert_eq!(got, [(1, 3), (5, 5), (7, 8)]);
        assert_eq!(runs(&[]).count(), 0);
    }

    /// Each outcome lands where `status` and `dead` look: done counted, retry delayed with
    /// its reason, dead letter listed with its reason.
    #[test]
    fn each_outcome_lands_in_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut daemon = SqliteQueue::open(&dir.path().join("q.db"), OpenMode::Daemon).unwrap();
        daemon.bind(&bindings()[..1]).unwrap();
        for i in 0..3 {
            daemon.publish("mail.a", format!("{i}").as_bytes()).unwrap();
        }
        let jobs = daemon.claim("mail", 3).unwrap();
        let retry = Outcome::Retry { delay: Duration::from_secs(600), reason: "busy".into() };
        daemon.complete(&jobs[0], Outcome::Done).unwrap();
        daemon.complete(&jobs[1], retry).unwrap();
        daemon.complete(&jobs[2], Outcome::DeadLetter { reason: "bad input".into() }).unwrap();
        daemon.flush().unwrap();
        let d = &daemon.depths().unwrap()["mail"];
        assert_eq!(
            (d.ready, d.delayed, d.in_flight, d.dead, d.done_total),
            (0, Some(1), 0, Some(1), Some(1))
        );
        let dead = daemon.dead_letters(Some("mail"), 10).unwrap();
        assert_eq!((dead.len(), dead[0].reason.as_str()), (1, "bad input"));
    }

    /// A claim and a flush wait for the write lock that another connection holds (a client's
    /// publish, the checkpoint thread's `RESTART`), and then succeed. Deferred, they read
    /// first, and their first write then failed at once ("database is locked") without a
    /// wait: the daemon retried 250 ms later, and a job waited that long to start.
    #[test]
    fn claims_and_flushes_wait_for_another_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let mut daemon = bound(&path, OpenMode::Daemon);
        daemon.publish("mail.a", b"1").unwrap();
        daemon.publish("mail.a", b"2").unwrap();
        let hold = |path: std::path::PathBuf| {
            let (locked_tx, locked) = std::sync::mpsc::channel();
            let writer = std::thread::spawn(move || {
                let conn = rusqlite::Connection::open(&path).unwrap();
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                locked_tx.send(()).unwrap();
                // A writer that takes its time (a slow commit, a checkpoint's sync).
                std::thread::sleep(Duration::from_millis(100));
                conn.execute_batch("COMMIT").unwrap();
            });
            locked.recv_timeout(Duration::from_secs(10)).unwrap();
            writer
        };
        let writer = hold(path.clone());
        let jobs = daemon.claim("mail", 1).expect("the claim waits for the lock");
        writer.join().unwrap();
        assert_eq!(jobs.len(), 1);
        daemon.complete(&jobs[0], Outcome::Done).unwrap();
        let writer = hold(path.clone());
        daemon.flush().expect("the flush waits for the lock");
        writer.join().unwrap();
        assert_eq!(daemon.depths().unwrap()["mail"].done_total, Some(1));
    }
}
