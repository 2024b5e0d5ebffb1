//! Publishing with the publish-time controls ([`PublishOptions`]): a delay or a time, a
//! priority, headers, and unique keys (plain publishes take the batch statement of
//! `claim.rs`).
//!
//! - A delay is sent as a length of time and added to the database clock (`now_ms()`), so a
//!   publisher whose clock is off does not move it; the job waits in state 5 until then.
//! - Unique keys are the store's rule, not a read-then-write: the unique index `jobs_unique
//!   (task, unique_key)` admits one row per key, and `INSERT … ON CONFLICT DO NOTHING` waits
//!   for a concurrent publisher of the same key to commit (or roll back) before deciding, so
//!   any number of publishers on any number of machines queue one job. A key stays with its
//!   job while the job waits or runs, and after it ends until `unique_until`
//!   (`--unique-for`); a publish that meets a key whose job has ended and whose window is
//!   over takes the key off that job (under its row lock) and inserts again.

use postgres::types::ToSql;
use postgres::{Client, GenericClient, Statement};

use super::{PgQueue, now_ms};
use crate::queue::{Publication, PublishOptions, check_payload};
use crate::{Error, Result, routing};

/// A batch without a unique key (ready jobs get their row in `queue`), notifying each
/// receiving task.
const PUBLISH_WITH: &str = "WITH ins AS (
        INSERT INTO jobs (id, task, routing_key, payload, state, not_before, published_ms,
                          priority, headers)
        SELECT u.id, u.task, $1, u.payload,
               CASE WHEN $6::bigint > 0 THEN 5 ELSE 0 END,
               CASE WHEN $6::bigint > 0 THEN now_ms() + $6::bigint END, now_ms(),
               $7::smallint, $8::text
        FROM unnest($2::text[], $3::text[], $4::bytea[]) AS u(id, task, payload)
        RETURNING seq, task, priority, state),
    q AS (INSERT INTO queue (seq, task, priority, state)
        SELECT seq, task, priority, 0 FROM ins WHERE state = 0)
    SELECT pg_notify($5, t) FROM (SELECT DISTINCT task FROM ins) AS x(t)";

/// One job with a unique key: a row back when it was inserted, none when the key is held.
const INSERT_UNIQUE: &str = "WITH ins AS (
        INSERT INTO jobs (id, task, routing_key, payload, state, not_before, published_ms,
                          priority, headers, unique_key, unique_until)
        VALUES ($1, $2, $3, $4, CASE WHEN $5::bigint > 0 THEN 5 ELSE 0 END,
                CASE WHEN $5::bigint > 0 THEN now_ms() + $5::bigint END, now_ms(),
                $6::smallint, $7::text, $8::text, now_ms() + $9::bigint)
        ON CONFLICT (task, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
        RETURNING seq, task, priority, state),
    q AS (INSERT INTO queue (seq, task, priority, state)
        SELECT seq, task, priority, 0 FROM ins WHERE state = 0)
    SELECT pg_notify($10, task) FROM ins";

/// The job holding a key: held while it waits or runs (0, 1, 5) or within its window.
const HOLDER: &str =
    "SELECT seq, id, state IN (0, 1, 5) OR COALESCE(unique_until > now_ms(), false)
    FROM jobs WHERE task = $1 AND unique_key = $2";

/// Takes a key off a job that no longer holds it (checked again under the row lock).
const FREE: &str = "UPDATE jobs SET unique_key = NULL
    WHERE seq = $1 AND unique_key = $2 AND state NOT IN (0, 1, 5)
      AND COALESCE(unique_until <= now_ms(), true)";

/// Runs [`INSERT_UNIQUE`] (prepared as `stmt`) for job `id` of `task`, `rest` its other
/// parameters in order: whether it inserted.
fn try_insert(
    c: &mut impl GenericClient,
    stmt: &Statement,
    id: &str,
    task: &str,
    rest: &[&(dyn ToSql + Sync); 8],
) -> std::result::Result<bool, postgres::Error> {
    let mut args: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(10);
    args.extend([&id as &(dyn ToSql + Sync), &task]);
    args.extend_from_slice(rest);
    Ok(!c.query(stmt, &args)?.is_empty())
}

/// How often a unique publish inserts again after the key's job went away under it.
const UNIQUE_TRIES: usize = 5;

impl PgQueue {
    /// Publishes `payloads` to `key` with `options` (checked): one transaction.
    pub(super) fn insert_with(
        &mut self,
        key: &str,
        payloads: &[&[u8]],
        options: &PublishOptions,
    ) -> Result<Publication> {
        routing::validate_key(key)?;
        for p in payloads {
            check_payload(p)?;
        }
        options.check()?;
        let targets = self.receivers(key);
        if targets.is_empty() {
            return Err(Error::Unroutable { routing_key: key.to_owned() });
        }
        let delay_ms = match options.not_before_ms() {
            0 => 0,
            at => (at - now_ms()).max(0),
        };
        let priority = i16::from(options.priority_or_default());
        let headers = options.headers_json();
        let channel = self.target.channel();
        let Some(unique) = options.unique.clone() else {
            let (mut ids, mut tasks, mut data) = (Vec::new(), Vec::new(), Vec::new());
            for p in payloads {
                for t in &targets {
                    ids.push(uuid::Uuid::now_v7().to_string());
                    tasks.push(t.as_str());
                    data.push(*p);
                }
            }
            self.with_stmts("publish to", &[PUBLISH_WITH], |c, s| {
                c.execute(
                    &s[0],
                    &[&key, &ids, &tasks, &data, &channel, &delay_ms, &priority, &headers],
                )
            })?;
            return Ok(Publication { ids, existing: Vec::new() });
        };
        let hold_ms = unique.hold_for.map(super::claim::ms);
        self.with_stmts("publish to", &[INSERT_UNIQUE, HOLDER, FREE], |c, s| {
            // One job for one task (the usual case): a first try on its own, one round trip;
            // it changes nothing unless it inserts, and a held key goes the long way below.
            if let ([p], [task]) = (payloads, targets.as_slice()) {
                let id = uuid::Uuid::now_v7().to_string();
                let rest: [&(dyn ToSql + Sync); 8] =
                    [&key, p, &delay_ms, &priority, &headers, &unique.key, &hold_ms, &channel];
                if try_insert(c, &s[0], &id, task, &rest)? {
                    return Ok(Publication { ids: vec![id], existing: Vec::new() });
                }
            }
            let mut tx = c.transaction()?;
            let mut out = Publication::default();
            for p in payloads {
                let rest: [&(dyn ToSql + Sync); 8] =
                    [&key, p, &delay_ms, &priority, &headers, &unique.key, &hold_ms, &channel];
                for task in &targets {
                    let mut placed = None;
                    for _ in 0..UNIQUE_TRIES {
                        let id = uuid::Uuid::now_v7().to_string();
                        if try_insert(&mut tx, &s[0], &id, task, &rest)? {
                            placed = Some((id, false));
                            break;
                        }
                        // Held, or its job ended: look (a fresh snapshot sees the holder).
                        let Some(h) = tx.query_opt(&s[1], &[task, &unique.key])? else {
                            continue; // gone meanwhile (purged): insert again
                        };
                        if h.get::<_, bool>(2) {
                            placed = Some((h.get(1), true));
                            break;
                        }
                        tx.execute(&s[2], &[&h.get::<_, i64>(0), &unique.key])?;
                    }
                    // Five rounds of the key changing hands under us: say the last holder.
                    let (id, existing) = match placed {
                        Some(p) => p,
                        None => match tx.query_opt(&s[1], &[task, &unique.key])? {
                            Some(h) => (h.get(1), true),
                            None => continue,
                        },
                    };
                    if existing {
                        out.existing.push(id.clone());
                    }
                    out.ids.push(id);
                }
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// Runs `f` on the connection with `sqls` prepared (once per connection, so each is one
    /// round trip and keeps its plan cache), noting the outcome like [`PgQueue::with`].
    fn with_stmts<T>(
        &mut self,
        action: &'static str,
        sqls: &[&'static str],
        f: impl FnOnce(&mut Client, &[Statement]) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let result = match self.conn() {
            Ok(c) => sqls
                .iter()
                .map(|sql| c.stmt(sql))
                .collect::<std::result::Result<Vec<_>, _>>()
                .and_then(|s| f(&mut c.client, &s))
                .map_err(|e| self.target.err(action, e)),
            Err(e) => Err(e),
        };
        self.note(&result);
        result
    }

    /// The bound tasks whose patterns match `key`.
    pub(super) fn receivers(&self, key: &str) -> Vec<String> {
        self.tasks
            .iter()
            .filter(|t| t.routing_keys.iter().any(|p| routing::matches(p, key)))
            .map(|t| t.name.clone())
            .collect()
    }
}
