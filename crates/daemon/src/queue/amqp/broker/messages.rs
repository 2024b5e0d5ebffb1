//! The broker actor's closed set of messages: [`Cmd`]s from the daemon's thread (and from the
//! actor's own watchers), [`Ev`]s back to it through a [`Sink`] that wakes its event loop.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use lapin::Acker;
use lapin::message::Delivery;

use crate::Result;
use crate::queue::{DeadLetter, Outcome, Requeue, TaskBinding};

/// A reply channel for a synchronous request.
pub(crate) type Reply<T> = crossbeam_channel::Sender<Result<T>>;

/// The data of a job that an outcome needs (to republish it for a retry or a dead letter).
#[derive(Debug)]
pub(crate) struct JobMeta {
    pub(crate) id: String,
    pub(crate) task: String,
    pub(crate) routing_key: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) attempt: u32,
    /// The publisher's reply queue, carried to the retry's copy.
    pub(crate) reply_to: Option<String>,
    /// Its AMQP priority and publisher headers, carried to the retry's copy.
    pub(crate) priority: Option<u8>,
    pub(crate) headers_json: Option<String>,
}

/// How a job is published, besides its key, payload and id.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sending {
    /// When it may start (`None`: now): the delay ladder holds it until then, the delay
    /// counted just before it is sent.
    pub(crate) not_before: Option<std::time::SystemTime>,
    /// Its AMQP priority (set on every job when `[queue] priorities` is on).
    pub(crate) priority: Option<u8>,
    /// The publisher's headers (`--header`), as a JSON object.
    pub(crate) headers_json: Option<String>,
    /// The `message-id`, when it is not the job id (a schedule's fire).
    pub(crate) message_id: Option<String>,
}

/// One message for the events exchange (`key` = `<task>.<event>`), or with `to` = (queue,
/// correlation id), an outcome for a publisher's reply queue.
#[derive(Debug)]
pub(crate) struct Emitted {
    pub(crate) key: String,
    /// The job it is about (keeps a job's events in order when they are batched).
    pub(crate) id: String,
    pub(crate) body: Vec<u8>,
    pub(crate) to: Option<(String, String)>,
}

/// Broker-side depth of one task.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BrokerDepth {
    pub(crate) ready: u64,
    pub(crate) delayed: u64,
    pub(crate) dead: u64,
}

/// What the daemon's thread asks of the broker thread.
pub(crate) enum Cmd {
    Bind {
        tasks: Vec<TaskBinding>,
        reply: Reply<()>,
    },
    Publish {
        routing_key: String,
        payload: Vec<u8>,
        id: String,
        /// The queue the daemon that ends the job reports its outcome to (`publish --wait`).
        reply_to: Option<String>,
        sending: Sending,
        reply: Reply<()>,
    },
    /// A loop turn's job events and replies, in order: replies leave at once, events join
    /// the window's batch (`batch`); no confirm awaited.
    Emit {
        batch: Vec<Emitted>,
    },
    /// A message on the events exchange that must reach a daemon (a cancel request):
    /// confirmed, and refused when no daemon listens.
    Announce {
        key: String,
        body: Vec<u8>,
        reply: Reply<()>,
    },
    /// A client: an exclusive queue bound to the events exchange with `keys`, whose messages
    /// (and the replies sent to it) come back as [`Ev::Heard`]; answers its name.
    Listen {
        keys: Vec<String>,
        reply: Reply<String>,
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
        which: Requeue,
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
    /// Daemon: the `[[schedule]]`s to fire (empty: none).
    SetSchedules {
        schedules: Vec<crate::schedule::ScheduleConfig>,
        reply: Reply<()>,
    },
    /// From the scheduler queue's consumer: a message (this daemon is the active scheduler).
    SchedDelivery {
        epoch: u64,
        generation: u64,
        delivery: Box<Delivery>,
    },
    /// From the scheduler queue's consumer: it ended.
    SchedLost {
        epoch: u64,
        generation: u64,
        error: String,
    },
    /// Client: `schedules`, `schedule trigger|pause|resume`, with the config's schedules.
    SchedRequest {
        request: crate::queue::amqp::periodic::Request,
        schedules: Vec<crate::schedule::ScheduleConfig>,
        reply: Reply<crate::queue::amqp::periodic::Answer>,
    },
    /// From the connection watcher: something to log and show in `status`.
    Note(String),
    Shutdown {
        reply: Reply<()>,
    },
}

/// What the broker thread tells the daemon's thread. `D` is the delivery (another type
/// only in tests).
#[derive(Debug)]
pub(crate) enum Ev<D = Box<Delivery>> {
    /// A job for `task`, on connection `epoch`.
    Delivery { epoch: u64, task: String, delivery: D },
    /// Connection `epoch` is up, its topology declared and its consumers started.
    Connected { epoch: u64 },
    /// Connection `epoch` failed (or the first attempt did): waiting deliveries are void.
    Disconnected { epoch: u64, error: String },
    /// Something to log and show in `status`; the connection stays.
    Warning(String),
    /// A message heard on the events exchange or in this client's reply queue (JSON).
    Heard(Vec<u8>),
}

/// Where events go: a channel plus the daemon's waker (set by `attach`).
#[derive(Clone)]
pub(crate) struct Sink {
    pub(crate) tx: crossbeam_channel::Sender<Ev>,
    pub(crate) waker: Arc<OnceLock<mio::Waker>>,
}

impl Sink {
    /// Sends `ev` and wakes the daemon's loop (once it is attached).
    pub(crate) fn send(&self, ev: Ev) {
        if self.tx.send(ev).is_ok()
            && let Some(waker) = self.waker.get()
            && let Err(e) = waker.wake()
        {
            tracing::warn!(error = %e, "amqp: unable to wake the daemon's event loop");
        }
    }
}
