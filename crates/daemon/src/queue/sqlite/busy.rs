//! Waiting for a lock another connection holds (the write lock, mostly): SQLite has no
//! notification for its release, so a connection tries again after a pause, for at most
//! [`BUSY_TIMEOUT`] in all, then fails with `SQLITE_BUSY`.
//!
//! SQLite's own `busy_timeout` pauses 1, 2, 5, 10, 15, 20, 25 ms and so on between tries: a
//! lock held for 12 ms (a pruning step on a loaded machine) kept a publisher, or the daemon's
//! claim, waiting 18 ms, and one held for 30 ms kept it waiting up to 53 ms. Here the first
//! [`SHORT_TRIES`] pauses are [`SHORT_PAUSE`] long, so a waiter takes the lock within half a
//! millisecond of its release through the first 50 ms; then [`LONG_PAUSE`], as SQLite's
//! would, for a lock held long (a big batch published in one transaction).

use std::time::Duration;

use rusqlite::Connection;

/// How long a connection waits for a lock in all (at least: each pause may overrun).
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause between the first tries.
const SHORT_PAUSE: Duration = Duration::from_micros(500);
/// Tries with a [`SHORT_PAUSE`] before it (50 ms in all).
const SHORT_TRIES: u32 = 100;
/// The pause between later tries.
const LONG_PAUSE: Duration = Duration::from_millis(5);

/// Has `conn` wait for locks as this module says.
pub(super) fn wait_for_locks(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.busy_handler(Some(on_busy))
}

/// SQLite's busy callback: `true` to try again (after the pause), `false` to give up.
fn on_busy(tries: i32) -> bool {
    match pause(u32::try_from(tries).unwrap_or(0)) {
        Some(p) => {
            std::thread::sleep(p);
            true
        }
        None => false,
    }
}

/// The pause before try `tries + 1`, or `None` once the pauses so far add up to
/// [`BUSY_TIMEOUT`].
fn pause(tries: u32) -> Option<Duration> {
    let short = SHORT_PAUSE * tries.min(SHORT_TRIES);
    let long = LONG_PAUSE * tries.saturating_sub(SHORT_TRIES);
    if short + long >= BUSY_TIMEOUT {
        return None;
    }
    Some(if tries < SHORT_TRIES { SHORT_PAUSE } else { LONG_PAUSE })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pauses are short first, never longer than [`LONG_PAUSE`], and add up to
    /// [`BUSY_TIMEOUT`] before the waiter gives up.
    #[test]
    fn pauses_add_up_to_the_timeout() {
        let mut total = Duration::ZERO;
        let mut tries = 0;
        while let Some(p) = pause(tries) {
            assert!(p <= LONG_PAUSE, "try {tries}: {p:?}");
            if tries < SHORT_TRIES {
                assert_eq!(p, SHORT_PAUSE, "try {tries}");
            }
            total += p;
            tries += 1;
            assert!(tries < 1_000_000, "the waiter gives up");
        }
        assert!(total >= BUSY_TIMEOUT, "waited {total:?} in all");
        assert!(total < BUSY_TIMEOUT + LONG_PAUSE, "waited {total:?} in all");
    }

    /// A write waits for another connection's write transaction and goes through once it
    /// commits; a write that finds the lock held past the timeout would fail (the handler
    /// says so: `on_busy` at the last try is `false`).
    #[test]
    fn a_writer_waits_for_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let mut holder = Connection::open(&path).unwrap();
        holder.pragma_update(None, "journal_mode", "WAL").unwrap();
        holder.execute_batch("CREATE TABLE t (x)").unwrap();
        let tx =
            holder.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        tx.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let (started, waiting) = crossbeam_channel::bounded(1);
        let writer = std::thread::spawn(move || {
            let mut conn = Connection::open(&path).unwrap();
            wait_for_locks(&mut conn).unwrap();
            started.send(()).unwrap();
            conn.execute("INSERT INTO t VALUES (2)", []).map(|_| ())
        });
        waiting.recv().unwrap();
        tx.commit().unwrap();
        writer.join().unwrap().unwrap();
        let n: i64 = holder.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
        let last = (0..).find(|&t| pause(t).is_none()).unwrap();
        assert!(!on_busy(last as i32), "the waiter gives up at the timeout");
    }
}
