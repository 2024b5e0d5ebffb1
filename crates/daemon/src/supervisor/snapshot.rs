//! The status snapshot: what `status` shows, built from the state and what the shell read from
//! the queue and the processes. Pure.

use std::collections::BTreeMap;
use std::time::Instant;

use super::state::{Phase, State};
use super::worker::Worker;
use crate::queue::{DeadLetter, Health, QueueDepth};
use crate::status::{DaemonState, GroupStatus, Status, WorkerStatus};

/// What the shell read for a snapshot.
#[derive(Debug)]
pub(crate) struct Observed {
    /// The daemon's pid.
    pub pid: i32,
    /// Queue depths per task.
    pub depths: BTreeMap<String, QueueDepth>,
    /// The queue backend's health.
    pub health: Health,
    /// The oldest dead letters.
    pub dead_letters: Vec<DeadLetter>,
    /// Control connections open.
    pub control_connections: usize,
}

/// The status at `now`; `stopped` tells whether a worker's process is stopped (SIGSTOP).
pub(crate) fn snapshot(
    state: &State,
    observed: Observed,
    now: Instant,
    stopped: impl Fn(&Worker) -> bool,
) -> Status {
    let groups = state
        .groups
        .values()
        .map(|g| {
            let mut workers: Vec<WorkerStatus> = state
                .workers
                .values()
                .filter(|w| w.group == g.cfg.name)
                .map(|w| WorkerStatus {
                    pid: w.pid.unwrap_or(0),
                    state: w.state(stopped(w)),
                    job: w.job.as_ref().map(|r| r.job.id.clone()),
                    ahead: w.ahead.iter().map(|r| r.job.id.clone()).collect(),
                    uptime_secs: now.duration_since(w.started).as_secs_f64(),
                    jobs_done: w.jobs_done,
                })
                .collect();
            workers.sort_by_key(|w| w.pid);
            GroupStatus {
                name: g.cfg.name.clone(),
                work_model: g.cfg.work_model,
                min_workers: g.cfg.min_workers,
                max_workers: g.cfg.max_workers,
                configured: g.configured,
                queue: observed.depths.get(&g.cfg.name).cloned(),
                pending: g.pending.len(),
                in_flight: workers
                    .iter()
                    .map(|w| usize::from(w.job.is_some()) + w.ahead.len())
                    .sum(),
                done: g.done,
                failed: g.failed,
                retried: g.retried,
                dead_lettered: g.dead_lettered,
                timeouts: g.timeouts,
                crashes: g.crashes,
                crash_loop: g.next_spawn.is_some_and(|t| t > now),
                paused: g.paused,
                workers,
            }
        })
        .collect();
    Status {
        pid: observed.pid,
        uptime_secs: now.duration_since(state.started).as_secs_f64(),
        config: state.config.path.display().to_string(),
        state: match state.phase {
            Phase::Running => DaemonState::Running,
            Phase::Stopping { .. } => DaemonState::Stopping,
        },
        reloads: state.reloads,
        failed_reloads: state.failed_reloads,
        last_reload_error: state.last_reload_error.clone(),
        queue: observed.health,
        groups,
        dead_letters: observed.dead_letters,
        control_connections: observed.control_connections,
    }
}
