//! Per-task limits on starts for the embedded queue, kept by the daemon in memory: a token
//! bucket per rate-limited task (a claim takes at most the tokens there are; the daemon wakes
//! when the next one comes), and the count of running jobs per concurrency key (a claim walks
//! the claim order and skips the jobs whose key is full, at most [`SCAN`] rows per claim).
//! Counts start at zero with each daemon: the jobs a previous one ran are back in the queue.

use std::collections::HashMap;
use std::time::Instant;

use rusqlite::{Transaction, params};

use super::schema::STATE_LEASED;
use crate::limits::{Bucket, ConcurrencyKey, TaskLimits};
use crate::queue::{Job, Receipt};

/// The most waiting rows one claim of a keyed task looks at: jobs behind more than this many
/// blocked ones wait for those to start.
pub(super) const SCAN: i64 = 1000;

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
pub(super) struct Gate {
    tasks: HashMap<String, TaskGate>,
    /// Running jobs with a key: their task and key.
    running: HashMap<u64, (String, String)>,
}

impl Gate {
    /// Takes the tasks' limits; an unchanged task keeps its bucket and counts.
    pub(super) fn set(&mut self, limits: &[TaskLimits], now: Instant) {
        let mut old = std::mem::take(&mut self.tasks);
        for l in limits.iter().filter(|l| !l.is_none()) {
            let gate = match old.remove(&l.task) {
                Some(g) if g.limits == *l => g,
                Some(g) => TaskGate {
                    limits: l.clone(),
                    bucket: l.rate.map(|r| Bucket::new(r, now)),
                    per_key: g.per_key,
                    throttled: None,
                },
                None => TaskGate {
                    limits: l.clone(),
                    bucket: l.rate.map(|r| Bucket::new(r, now)),
                    per_key: HashMap::new(),
                    throttled: None,
                },
            };
            self.tasks.insert(l.task.clone(), gate);
        }
    }

    /// How many of `max` jobs of `task` may start now (its rate).
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

    fn running(&self, task: &str, key: &str) -> usize {
        self.tasks.get(task).and_then(|g| g.per_key.get(key)).copied().unwrap_or(0)
    }

    /// Records jobs of `task` started (tokens taken, keys counted).
    pub(super) fn started(&mut self, task: &str, jobs: &[(Receipt, Option<String>)]) {
        let Some(g) = self.tasks.get_mut(task) else { return };
        if let Some(b) = g.bucket.as_mut() {
            b.take(jobs.len());
            // Emptied: the jobs left behind start when the next token comes, a deadline.
            if b.is_empty() {
                g.throttled = Some(b.next_token(Instant::now()));
            }
        }
        for (receipt, key) in jobs {
            if let Some(key) = key {
                *g.per_key.entry(key.clone()).or_default() += 1;
                self.running.insert(receipt.0, (task.to_owned(), key.clone()));
            }
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

/// Claims up to `max` jobs of `task` in claim order, skipping those whose key already has
/// `max_per_key` running (counting the ones taken here), inside `tx`.
pub(super) fn claim_keyed(
    tx: &Transaction<'_>,
    gate: &Gate,
    task: &str,
    max: usize,
    owner: &str,
    (key_of, max_per_key): &(ConcurrencyKey, usize),
) -> rusqlite::Result<Vec<(i64, Job, Option<String>)>> {
    let mut chosen: Vec<(i64, Option<String>)> = Vec::new();
    let mut taken: HashMap<String, usize> = HashMap::new();
    {
        let mut st = tx.prepare_cached(
            "SELECT seq, headers, payload FROM jobs INDEXED BY jobs_next
             WHERE task = ?1 AND state = 0 AND not_before = 0
             ORDER BY priority DESC, seq LIMIT ?2",
        )?;
        let mut rows = st.query(params![task, SCAN])?;
        while let Some(r) = rows.next()? {
            if chosen.len() >= max {
                break;
            }
            let headers: Option<String> = r.get(1)?;
            let payload: Vec<u8> = r.get(2)?;
            let key = key_of.of(headers.as_deref(), &payload);
            if let Some(k) = &key {
                let now_running = gate.running(task, k) + taken.get(k).copied().unwrap_or(0);
                if now_running >= *max_per_key {
                    continue;
                }
                *taken.entry(k.clone()).or_default() += 1;
            }
            chosen.push((r.get(0)?, key));
        }
    }
    let mut lease = tx.prepare_cached(
        "UPDATE jobs SET state = ?1, attempts = attempts + 1, lease_owner = ?2,
             worker_pid = NULL, worker_start = NULL, worker_pgid = NULL,
             worker_boot = NULL, worker_started_ms = NULL
         WHERE seq = ?3 RETURNING id, routing_key, payload, attempts, priority",
    )?;
    let mut out = Vec::with_capacity(chosen.len());
    for (seq, key) in chosen {
        let job = lease.query_row(params![STATE_LEASED, owner, seq], |r| {
            Ok((
                r.get::<_, i64>(4)?,
                Job {
                    id: r.get(0)?,
                    task: task.to_owned(),
                    routing_key: r.get(1)?,
                    payload: r.get(2)?,
                    attempt: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(u32::MAX),
                    receipt: Receipt(seq as u64),
                },
            ))
        })?;
        out.push((job.0, job.1, key));
    }
    Ok(out)
}
