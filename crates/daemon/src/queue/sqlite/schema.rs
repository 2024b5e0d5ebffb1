//! The queue file's tables and how a connection to it is set up: WAL (`synchronous` as the
//! `[queue] durability` says), plans kept prepared, a short wait for a lock ([`on_busy`]),
//! an integrity check for a daemon, the schema created and older files migrated.
//!
//! One row per job and receiving task in `jobs` (its state one of the `STATE_*` codes below;
//! done and cancelled rows stay for the retention window), one row per attempt in `attempts`
//! (with its bounded output), the count of jobs done per task in `stats`, and in `owners` the
//! boot of each daemon whose leases leave it out (`holders::register_owner`).

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::{files, holders};
use crate::queue::{Durability, OpenMode};
use crate::{Error, Result};

// The indexes hold only the rows they serve, so a history of a million done jobs costs the
// claim, the retry times, the depths and the dead letters nothing: `jobs_next` (claims, and
// the count of jobs ready now), `jobs_aside` (the rows out of the claim order: leased, dead,
// delayed; retry times, depths, dead letters), `jobs_finished` (pruning). A row ready now is
// in `jobs_next` alone: a claim moves it out of one index into `jobs_aside`, not out of two.
// Queries that use a partial index name the states as literals (the planner cannot see
// through a bound parameter), so the codes below are written as numbers in the SQL too; a
// query over delayed rows says `not_before > 0`, the term that puts them in `jobs_aside`.

/// A job that can be claimed (now, or once `not_before` has passed: a retry).
pub(crate) const STATE_READY: i64 = 0;
/// A job claimed by the daemon holding the lock (`lease_owner`).
pub(crate) const STATE_LEASED: i64 = 1;
/// A job done (kept until pruned by the retention).
pub(crate) const STATE_DONE: i64 = 2;
/// A dead letter, until requeued.
pub(crate) const STATE_DEAD: i64 = 3;
/// A job cancelled (kept until pruned by the retention, like a done one).
pub(crate) const STATE_CANCELLED: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    task         TEXT NOT NULL,
    routing_key  TEXT NOT NULL,
    payload      BLOB NOT NULL,
    state        INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    not_before   INTEGER NOT NULL DEFAULT 0,
    lease_owner  TEXT,
    published_ms INTEGER NOT NULL,
    finished_ms  INTEGER,
    last_error   TEXT,
    priority     INTEGER NOT NULL DEFAULT 5,
    unique_key   TEXT,
    unique_until INTEGER,
    headers      TEXT
);
DROP INDEX IF EXISTS jobs_claim;
DROP INDEX IF EXISTS jobs_ready;
DROP INDEX IF EXISTS jobs_due;
DROP INDEX IF EXISTS jobs_waiting;
CREATE INDEX IF NOT EXISTS jobs_aside ON jobs(state, not_before, task)
    WHERE state = 1 OR state = 3 OR not_before > 0;
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_ms) WHERE state IN (2, 4);
CREATE TABLE IF NOT EXISTS attempts (
    n              INTEGER PRIMARY KEY,
    job_seq        INTEGER NOT NULL,
    delivery       INTEGER NOT NULL,
    worker_pid     INTEGER,
    started_ms     INTEGER,
    ended_ms       INTEGER,
    outcome        TEXT,
    reason         TEXT,
    stdout         BLOB,
    stdout_total   INTEGER,
    stdout_dropped INTEGER,
    stderr         BLOB,
    stderr_total   INTEGER,
    stderr_dropped INTEGER,
    max_rss_kib    INTEGER,
    user_cpu_us    INTEGER,
    system_cpu_us  INTEGER
);
CREATE INDEX IF NOT EXISTS attempts_job ON attempts(job_seq);
CREATE TABLE IF NOT EXISTS schedules (
    name         TEXT PRIMARY KEY,
    spec         TEXT NOT NULL,
    since_ms     INTEGER NOT NULL,
    last_due_ms  INTEGER,
    last_run_ms  INTEGER,
    last_job     TEXT,
    paused       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS stats (
    task TEXT PRIMARY KEY,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT PRIMARY KEY,
    boot  TEXT NOT NULL
);
";

/// The columns `jobs` gained for scheduling: priority, unique key (held until a time, when
/// published with `--unique-for`) and headers (a JSON object).
const JOB_SCHEDULING_COLUMNS: [(&str, &str); 4] = [
    ("priority", "INTEGER NOT NULL DEFAULT 5"),
    ("unique_key", "TEXT"),
    ("unique_until", "INTEGER"),
    ("headers", "TEXT"),
];

/// The indexes over the scheduling columns, made once the columns exist (an older file gains
/// them first). `jobs_next` holds only the rows a claim may take now (ready, not delayed:
/// `not_before = 0`), in claim order — priority first, then publish order — so a claim reads
/// the rows it takes and nothing else, however many jobs wait for a later time. A delayed job
/// that falls due is read from `jobs_aside` in due order and joins the order in the daemon's
/// memory, leased from there with one write (`joined.rs`); another task's due job met on the
/// way, or any due job for a task with a concurrency key, enters `jobs_next` (`not_before = 0`).
/// `jobs_unique` makes a unique key the store's rule, not a read-then-write.
const SCHEDULING_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS jobs_next ON jobs(task, priority DESC, seq)
    WHERE state = 0 AND not_before = 0;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique ON jobs(task, unique_key)
    WHERE unique_key IS NOT NULL;
";

/// The column `stats` gained for the count of jobs published per task (`/metrics`).
const STATS_COLUMNS: [(&str, &str); 1] = [("published", "INTEGER NOT NULL DEFAULT 0")];

/// The columns `attempts` gained after it was first made: what the attempt's process cost.
const ATTEMPT_USAGE_COLUMNS: [(&str, &str); 3] =
    [("max_rss_kib", "INTEGER"), ("user_cpu_us", "INTEGER"), ("system_cpu_us", "INTEGER")];

/// Adds the `columns` that `table` lacks (a queue file made by an older version). The check
/// and the change run in one immediate transaction, so two processes opening an old file at
/// once cannot both add a column.
pub(super) fn add_columns(
    conn: &mut Connection,
    table: &str,
    columns: &[(&'static str, &'static str)],
) -> rusqlite::Result<()> {
    if missing_columns(conn, table, columns)?.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (name, kind) in missing_columns(&tx, table, columns)? {
        tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {kind}"))?;
    }
    tx.commit()
}

/// The `columns` that `table` lacks.
pub(super) fn missing_columns(
    conn: &Connection,
    table: &str,
    columns: &[(&'static str, &'static str)],
) -> rusqlite::Result<Vec<(&'static str, &'static str)>> {
    let mut out = Vec::new();
    for &(name, kind) in columns {
        let present: Option<i64> = conn
            .query_row("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2", [table, name], |r| {
                r.get(0)
            })
            .optional()?;
        if present.is_none() {
            out.push((name, kind));
        }
    }
    Ok(out)
}

/// Opens the database at `path` (already created private), configured, checked (a daemon
/// refuses a corrupt file), with the current schema.
pub(crate) fn connect(path: &Path, mode: OpenMode) -> Result<Connection> {
    connect_with(path, mode, Durability::Crash)
}

/// [`connect`] with the commits' `durability` (`synchronous` setting).
pub(crate) fn connect_with(
    path: &Path,
    mode: OpenMode,
    durability: Durability,
) -> Result<Connection> {
    let q = |action, e| Error::queue(action, path, e);
    let mut conn = Connection::open(path).map_err(|e| q("open", e))?;
    conn.busy_handler(Some(on_busy)).map_err(|e| q("configure", e))?;
    // Plans stay as prepared: otherwise a new `LIMIT` value re-prepares the claim.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(|e| q("configure", e))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| q("enable WAL on", e))?;
    conn.pragma_update(None, "synchronous", durability.synchronous())
        .map_err(|e| q("configure", e))?;
    if mode == OpenMode::Daemon {
        // Its own connection: see `quick_check`.
        let mut check = Connection::open(path).map_err(|e| q("open", e))?;
        check.busy_handler(Some(on_busy)).map_err(|e| q("configure", e))?;
        files::quick_check(&check, path)?;
    }
    conn.execute_batch(SCHEMA).map_err(|e| q("create the schema of", e))?;
    if mode == OpenMode::Daemon {
        // `jobs_aside` replaces it. Only a daemon drops it: a client of this version beside
        // a daemon of the last one (which reads it `INDEXED BY`) leaves it, and the daemon
        // keeps both up to date until it is restarted.
        conn.execute_batch("DROP INDEX IF EXISTS jobs_active")
            .map_err(|e| q("drop the old index of", e))?;
    }
    holders::migrate(&mut conn).map_err(|e| q("add the lease holder columns to", e))?;
    add_columns(&mut conn, "attempts", &ATTEMPT_USAGE_COLUMNS)
        .map_err(|e| q("add the resource use columns to", e))?;
    add_columns(&mut conn, "jobs", &JOB_SCHEDULING_COLUMNS)
        .map_err(|e| q("add the scheduling columns to", e))?;
    add_columns(&mut conn, "stats", &STATS_COLUMNS)
        .map_err(|e| q("add the publish count to", e))?;
    conn.execute_batch(SCHEDULING_INDEXES).map_err(|e| q("index the scheduling columns of", e))?;
    Ok(conn)
}

/// How long a statement waits for a lock that another connection holds before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The first wait for a lock; it doubles up to [`BUSY_WAIT_MOST`].
const BUSY_WAIT_FIRST: Duration = Duration::from_micros(20);
const BUSY_WAIT_MOST: Duration = Duration::from_millis(1);
/// Doublings from [`BUSY_WAIT_FIRST`] before the waits are [`BUSY_WAIT_MOST`] each.
const BUSY_RAMP: u32 = 6;

/// The wait before try `n` (from 0) for a lock, `None` once [`BUSY_TIMEOUT`] is spent.
fn busy_wait(n: u32) -> Option<Duration> {
    let ramp = n.min(BUSY_RAMP);
    let waited = BUSY_WAIT_FIRST * ((1 << ramp) - 1) + BUSY_WAIT_MOST * (n - ramp);
    if waited >= BUSY_TIMEOUT {
        return None;
    }
    Some(if n < BUSY_RAMP { BUSY_WAIT_FIRST * (1 << n) } else { BUSY_WAIT_MOST })
}

/// The busy handler (SQLite calls it with how many times it already did for this lock):
/// sleeps and answers `true` to try again, `false` once [`BUSY_TIMEOUT`] is spent.
///
/// SQLite's own handler (`busy_timeout`) sleeps 1 ms at the least, then 2, 5, 10 ms: a claim
/// that met a publisher's commit (a lock held for well under a millisecond) lost a whole
/// millisecond, and so did the publisher. Measured on an idle daemon, 300 publishes one at a
/// time: the loop slept 6 times and the publisher 5, and publish→done at p99 was 1.4–2.5 ms
/// against 0.15 ms at p50. This one starts at 20 µs and doubles to 1 ms.
pub(super) fn on_busy(n: i32) -> bool {
    match busy_wait(u32::try_from(n).unwrap_or(u32::MAX)) {
        Some(wait) => {
            std::thread::sleep(wait);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opening twice (a client beside a daemon, a restart) keeps the file as it is, in WAL.
    #[test]
    fn schema_is_created_once_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let conn = connect(&path, OpenMode::Daemon).unwrap();
        conn.execute(
            "INSERT INTO jobs (id, task, routing_key, payload, state, published_ms)
             VALUES ('a', 't', 'k', x'00', ?1, 0)",
            [STATE_READY],
        )
        .unwrap();
        drop(conn);
        let again = connect(&path, OpenMode::Client).unwrap();
        let n: i64 = again.query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0)).unwrap();
        let journal: String = again.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!((n, journal.as_str()), (1, "wal"));
    }

    /// `durability = "power"` syncs every commit (`synchronous = FULL`, 2); `"crash"` (the
    /// default) leaves it to checkpoints (`NORMAL`, 1). Both stay in WAL.
    #[test]
    fn durability_sets_synchronous() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        for (durability, level) in [(Durability::Crash, 1), (Durability::Power, 2)] {
            let conn = connect_with(&path, OpenMode::Client, durability).unwrap();
            let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
            let journal: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
            assert_eq!((sync, journal.as_str()), (level, "wal"), "{durability:?}");
        }
        let default = connect(&path, OpenMode::Client).unwrap();
        let sync: i64 = default.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 1);
    }

    /// A queue file whose `attempts` predate the resource use gains its columns and keeps its
    /// rows.
    #[test]
    fn old_attempts_table_gains_the_usage_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE attempts (n INTEGER PRIMARY KEY, job_seq INTEGER NOT NULL,
                 delivery INTEGER NOT NULL, worker_pid INTEGER, started_ms INTEGER,
                 ended_ms INTEGER, outcome TEXT, reason TEXT, stdout BLOB, stdout_total INTEGER,
                 stdout_dropped INTEGER, stderr BLOB, stderr_total INTEGER,
                 stderr_dropped INTEGER);
             INSERT INTO attempts (job_seq, delivery) VALUES (7, 1);",
        )
        .unwrap();
        drop(old);
        let mut conn = connect(&path, OpenMode::Daemon).unwrap();
        assert!(missing_columns(&conn, "attempts", &ATTEMPT_USAGE_COLUMNS).unwrap().is_empty());
        add_columns(&mut conn, "attempts", &ATTEMPT_USAGE_COLUMNS).unwrap();
        let row: (i64, Option<i64>) = conn
            .query_row("SELECT job_seq, max_rss_kib FROM attempts", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(row, (7, None));
    }

    /// A queue file from before scheduling: its jobs gain the default priority (5) and no
    /// unique key, keep their rows, and a retry that was waiting is claimable once due.
    #[test]
    fn old_jobs_table_gains_the_scheduling_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
                 task TEXT NOT NULL, routing_key TEXT NOT NULL, payload BLOB NOT NULL,
                 state INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                 not_before INTEGER NOT NULL DEFAULT 0, lease_owner TEXT,
                 published_ms INTEGER NOT NULL, finished_ms INTEGER, last_error TEXT);
             CREATE INDEX jobs_waiting ON jobs(task, state, seq, not_before)
                 WHERE state = 0 OR state = 1;
             INSERT INTO jobs (id, task, routing_key, payload, state, published_ms, not_before)
                 VALUES ('a', 't', 'k', x'00', 0, 0, 5);",
        )
        .unwrap();
        drop(old);
        let conn = connect(&path, OpenMode::Daemon).unwrap();
        assert!(missing_columns(&conn, "jobs", &JOB_SCHEDULING_COLUMNS).unwrap().is_empty());
        let row: (String, i64, Option<String>) = conn
            .query_row("SELECT id, priority, unique_key FROM jobs", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(row, ("a".to_owned(), 5, None));
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (index, present) in [
            ("jobs_next", true),
            ("jobs_aside", true),
            ("jobs_waiting", false),
            ("jobs_active", false),
        ] {
            assert_eq!(indexes.iter().any(|i| i == index), present, "{index}: {indexes:?}");
        }
    }

    /// A file made when rows ready now were also in `jobs_active`: a client opening it leaves
    /// the index (a daemon of that version may be serving the file and reads it `INDEXED BY`),
    /// a daemon drops it; `jobs_aside` is made either way, and ready, delayed, leased and dead
    /// rows are all counted where they are.
    #[test]
    fn jobs_active_gives_way_to_jobs_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let conn = connect(&path, OpenMode::Client).unwrap();
        conn.execute_batch(
            "DROP INDEX jobs_aside;
             CREATE INDEX jobs_active ON jobs(state, not_before, task)
                 WHERE state = 0 OR state = 1 OR state = 3;
             INSERT INTO jobs (id, task, routing_key, payload, state, not_before, published_ms)
             VALUES ('r', 't', 'k', x'00', 0, 0, 0), ('d', 't', 'k', x'00', 0, 9e15, 0),
                    ('l', 't', 'k', x'00', 1, 0, 0), ('x', 't', 'k', x'00', 3, 0, 0);",
        )
        .unwrap();
        drop(conn);
        let indexes = || -> Vec<String> {
            let conn = Connection::open(&path).unwrap();
            let mut st = conn
                .prepare(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs'",
                )
                .unwrap();
            st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        let bind = crate::queue::TaskBinding {
            name: "t".into(),
            routing_keys: vec!["#".into()],
            max_attempts: 3,
        };
        for (mode, active) in [(OpenMode::Client, true), (OpenMode::Daemon, false)] {
            let mut queue = super::super::SqliteQueue::open(&path, mode).unwrap();
            crate::queue::QueueBackend::bind(&mut queue, std::slice::from_ref(&bind)).unwrap();
            let d = &crate::queue::QueueBackend::depths(&mut queue).unwrap()["t"];
            assert_eq!((d.ready, d.delayed, d.in_flight, d.dead), (1, Some(1), 1, Some(1)));
            drop(queue);
            let names = indexes();
            assert!(names.iter().any(|i| i == "jobs_aside"), "{mode:?}: {names:?}");
            assert_eq!(names.iter().any(|i| i == "jobs_active"), active, "{mode:?}: {names:?}");
        }
    }

    /// The hot queries use the partial indexes (so a history of done jobs costs them nothing)
    /// and never sort: a plan that walked or sorted every ready row once cut throughput by 5×.
    #[test]
    fn hot_queries_use_the_partial_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = connect(&dir.path().join("q.db"), OpenMode::Daemon).unwrap();
        let plan = |sql: &str| -> String {
            let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let params = vec![1i64; st.parameter_count()];
            let rows = st
                .query_map(rusqlite::params_from_iter(params), |r| r.get::<_, String>(3))
                .unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
        };
        let claim = plan(
            "SELECT seq FROM jobs INDEXED BY jobs_next WHERE task = ?1 AND state = 0
             AND not_before = 0 ORDER BY priority DESC, seq LIMIT ?2",
        );
        assert!(claim.contains("jobs_next") && !claim.contains("TEMP B-TREE"), "{claim}");
        let promote = plan(
            "SELECT seq FROM jobs INDEXED BY jobs_aside
             WHERE state = 0 AND not_before > 0 AND not_before <= ?1",
        );
        assert!(promote.contains("jobs_aside (state=? AND not_before>? AND"), "{promote}");
        // The claim's read of due rows from its cursor seeks to the cursor's time and task
        // and walks on in the index's order (no sort); it passes over the rows of that time
        // and task that joined already (a few hundred at most: it reads only when few are left).
        let join = plan(
            "SELECT not_before, task, seq, priority FROM jobs INDEXED BY jobs_aside
             WHERE state = 0 AND likely(not_before > 0) AND (not_before, task, seq) > (?2, ?3, ?4)
               AND not_before <= ?1
             ORDER BY not_before, task, seq LIMIT ?5",
        );
        assert!(
            join.contains("INDEX jobs_aside (state=? AND (not_before,task)>(?,?)")
                && !join.contains("TEMP B-TREE"),
            "{join}"
        );
        let delayed = plan("SELECT MIN(not_before) FROM jobs WHERE state = 0 AND not_before > 0");
        assert!(delayed.contains("jobs_aside"), "{delayed}");
        // Jobs ready now are counted in `jobs_next` (they are not in `jobs_aside`), the others
        // in `jobs_aside`; never a walk of the table.
        let ready = plan(
            "SELECT task, 0, COUNT(*), ?1 - ?1 FROM jobs WHERE state = 0 AND not_before = 0
             GROUP BY task",
        );
        assert!(ready.contains("COVERING INDEX jobs_next") && !ready.contains("TEMP"), "{ready}");
        for depth in [
            "SELECT task, state, COUNT(*), SUM(not_before > ?1) FROM jobs
             WHERE state = 0 AND not_before > 0 GROUP BY task",
            "SELECT task, COUNT(*) FROM jobs WHERE state = 1 GROUP BY task",
            "SELECT task, COUNT(*) FROM jobs WHERE state = 3 GROUP BY task",
        ] {
            let depth = plan(depth);
            assert!(depth.contains("jobs_aside"), "{depth}");
        }
        let due = plan(
            "SELECT MIN(not_before) FROM jobs WHERE state = 0 AND likely(not_before > 0)
             AND not_before > ?1",
        );
        assert!(due.contains("jobs_aside"), "{due}");
        // A range of the index (SEARCH), never a walk of it (SCAN) that ends only at a match.
        let prune = plan(super::super::retention::PRUNE_SELECT);
        assert!(
            prune.contains("SEARCH jobs USING INDEX jobs_finished (finished_ms<?)")
                && !prune.contains("TEMP B-TREE"),
            "{prune}"
        );
    }

    /// A lock held for a moment costs a moment (20 µs, then doubling), and the wait still
    /// gives up after the same 10 s in all.
    #[test]
    fn busy_waits_start_short_and_end_at_the_timeout() {
        assert_eq!(busy_wait(0), Some(Duration::from_micros(20)));
        assert_eq!(busy_wait(5), Some(Duration::from_micros(640)));
        assert_eq!(busy_wait(6), Some(Duration::from_millis(1)));
        let waits: Vec<Duration> = (0..).map_while(busy_wait).collect();
        let total: Duration = waits.iter().sum();
        assert!(total >= BUSY_TIMEOUT && total <= BUSY_TIMEOUT + BUSY_WAIT_MOST, "{total:?}");
        assert_eq!(busy_wait(u32::MAX), None);
    }
}
