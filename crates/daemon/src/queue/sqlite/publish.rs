//! Publishing to the embedded queue: one row per payload and receiving task, a whole batch in
//! one transaction, with the publish-time controls (delay, priority, unique key, headers).

use rusqlite::{Transaction, TransactionBehavior, params};

use super::schema::STATE_READY;
use super::{SqliteQueue, now_ms, unique};
use crate::queue::{Publication, PublishOptions, TaskBinding, check_payload};
use crate::{Error, Result, routing};

/// The tasks a job published with `routing_key` goes to: every task with a matching pattern.
pub(super) fn receivers(tasks: &[TaskBinding], routing_key: &str) -> Vec<String> {
    tasks
        .iter()
        .filter(|t| t.routing_keys.iter().any(|p| routing::matches(p, routing_key)))
        .map(|t| t.name.clone())
        .collect()
}

/// Ids for a batch of new jobs published at `published_ms`: UUIDv7s whose random part is one fresh
/// random value (the tail of one `Uuid::now_v7`) plus the job's index in the batch. A batch
/// costs one `getrandom` instead of one per job (a third of a `publish --lines` run's
/// system calls before), and its ids sort in publish order. Distinct within the batch (the
/// indexes differ in bits the version and variant do not overwrite) and, by the 74 random
/// bits, across batches and processes.
fn batch_ids(published_ms: i64) -> impl Iterator<Item = String> {
    let first = uuid::Uuid::now_v7();
    let mut tail = [0u8; 16];
    tail[6..].copy_from_slice(&first.as_bytes()[6..]);
    let base = u128::from_be_bytes(tail);
    let millis = u64::try_from(published_ms).unwrap_or(0);
    (0u128..).map(move |i| {
        let value = base.wrapping_add(i) & ((1 << 80) - 1);
        let mut random = [0u8; 10];
        random.copy_from_slice(&value.to_be_bytes()[6..]);
        let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
        // Straight into the 36 bytes, not through `Display`'s formatter (a tenth of the
        // Rust side of a `publish --lines` run before).
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        String::from(&*id.hyphenated().encode_lower(&mut text))
    })
}

impl SqliteQueue {
    /// Inserts one job per payload and receiving task, all in one transaction, and returns
    /// their ids (payload by payload, task by task). Checks the key, every payload and the
    /// options first. A held unique key gives the existing job's id instead of a new row.
    pub(super) fn insert_jobs(
        &mut self,
        routing_key: &str,
        payloads: &[&[u8]],
        options: &PublishOptions,
    ) -> Result<Publication> {
        routing::validate_key(routing_key)?;
        for p in payloads {
            check_payload(p)?;
        }
        options.check()?;
        let targets = receivers(&self.tasks, routing_key);
        if targets.is_empty() {
            return Err(Error::Unroutable { routing_key: routing_key.to_owned() });
        }
        let path = self.path.clone();
        let e = |err| Error::queue("publish to", &path, err);
        // Immediate: the write lock first, so a unique key's look-up and insert are one step
        // that no other publisher can come between.
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(e)?;
        let out = insert_rows(&tx, &targets, routing_key, payloads, options).map_err(e)?;
        tx.commit().map_err(e)?;
        if options.not_before_ms() > now_ms() {
            // A delayed job of this connection's own: the next claim looks for it.
            self.forget_due();
        }
        Ok(out)
    }
}

/// A new job's row: the columns a publish sets (the others keep their defaults).
const INSERT: &str = "INSERT INTO jobs (id, task, routing_key, payload, state, published_ms,
        not_before, priority, unique_key, unique_until, headers)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// [`INSERT`] for a job with a unique key: a key already held inserts nothing.
const INSERT_UNIQUE: &str = "INSERT INTO jobs (id, task, routing_key, payload, state, published_ms,
        not_before, priority, unique_key, unique_until, headers)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
    ON CONFLICT (task, unique_key) WHERE unique_key IS NOT NULL DO NOTHING";

/// Inserts one row per payload and task of `targets` inside `tx` (already checked), a held
/// unique key giving the existing job's id.
pub(super) fn insert_rows(
    tx: &Transaction<'_>,
    targets: &[String],
    routing_key: &str,
    payloads: &[&[u8]],
    options: &PublishOptions,
) -> rusqlite::Result<Publication> {
    let mut out = Publication {
        ids: Vec::with_capacity(targets.len() * payloads.len()),
        existing: Vec::new(),
    };
    let now = now_ms();
    let not_before = options.not_before_ms();
    // A time already past is now: the job joins the claim order at once.
    let not_before = if not_before <= now { 0 } else { not_before };
    let priority = i64::from(options.priority_or_default());
    let headers = options.headers_json();
    let unique = options.unique.as_ref();
    let unique_key = unique.map(|u| u.key.as_str());
    let unique_until = unique
        .and_then(|u| u.hold_for)
        .map(|d| now.saturating_add(d.as_millis().min(i64::MAX as u128) as i64));
    // Without a unique key the plain insert: no conflict target for SQLite to plan around.
    let mut stmt = tx.prepare_cached(if unique_key.is_some() { INSERT_UNIQUE } else { INSERT })?;
    // What every row of the batch shares is bound once (a reset statement keeps its
    // bindings); a row binds only its id, payload and task: 3 bindings a row, not 11.
    stmt.raw_bind_parameter(3, routing_key)?;
    stmt.raw_bind_parameter(5, STATE_READY)?;
    stmt.raw_bind_parameter(6, now)?;
    stmt.raw_bind_parameter(7, not_before)?;
    stmt.raw_bind_parameter(8, priority)?;
    stmt.raw_bind_parameter(9, unique_key)?;
    stmt.raw_bind_parameter(10, unique_until)?;
    stmt.raw_bind_parameter(11, &headers)?;
    let mut new_ids = batch_ids(now);
    let mut published = vec![0i64; targets.len()];
    for payload in payloads {
        stmt.raw_bind_parameter(4, payload)?;
        for (t, task) in targets.iter().enumerate() {
            stmt.raw_bind_parameter(2, task)?;
            // At most twice: a key held by an ended job whose window is over is freed, then
            // the insert is made again.
            for _ in 0..2 {
                let id = new_ids.next().unwrap_or_default();
                stmt.raw_bind_parameter(1, id.as_str())?;
                if stmt.raw_execute()? == 1 {
                    out.ids.push(id);
                    published[t] += 1;
                    break;
                }
                match unique::holder(tx, task, unique_key.unwrap_or_default(), now)? {
                    unique::Holder::Held { id } => {
                        out.existing.push(id.clone());
                        out.ids.push(id);
                        break;
                    }
                    unique::Holder::Freed => continue,
                }
            }
        }
    }
    // One statement per task and batch, in the batch's transaction (`/metrics`' count).
    let mut stats = tx.prepare_cached(
        "INSERT INTO stats (task, published) VALUES (?1, ?2)
         ON CONFLICT(task) DO UPDATE SET published = published + excluded.published",
    )?;
    for (task, n) in targets.iter().zip(published).filter(|(_, n)| *n > 0) {
        stats.execute(params![task, n])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{OpenMode, PartialPublish, QueueBackend};

    fn task(name: &str, keys: &[&str]) -> TaskBinding {
        TaskBinding {
            name: name.into(),
            routing_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            max_attempts: 3,
        }
    }

    /// A batch's ids are distinct UUIDv7s of its time, in publish order, and the next batch's
    /// differ from them.
    #[test]
    fn batch_ids_are_distinct_ordered_v7() {
        let now = now_ms();
        let ids: Vec<String> = batch_ids(now).take(10_000).collect();
        let next: Vec<String> = batch_ids(now).take(10_000).collect();
        let mut all: Vec<&String> = ids.iter().chain(&next).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 20_000, "duplicate ids");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "not in publish order");
        for id in [&ids[0], &ids[9_999]] {
            let uuid = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(uuid.get_version_num(), 7, "{id}");
            let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
            assert_eq!(secs as i64 * 1000 + i64::from(nanos / 1_000_000), now, "{id}");
        }
    }

    #[test]
    fn a_key_goes_to_every_task_whose_pattern_matches() {
        let tasks = [task("mail", &["mail.*"]), task("audit", &["#"]), task("x", &["x.#"])];
        assert_eq!(receivers(&tasks, "mail.send"), ["mail", "audit"]);
        assert_eq!(receivers(&tasks, "mail.send.now"), ["audit"]);
        assert!(receivers(&tasks[..1], "other").is_empty());
    }

    /// A batch with one bad payload queues nothing; a good one is queued whole, in order.
    #[test]
    fn a_batch_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = SqliteQueue::open(&dir.path().join("q.db"), OpenMode::Client).unwrap();
        q.bind(&[task("t", &["#"])]).unwrap();
        let too_big = vec![0u8; crate::queue::MAX_PAYLOAD + 1];
        let refused = q.publish_batch("k", &[b"a".to_vec(), too_big]).unwrap_err();
        let PartialPublish { committed, error } = *refused;
        assert!(committed.is_empty());
        assert!(matches!(error, Error::InvalidPayload { .. }), "{error:?}");
        assert_eq!(q.depths().unwrap()["t"].ready, 0);
        let ids = q.publish_batch("k", &[b"a".to_vec(), b"b".to_vec()]).unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(q.depths().unwrap()["t"].ready, 2);
    }
}
