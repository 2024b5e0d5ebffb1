//! Due rows that joined a task's claim order in the daemon's memory, not in the file.
//!
//! A delayed row that falls due must join the claim order (priority first, then publish
//! order). Writing it into `jobs_next` (`not_before = 0`) before leasing it wrote each due row
//! twice, and moved its entries in two indexes, only for the next claim to move them again:
//! 100,000 jobs due in the same second drained markedly slower than as many ready jobs. Only
//! this daemon claims (it holds the lock), so the claiming task's due rows join the order here
//! instead: a claim reads the next rows in due order (`jobs_aside`, from a cursor) and keeps
//! their keys and priorities in memory, and the claim takes the best of these and of
//! `jobs_next`, leasing a due row with one write (`not_before = 0` with the lease). Other tasks'
//! due rows met on the way join their order in the file, as before, so no task's rows hide
//! another's behind a cursor that only its claims move.
//!
//! Due rows join in due order a window at a time: a claim reads more only while its task has
//! fewer than [`JOIN_LOW`] joined, [`DUE_CHUNK`] (or twice the claim) at a time, so memory
//! stays small however large a burst is. Within what has joined the order is exact; a ready job
//! published during a long burst may start before burst rows that have not joined yet.
//!
//! Rows change under the cursor: a client cancels one (its lease finds it gone and skips it),
//! publishes one due at once that commits after the cursor passed its time, a retry is written
//! due at once. Every [`Joined::rewind`] (the daemon's `forget_due`: a poke, a retry written,
//! the periodic look) makes the next read start again from the first due row, skipping those
//! already joined, so nothing is missed for longer than a poke takes.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};

use rusqlite::{OptionalExtension, Transaction, params};

use super::due::DUE_CHUNK;
use super::lease::vm_steps;
use crate::queue::{Job, Receipt};

/// A task reads more due rows when it has fewer than this many joined.
pub(super) const JOIN_LOW: usize = DUE_CHUNK as usize / 8;

/// The key of a row in due order (`jobs_aside` with `state = 0`): due time, task, row.
type DueKey = (i64, String, i64);

/// The due rows that joined a task's claim order in memory (see the module's header).
#[derive(Debug, Default)]
pub(super) struct Joined {
    /// The last row read in due order; the next read starts after it (`None`: at the first).
    cursor: Option<DueKey>,
    /// Each task's joined rows in claim order: highest priority first, then publish order.
    order: HashMap<String, BTreeSet<(Reverse<i64>, i64)>>,
    /// Every joined row.
    seqs: HashSet<i64>,
}

impl Joined {
    /// The next read starts again at the first due row (rows may have appeared behind the
    /// cursor); what joined stays joined.
    pub(super) fn rewind(&mut self) {
        self.cursor = None;
    }

    /// Forgets everything (the tasks changed, or every due row was written into the order).
    pub(super) fn clear(&mut self) {
        *self = Joined::default();
    }

    /// No row joined.
    pub(super) fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// How many rows of `task` joined.
    pub(super) fn len(&self, task: &str) -> usize {
        self.order.get(task).map_or(0, BTreeSet::len)
    }

    /// The first joined row of `task` in claim order: (priority, seq).
    fn first(&self, task: &str) -> Option<(i64, i64)> {
        self.order.get(task)?.first().map(|&(Reverse(p), seq)| (p, seq))
    }

    fn remove(&mut self, task: &str, priority: i64, seq: i64) {
        if let Some(set) = self.order.get_mut(task) {
            set.remove(&(Reverse(priority), seq));
        }
        self.seqs.remove(&seq);
    }

    /// Reads up to `chunk` rows due by `now` after the cursor: `task`'s join its order here,
    /// other tasks' are written into theirs (`not_before = 0`). `true` when the chunk was
    /// full (more may be due).
    pub(super) fn read(
        &mut self,
        tx: &Transaction<'_>,
        task: &str,
        now: i64,
        chunk: i64,
        steps: &mut u64,
    ) -> rusqlite::Result<bool> {
        // Before any delayed row (`not_before` is at least 1 for one), after every ready row.
        let (after_time, after_task, after_seq) =
            self.cursor.clone().unwrap_or((1, String::new(), i64::MIN));
        let mut due: Vec<(DueKey, i64)> = Vec::new();
        {
            // The rows of the cursor's time and task that joined already are passed over in the
            // index (the row itself is read only for the priority of a row returned).
            let mut st = tx.prepare_cached(
                "SELECT not_before, task, seq, priority FROM jobs INDEXED BY jobs_aside
                 WHERE state = 0 AND likely(not_before > 0) AND (not_before, task, seq) > (?2, ?3, ?4)
                   AND not_before <= ?1
                 ORDER BY not_before, task, seq LIMIT ?5",
            )?;
            let mut rows = st.query(params![now, after_time, after_task, after_seq, chunk])?;
            while let Some(row) = rows.next()? {
                due.push(((row.get(0)?, row.get(1)?, row.get(2)?), row.get(3)?));
            }
            drop(rows);
            *steps += vm_steps(&st);
        }
        let full = due.len() as i64 >= chunk;
        if let Some((last, _)) = due.last() {
            self.cursor = Some(last.clone());
        }
        let mut promote = tx.prepare_cached("UPDATE jobs SET not_before = 0 WHERE seq = ?1")?;
        for ((_, row_task, seq), priority) in due {
            if self.seqs.contains(&seq) {
                continue;
            }
            if row_task == task {
                self.order.entry(row_task).or_default().insert((Reverse(priority), seq));
                self.seqs.insert(seq);
            } else {
                promote.execute(params![seq])?;
            }
        }
        *steps += vm_steps(&promote);
        Ok(full)
    }

    /// Up to `max` jobs of `task` in claim order from `ready` (the first rows of `jobs_next`,
    /// in its order, with their priorities) and the rows joined here, each with its priority.
    /// A joined row that is no longer waiting (cancelled meanwhile) is dropped.
    pub(super) fn merge(
        &mut self,
        tx: &Transaction<'_>,
        task: &str,
        max: usize,
        ready: Vec<(i64, Job)>,
        steps: &mut u64,
    ) -> rusqlite::Result<Vec<(i64, Job)>> {
        let mut out = Vec::with_capacity(max.min(64));
        let mut ready = ready.into_iter().peekable();
        let mut fetch = tx.prepare_cached(
            "SELECT id, routing_key, payload, attempts FROM jobs
             WHERE seq = ?1 AND state = 0 AND not_before > 0",
        )?;
        while out.len() < max {
            let joined = self.first(task);
            let from_here = match (ready.peek(), joined) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((rp, job)), Some((jp, seq))) => {
                    (Reverse(jp), seq) < (Reverse(*rp), job.receipt.0 as i64)
                }
            };
            match (from_here, joined) {
                (true, Some((priority, seq))) => {
                    self.remove(task, priority, seq);
                    let job = fetch
                        .query_row(params![seq], |row| {
                            Ok(Job {
                                id: row.get(0)?,
                                task: task.to_owned(),
                                routing_key: row.get(1)?,
                                payload: row.get(2)?,
                                attempt: u32::try_from(row.get::<_, i64>(3)?.saturating_add(1))
                                    .unwrap_or(u32::MAX),
                                receipt: Receipt(seq as u64),
                            })
                        })
                        .optional()?;
                    out.extend(job.map(|job| (priority, job)));
                }
                _ => out.extend(ready.next()),
            }
        }
        *steps += vm_steps(&fetch);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::queue::sqlite::tests::bound;
    use crate::queue::sqlite::{SqliteQueue, now_ms};
    use crate::queue::{OpenMode, Outcome, PublishOptions, QueueBackend};

    /// Publishes `payloads` with `key` and `priority`, delayed an hour, then lets their hour
    /// pass: they fell due `ago_ms` ago (all at the same time, as in a burst).
    fn fell_due(q: &mut SqliteQueue, key: &str, payloads: &[&str], priority: u8, ago_ms: i64) {
        let later = PublishOptions::new().delay(Duration::from_secs(3600)).priority(priority);
        let payloads: Vec<Vec<u8>> = payloads.iter().map(|p| p.as_bytes().to_vec()).collect();
        q.publish_with(key, &payloads, &later).unwrap();
        q.conn
            .execute(
                "UPDATE jobs SET not_before = ?1 WHERE routing_key = ?2 AND not_before > ?3",
                params![now_ms() - ago_ms, key, now_ms() + 3_000_000],
            )
            .unwrap();
        q.forget_due(); // as after the publisher's poke
    }

    /// Claims `task` one job at a time, each finished before the next claim: the payloads in
    /// the order they were claimed.
    fn drain(q: &mut SqliteQueue, task: &str) -> Vec<String> {
        let mut order = Vec::new();
        loop {
            let jobs = q.claim(task, 1).unwrap();
            let Some(job) = jobs.first() else { return order };
            order.push(String::from_utf8(job.payload.clone()).unwrap());
            q.complete(job, Outcome::Done).unwrap();
        }
    }

    /// Due jobs take their place in the claim order as ready ones do: higher priority first,
    /// then publish order, whichever way each became claimable.
    #[test]
    fn due_and_ready_jobs_go_by_priority_then_publish_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        fell_due(&mut q, "mail.a", &["due-1a", "due-1b"], 1, 50);
        q.publish_with("mail.a", &[b"ready-5a".to_vec()], &PublishOptions::new()).unwrap();
        fell_due(&mut q, "mail.b", &["due-9"], 9, 50);
        fell_due(&mut q, "mail.c", &["due-5"], 5, 50);
        q.publish_with("mail.a", &[b"ready-5b".to_vec()], &PublishOptions::new()).unwrap();
        assert_eq!(
            drain(&mut q, "mail"),
            ["due-9", "ready-5a", "due-5", "ready-5b", "due-1a", "due-1b"]
        );
    }

    /// A burst due in one moment goes in publish order, each job once; a job cancelled after
    /// its claim read it is skipped (the claim takes the next), never handed out.
    #[test]
    fn a_burst_drains_in_order_and_skips_a_job_cancelled_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let mut q = bound(&path, OpenMode::Daemon);
        let names: Vec<String> = (0..1500).map(|i| format!("{i:04}")).collect();
        let payloads: Vec<&str> = names.iter().map(String::as_str).collect();
        fell_due(&mut q, "mail.a", &payloads, 5, 20);
        let first = q.claim("mail", 1).unwrap();
        assert_eq!(first[0].payload, b"0000");
        assert!(q.joined.len("mail") > 1, "the claim read ahead of what it took");
        q.complete(&first[0], Outcome::Done).unwrap();
        let id: String = q
            .conn
            .query_row(
                "SELECT id FROM jobs WHERE task = 'mail' AND payload = x'30303031'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let mut client = bound(&path, OpenMode::Client);
        assert!(client.cancel_waiting(&id).unwrap(), "cancelled while waiting");
        let rest = drain(&mut q, "mail");
        assert_eq!(rest.len(), names.len() - 2);
        assert_eq!(rest, names[2..], "in publish order, without the cancelled job");
        assert_eq!(q.joined.len("mail"), 0);
    }

    /// A row that became due behind the cursor (a publish that committed after the claim read
    /// past its time, a retry due at once) is claimed after the next poke, not missed.
    #[test]
    fn a_row_due_behind_the_cursor_is_claimed_after_a_poke() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        let names: Vec<String> = (0..600).map(|i| format!("{i:03}")).collect();
        let payloads: Vec<&str> = names.iter().map(String::as_str).collect();
        fell_due(&mut q, "mail.a", &payloads, 5, 20);
        let later = PublishOptions::new().delay(Duration::from_secs(3600));
        q.publish_with("mail.z", &[b"late".to_vec()], &later).unwrap();
        let first = q.claim("mail", 1).unwrap();
        q.complete(&first[0], Outcome::Done).unwrap();
        // Due long before the rows the cursor passed, as if committed just now.
        q.conn
            .execute(
                "UPDATE jobs SET not_before = ?1 WHERE routing_key = 'mail.z'",
                [now_ms() - 60_000],
            )
            .unwrap();
        q.on_wake().unwrap(); // its publisher's poke
        let rest = drain(&mut q, "mail");
        assert_eq!(rest.len(), 600, "{rest:?}");
        assert_eq!(rest.last().map(String::as_str), Some("late"), "after those published before");
    }

    /// A claim of a task with a concurrency key writes every due row into the claim order,
    /// those another task joined in memory too: that task still claims each of them.
    #[test]
    fn a_keyed_claim_leaves_no_joined_row_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        let names: Vec<String> = (0..100).map(|i| format!("{i:02}")).collect();
        let payloads: Vec<&str> = names.iter().map(String::as_str).collect();
        fell_due(&mut q, "mail.a", &payloads, 5, 20);
        let first = q.claim("mail", 1).unwrap();
        q.complete(&first[0], Outcome::Done).unwrap();
        assert_eq!(q.joined.len("mail"), 99);
        let keyed = crate::limits::TaskLimits {
            task: "all".into(),
            rate: None,
            key: Some(crate::limits::ConcurrencyKey::Header("tenant".into())),
            max_per_key: 1,
        };
        q.set_limits(&[keyed]).unwrap();
        q.claim("all", 1).unwrap();
        assert!(q.joined.is_empty());
        let rest = drain(&mut q, "mail");
        assert_eq!(rest, names[1..]);
    }

    /// The claims of a burst of due jobs cost little more than the claims of as many ready
    /// jobs (in SQLite VM steps, a count load does not blur; 1.26× here, where writing each due
    /// row into `jobs_next` before its lease made it 1.7×): a due row is written once, by its
    /// lease, and its claim reads it by its key. (It was 1.2× while a ready row was in two
    /// indexes: its lease now moves it out of one, and a due row's out of one as before.)
    #[test]
    fn a_due_burst_costs_its_claims_little_more_than_ready_jobs() {
        let steps = |due: bool| {
            let dir = tempfile::tempdir().unwrap();
            let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
            let names: Vec<String> = (0..2000).map(|i| format!("{i}")).collect();
            let payloads: Vec<&str> = names.iter().map(String::as_str).collect();
            if due {
                fell_due(&mut q, "x.y", &payloads, 5, 20);
            } else {
                let bytes: Vec<Vec<u8>> = names.iter().map(|n| n.as_bytes().to_vec()).collect();
                q.publish_batch("x.y", &bytes).unwrap();
            }
            let before = q.claim_steps();
            assert_eq!(drain(&mut q, "all").len(), 2000);
            q.claim_steps() - before
        };
        let (ready, due) = (steps(false), steps(true));
        assert!(due * 10 <= ready * 13, "{due} steps for 2,000 due jobs, {ready} for ready ones");
    }
}
