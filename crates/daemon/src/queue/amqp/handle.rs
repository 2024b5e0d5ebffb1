//! The AMQP backend as the daemon's thread holds it: the broker thread it started, the
//! channels to and from it, what it received and what it runs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lapin::Acker;
use lapin::message::Delivery;
use procyard_core::Report;
use tokio::sync::mpsc::UnboundedSender;

use super::broker::{Broker, BrokerDepth, Cmd, Emitted, Ev, Reply, Sink};
use super::events::{EventKind, JobEvent, TOMBSTONE_MAX, TOMBSTONE_TTL, Tombstones, daemon_id};
use super::history::LocalHistory;
use super::inbox::{Inbox, Received};
use super::topology;
use crate::queue::{AttemptReport, Job, OpenMode, QueueConfig, Receipt, TaskBinding};
use crate::{Error, Result};

/// The longest a turn's events wait in the daemon's thread for a turn with outcomes, which
/// wakes the broker thread anyway. A drain's deliveries each start a job in a turn of their
/// own: handing that `started` over alone woke the broker thread once more per job (a futex
/// wake and a runtime turn). Well under the broker thread's window (`broker/batch.rs`).
pub(super) const EVENTS_HOLD: Duration = Duration::from_millis(2);

/// How long a synchronous request may wait for the broker thread.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A claimed job whose outcome is not known yet.
pub(super) struct InFlight {
    /// The connection it came on: its acknowledgement is only good there.
    pub(super) epoch: u64,
    pub(super) task: String,
    pub(super) acker: Acker,
    /// The publisher's reply queue (`publish --wait`).
    pub(super) reply_to: Option<String>,
    /// When it was handed to a worker (ms since the epoch).
    pub(super) started_ms: Option<i64>,
    /// How its attempt ended, once reported.
    pub(super) report: Option<AttemptReport>,
    /// Its AMQP priority and publisher headers (JSON), for a retry's copy.
    pub(super) priority: Option<u8>,
    pub(super) headers_json: Option<String>,
}

/// The AMQP backend, as seen from the daemon's thread.
pub(crate) struct AmqpQueue {
    pub(super) mode: OpenMode,
    /// The broker's URL without its password.
    pub(super) url_shown: String,
    pub(super) exchange: String,
    /// Task queues order by priority (`[queue] priorities`).
    pub(super) priorities: bool,
    pub(super) cmd: UnboundedSender<Cmd>,
    events: crossbeam_channel::Receiver<Ev>,
    pub(super) waker: Arc<OnceLock<mio::Waker>>,
    thread: Option<JoinHandle<()>>,
    pub(super) tasks: Vec<TaskBinding>,
    pub(super) inbox: Inbox<Box<Delivery>>,
    pub(super) in_flight: HashMap<u64, InFlight>,
    next_receipt: u64,
    pub(super) depth_cache: BTreeMap<String, BrokerDepth>,
    pub(super) depth_at: Option<Instant>,
    /// The local history file (`[queue] history`; empty: none).
    pub(super) history_path: PathBuf,
    /// The local history, once opened (a daemon at open, a client at first read).
    pub(super) history: Option<LocalHistory>,
    /// Whether job events are published (`[queue] events`).
    pub(super) events_on: bool,
    /// Events and replies not yet handed to the broker thread (see [`AmqpQueue::hand_over`]).
    pub(super) outbox: Vec<Emitted>,
    /// Since when the outbox holds something.
    pub(super) outbox_since: Option<Instant>,
    /// Outcomes (`Cmd::Settle`) not yet handed to the broker thread: sent once per loop turn
    /// just before the events, so a turn's acknowledgements and events reach the connection
    /// together (one wake-up of the broker thread and, mostly, one write).
    pub(super) settles: Vec<Cmd>,
    /// This process in events (`host/pid`).
    pub(super) daemon_id: String,
    /// Daemon: jobs asked to be cancelled, dropped when they arrive.
    pub(super) tombstones: Tombstones,
    /// Daemon: cancel requests heard and not yet taken by the daemon.
    pub(super) cancels: Vec<String>,
    /// Client: events and replies heard and not yet looked at.
    pub(super) heard: VecDeque<JobEvent>,
    /// Client: its listening (reply) queue, once declared.
    pub(super) listener: Option<String>,
    /// Client: jobs it published with a reply address, whose reply has not come.
    pub(super) replies: std::collections::HashSet<String>,
    /// Daemon: each task's limits on starts, per daemon.
    pub(super) gate: crate::limits::Gate,
}

impl AmqpQueue {
    /// Starts the broker thread and waits for its first connection attempt: a client fails
    /// when it fails, a daemon goes on (the thread keeps trying).
    pub(super) fn open(config: &QueueConfig, mode: OpenMode) -> Result<Self> {
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
            config.priorities,
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
            priorities: config.priorities,
            cmd: cmd_tx,
            events: ev_rx,
            waker,
            thread: Some(thread),
            tasks: Vec::new(),
            inbox: Inbox::new(),
            in_flight: HashMap::new(),
            next_receipt: 1,
            depth_cache: BTreeMap::new(),
            depth_at: None,
            history_path: config.path.clone(),
            history: None,
            events_on: config.events,
            outbox: Vec::new(),
            outbox_since: None,
            settles: Vec::new(),
            daemon_id: daemon_id(),
            tombstones: Tombstones::new(TOMBSTONE_TTL, TOMBSTONE_MAX),
            cancels: Vec::new(),
            heard: VecDeque::new(),
            listener: None,
            replies: std::collections::HashSet::new(),
            gate: crate::limits::Gate::default(),
        };
        if mode == OpenMode::Daemon && !queue.history_path.as_os_str().is_empty() {
            let owner = queue.daemon_id.clone();
            queue.history = Some(LocalHistory::open_daemon(&queue.history_path, &owner)?);
        }
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
                    Report(&e)
                );
            }
        }
        queue.drain();
        Ok(queue)
    }

    /// Sends a request to the broker thread and waits for its answer.
    pub(super) fn request<T>(
        &self,
        action: &'static str,
        timeout: Duration,
        make: impl FnOnce(Reply<T>) -> Cmd,
    ) -> Result<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(action, make(tx))?;
        rx.recv_timeout(timeout).map_err(|_| Error::Broker {
            action,
            source: format!("no answer within {}s", timeout.as_secs()).into(),
        })?
    }

    /// Sends a command to the broker thread without waiting.
    pub(super) fn send(&self, action: &'static str, cmd: Cmd) -> Result<()> {
        self.cmd.send(cmd).map_err(|_| Error::Broker {
            action,
            source: "the AMQP client thread has stopped".into(),
        })
    }

    /// Takes in the events the broker thread sent.
    pub(super) fn drain(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            self.take_in(ev);
        }
    }

    /// Waits up to `timeout` for one event from the broker thread (a client waiting for
    /// replies); `false` when none came.
    pub(super) fn wait_one(&mut self, timeout: Duration) -> bool {
        match self.events.recv_timeout(timeout) {
            Ok(ev) => {
                self.take_in(ev);
                true
            }
            Err(_) => false,
        }
    }

    fn take_in(&mut self, ev: Ev) {
        let Ev::Heard(body) = ev else {
            let broker = format!("{} (exchange {})", self.url_shown, self.exchange);
            self.inbox.apply(ev, &broker);
            return;
        };
        let events = match JobEvent::from_message(&body) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!("amqp: ignored a malformed message on the events exchange: {e}");
                return;
            }
        };
        for event in events {
            match self.mode {
                OpenMode::Daemon if event.event == EventKind::Cancel => {
                    if crate::queue::check_job_id(&event.id).is_ok() {
                        tracing::info!(job = %event.id, from = %event.daemon, "amqp: cancel requested");
                        self.tombstones.insert(&event.id, Instant::now());
                        self.cancels.push(event.id);
                    }
                }
                OpenMode::Daemon => {}
                OpenMode::Client => self.heard.push_back(event),
            }
        }
    }

    /// Queues `event` for the events exchange, or with `to` for a publisher's reply queue;
    /// [`AmqpQueue::hand_over`] hands them over with a turn's outcomes (or within
    /// [`EVENTS_HOLD`]). Never waits (an event
    /// is news: when the broker is away it is lost, logged at debug).
    pub(super) fn emit(&mut self, event: &JobEvent, to: Option<&str>) {
        if to.is_none() && !self.events_on {
            return;
        }
        let Ok(body) = serde_json::to_vec(event) else { return };
        let to = to.map(|q| (q.to_owned(), event.id.clone()));
        self.outbox.push(Emitted { key: event.routing_key(), id: event.id.clone(), body, to });
    }

    /// When events held back must go (the loop wakes then): [`EVENTS_HOLD`] after the
    /// oldest was queued.
    pub(super) fn events_due(&self) -> Option<Instant> {
        self.outbox_since.map(|at| at + EVENTS_HOLD)
    }

    /// Hands the turn's outcomes, then its events (in one batch), to the broker thread. With
    /// `all` false, events without outcomes or replies wait (up to [`EVENTS_HOLD`]) for a
    /// turn that wakes the broker thread anyway. Fails when that thread has stopped (the
    /// outcomes are then lost with the connection: the broker delivers those jobs again).
    pub(super) fn hand_over(&mut self, all: bool) -> Result<()> {
        if self.outbox.is_empty() {
            self.outbox_since = None;
        } else if self.outbox_since.is_none() {
            self.outbox_since = Some(Instant::now());
        }
        let due = self.events_due().is_some_and(|at| at <= Instant::now());
        let replies = self.outbox.iter().any(|m| m.to.is_some());
        let events_go = all || due || replies || !self.settles.is_empty();
        let mut sent = Ok(());
        for settle in self.settles.drain(..) {
            if sent.is_ok() {
                sent = self.cmd.send(settle).map_err(|_| Error::Broker {
                    action: "acknowledge a job",
                    source: "the AMQP client thread has stopped".into(),
                });
            }
        }
        if events_go && !self.outbox.is_empty() {
            self.outbox_since = None;
            let batch = std::mem::take(&mut self.outbox);
            if self.cmd.send(Cmd::Emit { batch }).is_err() {
                tracing::debug!("amqp: the client thread has stopped; events not sent");
            }
        }
        sent
    }

    /// `task`, or every bound task.
    pub(super) fn task_names(&self, task: Option<&str>) -> Vec<String> {
        match task {
            Some(t) => vec![t.to_owned()],
            None => self.tasks.iter().map(|t| t.name.clone()).collect(),
        }
    }

    /// The job in a delivery of `task`, now in flight.
    pub(super) fn job_from(&mut self, task: &str, received: Received<Box<Delivery>>) -> Job {
        let d = &received.delivery;
        let headers = d.properties.headers().as_ref();
        let id = topology::header_str(headers, topology::H_JOB_ID)
            .or_else(|| d.properties.message_id().as_ref().map(|s| s.as_str().to_owned()))
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let priority = *d.properties.priority();
        let headers_json = topology::header_str(headers, topology::H_HEADERS);
        let routing_key = topology::header_str(headers, topology::H_ROUTING_KEY)
            .unwrap_or_else(|| d.routing_key.as_str().to_owned());
        let attempt = topology::header_u32(headers, topology::H_ATTEMPT).unwrap_or(1).max(1);
        let receipt = self.next_receipt;
        self.next_receipt += 1;
        let reply_to = d.properties.reply_to().as_ref().map(|q| q.as_str().to_owned());
        let Received { epoch, delivery } = received;
        let Delivery { data, acker, .. } = *delivery;
        let flight = InFlight {
            epoch,
            task: task.to_owned(),
            acker,
            reply_to,
            started_ms: None,
            report: None,
            priority,
            headers_json,
        };
        self.in_flight.insert(receipt, flight);
        Job {
            id,
            task: task.to_owned(),
            routing_key,
            payload: data,
            attempt,
            receipt: Receipt(receipt),
        }
    }

    /// Whether the broker thread still runs.
    pub(super) fn is_running(&self) -> bool {
        self.thread.is_some()
    }

    /// Waits for the broker thread to end.
    pub(super) fn join(&mut self) {
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("amqp: the client thread panicked");
        }
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
