//! What `status` reports: the daemon, its task groups, their workers and queues.

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use crate::config::WorkModel;
use crate::queue::{DeadLetter, Health, QueueDepth};

/// The daemon's status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's pid.
    pub pid: i32,
    /// Seconds since it started.
    pub uptime_secs: f64,
    /// The config file it runs.
    pub config: String,
    /// Whether it runs or is stopping.
    pub state: DaemonState,
    /// Reloads (SIGHUP) applied since the daemon started.
    pub reloads: u64,
    /// Failed reloads (the old config was kept).
    pub failed_reloads: u64,
    /// The last reload error, if the last reload failed.
    pub last_reload_error: Option<String>,
    /// Whether the queue backend can move jobs now, and where it is.
    pub queue: Health,
    /// One entry per task group (including groups being drained after a reload).
    pub groups: Vec<GroupStatus>,
    /// The oldest dead letters (at most 100).
    pub dead_letters: Vec<DeadLetter>,
    /// Control connections open (this one included).
    #[serde(default)]
    pub control_connections: usize,
}

/// One task group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The `[[task]]` name (also its queue's name).
    pub name: String,
    /// `oneshot` (a process per job) or `longlived` (workers that take job after job).
    pub work_model: WorkModel,
    /// Longlived workers kept running even when idle.
    pub min_workers: usize,
    /// The most jobs of this task that run at once.
    pub max_workers: usize,
    /// `false` once removed from the config (draining).
    pub configured: bool,
    /// Its queue, as the backend reports it.
    pub queue: Option<QueueDepth>,
    /// Jobs claimed and waiting for a worker.
    pub pending: usize,
    /// Jobs running now.
    pub in_flight: usize,
    /// Jobs done since the daemon started.
    pub done: u64,
    /// Failed attempts since the daemon started.
    pub failed: u64,
    /// Jobs scheduled for a retry since the daemon started.
    pub retried: u64,
    /// Jobs dead-lettered since the daemon started.
    pub dead_lettered: u64,
    /// Jobs killed for running past their timeout.
    pub timeouts: u64,
    /// Workers that died unexpectedly (longlived) or could not start.
    pub crashes: u64,
    /// Whether restarts are being delayed by crash-loop backoff.
    pub crash_loop: bool,
    /// Paused at run time (no new jobs claimed until resumed).
    #[serde(default)]
    pub paused: bool,
    /// Its worker processes, by pid (including workers draining after a reload).
    pub workers: Vec<WorkerStatus>,
}

/// One worker process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its pid (also its process group).
    pub pid: i32,
    /// What it is doing.
    pub state: WorkerState,
    /// The id of the job it runs, if any.
    pub job: Option<String>,
    /// The jobs sent to it ahead (`prefetch`), in the order it will run them: leased and in
    /// flight, not started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ahead: Vec<String>,
    /// Seconds since it started.
    pub uptime_secs: f64,
    /// Jobs it completed successfully (longlived workers; a oneshot worker runs one).
    pub jobs_done: u64,
}

/// Whether the daemon runs or is stopping (`"running"`, `"stopping"` in JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DaemonState {
    /// Serving: claiming and running jobs.
    Running,
    /// Stopping after a stop signal: no new jobs; in-flight ones get the grace period.
    Stopping,
}

impl DaemonState {
    /// The name `status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            DaemonState::Running => "running",
            DaemonState::Stopping => "stopping",
        }
    }
}

impl fmt::Display for DaemonState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a worker process is doing (`"idle"`, `"busy"`, … in JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Waiting for a job.
    Idle,
    /// Running a job.
    Busy,
    /// Stopped by SIGSTOP (or another stop signal), and not running anything meanwhile.
    Stopped,
    /// Its stdin was closed: it finishes its job and exits, or gets TERM.
    Draining,
    /// TERM or KILL was sent; waiting for it to exit.
    Stopping,
}

impl WorkerState {
    /// The name `status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Stopped => "stopped",
            WorkerState::Draining => "draining",
            WorkerState::Stopping => "stopping",
        }
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl Status {
    /// A human-readable rendering.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "procyard-daemon pid {} {} for {:.0}s, config {}",
            self.pid, self.state, self.uptime_secs, self.config
        );
        if self.queue.ok {
            let _ = writeln!(out, "queue: {} ({})", self.queue.backend, self.queue.detail);
        } else {
            let _ = writeln!(out, "queue: {} UNHEALTHY: {}", self.queue.backend, self.queue.detail);
        }
        if let Some(e) = &self.last_reload_error {
            let _ = writeln!(out, "last reload failed (old config kept): {e}");
        }
        let _ = writeln!(
            out,
            "{:<20} {:<9} {:>7} {:>6} {:>7} {:>8} {:>7} {:>7} {:>6} {:>6}",
            "TASK",
            "MODEL",
            "WORKERS",
            "READY",
            "DELAYED",
            "INFLIGHT",
            "DONE",
            "FAILED",
            "DEAD",
            "DLQ"
        );
        for g in &self.groups {
            let q = g.queue.clone().unwrap_or_default();
            let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{:<20} {:<9} {:>7} {:>6} {:>7} {:>8} {:>7} {:>7} {:>6} {:>6}{}{}{}",
                g.name,
                match g.work_model {
                    WorkModel::Oneshot => "oneshot",
                    WorkModel::Longlived => "longlived",
                },
                format!("{}/{}", g.workers.len(), g.max_workers),
                q.ready,
                opt(q.delayed),
                g.in_flight,
                g.done,
                g.failed,
                g.dead_lettered,
                opt(q.dead),
                if g.configured { "" } else { " (removed, draining)" },
                if g.crash_loop { " (crash loop: restarts delayed)" } else { "" },
                if q.rate_limited { " (rate-limited: ready jobs wait for the rate)" } else { "" },
            );
            for w in &g.workers {
                let _ = writeln!(
                    out,
                    "    pid {:<8} {:<9} up {:>6.1}s done {:<6} {}{}",
                    w.pid,
                    w.state,
                    w.uptime_secs,
                    w.jobs_done,
                    w.job.as_deref().map(|j| format!("job {j}")).unwrap_or_default(),
                    if w.ahead.is_empty() {
                        String::new()
                    } else {
                        format!(" (+{} sent ahead)", w.ahead.len())
                    }
                );
            }
        }
        if !self.dead_letters.is_empty() {
            let _ = writeln!(
                out,
                "dead letters (requeue with `procyard-daemon requeue --config FILE ID…|--all`):"
            );
            for d in &self.dead_letters {
                let _ = writeln!(
                    out,
                    "    {} {} {} after {} attempts: {}",
                    d.id, d.task, d.routing_key, d.attempts, d.reason
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `status --json` shows the same strings as when the states were strings.
    #[test]
    fn states_serialize_as_their_names() {
        for s in [DaemonState::Running, DaemonState::Stopping] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        let all = [
            WorkerState::Idle,
            WorkerState::Busy,
            WorkerState::Stopped,
            WorkerState::Draining,
            WorkerState::Stopping,
        ];
        for s in all {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            let back: WorkerState = serde_json::from_value(s.as_str().into()).unwrap();
            assert_eq!(back, s);
        }
        assert_eq!(format!("{:<9}|", WorkerState::Idle), "idle     |");
    }
}
