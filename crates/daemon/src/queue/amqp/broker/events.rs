//! The events exchange on the broker thread: job events and replies published without
//! waiting for a confirm — replies at once, events gathered for a short window into a few
//! messages (`batch`), each batch handed to the connection at once — cancel requests
//! published with one (a canceller must know a daemon heard it), and listeners — a daemon's
//! for cancel requests, a client's for the events and replies it waits on — whose messages
//! come back to the daemon's thread as [`Ev::Heard`].

use lapin::message::DeliveryResult;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};

use super::batch::EVENTS_WINDOW;
use super::messages::{Emitted, Ev};
use super::{Broker, broker_err};
use crate::queue::amqp::topology as topo;
use crate::{Error, Result};

impl Broker {
    /// Takes a loop turn's events and replies: replies leave at once (a waiting publisher
    /// hears its job's end first), events join the window's batch, which leaves now when the
    /// last one left a window ago (or it is full), else when the window ends
    /// ([`Broker::run`] waits for `events_due`).
    pub(super) async fn emit(&mut self, batch: Vec<Emitted>) {
        let mut replies = Vec::new();
        for m in batch {
            match m.to {
                Some(_) => replies.push(m),
                None => self.events.push(&m.key, &m.id, m.body),
            }
        }
        if !replies.is_empty() {
            self.send_now(replies).await;
        }
        if self.events.is_empty() {
            return;
        }
        let now = tokio::time::Instant::now();
        let next = self.events_sent.map(|at| at + EVENTS_WINDOW);
        if self.events.is_full() || next.is_none_or(|at| at <= now) {
            self.flush_events().await;
        } else if self.events_due.is_none() {
            self.events_due = next;
        }
    }

    /// Sends the window's events, one message per run of a key (see `batch`).
    pub(super) async fn flush_events(&mut self) {
        self.events_due = None;
        if self.events.is_empty() {
            return;
        }
        self.events_sent = Some(tokio::time::Instant::now());
        let messages = self.events.take().into_iter();
        let batch = messages.map(|(key, body)| Emitted { key, id: String::new(), body, to: None });
        self.send_now(batch.collect()).await;
    }

    /// Publishes messages on the events channel (to the events exchange, or with `to` to a
    /// queue) in order, in a task of its own so the broker thread goes on with
    /// acknowledgements meanwhile. Nothing is awaited but the frames' hand-over, and the whole
    /// batch is handed over at once: every publish queues its frames on its first poll, and
    /// they are polled in order before any is awaited, so the connection's writer takes the
    /// batch in one go (one write, one wake-up of its thread) instead of one round trip to it
    /// per message. A failure is logged (an event is news, not a job: it is never retried).
    async fn send_now(&mut self, batch: Vec<Emitted>) {
        let Some(live) = self.live.as_mut() else { return };
        let channel = match &live.events {
            Some(c) if c.status().connected() => c.clone(),
            _ => match live.conn.create_channel().await {
                Ok(c) => {
                    live.events = Some(c.clone());
                    c
                }
                Err(e) => {
                    tracing::debug!("amqp: unable to open the events channel: {e}");
                    return;
                }
            },
        };
        let events = topo::events_exchange(&self.exchange);
        self.settling.spawn(async move {
            let sends = batch.iter().map(|m| {
                let mut props =
                    BasicProperties::default().with_content_type("application/json".into());
                let (exchange, key) = match &m.to {
                    Some((queue, correlation)) => {
                        props = props.with_correlation_id(correlation.as_str().into());
                        (String::new(), queue.clone())
                    }
                    None => (events.clone(), m.key.clone()),
                };
                let opts = BasicPublishOptions::default();
                channel.basic_publish(exchange.into(), key.into(), opts, &m.body, props)
            });
            // `join_all` polls every publish, in order, before it awaits any.
            for sent in futures_util::future::join_all(sends).await {
                if let Err(e) = sent {
                    tracing::debug!("amqp: unable to publish a job event: {e}");
                    break;
                }
            }
        });
    }

    /// Publishes `body` on the events exchange with a confirm; a message no listener took
    /// (no daemon runs) is an error that says so.
    pub(super) async fn announce(&mut self, key: &str, body: &[u8]) -> Result<()> {
        let Some(live) = self.live.as_ref() else { return Err(self.not_connected("publish")) };
        let props = BasicProperties::default().with_content_type("application/json".into());
        let mandatory = BasicPublishOptions { mandatory: true, immediate: false };
        let publ = live.publ.clone();
        let exchange = topo::events_exchange(&self.exchange);
        let confirm =
            match publ.basic_publish(exchange.into(), key.into(), mandatory, body, props).await {
                Ok(c) => c.await,
                Err(e) => Err(e),
            };
        match confirm {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => Err(Error::Refused {
                message: "no daemon listens on the broker's events exchange (none is running)"
                    .into(),
            }),
            Ok(other) => Err(Error::PublishRejected {
                routing_key: key.to_owned(),
                reason: format!("{other:?}"),
            }),
            Err(e) => {
                let err = broker_err("publish a cancel request", e);
                self.check_publ(&err).await;
                Err(err)
            }
        }
    }

    /// Declares an exclusive, auto-delete, server-named queue bound to the events exchange
    /// with `keys`, and consumes it (no acknowledgements: news, not jobs); each message comes
    /// back as [`Ev::Heard`]. Returns the queue's name (a client's reply-to address).
    pub(super) async fn listen(&mut self, keys: Vec<String>) -> Result<String> {
        let Some(live) = self.live.as_mut() else { return Err(self.not_connected("listen")) };
        let err = |e| broker_err("listen on the events exchange", e);
        let channel = live.conn.create_channel().await.map_err(err)?;
        let exclusive =
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue = channel
            .queue_declare("".into(), exclusive, FieldTable::default())
            .await
            .map_err(err)?;
        let name = queue.name().as_str().to_owned();
        let exchange = topo::events_exchange(&self.exchange);
        for key in keys {
            channel
                .queue_bind(
                    name.clone().into(),
                    exchange.clone().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(err)?;
        }
        let no_ack = BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() };
        let consumer = channel
            .basic_consume(name.clone().into(), "".into(), no_ack, FieldTable::default())
            .await
            .map_err(err)?;
        let sink = self.sink.clone();
        consumer.set_delegate(move |result: DeliveryResult| {
            let sink = sink.clone();
            async move {
                if let Ok(Some(delivery)) = result {
                    sink.send(Ev::Heard(delivery.data));
                }
            }
        });
        live.listeners.push(channel);
        Ok(name)
    }
}
