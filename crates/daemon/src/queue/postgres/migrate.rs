//! Versioned migrations: the schema's tables, created and upgraded at start (and by
//! `procyard-daemon migrate`) under a transaction-level advisory lock, so daemons starting at
//! once migrate once and the others wait for it and find the work done.
//!
//! Tables (in the configured schema):
//! - `jobs`: one row per job and receiving task, its record; `state` is one of the `STATE_*`
//!   codes in `mod.rs`; delayed jobs and retries wait in state 5 until `not_before` (ms,
//!   database clock; only delayed jobs have one); a leased row names its daemon
//!   (`lease_owner` = `daemons.no`) and its worker.
//! - `queue` (version 6): one row per job but the delayed ones, with the columns that pick
//!   jobs out (task, priority, state, lease, concurrency key, end time). Every change of a
//!   job's state changes its row here first (its row lock orders claims, cancels and
//!   outcomes), then its record in `jobs`.
//! - `attempts`: one row per ended attempt (bounded output, resource use), deleted with
//!   its job.
//! - `daemons`: one row per running daemon; alive while its session holds the advisory lock
//!   `(lock_space, no)`.
//! - `stats`: jobs done per task and daemon (one row per daemon: no hot row shared by all).
//! - `schedules`: one row per `[[schedule]]` (last due time fired, paused), row-locked by
//!   the daemon that fires it; `rate_buckets`: one token bucket per rate-limited task.
//! - `migrations`: the versions applied.
//!
//! Functions: `now_ms()`, and (version 3, `turn_v3.rs`) `turn_keep` and `turn_delete`, the
//! loop's usual write in one call; version 4 (`turn_v4.rs`) adds their overloads with the
//! attempts' starts (a job started and done in one write has no holder written); version 6
//! (`turn.rs`) gives those overloads bodies that go through `queue`.
//!
//! The partial indexes hold only the rows they serve, so a history of done jobs or a backlog
//! of delayed ones costs a claim nothing: `queue_ready (task, priority DESC, seq) WHERE state
//! = 0` gives a claim the rows it takes in claim order (higher priority first, then FIFO),
//! `jobs_delayed (not_before) WHERE not_before IS NOT NULL` the next due time and the jobs
//! that fell due, `jobs_unique (task, unique_key)` the unique keys, `queue_keyed (task,
//! limit_key) WHERE state = 1` the running jobs per concurrency key, `queue_leased
//! (lease_owner) WHERE state = 1` a dead daemon's leases, `queue_dead (task, seq) WHERE state
//! = 3` the dead letters, `queue_finished (finished_ms, seq) WHERE state IN (2, 4)` the
//! pruning. No index of `jobs` is over a column that a claim or an outcome changes, so
//! their updates of `jobs` are HOT (the new row version on the same page, no index entry):
//! up to version 5 each entered a new entry in every b-tree of `jobs`, whose depth grew with
//! the delayed backlog. Version 4 made `jobs_published` a BRIN and version 5 a b-tree again
//! (the BRIN cost a claim more pages than it saved); version 4 also leaves a fifth of each
//! new page of `jobs` free (`fillfactor`) for those HOT writes.

use postgres::Client;

use super::conn::Target;
use crate::Result;

/// The first version: every table.
const V1: &str = "
CREATE FUNCTION now_ms() RETURNS bigint LANGUAGE sql STABLE AS
    $$ SELECT (extract(epoch FROM statement_timestamp()) * 1000)::bigint $$;
CREATE TABLE jobs (
    seq               bigserial PRIMARY KEY,
    id                text NOT NULL UNIQUE,
    task              text NOT NULL,
    routing_key       text NOT NULL,
    payload           bytea NOT NULL,
    state             smallint NOT NULL,
    attempts          integer NOT NULL DEFAULT 0,
    not_before        bigint NOT NULL,
    lease_owner       bigint,
    published_ms      bigint NOT NULL,
    finished_ms       bigint,
    last_error        text,
    worker_pid        integer,
    worker_start      bigint,
    worker_pgid       integer,
    worker_boot       text,
    worker_started_ms bigint
);
CREATE INDEX jobs_ready ON jobs (task, not_before, seq) WHERE state = 0;
CREATE INDEX jobs_due ON jobs (not_before) WHERE state = 0;
CREATE INDEX jobs_leased ON jobs (lease_owner) WHERE state = 1;
CREATE INDEX jobs_dead ON jobs (task, seq) WHERE state = 3;
CREATE INDEX jobs_finished ON jobs (finished_ms, seq) WHERE state IN (2, 4);
CREATE INDEX jobs_published ON jobs (published_ms);
CREATE TABLE attempts (
    n              bigserial PRIMARY KEY,
    job_seq        bigint NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
    delivery       integer NOT NULL,
    worker_pid     integer,
    started_ms     bigint,
    ended_ms       bigint,
    outcome        text,
    reason         text,
    stdout         bytea,
    stdout_total   bigint,
    stdout_dropped bigint,
    stderr         bytea,
    stderr_total   bigint,
    stderr_dropped bigint,
    max_rss_kib    bigint,
    user_cpu_us    bigint,
    system_cpu_us  bigint
);
CREATE INDEX attempts_job ON attempts (job_seq);
CREATE TABLE daemons (
    no          bigserial PRIMARY KEY,
    name        text NOT NULL,
    host        text NOT NULL,
    os_pid      integer NOT NULL,
    session_pid integer NOT NULL,
    started_ms  bigint NOT NULL
);
CREATE TABLE stats (
    task   text NOT NULL,
    daemon bigint NOT NULL,
    done   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (task, daemon)
);
";

/// The scheduling version (issue #17 on PostgreSQL): priorities, delayed jobs in a state of
/// their own (5) so the claim index holds only ready rows in claim order, unique keys,
/// headers, the per-key concurrency key of running jobs, schedules and rate buckets.
const V2: &str = "
ALTER TABLE jobs
    ADD COLUMN priority     smallint NOT NULL DEFAULT 5,
    ADD COLUMN headers      text,
    ADD COLUMN unique_key   text,
    ADD COLUMN unique_until bigint,
    ADD COLUMN limit_key    text;
UPDATE jobs SET state = 5 WHERE state = 0 AND not_before > now_ms();
DROP INDEX jobs_ready;
DROP INDEX jobs_due;
CREATE INDEX jobs_ready ON jobs (task, priority DESC, seq) WHERE state = 0;
CREATE INDEX jobs_delayed ON jobs (not_before) WHERE state = 5;
CREATE UNIQUE INDEX jobs_unique ON jobs (task, unique_key) WHERE unique_key IS NOT NULL;
CREATE INDEX jobs_keyed ON jobs (task, limit_key) WHERE state = 1 AND limit_key IS NOT NULL;
CREATE TABLE schedules (
    name        text PRIMARY KEY,
    spec        text NOT NULL,
    since_ms    bigint NOT NULL,
    last_due_ms bigint,
    last_run_ms bigint,
    last_job    text,
    paused      boolean NOT NULL DEFAULT false
);
CREATE TABLE rate_buckets (
    task   text PRIMARY KEY,
    tokens double precision NOT NULL,
    at_ms  bigint NOT NULL
);
";

/// Version 4's BRIN on `published_ms` back to a b-tree: a BRIN insert touched about 12
/// buffers per new row version (a claim: 35 pages against 29 with the b-tree, `EXPLAIN
/// (ANALYZE, BUFFERS)`, 10,000 ready jobs), more than the b-tree's descent it saved.
const V5: &str = "DROP INDEX jobs_published;
CREATE INDEX jobs_published ON jobs (published_ms);";

/// The queue's own table (issues #17 and #20): every job but the delayed ones has a row in
/// `queue` with its state, lease, concurrency key and end time, and the partial indexes that
/// claims, recovery, dead letters and pruning read are on it; `jobs` keeps the records, with
/// indexes only over columns that a claim or an outcome never changes. A claim's or an
/// outcome's update of `jobs` is then HOT (no new index entry in any index of `jobs`): a
/// backlog of delayed jobs (rows of `jobs` only) no longer deepens the b-trees a claim
/// writes into. A delayed job is the only one with a `not_before` (`jobs_delayed_due`), so
/// `jobs_delayed` holds the delayed jobs alone with no predicate over `state`.
const V6: &str = "ALTER TABLE jobs ALTER COLUMN not_before DROP NOT NULL;
UPDATE jobs SET not_before = NULL WHERE state <> 5;
CREATE TABLE queue (
    seq         bigint PRIMARY KEY,
    task        text NOT NULL,
    priority    smallint NOT NULL,
    state       smallint NOT NULL,
    lease_owner bigint,
    limit_key   text,
    finished_ms bigint
);
INSERT INTO queue (seq, task, priority, state, lease_owner, limit_key, finished_ms)
    SELECT seq, task, priority, state, lease_owner, limit_key, finished_ms FROM jobs
    WHERE state <> 5;
CREATE INDEX queue_ready ON queue (task, priority DESC, seq) WHERE state = 0;
CREATE INDEX queue_leased ON queue (lease_owner) WHERE state = 1;
CREATE INDEX queue_keyed ON queue (task, limit_key) WHERE state = 1 AND limit_key IS NOT NULL;
CREATE INDEX queue_dead ON queue (task, seq) WHERE state = 3;
CREATE INDEX queue_finished ON queue (finished_ms, seq) WHERE state IN (2, 4);
DROP INDEX jobs_ready, jobs_delayed, jobs_leased, jobs_dead, jobs_finished, jobs_keyed;
CREATE INDEX jobs_delayed ON jobs (not_before) WHERE not_before IS NOT NULL;
ALTER TABLE jobs ADD CONSTRAINT jobs_delayed_due CHECK ((state = 5) = (not_before IS NOT NULL));
";

/// Every version, in order, each in parts run one after the other.
const MIGRATIONS: &[(i32, &[&str])] = &[
    (1, &[V1]),
    (2, &[V2]),
    (3, &[super::turn_v3::V3]),
    (4, &[super::turn_v4::V4]),
    (5, &[V5]),
    (6, &[V6, super::turn::V6_FUNCTIONS]),
];

/// The newest version this build knows.
pub(super) fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// The version the schema is at (0: not created).
fn current(client: &mut Client, target: &Target) -> Result<i32> {
    let table = format!("{}.migrations", target.schema);
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .map_err(|e| target.err("read the schema version of", e))?;
    if !row.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one(&format!("SELECT COALESCE(MAX(version), 0) FROM {table}"), &[])
        .map_err(|e| target.err("read the schema version of", e))?;
    Ok(row.get(0))
}

/// Brings the schema to the latest version; returns the versions applied (none when it was
/// up to date). A schema newer than this build is refused.
pub(super) fn migrate(client: &mut Client, target: &Target) -> Result<Vec<i32>> {
    migrate_to(client, target, latest())
}

/// Brings the schema to version `upto` (at most the latest; tests of an upgrade make an
/// older schema with it).
pub(super) fn migrate_to(client: &mut Client, target: &Target, upto: i32) -> Result<Vec<i32>> {
    let upto = upto.min(latest());
    let now = current(client, target)?;
    if now > latest() {
        return Err(target.err(
            "use",
            format!("its schema is at version {now}, newer than this build knows ({})", latest()),
        ));
    }
    if now >= upto {
        return Ok(Vec::new());
    }
    let e = |err| target.err("migrate", err);
    let schema = &target.schema;
    let mut tx = client.transaction().map_err(e)?;
    // Daemons starting at once: one migrates, the others wait here and then find it done.
    tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&target.lock_space()]).map_err(e)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         SET LOCAL search_path TO {schema};
         CREATE TABLE IF NOT EXISTS migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .map_err(e)?;
    let done: i32 =
        tx.query_one("SELECT COALESCE(MAX(version), 0) FROM migrations", &[]).map_err(e)?.get(0);
    let mut applied = Vec::new();
    for (version, parts) in MIGRATIONS.iter().filter(|m| m.0 > done && m.0 <= upto) {
        for sql in *parts {
            tx.batch_execute(sql).map_err(e)?;
        }
        tx.execute("INSERT INTO migrations (version) VALUES ($1)", &[version]).map_err(e)?;
        applied.push(*version);
    }
    tx.commit().map_err(e)?;
    if !applied.is_empty() {
        tracing::info!(schema = %schema, versions = ?applied, "migrated the PostgreSQL queue");
    }
    Ok(applied)
}
