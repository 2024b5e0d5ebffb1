//! procyard-daemon: a supervisor that runs groups of worker processes fed by a job queue —
//! an embedded SQLite file by default, RabbitMQ (AMQP 0-9-1) or PostgreSQL for many machines.
//!
//! # Concepts
//!
//! - A [`Config`] (TOML) names the queue and the tasks. Each `[[task]]` is bound to AMQP
//!   topic patterns ([`routing`]) and runs a command, either once per job (`oneshot`: payload
//!   on stdin, `PROCYARD_JOB_ID`, `PROCYARD_ROUTING_KEY`, `PROCYARD_ATTEMPT` in the
//!   environment; exit 0 done, 75 retry later, anything else failed) or as `longlived`
//!   workers that take job after job over the framed [`protocol`] ([`worker`] helps write
//!   them in Rust).
//! - The daemon ([`run`]) is one mio event loop: signals through a signalfd, worker exits
//!   through pidfds, the control socket ([`control`]), the queue ([`queue`]) and real
//!   deadlines. A job is acknowledged only once its outcome is known; failures retry with
//!   exponential backoff up to `max_attempts`, then the job is dead-lettered (listed by
//!   `status`, requeued by `requeue`).
//! - `[http] listen = "127.0.0.1:9464"` adds an HTTP face ([`http`]): a live dashboard,
//!   a JSON API (the same JSON as the `--json` verbs, plus pause/resume/scale of a task) and
//!   Prometheus metrics at `/metrics`, served on threads of their own from snapshots the
//!   loop hands over, so it never slows the jobs. Off loopback it needs a bearer token.
//! - Signals: TERM/INT/QUIT stop gracefully (in-flight jobs get the grace period, then the
//!   workers' process groups get TERM, then KILL); a second one stops at once. HUP reloads
//!   the config and applies only the difference.
//!
//! # Example
//!
//! Publish a job and read its record with [`Client`] (which also pokes a running daemon, so
//! the job starts at once; with none running it waits in the queue for the next one):
//!
//! ```
//! use procyard_daemon::{Client, Config, queue::JobState};
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("procyard.toml");
//! std::fs::write(&path, r#"
//!     [queue]
//!     path = "queue.db"
//!     [[task]]
//!     name = "hello"
//!     routing_keys = ["hello.#"]
//!     command = ["sh", "-c", "echo \"hello $(cat)\""]
//! "#)?;
//! let mut client = Client::new(Config::load(&path)?);
//! let ids = client.publish("hello.world", b"world")?;
//! assert_eq!(ids.len(), 1);
//! let job = client.job(&ids[0])?;
//! assert_eq!((job.task.as_str(), job.state), ("hello", JobState::Ready));
//! // With `procyard-daemon run` serving this config, this returns once the job has run,
//! // and `client.job(&ids[0])?.attempts[0].stdout` holds "hello world\n":
//! // let waited = client.wait(&ids, Some(std::time::Duration::from_secs(10)))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Job records
//!
//! Every job keeps a record (the SQLite and PostgreSQL backends): its state (`ready`, `delayed`, `running`,
//! `done`, `failed`, `dead`, `cancelled`), and each attempt — worker pid, start and end, how
//! it ended (exit code or signal, timed out, worker lost, daemon lost), the reason, and a
//! oneshot job's stdout and stderr, captured and bounded by the task's `output_limit`
//! (default 64 KiB per stream: the first and last halves, with the count dropped between).
//! Done and cancelled records stay for `[daemon] keep_done` (default 24 h, `"0s"` keeps
//! none) and at most `keep_done_max` (100,000), pruned by the daemon in small batches; dead
//! letters stay until requeued or purged. A daemon killed during an attempt leaves it open;
//! the next daemon records it `daemon lost`. [`Client`] (and the `job`, `jobs`, `logs`,
//! `wait`, `cancel`, `purge` verbs) reads and acts on them; waiting is an event (the daemon
//! answers a held control connection when the jobs end). A longlived worker's stderr is
//! relayed to the daemon's stderr and what it writes during a job is kept with that job's
//! attempt (bounded the same way). Not recorded (yet): a worker's result value. On RabbitMQ the records are each
//! daemon's own (see below).
//!
//! # On RabbitMQ: what is cluster-wide and what is local
//!
//! Many daemons serve one broker, so no one daemon holds every record.
//!
//! - **Local** (this daemon only): the job records. Each AMQP daemon keeps the records of the
//!   jobs IT ran in a SQLite history of its own (`[queue] history`, by default beside its
//!   control socket; the same tables and code as the embedded queue), pruned by the same
//!   retention; `job`, `jobs` and `logs` read it and say so ("from this daemon's history:
//!   jobs run by other daemons are not here"). A job retried on another daemon stays
//!   `delayed` here; its later attempts are in that daemon's history.
//! - **Cluster-wide** (through the broker): job events — every daemon publishes `started`,
//!   `failed`, `retried`, `done`, `dead` and `cancelled` as JSON on the topic exchange
//!   `<exchange>.events` (routing key `<task>.<event>`; see `queue::amqp::JobEvent`), without
//!   waiting for confirms, a few milliseconds' events of one key in one message (a JSON
//!   array, even of one event); `publish --wait` — the publisher's exclusive reply queue gets the
//!   outcome (with the last attempt's output) from whichever daemon ends the job; `cancel` —
//!   a request on the events exchange that every running daemon honours: the one running the
//!   job stops it (it ends `cancelled`, never retried), and each keeps a tombstone (24 h, at
//!   most 100,000 ids, in memory) so a job still queued is acknowledged as cancelled when it
//!   arrives instead of running.
//! - **Limits**: `wait ID` for a job run elsewhere hears only ends that happen after it
//!   starts listening (and what this daemon's history already has); a daemon that was not
//!   running when a cancel was sent keeps no tombstone for it; events are news, not jobs — a
//!   daemon cut off from the broker loses the events of that time; `publish --lines --wait`
//!   waits through the events exchange, not the reply queue.
//!
//! # Scheduling
//!
//! On the SQLite queue: `publish --delay D | --at TIME` (the job waits `delayed` and starts
//! when due: the loop sleeps until then), `--priority 0..9` (default 5, higher first within
//! a task, publish order within one), `--unique KEY [--unique-for D]` (a held key answers the
//! existing job's id; enforced by a unique index), `--header NAME=VALUE`; the same through
//! [`Client::publish_with`] and [`queue::PublishOptions`]. `[[schedule]]` tables
//! ([`schedule`]: cron or `every`, an IANA zone, `missed = "skip"|"once"|"all"`) fire exactly
//! once per due time — each due time is recorded in the transaction of its job — listed by
//! `schedules`, driven by `schedule trigger|pause|resume`. Per task, `rate_limit = "N/s"` and
//! `concurrency_key` with `max_per_key` ([`limits`]) hold jobs `ready` until they may start.
//! The AMQP and PostgreSQL backends refuse these controls with a clear error (for now).
//!
//! # Limitations
//!
//! Linux only. One daemon per SQLite queue file (an `flock` enforces it); use the AMQP or
//! PostgreSQL backend to spread one queue over several daemons. Changing `[queue]` or the control socket
//! needs a restart, not a reload.
//!
//! A job's processes stop with it: its worker's process group is signalled, and the
//! `procyard-daemon` binary is a child subreaper, so a descendant that left the group
//! (`setsid`, a double fork) is reparented to it and stopped with its worker, recognised by
//! the `PROCYARD_WORKER` variable it inherited. A worker gets SIGKILL when its daemon dies (a
//! parent-death signal), and the next daemon on the same SQLite queue stops what is left in
//! the process groups recorded with the leases before it runs those jobs again. Without
//! cgroups some escapes remain: a descendant that cleared its environment; one whose own
//! parent is still alive (it is caught once that parent exits); the descendants that left the
//! group of a worker whose daemon was SIGKILLed (they go to init); a set-user-ID worker
//! program (the kernel drops its parent-death signal); and, on AMQP, a killed daemon's job
//! subprocesses (the broker redelivers at once and nothing records them).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
pub mod config;
pub mod control;
mod error;
pub mod follow;
pub mod http;
pub mod limits;
mod notify;
pub mod protocol;
pub mod queue;
pub mod routing;
pub mod schedule;
mod stamp;
pub mod status;
mod supervisor;
pub mod worker;

pub use client::{Cancelled, Client, Waited};
pub use config::{Config, TaskConfig, WorkModel};
pub use error::{BoxError, Error, Result};
pub use supervisor::{DAEMON_SIGNALS, RunOptions, run};
