//! The local history of an AMQP daemon: the records of the jobs THIS daemon ran, in a SQLite
//! file of its own (`[queue] history`), with the same tables and code as the embedded queue's
//! history ([`History`]). Many daemons serve one broker and no one of them sees every job, so
//! `job`, `jobs` and `logs` answer from here and say so.
//!
//! The daemon's thread buffers what happens (a job claimed, handed to a worker, an attempt
//! ended, an outcome) and writes it at the next flush, in one transaction per loop turn: a
//! job's row is created (or taken up again, when a retry comes back here) when it is claimed,
//! keyed by its job id. A job retried elsewhere stays `delayed`/`ready` here (the daemon that
//! ran its later attempts has them). A daemon killed mid-job leaves the attempt open; the next
//! daemon on the same file records it `daemon lost` (the broker ran the job again).
//! Retention (`keep_done`, `keep_done_max`) prunes it like the embedded queue.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, params};

use crate::queue::sqlite::store::{
    self, AttemptLog, Held, History, PendingOutcome, PruneClock, STATE_LEASED, STATE_READY,
};
use crate::queue::{
    AttemptEnd, AttemptReport, Job, JobFilter, JobRecord, LeaseHolder, OpenMode, Outcome, Purge,
    Retention,
};
use crate::{Error, Result};

/// Something that happened to a job, not written yet.
#[derive(Debug)]
enum Note {
    Claimed { id: String, task: String, routing_key: String, payload: Vec<u8>, delivery: u32 },
    Holder { id: String, holder: LeaseHolder, at_ms: i64 },
    Ended { id: String, delivery: u32, at_ms: i64, report: AttemptReport },
    Outcome { id: String, task: String, outcome: Outcome, at_ms: i64 },
}

/// One daemon's history file.
pub(super) struct LocalHistory {
    path: PathBuf,
    conn: Connection,
    _lock: Option<procyard_core::FileLock>,
    owner: String,
    notes: Vec<Note>,
    retention: Retention,
    prune: PruneClock,
}

impl std::fmt::Debug for LocalHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalHistory").field("path", &self.path).finish()
    }
}

impl LocalHistory {
    /// A daemon's history at `path`: locked (one daemon per file), and the attempts a killed
    /// daemon left open recorded `daemon lost`.
    pub(super) fn open_daemon(path: &Path, owner: &str) -> Result<LocalHistory> {
        let lock = store::lock(path)?;
        let mut conn = store::open(path, OpenMode::Daemon)?;
        let lost = (|| {
            let tx = conn.transaction()?;
            let n = store::end_open(&tx, &AttemptEnd::DaemonLost, None, "[]")?;
            tx.execute(
                "UPDATE jobs SET state = ?1, not_before = 0, lease_owner = NULL WHERE state = ?2",
                params![STATE_READY, STATE_LEASED],
            )?;
            tx.commit()?;
            Ok(n)
        })()
        .map_err(|e| Error::queue("recover the history in", path, e))?;
        if lost > 0 {
            tracing::info!(
                attempts = lost,
                "amqp: attempts a previous daemon left open are recorded as daemon lost"
            );
        }
        Ok(LocalHistory {
            path: path.to_owned(),
            conn,
            _lock: Some(lock),
            owner: owner.to_owned(),
            notes: Vec::new(),
            retention: Retention::default(),
            prune: PruneClock::new(Instant::now()),
        })
    }

    /// A client's view of the history at `path` (which a daemon made).
    pub(super) fn open_client(path: &Path) -> Result<LocalHistory> {
        if !path.exists() {
            return Err(Error::io(
                "read this daemon's job history",
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no daemon has run with this config here yet",
                ),
            ));
        }
        Ok(LocalHistory {
            path: path.to_owned(),
            conn: store::open(path, OpenMode::Client)?,
            _lock: None,
            owner: String::new(),
            notes: Vec::new(),
            retention: Retention::default(),
            prune: PruneClock::new(Instant::now()),
        })
    }

    pub(super) fn set_retention(&mut self, retention: Retention) {
        self.retention = retention;
    }

    pub(super) fn claimed(&mut self, job: &Job) {
        self.notes.push(Note::Claimed {
            id: job.id.clone(),
            task: job.task.clone(),
            routing_key: job.routing_key.clone(),
            payload: job.payload.clone(),
            delivery: job.attempt,
        });
    }

    pub(super) fn holder(&mut self, job: &Job, holder: &LeaseHolder, at_ms: i64) {
        self.notes.push(Note::Holder { id: job.id.clone(), holder: holder.clone(), at_ms });
    }

    pub(super) fn ended(&mut self, job: &Job, report: AttemptReport, at_ms: i64) {
        let (id, delivery) = (job.id.clone(), job.attempt);
        self.notes.push(Note::Ended { id, delivery, at_ms, report });
    }

    pub(super) fn outcome(&mut self, job: &Job, outcome: Outcome, at_ms: i64) {
        let (id, task) = (job.id.clone(), job.task.clone());
        self.notes.push(Note::Outcome { id, task, outcome, at_ms });
    }

    /// Writes what happened since the last flush (one transaction), and prunes a step when due.
    pub(super) fn flush(&mut self) -> Result<()> {
        let retention = self.retention;
        History::new(&mut self.conn, &self.path).prune(&retention, &mut self.prune);
        if self.notes.is_empty() {
            return Ok(());
        }
        let notes = std::mem::take(&mut self.notes);
        let keep = !self.retention.keep_done.is_zero();
        let result = write(&mut self.conn, &self.owner, &notes, keep);
        result.map_err(|e| Error::queue("record job history in", &self.path, e))
    }

    pub(super) fn job(&mut self, id: &str) -> Result<JobRecord> {
        match History::new(&mut self.conn, &self.path).job(id) {
            Err(Error::UnknownJob { id }) => {
                Err(Error::NotInHistory { id, history: self.path.clone() })
            }
            other => other,
        }
    }

    pub(super) fn jobs(&mut self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        History::new(&mut self.conn, &self.path).jobs(filter)
    }

    pub(super) fn purge(&mut self, what: &Purge) -> Result<u64> {
        History::new(&mut self.conn, &self.path).purge(what)
    }

    /// At shutdown: the attempts still open were stopped with the daemon.
    pub(super) fn close(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %procyard_core::Report(&e), "amqp: unable to record job history");
        }
        let end =
            store::end_open(&self.conn, &AttemptEnd::DaemonStopped, None, "[]").and_then(|_| {
                self.conn.execute(
                "UPDATE jobs SET state = ?1, not_before = 0, lease_owner = NULL WHERE state = ?2",
                params![STATE_READY, STATE_LEASED],
            )
            });
        if let Err(e) = end {
            tracing::warn!(error = %e, "amqp: unable to close the open attempts in the history");
        }
    }
}

/// Writes `notes` in one transaction: rows first (so each note finds its job's row), then
/// the holders, the ended attempts and the outcomes through the shared writers.
fn write(conn: &mut Connection, owner: &str, notes: &[Note], keep: bool) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO jobs (id, task, routing_key, payload, state, attempts, published_ms,
                 lease_owner)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(id) DO UPDATE SET task = excluded.task, state = excluded.state,
                 attempts = excluded.attempts, lease_owner = excluded.lease_owner,
                 not_before = 0, finished_ms = NULL, worker_pid = NULL, worker_start = NULL,
                 worker_pgid = NULL, worker_boot = NULL, worker_started_ms = NULL",
        )?;
        for n in notes {
            if let Note::Claimed { id, task, routing_key, payload, delivery } = n {
                upsert.execute(params![
                    id,
                    task,
                    routing_key,
                    payload,
                    STATE_LEASED,
                    delivery,
                    published_ms(id),
                    owner
                ])?;
            }
        }
    }
    let mut seq_of = tx.prepare_cached("SELECT seq FROM jobs WHERE id = ?1")?;
    let mut seq = |id: &str| seq_of.query_row([id], |r| r.get::<_, i64>(0)).optional();
    let (mut holders, mut attempts, mut outcomes) =
        (Vec::<Held>::new(), AttemptLog::default(), Vec::new());
    for n in notes {
        match n {
            Note::Claimed { .. } => {}
            Note::Holder { id, holder, at_ms } => {
                if let Some(s) = seq(id)? {
                    holders.push((s, holder.clone(), *at_ms));
                }
            }
            Note::Ended { id, delivery, at_ms, report } => {
                if let Some(s) = seq(id)? {
                    attempts.end_row(s, *delivery, *at_ms, report.clone());
                }
            }
            Note::Outcome { id, task, outcome, at_ms } => {
                if let Some(s) = seq(id)? {
                    outcomes.push(PendingOutcome::row(s, task, outcome.clone(), *at_ms));
                }
            }
        }
    }
    drop(seq_of);
    store::write_holders(&tx, &holders)?;
    attempts.write(&tx, &outcomes, keep)?;
    store::write_outcomes(&tx, &outcomes, keep)?;
    tx.commit()
}

/// When job `id` was published: the time in its UUID v7 (0 when it has none).
pub(super) fn published_ms(id: &str) -> i64 {
    uuid::Uuid::try_parse(id)
        .ok()
        .and_then(|u| u.get_timestamp())
        .map(|t| {
            let (s, ns) = t.to_unix();
            (s as i64) * 1000 + i64::from(ns / 1_000_000)
        })
        .unwrap_or(0)
}
