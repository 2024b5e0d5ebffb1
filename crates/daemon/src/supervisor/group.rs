//! A task group: its config, the jobs it claimed and its counters.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use procyard_core::Backoff;

use super::worker::Worker;
use crate::config::TaskConfig;
use crate::queue::Job;

/// The restart delay after consecutive crashes: 100 ms, doubling per crash, up to 30 s.
pub(crate) const CRASH_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(30));

#[derive(Debug)]
pub(crate) struct Group {
    pub cfg: TaskConfig,
    /// Bumped when a reload changes the worker process itself; older workers drain.
    pub generation: u64,
    /// `false` once removed from the config.
    pub configured: bool,
    /// Jobs claimed and not yet given to a worker.
    pub pending: VecDeque<Job>,
    /// Whether the queue may hold jobs for this group (set by pokes, completions, due
    /// retries; cleared when a claim comes back short).
    pub maybe_more: bool,
    /// Consecutive crashes (reset by a job done or a worker that lived long enough).
    pub crash_streak: u32,
    /// Longlived workers still to start in this round (see `State::reconcile`).
    pub spawn_budget: usize,
    pub next_spawn: Option<Instant>,
    /// Paused at run time: no claims until resumed (running jobs finish).
    pub paused: bool,
    pub done: u64,
    pub failed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub timeouts: u64,
    pub crashes: u64,
}

impl Group {
    pub fn new(cfg: TaskConfig) -> Group {
        Group {
            cfg,
            generation: 0,
            configured: true,
            pending: VecDeque::new(),
            maybe_more: true,
            crash_streak: 0,
            spawn_budget: 0,
            next_spawn: None,
            paused: false,
            done: 0,
            failed: 0,
            retried: 0,
            dead_lettered: 0,
            timeouts: 0,
            crashes: 0,
        }
    }

    /// Workers of the current generation that are not being stopped.
    pub fn live_workers(&self, workers: &HashMap<u64, Worker>) -> usize {
        workers
            .values()
            .filter(|w| {
                w.group == self.cfg.name && w.generation == self.generation && w.stop.is_none()
            })
            .count()
    }

    /// Whether the group would start a worker if its restart delay allowed it.
    pub fn wants_spawn(&self, workers: &HashMap<u64, Worker>) -> bool {
        self.configured
            && self.next_spawn.is_some()
            && (!self.pending.is_empty() || self.live_workers(workers) < self.cfg.min_workers)
    }

    /// A worker crashed (or could not start): delay the next start, exponentially.
    pub fn note_crash(&mut self, now: Instant) {
        self.crashes += 1;
        self.crash_streak = self.crash_streak.saturating_add(1);
        let delay = CRASH_BACKOFF.delay(self.crash_streak);
        self.next_spawn = Some(now + delay);
        if self.crash_streak >= 5 {
            tracing::warn!(task = %self.cfg.name, crashes = self.crash_streak, delay_ms = delay.as_millis() as u64, "crash loop: delaying restarts");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WorkModel;
    use crate::supervisor::testing::task;

    #[test]
    fn crash_restarts_back_off_and_cap() {
        let mut g = Group::new(task("t", WorkModel::Longlived));
        let t0 = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..12 {
            g.note_crash(t0);
            delays.push(g.next_spawn.unwrap() - t0);
        }
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[3], Duration::from_millis(800));
        assert_eq!(delays[11], Duration::from_secs(30));
        assert_eq!(g.crashes, 12);
    }
}
