//! A task group: its config, the jobs it claimed and its counters.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::worker::Worker;
use crate::config::TaskConfig;
use crate::queue::Job;

/// First restart delay after a crash; doubles per consecutive crash.
const CRASH_BACKOFF: Duration = Duration::from_millis(100);
/// Largest restart delay.
const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(30);

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
    pub crash_streak: u32,
    pub next_spawn: Option<Instant>,
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
            next_spawn: None,
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
        let delay = crash_delay(self.crash_streak);
        self.next_spawn = Some(now + delay);
        if self.crash_streak >= 5 {
            tracing::warn!(task = %self.cfg.name, crashes = self.crash_streak, delay_ms = delay.as_millis() as u64, "crash loop: delaying restarts");
        }
    }
}

/// The restart delay after `streak` consecutive crashes.
pub(crate) fn crash_delay(streak: u32) -> Duration {
    let shift = streak.saturating_sub(1).min(20);
    CRASH_BACKOFF.saturating_mul(1 << shift).min(CRASH_BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_delay_grows_and_caps() {
        assert_eq!(crash_delay(1), Duration::from_millis(100));
        assert_eq!(crash_delay(2), Duration::from_millis(200));
        assert_eq!(crash_delay(4), Duration::from_millis(800));
        assert_eq!(crash_delay(50), CRASH_BACKOFF_MAX);
    }
}
