//! Dead letters: listed oldest first, and put back with a fresh attempt count.

use rusqlite::params;

use super::SqliteQueue;
use super::schema::STATE_READY;
use crate::queue::{DeadLetter, Requeue};
use crate::{Error, Result};

impl SqliteQueue {
    /// Dead letters of `task` (or every task), oldest first, at most `limit`.
    pub(super) fn list_dead(
        &mut self,
        task: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let path = self.path.clone();
        let e = |err| Error::queue("list dead letters in", &path, err);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, task, routing_key, attempts, COALESCE(last_error, ''), LENGTH(payload)
                 FROM jobs WHERE state = 3 AND (?1 IS NULL OR task = ?1) ORDER BY seq LIMIT ?2",
            )
            .map_err(e)?;
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = stmt
            .query_map(params![task, limit], |r| {
                Ok(DeadLetter {
                    id: r.get(0)?,
                    task: r.get(1)?,
                    routing_key: r.get(2)?,
                    attempts: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(u32::MAX),
                    reason: r.get(4)?,
                    payload_len: usize::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                })
            })
            .map_err(e)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(e)
    }

    /// Makes dead letters of `task` (or every task) ready again, attempt count reset: all of
    /// them, or the ones named — all or none of those ([`Error::NoSuchJob`] for an id that
    /// names no dead letter).
    pub(super) fn requeue(&mut self, task: Option<&str>, which: &Requeue) -> Result<u64> {
        let path = self.path.clone();
        let e = |err| Error::queue("requeue dead letters in", &path, err);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e)?;
        let mut n = 0u64;
        {
            let sql = "UPDATE jobs SET state = ?1, attempts = 0, not_before = 0, finished_ms = NULL
                       WHERE state = 3 AND (?2 IS NULL OR task = ?2) AND (?3 IS NULL OR id = ?3)";
            let mut stmt = tx.prepare_cached(sql).map_err(e)?;
            match which {
                Requeue::All => {
                    let all = None::<String>;
                    n += stmt.execute(params![STATE_READY, task, all]).map_err(e)? as u64;
                }
                Requeue::Ids(ids) => {
                    for id in ids {
                        let changed = stmt.execute(params![STATE_READY, task, id]).map_err(e)?;
                        if changed == 0 {
                            return Err(Error::NoSuchJob { id: id.clone() });
                        }
                        n += changed as u64;
                    }
                }
            }
        }
        tx.commit().map_err(e)?;
        self.forget_due();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::sqlite::tests::bindings;
    use crate::queue::{OpenMode, Outcome, QueueBackend};

    /// Three dead letters of `mail`, by id, oldest first.
    fn three_dead(q: &mut SqliteQueue) -> Vec<String> {
        q.bind(&bindings()[..1]).unwrap();
        for i in 0..3 {
            q.publish("mail.a", format!("{i}").as_bytes()).unwrap();
        }
        let jobs = q.claim("mail", 3).unwrap();
        for job in &jobs {
            q.complete(job, Outcome::DeadLetter { reason: "no".into() }).unwrap();
        }
        q.flush().unwrap();
        jobs.into_iter().map(|j| j.id).collect()
    }

    /// Named ids come back and nothing else; an unknown id puts back none of the batch; no
    /// ids puts back nothing; `All` the rest.
    #[test]
    fn requeue_puts_back_what_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = SqliteQueue::open(&dir.path().join("q.db"), OpenMode::Daemon).unwrap();
        let ids = three_dead(&mut q);
        assert_eq!(q.requeue_dead(None, &Requeue::Ids(vec![ids[1].clone()])).unwrap(), 1);
        let unknown = Requeue::Ids(vec![ids[0].clone(), "no-such-id".into()]);
        assert!(matches!(
            q.requeue_dead(None, &unknown),
            Err(Error::NoSuchJob { id }) if id == "no-such-id"
        ));
        assert_eq!(q.requeue_dead(None, &Requeue::Ids(Vec::new())).unwrap(), 0);
        let left: Vec<String> =
            q.dead_letters(None, 10).unwrap().into_iter().map(|d| d.id).collect();
        assert_eq!(left, [ids[0].clone(), ids[2].clone()]);
        assert_eq!(q.requeue_dead(Some("other"), &Requeue::All).unwrap(), 0, "not its task");
        assert_eq!(q.requeue_dead(Some("mail"), &Requeue::All).unwrap(), 2);
        let again = q.claim("mail", 5).unwrap();
        assert_eq!(again.len(), 3);
        assert!(again.iter().all(|j| j.attempt == 1), "a fresh attempt count");
    }
}
