//! The PostgreSQL backend: many daemons, on many machines, one database; every job's record
//! shared by all of them.
//!
//! # Design
//!
//! - **Schema**: `[queue] schema` (default `procyard`) holds the tables, so several clusters
//!   share one database. Versioned migrations (`migrate.rs`) run at start under an advisory
//!   lock; `procyard-daemon migrate` runs them alone.
//! - **Connections**: a daemon has two. Its *work* connection, used from the daemon's thread
//!   like the SQLite file (short statements, a few hundred microseconds each), claims jobs and
//!   records outcomes. Its *session* connection lives on a thread of its own
//!   (`session.rs`): it holds the daemon's advisory lock for as long as the daemon lives,
//!   `LISTEN`s for published jobs and wakes the daemon's loop through its [`mio::Waker`], and
//!   looks every 200 ms for daemons whose session is gone. A client opens one connection.
//! - **Claims** (`claim.rs`): `UPDATE queue … WHERE seq IN (SELECT … ORDER BY priority
//!   DESC, seq LIMIT n FOR UPDATE SKIP LOCKED)` through the partial index `queue_ready (task,
//!   priority DESC, seq) WHERE state = 0` (higher priority first, then FIFO), then the same
//!   jobs' records in `jobs`, an update that changes no indexed column there (HOT: no index
//!   entry written, `migrate.rs`), so a claim costs the rows it takes, never the backlog, the
//!   delayed jobs or the history, and daemons never wait for each other's rows. The outcomes, attempts and worker holders buffered since the last
//!   write go in the same transaction (arrays, one statement per kind), so a daemon killed
//!   at any moment has recorded both or neither. A daemon whose workers finish quickly
//!   claims ahead, within the task's capacity (`ahead.rs`): later claims are answered from
//!   the jobs it holds, and a worker runs its next job while the last outcome is written.
//! - **Wake-ups**: publish notifies `<schema>_jobs` (one notification per task and
//!   transaction); nothing polls the table. Delayed jobs (`--delay`, `--at`, a retry's
//!   backoff) wait in a state of their own; the earliest due time is read from
//!   `jobs_delayed` (again after each notification) and is a real deadline of the daemon's
//!   loop, when they are made ready (`due.rs`); a notification missed while the session was
//!   reconnecting is made up for by a claim round after it reconnects.
//! - **Scheduling controls**, all cluster-wide: unique keys by a unique index
//!   (`publish.rs`), `[[schedule]]` fired once per due time under the schedule's row lock
//!   (`schedules.rs`), rate limits and per-key concurrency (`limits.rs`).
//! - **Leases** name the daemon (`lease_owner` = its row in `daemons`, which records its
//!   session's backend pid) and the worker. When a daemon's session ends (SIGKILL, crash,
//!   cut off: see `conn.rs` for keepalive and `tcp_user_timeout`), its lock goes with it; the
//!   next look of any other daemon (≤ 200 ms) wakes that daemon's loop, which puts the leases
//!   back to `ready` with the interrupted attempt recorded `daemon lost` (`recovery.rs`). A
//!   daemon starting also does so first, after stopping workers of dead daemons of its own
//!   machine (by identity and boot id, as on SQLite).
//! - **Connection loss**: the work connection reconnects with backoff and jitter on the next
//!   claim or flush after the delay; buffered outcomes stay buffered until written;
//!   `status` shows the database unreachable. The session reconnects on its own and takes
//!   the daemon's number back if no other daemon recovered its leases meanwhile; otherwise
//!   the daemon registers anew, and the outcomes of its earlier leases are dropped (the jobs
//!   already run again elsewhere: at least once, never lost).
//! - **History** (`records.rs`): the same [`JobRecord`](crate::queue::JobRecord) as SQLite, readable from any daemon or
//!   client on the database; retention prunes finished rows in batches of 500 with `SKIP
//!   LOCKED` (they are never rows a claim needs).
//!
//! # Limitations
//!
//! TLS as libpq's `sslmode` says (`require`, `verify-ca`, `verify-full`, with `sslrootcert`;
//! `prefer`, the default, does not try TLS: `tls.rs`). Jobs kept leased at a daemon's start because their worker
//! would not die are put back by the next look for dead daemons. Per-key concurrency looks
//! at most 1,000 waiting jobs per claim. Every daemon's clock should be right: a schedule's
//! due times are read on the clock of the daemon that fires them (delays use the database's).

mod ahead;
mod backend;
mod claim;
mod conn;
mod due;
mod limits;
mod migrate;
mod publish;
mod records;
mod recovery;
mod schedules;
mod session;
mod tls;
mod turn;
mod turn_v3;
mod turn_v4;

/// The claim statement (`$1` the daemon's owner number, `$2` the task, `$3` the most jobs), for
/// benchmarks that `EXPLAIN` it.
pub use claim::CLAIM;

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use postgres::Client;
use postgres::Statement;

use self::claim::Buffers;
use self::conn::{BACKOFF, Role, Target};
use self::session::Session;
use super::trouble::Trouble;
use super::{BackendKind, OpenMode, QueueBackend, QueueConfig, Retention, TaskBinding};
use crate::{Error, Result};

/// A job that can be claimed now (in the claim index).
const STATE_READY: i16 = 0;
/// A job leased by a daemon (`lease_owner`).
const STATE_LEASED: i16 = 1;
/// Done (kept until pruned).
const STATE_DONE: i16 = 2;
/// A dead letter, until requeued or purged.
const STATE_DEAD: i16 = 3;
/// Cancelled (kept until pruned, like a done job).
const STATE_CANCELLED: i16 = 4;
/// A job that waits for its time (`--delay`, `--at`, a retry's backoff) until `not_before`;
/// then made ready (`due.rs`), out of the claim index until then.
const STATE_DELAYED: i16 = 5;

/// The schema used when the config names none.
pub const DEFAULT_SCHEMA: &str = "procyard";

/// Opens the PostgreSQL backend for `config`.
pub(crate) fn open(config: &QueueConfig, mode: OpenMode) -> Result<Box<dyn QueueBackend>> {
    Ok(Box::new(PgQueue::open(config, mode)?))
}

/// Runs the migrations of the database and schema `config` names (what `procyard-daemon
/// migrate` does); returns the versions applied (none when it was up to date).
pub fn migrate(config: &QueueConfig) -> Result<Vec<i32>> {
    if config.backend != BackendKind::Postgres {
        return Err(Error::Unsupported {
            backend: config.backend.name(),
            what: "be migrated (it migrates itself when opened)",
        });
    }
    let target = Target::new(config.url.as_deref().unwrap_or_default(), &config.schema)?;
    let mut client = target.connect(Role::Client, "")?;
    migrate::migrate(&mut client, &target)
}

/// Brings the schema `config` names to version `version` of its migrations, not beyond
/// (an older schema, for tests of the upgrade to the latest).
#[doc(hidden)]
pub fn migrate_to(config: &QueueConfig, version: i32) -> Result<Vec<i32>> {
    let target = Target::new(config.url.as_deref().unwrap_or_default(), &config.schema)?;
    let mut client = target.connect(Role::Client, "")?;
    migrate::migrate_to(&mut client, &target, version)
}

/// Checks `[queue] url` and `schema` for the `postgres` backend (any url and schema pass for
/// the others); returns the schema to use, or the span, field and message of the problem.
#[allow(clippy::type_complexity)]
pub(crate) fn check_config(
    backend: BackendKind,
    url: &Option<toml::Spanned<String>>,
    schema: &Option<toml::Spanned<String>>,
) -> std::result::Result<String, (Option<Range<usize>>, &'static str, String)> {
    let name = schema.as_ref().map_or(DEFAULT_SCHEMA, |s| s.get_ref().as_str()).to_owned();
    if backend != BackendKind::Postgres {
        return Ok(name);
    }
    match url {
        None => {
            return Err((
                None,
                "queue.url",
                "the postgres backend needs a url (postgres://user@host:5432/db)".into(),
            ));
        }
        Some(u)
            if !(u.get_ref().starts_with("postgres://")
                || u.get_ref().starts_with("postgresql://")) =>
        {
            return Err((Some(u.span()), "queue.url", "must start with postgres://".into()));
        }
        Some(u) => {
            if let Err(e) = tls::split_url(u.get_ref()).0.parse::<postgres::Config>() {
                return Err((Some(u.span()), "queue.url", format!("is not a valid url: {e}")));
            }
        }
    }
    conn::check_schema(&name)
        .map_err(|m| (schema.as_ref().map(|s| s.span()), "queue.schema", m))?;
    Ok(name)
}

/// The wall clock in ms since the epoch (attempt times, as on SQLite).
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The work connection with its prepared statements.
struct Conn {
    client: Client,
    prepared: HashMap<&'static str, Statement>,
}

impl Conn {
    /// The prepared statement for `sql` (prepared once per connection).
    fn stmt(&mut self, sql: &'static str) -> std::result::Result<Statement, postgres::Error> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.prepared.insert(sql, s.clone());
        Ok(s)
    }
}

/// The PostgreSQL queue backend.
pub(crate) struct PgQueue {
    target: Target,
    mode: OpenMode,
    /// This daemon's name (a UUID), on its row and its connections.
    name: String,
    conn: Option<Conn>,
    session: Option<Session>,
    tasks: Vec<TaskBinding>,
    /// Outcomes, attempts and holders not yet written.
    buffers: Buffers,
    /// Since when the buffers hold something (`flush_soon` writes them by a deadline).
    buffered_since: Option<Instant>,
    /// Leases this daemon holds: row → the daemon number that took it.
    leases: HashMap<i64, i64>,
    /// A claim failed without a confirmed outcome: the next write puts back what the server
    /// may have leased to this daemon unseen.
    unsure_claim: bool,
    retention: Retention,
    /// Failing statements or connection, with the next attempt's deadline.
    trouble: Option<Trouble>,
    /// The next retry time, once read (`Some(None)`: none).
    due_cache: Option<Option<Instant>>,
    /// The last error was the backoff still running (not a new failure).
    waiting: bool,
    /// Client: `LISTEN`ing for job ends (`Some`), since it took the waiters' lock (`Some(Some)`:
    /// daemons notify it, `records.rs`).
    listening_ends: Option<Option<Instant>>,
    /// The next pruning step.
    prune_at: Instant,
    /// The count-based pruning cutoff `(finished_ms, seq)` and when it was read.
    prune_count: Option<(Instant, Option<(i64, i64)>)>,
    /// Daemon: the periodic jobs it fires (`schedules.rs`).
    book: crate::queue::periodic::Book,
    /// Daemon: each task's limits on starts (`limits.rs`).
    limits: limits::Limits,
    /// Daemon: jobs claimed ahead of the loop's asking (`ahead.rs`).
    ahead: ahead::Ahead,
}

impl std::fmt::Debug for PgQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgQueue").field("db", &self.target.shown).field("mode", &self.mode).finish()
    }
}

impl PgQueue {
    /// Connects, migrates, and (daemon) registers the daemon and starts its session.
    pub(crate) fn open(config: &QueueConfig, mode: OpenMode) -> Result<PgQueue> {
        let url = config.url.as_deref().ok_or_else(|| Error::Postgres {
            action: "connect to",
            target: format!("(schema {})", config.schema),
            source: "no url in [queue] url".into(),
        })?;
        let target = Target::new(url, &config.schema)?;
        let name = uuid::Uuid::now_v7().to_string();
        let role = if mode == OpenMode::Daemon { Role::Work } else { Role::Client };
        let mut client = target.connect(role, &name)?;
        migrate::migrate(&mut client, &target)?;
        let session = match mode {
            OpenMode::Daemon => Some(Session::start(&target, &name)?),
            OpenMode::Client => None,
        };
        Ok(PgQueue {
            target,
            mode,
            name,
            conn: Some(Conn { client, prepared: HashMap::new() }),
            session,
            tasks: Vec::new(),
            buffers: Buffers::default(),
            buffered_since: None,
            leases: HashMap::new(),
            unsure_claim: false,
            retention: Retention::default(),
            trouble: None,
            due_cache: None,
            waiting: false,
            listening_ends: None,
            prune_at: Instant::now(),
            prune_count: None,
            book: crate::queue::periodic::Book::default(),
            limits: limits::Limits::default(),
            ahead: ahead::Ahead::default(),
        })
    }

    /// This daemon's number (0 for a client).
    fn owner(&self) -> i64 {
        self.session
            .as_ref()
            .map_or(0, |s| s.shared.owner.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn is_bound(&self, task: &str) -> bool {
        self.tasks.iter().any(|t| t.name == task)
    }

    /// The work connection, reconnecting when it was lost and the backoff has passed.
    fn conn(&mut self) -> Result<&mut Conn> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            if let Some(t) = &self.trouble
                && t.retry_at > Instant::now()
            {
                // Not yet: the backoff runs; this is no new failure.
                self.waiting = true;
                let left = t.retry_at.saturating_duration_since(Instant::now());
                return Err(self.target.err(
                    "reach",
                    format!("disconnected; reconnecting in {} ms", left.as_millis()),
                ));
            }
            let role = if self.mode == OpenMode::Daemon { Role::Work } else { Role::Client };
            let client = self.target.connect(role, &self.name)?;
            tracing::info!(db = %self.target.shown, "postgres: connected");
            self.conn = Some(Conn { client, prepared: HashMap::new() });
        }
        Ok(self.conn.as_mut().expect("connected"))
    }

    /// Keeps track of failures: a failure starts (or lengthens) the backoff and drops a
    /// closed connection; a success ends it.
    fn note<T>(&mut self, result: &Result<T>) {
        match result {
            Ok(_) => {
                if let Some(t) = self.trouble.take() {
                    tracing::info!(db = %self.target.shown, after = %t.cause, "postgres: the database works again");
                }
            }
            Err(_) if std::mem::take(&mut self.waiting) => {}
            Err(e) => {
                if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
                    self.conn = None;
                }
                Trouble::note(&mut self.trouble, e.chain().to_string(), &BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use toml::Spanned;

    use super::*;

    #[derive(Deserialize)]
    struct Q {
        url: Option<Spanned<String>>,
        schema: Option<Spanned<String>>,
    }

    fn check(text: &str) -> std::result::Result<String, (&'static str, String)> {
        let q: Q = toml::from_str(text).unwrap();
        check_config(BackendKind::Postgres, &q.url, &q.schema).map_err(|(_, f, m)| (f, m))
    }

    /// The config names the field at fault; the schema defaults to `procyard`.
    #[test]
    fn config_checks_the_url_and_the_schema() {
        assert_eq!(check("url = \"postgres://u@h/db\"").unwrap(), DEFAULT_SCHEMA);
        assert_eq!(check("url = \"postgresql://h/db\"\nschema = \"c2\"").unwrap(), "c2");
        assert_eq!(check("").unwrap_err().0, "queue.url");
        assert_eq!(check("url = \"amqp://h\"").unwrap_err().0, "queue.url");
        assert_eq!(check("url = \"postgres://h:port/db\"").unwrap_err().0, "queue.url");
        let (field, msg) = check("url = \"postgres://h/db\"\nschema = \"A-b\"").unwrap_err();
        assert_eq!(field, "queue.schema");
        assert!(msg.contains("lower-case"), "{msg}");
        let q: Q = toml::from_str("").unwrap();
        assert_eq!(check_config(BackendKind::Sqlite, &q.url, &q.schema).unwrap(), DEFAULT_SCHEMA);
    }
}
