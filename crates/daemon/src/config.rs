//! The TOML configuration: `[daemon]`, `[queue]` and `[[task]]` entries, validated into
//! [`Config`] with errors that name the file, the line and the field.
//!
//! ```toml
//! [daemon]
//! grace_period = "10s"          # in-flight jobs get this long at stop, then TERM
//! kill_timeout = "5s"           # after TERM, then KILL
//! control_socket = "q.db.sock"  # default: <queue path>.sock
//! log_format = "text"           # or "json"
//!
//! [queue]
//! backend = "sqlite"            # or "amqp"
//! path = "/tmp/procyard/q.db"   # relative paths are relative to this file
//! url = "amqp://guest:guest@127.0.0.1:5672/%2f"
//! exchange = "procyard"
//! queue_type = "quorum"         # amqp: or "classic" (faster on one broker node, not replicated)
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
//! retry_backoff = "1s"          # doubles per attempt …
//! retry_backoff_max = "5m"      # … up to this
//! idle_timeout = "60s"          # longlived: idle workers above min stop after this
//! env = { MODE = "fast" }
//! cwd = "."
//! ```
//!
//! Durations are an integer or float number of seconds, or a string with a unit: `250ms`,
//! `10s`, `5m`, `1h`.
//!
//! [`Config::load`] checks the file itself; [`Config::load_runnable`] (what `run` and
//! `check-config` use) also checks that it can run here: every task's program exists and can
//! be executed, every `cwd` exists, and the control socket's path is free or a socket.

mod runnable;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::queue::{AmqpQueueType, BackendKind, QueueConfig, TaskBinding};
use crate::{Error, Result, routing};

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

/// One `[[task]]` entry, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskConfig {
    /// Unique name (also the queue name).
    pub name: String,
    /// AMQP topic patterns.
    pub routing_keys: Vec<String>,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Work model.
    pub work_model: WorkModel,
    /// Longlived workers kept even when idle.
    pub min_workers: usize,
    /// Most jobs of this task run at once.
    pub max_workers: usize,
    /// Longest a job may run; the worker's process group is killed after it.
    pub timeout: Option<Duration>,
    /// Deliveries before a job is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay (doubles each attempt).
    pub retry_backoff: Duration,
    /// Largest retry delay.
    pub retry_backoff_max: Duration,
    /// Longlived: idle workers above `min_workers` stop after this.
    pub idle_timeout: Duration,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute).
    pub cwd: Option<PathBuf>,
}

impl TaskConfig {
    /// Whether running workers must be replaced to apply `new` (the process itself changes).
    pub fn needs_restart(&self, new: &TaskConfig) -> bool {
        self.command != new.command
            || self.work_model != new.work_model
            || self.env != new.env
            || self.cwd != new.cwd
    }

    /// The retry delay after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(30);
        self.retry_backoff.saturating_mul(1u32 << shift).min(self.retry_backoff_max)
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
    /// Log format.
    pub log_format: LogFormat,
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
                Some(s) => (Some(line_of(text, s.start)), field_at(text, s.clone())),
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

/// Guesses `section.key` (or `task[i].key`) for a byte span, from the text around it.
fn field_at(text: &str, span: Range<usize>) -> Option<String> {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[start..].find('\n').map(|i| start + i).unwrap_or(text.len());
    let line = &text[line_start..line_end];
    let key =
        line.split('=').next().map(str::trim).filter(|k| !k.is_empty() && !k.starts_with('['));
    let before = &text[..line_start];
    let section = before
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .map(|l| l.trim().trim_matches(|c| c == '[' || c == ']').to_owned());
    let section = match section.as_deref() {
        Some("task") => {
            let idx = before.matches("[[task]]").count().saturating_sub(1);
            Some(format!("task[{idx}]"))
        }
        other => other.map(str::to_owned),
    };
    match (section, key) {
        (Some(s), Some(k)) => Some(format!("{s}.{k}")),
        (None, Some(k)) => Some(k.to_owned()),
        (Some(s), None) => Some(s),
        (None, None) => None,
    }
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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    grace_period: Option<Spanned<DurationValue>>,
    kill_timeout: Option<Spanned<DurationValue>>,
    control_socket: Option<Spanned<PathBuf>>,
    #[serde(default)]
    log_format: LogFormat,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    #[serde(default)]
    backend: BackendKind,
    path: Option<Spanned<PathBuf>>,
    url: Option<Spanned<String>>,
    exchange: Option<Spanned<String>>,
    #[serde(default)]
    queue_type: AmqpQueueType,
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
    timeout: Option<Spanned<DurationValue>>,
    max_attempts: Option<Spanned<i64>>,
    retry_backoff: Option<Spanned<DurationValue>>,
    retry_backoff_max: Option<Spanned<DurationValue>>,
    idle_timeout: Option<Spanned<DurationValue>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<Spanned<PathBuf>>,
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

/// Parses `250ms`, `10s`, `1.5s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(input: &str) -> Option<Duration> {
    let s = input.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = num.trim().parse().ok()?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    /// Also check the machine (programs, directories, the socket path).
    runnable: bool,
}

impl Validator<'_> {
    fn err(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Error {
        Error::Config {
            path: self.path.to_owned(),
            line: span.map(|s| line_of(self.text, s.start)),
            field: Some(field.into()),
            message: message.into(),
        }
    }

    fn duration(
        &self,
        v: &Option<Spanned<DurationValue>>,
        field: String,
        default: Duration,
    ) -> Result<Duration> {
        let Some(v) = v else { return Ok(default) };
        let parsed = match v.get_ref() {
            DurationValue::Int(i) if *i >= 0 => Some(Duration::from_secs(*i as u64)),
            DurationValue::Float(f) => parse_duration(&f.to_string()),
            DurationValue::Text(t) => parse_duration(t),
            DurationValue::Int(_) => None,
        };
        parsed.ok_or_else(|| {
            self.err(
                Some(v.span()),
                field,
                "expected a duration such as 500ms, 10s, 5m or a number of seconds",
            )
        })
    }

    fn count(
        &self,
        v: &Option<Spanned<i64>>,
        field: String,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<i64> {
        let Some(v) = v else { return Ok(default) };
        let n = *v.get_ref();
        if n < min || n > max {
            return Err(self.err(
                Some(v.span()),
                field,
                format!("must be between {min} and {max}, got {n}"),
            ));
        }
        Ok(n)
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new("/")).join(p)
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config> {
        let backend = raw.queue.backend;
        let queue_path = match &raw.queue.path {
            Some(p) if p.get_ref().as_os_str().is_empty() => {
                return Err(self.err(
                    Some(p.span()),
                    "queue.path",
                    "must not be empty: name the queue's file",
                ));
            }
            Some(p) if runnable::has_nul(p.get_ref()) => {
                return Err(self.err(Some(p.span()), "queue.path", "contains a NUL byte"));
            }
            Some(p) => self.resolve(p.get_ref()),
            None if backend == BackendKind::Sqlite => {
                return Err(self.err(
                    None,
                    "queue.path",
                    "the sqlite backend needs a path for its file",
                ));
            }
            None => PathBuf::new(),
        };
        let url = raw.queue.url.as_ref().map(|u| u.get_ref().clone());
        if let Some(u) = &raw.queue.url
            && !(u.get_ref().starts_with("amqp://") || u.get_ref().starts_with("amqps://"))
        {
            return Err(self.err(
                Some(u.span()),
                "queue.url",
                "must start with amqp:// or amqps://",
            ));
        }
        if backend == BackendKind::Amqp && url.is_none() {
            return Err(self.err(
                None,
                "queue.url",
                "the amqp backend needs a url (amqp://host:5672)",
            ));
        }
        let exchange = raw
            .queue
            .exchange
            .as_ref()
            .map(|e| e.get_ref().clone())
            .unwrap_or_else(|| "procyard".into());
        if exchange.is_empty() {
            let span = raw.queue.exchange.as_ref().map(Spanned::span);
            return Err(self.err(span, "queue.exchange", "must not be empty"));
        }
        let socket_span = raw.daemon.control_socket.as_ref().map(Spanned::span);
        let control_socket = match &raw.daemon.control_socket {
            Some(p) if p.get_ref().as_os_str().is_empty() || runnable::has_nul(p.get_ref()) => {
                return Err(self.err(
                    socket_span,
                    "daemon.control_socket",
                    "must be a non-empty path without NUL bytes",
                ));
            }
            Some(p) => self.resolve(p.get_ref()),
            None if backend == BackendKind::Sqlite => {
                let mut s = queue_path.as_os_str().to_owned();
                s.push(".sock");
                PathBuf::from(s)
            }
            None => default_runtime_dir().join("daemon.sock"),
        };
        if control_socket.as_os_str().len() > 100 {
            return Err(self.err(
                socket_span.clone(),
                "daemon.control_socket",
                format!("path {} is too long for a Unix socket", control_socket.display()),
            ));
        }
        if backend == BackendKind::Sqlite
            && crate::queue::sqlite::companion_files(&queue_path).contains(&control_socket)
        {
            return Err(self.err(
                socket_span.clone(),
                "daemon.control_socket",
                format!(
                    "{} is a file of the queue; the socket needs a path of its own",
                    control_socket.display()
                ),
            ));
        }
        if self.runnable
            && let Err(message) = runnable::check_socket(&control_socket)
        {
            return Err(self.err(socket_span, "daemon.control_socket", message));
        }
        let daemon = DaemonSettings {
            grace_period: self.duration(
                &raw.daemon.grace_period,
                "daemon.grace_period".into(),
                Duration::from_secs(10),
            )?,
            kill_timeout: self.duration(
                &raw.daemon.kill_timeout,
                "daemon.kill_timeout".into(),
                Duration::from_secs(5),
            )?,
            control_socket,
            log_format: raw.daemon.log_format,
        };
        let mut tasks: Vec<TaskConfig> = Vec::new();
        for (i, t) in raw.task.iter().enumerate() {
            let span = t.span();
            let t = t.get_ref();
            let f = |name: &str| format!("task[{i}].{name}");
            let name = t.name.get_ref().trim().to_owned();
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(self.err(
                    Some(t.name.span()),
                    f("name"),
                    "must be non-empty and use only letters, digits, '-', '_' and '.'",
                ));
            }
            if tasks.iter().any(|o| o.name == name) {
                return Err(self.err(
                    Some(t.name.span()),
                    f("name"),
                    format!("task {name:?} is defined twice"),
                ));
            }
            if t.routing_keys.get_ref().is_empty() {
                return Err(self.err(
                    Some(t.routing_keys.span()),
                    f("routing_keys"),
                    "needs at least one pattern",
                ));
            }
            for k in t.routing_keys.get_ref() {
                if let Err(Error::InvalidRoutingKey { reason, .. }) =
                    routing::validate_pattern(k.get_ref())
                {
                    return Err(self.err(
                        Some(k.span()),
                        f("routing_keys"),
                        format!("pattern {:?}: {reason}", k.get_ref()),
                    ));
                }
            }
            if t.command.get_ref().is_empty() || t.command.get_ref()[0].is_empty() {
                return Err(self.err(
                    Some(t.command.span()),
                    f("command"),
                    "needs a program (an array: [\"prog\", \"arg\"])",
                ));
            }
            if let Some(n) = t.command.get_ref().iter().position(runnable::has_nul) {
                return Err(self.err(
                    Some(t.command.span()),
                    f("command"),
                    format!("argument {n} contains a NUL byte, which no program can receive"),
                ));
            }
            if let Some((k, _)) = t.env.iter().find(|(k, v)| {
                k.is_empty() || k.contains('=') || runnable::has_nul(k) || runnable::has_nul(v)
            }) {
                return Err(self.err(
                    Some(span.clone()),
                    f("env"),
                    format!("variable {k:?}: names must be non-empty without '=' and values without NUL bytes"),
                ));
            }
            let cwd = match &t.cwd {
                Some(c) if c.get_ref().as_os_str().is_empty() || runnable::has_nul(c.get_ref()) => {
                    return Err(self.err(
                        Some(c.span()),
                        f("cwd"),
                        "must be a non-empty path without NUL bytes",
                    ));
                }
                Some(c) => Some(self.resolve(c.get_ref())),
                None => None,
            };
            if self.runnable {
                if let (Some(dir), Some(c)) = (&cwd, &t.cwd)
                    && let Err(message) = runnable::check_dir(dir)
                {
                    return Err(self.err(Some(c.span()), f("cwd"), message));
                }
                if let Err(message) =
                    runnable::find_program(&t.command.get_ref()[0], cwd.as_deref())
                {
                    return Err(self.err(Some(t.command.span()), f("command"), message));
                }
            }
            let min_workers = self.count(&t.min_workers, f("min_workers"), 0, 0, 10_000)? as usize;
            let max_default = (min_workers as i64).max(1);
            let max_workers =
                self.count(&t.max_workers, f("max_workers"), max_default, 1, 10_000)? as usize;
            if min_workers > max_workers {
                let s = t.min_workers.as_ref().map(Spanned::span);
                return Err(self.err(
                    s,
                    f("min_workers"),
                    format!("{min_workers} is more than max_workers ({max_workers})"),
                ));
            }
            if t.work_model == WorkModel::Oneshot && min_workers > 0 {
                let s = t.min_workers.as_ref().map(Spanned::span);
                return Err(self.err(
                    s,
                    f("min_workers"),
                    "oneshot tasks start one process per job; min_workers must be 0",
                ));
            }
            let timeout = match &t.timeout {
                None => None,
                Some(_) => Some(self.duration(&t.timeout, f("timeout"), Duration::ZERO)?)
                    .filter(|d| !d.is_zero()),
            };
            let retry_backoff =
                self.duration(&t.retry_backoff, f("retry_backoff"), Duration::from_secs(1))?;
            let retry_backoff_max = self.duration(
                &t.retry_backoff_max,
                f("retry_backoff_max"),
                Duration::from_secs(300),
            )?;
            if retry_backoff_max < retry_backoff {
                let s = t.retry_backoff_max.as_ref().map(Spanned::span);
                return Err(self.err(s, f("retry_backoff_max"), "is shorter than retry_backoff"));
            }
            tasks.push(TaskConfig {
                name,
                routing_keys: t
                    .routing_keys
                    .get_ref()
                    .iter()
                    .map(|k| k.get_ref().clone())
                    .collect(),
                command: t.command.get_ref().clone(),
                work_model: t.work_model,
                min_workers,
                max_workers,
                timeout,
                max_attempts: self.count(&t.max_attempts, f("max_attempts"), 3, 1, 1_000_000)?
                    as u32,
                retry_backoff,
                retry_backoff_max,
                idle_timeout: self.duration(
                    &t.idle_timeout,
                    f("idle_timeout"),
                    Duration::from_secs(60),
                )?,
                env: t.env.clone(),
                cwd,
            });
        }
        if tasks.is_empty() {
            return Err(self.err(
                None,
                "task",
                "no [[task]] is defined; the daemon would have nothing to run",
            ));
        }
        Ok(Config {
            path: self.path.to_owned(),
            daemon,
            queue: QueueConfig {
                backend,
                path: queue_path,
                url,
                exchange,
                queue_type: raw.queue.queue_type,
            },
            tasks,
        })
    }
}

/// `$XDG_RUNTIME_DIR/procyard`, else `/tmp/procyard-$UID`.
pub fn default_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("procyard"),
        _ => PathBuf::from(format!("/tmp/procyard-{}", rustix::process::getuid().as_raw())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[queue]
path = "q.db"

[[task]]
name = "echo"
routing_keys = ["echo.#"]
command = ["cat"]
max_workers = 2
timeout = "1.5s"

[[task]]
name = "ll"
routing_keys = ["ll.*"]
command = ["worker"]
work_model = "longlived"
min_workers = 1
max_workers = 3
env = { A = "b" }
"#;

    #[test]
    fn parses_and_resolves() {
        let c = Config::parse(Path::new("/etc/p/x.toml"), GOOD).unwrap();
        assert_eq!(c.queue.path, Path::new("/etc/p/q.db"));
        assert_eq!(c.daemon.control_socket, Path::new("/etc/p/q.db.sock"));
        assert_eq!(c.tasks[0].timeout, Some(Duration::from_millis(1500)));
        assert_eq!(c.tasks[1].work_model, WorkModel::Longlived);
        assert_eq!(c.tasks[1].backoff(1), Duration::from_secs(1));
        assert_eq!(c.tasks[1].backoff(3), Duration::from_secs(4));
    }

    fn error_of(text: &str) -> (Option<usize>, Option<String>, String) {
        match Config::parse(Path::new("/x.toml"), text) {
            Err(Error::Config { line, field, message, .. }) => (line, field, message),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_line_and_field() {
        let bad = GOOD.replace("max_workers = 3", "max_workers = 0");
        let (line, field, _) = error_of(&bad);
        assert_eq!(field.as_deref(), Some("task[1].max_workers"));
        assert_eq!(
            line,
            Some(bad.lines().position(|l| l.contains("max_workers = 0")).unwrap() + 1)
        );

        let bad = GOOD.replace("timeout = \"1.5s\"", "timeout = \"soon\"");
        let (line, field, _) = error_of(&bad);
        assert_eq!(field.as_deref(), Some("task[0].timeout"));
        assert_eq!(line, Some(bad.lines().position(|l| l.contains("soon")).unwrap() + 1));

        let bad = GOOD.replace("max_workers = 2", "max_wrkers = 2");
        let (line, field, msg) = error_of(&bad);
        assert_eq!(line, Some(bad.lines().position(|l| l.contains("max_wrkers")).unwrap() + 1));
        assert_eq!(field.as_deref(), Some("task[0].max_wrkers"));
        assert!(msg.contains("unknown field"), "{msg}");

        let bad = GOOD.replace("\"ll.*\"", "\"ll.\"");
        let (_, field, _) = error_of(&bad);
        assert_eq!(field.as_deref(), Some("task[1].routing_keys"));

        let (line, _, _) = error_of("[queue\npath = 1");
        assert_eq!(line, Some(1));
        let (_, field, _) = error_of("[queue]\npath = \"q\"\n");
        assert_eq!(field.as_deref(), Some("task"));
    }

    #[test]
    fn amqp_queue_type_defaults_to_quorum_and_names_bad_values() {
        let c = Config::parse(Path::new("/x.toml"), GOOD).unwrap();
        assert_eq!(c.queue.queue_type, AmqpQueueType::Quorum);
        let classic = GOOD.replace("path = \"q.db\"", "path = \"q.db\"\nqueue_type = \"classic\"");
        let c = Config::parse(Path::new("/x.toml"), &classic).unwrap();
        assert_eq!(c.queue.queue_type, AmqpQueueType::Classic);
        let bad = GOOD.replace("path = \"q.db\"", "path = \"q.db\"\nqueue_type = \"fast\"");
        let (line, field, msg) = error_of(&bad);
        assert_eq!(line, Some(bad.lines().position(|l| l.contains("fast")).unwrap() + 1));
        assert_eq!(field.as_deref(), Some("queue.queue_type"));
        assert!(msg.contains("quorum") && msg.contains("classic"), "{msg}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("1y"), None);
        assert_eq!(parse_duration("NaN"), None);
    }
}
