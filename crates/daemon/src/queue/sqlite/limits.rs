//! Per-task limits on starts for the embedded queue, kept by the daemon in memory
//! (`crate::limits::Gate`): a token bucket per rate-limited task (a claim takes at most the tokens there are; the daemon wakes
//! when the next one comes), and the count of running jobs per concurrency key (a claim walks
//! the claim order and skips the jobs whose key is full, at most [`SCAN`] rows per claim).
//! Counts start at zero with each daemon: the jobs a previous one ran are back in the queue.

use std::collections::HashMap;

use rusqlite::{Transaction, params};

use super::schema::STATE_LEASED;
use crate::limits::{ConcurrencyKey, Gate};
use crate::queue::{Job, Receipt};

/// The most waiting rows one claim of a keyed task looks at: jobs behind more than this many
/// blocked ones wait for those to start.
pub(super) const SCAN: i64 = 1000;

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
