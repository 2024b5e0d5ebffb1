//! Validation of the raw TOML: every field checked and resolved, each error naming the file,
//! the line and the field (`task[2].max_workers`).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use procyard_core::parse_duration;
use toml::Spanned;

use super::{
    Config, DEFAULT_PREFETCH, DaemonSettings, DurationValue, RawConfig, TaskConfig, WorkModel,
    line_of, runnable,
};
use crate::queue::{BackendKind, QueueConfig, Retention};
use crate::{Error, Result, routing};

/// Turns the raw TOML into a [`Config`], with errors that name the file, line and field.
pub(super) struct Validator<'a> {
    /// The config file (relative paths resolve against its directory).
    pub(super) path: &'a Path,
    /// Its text, for line numbers.
    pub(super) text: &'a str,
    /// Also check the machine (programs, directories, the socket path).
    pub(super) runnable: bool,
}

impl Validator<'_> {
    pub(super) fn err(
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

    pub(super) fn duration(
        &self,
        v: &Option<Spanned<DurationValue>>,
        field: String,
        default: Duration,
    ) -> Result<Duration> {
        let Some(v) = v else { return Ok(default) };
        let parsed = match v.get_ref() {
            DurationValue::Int(i) if *i >= 0 => Some(Duration::from_secs(*i as u64)),
            DurationValue::Float(f) => parse_duration(&f.to_string()).ok(),
            DurationValue::Text(t) => parse_duration(t).ok(),
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

    pub(super) fn count(
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

    pub(super) fn validate(&self, raw: RawConfig) -> Result<Config> {
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
            && backend != BackendKind::Postgres
            && !(u.get_ref().starts_with("amqp://") || u.get_ref().starts_with("amqps://"))
        {
            return Err(self.err(
                Some(u.span()),
                "queue.url",
                "must start with amqp:// or amqps://",
            ));
        }
        let schema =
            crate::queue::postgres::check_config(backend, &raw.queue.url, &raw.queue.schema)
                .map_err(|(span, field, message)| self.err(span, field, message))?;
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
        let durability = match &raw.queue.durability {
            Some(d) if backend != BackendKind::Sqlite => {
                let why = format!(
                    "is for the sqlite backend (the {backend} backend's durability is the \
                     server's own)"
                );
                return Err(self.err(Some(d.span()), "queue.durability", &why));
            }
            Some(d) => *d.get_ref(),
            None => Default::default(),
        };
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
            None => procyard_core::runtime_dir().join("daemon.sock"),
        };
        let queue_path = match (&raw.queue.history, backend) {
            (Some(h), _)
                if h.get_ref().as_os_str().is_empty() || runnable::has_nul(h.get_ref()) =>
            {
                return Err(self.err(
                    Some(h.span()),
                    "queue.history",
                    "must be a non-empty path without NUL bytes",
                ));
            }
            (Some(h), BackendKind::Amqp) => self.resolve(h.get_ref()),
            (Some(h), _) => {
                return Err(self.err(
                    Some(h.span()),
                    "queue.history",
                    "is for the amqp backend (the sqlite queue file is its own history)",
                ));
            }
            (None, BackendKind::Amqp) => default_history(&control_socket),
            (None, _) => queue_path,
        };
        if backend == BackendKind::Amqp && queue_path == control_socket {
            return Err(self.err(
                raw.queue.history.as_ref().map(Spanned::span),
                "queue.history",
                "is the control socket's path; the history needs a path of its own",
            ));
        }
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
            retention: Retention {
                keep_done: self.duration(
                    &raw.daemon.keep_done,
                    "daemon.keep_done".into(),
                    Retention::default().keep_done,
                )?,
                keep_done_max: self.count(
                    &raw.daemon.keep_done_max,
                    "daemon.keep_done_max".into(),
                    100_000,
                    0,
                    i64::MAX,
                )? as u64,
            },
            timezone: self.timezone(&raw.daemon.timezone, "daemon.timezone")?,
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
            let prefetch =
                self.count(&t.prefetch, f("prefetch"), DEFAULT_PREFETCH, 1, 1_000)? as usize;
            if t.work_model == WorkModel::Oneshot && t.prefetch.is_some() && prefetch > 1 {
                let s = t.prefetch.as_ref().map(Spanned::span);
                return Err(self.err(
                    s,
                    f("prefetch"),
                    "oneshot tasks start one process per job; prefetch is for longlived workers",
                ));
            }
            let timeout = match &t.timeout {
                None => None,
                Some(_) => Some(self.duration(&t.timeout, f("timeout"), Duration::ZERO)?)
                    .filter(|d| !d.is_zero()),
            };
            let backoff_initial =
                self.duration(&t.backoff_initial, f("backoff_initial"), Duration::from_secs(1))?;
            let backoff_max =
                self.duration(&t.backoff_max, f("backoff_max"), Duration::from_secs(300))?;
            if backoff_max < backoff_initial {
                let s = t.backoff_max.as_ref().map(Spanned::span);
                return Err(self.err(s, f("backoff_max"), "is shorter than backoff_initial"));
            }
            let limits = self.task_limits(t, i, &name)?;
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
                prefetch: if t.work_model == WorkModel::Longlived { prefetch } else { 1 },
                timeout,
                max_attempts: self.count(&t.max_attempts, f("max_attempts"), 3, 1, 1_000_000)?
                    as u32,
                backoff_initial,
                backoff_max,
                idle_timeout: self.duration(
                    &t.idle_timeout,
                    f("idle_timeout"),
                    Duration::from_secs(60),
                )?,
                env: t.env.clone(),
                cwd,
                output_limit: self.count(
                    &t.output_limit,
                    f("output_limit"),
                    64 * 1024,
                    0,
                    64 * 1024 * 1024,
                )? as usize,
                limits,
            });
        }
        if tasks.is_empty() {
            return Err(self.err(
                None,
                "task",
                "no [[task]] is defined; the daemon would have nothing to run",
            ));
        }
        let http = super::http::validate(self.path, self.text, raw.http.as_ref())?;
        Ok(Config {
            path: self.path.to_owned(),
            daemon,
            queue: QueueConfig {
                backend,
                path: queue_path,
                url,
                exchange,
                queue_type: raw.queue.queue_type,
                events: raw.queue.events.unwrap_or(true),
                priorities: self.priorities(&raw.queue)?,
                schema,
                durability,
            },
            schedules: self.schedules(&raw.schedule, &tasks)?,
            tasks,
            http,
        })
    }
}

/// The AMQP history's default: beside the control socket, `<socket name without .sock>.history.db`.
fn default_history(socket: &Path) -> PathBuf {
    let name = socket.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".sock").unwrap_or(&name);
    socket.with_file_name(format!("{stem}.history.db"))
}
