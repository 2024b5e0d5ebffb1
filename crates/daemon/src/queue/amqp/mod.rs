//! The AMQP 0-9-1 (RabbitMQ) backend: many daemons, on many machines, fed by one broker.
//!
//! # Design
//!
//! The client library (`lapin`) runs on ONE dedicated thread with a current-thread tokio
//! runtime (module `broker`). The daemon's thread talks to it through a tokio unbounded channel
//! (commands; sending never blocks) and receives deliveries and connection changes through a
//! crossbeam channel, each followed by a wake-up of the daemon's [`mio::Waker`] (created in
//! [`QueueBackend::attach`]). Nothing polls.
//!
//! The topology (table below) is declared idempotently by daemons and clients alike: a
//! durable topic exchange, one durable queue per task (quorum where the broker supports it,
//! or classic when `[queue] queue_type = "classic"`) bound with the task's routing keys, a
//! dead-letter exchange with one dead queue per task, and per-delay retry queues whose TTL
//! dead-letters jobs back into their task queue with the attempt count in a header.
//!
//! - **Acknowledgement** happens only when the daemon reports the job's outcome: `Done` acks;
//!   `Retry` publishes a copy to the retry queue (publisher confirm) and then acks;
//!   `DeadLetter` publishes a copy, with the reason, to the dead queue and then acks.
//! - **Prefetch** (`basic.qos`, per consumer) equals the capacity the daemon sets for the
//!   task, so a busy daemon does not hoard jobs an idle one could run.
//! - **Publish** waits for the publisher confirm and uses the mandatory flag: a key no queue is
//!   bound to is [`Error::Unroutable`], a negative confirm [`Error::PublishRejected`].
//! - **Queue type**: a quorum queue commits every acknowledgement to its Raft log before it
//!   returns the consumer's credit, so with prefetch = capacity each job waits for a log
//!   commit; classic queues skip it and run about twice the jobs per second on one broker
//!   node, without replication. A queue that already exists keeps the type it has.
//! - **Depths** come from passive declares (ready messages on the broker), plus what this
//!   daemon holds; never from the broker-wide consumer count.
//! - **Connection loss**: the broker thread reconnects with exponential backoff and jitter,
//!   redeclares and resumes. Deliveries buffered but not claimed are dropped (the broker
//!   requeues them); jobs already running finish, but their outcome is not acknowledged on
//!   the dead connection: it is logged, and the broker delivers the job again (at least once).
//!
//! For the exchange `E` (default `procyard`) and a task `T`:
//!
//! | object | name | kind |
//! | --- | --- | --- |
//! | jobs exchange | `E` | durable topic exchange; publishers send here |
//! | task queue | `E.T` | durable, quorum where supported (or classic by config); bound to `E` with the task's keys; dead-letters to `E.dead` |
//! | dead-letter exchange | `E.dead` | durable direct exchange, routing key = task name |
//! | dead queue | `E.T.dead` | durable, bound to `E.dead` with `T` |
//! | retry queue | `E.T.retry.<ms>ms` | durable, `x-message-ttl = ms`, dead-letters back into `E.T` |
//!
//! Messages are persistent, carry the job id as `message-id` and the headers
//! `x-procyard-attempt` (1 for a fresh job) and `x-procyard-routing-key`; dead letters add
//! `x-procyard-reason` and `x-procyard-task`.
//!
//! # Limitations
//!
//! A job published to a key bound by several tasks is one message routed to several queues:
//! its copies share one job id. Delivery is at least once: a daemon killed (or cut off) while
//! running a job makes that job run again elsewhere. `amqps://` needs a TLS-enabled build of
//! the client, which this crate does not enable. Keys bound by a previous run with another
//! config stay bound until unbound by hand (`rabbitmqctl`); this process unbinds only what it
//! bound itself.

mod broker;
mod topology;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lapin::Acker;
use lapin::message::Delivery;
use tokio::sync::mpsc::UnboundedSender;

use self::broker::{Broker, BrokerDepth, Cmd, Ev, JobMeta, Reply, Sink};
use super::{
    DeadLetter, Health, Job, OpenMode, Outcome, QueueBackend, QueueConfig, QueueDepth, Receipt,
    TaskBinding,
};
use crate::{Error, Result};

/// How long a synchronous request may wait for the broker thread.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the daemon reuses broker depths before asking again.
const DEPTH_MAX_AGE: Duration = Duration::from_millis(500);
/// How long a daemon waits for broker depths before using the last known ones.
const DEPTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens the AMQP backend for `config`. A client fails if the broker does not answer; a
/// daemon starts anyway and keeps reconnecting in the background (see [`QueueBackend::health`]).
pub(crate) fn open(config: &QueueConfig, mode: OpenMode) -> Result<Box<dyn QueueBackend>> {
    Ok(Box::new(AmqpQueue::open(config, mode)?))
}

/// A delivery received and not yet claimed.
struct Pending {
    epoch: u64,
    delivery: Box<Delivery>,
}

/// A claimed job whose outcome is not known yet.
struct InFlight {
    epoch: u64,
    task: String,
    acker: Acker,
}

/// The AMQP backend, as seen from the daemon's thread.
pub(crate) struct AmqpQueue {
    mode: OpenMode,
    url_shown: String,
    exchange: String,
    cmd: UnboundedSender<Cmd>,
    events: crossbeam_channel::Receiver<Ev>,
    waker: Arc<OnceLock<mio::Waker>>,
    thread: Option<JoinHandle<()>>,
    tasks: Vec<TaskBinding>,
    buffered: HashMap<String, VecDeque<Pending>>,
    in_flight: HashMap<u64, InFlight>,
    next_receipt: u64,
    /// The epoch of the live connection, `None` while disconnected.
    live_epoch: Option<u64>,
    last_problem: Option<String>,
    depth_cache: BTreeMap<String, BrokerDepth>,
    depth_at: Option<Instant>,
}

impl AmqpQueue {
    fn open(config: &QueueConfig, mode: OpenMode) -> Result<Self> {
        let url = config.url.clone().ok_or_else(|| Error::Broker {
            action: "connect",
            source: "no broker url in [queue] url".into(),
        })?;
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
        let waker = Arc::new(OnceLock::new());
        let sink = Sink { tx: ev_tx, waker: Arc::clone(&waker) };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Os { action: "start the AMQP client runtime", source })?;
        let (started_tx, started_rx) = crossbeam_channel::bounded(1);
        let broker = Broker::new(
            url.clone(),
            config.exchange.clone(),
            config.queue_type,
            mode,
            cmd_tx.clone(),
            sink,
        );
        let thread = std::thread::Builder::new()
            .name("procyard-amqp".into())
            .spawn(move || runtime.block_on(broker.run(cmd_rx, started_tx)))
            .map_err(|source| Error::Os { action: "start the AMQP client thread", source })?;
        let mut queue = AmqpQueue {
            mode,
            url_shown: topology::redact_url(&url),
            exchange: config.exchange.clone(),
            cmd: cmd_tx,
            events: ev_rx,
            waker,
            thread: Some(thread),
            tasks: Vec::new(),
            buffered: HashMap::new(),
            in_flight: HashMap::new(),
            next_receipt: 1,
            live_epoch: None,
            last_problem: None,
            depth_cache: BTreeMap::new(),
            depth_at: None,
        };
        let first = started_rx.recv_timeout(REQUEST_TIMEOUT).map_err(|_| Error::Broker {
            action: "connect",
            source: "the AMQP client thread did not answer".into(),
        })?;
        match (first, mode) {
            (Ok(()), _) => {}
            (Err(e), OpenMode::Client) => {
                queue.join();
                return Err(e);
            }
            (Err(e), OpenMode::Daemon) => {
                tracing::warn!(
                    "amqp: broker {} unavailable at start ({}); will keep trying",
                    queue.url_shown,
                    broker::error_chain(&e)
                );
            }
        }
        queue.drain();
        Ok(queue)
    }

    /// Sends a request to the broker thread and waits for its answer.
    fn request<T>(
        &self,
        action: &'static str,
        timeout: Duration,
        make: impl FnOnce(Reply<T>) -> Cmd,
    ) -> Result<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.cmd.send(make(tx)).map_err(|_| Error::Broker {
            action,
            source: "the AMQP client thread has stopped".into(),
        })?;
        rx.recv_timeout(timeout).map_err(|_| Error::Broker {
            action,
            source: format!("no answer within {}s", timeout.as_secs()).into(),
        })?
    }

    /// Processes the events the broker thread sent.
    fn drain(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                Ev::Delivery { epoch, task, delivery } => {
                    if self.live_epoch == Some(epoch) {
                        self.buffered
                            .entry(task)
                            .or_default()
                            .push_back(Pending { epoch, delivery });
                    }
                }
                Ev::Connected { epoch } => {
                    tracing::info!(
                        "amqp: connected to {} (exchange {})",
                        self.url_shown,
                        self.exchange
                    );
                    self.live_epoch = Some(epoch);
                    self.last_problem = None;
                }
                Ev::Disconnected { epoch, error } => {
                    if self.live_epoch.is_some_and(|live| live > epoch) {
                        continue;
                    }
                    self.live_epoch = None;
                    let dropped: usize = self.buffered.values().map(VecDeque::len).sum();
                    self.buffered.clear();
                    if dropped > 0 {
                        tracing::info!(
                            "amqp: {dropped} received jobs not started; the broker requeues them"
                        );
                    }
                    self.last_problem = Some(error);
                }
                Ev::Warning(message) => {
                    tracing::warn!("amqp: {message}");
                    self.last_problem = Some(message);
                }
            }
        }
    }

    fn task_names(&self, task: Option<&str>) -> Vec<String> {
        match task {
            Some(t) => vec![t.to_owned()],
            None => self.tasks.iter().map(|t| t.name.clone()).collect(),
        }
    }

    fn job_from(&mut self, task: &str, pending: Pending) -> Job {
        let d = &pending.delivery;
        let headers = d.properties.headers().as_ref();
        let id = d
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let routing_key = topology::header_str(headers, topology::H_ROUTING_KEY)
            .unwrap_or_else(|| d.routing_key.as_str().to_owned());
        let attempt = topology::header_u32(headers, topology::H_ATTEMPT).unwrap_or(1).max(1);
        let receipt = self.next_receipt;
        self.next_receipt += 1;
        let Pending { epoch, delivery } = pending;
        let Delivery { data, acker, .. } = *delivery;
        self.in_flight.insert(receipt, InFlight { epoch, task: task.to_owned(), acker });
        Job {
            id,
            task: task.to_owned(),
            routing_key,
            payload: data,
            attempt,
            receipt: Receipt(receipt),
        }
    }

    fn join(&mut self) {
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("amqp: the client thread panicked");
        }
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
        crate::routing::validate_key(routing_key)?;
        // The same limit as the embedded queue, before anything reaches the broker.
        super::check_payload(payload)?;
        let id = uuid::Uuid::now_v7().to_string();
        let (key, data, job_id) = (routing_key.to_owned(), payload.to_vec(), id.clone());
        self.request("publish", REQUEST_TIMEOUT, |reply| Cmd::Publish {
            routing_key: key,
            payload: data,
            id: job_id,
            reply,
        })?;
        Ok(vec![id])
    }

    fn set_capacity(&mut self, task: &str, capacity: usize) -> Result<()> {
        if self.mode != OpenMode::Daemon {
            return Ok(());
        }
        self.drain();
        if capacity == 0 {
            // Give what we hold back to the broker, so another daemon can run it.
            let ackers: Vec<Acker> = self
                .buffered
                .remove(task)
                .into_iter()
                .flatten()
                .map(|p| p.delivery.acker)
                .collect();
            if !ackers.is_empty() {
                let _ = self.cmd.send(Cmd::Return { ackers });
            }
        }
        let capacity = u16::try_from(capacity).unwrap_or(u16::MAX);
        self.cmd.send(Cmd::SetCapacity { task: task.to_owned(), capacity }).map_err(|_| {
            Error::Broker {
                action: "set the prefetch",
                source: "the AMQP client thread has stopped".into(),
            }
        })
    }

    fn claim(&mut self, task: &str, max: usize) -> Result<Vec<Job>> {
        self.drain();
        let mut jobs = Vec::new();
        while jobs.len() < max {
            let Some(pending) = self.buffered.get_mut(task).and_then(VecDeque::pop_front) else {
                break;
            };
            jobs.push(self.job_from(task, pending));
        }
        Ok(jobs)
    }

    fn complete(&mut self, job: &Job, outcome: Outcome) -> Result<()> {
        self.drain();
        let Some(flight) = self.in_flight.remove(&job.receipt.0) else {
            tracing::warn!("amqp: outcome for job {} which is not in flight here; ignored", job.id);
            return Ok(());
        };
        if self.live_epoch != Some(flight.epoch) {
            tracing::warn!(
                "amqp: job {} of task {} finished after its broker connection closed; not acknowledged, the broker will deliver it again",
                job.id,
                flight.task
            );
            return Ok(());
        }
        let meta = JobMeta {
            id: job.id.clone(),
            task: flight.task,
            routing_key: job.routing_key.clone(),
            payload: job.payload.clone(),
            attempt: job.attempt,
        };
        self.cmd
            .send(Cmd::Settle { epoch: flight.epoch, acker: flight.acker, job: meta, outcome })
            .map_err(|_| Error::Broker {
                action: "acknowledge a job",
                source: "the AMQP client thread has stopped".into(),
            })
    }

    fn flush(&mut self) -> Result<()> {
        // Outcomes are handed to the broker thread as they come.
        Ok(())
    }

    fn next_due(&mut self) -> Result<Option<Instant>> {
        // Retries come back through the broker (TTL queues), which wakes us.
        Ok(None)
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
                    tracing::debug!("amqp: using last known depths: {}", broker::error_chain(&e));
                    // Do not ask again on every call while the broker is away.
                    self.depth_at = Some(Instant::now());
                }
            }
        }
        let mut out = BTreeMap::new();
        for name in names {
            let broker = self.depth_cache.get(&name).copied().unwrap_or_default();
            let buffered = self.buffered.get(&name).map_or(0, VecDeque::len) as u64;
            let in_flight = self.in_flight.values().filter(|f| f.task == name).count() as u64;
            out.insert(
                name,
                QueueDepth {
                    ready: broker.ready + buffered,
                    delayed: Some(broker.delayed),
                    in_flight,
                    dead: Some(broker.dead),
                    done_total: None,
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

    fn requeue_dead(&mut self, task: Option<&str>, ids: &[String]) -> Result<u64> {
        let tasks = self.task_names(task);
        let ids = ids.to_vec();
        self.request("requeue dead letters", REQUEST_TIMEOUT, |reply| Cmd::Requeue {
            tasks,
            ids,
            reply,
        })
    }

    fn health(&self) -> super::Health {
        let ok = self.live_epoch.is_some();
        let detail = match (ok, &self.last_problem) {
            (true, None) => format!("connected to {} (exchange {})", self.url_shown, self.exchange),
            (true, Some(p)) => format!(
                "connected to {} (exchange {}); last problem: {p}",
                self.url_shown, self.exchange
            ),
            (false, p) => format!(
                "disconnected from {}: {}; reconnecting",
                self.url_shown,
                p.as_deref().unwrap_or("not connected yet")
            ),
        };
        Health { backend: "amqp".to_owned(), ok, detail }
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.thread.is_none() {
            return Ok(());
        }
        let result =
            self.request("close the connection", REQUEST_TIMEOUT, |reply| Cmd::Shutdown { reply });
        self.join();
        self.drain();
        result
    }
}

impl Drop for AmqpQueue {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let (reply, _ignored) = crossbeam_channel::bounded(1);
            let _ = self.cmd.send(Cmd::Shutdown { reply });
            self.join();
        }
    }
}
