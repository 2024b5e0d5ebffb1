//! [`Server`]: keep n workers running a task forever, restart the ones that die with
//! exponential backoff and a crash-loop limit, stop them with TERM → grace → KILL.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use procyard_core::{Backoff, Deadline, Pid};

use crate::{Error, Outcome, ProcessManager, Result, Task, WakeHandle};

/// How a [`Server`] runs its workers: `ServerConfig::default()` and the builder methods.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// How many workers to keep running. Default: 1.
    pub workers: usize,
    /// Wait after the first crash of a worker before restarting it; doubled at each crash in a
    /// row, up to `backoff_max`. Default: 50 ms.
    pub backoff_initial: Duration,
    /// The longest wait before a restart. Default: 10 s.
    pub backoff_max: Duration,
    /// A worker that ran at least this long before ending resets its backoff. Default: 5 s.
    pub healthy_after: Duration,
    /// A worker slot that ends more than this many times within `crash_window` is given up
    /// ([`WorkerState::Failed`]). Default: 10.
    pub crash_limit: usize,
    /// How far back ends count against `crash_limit`. Default: 60 s.
    pub crash_window: Duration,
    /// Between SIGTERM and SIGKILL when the server is dropped without
    /// [`stop`](Server::stop). Default: 5 s.
    pub grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: 1,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(10),
            healthy_after: Duration::from_secs(5),
            crash_limit: 10,
            crash_window: Duration::from_secs(60),
            grace: Duration::from_secs(5),
        }
    }
}

impl ServerConfig {
    /// Sets [`ServerConfig::workers`].
    pub fn workers(mut self, n: usize) -> ServerConfig {
        self.workers = n;
        self
    }

    /// Sets the restart backoff range ([`ServerConfig::backoff_initial`],
    /// [`ServerConfig::backoff_max`]; a `max` below `initial` is raised to it).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> ServerConfig {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }

    /// Sets [`ServerConfig::healthy_after`].
    pub fn healthy_after(mut self, after: Duration) -> ServerConfig {
        self.healthy_after = after;
        self
    }

    /// Sets [`ServerConfig::crash_limit`] and [`ServerConfig::crash_window`].
    pub fn crash_limit(mut self, limit: usize, window: Duration) -> ServerConfig {
        self.crash_limit = limit;
        self.crash_window = window;
        self
    }

    /// Sets [`ServerConfig::grace`].
    pub fn grace(mut self, grace: Duration) -> ServerConfig {
        self.grace = grace;
        self
    }

    fn backoff_policy(&self) -> Backoff {
        Backoff::new(self.backoff_initial, self.backoff_max)
    }
}

/// What one worker slot is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// A child is running.
    Running(Pid),
    /// Waiting for the backoff to pass before a restart.
    Backoff,
    /// Ended too often: no more restarts.
    Failed,
    /// The server stopped.
    Stopped,
}

/// A snapshot of a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    /// One entry per worker slot.
    pub workers: Vec<WorkerState>,
    /// Children started so far, restarts included.
    pub starts: u64,
    /// Whether the server has stopped.
    pub stopped: bool,
}

impl ServerStatus {
    /// Pids of the running workers.
    pub fn pids(&self) -> Vec<Pid> {
        self.workers
            .iter()
            .filter_map(|w| match w {
                WorkerState::Running(p) => Some(*p),
                _ => None,
            })
            .collect()
    }
}

struct Published {
    status: Mutex<ServerStatus>,
    changed: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A set of supervised workers run by a thread of its own (so worker tasks are commands or
/// registered functions: closures cannot be forked from a threaded process).
pub struct Server {
    published: Arc<Published>,
    stop_tx: mpsc::Sender<Duration>,
    drop_grace: Duration,
    waker: WakeHandle,
    thread: Option<JoinHandle<Result<()>>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("status", &self.status()).finish()
    }
}

struct Slot {
    state: WorkerState,
    started_at: Option<Instant>,
    /// Ends in a row since the slot last ran healthily (the backoff's attempt number).
    failures: u32,
    restart_at: Option<Deadline>,
    ends: Vec<Instant>,
}

impl Server {
    /// Starts `config.workers` workers, each running `make_task(worker_index)`, and keeps them
    /// running until [`stop`](Server::stop).
    pub fn start<F>(config: ServerConfig, make_task: F) -> Result<Server>
    where
        F: Fn(usize) -> Task + Send + 'static,
    {
        let manager = ProcessManager::new()?;
        let waker = manager.waker();
        let published = Arc::new(Published {
            status: Mutex::new(ServerStatus {
                workers: vec![WorkerState::Backoff; config.workers],
                starts: 0,
                stopped: false,
            }),
            changed: Condvar::new(),
        });
        let (stop_tx, stop_rx) = mpsc::channel();
        let drop_grace = config.grace;
        let thread_published = published.clone();
        let thread = std::thread::Builder::new()
            .name("procyard-procmgr-server".into())
            .spawn(move || supervise(manager, config, make_task, stop_rx, &thread_published))
            .map_err(|_| Error::ServerThread { what: "could not be started" })?;
        Ok(Server { published, stop_tx, drop_grace, waker, thread: Some(thread) })
    }

    /// The current status.
    pub fn status(&self) -> ServerStatus {
        lock(&self.published.status).clone()
    }

    /// Waits until `condition` holds for the status, or `timeout` passes; whether it held.
    pub fn wait_until(&self, timeout: Duration, condition: impl Fn(&ServerStatus) -> bool) -> bool {
        let deadline = Deadline::after(timeout);
        let mut status = lock(&self.published.status);
        loop {
            if condition(&status) {
                return true;
            }
            if deadline.is_expired() {
                return false;
            }
            status = self
                .published
                .changed
                .wait_timeout(status, deadline.remaining())
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops every worker (TERM to its group, KILL to those still running after `grace`) and
    /// waits for them.
    pub fn stop(mut self, grace: Duration) -> Result<()> {
        self.stop_inner(grace)
    }

    fn stop_inner(&mut self, grace: Duration) -> Result<()> {
        let Some(thread) = self.thread.take() else { return Ok(()) };
        let _ = self.stop_tx.send(grace);
        self.waker.wakeup();
        thread.join().map_err(|_| Error::ServerThread { what: "panicked" })?
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner(self.drop_grace) {
            tracing::warn!("procyard-procmgr: stopping a server: {}", procyard_core::Report(&e));
        }
    }
}

fn supervise<F>(
    mut manager: ProcessManager,
    config: ServerConfig,
    make_task: F,
    stop_rx: mpsc::Receiver<Duration>,
    published: &Published,
) -> Result<()>
where
    F: Fn(usize) -> Task,
{
    let mut slots: Vec<Slot> = (0..config.workers)
        .map(|_| Slot {
            state: WorkerState::Backoff,
            started_at: None,
            failures: 0,
            restart_at: None,
            ends: Vec::new(),
        })
        .collect();
    let (ended_tx, ended_rx) = mpsc::channel::<(usize, Outcome)>();
    let mut starts = 0u64;
    let grace = loop {
        if let Ok(grace) = stop_rx.try_recv() {
            break grace;
        }
        for (index, slot) in slots.iter_mut().enumerate() {
            let due = slot.restart_at.is_none_or(Deadline::is_expired);
            if slot.state != WorkerState::Backoff || !due {
                continue;
            }
            let tx = ended_tx.clone();
            match manager.create_process(make_task(index), move |o| {
                let _ = tx.send((index, o));
            }) {
                Ok(id) => {
                    let pid = manager.pid(id);
                    starts += 1;
                    slot.started_at = Some(Instant::now());
                    slot.restart_at = None;
                    if let Some(pid) = pid {
                        slot.state = WorkerState::Running(pid);
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "procyard-procmgr: server worker {index}: {}",
                        procyard_core::Report(&e)
                    );
                    schedule_restart(slot, &config, Instant::now());
                }
            }
        }
        publish(published, &slots, starts, false);
        let timeout = Deadline::poll_timeout(slots.iter().filter_map(|s| s.restart_at));
        manager.step_timeout(timeout)?;
        for (index, outcome) in ended_rx.try_iter() {
            let slot = &mut slots[index];
            tracing::info!("procyard-procmgr: server worker {index} ended: {outcome}");
            let now = Instant::now();
            if slot.started_at.is_some_and(|t| now.duration_since(t) >= config.healthy_after) {
                slot.failures = 0;
            }
            schedule_restart(slot, &config, now);
        }
    };
    let result = manager.teardown(grace);
    for slot in &mut slots {
        slot.state = WorkerState::Stopped;
    }
    publish(published, &slots, starts, true);
    result
}

fn schedule_restart(slot: &mut Slot, config: &ServerConfig, now: Instant) {
    slot.ends.retain(|t| now.duration_since(*t) < config.crash_window);
    slot.ends.push(now);
    slot.started_at = None;
    if slot.ends.len() > config.crash_limit {
        slot.state = WorkerState::Failed;
        slot.restart_at = None;
        return;
    }
    slot.state = WorkerState::Backoff;
    slot.failures = slot.failures.saturating_add(1);
    slot.restart_at = Some(Deadline::after(config.backoff_policy().delay(slot.failures)));
}

fn publish(published: &Published, slots: &[Slot], starts: u64, stopped: bool) {
    let mut status = lock(&published.status);
    let workers: Vec<WorkerState> = slots.iter().map(|s| s.state).collect();
    if status.workers != workers || status.starts != starts || status.stopped != stopped {
        *status = ServerStatus { workers, starts, stopped };
        published.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_crash_limit_fails_the_slot() {
        let config = ServerConfig::default()
            .backoff(Duration::from_millis(10), Duration::from_millis(40))
            .crash_limit(3, Duration::from_secs(60));
        let mut slot = Slot {
            state: WorkerState::Backoff,
            started_at: None,
            failures: 0,
            restart_at: None,
            ends: Vec::new(),
        };
        let now = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..3 {
            schedule_restart(&mut slot, &config, now);
            assert_eq!(slot.state, WorkerState::Backoff);
            waits.push(config.backoff_policy().delay(slot.failures));
        }
        assert_eq!(
            waits,
            [Duration::from_millis(10), Duration::from_millis(20), Duration::from_millis(40)]
        );
        schedule_restart(&mut slot, &config, now);
        assert_eq!(slot.state, WorkerState::Failed);
    }
}
