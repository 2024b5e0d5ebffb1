//! The daemon's buffered writes: outcomes, attempts and worker holders, written with the next
//! claim (or at the flush that ends a loop turn) in **one statement**, so one round trip and
//! one commit record everything the daemon learnt since the last write and takes the jobs that
//! refill its free workers.
//!
//! # Why one statement
//!
//! The work connection is synchronous: every statement is a round trip, and `BEGIN` and
//! `COMMIT` are two more. Written as a transaction of one statement per kind, a turn that
//! finished a job and claimed the next cost five or six round trips (and the flush of the new
//! job's holder three more); that, not the server's work, bounded the drain. Here every kind is
//! a data-modifying CTE of one statement ([`write_sql`]; done jobs kept or deleted), an
//! implicit transaction of its own: a daemon killed at any moment has recorded all of it or
//! none of it, as before.
//!
//! The CTEs see one snapshot and must not touch one row twice, so the buffers are shaped to
//! keep them apart: a holder whose job also has an outcome in the batch is not written (the
//! outcome ends the lease; the attempt takes the holder's pid and start from the buffer
//! instead of from the row), and the claim only takes `ready` rows while every other CTE only
//! touches leased ones. Every write to a leased row checks that the row is still leased by the
//! daemon number that took it, so an outcome that comes after the lease was recovered
//! elsewhere changes nothing.
//!
//! Leased rows are found by primary key, one probe per buffered entry: the condition
//! `state + 0 = 1` (not `state = 1`) keeps the planner off the partial index `jobs_leased`,
//! which it would otherwise scan whole for each CTE (empty ones too), dead entries of every
//! lease since the last vacuum included: a cost that grew with every job drained.
//!
//! The claim is `claim.rs`'s `CLAIM`, embedded verbatim but for its limit, written as a literal
//! (see [`write_sql`]); its parameters `$1` owner and `$2` task are this statement's first two.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use super::claim::{CLAIM, RELEASE_UNSEEN, ms};
use super::{PgQueue, STATE_CANCELLED, STATE_DEAD, STATE_READY};
use crate::Error;
use crate::Result;
use crate::queue::{AttemptReport, Captured, Job, LeaseHolder, Outcome, Receipt};

/// Everything but the done jobs and the claim: holders, attempts, the other outcomes.
const HEAD: &str = "WITH
    h AS (UPDATE jobs j SET worker_pid = u.pid, worker_start = u.start,
            worker_pgid = u.pgid, worker_boot = u.boot, worker_started_ms = u.at
        FROM unnest($4::bigint[], $5::bigint[], $6::int[], $7::bigint[], $8::int[], $9::text[],
                    $10::bigint[]) AS u(seq, owner, pid, start, pgid, boot, at)
        WHERE j.seq = u.seq AND j.state + 0 = 1 AND j.lease_owner = u.owner),
    a AS (INSERT INTO attempts (job_seq, delivery, worker_pid, started_ms, ended_ms, outcome,
            reason, stdout, stdout_total, stdout_dropped, stderr, stderr_total, stderr_dropped,
            max_rss_kib, user_cpu_us, system_cpu_us)
        SELECT u.seq, u.delivery, COALESCE(u.pid, j.worker_pid),
            COALESCE(u.started, j.worker_started_ms), u.ended, u.outcome, u.reason, u.out,
            u.out_total, u.out_dropped, u.err, u.err_total, u.err_dropped, u.rss, u.ucpu, u.scpu
        FROM unnest($11::bigint[], $12::bigint[], $13::int[], $14::int[], $15::bigint[],
                    $16::bigint[], $17::text[], $18::text[], $19::bytea[], $20::bigint[],
                    $21::bigint[], $22::bytea[], $23::bigint[], $24::bigint[], $25::bigint[],
                    $26::bigint[], $27::bigint[])
            WITH ORDINALITY AS u(seq, owner, delivery, pid, started, ended, outcome, reason,
                out, out_total, out_dropped, err, err_total, err_dropped, rss, ucpu, scpu, ord)
        JOIN jobs j ON j.seq = u.seq AND j.state + 0 = 1 AND j.lease_owner = u.owner
        ORDER BY u.ord),
    e AS (UPDATE jobs j SET state = u.state,
            finished_ms = CASE WHEN u.state = 0 THEN NULL ELSE now_ms() END,
            not_before = CASE WHEN u.state = 0 THEN now_ms() + u.delay ELSE j.not_before END,
            last_error = u.reason, lease_owner = NULL
        FROM unnest($30::bigint[], $31::bigint[], $32::smallint[], $33::bigint[], $34::text[])
            AS u(seq, owner, state, delay, reason)
        WHERE j.seq = u.seq AND j.state + 0 = 1 AND j.lease_owner = u.owner),";

/// Done jobs kept (history on).
const DONE_KEEP: &str = "
    d AS (UPDATE jobs j SET state = 2, finished_ms = now_ms(), last_error = NULL,
            lease_owner = NULL
        FROM unnest($28::bigint[], $29::bigint[]) AS u(seq, owner)
        WHERE j.seq = u.seq AND j.state + 0 = 1 AND j.lease_owner = u.owner RETURNING j.task),";

/// Done jobs deleted (no history).
const DONE_DELETE: &str = "
    d AS (DELETE FROM jobs j USING unnest($28::bigint[], $29::bigint[]) AS u(seq, owner)
        WHERE j.seq = u.seq AND j.state + 0 = 1 AND j.lease_owner = u.owner RETURNING j.task),";

/// Done counted per task and daemon; the claim; a first row with the number of done jobs
/// written (and waiting clients told, `$35`, when `$36`), then one row per job claimed.
fn tail(claim: &str) -> String {
    format!(
        "
    s AS (INSERT INTO stats (task, daemon, done) SELECT task, $1, COUNT(*) FROM d GROUP BY task
        ON CONFLICT (task, daemon) DO UPDATE SET done = stats.done + excluded.done),
    c AS ({claim})
SELECT $3::bigint, NULL::text, NULL::text, NULL::bytea, NULL::int, (SELECT COUNT(*) FROM d),
    (SELECT COUNT(*) FROM (SELECT pg_notify($35, '') WHERE $36) AS n)
UNION ALL
SELECT seq, id, routing_key, payload, attempts, NULL, NULL FROM c"
    )
}

/// The write for a claim of `limit` jobs (0: none), keeping done jobs (`keep`) or deleting
/// them.
///
/// The limit is written into the text, one prepared statement per limit: with `LIMIT $3` the
/// server's generic plan assumes a claim takes a tenth of the table, so it plans the whole
/// statement anew at every execution (twice the time it takes to run it); with a literal
/// limit the generic plan is as good, and the statement is planned once per connection.
/// (`$3` stays a parameter, read back in the first row.)
pub(super) fn write_sql(keep: bool, limit: i64) -> String {
    let claim = CLAIM.replace("LIMIT $3", &format!("LIMIT {limit}"));
    format!("{HEAD}{}{}", if keep { DONE_KEEP } else { DONE_DELETE }, tail(&claim))
}

/// An outcome reported and not yet written.
#[derive(Debug)]
struct Pending {
    seq: i64,
    owner: i64,
    outcome: Outcome,
    /// When it was reported: a retry's delay counts from here.
    reported: Instant,
}

/// An attempt ended and not yet written.
#[derive(Debug)]
struct Ended {
    seq: i64,
    owner: i64,
    delivery: u32,
    ended_ms: i64,
    report: AttemptReport,
}

/// What the daemon reported and the database does not have yet.
#[derive(Debug, Default)]
pub(super) struct Buffers {
    outcomes: Vec<Pending>,
    ended: Vec<Ended>,
    holders: Vec<(i64, i64, LeaseHolder, i64)>,
}

impl Buffers {
    pub(super) fn is_empty(&self) -> bool {
        self.outcomes.is_empty() && self.ended.is_empty() && self.holders.is_empty()
    }
}

/// A parameter of the write.
type Param = Box<dyn postgres::types::ToSql + Sync>;

/// The buffers as the write's parameters `$4` to `$34` (see [`HEAD`] and `DONE_*`); and
/// whether one outcome is a retry.
fn columns(b: &Buffers, keep_history: bool) -> (Vec<Param>, bool) {
    // Rows the outcomes end: their holders are not written (one row, one change per
    // statement); their attempts take the buffered holder's pid and start instead.
    let ending: BTreeSet<i64> = b.outcomes.iter().map(|p| p.seq).collect();
    let mut last_holder: HashMap<i64, &(i64, i64, LeaseHolder, i64)> = HashMap::new();
    for h in &b.holders {
        last_holder.insert(h.0, h);
    }
    let holders: Vec<_> = last_holder.values().filter(|h| !ending.contains(&h.0)).collect();
    let mut p: Vec<Param> = Vec::with_capacity(31);
    p.push(Box::new(holders.iter().map(|h| h.0).collect::<Vec<i64>>()));
    p.push(Box::new(holders.iter().map(|h| h.1).collect::<Vec<i64>>()));
    p.push(Box::new(holders.iter().map(|h| h.2.process.pid.as_raw()).collect::<Vec<i32>>()));
    let start = |h: &&&(i64, i64, LeaseHolder, i64)| {
        i64::try_from(h.2.process.start_time).unwrap_or(i64::MAX)
    };
    p.push(Box::new(holders.iter().map(start).collect::<Vec<i64>>()));
    p.push(Box::new(holders.iter().map(|h| h.2.process_group.as_raw()).collect::<Vec<i32>>()));
    p.push(Box::new(holders.iter().map(|h| h.2.process.boot_id.clone()).collect::<Vec<_>>()));
    p.push(Box::new(holders.iter().map(|h| h.3).collect::<Vec<i64>>()));

    // Without history the attempts of jobs done now go with their rows: not written at all.
    let gone: BTreeSet<i64> = if keep_history {
        BTreeSet::new()
    } else {
        b.outcomes.iter().filter(|p| p.outcome == Outcome::Done).map(|p| p.seq).collect()
    };
    let ended: Vec<&Ended> = b.ended.iter().filter(|e| !gone.contains(&e.seq)).collect();
    let held = |e: &Ended| last_holder.get(&e.seq).filter(|h| h.1 == e.owner);
    let cap = |c: Option<&Captured>| c.map(|c| (c.bytes.clone(), c.total as i64, c.dropped as i64));
    let out: Vec<_> = ended.iter().map(|e| cap(e.report.stdout.as_ref())).collect();
    let err: Vec<_> = ended.iter().map(|e| cap(e.report.stderr.as_ref())).collect();
    let usage = |f: fn(&crate::queue::ResourceUse) -> u64| -> Vec<Option<i64>> {
        ended.iter().map(|e| e.report.usage.as_ref().map(|u| f(u) as i64)).collect()
    };
    p.push(Box::new(ended.iter().map(|e| e.seq).collect::<Vec<i64>>()));
    p.push(Box::new(ended.iter().map(|e| e.owner).collect::<Vec<i64>>()));
    p.push(Box::new(ended.iter().map(|e| e.delivery as i32).collect::<Vec<i32>>()));
    let pid = |e: &&Ended| e.report.worker_pid.or(held(e).map(|h| h.2.process.pid.as_raw()));
    p.push(Box::new(ended.iter().map(pid).collect::<Vec<Option<i32>>>()));
    p.push(Box::new(ended.iter().map(|e| held(e).map(|h| h.3)).collect::<Vec<Option<i64>>>()));
    p.push(Box::new(ended.iter().map(|e| e.ended_ms).collect::<Vec<i64>>()));
    let end = |e: &&Ended| serde_json::to_string(&e.report.end).unwrap_or_default();
    p.push(Box::new(ended.iter().map(end).collect::<Vec<String>>()));
    p.push(Box::new(ended.iter().map(|e| e.report.reason.clone()).collect::<Vec<_>>()));
    for stream in [&out, &err] {
        p.push(Box::new(
            stream.iter().map(|c| c.as_ref().map(|c| c.0.clone())).collect::<Vec<_>>(),
        ));
        p.push(Box::new(stream.iter().map(|c| c.as_ref().map(|c| c.1)).collect::<Vec<_>>()));
        p.push(Box::new(stream.iter().map(|c| c.as_ref().map(|c| c.2)).collect::<Vec<_>>()));
    }
    p.push(Box::new(usage(|u| u.max_rss_kib)));
    p.push(Box::new(usage(|u| u.user_cpu_us)));
    p.push(Box::new(usage(|u| u.system_cpu_us)));

    let done: Vec<&Pending> = b.outcomes.iter().filter(|p| p.outcome == Outcome::Done).collect();
    p.push(Box::new(done.iter().map(|p| p.seq).collect::<Vec<i64>>()));
    p.push(Box::new(done.iter().map(|p| p.owner).collect::<Vec<i64>>()));

    let (mut seq, mut owner, mut state, mut delay, mut reason) =
        (Vec::<i64>::new(), Vec::<i64>::new(), Vec::<i16>::new(), Vec::<i64>::new(), Vec::new());
    let mut retried = false;
    for o in &b.outcomes {
        let (s, d, r): (i16, i64, &str) = match &o.outcome {
            Outcome::Done => continue,
            Outcome::Retry { delay, reason } => {
                retried = true;
                (STATE_READY, ms(delay.saturating_sub(o.reported.elapsed())), reason)
            }
            Outcome::DeadLetter { reason } => (STATE_DEAD, 0, reason),
            Outcome::Cancelled { reason } => (STATE_CANCELLED, 0, reason),
        };
        seq.push(o.seq);
        owner.push(o.owner);
        state.push(s);
        delay.push(d);
        reason.push(r.to_owned());
    }
    p.push(Box::new(seq));
    p.push(Box::new(owner));
    p.push(Box::new(state));
    p.push(Box::new(delay));
    p.push(Box::new(reason));
    (p, retried)
}

impl PgQueue {
    pub(super) fn buffer_outcome(&mut self, job: &Job, outcome: Outcome) {
        let seq = job.receipt.0 as i64;
        let owner = self.leases.get(&seq).copied().unwrap_or(0);
        self.buffers.outcomes.push(Pending { seq, owner, outcome, reported: Instant::now() });
    }

    pub(super) fn buffer_attempt(&mut self, job: &Job, report: AttemptReport) {
        let seq = job.receipt.0 as i64;
        let owner = self.leases.get(&seq).copied().unwrap_or(0);
        let ended_ms = super::now_ms();
        self.buffers.ended.push(Ended { seq, owner, delivery: job.attempt, ended_ms, report });
    }

    pub(super) fn buffer_holder(&mut self, job: &Job, holder: &LeaseHolder) {
        let seq = job.receipt.0 as i64;
        let owner = self.leases.get(&seq).copied().unwrap_or(0);
        self.buffers.holders.push((seq, owner, holder.clone(), super::now_ms()));
    }

    /// Writes the buffers and, when `claim` names a task, takes up to that many of its jobs:
    /// one statement, one round trip (two after a claim whose answer was lost).
    pub(super) fn write(&mut self, claim: Option<(&str, usize)>) -> Result<Vec<Job>> {
        let owner = self.owner();
        let keep = !self.retention.keep_done.is_zero();
        // Kept until the statement commits: after a failure the next write has them.
        let buffers = std::mem::take(&mut self.buffers);
        let ended = self.target.ended_channel();
        let unsure = self.unsure_claim;
        let known: Vec<i64> = self.leases.keys().copied().collect();
        let (task, max) = claim.map_or(("", 0), |(t, n)| (t, n as i64));
        let result = (|| {
            let conn = self.conn()?;
            let e = |err| Error::Postgres {
                action: "claim jobs from",
                target: String::new(),
                source: Box::new(err),
            };
            if unsure {
                // Rare (the connection dropped during a claim): its own statement first; it
                // only puts back leases this daemon does not know, so it may commit alone.
                let put_back = conn.client.execute(RELEASE_UNSEEN, &[&owner, &known]).map_err(e)?;
                if put_back > 0 {
                    tracing::warn!(
                        jobs = put_back,
                        "postgres: a claim was committed but its answer lost with the connection; those jobs are back in ready"
                    );
                }
            }
            if buffers.is_empty() && max == 0 {
                return Ok((Vec::new(), false));
            }
            let stmt = match conn.writes.get(&(keep, max)) {
                Some(s) => s.clone(),
                None => {
                    let s = conn.client.prepare(&write_sql(keep, max)).map_err(e)?;
                    conn.writes.insert((keep, max), s.clone());
                    s
                }
            };
            let (columns, retried) = columns(&buffers, keep);
            let notify = !buffers.outcomes.is_empty() || !buffers.ended.is_empty();
            let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&owner, &task, &max];
            params.extend(columns.iter().map(|p| &**p as &(dyn postgres::types::ToSql + Sync)));
            params.push(&ended);
            params.push(&notify);
            let rows = conn.client.query(&stmt, &params).map_err(e)?;
            let (summary, claimed) =
                rows.split_first().map_or((None, &[][..]), |(s, c)| (Some(s), c));
            let done = buffers.outcomes.iter().filter(|p| p.outcome == Outcome::Done).count();
            let written = summary.and_then(|s| s.get::<_, Option<i64>>(5)).unwrap_or(0) as usize;
            if written < done {
                tracing::warn!(
                    lost = done - written,
                    "postgres: outcomes of jobs whose lease was recovered elsewhere are dropped (the jobs run again)"
                );
            }
            Ok((jobs_of(claimed, task), retried))
        })();
        let result = result.map_err(|e| self.named(e, "claim jobs from"));
        self.note(&result);
        let (mut jobs, retried) = match result {
            Ok(r) => r,
            Err(e) => {
                self.buffers = buffers;
                // A claim whose commit was not confirmed may have taken jobs all the same.
                self.unsure_claim |= claim.is_some();
                return Err(e);
            }
        };
        self.unsure_claim = false;
        for p in &buffers.outcomes {
            self.leases.remove(&p.seq);
        }
        if retried {
            self.due_cache = None;
        }
        for j in &jobs {
            self.leases.insert(j.receipt.0 as i64, owner);
        }
        jobs.sort_by_key(|j| j.receipt.0);
        Ok(jobs)
    }
}

/// The jobs of `task` in claimed rows (`seq, id, routing_key, payload, attempts`).
fn jobs_of(rows: &[postgres::Row], task: &str) -> Vec<Job> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claim's limit is written into the statement, so the claim must have one to replace.
    #[test]
    fn the_write_embeds_the_claim_with_a_literal_limit() {
        assert!(CLAIM.contains("LIMIT $3"));
        let sql = write_sql(true, 7);
        assert!(sql.contains("LIMIT 7 FOR UPDATE SKIP LOCKED") && !sql.contains("LIMIT $3"));
        assert!(write_sql(false, 0).contains("DELETE FROM jobs"));
    }
}
