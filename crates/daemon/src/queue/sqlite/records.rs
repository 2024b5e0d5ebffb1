//! Job records read back (`job ID` by the unique `id` index, `jobs` newest first by the
//! primary key), cancelling a waiting job, and `purge` in small transactions.

use rusqlite::{OptionalExtension, Row, params};

use super::schema::{STATE_CANCELLED, STATE_DEAD, STATE_DONE, STATE_LEASED, STATE_READY};
use super::store::History;
use super::{SqliteQueue, attempts, now_ms};
use crate::queue::{JobFilter, JobRecord, JobState, Purge, check_job_id};
use crate::{Error, Result};

/// Rows deleted per transaction by `purge` and pruning: a few milliseconds of write lock.
pub(super) const BATCH: i64 = 500;

const COLUMNS: &str = "seq, id, task, routing_key, LENGTH(payload), state, not_before,
    published_ms, finished_ms, attempts, last_error";

/// The state a row's code (and retry time) means at `now`.
fn state_of(code: i64, not_before: i64, now: i64) -> JobState {
    match code {
        STATE_READY if not_before > now => JobState::Delayed,
        STATE_READY => JobState::Ready,
        STATE_LEASED => JobState::Running,
        STATE_DONE => JobState::Done,
        STATE_DEAD => JobState::Dead,
        STATE_CANCELLED => JobState::Cancelled,
        _ => JobState::Failed,
    }
}

/// The SQL condition for one state (codes and the retry time `?now` only, never user text).
fn state_condition(state: JobState) -> String {
    match state {
        JobState::Ready => format!("(state = {STATE_READY} AND not_before <= ?4)"),
        JobState::Delayed => format!("(state = {STATE_READY} AND not_before > ?4)"),
        JobState::Running => format!("state = {STATE_LEASED}"),
        JobState::Done => format!("state = {STATE_DONE}"),
        JobState::Dead => format!("state = {STATE_DEAD}"),
        JobState::Cancelled => format!("state = {STATE_CANCELLED}"),
        JobState::Failed => "0".to_owned(),
    }
}

fn record(r: &Row<'_>, now: i64) -> rusqlite::Result<(i64, JobRecord)> {
    Ok((
        r.get(0)?,
        JobRecord {
            id: r.get(1)?,
            task: r.get(2)?,
            routing_key: r.get(3)?,
            payload_len: r.get::<_, Option<i64>>(4)?.unwrap_or(0) as u64,
            state: state_of(r.get(5)?, r.get(6)?, now),
            published_ms: r.get(7)?,
            finished_ms: r.get(8)?,
            deliveries: u32::try_from(r.get::<_, i64>(9)?).unwrap_or(0),
            reason: r.get(10)?,
            attempts: Vec::new(),
        },
    ))
}

impl History<'_> {
    /// The record of job `id`, with its attempts.
    pub(crate) fn job(&mut self, id: &str) -> Result<JobRecord> {
        check_job_id(id)?;
        let path = self.path.to_owned();
        let e = |err| Error::queue("read a job from", &path, err);
        let now = now_ms();
        let found = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"))
            .map_err(e)?
            .query_row([id], |r| record(r, now))
            .optional()
            .map_err(e)?;
        let Some((seq, mut job)) = found else {
            return Err(Error::UnknownJob { id: id.to_owned() });
        };
        job.attempts = attempts::read(self.conn, seq).map_err(e)?;
        Ok(job)
    }

    /// The payload of job `id` (`None` when there is no such job).
    pub(crate) fn payload(&mut self, id: &str) -> Result<Option<Vec<u8>>> {
        check_job_id(id)?;
        self.conn
            .prepare_cached("SELECT payload FROM jobs WHERE id = ?1")
            .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
            .map_err(|err| Error::queue("read a payload from", self.path, err))
    }

    /// Records (without attempts) matching `filter`, newest first.
    pub(crate) fn jobs(&mut self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let path = self.path.to_owned();
        let e = |err| Error::queue("list jobs in", &path, err);
        let now = now_ms();
        let states = if filter.states.is_empty() {
            "1".to_owned()
        } else {
            let any: Vec<String> = filter.states.iter().map(|s| state_condition(*s)).collect();
            format!("({})", any.join(" OR "))
        };
        // `+task`: walk the primary key newest first and stop at the limit, rather than
        // sort every row of the task.
        let sql = format!(
            "SELECT {COLUMNS} FROM jobs
             WHERE (?1 IS NULL OR +task = ?1) AND (?2 IS NULL OR published_ms >= ?2) AND {states}
               AND ?4 = ?4
             ORDER BY seq DESC LIMIT ?3"
        );
        let since = filter.since.map(|d| now - d.as_millis().min(i64::MAX as u128) as i64);
        let limit = filter.limit.min(i64::MAX as usize) as i64;
        let mut stmt = self.conn.prepare_cached(&sql).map_err(e)?;
        let rows = stmt
            .query_map(params![filter.task, since, limit, now], |r| record(r, now).map(|x| x.1))
            .map_err(e)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(e)
    }

    /// Deletes ended jobs as `what` says, [`BATCH`] rows per transaction.
    pub(crate) fn purge(&mut self, what: &Purge) -> Result<u64> {
        let mut states = Vec::new();
        if what.done {
            states.extend([STATE_DONE, STATE_CANCELLED]);
        }
        if what.dead {
            states.push(STATE_DEAD);
        }
        let cutoff = match what.older_than {
            Some(d) => now_ms() - d.as_millis().min(i64::MAX as u128) as i64,
            None => i64::MAX,
        };
        let states = serde_json::to_string(&states).unwrap_or_else(|_| "[]".into());
        let select = "SELECT seq FROM jobs WHERE state IN (SELECT value FROM json_each(?1))
                      AND COALESCE(finished_ms, 0) <= ?2 LIMIT ?3";
        let mut total = 0u64;
        loop {
            let n = self
                .delete_batch(select, params![states, cutoff, BATCH])
                .map_err(|e| Error::queue("purge jobs from", self.path, e))?;
            total += n as u64;
            if (n as i64) < BATCH {
                return Ok(total);
            }
        }
    }

    /// Deletes the rows `select` names (and their attempts) in one transaction. It takes the
    /// write lock first (waiting for it as any write does): a transaction that read first
    /// could not write once a publisher had committed in between, and pruning then failed
    /// at almost every step while jobs flowed.
    pub(crate) fn delete_batch(
        &mut self,
        select: &str,
        args: impl rusqlite::Params + Clone,
    ) -> rusqlite::Result<usize> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let seqs: Vec<i64> = {
            let mut stmt = tx.prepare_cached(select)?;
            stmt.query_map(args, |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
        };
        if seqs.is_empty() {
            return Ok(0);
        }
        let list = serde_json::to_string(&seqs).unwrap_or_else(|_| "[]".into());
        tx.execute(
            "DELETE FROM attempts WHERE job_seq IN (SELECT value FROM json_each(?1))",
            [&list],
        )?;
        let n =
            tx.execute("DELETE FROM jobs WHERE seq IN (SELECT value FROM json_each(?1))", [&list])?;
        tx.commit()?;
        Ok(n)
    }
}

impl SqliteQueue {
    /// Cancels job `id` if it waits (ready or delayed): `true` when it did.
    pub(super) fn cancel_row(&mut self, id: &str) -> Result<bool> {
        check_job_id(id)?;
        let n = self
            .conn
            .execute(
                "UPDATE jobs SET state = ?1, finished_ms = ?2, last_error = 'cancelled'
                 WHERE id = ?3 AND state = ?4",
                params![STATE_CANCELLED, now_ms(), id, STATE_READY],
            )
            .map_err(|e| Error::queue("cancel a job in", &self.path, e))?;
        self.forget_due();
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::queue::sqlite::tests::bound;
    use crate::queue::{
        AttemptEnd, AttemptReport, Captured, OpenMode, Outcome, QueueBackend, ResourceUse,
    };

    /// Hands `job` to a worker (this test process stands in for it); returns its pid.
    fn hand(q: &mut SqliteQueue, job: &crate::queue::Job) -> i32 {
        let me = procyard_core::ProcessIdentity::current().unwrap();
        let holder = crate::queue::LeaseHolder { process_group: me.pid, process: me.clone() };
        q.record_holder(job, &holder).unwrap();
        me.pid.as_raw()
    }

    fn report(end: AttemptEnd, out: &str) -> AttemptReport {
        AttemptReport {
            worker_pid: Some(42),
            end,
            reason: None,
            stdout: Some(Captured { bytes: out.into(), total: out.len() as u64, dropped: 0 }),
            stderr: None,
            usage: Some(USAGE),
        }
    }

    const USAGE: ResourceUse =
        ResourceUse { max_rss_kib: 51_200, user_cpu_us: 5, system_cpu_us: 7 };

    /// A job keeps its record through retries to its end, with every attempt in order.
    #[test]
    fn a_done_job_keeps_its_row_and_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        q.set_retention(crate::queue::Retention::default());
        let id = q.publish("mail.a", b"hello").unwrap().remove(0);
        assert_eq!(q.job(&id).unwrap().state, JobState::Ready);
        let job = q.claim("mail", 1).unwrap().remove(0);
        let pid = hand(&mut q, &job);
        q.flush().unwrap();
        let running = q.job(&id).unwrap();
        assert_eq!(running.state, JobState::Running);
        assert_eq!((running.attempts.len(), running.attempts[0].end.clone()), (1, None));
        assert_eq!(running.attempts[0].worker_pid, Some(pid));
        assert!(running.attempts[0].started_ms.is_some());
        q.record_attempt(&job, report(AttemptEnd::Exited { code: 3 }, "first"));
        let retry = Outcome::Retry { delay: Duration::from_secs(60), reason: "exit code 3".into() };
        q.complete(&job, retry).unwrap();
        q.flush().unwrap();
        let delayed = q.job(&id).unwrap();
        assert_eq!(
            (delayed.state, delayed.reason.as_deref()),
            (JobState::Delayed, Some("exit code 3"))
        );
        // A second attempt that starts and ends between two writes.
        q.conn.execute("UPDATE jobs SET not_before = 0", []).unwrap();
        let job = q.claim("mail", 1).unwrap().remove(0);
        hand(&mut q, &job);
        q.record_attempt(&job, report(AttemptEnd::Exited { code: 0 }, "second"));
        q.complete(&job, Outcome::Done).unwrap();
        q.flush().unwrap();
        let done = q.job(&id).unwrap();
        assert_eq!(done.state, JobState::Done);
        assert_eq!(done.payload_len, 5);
        let outs: Vec<(u32, Option<AttemptEnd>, Vec<u8>)> = done
            .attempts
            .iter()
            .map(|a| (a.number, a.end.clone(), a.stdout.clone().unwrap().bytes))
            .collect();
        assert_eq!(
            outs,
            [
                (1, Some(AttemptEnd::Exited { code: 3 }), b"first".to_vec()),
                (2, Some(AttemptEnd::Exited { code: 0 }), b"second".to_vec()),
            ]
        );
        assert!(done.attempts.iter().all(|a| a.duration().is_some() && a.usage == Some(USAGE)));
        let listed = q.jobs(&JobFilter { states: vec![JobState::Done], ..JobFilter::default() });
        assert_eq!(listed.unwrap().len(), 1);
        assert!(matches!(
            q.job("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"),
            Err(Error::UnknownJob { .. })
        ));
        assert!(matches!(q.job("nope"), Err(Error::InvalidJobId { .. })));
    }

    /// A daemon killed during an attempt: the next one records it `daemon lost` and runs the
    /// job again.
    #[test]
    fn an_open_attempt_becomes_daemon_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let mut q = bound(&path, OpenMode::Daemon);
        let id = q.publish("mail.a", b"x").unwrap().remove(0);
        let job = q.claim("mail", 1).unwrap().remove(0);
        let pid = hand(&mut q, &job);
        q.flush().unwrap();
        drop(q); // as if killed
        let mut again = bound(&path, OpenMode::Daemon);
        again.recover(&[]).unwrap();
        let rec = again.job(&id).unwrap();
        assert_eq!(rec.state, JobState::Ready);
        assert_eq!(rec.attempts.len(), 1);
        assert_eq!(rec.attempts[0].end, Some(AttemptEnd::DaemonLost));
        assert_eq!(rec.attempts[0].worker_pid, Some(pid));
        let job = again.claim("mail", 1).unwrap().remove(0);
        hand(&mut again, &job);
        again.flush().unwrap();
        again.shutdown().unwrap();
        let rec = again.job(&id).unwrap();
        assert_eq!(rec.attempts[1].end, Some(AttemptEnd::DaemonStopped));
    }

    /// `keep_done = 0s`: a done job's row and attempts go at once.
    #[test]
    fn no_history_deletes_done_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        q.set_retention(crate::queue::Retention { keep_done: Duration::ZERO, keep_done_max: 0 });
        let id = q.publish("mail.a", b"x").unwrap().remove(0);
        let job = q.claim("mail", 1).unwrap().remove(0);
        hand(&mut q, &job);
        q.record_attempt(&job, report(AttemptEnd::Exited { code: 0 }, ""));
        q.complete(&job, Outcome::Done).unwrap();
        q.flush().unwrap();
        assert!(matches!(q.job(&id), Err(Error::UnknownJob { .. })));
        let n: i64 = q.conn.query_row("SELECT COUNT(*) FROM attempts", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0);
        assert_eq!(q.depths().unwrap()["mail"].done_total, Some(1));
    }

    /// Newest first, filtered by task and state; cancel only a waiting job; purge by kind.
    #[test]
    fn list_cancel_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        let ids: Vec<String> = (0..4)
            .map(|i| q.publish("mail.a", format!("{i}").as_bytes()).unwrap()[0].clone())
            .collect();
        let all = q.jobs(&JobFilter { task: Some("mail".into()), ..JobFilter::default() }).unwrap();
        assert_eq!(
            all.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
            ids.iter().rev().cloned().collect::<Vec<_>>()
        );
        let two = q.jobs(&JobFilter { limit: 2, ..JobFilter::default() }).unwrap();
        assert_eq!(two.len(), 2);
        assert!(q.cancel_waiting(&ids[0]).unwrap());
        assert!(!q.cancel_waiting(&ids[0]).unwrap(), "already cancelled");
        let leased = q.claim("mail", 1).unwrap().remove(0);
        assert_eq!(leased.id, ids[1], "a cancelled job is never claimed");
        assert!(!q.cancel_waiting(&ids[1]).unwrap(), "running: not the queue's to cancel");
        q.complete(&leased, Outcome::DeadLetter { reason: "x".into() }).unwrap();
        q.flush().unwrap();
        let cancelled =
            q.jobs(&JobFilter { states: vec![JobState::Cancelled], ..JobFilter::default() });
        assert_eq!(cancelled.unwrap().len(), 1);
        assert_eq!(q.purge(&Purge { dead: true, ..Purge::default() }).unwrap(), 1);
        assert_eq!(
            q.purge(&Purge {
                done: true,
                older_than: Some(Duration::from_secs(3600)),
                ..Purge::default()
            })
            .unwrap(),
            0
        );
        assert_eq!(q.purge(&Purge { done: true, ..Purge::default() }).unwrap(), 1);
        let mail = JobFilter { task: Some("mail".into()), ..JobFilter::default() };
        assert_eq!(q.jobs(&mail).unwrap().len(), 2, "the waiting ones stay");
    }
}
