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
//!   task: the jobs its workers may hold, `max_workers` × the task's `prefetch` (1 for oneshot
//!   tasks), so the jobs sent ahead to longlived workers are already here when a worker asks,
//!   and a busy daemon holds no more than its workers could take.
//! - **Publish** waits for the publisher confirm and uses the mandatory flag: a key no queue is
//!   bound to is [`Error::Unroutable`](crate::Error::Unroutable), a negative confirm
//!   [`Error::PublishRejected`](crate::Error::PublishRejected).
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
//! - **Job history** (`history`): each daemon records the jobs it runs in a local SQLite file
//!   (`[queue] history`; the embedded queue's tables and code, `sqlite::store`), written once
//!   per loop turn; `job`, `jobs`, `logs` and `purge` read it. Local, not cluster-wide.
//! - **Events** (`events`, `records`, `broker/batch.rs`): as a job moves the daemon publishes
//!   a [`JobEvent`] (JSON) on `E.events` with routing key `<task>.<event>` — `started`,
//!   `failed`, `retried`, `done`, `dead`, `cancelled` — on a channel without confirms. The
//!   daemon's thread hands a turn's events over with its outcomes (events alone wait up to
//!   2 ms for such a turn, so a delivery's `started` does not wake the broker thread by
//!   itself). Events share messages: the first after a quiet 5 ms leaves at once, later
//!   ones within 5 ms of the last message are gathered and leave together, one message per
//!   run of a routing key, its body a JSON array of the events (always an array; cancel
//!   requests and replies are one object; [`JobEvent::from_message`] reads both forms). Each key keeps its order and so does each
//!   job's life across keys; a drain sends about three messages per 5 ms instead of two per
//!   job.
//! - **Replies** (`publish --wait`): the client declares an exclusive, auto-delete reply queue
//!   (also bound to `E.events` for the ends of jobs), publishes with `reply_to` and
//!   `correlation_id` = job id (kept on retry copies), and the daemon that ends the job (done,
//!   dead, cancelled; not a retry) sends the event with the job's record there, before the
//!   event itself.
//! - **Cancel**: `cancel ID` publishes a `cancel` event (`<task>.cancel`, `_.cancel` when the
//!   task is not known here; confirmed, refused when no daemon listens). Every daemon listens
//!   with an exclusive queue bound to `#.cancel`: it stops the job if it runs it (or has it
//!   claimed), and keeps a tombstone (24 h, 100,000 ids at most) checked at claim, so a job
//!   still queued is acknowledged as cancelled when it arrives, never run.
//! - **Delays, priorities, headers** (`options`): `--delay`/`--at` through the broker's delay
//!   ladder (TTL queues of d·64^k ms chained by headers exchanges: a job visits one queue per
//!   nonzero base-64 digit of its delay, two for any delay under 4.1 s, then reaches `E` with
//!   its key unchanged); `--priority` as the
//!   AMQP priority on task queues declared with `x-max-priority` (`[queue] priorities`,
//!   classic queues only); `--header`s as one JSON header. `--unique` is refused.
//! - **Periodic jobs** (`periodic`, `broker/scheduler.rs`): one daemon fires them, the single
//!   active consumer of `E.scheduler`, which holds the schedules' state (one message,
//!   unacknowledged) and commits each due time's jobs, the new state and the old state's
//!   acknowledgement in one AMQP transaction, so a takeover neither skips nor doubles.
//! - **Limits** (`crate::limits::Gate`, one per daemon): `rate_limit`,
//!   `concurrency_key`/`max_per_key` per daemon, over the deliveries it holds.
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
//! | events exchange | `E.events` | durable topic exchange: job events `<task>.<event>`, cancel requests |
//! | cancel listener | server-named | exclusive, auto-delete, one per daemon, bound with `#.cancel` |
//! | reply queue | server-named | exclusive, auto-delete, one per waiting client |
//! | delay ladder | `E.delay.level<k>` → `E.delay.level<k>.<d·64^k>ms` | per level k = 0..5: a headers exchange, and for each digit d = 1..63 used so far a TTL queue that dead-letters to level k-1 (level 0: to `E`); the power-of-two ladder of earlier versions (`E.delay.bit<k>`) is left to drain |
//! | scheduler queue | `E.scheduler` | durable classic, `x-single-active-consumer`: the schedules' state and client requests |
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
//! the client, which this crate does not enable. Rate and per-key limits hold per daemon, and
//! unique keys are refused (no store on the broker holds them cluster-wide); delayed jobs are
//! counted in no task's `delayed` depth (the ladder is shared by all tasks) and are in no
//! history until a daemon receives them. Records are per daemon (see above); a
//! `wait` for a job run elsewhere hears only the ends after it starts listening; tombstones
//! live in memory (a daemon started after a cancel does not know it). Keys bound by a previous run with another
//! config stay bound until unbound by hand (`rabbitmqctl`); this process unbinds only what it
//! bound itself.

mod backend;
mod broker;
mod events;
mod handle;
mod history;
mod inbox;
mod options;
mod periodic;
mod records;
mod topology;

pub use self::events::{EventKind, JobEvent};

use self::handle::AmqpQueue;
use super::{OpenMode, QueueBackend, QueueConfig};
use crate::Result;

/// Opens the AMQP backend for `config`. A client fails if the broker does not answer; a
/// daemon starts anyway and keeps reconnecting in the background (see [`QueueBackend::health`]).
pub(crate) fn open(config: &QueueConfig, mode: OpenMode) -> Result<Box<dyn QueueBackend>> {
    Ok(Box::new(AmqpQueue::open(config, mode)?))
}
