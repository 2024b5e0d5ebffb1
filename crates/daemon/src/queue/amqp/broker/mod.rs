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
//!
//! The actor is [`Broker::run`]: it takes one [`Cmd`] at a time (a closed set, in `messages`)
//! and [`Broker::handle`]s it; what each command does lives by concern: `connection`
//! (connect, loss, reconnect backoff), `declare` (topology), `consume` (consumers and
//! prefetch), `publish` (publish and settle outcomes), `depths` and `dead` (what a client
//! inspects and requeues).

mod batch;
mod connection;
mod consume;
mod dead;
mod declare;
mod depths;
mod events;
mod messages;
mod publish;
mod scheduler;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lapin::options::BasicNackOptions;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;

use self::connection::{Live, sleep_until};
pub(crate) use self::messages::{BrokerDepth, Cmd, Emitted, Ev, JobMeta, Reply, Sending, Sink};
use crate::queue::{AmqpQueueType, OpenMode, TaskBinding};
use crate::{BoxError, Error};

/// A broker failure while doing `action`.
fn broker_err(action: &'static str, source: impl Into<BoxError>) -> Error {
    Error::Broker { action, source: source.into() }
}

/// The actor: the state of the broker thread, driven by [`Broker::run`].
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
    /// Task queues are declared with `x-max-priority` (`[queue] priorities`).
    priorities: bool,
    failures: u32,
    last_error: String,
    retry_at: Option<tokio::time::Instant>,
    settling: JoinSet<()>,
    consumer_seq: u64,
    /// Periodic jobs (daemon): see `scheduler`.
    sched: scheduler::Scheduler,
    /// Job events of the current window, not sent yet (see `batch`).
    events: batch::EventBatch,
    /// When the window's events leave (`None`: none wait, or they left at once).
    events_due: Option<tokio::time::Instant>,
    /// When events last left.
    events_sent: Option<tokio::time::Instant>,
}

impl Broker {
    /// The actor for the broker at `url`, not connected yet ([`Broker::run`] connects).
    pub(super) fn new(
        url: String,
        exchange: String,
        queue_type: AmqpQueueType,
        priorities: bool,
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
            quorum: (queue_type == AmqpQueueType::Classic || priorities).then_some(false),
            priorities,
            failures: 0,
            last_error: String::new(),
            retry_at: None,
            settling: JoinSet::new(),
            consumer_seq: 0,
            sched: scheduler::Scheduler::default(),
            events: batch::EventBatch::default(),
            events_due: None,
            events_sent: None,
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
            let (wake, restart) = match self.live {
                Some(_) => (self.sched.wake, self.sched.restart),
                None => (None, None),
            };
            let events_due = self.events_due;
            let cmd = tokio::select! {
                cmd = rx.recv() => cmd,
                () = sleep_until(events_due), if events_due.is_some() => {
                    self.flush_events().await;
                    continue;
                }
                () = sleep_until(wake), if wake.is_some() => {
                    if let Err(e) = self.sched_step().await {
                        tracing::warn!("amqp: scheduler: {}", procyard_core::Report(&e));
                    }
                    continue;
                }
                () = sleep_until(restart), if restart.is_some() => {
                    if let Err(e) = self.start_scheduler().await {
                        tracing::warn!("amqp: unable to start the scheduler: {}", procyard_core::Report(&e));
                        self.sched.restart = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    }
                    continue;
                }
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

    /// Does what one command asks (all but `Shutdown`, which [`Broker::run`] takes).
    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Bind { tasks, reply } => {
                let result = self.bind(tasks).await;
                let _ = reply.send(result);
            }
            Cmd::Publish { routing_key, payload, id, reply_to, sending, reply } => {
                let result = self.publish(&routing_key, &payload, &id, reply_to, &sending).await;
                let _ = reply.send(result);
            }
            Cmd::Emit { batch } => self.emit(batch).await,
            Cmd::Announce { key, body, reply } => {
                let result = self.announce(&key, &body).await;
                let _ = reply.send(result);
            }
            Cmd::Listen { keys, reply } => {
                let result = self.listen(keys).await;
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
            Cmd::Requeue { tasks, which, reply } => {
                let result = self.requeue(&tasks, &which).await;
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
            Cmd::SetSchedules { schedules, reply } => {
                let result = self.set_schedules(schedules).await;
                let _ = reply.send(result);
            }
            Cmd::SchedDelivery { epoch, generation, delivery } => {
                self.sched_delivery(epoch, generation, *delivery).await
            }
            Cmd::SchedLost { epoch, generation, error } => {
                self.sched_lost(epoch, generation, error)
            }
            Cmd::SchedRequest { request, schedules, reply } => {
                let result = self.sched_request(request, schedules).await;
                let _ = reply.send(result);
            }
            Cmd::Note(message) => self.sink.send(Ev::Warning(message)),
            Cmd::Shutdown { reply } => {
                self.shutdown().await;
                let _ = reply.send(Ok(()));
            }
        }
    }

    async fn shutdown(&mut self) {
        self.flush_events().await;
        // Let outcomes and events already handed over reach the broker.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A lapin error that prints its cause inline is reported with that cause once.
    #[test]
    fn broker_errors_report_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("IO error: {0}")]
        struct Wrap(#[source] std::io::Error);
        let outer = broker_err("connect", Wrap(std::io::Error::other("connection refused")));
        assert_eq!(
            outer.chain().to_string(),
            "unable to connect on the AMQP broker: IO error: connection refused"
        );
    }
}
