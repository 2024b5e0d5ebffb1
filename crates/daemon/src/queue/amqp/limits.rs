//! Per-task limits on starts on RabbitMQ, held by each daemon for the jobs IT starts: a rate
//! (`rate_limit`, a token bucket) and a concurrency key (`concurrency_key`, `max_per_key`).
//!
//! What holds, honestly: both are per daemon. With N daemons a task starts up to N times its
//! `rate_limit`, and up to N × `max_per_key` jobs of one key run at once (one per daemon with
//! `max_per_key = 1`, in each daemon's arrival order). The broker has no counter that every
//! daemon could take from without a round trip per job, so nothing here claims more. A job
//! its daemon may not start yet waits in that daemon (received, unacknowledged — `ready` in
//! `status`), taking one of its prefetch places; the broker gives it to another daemon only
//! if this one dies.

use std::collections::HashMap;
use std::time::Instant;

use crate::limits::{Bucket, ConcurrencyKey, TaskLimits};
use crate::queue::Receipt;

#[derive(Debug)]
struct TaskGate {
    limits: TaskLimits,
    bucket: Option<Bucket>,
    per_key: HashMap<String, usize>,
    /// The bucket ran dry: the instant of its next token.
    throttled: Option<Instant>,
}

/// The limits of every task this daemon runs, with their state.
#[derive(Debug, Default)]
pub(super) struct Gate {
    tasks: HashMap<String, TaskGate>,
    /// Running jobs that have a key: their task and key.
    running: HashMap<u64, (String, String)>,
}

impl Gate {
    /// Takes the tasks' limits; an unchanged task keeps its bucket, every task its counts.
    pub(super) fn set(&mut self, limits: &[TaskLimits], now: Instant) {
        let mut old = std::mem::take(&mut self.tasks);
        for l in limits.iter().filter(|l| !l.is_none()) {
            let gate = match old.remove(&l.task) {
                Some(g) if g.limits == *l => g,
                other => TaskGate {
                    limits: l.clone(),
                    bucket: l.rate.map(|r| Bucket::new(r, now)),
                    per_key: other.map(|g| g.per_key).unwrap_or_default(),
                    throttled: None,
                },
            };
            self.tasks.insert(l.task.clone(), gate);
        }
    }

    /// How many of `max` jobs of `task` its rate lets start at `now`.
    pub(super) fn allowed(&mut self, task: &str, max: usize, now: Instant) -> usize {
        let Some(g) = self.tasks.get_mut(task) else { return max };
        let Some(bucket) = g.bucket.as_mut() else { return max };
        let n = bucket.available(max, now);
        g.throttled = (n == 0).then(|| bucket.next_token(now));
        n
    }

    /// The key source and `max_per_key` of `task`, if its concurrency is limited.
    pub(super) fn keyed(&self, task: &str) -> Option<(ConcurrencyKey, usize)> {
        let g = self.tasks.get(task)?;
        Some((g.limits.key.clone()?, g.limits.max_per_key))
    }

    /// How many jobs of `key` of `task` run here.
    pub(super) fn running(&self, task: &str, key: &str) -> usize {
        self.tasks.get(task).and_then(|g| g.per_key.get(key)).copied().unwrap_or(0)
    }

    /// A job of `task` (with its key, if any) started.
    pub(super) fn started(
        &mut self,
        task: &str,
        receipt: Receipt,
        key: Option<String>,
        now: Instant,
    ) {
        let Some(g) = self.tasks.get_mut(task) else { return };
        if let Some(b) = g.bucket.as_mut() {
            b.take(1);
            if b.is_empty() {
                g.throttled = Some(b.next_token(now));
            }
        }
        if let Some(key) = key {
            *g.per_key.entry(key.clone()).or_default() += 1;
            self.running.insert(receipt.0, (task.to_owned(), key));
        }
    }

    /// A job ended (any outcome): its key has one running fewer.
    pub(super) fn ended(&mut self, receipt: Receipt) {
        if let Some((task, key)) = self.running.remove(&receipt.0)
            && let Some(n) = self.tasks.get_mut(&task).and_then(|g| g.per_key.get_mut(&key))
        {
            *n = n.saturating_sub(1);
        }
    }

    /// When a rate-limited task gets its next token, if one waits for it after `now`.
    pub(super) fn next_wake(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for g in self.tasks.values_mut() {
            match g.throttled {
                Some(t) if t > now => next = Some(next.map_or(t, |n| n.min(t))),
                Some(_) => g.throttled = None,
                None => {}
            }
        }
        next
    }

    /// Whether `task` waits for its rate now.
    pub(super) fn is_throttled(&self, task: &str, now: Instant) -> bool {
        self.tasks.get(task).and_then(|g| g.throttled).is_some_and(|t| t > now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::limits::RateLimit;

    fn limits(rate: Option<&str>, key: Option<&str>, max_per_key: usize) -> TaskLimits {
        TaskLimits {
            task: "t".into(),
            rate: rate.map(|r| RateLimit::parse(r).unwrap()),
            key: key.map(|k| ConcurrencyKey::parse(k).unwrap()),
            max_per_key,
        }
    }

    #[test]
    fn a_rate_lets_its_count_start_then_waits_for_the_next_token() {
        let t0 = Instant::now();
        let mut g = Gate::default();
        g.set(&[limits(Some("2/s"), None, 1)], t0);
        assert_eq!(g.allowed("t", 5, t0), 2);
        g.started("t", Receipt(1), None, t0);
        g.started("t", Receipt(2), None, t0);
        assert_eq!(g.allowed("t", 5, t0), 0);
        assert!(g.is_throttled("t", t0));
        assert_eq!(g.next_wake(t0), Some(t0 + Duration::from_millis(500)));
        assert_eq!(g.allowed("other", 5, t0), 5, "an unlimited task");
    }

    #[test]
    fn keys_count_running_jobs_until_they_end_and_survive_a_reload() {
        let t0 = Instant::now();
        let mut g = Gate::default();
        g.set(&[limits(None, Some("header:tenant"), 1)], t0);
        assert!(g.keyed("t").is_some());
        g.started("t", Receipt(7), Some("acme".into()), t0);
        assert_eq!(g.running("t", "acme"), 1);
        g.set(&[limits(None, Some("header:tenant"), 2)], t0);
        assert_eq!(g.running("t", "acme"), 1, "a changed limit keeps the counts");
        g.ended(Receipt(7));
        assert_eq!(g.running("t", "acme"), 0);
        g.ended(Receipt(7));
        assert_eq!(g.running("t", "acme"), 0);
    }
}
