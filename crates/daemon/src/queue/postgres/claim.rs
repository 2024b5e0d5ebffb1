//! Publishing, claiming, and the daemon's buffered writes: outcomes, attempts and worker
//! holders, written as arrays (one statement per kind) in the transaction of the next claim
//! or flush. Every write to a leased row checks that the row is still leased by the daemon
//! number that took it, so an outcome that comes after the lease was recovered elsewhere
//! changes nothing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use postgres::Transaction;

use super::turn::{self, AttemptCols, HolderCols, someone_waits};
use super::{PgQueue, STATE_CANCELLED, STATE_DEAD, STATE_READY, now_ms};
use crate::queue::{AttemptReport, Job, LeaseHolder, Outcome, Receipt, check_payload};
use crate::{Error, Result, routing};

/// Inserts a batch and notifies each receiving task, in one statement (one round trip; its
/// own transaction).
const PUBLISH: &str = "WITH ins AS (
        INSERT INTO jobs (id, task, routing_key, payload, state, published_ms)
        SELECT u.id, u.task, $1, u.payload, 0, now_ms()
        FROM unnest($2::text[], $3::text[], $4::bytea[]) AS u(id, task, payload)
        RETURNING seq, task, priority),
    q AS (INSERT INTO queue (seq, task, priority, state) SELECT seq, task, priority, 0 FROM ins)
    SELECT pg_notify($5, t) FROM (SELECT DISTINCT task FROM ins) AS x(t)";

/// Takes the first `$3` ready jobs of task `$2` in claim order: higher priority first, then
/// FIFO (`queue_ready (task, priority DESC, seq) WHERE state = 0`), leasing their rows of
/// `queue` first, then updating their records in `jobs` (no indexed column of `jobs`
/// changes: HOT). Delayed jobs have no row in `queue` until `due.rs` makes them ready: a
/// backlog of them costs nothing but the one descent of `jobs`' primary key per job taken.
pub const CLAIM: &str = "WITH q AS (UPDATE queue SET state = 1, lease_owner = $1
        WHERE seq IN (SELECT seq FROM queue WHERE task = $2 AND state = 0
                      ORDER BY priority DESC, seq LIMIT $3 FOR UPDATE SKIP LOCKED)
        RETURNING seq)
    UPDATE jobs SET state = 1, attempts = attempts + 1, lease_owner = $1,
        worker_pid = NULL, worker_start = NULL, worker_pgid = NULL, worker_boot = NULL,
        worker_started_ms = NULL
    WHERE seq = ANY(ARRAY(SELECT seq FROM q))
    RETURNING seq, id, routing_key, payload, attempts, priority";

/// Puts back the jobs leased to this daemon (`$1`) that it does not know it holds (not in
/// `$2`): after a claim whose commit was not confirmed (the connection dropped during it),
/// the server may have committed the claim that the daemon never saw.
const RELEASE_UNSEEN: &str = "WITH q AS (UPDATE queue SET state = 0, lease_owner = NULL
        WHERE state = 1 AND lease_owner = $1 AND NOT (seq = ANY($2)) RETURNING seq)
    UPDATE jobs SET state = 0, attempts = GREATEST(attempts - 1, 0), lease_owner = NULL
    WHERE seq = ANY(ARRAY(SELECT seq FROM q))";

const HOLDERS: &str = "UPDATE jobs j SET worker_pid = u.pid, worker_start = u.start,
        worker_pgid = u.pgid, worker_boot = u.boot, worker_started_ms = u.at
    FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::bigint[], $5::int[], $6::text[],
                $7::bigint[]) AS u(seq, owner, pid, start, pgid, boot, at)
    WHERE j.seq = u.seq AND j.state = 1 AND j.lease_owner = u.owner";

const ATTEMPTS: &str = "INSERT INTO attempts (job_seq, delivery, worker_pid, started_ms, ended_ms,
        outcome, reason, stdout, stdout_total, stdout_dropped, stderr, stderr_total,
        stderr_dropped, max_rss_kib, user_cpu_us, system_cpu_us)
    SELECT u.seq, u.delivery, COALESCE(u.pid, j.worker_pid),
        COALESCE(u.started, j.worker_started_ms), u.ended, u.outcome, u.reason, u.out,
        u.out_total, u.out_dropped, u.err, u.err_total, u.err_dropped, u.rss, u.ucpu, u.scpu
    FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::int[], $5::bigint[], $6::text[],
                $7::text[], $8::bytea[], $9::bigint[], $10::bigint[], $11::bytea[],
                $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[],
                $17::bigint[])
        WITH ORDINALITY AS u(seq, owner, delivery, pid, ended, outcome, reason, out, out_total,
                out_dropped, err, err_total, err_dropped, rss, ucpu, scpu, started, ord)
    JOIN jobs j ON j.seq = u.seq AND j.state = 1 AND j.lease_owner = u.owner
    ORDER BY u.ord";

/// Done jobs (kept), counted per task and daemon, and waiting clients told (if any: `$5` the
/// lock space, see `turn.rs`): one statement.
const DONE_KEEP: &str = concat!(
    r#"WITH dq AS (
        UPDATE queue q SET state = 2, finished_ms = now_ms(), lease_owner = NULL
        FROM unnest($1::bigint[], $2::bigint[]) AS u(seq, owner)
        WHERE q.seq = u.seq AND q.state = 1 AND q.lease_owner = u.owner RETURNING q.seq),
    d AS (
        UPDATE jobs SET state = 2, finished_ms = now_ms(), last_error = NULL, lease_owner = NULL
        WHERE seq = ANY(ARRAY(SELECT seq FROM dq)) RETURNING task),
    s AS (INSERT INTO stats (task, daemon, done) SELECT task, $3, COUNT(*) FROM d GROUP BY task
        ON CONFLICT (task, daemon) DO UPDATE SET done = stats.done + excluded.done)
    SELECT (SELECT COUNT(*) FROM d), CASE WHEN "#,
    someone_waits!("$5"),
    r#" THEN pg_notify($4, '') END"#
);

/// Done jobs (no history: deleted), counted, and waiting clients told (if any): one statement.
const DONE_DELETE: &str = concat!(
    r#"WITH dq AS (
        DELETE FROM queue q USING unnest($1::bigint[], $2::bigint[]) AS u(seq, owner)
        WHERE q.seq = u.seq AND q.state = 1 AND q.lease_owner = u.owner RETURNING q.seq),
    d AS (DELETE FROM jobs WHERE seq = ANY(ARRAY(SELECT seq FROM dq)) RETURNING task),
    s AS (INSERT INTO stats (task, daemon, done) SELECT task, $3, COUNT(*) FROM d GROUP BY task
        ON CONFLICT (task, daemon) DO UPDATE SET done = stats.done + excluded.done)
    SELECT (SELECT COUNT(*) FROM d), CASE WHEN "#,
    someone_waits!("$5"),
    r#" THEN pg_notify($4, '') END"#
);

/// Waiting clients told (if any: `$2` the lock space).
const NOTIFY_ONE: &str =
    concat!("SELECT CASE WHEN ", someone_waits!("$2"), " THEN pg_notify($1, '') END");

/// A retry with a delay waits as delayed (state 5) until its time, out of `queue` (its row
/// there deleted); any other end keeps its row in `queue` with its new state.
const END: &str = "WITH k AS (
        UPDATE queue SET state = $3::smallint, lease_owner = NULL,
            finished_ms = CASE WHEN $3::smallint = 0 THEN NULL ELSE now_ms() END
        WHERE seq = $1 AND state = 1 AND lease_owner = $2
          AND NOT ($3::smallint = 0 AND $4::bigint > 0)
        RETURNING seq),
    w AS (
        DELETE FROM queue WHERE seq = $1 AND state = 1 AND lease_owner = $2
          AND $3::smallint = 0 AND $4::bigint > 0
        RETURNING seq)
    UPDATE jobs SET
        state = CASE WHEN $3::smallint = 0 AND $4::bigint > 0 THEN 5 ELSE $3::smallint END,
        finished_ms = CASE WHEN $3::smallint = 0 THEN NULL ELSE now_ms() END,
        not_before = CASE WHEN $3::smallint = 0 AND $4::bigint > 0 THEN now_ms() + $4::bigint END,
        last_error = $5, lease_owner = NULL
    WHERE seq IN (SELECT seq FROM k UNION ALL SELECT seq FROM w)";

/// An outcome reported and not yet written.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) seq: i64,
    pub(super) owner: i64,
    pub(super) outcome: Outcome,
    /// When it was reported: a retry's delay counts from here.
    reported: Instant,
}

/// An attempt ended and not yet written.
#[derive(Debug)]
pub(super) struct Ended {
    pub(super) seq: i64,
    pub(super) owner: i64,
    pub(super) delivery: u32,
    pub(super) ended_ms: i64,
    pub(super) report: AttemptReport,
    /// When and in which worker it started, for a job whose holder is not written
    /// ([`Buffers::fold_holders`]); none: the row's holder columns say.
    pub(super) started: Option<(i64, i32)>,
}

/// What the daemon reported and the database does not have yet.
#[derive(Debug, Default)]
pub(super) struct Buffers {
    pub(super) outcomes: Vec<Pending>,
    pub(super) ended: Vec<Ended>,
    pub(super) holders: Vec<(i64, i64, LeaseHolder, i64)>,
}

impl Buffers {
    pub(super) fn is_empty(&self) -> bool {
        self.outcomes.is_empty() && self.ended.is_empty() && self.holders.is_empty()
    }

    /// Drops the holders of jobs done in the same write: the row leaves its lease in that
    /// write, so no recovery ever reads them; the attempt takes its start and worker from the
    /// holder instead. Short jobs (started and ended while the write before was on its way)
    /// then fit the one-statement turn, and their rows are updated once less.
    pub(super) fn fold_holders(&mut self) {
        let done: HashSet<i64> =
            self.outcomes.iter().filter(|p| p.outcome == Outcome::Done).map(|p| p.seq).collect();
        if done.is_empty() || self.holders.is_empty() {
            return;
        }
        let mut started = HashMap::new();
        self.holders.retain(|(seq, _, h, at)| {
            let gone = done.contains(seq);
            if gone {
                started.insert(*seq, (*at, h.process.pid.as_raw()));
            }
            !gone
        });
        for e in &mut self.ended {
            if let Some(s) = started.get(&e.seq) {
                e.started = Some(*s);
            }
        }
    }
}

impl PgQueue {
    /// Inserts one job per payload and receiving task in one transaction and notifies.
    pub(super) fn insert_jobs(&mut self, key: &str, payloads: &[&[u8]]) -> Result<Vec<String>> {
        routing::validate_key(key)?;
        for p in payloads {
            check_payload(p)?;
        }
        let targets: Vec<String> = self
            .tasks
            .iter()
            .filter(|t| t.routing_keys.iter().any(|p| routing::matches(p, key)))
            .map(|t| t.name.clone())
            .collect();
        if targets.is_empty() {
            return Err(Error::Unroutable { routing_key: key.to_owned() });
        }
        let (mut ids, mut tasks, mut data) = (Vec::new(), Vec::new(), Vec::new());
        for p in payloads {
            for t in &targets {
                ids.push(uuid::Uuid::now_v7().to_string());
                tasks.push(t.as_str());
                data.push(*p);
            }
        }
        let channel = self.target.channel();
        let result = (|| {
            let conn = self.conn()?;
            let e = |err| Error::Postgres {
                action: "publish to",
                target: String::new(),
                source: Box::new(err),
            };
            let publish = conn.stmt(PUBLISH).map_err(e)?;
            conn.client.execute(&publish, &[&key, &ids, &tasks, &data, &channel]).map_err(e)?;
            Ok(())
        })();
        let result = result.map_err(|e| self.named(e, "publish to"));
        self.note(&result);
        result.map(|()| ids)
    }

    /// Gives an error built without the target (inside a borrow of the connection) its name.
    pub(super) fn named(&self, e: Error, action: &'static str) -> Error {
        match e {
            Error::Postgres { target, source, .. } if target.is_empty() => {
                self.target.err(action, source)
            }
            other => other,
        }
    }

    pub(super) fn buffer_outcome(&mut self, job: &Job, outcome: Outcome) {
        let seq = job.receipt.0 as i64;
        let owner = self.leases.get(&seq).copied().unwrap_or(0);
        self.buffers.outcomes.push(Pending { seq, owner, outcome, reported: Instant::now() });
        self.buffered_since.get_or_insert_with(Instant::now);
    }

    pub(super) fn buffer_attempt(&mut self, job: &Job, report: AttemptReport) {
        let seq = job.receipt.0 as i64;
        let owner = self.leases.get(&seq).copied().unwrap_or(0);
        let ended_ms = now_ms();
        let ended = Ended { seq, owner, delivery: job.attempt, ended_ms, report, started: None };
        self.buffers.ended.push(ended);
        self.buffered_since.get_or_insert_with(Instant::now);
    }

    pub(super) fn buffer_holder(&mut self, job: &Job, holder: &LeaseHolder) {
        let seq = job.receipt.0 as i64;
        let owner = self.leases.get(&seq).copied().unwrap_or(0);
        self.buffers.holders.push((seq, owner, holder.clone(), now_ms()));
        self.buffered_since.get_or_insert_with(Instant::now);
    }

    /// Writes the buffers and, when `claim` names a task, takes up to that many of its jobs:
    /// one transaction.
    pub(super) fn write(&mut self, claim: Option<(&str, usize)>) -> Result<Vec<Job>> {
        let owner = self.owner();
        let keep = !self.retention.keep_done.is_zero();
        // Kept until the transaction commits: after a failure the next write has them.
        let mut buffers = std::mem::take(&mut self.buffers);
        buffers.fold_holders();
        let ended = self.target.ended_channel();
        let space = self.target.lock_space();
        let unsure = self.unsure_claim;
        let known: Vec<i64> = self.leases.keys().copied().collect();
        let result = (|| {
            let conn = self.conn()?;
            let e = |err| Error::Postgres {
                action: "claim jobs from",
                target: String::new(),
                source: Box::new(err),
            };
            let done_sql = if keep { DONE_KEEP } else { DONE_DELETE };
            let mut s = Vec::with_capacity(6);
            for sql in [HOLDERS, ATTEMPTS, done_sql, END, NOTIFY_ONE, CLAIM] {
                s.push(conn.stmt(sql).map_err(e)?);
            }
            let take = |mut rows: Vec<postgres::Row>, task: &str| -> Vec<Job> {
                // Highest priority first, then publish order (RETURNING has no order).
                rows.sort_by_key(|r| (std::cmp::Reverse(r.get::<_, i16>(5)), r.get::<_, i64>(0)));
                rows.iter()
                    .map(|r| Job {
                        id: r.get(1),
                        task: task.to_owned(),
                        routing_key: r.get(2),
                        payload: r.get(3),
                        attempt: u32::try_from(r.get::<_, i32>(4)).unwrap_or(0),
                        receipt: Receipt(r.get::<_, i64>(0) as u64),
                    })
                    .collect()
            };
            if buffers.is_empty() && !unsure && claim.is_none() {
                return Ok((Vec::new(), false));
            }
            if !unsure && turn::fits(&buffers) {
                // The usual turn (or a claim alone): one call of the turn function, so one
                // round trip on a plan made once per session (`turn.rs`).
                let stmt = conn.stmt(if keep { turn::TURN_KEEP } else { turn::TURN_DELETE });
                let (task, max) = claim.map_or(("", 0), |(t, m)| (t, m as i64));
                let turn = turn::Turn { owner, task, max, ended: &ended, space };
                let (rows, written) =
                    turn::run(&mut conn.client, &stmt.map_err(e)?, &buffers, keep, &turn)
                        .map_err(e)?;
                if written < buffers.outcomes.len() {
                    tracing::warn!(
                        lost = buffers.outcomes.len() - written,
                        "postgres: outcomes of jobs whose lease was recovered elsewhere are dropped (the jobs run again)"
                    );
                }
                return Ok((take(rows, task), false));
            }
            let mut tx = conn.client.transaction().map_err(e)?;
            write_holders(&mut tx, &s[0], &buffers).map_err(e)?;
            write_attempts(&mut tx, &s[1], &buffers, keep).map_err(e)?;
            let (retried, told) =
                write_outcomes(&mut tx, [&s[2], &s[3]], &buffers, owner, (&ended, space))
                    .map_err(e)?;
            if !told && (!buffers.outcomes.is_empty() || !buffers.ended.is_empty()) {
                // Clients waiting for jobs (`wait`, `logs -f`) look again.
                tx.execute(&s[4], &[&ended, &space]).map_err(e)?;
            }
            if unsure {
                let put_back = tx.execute(RELEASE_UNSEEN, &[&owner, &known]).map_err(e)?;
                if put_back > 0 {
                    tracing::warn!(
                        jobs = put_back,
                        "postgres: a claim was committed but its answer lost with the connection; those jobs are back in ready"
                    );
                }
            }
            let mut jobs = Vec::new();
            if let Some((task, max)) = claim {
                let rows = tx.query(&s[5], &[&owner, &task, &(max as i64)]).map_err(e)?;
                jobs = take(rows, task);
            }
            tx.commit().map_err(e)?;
            Ok((jobs, retried))
        })();
        let result = result.map_err(|e| self.named(e, "claim jobs from"));
        self.note(&result);
        let (jobs, retried) = match result {
            Ok(r) => r,
            Err(e) => {
                self.buffers = buffers;
                // A claim whose commit was not confirmed may have taken jobs all the same.
                self.unsure_claim |= claim.is_some();
                return Err(e);
            }
        };
        self.unsure_claim = false;
        self.buffered_since = None;
        for p in &buffers.outcomes {
            self.leases.remove(&p.seq);
        }
        if retried {
            self.due_cache = None;
        }
        for j in &jobs {
            self.leases.insert(j.receipt.0 as i64, owner);
        }
        Ok(jobs)
    }
}

fn write_holders(
    tx: &mut Transaction<'_>,
    stmt: &postgres::Statement,
    b: &Buffers,
) -> std::result::Result<(), postgres::Error> {
    if b.holders.is_empty() {
        return Ok(());
    }
    tx.execute(stmt, &HolderCols::of(b).params())?;
    Ok(())
}

fn write_attempts(
    tx: &mut Transaction<'_>,
    stmt: &postgres::Statement,
    b: &Buffers,
    keep_history: bool,
) -> std::result::Result<(), postgres::Error> {
    // Without history the attempts of jobs done now go with their rows: not written at all.
    let cols = AttemptCols::of(b, keep_history, false);
    if cols.is_empty() {
        return Ok(());
    }
    let mut params = cols.params().to_vec();
    params.push(cols.started());
    tx.execute(stmt, &params)?;
    Ok(())
}

/// Writes the outcomes; returns whether one is a retry, and whether waiting clients were
/// told (the done statement notifies `ended`). `stmts`: done, end.
fn write_outcomes(
    tx: &mut Transaction<'_>,
    stmts: [&postgres::Statement; 2],
    b: &Buffers,
    owner: i64,
    (ended, space): (&str, i32),
) -> std::result::Result<(bool, bool), postgres::Error> {
    let [done_stmt, end_stmt] = stmts;
    let done: Vec<&Pending> = b.outcomes.iter().filter(|p| p.outcome == Outcome::Done).collect();
    let told = !done.is_empty();
    if told {
        let seq: Vec<i64> = done.iter().map(|p| p.seq).collect();
        let owners: Vec<i64> = done.iter().map(|p| p.owner).collect();
        let row = tx.query_one(done_stmt, &[&seq, &owners, &owner, &ended, &space])?;
        let written = row.get::<_, i64>(0) as usize;
        if written < done.len() {
            tracing::warn!(
                lost = done.len() - written,
                "postgres: outcomes of jobs whose lease was recovered elsewhere are dropped (the jobs run again)"
            );
        }
    }
    let mut retried = false;
    for p in b.outcomes.iter().filter(|p| p.outcome != Outcome::Done) {
        let (state, delay, reason): (i16, i64, &str) = match &p.outcome {
            Outcome::Done => continue,
            Outcome::Retry { delay, reason } => {
                retried = true;
                let left = delay.saturating_sub(p.reported.elapsed());
                (STATE_READY, ms(left), reason)
            }
            Outcome::DeadLetter { reason } => (STATE_DEAD, 0, reason),
            Outcome::Cancelled { reason } => (STATE_CANCELLED, 0, reason),
        };
        tx.execute(end_stmt, &[&p.seq, &p.owner, &state, &delay, &reason])?;
    }
    Ok((retried, told))
}

/// A duration in whole ms for the database.
pub(super) fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}
