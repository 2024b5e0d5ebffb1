//! The broker thread: lapin on a current-thread tokio runtime, owned by one dedicated thread.
//!
//! It receives [`Cmd`]s from the daemon's thread (a tokio unbounded channel, whose `send` does
//! not block) and sends [`Ev`]s back (a crossbeam channel) followed by a wake-up of the daemon's
//! `mio::Waker`. Synchronous requests carry a crossbeam reply sender.
//!
//! Connections are numbered (`epoch`). Every delivery carries the epoch of the connection it
//! came on; an outcome for a delivery of an older epoch is never acknowledged (its channel is
//! gone and the broker has requeued it), it is reported instead. Any consumer error drops the
//! whole connection; the thread reconnects with exponential backoff and jitter, redeclares the
//! topology and resumes consuming at the current capacities.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lapin::message::{Delivery, DeliveryResult};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;

use super::topology::{self as topo, H_ATTEMPT, H_REASON, H_TASK};
use crate::queue::{AmqpQueueType, DeadLetter, OpenMode, Outcome, TaskBinding};
use crate::{BoxError, Error, Result};

/// A reply channel for a synchronous request.
pub(super) type Reply<T> = crossbeam_channel::Sender<Result<T>>;

/// The data of a job that an outcome needs (to republish it for a retry or a dead letter).
#[derive(Debug)]
pub(super) struct JobMeta {
    pub(super) id: String,
    pub(super) task: String,
    pub(super) routing_key: String,
    pub(super) payload: Vec<u8>,
    pub(super) attempt: u32,
}

/// Broker-side depth of one task.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct BrokerDepth {
    pub(super) ready: u64,
    pub(super) delayed: u64,
    pub(super) dead: u64,
}

/// What the daemon's thread asks of the broker thread.
pub(super) enum Cmd {
    Bind {
        tasks: Vec<TaskBinding>,
        reply: Reply<()>,
    },
    Publish {
        routing_key: String,
        payload: Vec<u8>,
        id: String,
        reply: Reply<()>,
    },
    SetCapacity {
        task: String,
        capacity: u16,
    },
    Settle {
        epoch: u64,
        acker: Acker,
        job: JobMeta,
        outcome: Outcome,
    },
    Return {
        ackers: Vec<Acker>,
    },
    Depths {
        tasks: Vec<String>,
        reply: Reply<BTreeMap<String, BrokerDepth>>,
    },
    DeadLetters {
        tasks: Vec<String>,
        limit: usize,
        reply: Reply<Vec<DeadLetter>>,
    },
    Requeue {
        tasks: Vec<String>,
        ids: Vec<String>,
        reply: Reply<u64>,
    },
    /// From a consumer delegate: its channel or connection failed, or the broker cancelled it.
    ConsumerLost {
        epoch: u64,
        task: String,
        tag: String,
        error: String,
    },
    /// From the connection watcher: the connection failed.
    ConnectionLost {
        epoch: u64,
        error: String,
    },
    /// From the connection watcher: something to log and show in `status`.
    Note(String),
    Shutdown {
        reply: Reply<()>,
    },
}

/// What the broker thread tells the daemon's thread.
#[derive(Debug)]
pub(super) enum Ev {
    Delivery { epoch: u64, task: String, delivery: Box<Delivery> },
    Connected { epoch: u64 },
    Disconnected { epoch: u64, error: String },
    Warning(String),
}

/// Where events go: a channel plus the daemon's waker (set by `attach`).
#[derive(Clone)]
pub(super) struct Sink {
    pub(super) tx: crossbeam_channel::Sender<Ev>,
    pub(super) waker: Arc<OnceLock<mio::Waker>>,
}

impl Sink {
    fn send(&self, ev: Ev) {
        if self.tx.send(ev).is_ok()
            && let Some(waker) = self.waker.get()
            && let Err(e) = waker.wake()
        {
            tracing::warn!(error = %e, "amqp: unable to wake the daemon's event loop");
        }
    }
}

fn broker_err(action: &'static str, source: impl Into<BoxError>) -> Error {
    Error::Broker { action, source: source.into() }
}

struct Consuming {
    channel: Channel,
    tag: String,
}

/// One live connection.
struct Live {
    conn: Connection,
    /// Declarations and passive declares; reopened when the broker closes it after an error.
    ctl: Channel,
    /// Publishes, in confirm mode.
    publ: Channel,
    consumers: BTreeMap<String, Consuming>,
    retry_declared: BTreeSet<String>,
    /// Watches the connection's events (errors, blocked) and reports them as commands.
    watcher: tokio::task::JoinHandle<()>,
}

pub(super) struct Broker {
    url: String,
    exchange: String,
    mode: OpenMode,
    cmd_tx: UnboundedSender<Cmd>,
    sink: Sink,
    tasks: BTreeMap<String, TaskBinding>,
    /// Routing keys this process bound, per task (to unbind what a reload removed).
    bound: BTreeMap<String, BTreeSet<String>>,
    /// Retry queues known per task (for the `delayed` depth).
    retry_queues: BTreeMap<String, BTreeSet<String>>,
    capacity: BTreeMap<String, u16>,
    epoch: u64,
    live: Option<Live>,
    /// `Some(false)` when classic queues were asked for, or once the broker refused a quorum
    /// queue that a classic one replaced.
    quorum: Option<bool>,
    failures: u32,
    last_error: String,
    retry_at: Option<tokio::time::Instant>,
    settling: JoinSet<()>,
    consumer_seq: u64,
}

impl Broker {
    pub(super) fn new(
        url: String,
        exchange: String,
        queue_type: AmqpQueueType,
        mode: OpenMode,
        cmd_tx: UnboundedSender<Cmd>,
        sink: Sink,
    ) -> Self {
        Broker {
            url,
            exchange,
            mode,
            cmd_tx,
            sink,
            tasks: BTreeMap::new(),
            bound: BTreeMap::new(),
            retry_queues: BTreeMap::new(),
            capacity: BTreeMap::new(),
            epoch: 0,
            live: None,
            quorum: (queue_type == AmqpQueueType::Classic).then_some(false),
            failures: 0,
            last_error: String::new(),
            retry_at: None,
            settling: JoinSet::new(),
            consumer_seq: 0,
        }
    }

    /// Runs the thread's loop. `started` receives the result of the first connection attempt.
    pub(super) async fn run(mut self, mut rx: UnboundedReceiver<Cmd>, started: Reply<()>) {
        let first = self.connect().await;
        let failed = first.is_err();
        let _ = started.send(first);
        if failed && self.mode == OpenMode::Client {
            return;
        }
        loop {
            while self.settling.try_join_next().is_some() {}
            let retry_at = if self.live.is_none() { self.retry_at } else { None };
            let cmd = tokio::select! {
                cmd = rx.recv() => cmd,
                () = sleep_until(retry_at), if retry_at.is_some() => {
                    if let Err(e) = self.connect().await {
                        tracing::debug!(error = %e, "amqp: reconnect failed");
                    }
                    continue;
                }
            };
            let Some(cmd) = cmd else { break };
            if let Cmd::Shutdown { reply } = cmd {
                self.shutdown().await;
                let _ = reply.send(Ok(()));
                return;
            }
            self.handle(cmd).await;
        }
        self.shutdown().await;
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Bind { tasks, reply } => {
                let result = self.bind(tasks).await;
                let _ = reply.send(result);
            }
            Cmd::Publish { routing_key, payload, id, reply } => {
                let result = self.publish(&routing_key, &payload, &id).await;
                let _ = reply.send(result);
            }
            Cmd::SetCapacity { task, capacity } => {
                self.capacity.insert(task.clone(), capacity);
                if let Err(e) = self.apply_capacity(&task).await {
                    self.lost(format!("unable to set the prefetch of task {task}: {e}"));
                }
            }
            Cmd::Settle { epoch, acker, job, outcome } => {
                self.settle(epoch, acker, job, outcome).await
            }
            Cmd::Return { ackers } => {
                for acker in ackers {
                    let _ = acker.nack(BasicNackOptions { multiple: false, requeue: true }).await;
                }
            }
            Cmd::Depths { tasks, reply } => {
                let result = self.depths(&tasks).await;
                let _ = reply.send(result);
            }
            Cmd::DeadLetters { tasks, limit, reply } => {
                let result = self.dead_letters(&tasks, limit).await;
                let _ = reply.send(result);
            }
            Cmd::Requeue { tasks, ids, reply } => {
                let result = self.requeue(&tasks, &ids).await;
                let _ = reply.send(result);
            }
            Cmd::ConsumerLost { epoch, task, tag, error } => {
                // A consumer this process replaced or cancelled ends quietly.
                let current = self
                    .live
                    .as_ref()
                    .and_then(|l| l.consumers.get(&task))
                    .is_some_and(|c| c.tag == tag);
                if epoch == self.epoch && current {
                    self.lost(format!("consumer of task {task} failed: {error}"));
                }
            }
            Cmd::ConnectionLost { epoch, error } => {
                // Channel-level errors (a passive declare of a missing queue) come through the
                // same events; only a failed connection is a loss.
                let failed = self.live.as_ref().is_some_and(|l| !l.conn.status().connected());
                if epoch == self.epoch && failed {
                    self.lost(error);
                }
            }
            Cmd::Note(message) => self.sink.send(Ev::Warning(message)),
            Cmd::Shutdown { reply } => {
                self.shutdown().await;
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn not_connected(&self, action: &'static str) -> Error {
        broker_err(
            action,
            format!("not connected to the broker ({}); reconnecting", self.last_error),
        )
    }

    /// Opens a connection, declares the topology, starts the consumers.
    async fn connect(&mut self) -> Result<()> {
        self.retry_at = None;
        let result = self.try_connect().await;
        if let Err(e) = &result {
            self.failures = self.failures.saturating_add(1);
            self.last_error = error_chain(e);
            let delay = backoff(self.failures);
            self.retry_at = Some(tokio::time::Instant::now() + delay);
            if self.mode == OpenMode::Daemon {
                tracing::warn!(
                    "amqp: unable to connect to {}: {}; retrying in {:.1}s",
                    topo::redact_url(&self.url),
                    self.last_error,
                    delay.as_secs_f64()
                );
                self.sink
                    .send(Ev::Disconnected { epoch: self.epoch, error: self.last_error.clone() });
            }
        }
        result
    }

    async fn try_connect(&mut self) -> Result<()> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("procyard-daemon pid {}", std::process::id()).into());
        let conn =
            Connection::connect(&self.url, props).await.map_err(|e| broker_err("connect", e))?;
        let setup = async {
            let ctl = conn.create_channel().await?;
            let publ = conn.create_channel().await?;
            publ.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok::<_, lapin::Error>((ctl, publ))
        };
        let (ctl, publ) = match setup.await {
            Ok(channels) => channels,
            Err(e) => {
                let _ = conn.close(200, "setup failed".into()).await;
                return Err(broker_err("open channels", e));
            }
        };
        self.epoch += 1;
        let watcher = tokio::spawn(watch(conn.events_listener(), self.epoch, self.cmd_tx.clone()));
        self.live = Some(Live {
            conn,
            ctl,
            publ,
            consumers: BTreeMap::new(),
            retry_declared: BTreeSet::new(),
            watcher,
        });
        let tasks: Vec<TaskBinding> = self.tasks.values().cloned().collect();
        if let Err(e) = self.declare_all(&tasks).await {
            self.drop_live();
            return Err(e);
        }
        self.sink.send(Ev::Connected { epoch: self.epoch });
        let names: Vec<String> = self.capacity.keys().cloned().collect();
        for task in names {
            if let Err(e) = self.apply_capacity(&task).await {
                self.drop_live();
                return Err(broker_err("start consuming", e.to_string()));
            }
        }
        if self.failures > 0 {
            tracing::info!(
                "amqp: reconnected to {} after {} failed attempts",
                topo::redact_url(&self.url),
                self.failures
            );
        }
        self.failures = 0;
        self.last_error.clear();
        Ok(())
    }

    fn drop_live(&mut self) {
        if let Some(live) = self.live.take() {
            live.watcher.abort();
            self.settling.spawn(async move {
                let _ = live.conn.close(200, "procyard: reconnecting".into()).await;
            });
        }
    }

    /// The connection failed: forget it, tell the daemon, schedule a reconnect.
    fn lost(&mut self, error: String) {
        if self.live.is_none() {
            return;
        }
        self.drop_live();
        tracing::warn!("amqp: connection to the broker lost: {error}");
        self.last_error = error.clone();
        self.sink.send(Ev::Disconnected { epoch: self.epoch, error });
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(tokio::time::Instant::now() + backoff(self.failures));
    }

    /// The control channel, reopened if the broker closed it after a failed declaration.
    async fn ctl(&mut self) -> Result<Channel> {
        let Some(live) = self.live.as_mut() else {
            return Err(self.not_connected("declare the topology"));
        };
        if !live.ctl.status().connected() {
            live.ctl =
                live.conn.create_channel().await.map_err(|e| broker_err("open a channel", e))?;
        }
        Ok(live.ctl.clone())
    }

    async fn bind(&mut self, tasks: Vec<TaskBinding>) -> Result<()> {
        for t in &tasks {
            for key in &t.routing_keys {
                crate::routing::validate_pattern(key)?;
            }
        }
        let removed: Vec<String> = self
            .tasks
            .keys()
            .filter(|name| !tasks.iter().any(|t| &t.name == *name))
            .cloned()
            .collect();
        self.tasks = tasks.iter().map(|t| (t.name.clone(), t.clone())).collect();
        if self.live.is_none() {
            return match self.mode {
                // Declared when the connection comes back.
                OpenMode::Daemon => Ok(()),
                OpenMode::Client => Err(self.not_connected("declare the topology")),
            };
        }
        for name in removed {
            // Its queue and jobs stay; this process stops consuming and unbinds what it bound.
            self.capacity.insert(name.clone(), 0);
            self.apply_capacity(&name)
                .await
                .map_err(|e| broker_err("stop consuming a removed task", e))?;
            self.capacity.remove(&name);
            let keys = self.bound.remove(&name).unwrap_or_default();
            let ctl = self.ctl().await?;
            for key in keys {
                ctl.queue_unbind(
                    topo::task_queue(&self.exchange, &name).into(),
                    self.exchange.clone().into(),
                    key.into(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| broker_err("unbind a removed task", e))?;
            }
        }
        let result = self.declare_all(&tasks).await;
        if let Err(e) = &result
            && self.live.as_ref().is_some_and(|l| !l.conn.status().connected())
        {
            self.lost(error_chain(e));
        }
        result
    }

    async fn declare_all(&mut self, tasks: &[TaskBinding]) -> Result<()> {
        let ctl = self.ctl().await?;
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ctl.exchange_declare(
            self.exchange.clone().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker_err("declare the jobs exchange", e))?;
        let dead_exchange = topo::dead_exchange(&self.exchange);
        ctl.exchange_declare(
            dead_exchange.clone().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker_err("declare the dead-letter exchange", e))?;
        for task in tasks {
            let queue = topo::task_queue(&self.exchange, &task.name);
            self.declare_durable_queue(&queue, Some((&dead_exchange, &task.name))).await?;
            let dead = topo::dead_queue(&self.exchange, &task.name);
            self.declare_durable_queue(&dead, None).await?;
            let ctl = self.ctl().await?;
            ctl.queue_bind(
                dead.into(),
                dead_exchange.clone().into(),
                task.name.clone().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker_err("bind the dead queue", e))?;
            let previous = self.bound.remove(&task.name).unwrap_or_default();
            for key in &task.routing_keys {
                ctl.queue_bind(
                    queue.clone().into(),
                    self.exchange.clone().into(),
                    key.clone().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| broker_err("bind a task queue", e))?;
            }
            for key in previous.iter().filter(|k| !task.routing_keys.contains(k)) {
                ctl.queue_unbind(
                    queue.clone().into(),
                    self.exchange.clone().into(),
                    key.clone().into(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| broker_err("unbind a routing key", e))?;
            }
            self.bound.insert(task.name.clone(), task.routing_keys.iter().cloned().collect());
        }
        Ok(())
    }

    /// Declares a durable queue: quorum where the broker supports it (unless classic queues
    /// were asked for), else classic. A queue
    /// that already exists with other arguments (declared classic by an older broker or by
    /// hand) is refused by the broker; it is then used as it is, after a passive check.
    async fn declare_durable_queue(
        &mut self,
        name: &str,
        dead_letter: Option<(&str, &str)>,
    ) -> Result<()> {
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        let kinds: &[bool] = if self.quorum == Some(false) { &[false] } else { &[true, false] };
        let mut refusal = None;
        for &quorum in kinds {
            let ctl = self.ctl().await?;
            let args = topo::durable_queue_args(quorum, dead_letter);
            match ctl.queue_declare(name.into(), durable, args).await {
                Ok(_) => {
                    if !quorum && refusal.is_some() && self.quorum.is_none() {
                        tracing::info!(
                            "amqp: the broker refused a quorum queue; using classic queues"
                        );
                        self.quorum = Some(false);
                    }
                    return Ok(());
                }
                Err(e) => {
                    if self.live.as_ref().is_some_and(|l| !l.conn.status().connected()) {
                        return Err(broker_err("declare a queue", e));
                    }
                    refusal = Some(e);
                }
            }
        }
        let ctl = self.ctl().await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        match ctl.queue_declare(name.into(), passive, FieldTable::default()).await {
            Ok(_) => {
                if let Some(e) = refusal {
                    tracing::info!(
                        "amqp: queue {name} exists with other arguments ({e}); using it as it is"
                    );
                }
                Ok(())
            }
            Err(e) => Err(broker_err("declare a queue", refusal.unwrap_or(e))),
        }
    }

    /// Makes the consumer of `task` match its capacity: prefetch = capacity; 0 = no consumer.
    /// A per-consumer prefetch cannot change on a running consumer, so a new capacity
    /// replaces the consumer (deliveries of the old one stay valid on the same channel).
    async fn apply_capacity(&mut self, task: &str) -> Result<(), lapin::Error> {
        if self.mode != OpenMode::Daemon {
            return Ok(());
        }
        let capacity = self.capacity.get(task).copied().unwrap_or(0);
        let queue = topo::task_queue(&self.exchange, task);
        let epoch = self.epoch;
        self.consumer_seq += 1;
        let tag = format!("procyard-{}-{task}-{}", std::process::id(), self.consumer_seq);
        let Some(live) = self.live.as_mut() else { return Ok(()) };
        if let Some(old) = live.consumers.get(task) {
            old.channel.basic_cancel(old.tag.clone().into(), BasicCancelOptions::default()).await?;
        }
        if capacity == 0 || !self.tasks.contains_key(task) {
            if let Some(old) = live.consumers.get_mut(task) {
                old.tag.clear();
            }
            return Ok(());
        }
        let channel = match live.consumers.get(task) {
            Some(c) if c.channel.status().connected() => c.channel.clone(),
            _ => live.conn.create_channel().await?,
        };
        channel.basic_qos(capacity, BasicQosOptions { global: false }).await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                tag.clone().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let sink = self.sink.clone();
        let cmd_tx = self.cmd_tx.clone();
        let task_name = task.to_owned();
        let consumer_tag = tag.clone();
        consumer.set_delegate(move |result: DeliveryResult| {
            let sink = sink.clone();
            let cmd_tx = cmd_tx.clone();
            let task = task_name.clone();
            let tag = consumer_tag.clone();
            async move {
                match result {
                    Ok(Some(delivery)) => {
                        sink.send(Ev::Delivery { epoch, task, delivery: Box::new(delivery) })
                    }
                    Ok(None) => {
                        let error = "consumer cancelled".to_owned();
                        let _ = cmd_tx.send(Cmd::ConsumerLost { epoch, task, tag, error });
                    }
                    Err(e) => {
                        let error = e.to_string();
                        let _ = cmd_tx.send(Cmd::ConsumerLost { epoch, task, tag, error });
                    }
                }
            }
        });
        live.consumers.insert(task.to_owned(), Consuming { channel, tag });
        Ok(())
    }

    async fn publish(&mut self, routing_key: &str, payload: &[u8], id: &str) -> Result<()> {
        crate::routing::validate_key(routing_key)?;
        let Some(live) = self.live.as_ref() else { return Err(self.not_connected("publish")) };
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.into())
            .with_content_type("application/octet-stream".into())
            .with_headers(topo::job_headers(1, routing_key));
        let mandatory = BasicPublishOptions { mandatory: true, immediate: false };
        let publ = live.publ.clone();
        let sent = publ
            .basic_publish(
                self.exchange.clone().into(),
                routing_key.into(),
                mandatory,
                payload,
                props,
            )
            .await;
        let confirm = match sent {
            Ok(confirm) => confirm.await,
            Err(e) => Err(e),
        };
        match confirm {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => {
                Err(Error::Unroutable { routing_key: routing_key.to_owned() })
            }
            Ok(Confirmation::Nack(_)) => Err(Error::PublishRejected {
                routing_key: routing_key.to_owned(),
                reason: "negative publisher confirm".to_owned(),
            }),
            Ok(Confirmation::NotRequested) => Err(Error::PublishRejected {
                routing_key: routing_key.to_owned(),
                reason: "the channel is not in confirm mode".to_owned(),
            }),
            Err(e) => {
                let err = broker_err("publish", e);
                self.check_publ(&err).await;
                Err(err)
            }
        }
    }

    /// After a failed publish: the connection is gone (reconnect) or only the publish channel
    /// (reopen it in confirm mode).
    async fn check_publ(&mut self, err: &Error) {
        let Some(live) = self.live.as_mut() else { return };
        if !live.conn.status().connected() {
            self.lost(error_chain(err));
            return;
        }
        if !live.publ.status().connected() {
            let reopened = async {
                let c = live.conn.create_channel().await?;
                c.confirm_select(ConfirmSelectOptions::default()).await?;
                Ok::<_, lapin::Error>(c)
            };
            match reopened.await {
                Ok(c) => live.publ = c,
                Err(e) => self.lost(format!("unable to reopen the publish channel: {e}")),
            }
        }
    }

    async fn settle(&mut self, epoch: u64, acker: Acker, job: JobMeta, outcome: Outcome) {
        if epoch != self.epoch || self.live.is_none() {
            self.sink.send(Ev::Warning(format!(
                "job {} of task {} finished after its broker connection closed; it was not acknowledged and the broker will deliver it again",
                job.id, job.task
            )));
            return;
        }
        let target = match &outcome {
            Outcome::Done => None,
            Outcome::Retry { delay, .. } => {
                let ms = topo::quantize_delay_ms(delay.as_millis());
                let name = topo::retry_queue(&self.exchange, &job.task, ms);
                if let Err(e) = self.declare_retry_queue(&job.task, &name, ms).await {
                    self.sink.send(Ev::Warning(format!(
                        "job {}: unable to declare retry queue {name}: {}; returning it to its queue",
                        job.id,
                        error_chain(&e)
                    )));
                    let _ = acker.nack(BasicNackOptions { multiple: false, requeue: true }).await;
                    return;
                }
                Some((
                    String::new(),
                    name,
                    topo::job_headers(job.attempt.saturating_add(1), &job.routing_key),
                ))
            }
            Outcome::DeadLetter { reason } => {
                let mut headers = topo::job_headers(job.attempt, &job.routing_key);
                headers.insert(H_REASON.into(), topo::long_string(reason));
                headers.insert(H_TASK.into(), topo::long_string(&job.task));
                Some((topo::dead_exchange(&self.exchange), job.task.clone(), headers))
            }
        };
        let Some(live) = self.live.as_ref() else { return };
        let publ = live.publ.clone();
        let sink = self.sink.clone();
        self.settling.spawn(async move {
            if let Some((exchange, key, headers)) = target {
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(job.id.clone().into())
                    .with_headers(headers);
                let mandatory = BasicPublishOptions { mandatory: true, immediate: false };
                let confirmed = match publ.basic_publish(exchange.into(), key.clone().into(), mandatory, &job.payload, props).await {
                    Ok(c) => c.await,
                    Err(e) => Err(e),
                };
                if !matches!(confirmed, Ok(Confirmation::Ack(None))) {
                    sink.send(Ev::Warning(format!(
                        "job {} of task {}: the broker did not take its copy for {key} ({confirmed:?}); returning it to its queue",
                        job.id, job.task
                    )));
                    let _ = acker.nack(BasicNackOptions { multiple: false, requeue: true }).await;
                    return;
                }
            }
            match acker.ack(Default::default()).await {
                Ok(true) => {}
                Ok(false) => sink.send(Ev::Warning(format!(
                    "job {} of task {}: not acknowledged, its channel is closed; the broker will deliver it again",
                    job.id, job.task
                ))),
                Err(e) => sink.send(Ev::Warning(format!(
                    "job {} of task {}: acknowledgement failed ({e}); the broker will deliver it again",
                    job.id, job.task
                ))),
            }
        });
    }

    async fn declare_retry_queue(&mut self, task: &str, name: &str, ms: u64) -> Result<()> {
        if self.live.as_ref().is_some_and(|l| l.retry_declared.contains(name)) {
            return Ok(());
        }
        let ctl = self.ctl().await?;
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        let task_queue = topo::task_queue(&self.exchange, task);
        ctl.queue_declare(name.into(), durable, topo::retry_queue_args(&task_queue, ms))
            .await
            .map_err(|e| broker_err("declare a retry queue", e))?;
        if let Some(live) = self.live.as_mut() {
            live.retry_declared.insert(name.to_owned());
        }
        self.retry_queues.entry(task.to_owned()).or_default().insert(name.to_owned());
        Ok(())
    }

    /// Message count of a queue by passive declare; `None` if it does not exist.
    async fn count(&mut self, queue: &str) -> Result<Option<u64>> {
        let ctl = self.ctl().await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        match ctl.queue_declare(queue.into(), passive, FieldTable::default()).await {
            Ok(q) => Ok(Some(u64::from(q.message_count()))),
            Err(e) => {
                if self.live.as_ref().is_some_and(|l| !l.conn.status().connected()) {
                    let err = broker_err("read queue depths", e);
                    self.lost(error_chain(&err));
                    return Err(err);
                }
                Ok(None)
            }
        }
    }

    async fn depths(&mut self, tasks: &[String]) -> Result<BTreeMap<String, BrokerDepth>> {
        if self.live.is_none() {
            return Err(self.not_connected("read queue depths"));
        }
        let mut out = BTreeMap::new();
        for task in tasks {
            let mut depth = BrokerDepth {
                ready: self.count(&topo::task_queue(&self.exchange, task)).await?.unwrap_or(0),
                dead: self.count(&topo::dead_queue(&self.exchange, task)).await?.unwrap_or(0),
                delayed: 0,
            };
            let retry: Vec<String> =
                self.retry_queues.get(task).into_iter().flatten().cloned().collect();
            for q in retry {
                depth.delayed += self.count(&q).await?.unwrap_or(0);
            }
            out.insert(task.clone(), depth);
        }
        Ok(out)
    }

    /// Reads dead letters with `basic.get` on a temporary channel and closes it unacked, which
    /// returns them to their queue. `select` decides which to republish to the task queue
    /// (attempt 1) and acknowledge.
    async fn scan_dead(
        &mut self,
        tasks: &[String],
        limit: usize,
        select: &dyn Fn(&DeadLetter) -> bool,
    ) -> Result<(Vec<DeadLetter>, u64)> {
        let Some(live) = self.live.as_ref() else {
            return Err(self.not_connected("read dead letters"));
        };
        let channel =
            live.conn.create_channel().await.map_err(|e| broker_err("open a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| broker_err("open a channel", e))?;
        let mut listed = Vec::new();
        let mut requeued = 0;
        let result = async {
            for task in tasks {
                let queue = topo::dead_queue(&self.exchange, task);
                // Until the queue is empty: what we hold stays unacknowledged (so it is not
                // read twice) and requeued jobs go to the task queue, not back here.
                loop {
                    if listed.len() >= limit {
                        break;
                    }
                    let got = channel
                        .basic_get(queue.clone().into(), BasicGetOptions { no_ack: false })
                        .await
                        .map_err(|e| broker_err("read dead letters", e))?;
                    let Some(msg) = got else { break };
                    let d = &msg.delivery;
                    let headers = d.properties.headers().as_ref();
                    let letter = DeadLetter {
                        id: d
                            .properties
                            .message_id()
                            .as_ref()
                            .map(|s| s.as_str().to_owned())
                            .unwrap_or_default(),
                        task: topo::header_str(headers, H_TASK).unwrap_or_else(|| task.clone()),
                        routing_key: topo::header_str(headers, topo::H_ROUTING_KEY)
                            .unwrap_or_else(|| d.routing_key.as_str().to_owned()),
                        attempts: topo::header_u32(headers, H_ATTEMPT).unwrap_or(1),
                        reason: topo::header_str(headers, H_REASON)
                            .unwrap_or_else(|| "rejected by the broker (x-death)".to_owned()),
                        payload_len: d.data.len(),
                    };
                    if select(&letter) {
                        let props = BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_message_id(letter.id.clone().into())
                            .with_headers(topo::job_headers(1, &letter.routing_key));
                        let mandatory = BasicPublishOptions { mandatory: true, immediate: false };
                        let confirm = channel
                            .basic_publish(
                                "".into(),
                                topo::task_queue(&self.exchange, task).into(),
                                mandatory,
                                &d.data,
                                props,
                            )
                            .await
                            .map_err(|e| broker_err("requeue a dead letter", e))?
                            .await
                            .map_err(|e| broker_err("requeue a dead letter", e))?;
                        if !matches!(confirm, Confirmation::Ack(None)) {
                            return Err(broker_err(
                                "requeue a dead letter",
                                format!("broker answered {confirm:?}"),
                            ));
                        }
                        d.acker
                            .ack(Default::default())
                            .await
                            .map_err(|e| broker_err("requeue a dead letter", e))?;
                        requeued += 1;
                    }
                    listed.push(letter);
                }
            }
            Ok(())
        }
        .await;
        // Unacknowledged ones go back to the dead queue.
        let _ = channel.close(200, "done".into()).await;
        result.map(|()| (listed, requeued))
    }

    async fn dead_letters(&mut self, tasks: &[String], limit: usize) -> Result<Vec<DeadLetter>> {
        Ok(self.scan_dead(tasks, limit, &|_| false).await?.0)
    }

    async fn requeue(&mut self, tasks: &[String], ids: &[String]) -> Result<u64> {
        let select = |d: &DeadLetter| ids.is_empty() || ids.contains(&d.id);
        let (listed, requeued) = self.scan_dead(tasks, usize::MAX, &select).await?;
        if let Some(missing) = ids.iter().find(|id| !listed.iter().any(|d| &d.id == *id)) {
            return Err(Error::NoSuchJob { id: missing.clone() });
        }
        Ok(requeued)
    }

    async fn shutdown(&mut self) {
        // Let outcomes already handed over reach the broker.
        let drain = async { while self.settling.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        if let Some(live) = self.live.take() {
            // Closing requeues every unacknowledged delivery.
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                live.conn.close(200, "procyard: shutdown".into()),
            )
            .await;
        }
    }
}

/// Forwards the connection's events to the broker loop until the connection fails.
async fn watch(
    events: impl futures_core::Stream<Item = lapin::Event> + Send + 'static,
    epoch: u64,
    cmd_tx: UnboundedSender<Cmd>,
) {
    let mut events = std::pin::pin!(events);
    loop {
        let event = std::future::poll_fn(|cx| events.as_mut().poll_next(cx)).await;
        let (error, last) = match event {
            None => ("the connection closed".to_owned(), true),
            Some(lapin::Event::Error(e)) => (e.to_string(), false),
            Some(lapin::Event::ConnectionBlocked(reason)) => {
                let note = format!("the broker blocks publishing: {reason}");
                let _ = cmd_tx.send(Cmd::Note(note));
                continue;
            }
            Some(_) => continue,
        };
        if cmd_tx.send(Cmd::ConnectionLost { epoch, error }).is_err() || last {
            return;
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Exponential backoff from 100 ms to 10 s, with jitter: a uniform draw in [d/2, d].
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(7);
    let ceiling_ms = (100u64 << exp).min(10_000);
    let random = RandomState::new().hash_one(std::time::SystemTime::now());
    let half = ceiling_ms / 2;
    Duration::from_millis(half + random % (half + 1))
}

/// An error and its sources, on one line.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Some errors already print their cause; do not repeat it.
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_does_not_repeat_a_cause_already_printed() {
        #[derive(Debug, thiserror::Error)]
        #[error("IO error: {0}")]
        struct Wrap(#[source] std::io::Error);
        let outer = broker_err("connect", Wrap(std::io::Error::other("connection refused")));
        assert_eq!(
            error_chain(&outer),
            "unable to connect on the AMQP broker: IO error: connection refused"
        );
    }

    #[test]
    fn backoff_grows_stays_bounded_and_jitters() {
        for failures in 0..40 {
            let d = backoff(failures);
            let ceiling = (100u64 << failures.saturating_sub(1).min(7)).min(10_000);
            assert!(
                d >= Duration::from_millis(ceiling / 2) && d <= Duration::from_millis(ceiling),
                "{failures}: {d:?}"
            );
        }
        assert!(backoff(30) >= Duration::from_secs(5));
    }
}
