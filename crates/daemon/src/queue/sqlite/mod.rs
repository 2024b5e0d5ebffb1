//! The embedded queue: one SQLite file in WAL mode.
//!
//! Each published job is one row per receiving task. A daemon claims rows (state `leased`,
//! attempt count + 1, oldest first through the `jobs_next` index, so a claim costs the rows it
//! takes, not the backlog) inside a transaction that also records the outcomes buffered since
//! the last one (one write transaction per loop turn), and holds `<file>.lock` (an `flock`,
//! `lock.rs`) while it runs, so exactly one daemon serves a queue file. Leases do not expire
//! while that daemon lives; when it dies — even by SIGKILL — the kernel drops the lock, and the
//! next daemon puts every leased row back (without counting the interrupted attempt), so a job
//! is never lost. Done rows are kept (state done) and counted, with one row per attempt in
//! `attempts` (how it ended, its bounded output), until the retention prunes them in small
//! batches ([`Retention`]: `keep_done`, `keep_done_max`); retries wait in the table with a
//! `not_before` time; dead letters stay until requeued or purged. A daemon killed during an
//! attempt leaves it open; the next daemon records it `daemon lost`.
//!
//! Publishers (the `publish` command) write to the same file concurrently (WAL: readers and
//! one writer at a time, a short lock wait for the rest) and then poke the daemon through its
//! control socket. A poke can be lost (the daemon busy, its descriptors exhausted), so the
//! daemon also checks the queue every few seconds ([`DUE_CHECK_EVERY`]).
//!
//! # Files and failures
//!
//! The directory is created 0700 and every file of the queue 0600, whatever the umask (an
//! existing directory open to others is warned about). A daemon runs `PRAGMA quick_check`
//! when it opens the file and refuses a corrupt queue ([`Error::QueueCorrupt`]); it notices
//! when the file at the path is deleted or replaced while it runs
//! ([`Error::QueueFileChanged`], it stops rather than serve a ghost); and when writes fail
//! (a full disk) it reports the queue unhealthy with the cause and tries again with backoff,
//! so it recovers by itself when space comes back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use super::{
    Abandoned, AttemptReport, DeadLetter, FileChange, Health, Job, JobFilter, JobRecord,
    LeaseHolder, OpenMode, Outcome, PartialPublish, Publication, PublishOptions, Purge,
    QueueBackend, QueueDepth, Receipt, Requeue, Retention, ScheduleStatus, TaskBinding,
};
use super::{BackendKind, Durability};
use crate::schedule::ScheduleConfig;
use crate::{Error, Result, routing};

mod attempts;
mod checkpoint;
mod dead;
mod depths;
mod due;
mod files;
mod holders;
mod joined;
mod lease;
mod limits;
mod lock;
mod outcomes;
mod publish;
mod records;
mod retention;
mod schedules;
mod schema;
pub(crate) mod store;
mod unique;
mod warm;

use super::trouble::Trouble;
use attempts::AttemptLog;
pub use due::DUE_CHECK_EVERY;
use files::FileIdentity;
pub use lock::lock_path;
use outcomes::PendingOutcome;

/// Retry delays after a failed write: 250 ms, doubling, at most 5 s.
const BACKOFF: procyard_core::Backoff = procyard_core::Backoff::new(
    std::time::Duration::from_millis(250),
    std::time::Duration::from_secs(5),
);

/// The largest payload the embedded queue accepts: the limit every backend shares.
pub use super::MAX_PAYLOAD;

/// The SQLite queue backend.
pub struct SqliteQueue {
    path: PathBuf,
    conn: Connection,
    tasks: Vec<TaskBinding>,
    mode: OpenMode,
    /// This daemon's name on the leases it takes.
    owner: String,
    _lock: Option<procyard_core::FileLock>,
    /// Outcomes not yet written.
    pending: Vec<PendingOutcome>,
    /// The earliest `not_before` of a delayed job, once read (`Some(None)`: there is none).
    due_cache: Option<Option<i64>>,
    /// The earliest `not_before` of a delayed row that may not have joined the claim order yet,
    /// due or not, once read (`Some(None)`: there is none): a claim reads due rows only when
    /// one may be due.
    delayed_cache: Option<Option<i64>>,
    /// Daemon: due rows joined to their task's claim order in memory ([`joined`]).
    joined: joined::Joined,
    recovered: u64,
    /// Holders of jobs handed to workers, written with the next write transaction.
    holders: Vec<holders::Held>,
    /// Holders written with the leases, until the jobs are handed over ([`holders::Planned`]);
    /// then the rows whose holder must be cleared, with the next write transaction.
    planned: holders::Planned,
    unheld: Vec<i64>,
    /// Daemon: the file it serves, to notice it deleted or replaced.
    identity: Option<FileIdentity>,
    /// Set once the file at the path is no longer the one served: every call fails.
    lost: Option<FileChange>,
    /// Failing writes (claims, outcomes), with the next attempt's deadline.
    trouble: Option<Trouble>,
    /// Daemon: the next look at the queue without a poke.
    next_check: Instant,
    /// Attempts begun and ended, written with the next write transaction.
    attempts: AttemptLog,
    /// How long ended jobs are kept.
    retention: Retention,
    /// Daemon: the next pruning step, and the count-based cutoff with when it was read.
    prune: retention::PruneClock,
    /// Daemon: the periodic jobs it fires.
    book: crate::queue::periodic::Book,
    /// Daemon: each task's limits on starts.
    gate: crate::limits::Gate,
    /// SQLite VM steps of the claims made so far ([`SqliteQueue::claim_steps`]).
    claim_steps: u64,
    /// Daemon: the thread that checkpoints the log, off the loop (`None`: the loop's does).
    _checkpointer: Option<checkpoint::Checkpointer>,
}

impl std::fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteQueue").field("path", &self.path).field("mode", &self.mode).finish()
    }
}

/// The wall clock in ms since the epoch, as the rows store times.
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A daemon's name on its leases: 16 hex digits of a v7 UUID (the millisecond it opened the
/// file, 12 random bits), 20 bytes less per leased row (`holders::register_owner`: why).
fn lease_owner() -> String {
    let mut name = uuid::Uuid::now_v7().simple().to_string();
    name.truncate(16);
    name
}

/// Every file of the queue at `queue`: the database, its `-wal` and `-shm`, the daemon's lock.
pub fn companion_files(queue: &Path) -> [PathBuf; 4] {
    files::queue_files(queue)
}

impl SqliteQueue {
    /// Opens (creating if needed) the queue file. In [`OpenMode::Daemon`] it takes the
    /// daemon lock; the jobs a previous daemon left leased stay leased until
    /// [`QueueBackend::recover`] (after the daemon stopped their workers).
    pub fn open(path: &Path, mode: OpenMode) -> Result<SqliteQueue> {
        SqliteQueue::open_with(path, mode, Durability::Crash)
    }

    /// [`SqliteQueue::open`] with what its commits survive (`[queue] durability`).
    pub fn open_with(path: &Path, mode: OpenMode, durability: Durability) -> Result<SqliteQueue> {
        if path.as_os_str().is_empty() {
            return Err(Error::io("open queue", path, std::io::ErrorKind::InvalidInput.into()));
        }
        files::prepare_dir(path)?;
        files::create_private(path)?;
        let lock = match mode {
            OpenMode::Client => None,
            OpenMode::Daemon => Some(lock::lock(path)?),
        };
        let mut conn = schema::connect_with(path, mode, durability)?;
        files::tighten(path);
        let identity = match mode {
            OpenMode::Daemon => Some(FileIdentity::of(path)?),
            OpenMode::Client => None,
        };
        let owner = lease_owner();
        if mode == OpenMode::Daemon {
            holders::register_owner(&conn, &owner)
                .map_err(|e| Error::queue("register the daemon in", path, e))?;
        }
        let checkpointer = checkpoint::Checkpointer::start(&mut conn, path, mode, durability);
        Ok(SqliteQueue {
            path: path.to_owned(),
            conn,
            tasks: Vec::new(),
            mode,
            owner,
            _lock: lock,
            pending: Vec::new(),
            due_cache: None,
            delayed_cache: None,
            joined: joined::Joined::default(),
            recovered: 0,
            holders: Vec::new(),
            planned: holders::Planned::default(),
            unheld: Vec::new(),
            identity,
            lost: None,
            trouble: None,
            next_check: Instant::now() + DUE_CHECK_EVERY,
            attempts: AttemptLog::default(),
            retention: Retention::default(),
            prune: retention::PruneClock::of_queue(Instant::now(), path, mode),
            book: crate::queue::periodic::Book::default(),
            gate: crate::limits::Gate::default(),
            claim_steps: 0,
            _checkpointer: checkpointer,
        })
    }

    /// How many in-flight jobs of a previous daemon [`QueueBackend::recover`] put back.
    pub fn recovered(&self) -> u64 {
        self.recovered
    }

    /// The queue file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether done jobs keep their rows (a retention of zero keeps no history).
    fn keeps_history(&self) -> bool {
        !self.retention.keep_done.is_zero()
    }

    /// The job records in this file.
    fn history(&mut self) -> store::History<'_> {
        store::History::new(&mut self.conn, &self.path)
    }

    fn is_bound(&self, task: &str) -> bool {
        self.tasks.iter().any(|t| t.name == task)
    }

    /// Fails once the path no longer names the file this daemon serves (checked at most
    /// once a second, or now when `now_please`).
    fn check_served(&mut self, now_please: bool) -> Result<()> {
        if self.lost.is_none()
            && let Some(id) = self.identity.as_mut()
            && let Err(change) = id.check(&self.path, now_please)
        {
            self.lost = Some(change);
        }
        match self.lost {
            Some(change) => Err(Error::QueueFileChanged { path: self.path.clone(), change }),
            None => Ok(()),
        }
    }

    /// Keeps track of failing writes: a failure starts (or lengthens) the backoff and is
    /// shown by `health`; a success ends it.
    fn note_write<T>(&mut self, result: &Result<T>) {
        match result {
            Ok(_) => {
                if let Some(t) = self.trouble.take() {
                    tracing::info!(queue = %self.path.display(), after = %t.cause, "the queue works again");
                }
            }
            Err(e) => Trouble::note(&mut self.trouble, e.chain().to_string(), &BACKOFF),
        }
    }
}

impl QueueBackend for SqliteQueue {
    fn bind(&mut self, tasks: &[TaskBinding]) -> Result<()> {
        for t in tasks {
            for p in &t.routing_keys {
                routing::validate_pattern(p)?;
            }
        }
        self.tasks = tasks.to_vec();
        self.forget_due();
        self.joined.clear();
        Ok(())
    }

    fn attach(&mut self, _registry: &mio::Registry, _token: mio::Token) -> Result<()> {
        Ok(())
    }

    fn on_wake(&mut self) -> Result<()> {
        self.forget_due();
        self.book.invalidate();
        // A poke may come from a publisher that wrote to a new file at the path.
        self.check_served(true)
    }

    fn publish(&mut self, routing_key: &str, payload: &[u8]) -> Result<Vec<String>> {
        Ok(self.insert_jobs(routing_key, &[payload], &PublishOptions::default())?.ids)
    }

    fn publish_with(
        &mut self,
        routing_key: &str,
        payloads: &[Vec<u8>],
        options: &PublishOptions,
    ) -> Result<Publication, Box<PartialPublish>> {
        let payloads: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        self.insert_jobs(routing_key, &payloads, options)
            .map_err(|error| Box::new(PartialPublish { committed: Vec::new(), error }))
    }

    fn publish_batch(
        &mut self,
        routing_key: &str,
        payloads: &[Vec<u8>],
    ) -> Result<Vec<String>, Box<PartialPublish>> {
        // One transaction: all of the batch or none of it.
        let payloads: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        self.insert_jobs(routing_key, &payloads, &PublishOptions::default())
            .map(|p| p.ids)
            .map_err(|error| Box::new(PartialPublish { committed: Vec::new(), error }))
    }

    fn set_capacity(&mut self, _task: &str, _capacity: usize) -> Result<()> {
        Ok(())
    }

    fn claim(&mut self, task: &str, max: usize) -> Result<Vec<Job>> {
        self.check_served(false)?;
        self.claim_for(task, max, &[])
    }

    fn claim_for(
        &mut self,
        task: &str,
        max: usize,
        to: &[Option<&LeaseHolder>],
    ) -> Result<Vec<Job>> {
        self.check_served(false)?;
        let jobs = self.take_leases(task, max, to);
        self.note_write(&jobs);
        if jobs.as_ref().is_ok_and(|jobs| !jobs.is_empty()) {
            self.prune.note_busy(Instant::now());
        }
        jobs
    }

    fn complete(&mut self, job: &Job, outcome: Outcome) -> Result<()> {
        self.gate.ended(job.receipt.0);
        self.prune.note_ended(Instant::now());
        // The retry delay runs from now: the caller may compute when the job falls due right
        // after this call, and a flush that comes later must not push that time back.
        self.pending.push(PendingOutcome::now(job, outcome));
        Ok(())
    }

    fn record_holder(&mut self, job: &Job, holder: &LeaseHolder) -> Result<()> {
        let seq = job.receipt.0 as i64;
        if self.planned.written(seq, holder) {
            return Ok(());
        }
        self.holders.push((seq, holder.clone(), now_ms()));
        Ok(())
    }

    fn set_retention(&mut self, retention: Retention) {
        self.retention = retention;
    }

    fn record_attempt(&mut self, job: &Job, report: AttemptReport) {
        self.attempts.end(job, report);
    }

    fn job(&mut self, id: &str) -> Result<JobRecord> {
        self.history().job(id)
    }

    fn jobs(&mut self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        self.history().jobs(filter)
    }

    fn payload(&mut self, id: &str) -> Result<Option<Vec<u8>>> {
        self.history().payload(id)
    }

    fn cancel_waiting(&mut self, id: &str) -> Result<bool> {
        self.cancel_row(id)
    }

    fn purge(&mut self, what: &Purge) -> Result<u64> {
        self.history().purge(what)
    }

    fn set_limits(&mut self, limits: &[crate::limits::TaskLimits]) -> Result<()> {
        self.gate.set(limits, Instant::now());
        Ok(())
    }

    fn set_schedules(&mut self, schedules: &[ScheduleConfig]) -> Result<()> {
        self.sync_schedules(schedules)
    }

    fn schedules(&mut self, schedules: &[ScheduleConfig]) -> Result<Vec<ScheduleStatus>> {
        self.schedule_states(schedules)
    }

    fn trigger_schedule(&mut self, schedule: &ScheduleConfig) -> Result<Vec<String>> {
        self.trigger(schedule)
    }

    fn pause_schedule(&mut self, schedule: &ScheduleConfig, paused: bool) -> Result<()> {
        self.set_paused(schedule, paused)
    }

    fn abandoned(&mut self) -> Result<Vec<Abandoned>> {
        self.leased_by_the_dead()
    }

    fn recover(&mut self, keep: &[Receipt]) -> Result<u64> {
        self.recover_leases(keep)
    }

    fn flush(&mut self) -> Result<()> {
        if self.mode == OpenMode::Daemon && self.prune.due(Instant::now()) {
            self.prune_step();
        }
        if !self.planned.is_empty() {
            self.unheld.extend(self.planned.unheld());
        }
        if self.pending.is_empty()
            && self.holders.is_empty()
            && self.attempts.is_empty()
            && self.unheld.is_empty()
        {
            return Ok(());
        }
        let result = self.write_pending();
        self.note_write(&result);
        result
    }

    fn next_due(&mut self) -> Result<Option<Instant>> {
        self.wake_instant()
    }

    fn depths(&mut self) -> Result<BTreeMap<String, QueueDepth>> {
        self.count_depths()
    }

    fn dead_letters(&mut self, task: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>> {
        self.list_dead(task, limit)
    }

    fn requeue_dead(&mut self, task: Option<&str>, which: &Requeue) -> Result<u64> {
        self.requeue(task, which)
    }

    fn health(&self) -> Health {
        let path = self.path.display();
        let (ok, detail) = match (self.lost, &self.trouble) {
            (Some(change), _) => (false, format!("{path}: the file was {change}")),
            (None, Some(t)) => (false, format!("{path}: {}", t.describe())),
            (None, None) => (true, path.to_string()),
        };
        Health { backend: BackendKind::Sqlite, ok, detail }
    }

    fn shutdown(&mut self) -> Result<()> {
        self.flush()?;
        if self.mode == OpenMode::Daemon {
            let n = self.release_leases(true, &[])?;
            if n > 0 {
                tracing::info!(jobs = n, "returned unfinished jobs to the queue");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {

    use super::*;

    /// The queue file at `path` opened in `mode` and bound to [`bindings`].
    pub(crate) fn bound(path: &Path, mode: OpenMode) -> SqliteQueue {
        let mut queue = SqliteQueue::open(path, mode).unwrap();
        queue.bind(&bindings()).unwrap();
        queue
    }

    /// Two tasks: `mail` (keys `mail.#`) and `all` (every key).
    pub(crate) fn bindings() -> Vec<TaskBinding> {
        vec![
            TaskBinding {
                name: "mail".into(),
                routing_keys: vec!["mail.#".into()],
                max_attempts: 3,
            },
            TaskBinding { name: "all".into(), routing_keys: vec!["#".into()], max_attempts: 3 },
        ]
    }
}
