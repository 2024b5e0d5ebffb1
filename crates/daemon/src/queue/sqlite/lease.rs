//! Leases: claiming jobs (with the outcomes buffered since the last write, in the same
//! transaction), and putting leased jobs back — this daemon's at shutdown, a dead daemon's at
//! the next start. The daemon's lock on the queue file is `lock.rs`.

use rusqlite::{Transaction, TransactionBehavior, params};

use super::due::{DUE_CHUNK, earliest_after, promote_due};
use super::joined::{JOIN_LOW, Joined};
use super::outcomes::write_outcomes;
use super::schema::{STATE_LEASED, STATE_READY};
use super::{SqliteQueue, attempts, holders, limits, now_ms};
use crate::queue::{Abandoned, AttemptEnd, Job, LeaseHolder, OpenMode, Receipt};
use crate::{Error, Result};

/// The virtual-machine steps `stmt` ran since the last call (a repeatable measure of a
/// statement's cost: it counts the index entries and rows it visited, whatever the load).
pub(super) fn vm_steps(stmt: &rusqlite::Statement<'_>) -> u64 {
    stmt.reset_status(rusqlite::StatementStatus::VmStep).max(0) as u64
}

impl SqliteQueue {
    /// The virtual-machine steps SQLite ran for this daemon's claims (the statement making due
    /// jobs claimable and the claim itself) since the queue was opened: the claim's cost in a
    /// unit that load does not blur, for benchmarks.
    pub fn claim_steps(&self) -> u64 {
        self.claim_steps
    }

    /// Records the buffered outcomes and holders and takes up to `max` leases of `task`
    /// (oldest first), in one transaction; the `i`-th lease taken names `to[i]` as its holder
    /// when known (one write of the row, and none at the end of the loop's turn).
    pub(super) fn take_leases(
        &mut self,
        task: &str,
        max: usize,
        to: &[Option<&LeaseHolder>],
    ) -> Result<Vec<Job>> {
        let taken = self.try_take_leases(task, max, to);
        if taken.is_err() {
            // Rolled back: rows taken from memory or written into other tasks' order are due
            // again behind the cursor; the next claim reads from the first due row.
            self.forget_due();
        }
        taken
    }

    fn try_take_leases(
        &mut self,
        task: &str,
        max: usize,
        to: &[Option<&LeaseHolder>],
    ) -> Result<Vec<Job>> {
        if max == 0 || self.mode != OpenMode::Daemon || !self.is_bound(task) {
            return Ok(Vec::new());
        }
        // A rate-limited task takes no more than its tokens (none: the daemon wakes for the
        // next one); the buffered outcomes wait for the flush.
        let max = self.gate.allowed(task, max, std::time::Instant::now());
        if max == 0 {
            return Ok(Vec::new());
        }
        let keyed = self.gate.keyed(task);
        // One transaction records the buffered outcomes and takes the new leases: a daemon
        // killed at any moment has either both or neither, so the jobs it finished are never
        // still leased next to the ones it claimed in their place.
        let path = self.path.clone();
        let e = |err| Error::queue("claim jobs from", &path, err);
        let keep_history = self.keeps_history();
        // `IMMEDIATE`: the write lock first, waited for as the busy handler says. A deferred
        // transaction that read first and then wrote while another connection held the lock
        // (a client's publish, the checkpoint thread's `RESTART`) failed at once, without a
        // wait (SQLite cannot wait there: a reader that waits for the writer may deadlock),
        // and the claim was retried 250 ms later: measured, 250 ms publish→start stalls.
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(e)?;
        holders::clear(&tx, &self.unheld).map_err(e)?;
        holders::write(&tx, &self.holders).map_err(e)?;
        self.attempts.write(&tx, &self.pending, keep_history).map_err(e)?;
        let retried = write_outcomes(&tx, &self.pending, keep_history).map_err(e)?;
        // Jobs whose delay (or retry backoff) is over join the claim order, when one may be due
        // (most claims know none is and read nothing).
        let mut steps = 0;
        let now = now_ms();
        let mut ranked = Vec::new();
        let mut keys = Vec::new();
        let delayed;
        if let Some(keyed) = &keyed {
            // A keyed claim skips jobs whose key is full: every due row joins the order first.
            // Rows joined in memory are among them (written into the order too, whatever the
            // earliest delayed row still ahead is).
            let known = if self.joined.is_empty() { self.delayed_cache } else { None };
            self.joined.clear();
            let earliest = promote_due(&tx, known, now, &mut steps).map_err(e)?;
            delayed = Some(earliest);
            for (priority, job, key) in
                limits::claim_keyed(&tx, &self.gate, task, max, &self.owner, keyed).map_err(e)?
            {
                keys.push((job.receipt.0, key));
                ranked.push((std::cmp::Reverse(priority), job));
            }
        } else {
            // Due rows join the order in due order, a chunk at a time while this claim still
            // finds fewer jobs than it may take: this task's in memory ([`Joined`]: leased
            // with one write), other tasks' written into theirs. A read only when one may be
            // due and this task has few joined rows left.
            let chunk = (max as i64).saturating_mul(2).max(DUE_CHUNK);
            let low = JOIN_LOW.max(max);
            let may_be_due =
                |known: Option<Option<i64>>| known.is_none_or(|t| t.is_some_and(|t| t <= now));
            let mut known = self.delayed_cache;
            loop {
                let read = may_be_due(known) && self.joined.len(task) < low;
                let mut more = false;
                if read {
                    more = self.joined.read(&tx, task, now, chunk, &mut steps).map_err(e)?;
                    // Full: more may be due now; otherwise the first delayed row still ahead.
                    let next = if more {
                        Some(now)
                    } else {
                        earliest_after(&tx, now, &mut steps).map_err(e)?
                    };
                    known = Some(next);
                }
                let want = max - ranked.len();
                let held = to.get(ranked.len()..).unwrap_or_default();
                let (planned, joined) = (&mut self.planned, &mut self.joined);
                for (priority, job) in
                    lease_next(&tx, task, want, &self.owner, held, planned, joined, &mut steps)
                        .map_err(e)?
                {
                    ranked.push((std::cmp::Reverse(priority), job));
                }
                // Short of `max`: read on when the chunk was full, or when the joined rows ran
                // out (cancelled meanwhile) without a read.
                if ranked.len() >= max || !(more || (!read && may_be_due(known))) {
                    delayed = known;
                    break;
                }
            }
        }
        tx.commit().map_err(e)?;
        self.claim_steps += steps;
        self.written(retried);
        if !retried {
            self.delayed_cache = delayed;
        }
        if keyed.is_none() {
            keys = ranked.iter().map(|(_, j)| (j.receipt.0, None)).collect();
        }
        self.gate.started(task, &keys, std::time::Instant::now());
        // Highest priority first, then in publish order (RETURNING has no order of its own).
        ranked.sort_by_key(|(priority, job)| (*priority, job.receipt.0));
        Ok(ranked.into_iter().map(|(_, job)| job).collect())
    }

    /// Leased rows become ready again, the interrupted attempt not counted: only this
    /// daemon's (`ours`) or every one, but never those in `keep`.
    pub(super) fn release_leases(&mut self, ours: bool, keep: &[Receipt]) -> Result<u64> {
        let owner = ours.then_some(self.owner.as_str());
        let keep = attempts::keep_json(keep);
        // The open attempts of those jobs end here: this daemon stops, or the one that ran
        // them is gone.
        let end = if ours { AttemptEnd::DaemonStopped } else { AttemptEnd::DaemonLost };
        attempts::end_open(&self.conn, &end, owner, &keep)
            .map_err(|e| Error::queue("record interrupted attempts in", &self.path, e))?;
        let n = self
            .conn
            .execute(
                "UPDATE jobs SET state = ?1, attempts = MAX(attempts - 1, 0), lease_owner = NULL
                 WHERE state = 1 AND (?2 IS NULL OR lease_owner = ?2)
                   AND seq NOT IN (SELECT value FROM json_each(?3))",
                params![STATE_READY, owner, keep],
            )
            .map_err(|e| Error::queue("recover jobs in", &self.path, e))?;
        self.forget_due();
        Ok(n as u64)
    }

    /// Every job a previous daemon left leased, with its recorded worker.
    pub(super) fn leased_by_the_dead(&self) -> Result<Vec<Abandoned>> {
        if self.mode != OpenMode::Daemon {
            return Ok(Vec::new());
        }
        holders::abandoned(&self.conn)
            .map_err(|e| Error::queue("read the jobs a previous daemon left in", &self.path, e))
    }

    /// Puts back what a previous daemon left leased, except `keep`.
    pub(super) fn recover_leases(&mut self, keep: &[Receipt]) -> Result<u64> {
        if self.mode != OpenMode::Daemon {
            return Ok(0);
        }
        let n = self.release_leases(false, keep)?;
        self.recovered += n;
        if n > 0 {
            tracing::warn!(jobs = n, queue = %self.path.display(), "put back jobs a previous daemon left in flight");
        }
        Ok(n)
    }
}

/// Leases up to `max` jobs of `task` in claim order (priority, then publish order) to `owner`,
/// from `jobs_next` and the due rows `joined` in memory: read first, then each row updated by
/// its key (no `RETURNING` and no `IN` list, each of which builds a temporary table per
/// statement); with each job its priority. The `i`-th row leased records `to[i]` as its
/// holder (noted in `planned`), or none.
#[allow(clippy::too_many_arguments)] // reason: the claim's parts, each borrowed from the queue
fn lease_next(
    tx: &Transaction<'_>,
    task: &str,
    max: usize,
    owner: &str,
    to: &[Option<&LeaseHolder>],
    planned: &mut holders::Planned,
    joined: &mut Joined,
    steps: &mut u64,
) -> rusqlite::Result<Vec<(i64, Job)>> {
    let mut picked = Vec::with_capacity(max.min(64));
    {
        let mut pick = tx.prepare_cached(
            "SELECT seq, id, routing_key, payload, attempts, priority FROM jobs INDEXED BY jobs_next
             WHERE task = ?1 AND state = 0 AND not_before = 0
             ORDER BY priority DESC, seq LIMIT ?2",
        )?;
        let mut rows = pick.query(params![task, max as i64])?;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            picked.push((
                row.get::<_, i64>(5)?,
                Job {
                    id: row.get(1)?,
                    task: task.to_owned(),
                    routing_key: row.get(2)?,
                    payload: row.get(3)?,
                    attempt: u32::try_from(row.get::<_, i64>(4)?.saturating_add(1))
                        .unwrap_or(u32::MAX),
                    receipt: Receipt(seq as u64),
                },
            ));
        }
        drop(rows);
        *steps += vm_steps(&pick);
    }
    let picked = joined.merge(tx, task, max, picked, steps)?;
    // `not_before = 0` for a due row leased from memory (a leased row is never delayed: put
    // back, it is ready); it costs a ready row nothing, whose index entries move anyway.
    let mut lease = tx.prepare_cached(
        "UPDATE jobs SET state = ?1, not_before = 0, attempts = attempts + 1, lease_owner = ?2,
             worker_pid = ?4, worker_start = ?5, worker_pgid = ?6,
             worker_boot = ?7, worker_started_ms = ?8
         WHERE seq = ?3",
    )?;
    let now = now_ms();
    for (i, (_, job)) in picked.iter().enumerate() {
        let seq = job.receipt.0 as i64;
        let holder = to.get(i).copied().flatten();
        let h = holders::Columns::of(holder);
        let started = holder.map(|_| now);
        lease.execute(params![
            STATE_LEASED,
            owner,
            seq,
            h.pid,
            h.start,
            h.pgid,
            h.boot,
            started
        ])?;
        if let Some(holder) = holder {
            planned.insert(seq, holder);
        }
    }
    *steps += vm_steps(&lease);
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::queue::sqlite::lock_path;
    use crate::queue::sqlite::tests::{bindings, bound};
    use crate::queue::{Outcome, QueueBackend, Requeue};

    /// A claim records the buffered outcomes in its own transaction: a daemon that dies right
    /// after it leaves only the newly claimed jobs leased, never the finished ones too.
    #[test]
    fn claim_records_buffered_outcomes_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let mut daemon = bound(&path, OpenMode::Daemon);
        for i in 0..5 {
            daemon.publish("mail.a", format!("{i}").as_bytes()).unwrap();
        }
        let first = daemon.claim("mail", 2).unwrap();
        daemon.complete(&first[0], Outcome::Done).unwrap();
        let delay = Duration::from_secs(3600);
        daemon.complete(&first[1], Outcome::Retry { delay, reason: "later".into() }).unwrap();
        let next = daemon.claim("mail", 2).unwrap();
        let payloads: Vec<&[u8]> = next.iter().map(|j| &j.payload[..]).collect();
        assert_eq!(payloads, [b"2", b"3"], "oldest ready first, the delayed retry skipped");
        drop(daemon); // no flush: as if killed
        let mut again = SqliteQueue::open(&path, OpenMode::Daemon).unwrap();
        again.recover(&[]).unwrap();
        assert_eq!(again.recovered(), 2, "only the jobs claimed last were still leased");
        again.bind(&bindings()).unwrap();
        let d = &again.depths().unwrap()["mail"];
        assert_eq!((d.ready, d.delayed, d.done_total), (3, Some(1), Some(1)));
    }

    /// A claim visits the rows it takes, not the delayed backlog: its SQLite VM steps (a count
    /// that load does not blur) are the same with 20,000 delayed jobs in the table as with none.
    #[test]
    fn claim_cost_ignores_delayed_jobs() {
        let steps = |delayed: usize| {
            let dir = tempfile::tempdir().unwrap();
            let mut daemon = bound(&dir.path().join("q.db"), OpenMode::Daemon);
            let later = crate::queue::PublishOptions::new().delay(Duration::from_secs(3600));
            if delayed > 0 {
                let payloads = vec![b"later".to_vec(); delayed];
                daemon.publish_with("mail.a", &payloads, &later).unwrap();
            }
            daemon.publish_batch("mail.a", &vec![b"now".to_vec(); 100]).unwrap();
            let before = daemon.claim_steps();
            for _ in 0..100 {
                let jobs = daemon.claim("mail", 1).unwrap();
                assert_eq!(jobs[0].payload, b"now");
                daemon.complete(&jobs[0], Outcome::Done).unwrap();
            }
            daemon.claim_steps() - before
        };
        let (none, with) = (steps(0), steps(20_000));
        assert!(none > 0, "steps are counted");
        assert!(with * 10 <= none * 11, "{with} steps with 20,000 delayed jobs, {none} with none");
    }

    /// A claim skips moving delayed rows while none can be due, and still finds a delayed
    /// job once it falls due: one published by a client (after the poke), and a retry.
    #[test]
    fn delayed_jobs_join_the_claim_order_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let mut daemon = bound(&path, OpenMode::Daemon);
        assert!(daemon.claim("mail", 5).unwrap().is_empty());
        assert_eq!(daemon.delayed_cache, Some(None), "known: nothing delayed");
        let mut client = bound(&path, OpenMode::Client);
        let delay = Duration::from_millis(30);
        let options = crate::queue::PublishOptions {
            not_before: Some(std::time::SystemTime::now() + delay),
            ..Default::default()
        };
        client.publish_with("mail.a", &[b"later".to_vec()], &options).unwrap();
        daemon.on_wake().unwrap(); // the client's poke
        assert!(daemon.claim("mail", 5).unwrap().is_empty(), "not due yet");
        assert!(matches!(daemon.delayed_cache, Some(Some(_))));
        let due = daemon.next_due().unwrap().unwrap();
        // A deadline, not an event: the job's time.
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        let jobs = daemon.claim("mail", 5).unwrap();
        assert_eq!(jobs.len(), 1, "due: claimed");
        assert_eq!((jobs[0].payload.as_slice(), jobs[0].attempt), (&b"later"[..], 1));
        daemon.complete(&jobs[0], Outcome::Retry { delay, reason: "again".into() }).unwrap();
        assert!(daemon.claim("mail", 5).unwrap().is_empty(), "the retry waits");
        let due = daemon.next_due().unwrap().unwrap();
        // A deadline, not an event: the job's time.
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        let again = daemon.claim("mail", 5).unwrap();
        assert_eq!((again.len(), again[0].attempt), (1, 2), "the retry is claimed when due");
    }

    #[test]
    fn leases_return_after_daemon_death() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let mut daemon = bound(&path, OpenMode::Daemon);
        daemon.publish("mail.a", b"1").unwrap();
        assert_eq!(daemon.claim("mail", 5).unwrap().len(), 1);
        drop(daemon); // the lock goes, as when the process dies
        let mut again = SqliteQueue::open(&path, OpenMode::Daemon).unwrap();
        again.recover(&[]).unwrap();
        assert_eq!(again.recovered(), 1);
        again.bind(&bindings()).unwrap();
        let jobs = again.claim("mail", 5).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].attempt, 1, "the interrupted attempt is not counted");
    }

    /// A client never claims, never holds the lock, and a second daemon is refused.
    #[test]
    fn one_daemon_per_file_and_clients_never_claim() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let mut client = bound(&path, OpenMode::Client);
        client.publish("mail.a", b"1").unwrap();
        assert!(client.claim("mail", 5).unwrap().is_empty());
        let _daemon = SqliteQueue::open(&path, OpenMode::Daemon).unwrap();
        assert!(matches!(
            SqliteQueue::open(&path, OpenMode::Daemon),
            Err(Error::AlreadyRunning { lock, .. }) if lock == lock_path(&path)
        ));
    }

    #[test]
    fn publish_claim_complete_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let mut client = bound(&path, OpenMode::Client);
        let ids = client.publish("mail.send", b"hi").unwrap();
        assert_eq!(ids.len(), 2, "both tasks receive a copy");
        assert!(matches!(client.publish("x.y", b""), Ok(v) if v.len() == 1));
        let mut only_mail =
            SqliteQueue::open(dir.path().join("q2.db").as_path(), OpenMode::Client).unwrap();
        only_mail.bind(&bindings()[..1]).unwrap();
        assert!(matches!(only_mail.publish("x.y", b""), Err(Error::Unroutable { .. })));

        let mut daemon = SqliteQueue::open(&path, OpenMode::Daemon).unwrap();
        assert!(matches!(
            SqliteQueue::open(&path, OpenMode::Daemon),
            Err(Error::AlreadyRunning { .. })
        ));
        daemon.bind(&bindings()).unwrap();
        let jobs = daemon.claim("mail", 10).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].attempt, 1);
        assert_eq!(jobs[0].payload, b"hi");
        daemon
            .complete(
                &jobs[0],
                Outcome::Retry { delay: Duration::from_secs(60), reason: "x".into() },
            )
            .unwrap();
        daemon.flush().unwrap();
        assert!(daemon.claim("mail", 10).unwrap().is_empty(), "delayed");
        assert!(daemon.next_due().unwrap().is_some());
        let d = daemon.depths().unwrap();
        assert_eq!(d["mail"].delayed, Some(1));
        assert_eq!(d["all"].ready, 2);
        let all = daemon.claim("all", 10).unwrap();
        daemon.complete(&all[0], Outcome::Done).unwrap();
        daemon.complete(&all[1], Outcome::DeadLetter { reason: "boom".into() }).unwrap();
        daemon.flush().unwrap();
        let dead = daemon.dead_letters(None, 10).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, "boom");
        assert_eq!(daemon.depths().unwrap()["all"].done_total, Some(1));
        assert_eq!(daemon.requeue_dead(None, &Requeue::All).unwrap(), 1);
        assert_eq!(daemon.claim("all", 10).unwrap()[0].attempt, 1);
    }
}
