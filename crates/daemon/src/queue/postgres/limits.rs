//! Per-task limits on starts, cluster-wide: every daemon of the schema shares them.
//!
//! - `rate_limit`: one token bucket per task in `rate_buckets` (tokens, when last refilled,
//!   by the database clock), row-locked and updated in the claim's transaction, so the starts
//!   of all daemons together keep to the rate. A daemon that finds it empty sleeps until the
//!   next token is due (a deadline of its loop), then tries again.
//! - `concurrency_key` with `max_per_key`: a claim takes the task's transaction-level
//!   advisory lock (so two daemons never both count the same free slot), counts the running
//!   jobs of the keys it meets through `queue_keyed (task, limit_key) WHERE state = 1`, and
//!   walks the claim order (at most [`SCAN`] waiting rows) skipping the jobs whose key is
//!   full; a job it takes is leased with its key in `limit_key`. With `max_per_key = 1` the
//!   jobs of a key run one at a time, in claim order.
//!
//! A limited task's claim is its own transaction: the buffered outcomes are written first
//! (one transaction before it), so they are durable before the new leases, as the queue
//! contract asks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{PgQueue, claim};
use crate::Result;
use crate::limits::TaskLimits;
use crate::queue::{Job, Receipt};

/// The most waiting rows one claim of a keyed task looks at: jobs behind more than this many
/// blocked ones wait for those to start.
const SCAN: i64 = 1000;

const CANDIDATES: &str = "SELECT q.seq, j.headers, j.payload FROM queue q
    JOIN jobs j ON j.seq = q.seq
    WHERE q.task = $1 AND q.state = 0 ORDER BY q.priority DESC, q.seq LIMIT $2";

const RUNNING: &str = "SELECT limit_key, COUNT(*) FROM queue
    WHERE task = $1 AND state = 1 AND limit_key = ANY($2) GROUP BY limit_key";

/// The key is kept on the lease's row of `queue` (`queue_keyed`), where `RUNNING` counts it.
const LEASE_KEYED: &str = "WITH q AS (UPDATE queue q SET state = 1, lease_owner = $1,
            limit_key = u.key
        FROM unnest($2::bigint[], $3::text[]) AS u(seq, key)
        WHERE q.seq = u.seq AND q.state = 0 RETURNING q.seq)
    UPDATE jobs SET state = 1, attempts = attempts + 1, lease_owner = $1, worker_pid = NULL,
        worker_start = NULL, worker_pgid = NULL, worker_boot = NULL, worker_started_ms = NULL
    WHERE seq = ANY(ARRAY(SELECT seq FROM q))
    RETURNING seq, id, routing_key, payload, attempts, priority";

/// The daemon's limits, with when each throttled task gets its next token.
#[derive(Debug, Default)]
pub(super) struct Limits {
    tasks: HashMap<String, TaskLimits>,
    throttled: HashMap<String, Instant>,
}

impl Limits {
    pub(super) fn set(&mut self, limits: &[TaskLimits]) {
        self.tasks =
            limits.iter().filter(|l| !l.is_none()).map(|l| (l.task.clone(), l.clone())).collect();
        self.throttled.retain(|t, _| self.tasks.contains_key(t));
    }

    pub(super) fn of(&self, task: &str) -> Option<&TaskLimits> {
        self.tasks.get(task)
    }

    /// When the earliest throttled task gets its next token, if after `now`.
    pub(super) fn next_wake(&mut self, now: Instant) -> Option<Instant> {
        self.throttled.retain(|_, t| *t > now);
        self.throttled.values().min().copied()
    }

    pub(super) fn is_throttled(&self, task: &str, now: Instant) -> bool {
        self.throttled.get(task).is_some_and(|t| *t > now)
    }
}

/// The key of `task`'s advisory lock for keyed claims (one-key form: apart from the
/// daemons' two-key locks).
fn claim_lock(schema: &str, task: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "procyard-limit:".bytes().chain(schema.bytes()).chain([0]).chain(task.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

impl PgQueue {
    /// Claims up to `max` jobs of the limited `task` (see the module docs).
    pub(super) fn claim_limited(&mut self, task: &str, max: usize) -> Result<Vec<Job>> {
        let Some(limits) = self.limits.of(task).cloned() else { return Ok(Vec::new()) };
        if !self.buffers.is_empty() || self.unsure_claim {
            self.write(None)?;
        }
        let owner = self.owner();
        let lock = claim_lock(&self.target.schema, task);
        let result = self.with("claim jobs from", |c| {
            let mut tx = c.transaction()?;
            let mut allowed = max as i64;
            let mut bucket = None;
            if let Some(rate) = limits.rate {
                let cap = f64::from(rate.count);
                let per_ms = cap / rate.per.as_millis().max(1) as f64;
                tx.execute(
                    "INSERT INTO rate_buckets (task, tokens, at_ms) VALUES ($1, $2, now_ms())
                     ON CONFLICT (task) DO NOTHING",
                    &[&task, &cap],
                )?;
                let r = tx.query_one(
                    "SELECT tokens, at_ms, now_ms() FROM rate_buckets WHERE task = $1 FOR UPDATE",
                    &[&task],
                )?;
                let (tokens, at, now): (f64, i64, i64) = (r.get(0), r.get(1), r.get(2));
                let tokens = (tokens + (now - at).max(0) as f64 * per_ms).min(cap);
                allowed = allowed.min(tokens.floor().max(0.0) as i64);
                bucket = Some((tokens, per_ms));
            }
            let rows = if allowed == 0 {
                Vec::new()
            } else if let Some(key_of) = &limits.key {
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])?;
                let waiting = tx.query(CANDIDATES, &[&task, &SCAN])?;
                let keyed: Vec<(i64, Option<String>)> = waiting
                    .iter()
                    .map(|r| {
                        let headers: Option<String> = r.get(1);
                        (r.get(0), key_of.of(headers.as_deref(), r.get(2)))
                    })
                    .collect();
                let mut keys: Vec<&str> = keyed.iter().filter_map(|(_, k)| k.as_deref()).collect();
                keys.sort_unstable();
                keys.dedup();
                let mut running: HashMap<String, i64> = tx
                    .query(RUNNING, &[&task, &keys])?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                let (mut seqs, mut chosen) = (Vec::new(), Vec::new());
                for (seq, key) in keyed {
                    if seqs.len() as i64 >= allowed {
                        break;
                    }
                    if let Some(k) = &key {
                        let n = running.entry(k.clone()).or_default();
                        if *n >= limits.max_per_key as i64 {
                            continue;
                        }
                        *n += 1;
                    }
                    seqs.push(seq);
                    chosen.push(key);
                }
                tx.query(LEASE_KEYED, &[&owner, &seqs, &chosen])?
            } else {
                tx.query(claim::CLAIM, &[&owner, &task, &allowed])?
            };
            let mut wait = None;
            if let Some((tokens, per_ms)) = bucket {
                let left = tokens - rows.len() as f64;
                tx.execute(
                    "UPDATE rate_buckets SET tokens = $2, at_ms = now_ms() WHERE task = $1",
                    &[&task, &left],
                )?;
                if left < 1.0 {
                    let ms = ((1.0 - left) / per_ms).ceil().max(1.0);
                    wait = Some(Duration::from_millis(ms as u64));
                }
            }
            tx.commit()?;
            Ok((rows, wait))
        });
        let (mut rows, wait) = match result {
            Ok(r) => r,
            Err(e) => {
                // A claim whose commit was not confirmed may have taken jobs all the same.
                self.unsure_claim = true;
                return Err(e);
            }
        };
        match wait {
            Some(w) => self.limits.throttled.insert(task.to_owned(), Instant::now() + w),
            None => self.limits.throttled.remove(task),
        };
        rows.sort_by_key(|r| (std::cmp::Reverse(r.get::<_, i16>(5)), r.get::<_, i64>(0)));
        let jobs: Vec<Job> = rows
            .iter()
            .map(|r| Job {
                id: r.get(1),
                task: task.to_owned(),
                routing_key: r.get(2),
                payload: r.get(3),
                attempt: u32::try_from(r.get::<_, i32>(4)).unwrap_or(0),
                receipt: Receipt(r.get::<_, i64>(0) as u64),
            })
            .collect();
        for j in &jobs {
            self.leases.insert(j.receipt.0 as i64, owner);
        }
        Ok(jobs)
    }
}
