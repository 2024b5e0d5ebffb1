//! Publishing and claiming: the statements a publish and a claim are, and the error naming
//! around them. The daemon's buffered writes (outcomes, attempts, holders), which carry the
//! claim in the same statement, are in `write.rs`.

use std::time::Duration;

use super::PgQueue;
use crate::queue::check_payload;
use crate::{Error, Result, routing};

/// Inserts a batch and notifies each receiving task, in one statement (one round trip; its
/// own transaction).
const PUBLISH: &str = "WITH ins AS (
        INSERT INTO jobs (id, task, routing_key, payload, state, not_before, published_ms)
        SELECT u.id, u.task, $1, u.payload, 0, now_ms(), now_ms()
        FROM unnest($2::text[], $3::text[], $4::bytea[]) AS u(id, task, payload)
        RETURNING task)
    SELECT pg_notify($5, t) FROM (SELECT DISTINCT task FROM ins) AS x(t)";

/// Takes up to `$3` ready jobs of task `$2` for daemon `$1`. `write.rs` embeds it verbatim in
/// its one-statement write (same three parameters). `seq = ANY(ARRAY(…))` rather than
/// `seq IN (…)`: the rows are then fetched by primary key whatever the plan, where a generic
/// plan of `IN` (which assumes `LIMIT $3` takes a tenth of the table) hashes the whole table.
pub(super) const CLAIM: &str =
    "UPDATE jobs SET state = 1, attempts = attempts + 1, lease_owner = $1,
        worker_pid = NULL, worker_start = NULL, worker_pgid = NULL, worker_boot = NULL,
        worker_started_ms = NULL
    WHERE seq = ANY(ARRAY(SELECT seq FROM jobs
                          WHERE task = $2 AND state = 0 AND not_before <= now_ms()
                          ORDER BY not_before, seq LIMIT $3 FOR UPDATE SKIP LOCKED))
    RETURNING seq, id, routing_key, payload, attempts";

/// Puts back the jobs leased to this daemon (`$1`) that it does not know it holds (not in
/// `$2`): after a claim whose commit was not confirmed (the connection dropped during it),
/// the server may have committed the claim that the daemon never saw.
pub(super) const RELEASE_UNSEEN: &str =
    "UPDATE jobs SET state = 0, attempts = GREATEST(attempts - 1, 0),
        lease_owner = NULL, not_before = now_ms()
    WHERE state = 1 AND lease_owner = $1 AND NOT (seq = ANY($2))";

impl PgQueue {
    /// Inserts one job per payload and receiving task in one transaction and notifies.
    pub(super) fn insert_jobs(&mut self, key: &str, payloads: &[&[u8]]) -> Result<Vec<String>> {
        routing::validate_key(key)?;
        for p in payloads {
            check_payload(p)?;
        }
        let targets: Vec<String> = self
            .tasks
            .iter()
            .filter(|t| t.routing_keys.iter().any(|p| routing::matches(p, key)))
            .map(|t| t.name.clone())
            .collect();
        if targets.is_empty() {
            return Err(Error::Unroutable { routing_key: key.to_owned() });
        }
        let (mut ids, mut tasks, mut data) = (Vec::new(), Vec::new(), Vec::new());
        for p in payloads {
            for t in &targets {
                ids.push(uuid::Uuid::now_v7().to_string());
                tasks.push(t.as_str());
                data.push(*p);
            }
        }
        let channel = self.target.channel();
        let result = (|| {
            let conn = self.conn()?;
            let e = |err| Error::Postgres {
                action: "publish to",
                target: String::new(),
                source: Box::new(err),
            };
            let publish = conn.stmt(PUBLISH).map_err(e)?;
            conn.client.execute(&publish, &[&key, &ids, &tasks, &data, &channel]).map_err(e)?;
            Ok(())
        })();
        let result = result.map_err(|e| self.named(e, "publish to"));
        self.note(&result);
        result.map(|()| ids)
    }

    /// Gives an error built without the target (inside a borrow of the connection) its name.
    pub(super) fn named(&self, e: Error, action: &'static str) -> Error {
        match e {
            Error::Postgres { target, source, .. } if target.is_empty() => {
                self.target.err(action, source)
            }
            other => other,
        }
    }
}

/// A duration in whole ms for the database.
pub(super) fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}
