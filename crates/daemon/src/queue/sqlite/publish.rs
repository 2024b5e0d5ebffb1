//! Publishing to the embedded queue: one row per payload and receiving task, a whole batch in
//! one transaction.

use rusqlite::params;

use super::schema::STATE_READY;
use super::{SqliteQueue, now_ms};
use crate::queue::{TaskBinding, check_payload};
use crate::{Error, Result, routing};

/// The tasks a job published with `routing_key` goes to: every task with a matching pattern.
fn receivers(tasks: &[TaskBinding], routing_key: &str) -> Vec<String> {
    tasks
        .iter()
        .filter(|t| t.routing_keys.iter().any(|p| routing::matches(p, routing_key)))
        .map(|t| t.name.clone())
        .collect()
}

impl SqliteQueue {
    /// Inserts one job per payload and receiving task, all in one transaction, and returns
    /// their ids (payload by payload, task by task). Checks the key and every payload first.
    pub(super) fn insert_jobs(
        &mut self,
        routing_key: &str,
        payloads: &[&[u8]],
    ) -> Result<Vec<String>> {
        routing::validate_key(routing_key)?;
        for p in payloads {
            check_payload(p)?;
        }
        let targets = receivers(&self.tasks, routing_key);
        if targets.is_empty() {
            return Err(Error::Unroutable { routing_key: routing_key.to_owned() });
        }
        let path = self.path.clone();
        let e = |err| Error::queue("publish to", &path, err);
        let tx = self.conn.transaction().map_err(e)?;
        let mut ids = Vec::with_capacity(targets.len() * payloads.len());
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO jobs (id, task, routing_key, payload, state, published_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(e)?;
            let now = now_ms();
            for payload in payloads {
                for task in &targets {
                    let id = uuid::Uuid::now_v7().to_string();
                    stmt.execute(params![id, task, routing_key, payload, STATE_READY, now])
                        .map_err(e)?;
                    ids.push(id);
                }
            }
        }
        tx.commit().map_err(e)?;
        Ok(ids)
    }
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
