//! The daemon's HTTP face: a live dashboard, a JSON API and Prometheus metrics, served when
//! the config has `[http] listen = "127.0.0.1:9464"`.
//!
//! # How it stays off the job loop
//!
//! The server runs on threads of its own (an axum server on a current-thread tokio runtime,
//! and a records thread with its own connection to the queue). The loop only hands it
//! snapshots: at most every [`PUBLISH_EVERY`] it builds its status from memory (no queue
//! read, no `/proc` read) and swaps it into a `watch` channel, and it bumps a few counters
//! and histograms (`LoopMetrics`, through per-task handles: no label built per job) as jobs
//! start and end. Everything else — queue depths, dead letters, job records, output — the
//! records thread reads from the queue itself (depths and dead letters as one view shared by
//! `/metrics` and every event stream, read at most once a second: see `view`); actions go
//! through the same paths as the command line (the queue, and the control socket for what
//! only the loop can do: cancel a running job, pause, resume, scale). Live updates are server-sent events, one per snapshot at most every
//! `EVENT_EVERY` (500 ms), however many jobs end in between.
//!
//! # Routes
//!
//! `GET /` (the page), `/metrics`, `/api/status`, `/api/jobs?task=&state=&limit=&offset=`,
//! `/api/jobs/ID`, `/api/jobs/ID/logs?attempt=&stream=`, `/api/jobs/ID/payload` (with
//! `show_payloads = true` only; 403 otherwise), `/api/dead?task=`, `/api/schedules`,
//! `/api/events` (SSE); `POST /api/jobs` (publish), `/api/jobs/ID/cancel`, `/api/dead/requeue`,
//! `/api/dead/purge`, `/api/tasks/NAME/pause`, `/resume`, `/scale`. Errors are JSON
//! (`{"error": {"kind", "message"}}`) with the HTTP status that fits. The JSON bodies are the
//! structs `status --json`, `job --json`, `jobs --json`, `dead --json`, `schedules --json`
//! and `publish --json` print. Security:
//!
//! - With a token (`token`/`token_file`; required off loopback) every request carries it:
//!   `Authorization: Bearer <token>`, or the cookie `GET /login?token=…` sets for a browser;
//!   anything else is 401.
//! - Without one (loopback only) the `Host` header must be a loopback name (403 otherwise:
//!   no DNS rebinding).
//! - A POST from another origin (`Origin` ≠ `Host`, or `Sec-Fetch-Site: cross-site`) is 403;
//!   a POST needs the bearer token or the page's CSRF token in `X-CSRF-Token` (403).
//! - Payloads are served only with `show_payloads = true`.

mod api;
mod auth;
mod events;
mod metrics;
mod page;
mod records;
mod view;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub(crate) use self::metrics::LoopMetrics;
use self::metrics::TaskMetrics;
use self::records::Records;
use crate::config::{Config, HttpSettings};
use crate::queue::{Job, Outcome};
use crate::status::Status;
use crate::{Error, Result};

/// The loop publishes a snapshot at most this often.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// A job's output is followed live while a page asked for it within this long.
const FOLLOW_FOR: Duration = Duration::from_secs(10);

/// A running job's output so far, as the loop copied it for a page that follows the job.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LiveOutput {
    /// Whether this daemon runs the job now.
    pub running: bool,
    /// Its stdout so far (oneshot jobs).
    pub stdout: Option<crate::queue::Captured>,
    /// Its stderr so far.
    pub stderr: Option<crate::queue::Captured>,
}

/// The jobs pages follow: when each was last asked for, and its output as last copied.
type Followed = std::sync::Mutex<HashMap<String, (Instant, LiveOutput)>>;

/// What the handlers share.
pub(crate) struct App {
    snapshots: watch::Receiver<Arc<Status>>,
    live: Arc<LoopMetrics>,
    records: Records,
    token: Option<String>,
    csrf: String,
    loopback: bool,
    show_payloads: bool,
    followed: Arc<Followed>,
    view: view::ViewCache,
}

/// The loop's side of the HTTP face.
pub(crate) struct Face {
    snapshots: watch::Sender<Arc<Status>>,
    live: Arc<LoopMetrics>,
    /// Each task's metric handles, made at the task's first job.
    tasks: HashMap<String, TaskMetrics>,
    last_publish: Instant,
    dirty: bool,
    /// When each running job's attempt started (for the duration histogram).
    starts: HashMap<String, Instant>,
    followed: Arc<Followed>,
}

impl Face {
    /// Binds `[http] listen` and starts the server threads; `status` is the first snapshot.
    /// A listen address in use, or an unreadable token file, is an error (the daemon does not
    /// start).
    pub(crate) fn start(config: &Config, settings: &HttpSettings, status: Status) -> Result<Face> {
        let token = settings.read_token()?;
        let listener = std::net::TcpListener::bind(settings.listen)
            .map_err(|e| Error::io("listen for http on", settings.listen.to_string(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("configure", settings.listen.to_string(), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("read the address of", settings.listen.to_string(), e))?;
        let (tx, rx) = watch::channel(Arc::new(status));
        let live = Arc::new(LoopMetrics::default());
        let followed = Arc::new(Followed::default());
        let app = Arc::new(App {
            followed: followed.clone(),
            snapshots: rx,
            live: live.clone(),
            records: Records::start(config.clone())?,
            token,
            csrf: auth::random_token()?,
            loopback: settings.is_loopback(),
            show_payloads: settings.show_payloads,
            view: view::ViewCache::default(),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Os { action: "start the http runtime", source })?;
        std::thread::Builder::new()
            .name("procyard-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "unable to serve http");
                            return;
                        }
                    };
                    let router = api::router(app);
                    if let Err(e) = axum::serve(listener, router).await {
                        tracing::error!(error = %e, "the http server stopped");
                    }
                })
            })
            .map_err(|source| Error::Os { action: "start the http thread", source })?;
        tracing::info!(%addr, "http dashboard and metrics at http://{addr}/");
        Ok(Face {
            snapshots: tx,
            live,
            tasks: HashMap::new(),
            last_publish: Instant::now(),
            dirty: false,
            starts: HashMap::new(),
            followed,
        })
    }

    /// Something may have changed this turn; returns whether a snapshot is due now.
    pub(crate) fn note_turn(&mut self, now: Instant) -> bool {
        self.dirty = true;
        now >= self.last_publish + PUBLISH_EVERY
    }

    /// Publishes `status` (the handlers and the event streams see it from now on).
    pub(crate) fn publish(&mut self, status: Status, now: Instant) {
        self.snapshots.send_replace(Arc::new(status));
        self.last_publish = now;
        self.dirty = false;
    }

    /// Copies the output of the jobs pages follow (`output(id)`: `None` when not running
    /// here). Never waits: if a handler holds the lock, this turn skips it.
    pub(crate) fn copy_followed(&self, now: Instant, output: impl Fn(&str) -> Option<LiveOutput>) {
        let Ok(mut followed) = self.followed.try_lock() else { return };
        followed.retain(|_, (asked, _)| now.duration_since(*asked) < FOLLOW_FOR);
        for (id, (_, live)) in followed.iter_mut() {
            *live = output(id).unwrap_or_default();
        }
    }

    /// When the loop must wake to publish what changed since the last snapshot.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.dirty.then_some(self.last_publish + PUBLISH_EVERY)
    }

    /// The metric handles of `task`.
    fn task(&mut self, task: &str) -> &TaskMetrics {
        if !self.tasks.contains_key(task) {
            self.tasks.insert(task.to_owned(), self.live.task(task));
        }
        &self.tasks[task]
    }

    /// Jobs were claimed for `task`.
    pub(crate) fn on_claimed(&mut self, task: &str, jobs: &[Job]) {
        let first = jobs.iter().filter(|j| j.attempt <= 1).count() as u64;
        if first > 0 {
            self.task(task).claimed(first);
        }
    }

    /// `job`'s attempt started.
    pub(crate) fn on_started(&mut self, job: &Job) {
        let latency = (job.attempt <= 1).then(|| published_ms(&job.id)).flatten().map(|ms| {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            (now_ms - ms) as f64 / 1000.0
        });
        self.task(&job.task).started(latency);
        self.starts.insert(job.id.clone(), Instant::now());
    }

    /// `job` was completed with `outcome` (after an attempt, or without one).
    pub(crate) fn on_completed(&mut self, job: &Job, outcome: &Outcome) {
        if let Some(t) = self.starts.remove(&job.id) {
            let seconds = t.elapsed().as_secs_f64();
            self.task(&job.task).ran(seconds);
        }
        if matches!(outcome, Outcome::Cancelled { .. }) {
            self.task(&job.task).cancelled();
        }
    }
}

/// When a job was published, from its id (a UUID v7 carries its creation time in ms).
fn published_ms(id: &str) -> Option<i64> {
    let uuid = uuid::Uuid::try_parse(id).ok()?;
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    Some(secs as i64 * 1000 + i64::from(nanos / 1_000_000))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_v7_id_tells_when_it_was_published() {
        let before =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
                as i64;
        let id = uuid::Uuid::now_v7().to_string();
        let ms = super::published_ms(&id).unwrap();
        assert!((ms - before).abs() < 1000, "{ms} vs {before}");
        assert_eq!(super::published_ms("nope"), None);
    }
}
