//! The broker thread's connection: opening it (channels, topology, consumers), noticing its
//! loss, and reconnecting with backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use procyard_core::{Backoff, Report};
use tokio::sync::mpsc::UnboundedSender;

use super::messages::{Cmd, Ev};
use super::{Broker, broker_err};
use crate::queue::amqp::topology as topo;
use crate::queue::{OpenMode, TaskBinding};
use crate::{Error, Result};

/// Reconnect delays: 100 ms, doubling, at most 10 s, with jitter so that daemons cut off
/// together do not come back in step.
pub(super) const RECONNECT: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).with_jitter();

/// The consumer of one task.
pub(super) struct Consuming {
    pub(super) channel: Channel,
    pub(super) tag: String,
}

/// One live connection.
pub(super) struct Live {
    pub(super) conn: Connection,
    /// Declarations and passive declares; reopened when the broker closes it after an error.
    pub(super) ctl: Channel,
    /// Publishes, in confirm mode.
    pub(super) publ: Channel,
    pub(super) consumers: BTreeMap<String, Consuming>,
    pub(super) retry_declared: BTreeSet<String>,
    /// Whether the delay ladder's exchanges are declared on this connection.
    pub(super) ladder_declared: bool,
    /// The delay queues (level, digit) declared on this connection.
    pub(super) delay_declared: BTreeSet<(u32, u8)>,
    /// Publishes job events and replies (no confirms), opened at first use.
    pub(super) events: Option<Channel>,
    /// The channels of this connection's event listeners.
    pub(super) listeners: Vec<Channel>,
    /// Watches the connection's events (errors, blocked) and reports them as commands.
    pub(super) watcher: tokio::task::JoinHandle<()>,
}

impl Broker {
    pub(super) fn not_connected(&self, action: &'static str) -> Error {
        broker_err(
            action,
            format!("not connected to the broker ({}); reconnecting", self.last_error),
        )
    }

    /// Opens a connection, declares the topology, starts the consumers.
    pub(super) async fn connect(&mut self) -> Result<()> {
        self.retry_at = None;
        let result = self.try_connect().await;
        if let Err(e) = &result {
            self.failures = self.failures.saturating_add(1);
            self.last_error = Report(e).to_string();
            let delay = RECONNECT.delay(self.failures);
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
            ladder_declared: false,
            delay_declared: BTreeSet::new(),
            events: None,
            listeners: Vec::new(),
            watcher,
        });
        let tasks: Vec<TaskBinding> = self.tasks.values().cloned().collect();
        if let Err(e) = self.declare_all(&tasks).await {
            self.drop_live();
            return Err(e);
        }
        if self.mode == OpenMode::Daemon
            && let Err(e) = self.listen(vec![topo::CANCEL_BINDING.to_owned()]).await
        {
            self.drop_live();
            return Err(e);
        }
        if self.mode == OpenMode::Daemon
            && let Err(e) = self.start_scheduler().await
        {
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

    pub(super) fn drop_live(&mut self) {
        self.sched.reset();
        if let Some(live) = self.live.take() {
            live.watcher.abort();
            self.settling.spawn(async move {
                let _ = live.conn.close(200, "procyard: reconnecting".into()).await;
            });
        }
    }

    /// The connection failed: forget it, tell the daemon, schedule a reconnect.
    pub(super) fn lost(&mut self, error: String) {
        if self.live.is_none() {
            return;
        }
        self.drop_live();
        tracing::warn!("amqp: connection to the broker lost: {error}");
        self.last_error = error.clone();
        self.sink.send(Ev::Disconnected { epoch: self.epoch, error });
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(tokio::time::Instant::now() + RECONNECT.delay(self.failures));
    }

    /// The control channel, reopened if the broker closed it after a failed declaration.
    pub(super) async fn ctl(&mut self) -> Result<Channel> {
        let Some(live) = self.live.as_mut() else {
            return Err(self.not_connected("declare the topology"));
        };
        if !live.ctl.status().connected() {
            live.ctl =
                live.conn.create_channel().await.map_err(|e| broker_err("open a channel", e))?;
        }
        Ok(live.ctl.clone())
    }
}

/// Forwards the connection's events to the broker loop until the connection fails.
pub(super) async fn watch(
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

pub(super) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reconnects come quickly after a blip and at most every 10 s during an outage, never
    /// all at the same instant.
    #[test]
    fn reconnect_backoff_is_bounded_and_jittered() {
        let unjittered = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        assert_eq!(RECONNECT, unjittered.with_jitter());
        assert!(RECONNECT.delay(1) <= Duration::from_millis(100));
        assert!(RECONNECT.delay(40) >= Duration::from_secs(5));
    }
}
