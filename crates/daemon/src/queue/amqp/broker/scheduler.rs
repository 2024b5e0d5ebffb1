//! Periodic jobs on the broker thread: exactly one daemon of the cluster fires them.
//!
//! Every daemon with `[[schedule]]`s consumes `E.scheduler`, a durable classic queue with
//! `x-single-active-consumer`: the broker delivers to one consumer at a time, and when its
//! connection dies (a SIGKILL closes the socket) gives every message it held to the next one.
//! The queue holds the schedules' state as one JSON message ([`Book`]); the active daemon holds
//! it unacknowledged, so holding the state is being the scheduler. At a due time it commits,
//! in ONE AMQP transaction on the channel the state came on (`tx.select`): the fired jobs
//! (published to the jobs exchange), the new state (published to `E.scheduler`) and the
//! acknowledgement of the old state. A daemon killed before the commit has done none of it
//! (the broker drops an uncommitted transaction with its channel, and the old state goes to
//! the next daemon, which fires the due time once); killed after it, all of it. So a takeover
//! neither skips nor doubles a due time, and the fired jobs carry the `message-id`
//! `schedule:<name>:<due time>` for whoever wants to check.
//!
//! A daemon that starts publishes an empty state: the active one merges every state it holds
//! (per schedule the copy furthest along) and commits one, so a first start, a queue deleted
//! by hand and daemons starting together all end with one state. Clients (`schedules`,
//! `schedule trigger|pause|resume`) send a request through the same queue, which the active
//! daemon applies in its next transaction and answers by direct reply-to; with no daemon
//! consuming, the client takes the state itself in a transaction of its own.
//!
//! Daemons of one exchange should share their `[[schedule]]`s: the active daemon's config is
//! what fires, and a schedule only another daemon has is forgotten while it is not active
//! (it counts afresh when that daemon takes over).

use std::time::Duration;

use jiff::Timestamp;
use lapin::message::{Delivery, DeliveryResult};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Channel};
use procyard_core::Report;

use super::messages::{Cmd, Emitted};
use super::{Broker, broker_err};
use crate::queue::amqp::periodic::{Answer, Book, Fire, Message, Request};
use crate::queue::amqp::topology as topo;
use crate::schedule::ScheduleConfig;
use crate::{Error, Result};

/// How long a client waits for the active daemon's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed transaction, the scheduler starts again this much later.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// A request held until the next transaction.
struct HeldRequest {
    acker: Acker,
    request: Request,
    reply_to: Option<String>,
    correlation: Option<String>,
}

/// The broker thread's scheduler: what it holds of `E.scheduler`.
#[derive(Default)]
pub(super) struct Scheduler {
    pub(super) configs: Vec<ScheduleConfig>,
    channel: Option<Channel>,
    /// Which consumer a delivery came from (one per start), so a late delivery of a channel
    /// given up is never held.
    generation: u64,
    held: Vec<(Acker, Book)>,
    requests: Vec<HeldRequest>,
    junk: Vec<Acker>,
    /// When to look at the due times again.
    pub(super) wake: Option<tokio::time::Instant>,
    /// When to start consuming again after a failure.
    pub(super) restart: Option<tokio::time::Instant>,
}

impl Scheduler {
    /// The connection is gone: what it held is void (the broker gave it to another daemon).
    pub(super) fn reset(&mut self) {
        self.channel = None;
        self.held.clear();
        self.requests.clear();
        self.junk.clear();
        self.wake = None;
    }
}

fn scheduler_queue_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into())
}

impl Broker {
    fn scheduler_queue(&self) -> String {
        format!("{}.scheduler", self.exchange)
    }

    /// Declares `E.scheduler`; answers its consumer count.
    async fn declare_scheduler_queue(&mut self) -> Result<u32> {
        let ctl = self.ctl().await?;
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        let q = ctl
            .queue_declare(self.scheduler_queue().into(), durable, scheduler_queue_args())
            .await
            .map_err(|e| broker_err("declare the scheduler queue", e))?;
        Ok(q.consumer_count())
    }

    /// Daemon: the schedules to fire (at start and on reload).
    pub(super) async fn set_schedules(&mut self, configs: Vec<ScheduleConfig>) -> Result<()> {
        self.sched.configs = configs;
        if self.sched.configs.is_empty() {
            if let Some(ch) = self.sched.channel.take() {
                let _ = ch.close(200, "procyard: no schedules".into()).await;
            }
            self.sched.reset();
            return Ok(());
        }
        if self.sched.channel.is_some() {
            return self.sched_step().await;
        }
        self.start_scheduler().await
    }

    /// Daemon: consumes `E.scheduler` (in transaction mode) and publishes an empty state.
    pub(super) async fn start_scheduler(&mut self) -> Result<()> {
        self.sched.restart = None;
        if self.sched.configs.is_empty() || self.live.is_none() {
            return Ok(());
        }
        self.declare_scheduler_queue().await?;
        let queue = self.scheduler_queue();
        self.sched.generation += 1;
        let (epoch, generation) = (self.epoch, self.sched.generation);
        let cmd_tx = self.cmd_tx.clone();
        let Some(live) = self.live.as_ref() else { return Ok(()) };
        let err = |e| broker_err("consume the scheduler queue", e);
        let channel = live.conn.create_channel().await.map_err(err)?;
        channel.basic_qos(1000, BasicQosOptions { global: false }).await.map_err(err)?;
        channel.tx_select().await.map_err(err)?;
        let tag = format!("procyard-{}-scheduler", std::process::id());
        let consumer = channel
            .basic_consume(
                queue.clone().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        consumer.set_delegate(move |result: DeliveryResult| {
            let cmd_tx = cmd_tx.clone();
            async move {
                let cmd = match result {
                    Ok(Some(delivery)) => {
                        Cmd::SchedDelivery { epoch, generation, delivery: Box::new(delivery) }
                    }
                    Ok(None) => {
                        Cmd::SchedLost { epoch, generation, error: "consumer cancelled".into() }
                    }
                    Err(e) => Cmd::SchedLost { epoch, generation, error: e.to_string() },
                };
                let _ = cmd_tx.send(cmd);
            }
        });
        self.sched.channel = Some(channel);
        // An empty state: whoever holds the state merges it (see the module docs).
        let body = serde_json::to_vec(&Message::State(Book::default())).unwrap_or_default();
        let publ = live.publ.clone();
        let sent = publ
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                persistent(),
            )
            .await;
        match sent {
            Ok(confirm) => {
                confirm.await.map_err(|e| broker_err("publish the scheduler state", e))?;
            }
            Err(e) => return Err(broker_err("publish the scheduler state", e)),
        }
        Ok(())
    }

    /// A message of `E.scheduler` arrived: this daemon is the active scheduler.
    pub(super) async fn sched_delivery(&mut self, epoch: u64, generation: u64, delivery: Delivery) {
        if epoch != self.epoch
            || generation != self.sched.generation
            || self.sched.channel.is_none()
        {
            return;
        }
        match serde_json::from_slice::<Message>(&delivery.data) {
            Ok(Message::State(book)) => self.sched.held.push((delivery.acker, book)),
            Ok(Message::Request(request)) => self.sched.requests.push(HeldRequest {
                acker: delivery.acker,
                request,
                reply_to: delivery.properties.reply_to().as_ref().map(|s| s.as_str().to_owned()),
                correlation: delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|s| s.as_str().to_owned()),
            }),
            Err(e) => {
                tracing::warn!("amqp: dropping a malformed message on the scheduler queue: {e}");
                self.sched.junk.push(delivery.acker);
            }
        }
        if let Err(e) = self.sched_step().await {
            tracing::warn!("amqp: scheduler: {}", Report(&e));
        }
    }

    /// The consumer of `E.scheduler` ended (its channel failed): start again soon.
    pub(super) fn sched_lost(&mut self, epoch: u64, generation: u64, error: String) {
        if epoch != self.epoch
            || generation != self.sched.generation
            || self.sched.channel.is_none()
        {
            return;
        }
        tracing::warn!("amqp: scheduler consumer lost ({error}); starting again");
        self.sched.reset();
        self.sched.restart = Some(tokio::time::Instant::now() + RESTART_DELAY);
    }

    /// Fires what is due, applies what was asked and merges what is held, in one
    /// transaction; then waits for the next due time.
    pub(super) async fn sched_step(&mut self) -> Result<()> {
        self.sched.wake = None;
        if self.sched.held.is_empty() {
            return Ok(()); // not the active scheduler, or waiting for its own new state
        }
        let now = Timestamp::now();
        let configs = self.sched.configs.clone();
        let single = (self.sched.held.len() == 1).then(|| self.sched.held[0].1.clone());
        let mut book = Book::merge(self.sched.held.iter().map(|(_, b)| b.clone()));
        book.sync(&configs, now, true);
        let mut fires = book.plan(&configs, now, &crate::queue::amqp::events::daemon_id());
        let requests = std::mem::take(&mut self.sched.requests);
        let mut answers = Vec::new();
        for r in &requests {
            let answer = book.apply(&r.request, &configs, now, &mut fires);
            answers.push((r.reply_to.clone(), r.correlation.clone(), answer));
        }
        let changed = single.as_ref() != Some(&book)
            || !fires.is_empty()
            || !requests.is_empty()
            || !self.sched.junk.is_empty();
        if !changed {
            if let Some(due) = book.next_due(&configs) {
                let wait = (due - now.as_millisecond()).max(0) as u64 + 1;
                self.sched.wake = Some(tokio::time::Instant::now() + Duration::from_millis(wait));
            }
            return Ok(());
        }
        let mut ackers: Vec<Acker> = self.sched.held.drain(..).map(|(a, _)| a).collect();
        ackers.extend(requests.into_iter().map(|r| r.acker));
        ackers.append(&mut self.sched.junk);
        match self.commit(&book, &fires, ackers).await {
            Ok(()) => {
                for f in &fires {
                    let due = f.due.map_or_else(|| "trigger".to_owned(), |d| d.to_string());
                    tracing::info!(schedule = %f.name, due = %due, job = %f.id, "schedule fired");
                }
                let batch = answers
                    .into_iter()
                    .filter_map(|(to, corr, answer)| {
                        let body = serde_json::to_vec(&answer).ok()?;
                        Some(Emitted {
                            key: String::new(),
                            id: String::new(),
                            body,
                            to: Some((to?, corr.unwrap_or_default())),
                        })
                    })
                    .collect();
                self.emit(batch).await;
                Ok(())
            }
            Err(e) => {
                // The transaction is void: the broker gives back what we held when the
                // channel closes; start again.
                if let Some(ch) = self.sched.channel.take() {
                    let _ = ch.close(200, "procyard: scheduler transaction failed".into()).await;
                }
                self.sched.reset();
                self.sched.restart = Some(tokio::time::Instant::now() + RESTART_DELAY);
                Err(e)
            }
        }
    }

    /// Publishes `fires` and `book`, acknowledges `ackers`, commits.
    async fn commit(&mut self, book: &Book, fires: &[Fire], ackers: Vec<Acker>) -> Result<()> {
        let Some(ch) = self.sched.channel.clone() else {
            return Err(self.not_connected("fire schedules"));
        };
        let err = |e| broker_err("commit the scheduler's transaction", e);
        publish_fires(&ch, &self.exchange, self.priorities, fires).await?;
        let body = serde_json::to_vec(&Message::State(book.clone())).unwrap_or_default();
        let queue = self.scheduler_queue();
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &body,
            persistent(),
        )
        .await
        .map_err(err)?;
        for a in ackers {
            a.ack(BasicAckOptions::default()).await.map_err(err)?;
        }
        ch.tx_commit().await.map_err(err)
    }

    /// Client: does `request` — through the active daemon when one consumes the scheduler
    /// queue, else on the state itself.
    pub(super) async fn sched_request(
        &mut self,
        request: Request,
        configs: Vec<ScheduleConfig>,
    ) -> Result<Answer> {
        if self.live.is_none() {
            return Err(self.not_connected("reach the schedules"));
        }
        let consumers = self.declare_scheduler_queue().await?;
        let Some(live) = self.live.as_ref() else {
            return Err(self.not_connected("reach the schedules"));
        };
        let err = |e| broker_err("reach the schedules", e);
        let ch = live.conn.create_channel().await.map_err(err)?;
        let result = if consumers > 0 {
            ask(&ch, &self.scheduler_queue(), &request).await
        } else {
            self.apply_here(&ch, request, &configs).await
        };
        let _ = ch.close(200, "procyard: done".into()).await;
        result
    }

    /// Client, no daemon consuming: takes every state message, applies `request`, and (unless
    /// it only reads) commits the new state in one transaction.
    async fn apply_here(
        &self,
        ch: &Channel,
        request: Request,
        configs: &[ScheduleConfig],
    ) -> Result<Answer> {
        let err = |e| broker_err("update the schedules", e);
        ch.tx_select().await.map_err(err)?;
        let mut held = Vec::new();
        loop {
            let got = ch
                .basic_get(self.scheduler_queue().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(err)?;
            let Some(msg) = got else { break };
            if let Ok(Message::State(book)) = serde_json::from_slice(&msg.delivery.data) {
                held.push((msg.delivery.acker, book));
            }
            // Anything else stays (it goes back to the queue when the channel closes).
        }
        let now = Timestamp::now();
        let mut book = Book::merge(held.iter().map(|(_, b)| b.clone()));
        book.sync(configs, now, false);
        let mut fires = Vec::new();
        let answer = book.apply(&request, configs, now, &mut fires).map_err(refused)?;
        if request == Request::List {
            return Ok(answer);
        }
        publish_fires(ch, &self.exchange, self.priorities, &fires).await?;
        let body = serde_json::to_vec(&Message::State(book)).unwrap_or_default();
        ch.basic_publish(
            "".into(),
            self.scheduler_queue().into(),
            BasicPublishOptions::default(),
            &body,
            persistent(),
        )
        .await
        .map_err(err)?;
        for (a, _) in held {
            a.ack(BasicAckOptions::default()).await.map_err(err)?;
        }
        ch.tx_commit().await.map_err(err)?;
        Ok(answer)
    }
}

fn refused(message: String) -> Error {
    Error::Refused { message }
}

/// Sends `request` to the active daemon and waits for its answer (direct reply-to).
async fn ask(ch: &Channel, queue: &str, request: &Request) -> Result<Answer> {
    let err = |e| broker_err("ask the daemon that runs the schedules", e);
    let reply_to = "amq.rabbitmq.reply-to";
    let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let consumer = ch
        .basic_consume(reply_to.into(), "procyard-answer".into(), no_ack, FieldTable::default())
        .await
        .map_err(err)?;
    let body = serde_json::to_vec(&Message::Request(request.clone())).unwrap_or_default();
    let correlation = uuid::Uuid::now_v7().to_string();
    // A request nobody takes in time expires: a client that gave up must not have its
    // trigger applied later by a scheduler that comes along.
    let expiration = ANSWER_TIMEOUT.as_millis().to_string();
    let props = persistent()
        .with_reply_to(reply_to.into())
        .with_correlation_id(correlation.into())
        .with_expiration(expiration.into());
    ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body, props)
        .await
        .map_err(err)?;
    let mut consumer = std::pin::pin!(consumer);
    let next = std::future::poll_fn(|cx| futures_core::Stream::poll_next(consumer.as_mut(), cx));
    match tokio::time::timeout(ANSWER_TIMEOUT, next).await {
        Ok(Some(Ok(d))) => serde_json::from_slice::<std::result::Result<Answer, String>>(&d.data)
            .map_err(|e| broker_err("read the scheduler's answer", e))?
            .map_err(refused),
        Ok(Some(Err(e))) => Err(err(e)),
        Ok(None) => Err(broker_err(
            "ask the daemon that runs the schedules",
            "the answer consumer was cancelled",
        )),
        Err(_) => Err(broker_err(
            "ask the daemon that runs the schedules",
            format!(
                "no answer within {}s (is the daemon running the schedules stuck?)",
                ANSWER_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Publishes the jobs of `fires` on `ch` (part of its transaction).
async fn publish_fires(
    ch: &Channel,
    exchange: &str,
    priorities: bool,
    fires: &[Fire],
) -> Result<()> {
    for f in fires {
        let mut headers = topo::job_headers(1, &f.routing_key);
        headers.insert(topo::H_JOB_ID.into(), topo::long_string(&f.id));
        headers.insert(topo::H_HEADERS.into(), topo::long_string(&f.headers_json()));
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(f.message_id().into())
            .with_content_type("application/octet-stream".into())
            .with_headers(headers);
        if priorities {
            props = props.with_priority(crate::queue::DEFAULT_PRIORITY);
        }
        ch.basic_publish(
            exchange.into(),
            f.routing_key.clone().into(),
            BasicPublishOptions::default(),
            &f.payload,
            props,
        )
        .await
        .map_err(|e| broker_err("publish a schedule's job", e))?;
    }
    Ok(())
}
