//! Migration 4's text, frozen: the turn functions of 31 arguments (`turn_keep`,
//! `turn_delete`), beside migration 3's. Version 6 (`turn.rs`) replaces their bodies (the
//! same signatures) so that they keep the `queue` table.

use super::turn::someone_waits;

/// The turn statement around the done CTE `d` (an UPDATE for a kept history, a DELETE
/// without): holders `$1..$7`, attempts `$8..$23` and `$31` (their starts, NULL: the
/// holder's), done `$24, $25`, this daemon `$26`, the claim's task and count `$27, $28`, the
/// ended channel `$29`, the lock space `$30`. Columns:
/// the claimed job (NULL when none), then the number of done rows written.
macro_rules! turn_sql_v4 {
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
d AS (",
            $done,
            "),
s AS (INSERT INTO stats (task, daemon, done) SELECT task, $26, COUNT(*) FROM d GROUP BY task
    ON CONFLICT (task, daemon) DO UPDATE SET done = stats.done + excluded.done),
c AS (UPDATE jobs SET state = 1, attempts = attempts + 1, lease_owner = $26,
        worker_pid = NULL, worker_start = NULL, worker_pgid = NULL, worker_boot = NULL,
        worker_started_ms = NULL
    WHERE seq = ANY(ARRAY(SELECT seq FROM jobs WHERE task = $27 AND state = 0
                  ORDER BY priority DESC, seq LIMIT $28 FOR UPDATE SKIP LOCKED))
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

/// A PL/pgSQL function `$name` around the turn statement with the done CTE `$done`. A
/// function's statement keeps one generic plan for the session (`plan_cache_mode`), where a
/// prepared statement of this size was planned again at every call (its custom plans won:
/// about 0.5 ms of server time per turn, more than running it); the shapes above (`= ANY`)
/// keep that one plan on the primary key and the claim index whatever the table holds.
macro_rules! turn_function_v4 {
    ($name:literal, $done:literal) => {
        concat!(
            "CREATE FUNCTION ",
            $name,
            "(bigint[], bigint[], int[], bigint[], int[], text[], bigint[],
    bigint[], bigint[], int[], int[], bigint[], text[], text[], bytea[], bigint[], bigint[],
    bytea[], bigint[], bigint[], bigint[], bigint[], bigint[],
    bigint[], bigint[], bigint, text, bigint, text, int, bigint[])
RETURNS TABLE (seq bigint, id text, routing_key text, payload bytea, attempts int,
    priority smallint, done bigint, told text)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $f$
#variable_conflict use_column
BEGIN
RETURN QUERY ",
            turn_sql_v4!($done),
            ";
END $f$;
"
        )
    };
}

/// Migration 4: the turn functions, with a kept history (done rows stay, state 2) and
/// without (done rows are deleted; their attempts are never written), as overloads of 31
/// arguments beside migration 3's (`turn_v3.rs`).
pub(super) const V4: &str = concat!(
    // A summary of each range of pages instead of an entry per row version: every claim and
    // every done update enters a new version of the row in each b-tree of the table, and
    // `published_ms` is only read by `jobs --since` (which a BRIN serves: rows are published
    // in page order, and `published_ms` never changes).
    // Room on each page (new pages) for the row's later versions: a write that changes no
    // indexed column (a holder) then stays on its page with no index entry at all (HOT),
    // and a claim's or done's new version stays on the page it read.
    "DROP INDEX jobs_published;
CREATE INDEX jobs_published ON jobs USING brin (published_ms);
ALTER TABLE jobs SET (fillfactor = 80);
",
    turn_function_v4!(
        "turn_keep",
        "UPDATE jobs j SET state = 2, finished_ms = now_ms(), last_error = NULL, lease_owner = NULL
    FROM unnest($24::bigint[], $25::bigint[]) AS u(seq, owner)
    WHERE j.seq = ANY($24) AND j.seq = u.seq AND j.state = 1 AND j.lease_owner = u.owner
    RETURNING j.task"
    ),
    turn_function_v4!(
        "turn_delete",
        "DELETE FROM jobs j USING unnest($24::bigint[], $25::bigint[]) AS u(seq, owner)
    WHERE j.seq = ANY($24) AND j.seq = u.seq AND j.state = 1 AND j.lease_owner = u.owner
    RETURNING j.task"
    )
);
