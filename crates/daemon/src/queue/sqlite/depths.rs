//! Queue depths per task, for `status` and scaling: ready, delayed (a retry waiting), in
//! flight, dead, and done since the queue was made.

use std::collections::BTreeMap;

use rusqlite::params;

use super::schema::{STATE_DEAD, STATE_LEASED, STATE_READY};
use super::{SqliteQueue, now_ms};
use crate::queue::QueueDepth;
use crate::{Error, Result};

/// An empty depth: this backend knows every count, so none is `None`.
fn known_empty() -> QueueDepth {
    QueueDepth {
        delayed: Some(0),
        dead: Some(0),
        done_total: Some(0),
        published_total: Some(0),
        ..QueueDepth::default()
    }
}

/// Adds `count` rows in `state` (of which `delayed` wait for a retry delay) to `depth`.
fn add_rows(depth: &mut QueueDepth, state: i64, count: u64, delayed: u64) {
    match state {
        STATE_READY => {
            *depth.delayed.get_or_insert(0) += delayed;
            depth.ready += count.saturating_sub(delayed);
        }
        STATE_LEASED => depth.in_flight += count,
        STATE_DEAD => *depth.dead.get_or_insert(0) += count,
        _ => {}
    }
}

impl SqliteQueue {
    /// Depth per bound task (and per task with rows, bound or not).
    pub(super) fn count_depths(&mut self) -> Result<BTreeMap<String, QueueDepth>> {
        let path = self.path.clone();
        let e = |err| Error::queue("count jobs in", &path, err);
        let mut out: BTreeMap<String, QueueDepth> =
            self.tasks.iter().map(|t| (t.name.clone(), known_empty())).collect();
        // Rows ready now through `jobs_next`, delayed, leased and dead rows through
        // `jobs_aside`: never the history of done jobs.
        for sql in [
            "SELECT task, 0, COUNT(*), ?1 - ?1 FROM jobs WHERE state = 0 AND not_before = 0
             GROUP BY task",
            "SELECT task, state, COUNT(*), SUM(not_before > ?1) FROM jobs
             WHERE state = 0 AND not_before > 0 GROUP BY task",
            "SELECT task, state, COUNT(*), ?1 - ?1 FROM jobs WHERE state = 1 GROUP BY task",
            "SELECT task, state, COUNT(*), ?1 - ?1 FROM jobs WHERE state = 3 GROUP BY task",
        ] {
            let mut stmt = self.conn.prepare_cached(sql).map_err(e)?;
            let rows = stmt
                .query_map(params![now_ms()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .map_err(e)?;
            for row in rows {
                let (task, state, n, delayed) = row.map_err(e)?;
                let depth = out.entry(task).or_insert_with(known_empty);
                add_rows(depth, state, n as u64, delayed as u64);
            }
        }
        let now = std::time::Instant::now();
        for (task, depth) in out.iter_mut() {
            depth.rate_limited = depth.ready > 0 && self.gate.is_throttled(task, now);
        }
        let mut stmt =
            self.conn.prepare_cached("SELECT task, done, published FROM stats").map_err(e)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
            .map_err(e)?;
        for row in rows {
            let (task, done, published) = row.map_err(e)?;
            if let Some(d) = out.get_mut(&task) {
                d.done_total = Some(done as u64);
                d.published_total = Some(published as u64);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_add_up_by_state() {
        let mut d = known_empty();
        add_rows(&mut d, STATE_READY, 5, 2);
        add_rows(&mut d, STATE_LEASED, 3, 0);
        add_rows(&mut d, STATE_DEAD, 1, 0);
        add_rows(&mut d, 99, 7, 0);
        assert_eq!((d.ready, d.delayed, d.in_flight, d.dead), (3, Some(2), 3, Some(1)));
    }
}
