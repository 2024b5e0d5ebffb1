//! [`QueueBackend`] for the PostgreSQL backend: each call is a statement or a transaction on
//! the work connection; the session thread's flags (jobs published, a daemon gone) are read
//! on every wake-up, claim and flush.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::PgQueue;
use crate::queue::{
    Abandoned, AttemptReport, BackendKind, DeadLetter, Health, Job, JobFilter, JobRecord,
    LeaseHolder, OpenMode, Outcome, PartialPublish, Publication, PublishOptions, Purge,
    QueueBackend, QueueDepth, Receipt, Requeue, Retention, ScheduleStatus, TaskBinding,
};
use crate::schedule::ScheduleConfig;
use crate::{Error, Result, routing};

impl PgQueue {
    /// Puts back the leases of dead daemons if the session saw one.
    fn recover_if_seen(&mut self) {
        let seen =
            self.session.as_ref().is_some_and(|s| s.shared.dead.swap(false, Ordering::SeqCst));
        if seen && let Err(e) = self.recover_dead(&[]) {
            tracing::error!(error = %e.chain(), "postgres: unable to recover the jobs of a dead daemon");
            if let Some(s) = &self.session {
                s.shared.dead.store(true, Ordering::SeqCst);
            }
        }
    }
}

impl QueueBackend for PgQueue {
    fn bind(&mut self, tasks: &[TaskBinding]) -> Result<()> {
        for t in tasks {
            for p in &t.routing_keys {
                routing::validate_pattern(p)?;
            }
        }
        self.tasks = tasks.to_vec();
        Ok(())
    }

    fn attach(&mut self, registry: &mio::Registry, token: mio::Token) -> Result<()> {
        let Some(session) = &self.session else { return Ok(()) };
        let waker = mio::Waker::new(registry, token)
            .map_err(|source| Error::Os { action: "create the PostgreSQL waker", source })?;
        if session.shared.waker.set(waker).is_err() {
            return Err(Error::Os {
                action: "attach the PostgreSQL backend",
                source: std::io::Error::other("already attached to an event loop"),
            });
        }
        Ok(())
    }

    fn on_wake(&mut self) -> Result<()> {
        if let Some(s) = &self.session
            && s.shared.jobs.swap(false, Ordering::SeqCst)
        {
            // Something was published or requeued: retry times may have changed too.
            self.due_cache = None;
            self.ahead.published();
        }
        if let Some(s) = &self.session
            && s.shared.schedules.swap(false, Ordering::SeqCst)
        {
            self.book.invalidate();
        }
        self.recover_if_seen();
        Ok(())
    }

    fn publish(&mut self, routing_key: &str, payload: &[u8]) -> Result<Vec<String>> {
        self.insert_jobs(routing_key, &[payload])
    }

    fn publish_batch(
        &mut self,
        routing_key: &str,
        payloads: &[Vec<u8>],
    ) -> Result<Vec<String>, Box<PartialPublish>> {
        let payloads: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        self.insert_jobs(routing_key, &payloads)
            .map_err(|error| Box::new(PartialPublish { committed: Vec::new(), error }))
    }

    fn publish_with(
        &mut self,
        routing_key: &str,
        payloads: &[Vec<u8>],
        options: &PublishOptions,
    ) -> Result<Publication, Box<PartialPublish>> {
        if options.is_plain() {
            let ids = self.publish_batch(routing_key, payloads)?;
            return Ok(Publication { ids, existing: Vec::new() });
        }
        let payloads: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        self.insert_with(routing_key, &payloads, options)
            .map_err(|error| Box::new(PartialPublish { committed: Vec::new(), error }))
    }

    fn set_capacity(&mut self, task: &str, capacity: usize) -> Result<()> {
        if self.mode == OpenMode::Daemon {
            self.set_ahead_capacity(task, capacity);
        }
        Ok(())
    }

    fn claim(&mut self, task: &str, max: usize) -> Result<Vec<Job>> {
        if max == 0 || self.mode != OpenMode::Daemon || !self.is_bound(task) {
            return Ok(Vec::new());
        }
        self.recover_if_seen();
        // A rate-limited task whose bucket is empty waits for its next token (a deadline).
        if self.limits.is_throttled(task, Instant::now()) {
            return Ok(Vec::new());
        }
        // Delayed jobs whose time came join the claim order first (a failure shows in the
        // claim's own result, on the same connection).
        let _ = self.promote_if_due();
        if self.limits.of(task).is_some() {
            return self.claim_limited(task, max);
        }
        self.claim_ahead(task, max)
    }

    fn record_holder(&mut self, job: &Job, holder: &LeaseHolder) -> Result<()> {
        self.buffer_holder(job, holder);
        Ok(())
    }

    fn set_retention(&mut self, retention: Retention) {
        self.retention = retention;
    }

    fn record_attempt(&mut self, job: &Job, report: AttemptReport) {
        self.buffer_attempt(job, report);
    }

    fn job(&mut self, id: &str) -> Result<JobRecord> {
        self.read_job(id)
    }

    fn jobs(&mut self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        self.list_jobs(filter)
    }

    fn cancel_waiting(&mut self, id: &str) -> Result<bool> {
        self.cancel_row(id)
    }

    fn wait_ends(&mut self, timeout: Duration) -> Result<Option<()>> {
        self.wait_for_ends(timeout).map(Some)
    }

    fn payload(&mut self, id: &str) -> Result<Option<Vec<u8>>> {
        crate::queue::check_job_id(id)?;
        self.with("read a payload from", |c| {
            Ok(c.query_opt("SELECT payload FROM jobs WHERE id = $1", &[&id])?.map(|r| r.get(0)))
        })
    }

    fn set_limits(&mut self, limits: &[crate::limits::TaskLimits]) -> Result<()> {
        self.limits.set(limits);
        self.put_back_limited();
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

    fn cancel_everywhere(&mut self, id: &str) -> Result<bool> {
        // A running job may be on any daemon: ask them all; the one running it stops it.
        // Waiting and ended jobs go the usual way (cancelled in the table, or refused).
        crate::queue::check_job_id(id)?;
        let channel = self.target.cancel_channel();
        self.with("ask the daemons to cancel a job on", |c| {
            let row = c.query_opt(
                "SELECT pg_notify($2, id) FROM jobs WHERE id = $1 AND state = 1",
                &[&id, &channel],
            )?;
            Ok(row.is_some())
        })
    }

    fn take_cancels(&mut self) -> Vec<String> {
        let ids = self
            .session
            .as_ref()
            .and_then(|s| s.shared.cancels.lock().ok().map(|mut ids| std::mem::take(&mut *ids)))
            .unwrap_or_default();
        self.cancel_held(ids)
    }

    fn purge(&mut self, what: &Purge) -> Result<u64> {
        self.purge_rows(what)
    }

    fn abandoned(&mut self) -> Result<Vec<Abandoned>> {
        self.leases_of_the_dead()
    }

    fn recover(&mut self, keep: &[Receipt]) -> Result<u64> {
        self.recover_dead(keep)
    }

    fn complete(&mut self, job: &Job, outcome: Outcome) -> Result<()> {
        self.ahead.completed(job);
        self.buffer_outcome(job, outcome);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.recover_if_seen();
        self.prune_step();
        if self.buffers.is_empty() {
            return Ok(());
        }
        self.flush_ahead()
    }

    fn flush_soon(&mut self) -> Result<()> {
        if self.may_defer_write() {
            return Ok(());
        }
        self.flush()
    }

    fn next_due(&mut self) -> Result<Option<Instant>> {
        let trouble = self.trouble.as_ref().map(|t| t.retry_at).filter(|t| *t > Instant::now());
        let retry = match self.delayed_due() {
            Ok(r) => r,
            // Unreachable: wake for the next attempt to reconnect.
            Err(_) if trouble.is_some() || self.trouble.is_some() => None,
            Err(e) => return Err(e),
        };
        let trouble = self.trouble.as_ref().map(|t| t.retry_at);
        let prune = (self.mode == OpenMode::Daemon).then_some(self.prune_at);
        // Schedules due now are fired here (the loop asks once per turn); the next due time
        // of the others is a deadline. Unreachable: the reconnect attempt comes first.
        let schedule = match self.mode {
            OpenMode::Daemon => self.fire_due_schedules().unwrap_or_else(|e| {
                tracing::warn!(error = %e.chain(), "postgres: unable to fire schedules; will retry");
                None
            }),
            OpenMode::Client => None,
        };
        // A rate-limited task's next token is a deadline too.
        let token = self.limits.next_wake(Instant::now());
        // Outcomes left for the next write (`flush_soon`) are written by their deadline.
        let write = self.write_due();
        Ok([retry, trouble, prune, schedule, token, write].into_iter().flatten().min())
    }

    fn depths(&mut self) -> Result<BTreeMap<String, QueueDepth>> {
        let mut depths = self.count_depths()?;
        let now = Instant::now();
        for (task, d) in &mut depths {
            d.rate_limited = d.ready > 0 && self.limits.is_throttled(task, now);
        }
        Ok(depths)
    }

    fn dead_letters(&mut self, task: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>> {
        self.list_dead(task, limit)
    }

    fn requeue_dead(&mut self, task: Option<&str>, which: &Requeue) -> Result<u64> {
        self.requeue(task, which)
    }

    fn health(&self) -> Health {
        let session = self.session.as_ref().map(|s| &s.shared);
        let session_ok = session.is_none_or(|s| s.connected.load(Ordering::SeqCst));
        let problem = session
            .and_then(|s| s.problem.lock().ok().and_then(|p| p.clone()))
            .filter(|_| !session_ok);
        let where_ = format!("{} (schema {})", self.target.shown, self.target.schema);
        let (ok, detail) = match (&self.trouble, problem) {
            (Some(t), _) => (false, format!("database unreachable: {where_}: {}", t.describe())),
            (None, Some(p)) => {
                (false, format!("database unreachable: {where_}: session lost ({p}); reconnecting"))
            }
            (None, None) if !session_ok => {
                (false, format!("database unreachable: {where_}: session lost; reconnecting"))
            }
            (None, None) => (true, format!("connected to {where_} as daemon {}", self.owner())),
        };
        Health { backend: BackendKind::Postgres, ok, detail }
    }

    fn shutdown(&mut self) -> Result<()> {
        let flushed = self.flush();
        if self.mode == OpenMode::Daemon && self.session.is_some() {
            match self.release_own() {
                Ok(n) if n > 0 => tracing::info!(jobs = n, "returned unfinished jobs to the queue"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "postgres: unable to return unfinished jobs (other daemons recover them when this session ends)")
                }
            }
        }
        if let Some(mut s) = self.session.take() {
            s.stop();
        }
        flushed
    }
}
