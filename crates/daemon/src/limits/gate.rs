//! The start limits of every task one daemon runs, with their state: a token bucket per
//! rate-limited task and the count of running jobs per concurrency key. Shared by the
//! embedded queue (whose daemon is the only one) and RabbitMQ (where each daemon holds its
//! own, so the limits hold per daemon). Jobs are named by their receipt's number.

use std::collections::HashMap;
use std::time::Instant;

use super::{Bucket, ConcurrencyKey, TaskLimits};

#[derive(Debug)]
struct TaskGate {
    limits: TaskLimits,
    bucket: Option<Bucket>,
    per_key: HashMap<String, usize>,
    /// The bucket ran dry: the instant of its next token.
    throttled: Option<Instant>,
}

/// The limits of every task, with their state.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    tasks: HashMap<String, TaskGate>,
    /// Running jobs with a key, by receipt: their task and key.
    running: HashMap<u64, (String, String)>,
}

impl Gate {
    /// Takes the tasks' limits; an unchanged task keeps its bucket, every task its counts.
    pub(crate) fn set(&mut self, limits: &[TaskLimits], now: Instant) {
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
    pub(crate) fn allowed(&mut self, task: &str, max: usize, now: Instant) -> usize {
        let Some(g) = self.tasks.get_mut(task) else { return max };
        let Some(bucket) = g.bucket.as_mut() else { return max };
        let n = bucket.available(max, now);
        g.throttled = (n == 0).then(|| bucket.next_token(now));
        n
    }

    /// The key source and `max_per_key` of `task`, if its concurrency is limited.
    pub(crate) fn keyed(&self, task: &str) -> Option<(ConcurrencyKey, usize)> {
        let g = self.tasks.get(task)?;
        Some((g.limits.key.clone()?, g.limits.max_per_key))
    }

    /// How many jobs of `key` of `task` run now.
    pub(crate) fn running(&self, task: &str, key: &str) -> usize {
        self.tasks.get(task).and_then(|g| g.per_key.get(key)).copied().unwrap_or(0)
    }

    /// Jobs of `task` started (receipt and key, if any): tokens taken, keys counted.
    pub(crate) fn started(&mut self, task: &str, jobs: &[(u64, Option<String>)], now: Instant) {
        let Some(g) = self.tasks.get_mut(task) else { return };
        if let Some(b) = g.bucket.as_mut() {
            b.take(jobs.len());
            // Emptied: the jobs left behind start when the next token comes, a deadline.
            if b.is_empty() {
                g.throttled = Some(b.next_token(now));
            }
        }
        for (receipt, key) in jobs {
            if let Some(key) = key {
                *g.per_key.entry(key.clone()).or_default() += 1;
                self.running.insert(*receipt, (task.to_owned(), key.clone()));
            }
        }
    }

    /// A job ended (any outcome): its key has one running fewer.
    pub(crate) fn ended(&mut self, receipt: u64) {
        if let Some((task, key)) = self.running.remove(&receipt)
            && let Some(n) = self.tasks.get_mut(&task).and_then(|g| g.per_key.get_mut(&key))
        {
            *n = n.saturating_sub(1);
        }
    }

    /// When a rate-limited task gets its next token, if one waits for it after `now`.
    pub(crate) fn next_wake(&mut self, now: Instant) -> Option<Instant> {
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
    pub(crate) fn is_throttled(&self, task: &str, now: Instant) -> bool {
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
        g.started("t", &[(1, None), (2, None)], t0);
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
        g.started("t", &[(7, Some("acme".into()))], t0);
        assert_eq!(g.running("t", "acme"), 1);
        g.set(&[limits(None, Some("header:tenant"), 2)], t0);
        assert_eq!(g.running("t", "acme"), 1, "a changed limit keeps the counts");
        g.ended(7);
        assert_eq!(g.running("t", "acme"), 0);
        g.ended(7);
        assert_eq!(g.running("t", "acme"), 0);
    }
}
