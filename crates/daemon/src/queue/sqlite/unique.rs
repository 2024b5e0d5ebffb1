//! Unique keys: the `jobs_unique` index (task, key) admits one row per key, so two publishers
//! can never both queue a job with the same key. A key stays with its job while the job waits
//! or runs, and after it ends until its `unique_until` (from `--unique-for`); a publish that
//! meets a key whose job has ended and whose window is over frees it (in the same write
//! transaction) and queues the new job.

use rusqlite::{OptionalExtension, Transaction, params};

use super::schema::{STATE_LEASED, STATE_READY};

/// Who holds a unique key a publish ran into.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Holder {
    /// A job that waits, runs, or ended within its window: its id.
    Held {
        /// The existing job.
        id: String,
    },
    /// Nobody any more: the key was taken off an ended job; insert again.
    Freed,
}

/// The holder of `key` in `task` at `now`, freeing the key when its job has ended and its
/// window is over.
pub(super) fn holder(
    tx: &Transaction<'_>,
    task: &str,
    key: &str,
    now: i64,
) -> rusqlite::Result<Holder> {
    let row: Option<(i64, String, i64, Option<i64>)> = tx
        .prepare_cached(
            "SELECT seq, id, state, unique_until FROM jobs INDEXED BY jobs_unique
             WHERE task = ?1 AND unique_key = ?2",
        )?
        .query_row(params![task, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((seq, id, state, until)) = row else {
        return Ok(Holder::Freed);
    };
    let active = state == STATE_READY || state == STATE_LEASED;
    if active || until.is_some_and(|u| u > now) {
        return Ok(Holder::Held { id });
    }
    tx.prepare_cached("UPDATE jobs SET unique_key = NULL WHERE seq = ?1")?.execute([seq])?;
    Ok(Holder::Freed)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::queue::sqlite::SqliteQueue;
    use crate::queue::sqlite::tests::bound;
    use crate::queue::{OpenMode, Outcome, PublishOptions, QueueBackend};

    fn publish(q: &mut SqliteQueue, opts: &PublishOptions) -> (String, bool) {
        let p = q.publish_with("mail.a", &[b"x".to_vec()], opts).unwrap();
        (p.ids[0].clone(), p.is_duplicate())
    }

    /// A key is held while its job waits and runs; once the job is done, the next publish
    /// queues a new job; with a window, it is held until the window is over.
    #[test]
    fn a_key_is_held_while_the_job_lives_and_within_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let mut q = bound(&path, OpenMode::Daemon);
        q.bind(&crate::queue::sqlite::tests::bindings()[..1]).unwrap();
        let opts = PublishOptions::new().unique("k");
        let (first, dup) = publish(&mut q, &opts);
        assert!(!dup);
        assert_eq!(publish(&mut q, &opts), (first.clone(), true), "held while ready");
        let other = publish(&mut q, &PublishOptions::new().unique("other"));
        assert!(!other.1 && other.0 != first, "another key is another job");
        let job = q.claim("mail", 1).unwrap().remove(0);
        assert_eq!(job.id, first);
        assert_eq!(publish(&mut q, &opts), (first.clone(), true), "held while running");
        q.complete(&job, Outcome::Done).unwrap();
        q.flush().unwrap();
        let (second, dup) = publish(&mut q, &opts);
        assert!(!dup && second != first, "a done job lets the key go");

        let windowed = PublishOptions::new().unique("w").unique_for(Duration::from_secs(3600));
        let (w, _) = publish(&mut q, &windowed);
        q.cancel_waiting(&w).unwrap();
        assert_eq!(publish(&mut q, &windowed), (w.clone(), true), "held within the window");
        let short = PublishOptions::new().unique("s").unique_for(Duration::ZERO);
        let (s, _) = publish(&mut q, &short);
        q.cancel_waiting(&s).unwrap();
        assert!(!publish(&mut q, &short).1, "a window that is over lets the key go");
    }
}
