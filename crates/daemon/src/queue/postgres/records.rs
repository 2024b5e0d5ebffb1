//! Job records read back (`job ID` by the unique `id` index, `jobs` newest first by the
//! primary key), cancelling a waiting job, `purge` in batches, dead letters listed and
//! requeued, and depths — from any daemon or client on the database. The records are in
//! `jobs`; the states that pick rows out (dead, finished, ready, running) are read from
//! `queue`'s partial indexes, the delayed jobs from `jobs_delayed`.

use std::collections::BTreeMap;

use postgres::Row;

use super::{
    PgQueue, STATE_CANCELLED, STATE_DEAD, STATE_DELAYED, STATE_DONE, STATE_LEASED, STATE_READY,
};
use crate::queue::{
    Attempt, AttemptEnd, Captured, DeadLetter, JobFilter, JobRecord, JobState, Purge, QueueDepth,
    Requeue, ResourceUse, check_job_id,
};
use crate::{Error, Result};

/// Rows deleted per statement by `purge` and pruning.
pub(super) const BATCH: i64 = 500;

/// How long after a client took the waiters' lock a write may still have read it free (a
/// statement that began before, committing after).
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// The longest wait for an end notification while one may have been missed.
const LOOK_AGAIN: std::time::Duration = std::time::Duration::from_millis(100);

/// The longest wait for an end notification once settled: a write whose statement read the
/// lock free and then waited (on a row lock, on a loaded server) longer than [`SETTLE`]
/// before it committed is missed too, and a waiter must not hang on it; one look at its jobs
/// every few seconds bounds that.
const LOOK_AGAIN_SETTLED: std::time::Duration = std::time::Duration::from_secs(5);

const COLUMNS: &str = "seq, id, task, routing_key, length(payload)::bigint, state, not_before,
    published_ms, finished_ms, attempts, last_error, now_ms()";

fn state_of(code: i16, not_before: Option<i64>, now: i64) -> JobState {
    match code {
        STATE_DELAYED if not_before.is_none_or(|t| t <= now) => JobState::Ready,
        STATE_DELAYED => JobState::Delayed,
        STATE_READY => JobState::Ready,
        STATE_LEASED => JobState::Running,
        STATE_DONE => JobState::Done,
        STATE_DEAD => JobState::Dead,
        STATE_CANCELLED => JobState::Cancelled,
        _ => JobState::Failed,
    }
}

/// The SQL condition for one state (codes only, never user text).
fn state_condition(state: JobState) -> &'static str {
    match state {
        JobState::Ready => "(state = 0 OR (state = 5 AND not_before <= now_ms()))",
        JobState::Delayed => "(state = 5 AND not_before > now_ms())",
        JobState::Running => "state = 1",
        JobState::Done => "state = 2",
        JobState::Dead => "state = 3",
        JobState::Cancelled => "state = 4",
        JobState::Failed => "false",
    }
}

fn record(r: &Row) -> (i64, JobRecord) {
    let now: i64 = r.get(11);
    (
        r.get(0),
        JobRecord {
            id: r.get(1),
            task: r.get(2),
            routing_key: r.get(3),
            payload_len: r.get::<_, i64>(4) as u64,
            state: state_of(r.get(5), r.get(6), now),
            published_ms: r.get(7),
            finished_ms: r.get(8),
            deliveries: u32::try_from(r.get::<_, i32>(9)).unwrap_or(0),
            reason: r.get(10),
            attempts: Vec::new(),
        },
    )
}

fn attempt(r: &Row) -> Attempt {
    let captured = |at: usize| {
        r.get::<_, Option<Vec<u8>>>(at).map(|bytes| Captured {
            bytes,
            total: r.get::<_, Option<i64>>(at + 1).unwrap_or(0).max(0) as u64,
            dropped: r.get::<_, Option<i64>>(at + 2).unwrap_or(0).max(0) as u64,
        })
    };
    let cpu = |at: usize| r.get::<_, Option<i64>>(at).unwrap_or(0).max(0) as u64;
    Attempt {
        number: 0,
        delivery: u32::try_from(r.get::<_, i32>(0)).unwrap_or(0),
        worker_pid: r.get(1),
        started_ms: r.get(2),
        ended_ms: r.get(3),
        end: r.get::<_, Option<String>>(4).and_then(|o| serde_json::from_str(&o).ok()),
        reason: r.get(5),
        stdout: captured(6),
        stderr: captured(9),
        usage: r.get::<_, Option<i64>>(12).map(|rss| ResourceUse {
            max_rss_kib: rss.max(0) as u64,
            user_cpu_us: cpu(13),
            system_cpu_us: cpu(14),
        }),
    }
}

impl PgQueue {
    /// Runs `f` on the work connection; names the database in its error and keeps track of
    /// trouble.
    pub(super) fn with<T>(
        &mut self,
        action: &'static str,
        f: impl FnOnce(&mut postgres::Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let result = match self.conn() {
            Ok(c) => f(&mut c.client).map_err(|e| self.target.err(action, e)),
            Err(e) => Err(e),
        };
        self.note(&result);
        result
    }

    /// The record of job `id`, with its attempts (the running one from its lease holder).
    pub(super) fn read_job(&mut self, id: &str) -> Result<JobRecord> {
        check_job_id(id)?;
        let found = self.with("read a job from", |c| {
            let Some(row) =
                c.query_opt(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"), &[&id])?
            else {
                return Ok(None);
            };
            let (seq, mut job) = record(&row);
            let rows = c.query(
                "SELECT delivery, worker_pid, started_ms, ended_ms, outcome, reason,
                        stdout, stdout_total, stdout_dropped, stderr, stderr_total, stderr_dropped,
                        max_rss_kib, user_cpu_us, system_cpu_us
                 FROM attempts WHERE job_seq = $1 ORDER BY n",
                &[&seq],
            )?;
            job.attempts = rows.iter().map(attempt).collect();
            // The attempt running now, from the lease holder on the job's row; or the clean
            // last attempt a done row implies (it has no row of its own: `turn.rs`).
            let last = c.query_one(
                "SELECT attempts, worker_pid, worker_started_ms, state, finished_ms FROM jobs
                 WHERE seq = $1",
                &[&seq],
            )?;
            let delivery = u32::try_from(last.get::<_, i32>(0)).unwrap_or(0);
            let (pid, started): (Option<i32>, Option<i64>) = (last.get(1), last.get(2));
            match last.get::<_, i16>(3) {
                STATE_LEASED if pid.is_some() => job.attempts.push(Attempt {
                    delivery,
                    worker_pid: pid,
                    started_ms: started,
                    ..Attempt::default()
                }),
                STATE_DONE
                    if delivery > 0
                        && pid.is_some()
                        && !job.attempts.iter().any(|a| a.delivery == delivery) =>
                {
                    job.attempts.push(Attempt {
                        delivery,
                        worker_pid: pid,
                        started_ms: started,
                        ended_ms: last.get(4),
                        end: Some(AttemptEnd::Replied {
                            outcome: super::turn::IMPLIED_OUTCOME.to_owned(),
                        }),
                        ..Attempt::default()
                    })
                }
                _ => {}
            }
            for (i, a) in job.attempts.iter_mut().enumerate() {
                a.number = i as u32 + 1;
            }
            Ok(Some(job))
        })?;
        found.ok_or_else(|| Error::UnknownJob { id: id.to_owned() })
    }

    /// Records (without attempts) matching `filter`, newest first.
    pub(super) fn list_jobs(&mut self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let states = if filter.states.is_empty() {
            "true".to_owned()
        } else {
            let any: Vec<&str> = filter.states.iter().map(|s| state_condition(*s)).collect();
            format!("({})", any.join(" OR "))
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM jobs
             WHERE ($1::text IS NULL OR task = $1) AND ($2::bigint IS NULL OR published_ms >= $2)
               AND {states}
             ORDER BY seq DESC LIMIT $3"
        );
        let since = filter.since.map(|d| super::now_ms() - super::claim::ms(d));
        let limit = filter.limit.min(i64::MAX as usize) as i64;
        let task = filter.task.clone();
        self.with("list jobs in", |c| {
            let rows = c.query(&sql, &[&task, &since, &limit])?;
            Ok(rows.iter().map(|r| record(r).1).collect())
        })
    }

    /// Blocks until a job or attempt ends (a notification on `<schema>_ended`) or `timeout`
    /// passes; the first call starts listening (and takes the waiters' lock, so daemons
    /// notify: `turn.rs`) and returns at once. Until the lock is held and for
    /// [`SETTLE`] after, a write may have missed it: waits are at most [`LOOK_AGAIN`], so
    /// the caller looks at its jobs again; after, at most [`LOOK_AGAIN_SETTLED`].
    pub(super) fn wait_for_ends(&mut self, timeout: std::time::Duration) -> Result<()> {
        let channel = self.target.ended_channel();
        let space = self.target.lock_space();
        let Some(listening) = self.listening_ends else {
            self.with("listen for job ends on", |c| c.batch_execute(&format!("LISTEN {channel}")))?;
            self.listening_ends = Some(None);
            self.take_waiter_lock(space);
            return Ok(());
        };
        if listening.is_none() {
            self.take_waiter_lock(space);
        }
        let settled = self.listening_ends.flatten().is_some_and(|t| t.elapsed() >= SETTLE);
        let timeout = timeout.min(if settled { LOOK_AGAIN_SETTLED } else { LOOK_AGAIN });
        self.with("wait for job ends on", |c| {
            use postgres::fallible_iterator::FallibleIterator;
            let mut notes = c.notifications();
            let got = notes.timeout_iter(timeout).next()?.is_some();
            if got {
                // Take the others that came with it.
                while notes.iter().next()?.is_some() {}
            }
            Ok(())
        })
    }

    /// Tries to take the waiters' lock (shared); a daemon's write may hold it for a moment,
    /// then the next wait tries again.
    fn take_waiter_lock(&mut self, space: i32) {
        let took = self.with("take the waiters' lock on", |c| {
            c.query_one(super::turn::WAITER_LOCK, &[&space]).map(|r| r.get::<_, bool>(0))
        });
        if took.unwrap_or(false) {
            self.listening_ends = Some(Some(std::time::Instant::now()));
        }
    }

    /// Cancels job `id` if it waits (ready or delayed): `true` when it did.
    pub(super) fn cancel_row(&mut self, id: &str) -> Result<bool> {
        check_job_id(id)?;
        let ended = self.target.ended_channel();
        let n = self.with("cancel a job in", |c| {
            let mut tx = c.transaction()?;
            // A delayed job (no row in `queue`) gets one as cancelled, for the pruning; a
            // ready one is taken in `queue` first, as a claim would. Delayed first: a job
            // made ready meanwhile is then found ready by the second statement.
            let mut n = tx.execute(
                "WITH c AS (UPDATE jobs SET state = 4, finished_ms = now_ms(),
                         last_error = 'cancelled', not_before = NULL
                     WHERE id = $1 AND state = 5 RETURNING seq, task, priority, finished_ms)
                 INSERT INTO queue (seq, task, priority, state, finished_ms)
                 SELECT seq, task, priority, 4, finished_ms FROM c",
                &[&id],
            )?;
            if n == 0 {
                n = tx.execute(
                    "WITH q AS (UPDATE queue SET state = 4, finished_ms = now_ms()
                         WHERE seq = (SELECT seq FROM jobs WHERE id = $1) AND state = 0
                         RETURNING seq)
                     UPDATE jobs SET state = 4, finished_ms = now_ms(), last_error = 'cancelled'
                     WHERE seq = ANY(ARRAY(SELECT seq FROM q))",
                    &[&id],
                )?;
            }
            tx.execute("SELECT pg_notify($1, '')", &[&ended])?;
            tx.commit()?;
            Ok(n)
        })?;
        self.due_cache = None;
        Ok(n > 0)
    }

    /// Deletes ended jobs as `what` says, [`BATCH`] rows per statement.
    pub(super) fn purge_rows(&mut self, what: &Purge) -> Result<u64> {
        let mut states: Vec<i16> = Vec::new();
        if what.done {
            states.extend([STATE_DONE, STATE_CANCELLED]);
        }
        if what.dead {
            states.push(STATE_DEAD);
        }
        let cutoff = match what.older_than {
            Some(d) => super::now_ms() - super::claim::ms(d),
            None => i64::MAX,
        };
        let mut total = 0u64;
        loop {
            let n = self.with("purge jobs from", |c| {
                c.execute(
                    "WITH q AS (DELETE FROM queue WHERE seq IN (
                         SELECT seq FROM queue WHERE state = ANY($1)
                           AND COALESCE(finished_ms, 0) <= $2
                         LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING seq)
                     DELETE FROM jobs WHERE seq = ANY(ARRAY(SELECT seq FROM q))",
                    &[&states, &cutoff, &BATCH],
                )
            })?;
            total += n;
            if (n as i64) < BATCH {
                return Ok(total);
            }
        }
    }

    /// Dead letters, oldest first.
    pub(super) fn list_dead(
        &mut self,
        task: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        self.with("list dead letters in", |c| {
            let rows = c.query(
                "SELECT j.id, j.task, j.routing_key, j.attempts, COALESCE(j.last_error, ''),
                        length(j.payload)::bigint
                 FROM queue q JOIN jobs j ON j.seq = q.seq
                 WHERE q.state = 3 AND ($1::text IS NULL OR q.task = $1)
                 ORDER BY q.seq LIMIT $2",
                &[&task, &limit],
            )?;
            Ok(rows
                .iter()
                .map(|r| DeadLetter {
                    id: r.get(0),
                    task: r.get(1),
                    routing_key: r.get(2),
                    attempts: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
                    reason: r.get(4),
                    payload_len: r.get::<_, i64>(5) as usize,
                })
                .collect())
        })
    }

    /// Puts dead letters back with a fresh attempt count (all of the ids, or none of them).
    pub(super) fn requeue(&mut self, task: Option<&str>, which: &Requeue) -> Result<u64> {
        let ids: Option<Vec<String>> = match which {
            Requeue::All => None,
            Requeue::Ids(ids) => Some(ids.clone()),
        };
        let channel = self.target.channel();
        let result = self.with("requeue dead letters in", |c| {
            let mut tx = c.transaction()?;
            let rows = tx.query(
                "WITH q AS (UPDATE queue q SET state = 0, finished_ms = NULL
                     FROM jobs j
                     WHERE j.seq = q.seq AND q.state = 3 AND ($1::text IS NULL OR q.task = $1)
                       AND ($2::text[] IS NULL OR j.id = ANY($2))
                     RETURNING q.seq)
                 UPDATE jobs SET state = 0, attempts = 0, finished_ms = NULL, last_error = NULL
                 WHERE seq = ANY(ARRAY(SELECT seq FROM q))
                 RETURNING id, task",
                &[&task, &ids],
            )?;
            let found: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            if let Some(ids) = &ids
                && let Some(missing) = ids.iter().find(|i| !found.contains(i))
            {
                return Ok(Err(missing.clone()));
            }
            let tasks: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
            tx.execute(
                "SELECT pg_notify($1, t) FROM unnest($2::text[]) AS t",
                &[&channel, &tasks],
            )?;
            tx.commit()?;
            Ok(Ok(found.len() as u64))
        })?;
        self.due_cache = None;
        result.map_err(|id| Error::NoSuchJob { id })
    }

    /// Depth per bound task (and per task with waiting rows).
    pub(super) fn count_depths(&mut self) -> Result<BTreeMap<String, QueueDepth>> {
        let known = || QueueDepth {
            delayed: Some(0),
            dead: Some(0),
            done_total: Some(0),
            ..QueueDepth::default()
        };
        let mut out: BTreeMap<String, QueueDepth> =
            self.tasks.iter().map(|t| (t.name.clone(), known())).collect();
        let (rows, done) = self.with("count jobs in", |c| {
            let rows = c.query(
                "SELECT task, state, COUNT(*), 0::bigint
                 FROM queue WHERE state IN (0, 1, 3) GROUP BY task, state
                 UNION ALL
                 SELECT task, 5::smallint, COUNT(*), COUNT(*) FILTER (WHERE not_before > now_ms())
                 FROM jobs WHERE not_before IS NOT NULL GROUP BY task",
                &[],
            )?;
            let done = c.query("SELECT task, SUM(done)::bigint FROM stats GROUP BY task", &[])?;
            Ok((rows, done))
        })?;
        for r in rows {
            let d = out.entry(r.get(0)).or_insert_with(known);
            let (n, delayed) = (r.get::<_, i64>(2) as u64, r.get::<_, i64>(3) as u64);
            match r.get::<_, i16>(1) {
                STATE_READY | STATE_DELAYED => {
                    d.ready += n - delayed;
                    *d.delayed.get_or_insert(0) += delayed;
                }
                STATE_LEASED => d.in_flight += n,
                _ => *d.dead.get_or_insert(0) += n,
            }
        }
        for r in done {
            if let Some(d) = out.get_mut(&r.get::<_, String>(0)) {
                d.done_total = Some(r.get::<_, i64>(1) as u64);
            }
        }
        Ok(out)
    }
}
