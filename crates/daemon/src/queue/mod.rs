//! The queue abstraction: what the daemon needs from a job queue, with three backends —
//! [`sqlite`] (embedded, the default), [`amqp`] (RabbitMQ, AMQP 0-9-1) and [`postgres`] (many
//! daemons on one PostgreSQL schema, with shared job records).
//!
//! # How the daemon drives a backend
//!
//! The daemon runs one single-threaded mio event loop. It owns one `Box<dyn QueueBackend>`
//! opened with [`open`] in [`OpenMode::Daemon`] and calls it only from that thread:
//!
//! 1. [`QueueBackend::bind`] with every configured task (at start and after each reload that
//!    changed tasks): declare topology, remember which routing patterns feed which task.
//! 2. [`QueueBackend::attach`] once, with the loop's [`mio::Registry`] and the [`mio::Token`]
//!    reserved for the queue. A backend whose work happens on another thread (AMQP: lapin on a
//!    dedicated tokio thread) creates the poll's single [`mio::Waker`] with that token (the
//!    daemon creates no other waker) and wakes the loop whenever it has something new: a
//!    delivery pushed into its crossbeam channel, a confirm/ack result, a connection change.
//!    A backend may instead register a descriptor of its own under that token. The SQLite
//!    backend registers nothing: publishers poke the daemon through the control socket.
//! 3. Whenever the token fires (and after a poke, a completion, a deadline, a scale change),
//!    the daemon calls [`QueueBackend::on_wake`], then for every task group with free
//!    capacity [`QueueBackend::claim`]`(task, free)`. `claim` never blocks: it returns the jobs
//!    that are available right now (at most `max`), possibly none.
//! 4. [`QueueBackend::set_capacity`]`(task, n)` tells the backend the most jobs of that task
//!    the daemon can hold unfinished at once (claimed and not yet completed). The AMQP backend
//!    maps it to the consumer's prefetch (`basic.qos`), so a busy daemon does not hoard jobs;
//!    `0` means "stop delivering" (graceful stop, removed task). The daemon calls it at start,
//!    on scaling and on reload. Jobs already buffered inside the backend beyond a lowered
//!    capacity stay claimable later or are returned to the broker; they are never dropped.
//! 5. When a job's outcome is known the daemon calls [`QueueBackend::complete`] with an
//!    [`Outcome`]: `Done` (ack), `Retry { delay }` (make it available again after `delay`, with
//!    its attempt count + 1 on the next delivery) or `DeadLetter { reason }` (move it where
//!    [`QueueBackend::dead_letters`] lists it). The daemon decides between retry and dead
//!    letter from `max_attempts` and [`Job::attempt`]; the backend only carries the count.
//!    Only then is the job acknowledged: a job that was claimed but never completed (daemon
//!    killed) must become available again (SQLite: on the next start; AMQP: the broker
//!    redelivers unacked messages when the channel closes). `complete` may buffer;
//!    [`QueueBackend::flush`] is called at the end of every loop iteration and must make
//!    buffered outcomes durable (or hand them to the broker thread), and so must the next
//!    [`QueueBackend::claim`] before (or atomically with) the leases it takes.
//!
//!    When the daemon hands a claimed job to a worker process, it calls
//!    [`QueueBackend::record_holder`] with that worker's [`LeaseHolder`] (pid, start time,
//!    process group). A backend whose leases outlive the daemon (SQLite) stores it with the
//!    lease no later than the next [`QueueBackend::flush`]; at the next start, before any
//!    claim, the daemon reads [`QueueBackend::abandoned`], stops every recorded worker that is
//!    still there (by identity, then its process group), and only then calls
//!    [`QueueBackend::recover`], which puts the jobs back — all but those whose worker would not
//!    die, which stay leased until a later start. A backend whose leases end with the daemon's
//!    connection (AMQP: the broker redelivers at once) keeps the defaults, which record
//!    nothing; there the workers die with the daemon (a parent-death signal).
//! 6. [`QueueBackend::next_due`] returns the earliest instant at which a delayed job becomes
//!    available by itself (SQLite retry backoff), so the loop sleeps until exactly then — a
//!    real deadline, not a poll. A backend that wakes the loop itself returns `None`. A
//!    backend that depends on pokes (SQLite) also returns a due-check a few seconds ahead, so
//!    a lost poke delays a job by seconds, never forever, and after a failed claim or flush
//!    (a full disk) the instant of its next attempt (backoff), so it recovers by itself.
//!    A backend whose queue is gone (the file deleted or replaced) returns an error for
//!    which [`Error::is_queue_lost`](crate::Error::is_queue_lost) holds: the daemon stops.
//! 7. [`QueueBackend::depths`] feeds `status` and scaling (backlog = ready + in flight);
//!    [`QueueBackend::health`] says whether the backend works (shown in `status`).
//! 8. [`QueueBackend::shutdown`] at exit, after every in-flight job is completed or abandoned.
//!
//! The command-line client (`publish`, `dead`, `requeue`) opens a backend in
//! [`OpenMode::Client`] and uses only [`QueueBackend::bind`] (with the config's tasks, so a
//! publisher knows which keys are bound), [`QueueBackend::publish`],
//! [`QueueBackend::publish_batch`], [`QueueBackend::depths`], [`QueueBackend::dead_letters`]
//! and [`QueueBackend::requeue_dead`] ([`Requeue::All`] dead letters, or [`Requeue::Ids`]:
//! those named; an id that names no dead letter is
//! [`Error::NoSuchJob`](crate::Error::NoSuchJob), and then SQLite puts back none of them,
//! AMQP the ones it found).
//!
//! # Job records
//!
//! A backend with a history (SQLite) keeps every job's record ([`JobRecord`]): the daemon
//! reports how each attempt ended with [`QueueBackend::record_attempt`] just before
//! [`QueueBackend::complete`] (both written in one transaction; an attempt's start is the
//! holder written by [`QueueBackend::record_holder`]), tells the retention with
//! [`QueueBackend::set_retention`], and the client reads with [`QueueBackend::job`] and
//! [`QueueBackend::jobs`], cancels a waiting job with [`QueueBackend::cancel_waiting`] and
//! deletes records with [`QueueBackend::purge`]. The defaults keep nothing and answer
//! [`Error::Unsupported`](crate::Error::Unsupported).
//!
//! The AMQP backend keeps a local history per daemon (the jobs it ran, same tables and code:
//! `sqlite::store`), and hears what other daemons do through the broker: a client waits with
//! [`QueueBackend::expect_replies`] and [`QueueBackend::wait_heard`], cancels with
//! [`QueueBackend::cancel_everywhere`], and a daemon takes the cancel requests it heard with
//! [`QueueBackend::take_cancels`].
//!
//! # Errors
//!
//! A backend never panics and never kills the daemon: it returns [`crate::Error`] values
//! ([`Error::Broker`](crate::Error::Broker) with an action and a boxed source for broker
//! failures, [`Error::Unroutable`](crate::Error::Unroutable) when no task is bound to a key,
//! [`Error::PublishRejected`](crate::Error::PublishRejected) on a negative confirm), and
//! reports lasting trouble through [`QueueBackend::health`].
//!
//! # Layout
//!
//! This file holds the contract ([`QueueBackend`]); the types it speaks in live beside it:
//! `config.rs` (what a backend is opened with: [`QueueConfig`], [`TaskBinding`],
//! [`OpenMode`]), `job.rs` (what flows through it: [`Job`], [`Outcome`], [`LeaseHolder`]) and
//! `report.rs` (what it tells: [`QueueDepth`], [`DeadLetter`], [`Health`], and [`Requeue`]).
//! Each backend is a folder of one file per concern.

pub mod amqp;
mod config;
mod history;
mod job;
mod options;
mod periodic;
pub mod postgres;
mod report;
pub mod sqlite;
mod trouble;

use std::collections::BTreeMap;
use std::time::Instant;

pub use self::config::{
    AmqpQueueType, BackendKind, Durability, OpenMode, QueueConfig, TaskBinding,
};
pub use self::history::{
    Attempt, AttemptEnd, AttemptReport, Captured, JobFilter, JobRecord, JobState, Purge,
    ResourceUse, Retention, check_job_id,
};
pub use self::job::{Abandoned, Job, LeaseHolder, Outcome, Receipt};
pub use self::options::{DEFAULT_PRIORITY, MAX_PRIORITY, Publication, PublishOptions, UniqueKey};
pub use self::periodic::ScheduleStatus;
pub use self::report::{DeadLetter, FileChange, Health, QueueDepth, Requeue};
use crate::Result;

/// The largest payload any backend accepts: 16 MiB. The same for every backend, so a job
/// that one queue takes is never refused by another; checked before anything is published.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// Refuses a payload larger than [`MAX_PAYLOAD`] with
/// [`Error::InvalidPayload`](crate::Error::InvalidPayload).
pub fn check_payload(payload: &[u8]) -> Result<()> {
    if payload.len() > MAX_PAYLOAD {
        return Err(crate::Error::InvalidPayload {
            reason: format!("{} bytes is more than the {MAX_PAYLOAD} bytes allowed", payload.len()),
        });
    }
    Ok(())
}

/// A batch publish that failed: the ids of the jobs queued before the error (none for a
/// backend that commits a batch all or nothing), and the error.
#[derive(Debug)]
pub struct PartialPublish {
    /// Jobs that are queued (durably) despite the error.
    pub committed: Vec<String>,
    /// What went wrong.
    pub error: crate::Error,
}

/// A job queue, as the daemon and the command-line client use it. See the [module
/// documentation](self) for the calling sequence. Every method is called from one thread.
pub trait QueueBackend {
    /// Declares or updates the task bindings (topology). Called again after a reload with the
    /// full new list; tasks absent from it are no longer consumed (their queued jobs stay).
    fn bind(&mut self, tasks: &[TaskBinding]) -> Result<()>;

    /// Daemon only: hooks the backend to the event loop (see step 2 of the module docs).
    fn attach(&mut self, registry: &mio::Registry, token: mio::Token) -> Result<()>;

    /// Daemon only: processes whatever woke the loop on the backend's token (drain channels,
    /// note acks that failed). Called often; cheap when there is nothing.
    fn on_wake(&mut self) -> Result<()>;

    /// Publishes one job: a copy to every task whose binding matches `routing_key`. Returns
    /// the new job ids (one per receiving task) once the queue has them durably (SQLite:
    /// committed; AMQP: publisher confirm received). No matching task is
    /// [`Error::Unroutable`](crate::Error::Unroutable); a payload larger than [`MAX_PAYLOAD`]
    /// is [`Error::InvalidPayload`](crate::Error::InvalidPayload), refused before anything is
    /// sent.
    fn publish(&mut self, routing_key: &str, payload: &[u8]) -> Result<Vec<String>>;

    /// Publishes one job per payload, all to `routing_key`, and returns their ids in order.
    /// Every payload and the key are checked before anything is published. The SQLite backend
    /// commits the whole batch or none of it (one transaction); the default, for backends
    /// that cannot (AMQP), publishes in order and stops at the first error, whose
    /// [`PartialPublish::committed`] lists what was queued before it.
    fn publish_batch(
        &mut self,
        routing_key: &str,
        payloads: &[Vec<u8>],
    ) -> Result<Vec<String>, Box<PartialPublish>> {
        let early = |error| Box::new(PartialPublish { committed: Vec::new(), error });
        crate::routing::validate_key(routing_key).map_err(early)?;
        for p in payloads {
            check_payload(p).map_err(early)?;
        }
        let mut committed = Vec::with_capacity(payloads.len());
        for p in payloads {
            match self.publish(routing_key, p) {
                Ok(ids) => committed.extend(ids),
                Err(error) => return Err(Box::new(PartialPublish { committed, error })),
            }
        }
        Ok(committed)
    }

    /// Publishes one job per payload with publish-time controls ([`PublishOptions`]: a delay
    /// or time, a priority, a unique key, headers), checked first
    /// ([`PublishOptions::check`]). A unique key that is held returns the existing job's id,
    /// listed in [`Publication::existing`]. The default publishes plain options through
    /// [`QueueBackend::publish_batch`] and refuses any other with
    /// [`Error::Unsupported`](crate::Error::Unsupported).
    fn publish_with(
        &mut self,
        routing_key: &str,
        payloads: &[Vec<u8>],
        options: &PublishOptions,
    ) -> Result<Publication, Box<PartialPublish>> {
        let early = |error| Box::new(PartialPublish { committed: Vec::new(), error });
        options.check().map_err(early)?;
        if !options.is_plain() {
            return Err(early(crate::Error::Unsupported {
                backend: self.health().backend.name(),
                what: "publish with a delay, a priority, a unique key or headers (yet)",
            }));
        }
        let ids = self.publish_batch(routing_key, payloads)?;
        Ok(Publication { ids, existing: Vec::new() })
    }

    /// Daemon only: the most unfinished jobs of `task` the daemon can hold (see step 4).
    fn set_capacity(&mut self, task: &str, capacity: usize) -> Result<()>;

    /// Daemon only: takes up to `max` jobs of `task` available now, never blocking. Outcomes
    /// buffered by earlier [`QueueBackend::complete`] calls become durable no later than the
    /// leases it takes (SQLite: in the same transaction), so the queue never holds a finished
    /// job leased next to the job claimed in its place.
    fn claim(&mut self, task: &str, max: usize) -> Result<Vec<Job>>;

    /// [`QueueBackend::claim`], knowing the workers the jobs will be handed to: the `i`-th job
    /// returned goes to `to[i]` (`None`, or past its end: not known yet). A backend may record
    /// those holders with the leases, in one write; [`QueueBackend::record_holder`] still
    /// follows for every job handed, and must then record what differs. The default claims.
    fn claim_for(
        &mut self,
        task: &str,
        max: usize,
        to: &[Option<&LeaseHolder>],
    ) -> Result<Vec<Job>> {
        let _ = to;
        self.claim(task, max)
    }

    /// Daemon only: records which worker process runs `job` (step 5); may be buffered until
    /// [`QueueBackend::flush`]. The default records nothing, for backends whose leases end
    /// with the daemon.
    fn record_holder(&mut self, job: &Job, holder: &LeaseHolder) -> Result<()> {
        let _ = (job, holder);
        Ok(())
    }

    /// Daemon only: tells how long ended jobs are kept (called after opening and on
    /// reload). The default keeps nothing, for backends without a history.
    fn set_retention(&mut self, retention: Retention) {
        let _ = retention;
    }

    /// Daemon only: how the current attempt of `job` ended, with its output; called just
    /// before [`QueueBackend::complete`] and written with it. (An attempt begins when the job
    /// is handed to a worker: [`QueueBackend::record_holder`] records that, with the time.)
    fn record_attempt(&mut self, job: &Job, report: AttemptReport) {
        let _ = (job, report);
    }

    /// A job's record with its attempts ([`Error::UnknownJob`](crate::Error::UnknownJob)
    /// when there is none). The default: [`Error::Unsupported`](crate::Error::Unsupported).
    fn job(&mut self, id: &str) -> Result<JobRecord> {
        let _ = id;
        Err(crate::Error::Unsupported { backend: "amqp", what: "keep job records" })
    }

    /// Job records (without attempts), newest first.
    fn jobs(&mut self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let _ = filter;
        Err(crate::Error::Unsupported { backend: "amqp", what: "keep job records" })
    }

    /// A job's payload (`None` when there is no such job): what the HTTP face shows when
    /// `[http] show_payloads` is on. The default: [`Error::Unsupported`](crate::Error::Unsupported).
    fn payload(&mut self, id: &str) -> Result<Option<Vec<u8>>> {
        let _ = id;
        Err(crate::Error::Unsupported { backend: "amqp", what: "show payloads" })
    }

    /// Cancels a job that waits in the queue (ready or delayed): `Ok(true)` when it is now
    /// cancelled, `Ok(false)` when it is not waiting (running, ended, unknown).
    fn cancel_waiting(&mut self, id: &str) -> Result<bool> {
        let _ = id;
        Err(crate::Error::Unsupported { backend: "amqp", what: "cancel jobs" })
    }

    /// Client: blocks until a job or an attempt ends anywhere on a queue whose records every
    /// daemon shares (PostgreSQL), or `timeout` passes; the first call only starts listening
    /// and returns at once, so the caller looks at its jobs again with nothing missed. `None`
    /// (the default): the backend cannot tell, ask the daemon.
    fn wait_ends(&mut self, timeout: std::time::Duration) -> Result<Option<()>> {
        let _ = timeout;
        Ok(None)
    }

    /// Deletes ended jobs as `purge` says, in small transactions; returns how many.
    fn purge(&mut self, what: &Purge) -> Result<u64> {
        let _ = what;
        Err(crate::Error::Unsupported { backend: "amqp", what: "purge job records" })
    }

    /// Client only: the jobs published after this call ask for replies (AMQP: the reply queue
    /// is declared now, so no end is missed). The default does nothing.
    fn expect_replies(&mut self) -> Result<()> {
        Ok(())
    }

    /// Daemon only: each task's limits on starts (at start and after each reload): a rate
    /// (a token bucket: [`QueueBackend::claim`] takes no more than the tokens there are, and
    /// [`QueueBackend::next_due`] includes when the next token comes) and a concurrency key
    /// (a claim skips jobs whose key has `max_per_key` running). The default refuses any.
    fn set_limits(&mut self, limits: &[crate::limits::TaskLimits]) -> Result<()> {
        if limits.iter().all(crate::limits::TaskLimits::is_none) {
            return Ok(());
        }
        Err(crate::Error::Unsupported {
            backend: self.health().backend.name(),
            what: "limit a task's rate or concurrency per key (yet)",
        })
    }

    /// Daemon only: the periodic jobs to fire (at start and after each reload), applied as a
    /// diff to what is stored: a new name starts counting now, a changed cadence or zone
    /// starts afresh, an unchanged one keeps its state, a removed one is forgotten. The
    /// backend fires them exactly once per due time — each due time recorded in the same
    /// transaction as the job it publishes — and its [`QueueBackend::next_due`] includes the
    /// next due time. The default refuses any schedule.
    fn set_schedules(&mut self, schedules: &[crate::schedule::ScheduleConfig]) -> Result<()> {
        if schedules.is_empty() {
            return Ok(());
        }
        Err(crate::Error::Unsupported {
            backend: self.health().backend.name(),
            what: "run [[schedule]] (yet)",
        })
    }

    /// The state of `schedules` (as configured) in the store, in their order.
    fn schedules(
        &mut self,
        schedules: &[crate::schedule::ScheduleConfig],
    ) -> Result<Vec<ScheduleStatus>> {
        let _ = schedules;
        Err(crate::Error::Unsupported {
            backend: self.health().backend.name(),
            what: "run [[schedule]] (yet)",
        })
    }

    /// Publishes a job of `schedule` now (outside its cadence); returns the job ids.
    fn trigger_schedule(
        &mut self,
        schedule: &crate::schedule::ScheduleConfig,
    ) -> Result<Vec<String>> {
        let _ = schedule;
        Err(crate::Error::Unsupported {
            backend: self.health().backend.name(),
            what: "run [[schedule]] (yet)",
        })
    }

    /// Pauses (`true`) or resumes `schedule`, persisted. A resumed schedule counts from the
    /// resume: the due times that passed while it was paused are skipped.
    fn pause_schedule(
        &mut self,
        schedule: &crate::schedule::ScheduleConfig,
        paused: bool,
    ) -> Result<()> {
        let _ = (schedule, paused);
        Err(crate::Error::Unsupported {
            backend: self.health().backend.name(),
            what: "run [[schedule]] (yet)",
        })
    }

    /// Client only: waits until every job of `ids` has ended (with `any_attempt`, until an
    /// attempt of one ends), or `deadline` passes, from what the backend hears itself (AMQP:
    /// the replies and the events exchange, after its own history). Returns the records as
    /// far as known, in the order of `ids` (a job not ended has a record whose state is not
    /// final). `None`: this backend hears nothing itself — ask the daemon (the default).
    fn wait_heard(
        &mut self,
        ids: &[String],
        any_attempt: bool,
        deadline: Option<Instant>,
    ) -> Result<Option<Vec<JobRecord>>> {
        let _ = (ids, any_attempt, deadline);
        Ok(None)
    }

    /// Client only: asks every daemon to cancel job `id` (AMQP: a cancel request on the events
    /// exchange). `Ok(false)`: not this backend's way — cancel through the queue and the
    /// daemon's control socket (the default).
    fn cancel_everywhere(&mut self, id: &str) -> Result<bool> {
        let _ = id;
        Ok(false)
    }

    /// Daemon only: the ids of jobs whose cancellation was asked from elsewhere since the
    /// last call (AMQP: cancel requests heard on the events exchange). The default is none.
    fn take_cancels(&mut self) -> Vec<String> {
        Vec::new()
    }

    /// Daemon only, before the first claim: the jobs a previous daemon left in flight, with
    /// the worker each was handed to (step 5). The default is none.
    fn abandoned(&mut self) -> Result<Vec<Abandoned>> {
        Ok(Vec::new())
    }

    /// Daemon only, after [`QueueBackend::abandoned`]'s workers were stopped: puts those jobs
    /// back (the interrupted attempt not counted), except the ones in `keep`, which stay leased
    /// (their worker could not be stopped: running them again would run them twice at once).
    /// Returns how many were put back. The default puts back nothing.
    fn recover(&mut self, keep: &[Receipt]) -> Result<u64> {
        let _ = keep;
        Ok(0)
    }

    /// Daemon only: records the outcome of a claimed job (may be buffered until
    /// [`QueueBackend::flush`]). A retry's delay counts from this call, not from the flush:
    /// the job is claimable again once `delay` has passed after `complete` returned.
    fn complete(&mut self, job: &Job, outcome: Outcome) -> Result<()>;

    /// Makes buffered outcomes durable. Called at the end of every loop iteration.
    fn flush(&mut self) -> Result<()>;

    /// At the end of a loop iteration while the daemon runs: [`QueueBackend::flush`], or, in a
    /// backend that batches the outcomes of a few iterations into one write, nothing yet when
    /// [`QueueBackend::next_due`] reports the deadline by which they are written.
    fn flush_soon(&mut self) -> Result<()> {
        self.flush()
    }

    /// The earliest instant a delayed job becomes available on its own, if the daemon must
    /// wake up for it (see step 6).
    fn next_due(&mut self) -> Result<Option<Instant>>;

    /// Depth per bound task.
    fn depths(&mut self) -> Result<BTreeMap<String, QueueDepth>>;

    /// Dead-lettered jobs, oldest first, at most `limit`, of one task or all.
    fn dead_letters(&mut self, task: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>>;

    /// Makes dead-lettered jobs of `task` (or of every task) available again with a fresh
    /// attempt count: every one, or those named. Returns how many.
    fn requeue_dead(&mut self, task: Option<&str>, which: &Requeue) -> Result<u64>;

    /// How the backend is doing.
    fn health(&self) -> Health;

    /// Stops consuming and closes cleanly; unfinished claimed jobs become available again.
    fn shutdown(&mut self) -> Result<()>;
}

/// Opens the backend the config names.
pub fn open(config: &QueueConfig, mode: OpenMode) -> Result<Box<dyn QueueBackend>> {
    match config.backend {
        BackendKind::Sqlite => {
            Ok(Box::new(sqlite::SqliteQueue::open_with(&config.path, mode, config.durability)?))
        }
        BackendKind::Amqp => amqp::open(config, mode),
        BackendKind::Postgres => postgres::open(config, mode),
    }
}
