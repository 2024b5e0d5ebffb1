//! [`QueueBackend`] for the AMQP backend: each call is a message to the broker thread (a
//! request with a reply for what a client waits on), or reads what it already sent.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use lapin::Acker;
use procyard_core::Report;

use super::broker::{Cmd, JobMeta, Sending};
use super::handle::{AmqpQueue, REQUEST_TIMEOUT};
use super::periodic::{Answer, Request};
use super::topology;
use crate::limits::ConcurrencyKey;
use crate::queue::ScheduleStatus;
use crate::queue::{
    AttemptReport, BackendKind, DeadLetter, Health, Job, JobFilter, JobRecord, LeaseHolder,
    OpenMode, Outcome, PartialPublish, Publication, PublishOptions, Purge, QueueBackend,
    QueueDepth, Requeue, Retention, TaskBinding, check_payload,
};
use crate::schedule::ScheduleConfig;
use crate::{Error, Result};

/// How long the daemon reuses broker depths before asking again.
const DEPTH_MAX_AGE: Duration = Duration::from_millis(500);
/// How long a daemon waits for broker depths before using the last known ones.
const DEPTH_TIMEOUT: Duration = Duration::from_secs(2);

impl AmqpQueue {
    /// Publishes one job (with `reply_to`, its outcome is sent to that queue).
    fn publish_to(
        &mut self,
        routing_key: &str,
        payload: &[u8],
        reply_to: Option<String>,
        mut sending: Sending,
    ) -> Result<Vec<String>> {
        crate::routing::validate_key(routing_key)?;
        // The same limit as the embedded queue, before anything reaches the broker.
        check_payload(payload)?;
        if sending.not_before.is_some() && !self.routes(routing_key) {
            // A delayed job reaches its task queue without the broker's mandatory check.
            return Err(Error::Unroutable { routing_key: routing_key.to_owned() });
        }
        if self.priorities && sending.priority.is_none() {
            sending.priority = Some(crate::queue::DEFAULT_PRIORITY);
        }
        let id = uuid::Uuid::now_v7().to_string();
        let (key, data, job_id) = (routing_key.to_owned(), payload.to_vec(), id.clone());
        if reply_to.is_some() {
            self.replies.insert(id.clone());
        }
        self.request("publish", REQUEST_TIMEOUT, |reply| Cmd::Publish {
            routing_key: key,
            payload: data,
            id: job_id,
            reply_to,
            sending,
            reply,
        })?;
        Ok(vec![id])
    }
}

/// The concurrency key of a delivery (from its publisher headers or its payload).
fn delivery_key(source: &ConcurrencyKey, d: &lapin::message::Delivery) -> Option<String> {
    let headers = topology::header_str(d.properties.headers().as_ref(), topology::H_HEADERS);
    source.of(headers.as_deref(), &d.data)
}

impl AmqpQueue {
    /// Client: a request to the daemon that runs the schedules (or to the state itself).
    fn ask_scheduler(&self, request: Request, schedules: &[ScheduleConfig]) -> Result<Answer> {
        if self.mode == OpenMode::Daemon {
            // The broker thread may be the scheduler that would have to answer: never wait on
            // ourselves.
            return Err(Error::Unsupported {
                backend: "amqp",
                what: "answer schedule requests inside a daemon (the command-line client asks the daemon that runs them)",
            });
        }
        let schedules = schedules.to_vec();
        self.request("reach the schedules", REQUEST_TIMEOUT, |reply| Cmd::SchedRequest {
            request,
            schedules,
            reply,
        })
    }
}

impl QueueBackend for AmqpQueue {
    fn bind(&mut self, tasks: &[TaskBinding]) -> Result<()> {
        self.tasks = tasks.to_vec();
        let tasks = tasks.to_vec();
        self.request("declare the topology", REQUEST_TIMEOUT, |reply| Cmd::Bind { tasks, reply })
    }

    fn attach(&mut self, registry: &mio::Registry, token: mio::Token) -> Result<()> {
        let waker = mio::Waker::new(registry, token)
            .map_err(|source| Error::Os { action: "create the AMQP waker", source })?;
        if self.waker.set(waker).is_err() {
            return Err(Error::Os {
                action: "attach the AMQP backend",
                source: std::io::Error::other("already attached to an event loop"),
            });
        }
        // Anything that arrived before the waker existed is handled now.
        self.drain();
        Ok(())
    }

    fn on_wake(&mut self) -> Result<()> {
        self.drain();
        Ok(())
    }

    fn publish(&mut self, routing_key: &str, payload: &[u8]) -> Result<Vec<String>> {
        // A client that listens (it waited or will wait) asks for replies.
        let reply_to = self.listener.clone();
        self.publish_to(routing_key, payload, reply_to, Sending::default())
    }

    fn publish_with(
        &mut self,
        routing_key: &str,
        payloads: &[Vec<u8>],
        options: &PublishOptions,
    ) -> Result<Publication, Box<PartialPublish>> {
        let early = |error| Box::new(PartialPublish { committed: Vec::new(), error });
        crate::routing::validate_key(routing_key).map_err(early)?;
        for p in payloads {
            check_payload(p).map_err(early)?;
        }
        let sending = self.sending(options).map_err(early)?;
        let mut ids = Vec::with_capacity(payloads.len());
        for p in payloads {
            let reply_to = self.listener.clone();
            match self.publish_to(routing_key, p, reply_to, sending.clone()) {
                Ok(new) => ids.extend(new),
                Err(error) => return Err(Box::new(PartialPublish { committed: ids, error })),
            }
        }
        Ok(Publication { ids, existing: Vec::new() })
    }

    fn expect_replies(&mut self) -> Result<()> {
        self.listener().map(|_| ())
    }

    fn wait_heard(
        &mut self,
        ids: &[String],
        any_attempt: bool,
        deadline: Option<Instant>,
    ) -> Result<Option<Vec<JobRecord>>> {
        if self.mode != OpenMode::Client {
            return Ok(None);
        }
        self.wait_for(ids, any_attempt, deadline).map(Some)
    }

    fn cancel_everywhere(&mut self, id: &str) -> Result<bool> {
        self.request_cancel(id).map(|()| true)
    }

    fn take_cancels(&mut self) -> Vec<String> {
        self.drain();
        std::mem::take(&mut self.cancels)
    }

    fn record_holder(&mut self, job: &Job, holder: &LeaseHolder) -> Result<()> {
        self.note_holder(job, holder);
        Ok(())
    }

    fn set_retention(&mut self, retention: Retention) {
        if let Some(h) = self.history.as_mut() {
            h.set_retention(retention);
        }
    }

    fn record_attempt(&mut self, job: &Job, report: AttemptReport) {
        self.note_attempt(job, report);
    }

    fn job(&mut self, id: &str) -> Result<JobRecord> {
        crate::queue::check_job_id(id)?;
        self.history()?.job(id)
    }

    fn jobs(&mut self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        self.history()?.jobs(filter)
    }

    fn purge(&mut self, what: &Purge) -> Result<u64> {
        self.history()?.purge(what)
    }

    fn set_schedules(&mut self, schedules: &[ScheduleConfig]) -> Result<()> {
        if self.mode != OpenMode::Daemon {
            return Ok(());
        }
        let schedules = schedules.to_vec();
        self.request("start the scheduler", REQUEST_TIMEOUT, |reply| Cmd::SetSchedules {
            schedules,
            reply,
        })
    }

    fn schedules(&mut self, schedules: &[ScheduleConfig]) -> Result<Vec<ScheduleStatus>> {
        Ok(self.ask_scheduler(Request::List, schedules)?.statuses)
    }

    fn trigger_schedule(&mut self, schedule: &ScheduleConfig) -> Result<Vec<String>> {
        let request = Request::Trigger { name: schedule.name.clone() };
        Ok(self.ask_scheduler(request, std::slice::from_ref(schedule))?.ids)
    }

    fn pause_schedule(&mut self, schedule: &ScheduleConfig, paused: bool) -> Result<()> {
        let name = schedule.name.clone();
        let request = if paused { Request::Pause { name } } else { Request::Resume { name } };
        self.ask_scheduler(request, std::slice::from_ref(schedule)).map(|_| ())
    }

    fn set_capacity(&mut self, task: &str, capacity: usize) -> Result<()> {
        if self.mode != OpenMode::Daemon {
            return Ok(());
        }
        self.drain();
        if capacity == 0 {
            // Give what we hold back to the broker, so another daemon can run it.
            let ackers: Vec<Acker> =
                self.inbox.take_all(task).into_iter().map(|d| d.acker).collect();
            if !ackers.is_empty() {
                let _ = self.cmd.send(Cmd::Return { ackers });
            }
        }
        let capacity = u16::try_from(capacity).unwrap_or_else(|_| {
            tracing::warn!(
                %task,
                asked = capacity,
                "amqp: a consumer prefetch has 16 bits: the daemon holds at most 65,535 jobs of this task"
            );
            u16::MAX
        });
        self.send("set the prefetch", Cmd::SetCapacity { task: task.to_owned(), capacity })
    }

    fn claim(&mut self, task: &str, max: usize) -> Result<Vec<Job>> {
        self.drain();
        let now = Instant::now();
        let max = self.gate.allowed(task, max, now);
        let keyed = self.gate.keyed(task);
        let mut jobs = Vec::new();
        while jobs.len() < max {
            let want = max - jobs.len();
            let received = match &keyed {
                None => self.inbox.take(task, want),
                Some((source, limit)) => {
                    // Skip the jobs whose key runs `max_per_key` here (counting these).
                    let (gate, mut taken) = (&self.gate, HashMap::<String, usize>::new());
                    self.inbox.take_if(task, want, |d| {
                        let Some(key) = delivery_key(source, d) else { return true };
                        let n = gate.running(task, &key) + taken.get(&key).copied().unwrap_or(0);
                        if n >= *limit {
                            return false;
                        }
                        *taken.entry(key).or_default() += 1;
                        true
                    })
                }
            };
            if received.is_empty() {
                break;
            }
            for r in received {
                let key = keyed.as_ref().and_then(|(source, _)| delivery_key(source, &r.delivery));
                let job = self.job_from(task, r);
                if let Some(h) = self.history.as_mut() {
                    h.claimed(&job);
                }
                if self.tombstones.contains(&job.id, Instant::now()) {
                    // Asked to be cancelled before it arrived: acknowledged, never run.
                    tracing::info!(job = %job.id, %task, "amqp: job cancelled before it ran");
                    let reason = "cancelled before it ran".to_owned();
                    self.complete(&job, Outcome::Cancelled { reason })?;
                    continue;
                }
                self.gate.started(task, &[(job.receipt.0, key)], now);
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    fn set_limits(&mut self, limits: &[crate::limits::TaskLimits]) -> Result<()> {
        self.gate.set(limits, Instant::now());
        Ok(())
    }

    fn complete(&mut self, job: &Job, outcome: Outcome) -> Result<()> {
        self.drain();
        self.gate.ended(job.receipt.0);
        let Some(flight) = self.in_flight.remove(&job.receipt.0) else {
            tracing::warn!("amqp: outcome for job {} which is not in flight here; ignored", job.id);
            return Ok(());
        };
        if self.inbox.live_epoch() != Some(flight.epoch) {
            tracing::warn!(
                "amqp: job {} of task {} finished after its broker connection closed; not acknowledged, the broker will deliver it again",
                job.id,
                flight.task
            );
            return Ok(());
        }
        self.note_outcome(
            job,
            &outcome,
            flight.reply_to.as_deref(),
            flight.started_ms,
            flight.report,
        );
        let meta = JobMeta {
            id: job.id.clone(),
            task: flight.task,
            routing_key: job.routing_key.clone(),
            payload: job.payload.clone(),
            attempt: job.attempt,
            reply_to: flight.reply_to,
            priority: flight.priority,
            headers_json: flight.headers_json,
        };
        // Handed over with the turn's events, at the flush (the contract's buffering).
        let settle = Cmd::Settle { epoch: flight.epoch, acker: flight.acker, job: meta, outcome };
        self.settles.push(settle);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        // Outcomes and events go to the broker thread together, once per loop turn; the
        // history is written here.
        let handed = self.hand_over(true);
        match self.history.as_mut() {
            Some(h) if self.mode == OpenMode::Daemon => h.flush()?,
            _ => {}
        }
        handed
    }

    fn flush_soon(&mut self) -> Result<()> {
        // The same, but events alone wait (`events_due`) for a turn whose outcomes wake the
        // broker thread anyway.
        let handed = self.hand_over(false);
        match self.history.as_mut() {
            Some(h) if self.mode == OpenMode::Daemon => h.flush()?,
            _ => {}
        }
        handed
    }

    fn next_due(&mut self) -> Result<Option<Instant>> {
        // Retries and delayed jobs come back through the broker (TTL queues), which wakes
        // us; only a task waiting for its rate, or events held back, need a deadline.
        let events = self.events_due();
        Ok([self.gate.next_wake(Instant::now()), events].into_iter().flatten().min())
    }

    fn depths(&mut self) -> Result<BTreeMap<String, QueueDepth>> {
        self.drain();
        let names = self.task_names(None);
        let fresh = self.depth_at.is_some_and(|at| at.elapsed() < DEPTH_MAX_AGE);
        if self.mode == OpenMode::Client || !fresh {
            let timeout =
                if self.mode == OpenMode::Client { REQUEST_TIMEOUT } else { DEPTH_TIMEOUT };
            let tasks = names.clone();
            match self.request("read queue depths", timeout, |reply| Cmd::Depths { tasks, reply }) {
                Ok(d) => {
                    self.depth_cache = d;
                    self.depth_at = Some(Instant::now());
                }
                Err(e) if self.mode == OpenMode::Client => return Err(e),
                Err(e) => {
                    tracing::debug!("amqp: using last known depths: {}", Report(&e));
                    // Do not ask again on every call while the broker is away.
                    self.depth_at = Some(Instant::now());
                }
            }
        }
        let mut out = BTreeMap::new();
        for name in names {
            let broker = self.depth_cache.get(&name).copied().unwrap_or_default();
            let waiting = self.inbox.waiting(&name) as u64;
            let in_flight = self.in_flight.values().filter(|f| f.task == name).count() as u64;
            let rate_limited = waiting > 0 && self.gate.is_throttled(&name, Instant::now());
            out.insert(
                name,
                QueueDepth {
                    ready: broker.ready + waiting,
                    delayed: Some(broker.delayed),
                    in_flight,
                    dead: Some(broker.dead),
                    done_total: None,
                    published_total: None,
                    rate_limited,
                },
            );
        }
        Ok(out)
    }

    fn dead_letters(&mut self, task: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>> {
        let tasks = self.task_names(task);
        self.request("read dead letters", REQUEST_TIMEOUT, |reply| Cmd::DeadLetters {
            tasks,
            limit,
            reply,
        })
    }

    fn requeue_dead(&mut self, task: Option<&str>, which: &Requeue) -> Result<u64> {
        let tasks = self.task_names(task);
        let which = which.clone();
        self.request("requeue dead letters", REQUEST_TIMEOUT, |reply| Cmd::Requeue {
            tasks,
            which,
            reply,
        })
    }

    fn health(&self) -> Health {
        let ok = self.inbox.live_epoch().is_some();
        let detail = match (ok, self.inbox.last_problem()) {
            (true, None) => format!("connected to {} (exchange {})", self.url_shown, self.exchange),
            (true, Some(p)) => format!(
                "connected to {} (exchange {}); last problem: {p}",
                self.url_shown, self.exchange
            ),
            (false, p) => format!(
                "disconnected from {}: {}; reconnecting",
                self.url_shown,
                p.unwrap_or("not connected yet")
            ),
        };
        Health { backend: BackendKind::Amqp, ok, detail }
    }

    fn shutdown(&mut self) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        if let Err(e) = self.hand_over(true) {
            tracing::warn!("amqp: {}", Report(&e));
        }
        if self.mode == OpenMode::Daemon
            && let Some(h) = self.history.as_mut()
        {
            h.close();
        }
        let result =
            self.request("close the connection", REQUEST_TIMEOUT, |reply| Cmd::Shutdown { reply });
        self.join();
        self.drain();
        result
    }
}
