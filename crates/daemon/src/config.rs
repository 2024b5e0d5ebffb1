//! The TOML configuration: `[daemon]`, `[queue]` and `[[task]]` entries, validated into
//! [`Config`] with errors that name the file, the line and the field.
//!
//! ```toml
//! [daemon]
//! grace_period = "10s"          # in-flight jobs get this long at stop, then TERM
//! kill_timeout = "5s"           # after TERM, then KILL
//! control_socket = "q.db.sock"  # default: <queue path>.sock
//! log_format = "text"           # or "json"
//! keep_done = "24h"             # done and cancelled jobs' records are kept this long ("0s": none)
//! keep_done_max = 100000        # … and at most this many (dead letters stay until purged)
//!
//! [queue]
//! backend = "sqlite"            # or "amqp", or "postgres"
//! path = "/tmp/procyard/q.db"   # relative paths are relative to this file
//! url = "amqp://guest:guest@127.0.0.1:5672/%2f"
//! exchange = "procyard"
//! queue_type = "quorum"         # amqp: or "classic" (faster on one broker node, not replicated)
//! history = "daemon.history.db" # amqp: this daemon's job records (default: beside the socket)
//! events = true                 # amqp: publish job events on <exchange>.events
//! priorities = false            # amqp: task queues with x-max-priority (needs queue_type = "classic")
//! schema = "procyard"           # postgres (with url = "postgres://user@host:5432/db")
//! durability = "crash"          # sqlite: or "power" (an fsync per commit: a committed job
//!                               # survives a power cut, not only a crash)
//!
//! [[task]]
//! name = "thumbnail"
//! routing_keys = ["image.*.uploaded", "image.#"]
//! command = ["./make-thumbnail", "--fast"]
//! work_model = "oneshot"        # or "longlived"
//! min_workers = 0
//! max_workers = 4
//! timeout = "30s"
//! max_attempts = 3
//! backoff_initial = "1s"        # retry delay after the first failure, doubling …
//! backoff_max = "5m"            # … up to this
//! idle_timeout = "60s"          # longlived: idle workers above min stop after this
//! prefetch = 8                  # longlived: jobs sent ahead to each worker that takes them
//! env = { MODE = "fast" }
//! cwd = "."
//! output_limit = 65536          # bytes of stdout and of stderr kept per attempt (longlived: stderr)
//! rate_limit = "100/s"           # at most this many starts per second (or /m, /h)
//! concurrency_key = "header:tenant"  # or "payload-json:/customer_id" …
//! max_per_key = 1                # … at most this many running per key (1: in publish order)
//! ```
//!
//! Durations are an integer or float number of seconds, or a string with a unit: `250ms`,
//! `1.5s`, `10s`, `5m`, `1h`, `2d` ([`procyard_core::parse_duration`]).
//!
//! Deprecated names, still read: `retry_backoff` for `backoff_initial`, `retry_backoff_max`
//! for `backoff_max`.
//!
//! [`Config::load`] checks the file itself; [`Config::load_runnable`] (what `run` and
//! `check-config` use) also checks that it can run here: every task's program exists and can
//! be executed, every `cwd` exists, and the control socket's path is free or a socket.

#[cfg(test)]
mod durability_tests;
mod http;
mod runnable;
mod schedule;
mod validate;

pub use crate::schedule::ScheduleConfig;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use procyard_core::Backoff;
use serde::Deserialize;
use toml::Spanned;

use crate::queue::{AmqpQueueType, BackendKind, Durability, QueueConfig, Retention, TaskBinding};
use crate::{Error, Result};
use validate::Validator;

pub use self::http::{HttpSettings, TokenSource};

/// How a task's workers take jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkModel {
    /// One process per job: payload on stdin, outcome by exit status.
    Oneshot,
    /// Worker processes that take job after job over the framed stdin/stdout protocol
    /// (see [`crate::protocol`]).
    Longlived,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The default `prefetch` of a longlived task: jobs sent to a worker ahead of its reply, so
/// it never waits for the daemon between two jobs (chosen by measurement: see the README's
/// Speed section; `1` sends one job at a time).
pub const DEFAULT_PREFETCH: i64 = 8;

/// One `[[task]]` entry, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskConfig {
    /// Unique name (also the queue name).
    pub name: String,
    /// AMQP topic patterns (`*` one word, `#` zero or more) of the jobs it takes.
    pub routing_keys: Vec<String>,
    /// The worker's program and its arguments (run without a shell).
    pub command: Vec<String>,
    /// One process per job, or workers that take job after job.
    pub work_model: WorkModel,
    /// Longlived workers kept even when idle.
    pub min_workers: usize,
    /// Most jobs of this task run at once.
    pub max_workers: usize,
    /// Longlived: jobs sent to each worker ahead of its reply (1: one at a time), to workers
    /// that announced in their hello that they take jobs ahead
    /// ([`crate::protocol::Hello::prefetch`]); others get one at a time.
    pub prefetch: usize,
    /// Longest a job may run; the worker's process group is killed after it.
    pub timeout: Option<Duration>,
    /// Deliveries before a job is dead-lettered.
    pub max_attempts: u32,
    /// The retry delay after a first failed attempt; it doubles with each further one.
    pub backoff_initial: Duration,
    /// The longest retry delay.
    pub backoff_max: Duration,
    /// Longlived: idle workers above `min_workers` stop after this.
    pub idle_timeout: Duration,
    /// Variables added to the workers' environment.
    pub env: BTreeMap<String, String>,
    /// The workers' working directory (absolute); the daemon's when unset.
    pub cwd: Option<PathBuf>,
    /// The bytes of stdout and of stderr kept per attempt (the first and last halves, with
    /// the count dropped between; a longlived worker's stderr only); default 64 KiB.
    pub output_limit: usize,
    /// `rate_limit`, `concurrency_key`, `max_per_key`: limits on starts.
    pub limits: crate::limits::TaskLimits,
}

impl TaskConfig {
    /// The most jobs its workers hold at once (`max_workers` × `prefetch`): what a daemon
    /// takes from a broker that pushes jobs (the AMQP consumer's prefetch), so the jobs sent
    /// ahead to workers are there when a worker asks, not a broker round trip away.
    pub fn held_jobs(&self) -> usize {
        self.max_workers.saturating_mul(self.prefetch.max(1))
    }

    /// Whether running workers must be replaced to apply `new` (the process itself changes).
    pub fn needs_restart(&self, new: &TaskConfig) -> bool {
        self.command != new.command
            || self.work_model != new.work_model
            || self.env != new.env
            || self.cwd != new.cwd
    }

    /// The retry delays of the task's jobs: `backoff().delay(attempt)` after failed attempt
    /// number `attempt` (1-based).
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_initial, self.backoff_max)
    }

    /// What the queue backend needs.
    pub fn binding(&self) -> TaskBinding {
        TaskBinding {
            name: self.name.clone(),
            routing_keys: self.routing_keys.clone(),
            max_attempts: self.max_attempts,
        }
    }
}

/// `[daemon]` settings, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonSettings {
    /// How long in-flight jobs may run on after a stop request.
    pub grace_period: Duration,
    /// How long after TERM before KILL.
    pub kill_timeout: Duration,
    /// The control socket (absolute).
    pub control_socket: PathBuf,
    /// How log lines are written to stderr: text or JSON.
    pub log_format: LogFormat,
    /// How long ended jobs' records are kept (`keep_done`, `keep_done_max`).
    pub retention: Retention,
    /// The zone of local times (`publish --at 2026-12-05T03:00`): an IANA name, default UTC.
    pub timezone: String,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file it came from (absolute).
    pub path: PathBuf,
    /// `[daemon]`.
    pub daemon: DaemonSettings,
    /// `[queue]`.
    pub queue: QueueConfig,
    /// `[[task]]`, in file order.
    pub tasks: Vec<TaskConfig>,
    /// `[[schedule]]`: periodic jobs, in file order.
    pub schedules: Vec<ScheduleConfig>,
    /// `[http]`: the dashboard, JSON API and metrics (off when absent).
    pub http: Option<HttpSettings>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config> {
        Config::load_checked(path, false)
    }

    /// Reads and validates `path`, and checks that it can run on this machine: the programs
    /// and working directories of its tasks exist, and its control socket path is free or a
    /// socket (never a file the daemon would have to delete). For `run` and `check-config`.
    pub fn load_runnable(path: &Path) -> Result<Config> {
        Config::load_checked(path, true)
    }

    fn load_checked(path: &Path, runnable: bool) -> Result<Config> {
        let abs = absolute(path)?;
        let text = std::fs::read_to_string(&abs)
            .map_err(|source| Error::ConfigRead { path: abs.clone(), source })?;
        Config::parse_checked(&abs, &text, runnable)
    }

    /// Validates `text` as if read from `path` (relative paths resolve against its directory).
    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        Config::parse_checked(path, text, false)
    }

    fn parse_checked(path: &Path, text: &str, runnable: bool) -> Result<Config> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span();
            let (line, field) = match &span {
                Some(s) => (Some(line_of(text, s.start)), http::field_at(text, s.clone())),
                None => (None, None),
            };
            Error::Config {
                path: path.to_owned(),
                line,
                field,
                message: e.message().trim().to_owned(),
            }
        })?;
        Validator { path, text, runnable }.validate(raw)
    }

    /// The task bindings for the queue backend.
    pub fn bindings(&self) -> Vec<TaskBinding> {
        self.tasks.iter().map(TaskConfig::binding).collect()
    }

    /// Each task's limits on starts, for the queue backend.
    pub fn limits(&self) -> Vec<crate::limits::TaskLimits> {
        self.tasks.iter().map(|t| t.limits.clone()).collect()
    }

    /// The task named `name`.
    pub fn task(&self, name: &str) -> Option<&TaskConfig> {
        self.tasks.iter().find(|t| t.name == name)
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    let cwd =
        std::env::current_dir().map_err(|e| Error::io("read the working directory", ".", e))?;
    Ok(cwd.join(path))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len())).map(|t| t.matches('\n').count() + 1).unwrap_or(1)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    task: Vec<Spanned<RawTask>>,
    #[serde(default)]
    schedule: Vec<Spanned<schedule::RawSchedule>>,
    http: Option<Spanned<http::RawHttp>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    grace_period: Option<Spanned<DurationValue>>,
    kill_timeout: Option<Spanned<DurationValue>>,
    control_socket: Option<Spanned<PathBuf>>,
    #[serde(default)]
    log_format: LogFormat,
    keep_done: Option<Spanned<DurationValue>>,
    keep_done_max: Option<Spanned<i64>>,
    timezone: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    #[serde(default)]
    pub(super) backend: BackendKind,
    pub(super) path: Option<Spanned<PathBuf>>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) exchange: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) queue_type: AmqpQueueType,
    pub(super) history: Option<Spanned<PathBuf>>,
    pub(super) events: Option<bool>,
    pub(super) priorities: Option<Spanned<bool>>,
    pub(super) schema: Option<Spanned<String>>,
    pub(super) durability: Option<Spanned<Durability>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: Spanned<String>,
    routing_keys: Spanned<Vec<Spanned<String>>>,
    command: Spanned<Vec<String>>,
    #[serde(default = "default_model")]
    work_model: WorkModel,
    min_workers: Option<Spanned<i64>>,
    max_workers: Option<Spanned<i64>>,
    prefetch: Option<Spanned<i64>>,
    timeout: Option<Spanned<DurationValue>>,
    max_attempts: Option<Spanned<i64>>,
    #[serde(alias = "retry_backoff")]
    backoff_initial: Option<Spanned<DurationValue>>,
    #[serde(alias = "retry_backoff_max")]
    backoff_max: Option<Spanned<DurationValue>>,
    idle_timeout: Option<Spanned<DurationValue>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<Spanned<PathBuf>>,
    output_limit: Option<Spanned<i64>>,
    rate_limit: Option<Spanned<String>>,
    concurrency_key: Option<Spanned<String>>,
    max_per_key: Option<Spanned<i64>>,
}

fn default_model() -> WorkModel {
    WorkModel::Oneshot
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum DurationValue {
    Int(i64),
    Float(f64),
    Text(String),
}

#[cfg(test)]
mod tests;
