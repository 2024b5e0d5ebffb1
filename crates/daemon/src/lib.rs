//! procyard-daemon: a supervisor that runs groups of worker processes fed by a job queue —
//! an embedded SQLite file by default, RabbitMQ (AMQP 0-9-1) for many machines.
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
//! - Signals: TERM/INT/QUIT stop gracefully (in-flight jobs get the grace period, then the
//!   workers' process groups get TERM, then KILL); a second one stops at once. HUP reloads
//!   the config and applies only the difference.
//!
//! # Example
//!
//! ```
//! use procyard_daemon::{Config, queue::{self, OpenMode}};
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
//! let config = Config::load(&path)?;
//! let mut q = queue::open(&config.queue, OpenMode::Client)?;
//! q.bind(&config.bindings())?;
//! let ids = q.publish("hello.world", b"world")?;
//! assert_eq!(ids.len(), 1);
//! // A running daemon would now be poked: procyard_daemon::control::poke(&config.daemon.control_socket)
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Limitations
//!
//! Linux only. One daemon per SQLite queue file (an `flock` enforces it); use the AMQP
//! backend to spread one queue over several daemons. Changing `[queue]` or the control socket
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
mod notify;
pub mod protocol;
pub mod queue;
pub mod routing;
pub mod status;
mod supervisor;
pub mod worker;

pub use client::{Cancelled, Client, Waited};
pub use config::{Config, TaskConfig, WorkModel};
pub use error::{BoxError, Error, Result};
pub use supervisor::{DAEMON_SIGNALS, RunOptions, run};
