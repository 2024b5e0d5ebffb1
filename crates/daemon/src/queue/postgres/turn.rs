//! The loop's usual write in one statement, so one round trip and its own transaction: the
//! holders of jobs started, the attempts ended, the jobs done (with their counts), the claim
//! of the next jobs, and the `<schema>_ended` notification only when a client waits for ends.
//!
//! A notification is not free: PostgreSQL serializes every notifying commit of a database
//! under one lock and wakes every listening session (each daemon's, whatever it listens to),
//! so daemons that notified once per write queued behind each other. Clients that wait for
//! ends (`wait`, `publish --wait`, `logs -f`) hold the shared advisory lock
//! `(lock_space, -1)` while they listen ([`WAITER_LOCK`]); a write notifies only when an
//! exclusive try of that lock fails (`someone_waits!`: taken and let go at once). A write
//! that read the lock free a moment before a client took it may commit unnoticed by that
//! client: a client therefore looks at its jobs again after short waits for a while after it
//! took the lock (`records.rs`).
//!
//! A job started and done within one write (short jobs, whose worker ends them while the
//! write before is on its way) has no holder written at all ([`Buffers::fold_holders`]): its
//! row leaves the lease in that write, and its attempt takes its start from the buffer
//! (`$31`). Buffers that hold anything else take the transaction of `claim.rs` ([`fits`]):
//! outcomes other than done (a retry, a dead letter, a cancel: one statement each), and a
//! job whose holder is written with its own end otherwise (one statement cannot update a row
//! twice, and the attempt reads its start from the holder's columns).

use std::collections::{HashMap, HashSet};

use postgres::types::ToSql;

use super::claim::{Buffers, Ended};
use crate::queue::{AttemptEnd, AttemptReport, Captured, Outcome};

/// Taken shared by a client waiting for ends (`$1`: the lock space); `false` when a write
/// holds it for a moment (the client tries again on its next wait).
pub(super) const WAITER_LOCK: &str = "SELECT pg_try_advisory_lock_shared($1::int4, -1)";

/// True when a client waits for ends (the argument: the lock space's parameter): the exclusive lock is taken and
/// let go in one expression, so writers never hold it.
macro_rules! someone_waits {
    ($space:literal) => {
        concat!(
            "(CASE WHEN pg_try_advisory_lock(",
            $space,
            "::int4, -1) THEN NOT pg_advisory_unlock(",
            $space,
            "::int4, -1) ELSE true END)"
        )
    };
}
pub(super) use someone_waits;

/// The turn statement around the done CTEs `dq` and `d` (UPDATEs of `queue` then `jobs` for
/// a kept history, DELETEs without; `d` returns the tasks): holders `$1..$7`, attempts
/// `$8..$23` and `$31` (their starts, NULL: the holder's), done `$24, $25` with the worker
/// and start of a holder never written `$32, $33` (NULL: the row's), this daemon `$26`, the
/// claim's task and count `$27, $28`, the ended channel `$29`, the lock space `$30`.
/// Columns: the claimed job (NULL when none), then the number of done rows written.
macro_rules! turn_sql {
    ($done:literal) => {
        concat!(
            "WITH h AS (
    UPDATE jobs j SET worker_pid = u.pid, worker_start = u.start, worker_pgid = u.pgid,
        worker_boot = u.boot, worker_started_ms = u.at
    FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::bigint[], $5::int[], $6::text[],
                $7::bigint[]) AS u(seq, owner, pid, start, pgid, boot, at)
    WHERE j.seq = ANY($1) AND j.seq = u.seq AND j.state = 1 AND j.lease_owner = u.owner
    RETURNING 1),
a AS (
    INSERT INTO attempts (job_seq, delivery, worker_pid, started_ms, ended_ms, outcome, reason,
        stdout, stdout_total, stdout_dropped, stderr, stderr_total, stderr_dropped,
        max_rss_kib, user_cpu_us, system_cpu_us)
    SELECT u.seq, u.delivery, COALESCE(u.pid, j.worker_pid),
        COALESCE(u.started, j.worker_started_ms), u.ended, u.outcome, u.reason, u.out,
        u.out_total, u.out_dropped, u.err, u.err_total, u.err_dropped, u.rss, u.ucpu, u.scpu
    FROM unnest($8::bigint[], $9::bigint[], $10::int[], $11::int[], $12::bigint[],
                $13::text[], $14::text[], $15::bytea[], $16::bigint[], $17::bigint[],
                $18::bytea[], $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[],
                $23::bigint[], $31::bigint[])
        WITH ORDINALITY AS u(seq, owner, delivery, pid, ended, outcome, reason, out,
                out_total, out_dropped, err, err_total, err_dropped, rss, ucpu, scpu,
                started, ord)
    JOIN jobs j ON j.seq = ANY($8) AND j.seq = u.seq AND j.state = 1
        AND j.lease_owner = u.owner
    ORDER BY u.ord RETURNING 1),
",
            $done,
            ",
s AS (INSERT INTO stats (task, daemon, done) SELECT task, $26, COUNT(*) FROM d GROUP BY task
    ON CONFLICT (task, daemon) DO UPDATE SET done = stats.done + excluded.done),
cq AS (UPDATE queue SET state = 1, lease_owner = $26
    WHERE seq = ANY(ARRAY(SELECT seq FROM queue WHERE task = $27 AND state = 0
                  ORDER BY priority DESC, seq LIMIT $28 FOR UPDATE SKIP LOCKED))
    RETURNING seq),
c AS (UPDATE jobs SET state = 1, attempts = attempts + 1, lease_owner = $26,
        worker_pid = NULL, worker_start = NULL, worker_pgid = NULL, worker_boot = NULL,
        worker_started_ms = NULL
    WHERE seq = ANY(ARRAY(SELECT seq FROM cq))
    RETURNING seq, id, routing_key, payload, attempts, priority),
n AS (SELECT x.done, CASE WHEN x.done + x.ended > 0 AND ",
            someone_waits!("$30"),
            " THEN pg_notify($29, '')::text END AS told
    FROM (SELECT (SELECT COUNT(*) FROM d) AS done, (SELECT COUNT(*) FROM a) AS ended) AS x)
SELECT c.seq, c.id, c.routing_key, c.payload, c.attempts, c.priority, n.done, n.told
FROM n LEFT JOIN c ON true"
        )
    };
}

/// A PL/pgSQL function `$name` around the turn statement with the done CTEs `$done`. A
/// function's statement keeps one generic plan for the session (`plan_cache_mode`), where a
/// prepared statement of this size was planned again at every call (its custom plans won:
/// about 0.5 ms of server time per turn, more than running it); the shapes above (`= ANY`)
/// keep that one plan on the primary key and the claim index whatever the table holds.
macro_rules! turn_function {
    ($name:literal, $done:literal) => {
        concat!(
            "CREATE FUNCTION ",
            $name,
            "(bigint[], bigint[], int[], bigint[], int[], text[], bigint[],
    bigint[], bigint[], int[], int[], bigint[], text[], text[], bytea[], bigint[], bigint[],
    bytea[], bigint[], bigint[], bigint[], bigint[], bigint[],
    bigint[], bigint[], bigint, text, bigint, text, int, bigint[], int[], bigint[])
RETURNS TABLE (seq bigint, id text, routing_key text, payload bytea, attempts int,
    priority smallint, done bigint, told text)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $f$
#variable_conflict use_column
BEGIN
RETURN QUERY ",
            turn_sql!($done),
            ";
END $f$;
"
        )
    };
}

/// Migration 6's turn functions (33 arguments; those of migrations 3 and 4 dropped): claims
/// and done jobs through `queue` (`migrate.rs`). Each job's row in `queue` is changed (and
/// locked) first, then its row in `jobs`, whose update changes no indexed column of `jobs`
/// (HOT: no index entry at all). A job done cleanly keeps its worker and start on its done
/// row instead of an attempt row (`records.rs` shows the attempt from there).
pub(super) const V6_FUNCTIONS: &str = concat!(
    "DROP FUNCTION turn_keep(bigint[], bigint[], int[], bigint[], int[], text[], bigint[],
    bigint[], bigint[], int[], int[], bigint[], text[], text[], bytea[], bigint[], bigint[],
    bytea[], bigint[], bigint[], bigint[], bigint[], bigint[], bigint[], bigint[], bigint,
    text, bigint, text, int);
DROP FUNCTION turn_delete(bigint[], bigint[], int[], bigint[], int[], text[], bigint[],
    bigint[], bigint[], int[], int[], bigint[], text[], text[], bytea[], bigint[], bigint[],
    bytea[], bigint[], bigint[], bigint[], bigint[], bigint[], bigint[], bigint[], bigint,
    text, bigint, text, int);
DROP FUNCTION turn_keep(bigint[], bigint[], int[], bigint[], int[], text[], bigint[],
    bigint[], bigint[], int[], int[], bigint[], text[], text[], bytea[], bigint[], bigint[],
    bytea[], bigint[], bigint[], bigint[], bigint[], bigint[], bigint[], bigint[], bigint,
    text, bigint, text, int, bigint[]);
DROP FUNCTION turn_delete(bigint[], bigint[], int[], bigint[], int[], text[], bigint[],
    bigint[], bigint[], int[], int[], bigint[], text[], text[], bytea[], bigint[], bigint[],
    bytea[], bigint[], bigint[], bigint[], bigint[], bigint[], bigint[], bigint[], bigint,
    text, bigint, text, int, bigint[]);
",
    turn_function!(
        "turn_keep",
        "dq AS (UPDATE queue q SET state = 2, finished_ms = now_ms(), lease_owner = NULL
    FROM unnest($24::bigint[], $25::bigint[]) AS u(seq, owner)
    WHERE q.seq = ANY($24) AND q.seq = u.seq AND q.state = 1 AND q.lease_owner = u.owner
    RETURNING q.seq),
d AS (UPDATE jobs j SET state = 2, finished_ms = now_ms(), last_error = NULL,
        lease_owner = NULL, worker_pid = COALESCE(w.pid, j.worker_pid),
        worker_started_ms = COALESCE(w.started, j.worker_started_ms)
    FROM unnest($24::bigint[], $32::int[], $33::bigint[]) AS w(seq, pid, started)
    WHERE j.seq = ANY(ARRAY(SELECT seq FROM dq)) AND j.seq = w.seq RETURNING j.task)"
    ),
    turn_function!(
        "turn_delete",
        "dq AS (DELETE FROM queue q USING unnest($24::bigint[], $25::bigint[]) AS u(seq, owner)
    WHERE q.seq = ANY($24) AND q.seq = u.seq AND q.state = 1 AND q.lease_owner = u.owner
    RETURNING q.seq),
d AS (DELETE FROM jobs WHERE seq = ANY(ARRAY(SELECT seq FROM dq)) RETURNING task)"
    )
);

/// The turn with a kept history.
pub(super) const TURN_KEEP: &str = "SELECT * FROM turn_keep($1, $2, $3, $4, $5, $6, $7, $8, $9,
    $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27,
    $28, $29, $30, $31, $32, $33)";

/// The turn without history.
pub(super) const TURN_DELETE: &str = "SELECT * FROM turn_delete($1, $2, $3, $4, $5, $6, $7, $8,
    $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26,
    $27, $28, $29, $30, $31, $32, $33)";

/// Whether `b` can be written by the turn statement (see the module docs).
pub(super) fn fits(b: &Buffers) -> bool {
    if b.outcomes.iter().any(|p| p.outcome != Outcome::Done) {
        return false;
    }
    let mut held = HashSet::with_capacity(b.holders.len());
    if !b.holders.iter().all(|h| held.insert(h.0)) {
        return false;
    }
    let mut done = HashSet::with_capacity(b.outcomes.len());
    b.outcomes.iter().all(|p| !held.contains(&p.seq) && done.insert(p.seq))
        && b.ended.iter().all(|e| !held.contains(&e.seq))
}

/// The holders' columns, as arrays.
#[derive(Default)]
pub(super) struct HolderCols<'a> {
    seq: Vec<i64>,
    owner: Vec<i64>,
    pid: Vec<i32>,
    start: Vec<i64>,
    pgid: Vec<i32>,
    boot: Vec<&'a str>,
    at: Vec<i64>,
}

impl<'a> HolderCols<'a> {
    pub(super) fn of(b: &'a Buffers) -> HolderCols<'a> {
        let mut c = HolderCols::default();
        for (s, o, h, t) in &b.holders {
            c.seq.push(*s);
            c.owner.push(*o);
            c.pid.push(h.process.pid.as_raw());
            c.start.push(i64::try_from(h.process.start_time).unwrap_or(i64::MAX));
            c.pgid.push(h.process_group.as_raw());
            c.boot.push(h.process.boot_id.as_str());
            c.at.push(*t);
        }
        c
    }

    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 7] {
        [&self.seq, &self.owner, &self.pid, &self.start, &self.pgid, &self.boot, &self.at]
    }
}

/// The ended attempts' columns, as arrays.
#[derive(Default)]
pub(super) struct AttemptCols<'a> {
    seq: Vec<i64>,
    owner: Vec<i64>,
    delivery: Vec<i32>,
    pid: Vec<Option<i32>>,
    started: Vec<Option<i64>>,
    at: Vec<i64>,
    outcome: Vec<String>,
    reason: Vec<Option<&'a str>>,
    out: Vec<Option<&'a [u8]>>,
    out_total: Vec<Option<i64>>,
    out_dropped: Vec<Option<i64>>,
    err: Vec<Option<&'a [u8]>>,
    err_total: Vec<Option<i64>>,
    err_dropped: Vec<Option<i64>>,
    rss: Vec<Option<i64>>,
    ucpu: Vec<Option<i64>>,
    scpu: Vec<Option<i64>>,
}

impl<'a> AttemptCols<'a> {
    /// The attempts of `b` but those of jobs done now when the history is not kept (they go
    /// with their rows), and, when `implied` (the turn statement, which writes the worker
    /// and start on the done row), the clean ends of jobs done now ([`is_implied`]).
    pub(super) fn of(b: &'a Buffers, keep_history: bool, implied: bool) -> AttemptCols<'a> {
        let done: HashSet<i64> =
            b.outcomes.iter().filter(|p| p.outcome == Outcome::Done).map(|p| p.seq).collect();
        let mut c = AttemptCols::default();
        for e in &b.ended {
            let gone = done.contains(&e.seq) && (!keep_history || implied && is_implied(&e.report));
            if !gone {
                c.push(e);
            }
        }
        c
    }

    fn push(&mut self, e: &'a Ended) {
        let r = &e.report;
        self.seq.push(e.seq);
        self.owner.push(e.owner);
        self.delivery.push(e.delivery as i32);
        self.pid.push(r.worker_pid.or(e.started.map(|s| s.1)));
        self.started.push(e.started.map(|s| s.0));
        self.at.push(e.ended_ms);
        self.outcome.push(serde_json::to_string(&r.end).unwrap_or_default());
        self.reason.push(r.reason.as_deref());
        let (bytes, total, dropped) = captured(r.stdout.as_ref());
        self.out.push(bytes);
        self.out_total.push(total);
        self.out_dropped.push(dropped);
        let (bytes, total, dropped) = captured(r.stderr.as_ref());
        self.err.push(bytes);
        self.err_total.push(total);
        self.err_dropped.push(dropped);
        self.rss.push(r.usage.map(|u| u.max_rss_kib as i64));
        self.ucpu.push(r.usage.map(|u| u.user_cpu_us as i64));
        self.scpu.push(r.usage.map(|u| u.system_cpu_us as i64));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    /// The attempts' starts (NULL: the holder's columns): the last parameter of each statement.
    pub(super) fn started(&self) -> &(dyn ToSql + Sync) {
        &self.started
    }

    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 16] {
        [
            &self.seq,
            &self.owner,
            &self.delivery,
            &self.pid,
            &self.at,
            &self.outcome,
            &self.reason,
            &self.out,
            &self.out_total,
            &self.out_dropped,
            &self.err,
            &self.err_total,
            &self.err_dropped,
            &self.rss,
            &self.ucpu,
            &self.scpu,
        ]
    }
}

/// Whether `report` is the clean end of a longlived attempt (the worker answered `done`,
/// nothing on stdout or stderr, no resource use of its own, no reason): a job done by it
/// keeps no attempt row, its done row holds the worker, the start and the end, and
/// `records.rs` shows the attempt from there (as the SQLite queue does).
pub(super) fn is_implied(report: &AttemptReport) -> bool {
    matches!(&report.end, AttemptEnd::Replied { outcome } if outcome == IMPLIED_OUTCOME)
        && report.reason.is_none()
        && report.stdout.is_none()
        && report.stderr.is_none()
        && report.usage.is_none()
}

/// The worker's answer of an attempt [`is_implied`] holds for.
pub(super) const IMPLIED_OUTCOME: &str = "done";

/// One captured stream as columns: bytes, total, dropped.
fn captured(c: Option<&Captured>) -> (Option<&[u8]>, Option<i64>, Option<i64>) {
    match c {
        Some(c) => (Some(&c.bytes[..]), Some(c.total as i64), Some(c.dropped as i64)),
        None => (None, None, None),
    }
}

/// What a turn writes besides the buffers: this daemon, the claim, the channel and lock space.
pub(super) struct Turn<'a> {
    pub(super) owner: i64,
    pub(super) task: &'a str,
    pub(super) max: i64,
    pub(super) ended: &'a str,
    pub(super) space: i32,
}

/// Runs the turn statement `stmt` for `b` (which [`fits`]); returns its rows (the claimed
/// jobs, or one row of NULLs) and the number of done rows written.
pub(super) fn run(
    client: &mut postgres::Client,
    stmt: &postgres::Statement,
    b: &Buffers,
    keep_history: bool,
    turn: &Turn<'_>,
) -> Result<(Vec<postgres::Row>, usize), postgres::Error> {
    let holders = HolderCols::of(b);
    let attempts = AttemptCols::of(b, keep_history, true);
    let done_seq: Vec<i64> = b.outcomes.iter().map(|p| p.seq).collect();
    let done_owner: Vec<i64> = b.outcomes.iter().map(|p| p.owner).collect();
    // The worker and start of each done job whose holder was never written (folded).
    let started: HashMap<i64, (i64, i32)> =
        b.ended.iter().filter_map(|e| e.started.map(|s| (e.seq, s))).collect();
    let done_pid: Vec<Option<i32>> =
        b.outcomes.iter().map(|p| started.get(&p.seq).map(|s| s.1)).collect();
    let done_start: Vec<Option<i64>> =
        b.outcomes.iter().map(|p| started.get(&p.seq).map(|s| s.0)).collect();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(33);
    params.extend(holders.params());
    params.extend(attempts.params());
    params.extend([
        &done_seq as &(dyn ToSql + Sync),
        &done_owner,
        &turn.owner,
        &turn.task,
        &turn.max,
        &turn.ended,
        &turn.space,
        attempts.started(),
        &done_pid,
        &done_start,
    ]);
    let mut rows = client.query(stmt, &params)?;
    let written = rows.first().map_or(0, |r| r.get::<_, i64>(6)) as usize;
    rows.retain(|r| r.get::<_, Option<i64>>(0).is_some());
    Ok((rows, written))
}
