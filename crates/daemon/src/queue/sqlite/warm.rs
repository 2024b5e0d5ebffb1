//! Reading ahead of pruning, off the daemon's loop.
//!
//! A pruning step (`retention.rs`) deletes the oldest ended jobs on the loop, holding the
//! write lock. The pages it touches — the rows, their attempts and output, their index
//! entries — are the coldest of the file: written once, long ago. When the kernel has dropped
//! them from its page cache (memory pressure: here, builds beside the daemon), every page the
//! step reads waits for the disk, and every writer waits for the step. Measured while
//! 1,000,000 records were pruned beside builds: `pread64` of the queue file taking up to
//! 200 ms on the loop's thread, and jobs waiting 100–360 ms to start (claims and publishes
//! both wait for the write lock).
//!
//! A [`Warmer`] thread reads the rows the next steps will delete, on a connection of its own,
//! in short read transactions (WAL: it waits for no writer and no writer waits for it), so
//! that their pages are in the kernel's cache when the step comes; and a step deletes only
//! rows the warmer has read ([`Warmer::bound`] caps its cutoff). The warmer stays
//! [`WINDOW`] rows ahead: a step that leaves fewer than [`LOW`] read asks it for more, and a
//! step that ran out of read rows before its batch waits for it ([`Warmer::waiting`]).
//! Reading rows the kernel still caches costs the thread a few microseconds each.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, params};

/// Rows the warmer keeps read ahead of pruning: a few steps' worth.
const WINDOW: i64 = 2048;
/// Rows read ahead below which a step asks for more.
const LOW: i64 = WINDOW / 2;
/// Rows per read transaction: a reader holds back the checkpoint's copying while it reads,
/// and a cold read may take a while.
const CHUNK: i64 = 128;
/// The warmer's own page cache (KiB): it reads for the kernel's cache, not for its own.
const CACHE_KIB: i64 = 256;
/// End times this far behind a step's cutoff (ms) are not waited for when the thread's read
/// stopped there ([`Warmer::deleted`]): the next regular step, a second later, takes them.
const SLACK_MS: i64 = 1000;
/// How long a read waits for the file's lock (only while the log starts again or recovers).
const BUSY: Duration = Duration::from_millis(100);

/// A row in pruning order: end time, row number.
pub(crate) type Key = (i64, i64);

/// What the loop and the thread share.
#[derive(Debug, Default)]
struct Shared {
    /// The last row read, in pruning order; `None` before the first read.
    warmed: Mutex<Option<Key>>,
    /// Rows read and not yet deleted, as far as the loop told.
    ahead: AtomicI64,
    /// A step ran out of read rows: set by the loop, cleared once the thread read on.
    asked: AtomicBool,
    /// The thread's last read stopped at its window (rows may follow), not at the cutoff.
    more: AtomicBool,
    /// The thread's last read failed: steps read on the loop, as without it.
    failed: AtomicBool,
}

/// The thread that reads ahead of a daemon's pruning; stopped (and joined) on drop.
#[derive(Debug)]
pub(crate) struct Warmer {
    /// Requests to read ahead up to a cutoff; dropped to stop the thread.
    tx: Option<Sender<Key>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Warmer {
    /// Starts the thread for the queue at `path`; `None` (logged) when its connection or the
    /// thread cannot be had: pruning then reads on the loop, as before.
    pub(crate) fn start(path: &Path) -> Option<Warmer> {
        let started = open(path).map_err(WarmerError::Open).and_then(|conn| {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let shared = Arc::new(Shared::default());
            let thread = std::thread::Builder::new()
                .name("procyard-warm".into())
                .spawn({
                    let (shared, path) = (shared.clone(), path.to_owned());
                    move || serve(&conn, &path, &rx, &shared)
                })
                .map_err(WarmerError::Spawn)?;
            Ok(Warmer { tx: Some(tx), shared, thread: Some(thread) })
        });
        started
            .inspect_err(|e| {
                tracing::warn!(queue = %path.display(), error = %procyard_core::Report(e),
                    "pruning reads the rows it deletes on the daemon's loop");
            })
            .ok()
    }

    /// Whether the thread has read anything yet; if not, it is asked to read up to `cut` and
    /// the step waits ([`Warmer::waiting`]).
    pub(crate) fn started(&self, cut: Key) -> bool {
        if self.shared.failed.load(Ordering::Acquire)
            || self.shared.warmed.lock().unwrap_or_else(|e| e.into_inner()).is_some()
        {
            return true;
        }
        self.shared.asked.store(true, Ordering::Release);
        self.ask(cut);
        false
    }

    /// The cutoff a step may delete up to: `cut`, or the last row read if that comes first.
    pub(crate) fn bound(&self, cut: Key) -> Key {
        if self.shared.failed.load(Ordering::Acquire) {
            return cut;
        }
        let warmed = *self.shared.warmed.lock().unwrap_or_else(|e| e.into_inner());
        warmed.map_or((i64::MIN, i64::MIN), |w| w.min(cut))
    }

    /// A step deleted `n` rows; `short`: fewer than its batch, below the bound the thread
    /// set (`bound`, short of `cut`). Returns whether the step ran out of rows read ahead, so
    /// that the next one waits for the thread: its last read stopped at its window (rows may
    /// follow), or at a cutoff more than [`SLACK_MS`] before this one. Rows that expired
    /// within that slack are read for the next regular step (and no step waits on each
    /// millisecond's expiries).
    pub(crate) fn deleted(&self, n: usize, short: bool, bound: Key, cut: Key) -> bool {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let left = self.shared.ahead.fetch_sub(n, Ordering::Relaxed).saturating_sub(n);
        let behind = bound.0 < cut.0.saturating_sub(SLACK_MS);
        let ran_out = short && (behind || self.shared.more.load(Ordering::Acquire));
        if short {
            // Whatever was counted ahead is gone (a purge may have deleted rows the count
            // still held): read on from the last row read.
            self.shared.ahead.store(0, Ordering::Relaxed);
        }
        if ran_out {
            self.shared.asked.store(true, Ordering::Release);
        }
        if short || left < LOW {
            self.ask(cut);
        }
        ran_out
    }

    /// Whether a step ran out of read rows and the thread has not read on since.
    pub(crate) fn waiting(&self) -> bool {
        self.shared.asked.load(Ordering::Acquire)
    }

    /// Asks the thread to read ahead up to `cut`, never blocking (a request already waiting
    /// is enough: the thread reads a whole window).
    fn ask(&self, cut: Key) {
        if let Some(tx) = &self.tx {
            match tx.try_send(cut) {
                Ok(()) | Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
            }
        }
    }
}

impl Drop for Warmer {
    /// Stops the thread after the read it is doing, if any.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the warm thread panicked");
        }
    }
}

/// Why pruning reads on the loop after all.
#[derive(Debug, thiserror::Error)]
enum WarmerError {
    #[error("unable to open another connection to the queue")]
    Open(#[source] rusqlite::Error),
    #[error("unable to start the warm thread")]
    Spawn(#[source] std::io::Error),
}

/// The thread's connection: reads only, a small cache of its own, no checkpoint on close.
fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY)?;
    conn.pragma_update(None, "query_only", 1)?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// The thread: on each request, reads until [`WINDOW`] rows are ahead of the loop's steps.
fn serve(conn: &Connection, path: &Path, rx: &Receiver<Key>, shared: &Shared) {
    let mut failing = false;
    for cut in rx {
        loop {
            let want = WINDOW - shared.ahead.load(Ordering::Relaxed);
            if want <= 0 {
                shared.more.store(true, Ordering::Release);
                break;
            }
            let from = *shared.warmed.lock().unwrap_or_else(|e| e.into_inner());
            let n = want.min(CHUNK);
            match read_ahead(conn, from, cut, n) {
                Ok((rows, last)) => {
                    // Fewer than asked: everything up to the cutoff is read.
                    let last = if rows < n { cut } else { last.unwrap_or(cut) };
                    let last = from.map_or(last, |f| f.max(last));
                    *shared.warmed.lock().unwrap_or_else(|e| e.into_inner()) = Some(last);
                    shared.ahead.fetch_add(rows, Ordering::Relaxed);
                    shared.more.store(rows == n, Ordering::Release);
                    shared.failed.store(false, Ordering::Release);
                    if failing {
                        failing = false;
                        tracing::info!(queue = %path.display(), "reading ahead of pruning works again");
                    }
                    if rows < n {
                        break;
                    }
                }
                Err(e) => {
                    shared.failed.store(true, Ordering::Release);
                    if !failing {
                        failing = true;
                        tracing::warn!(queue = %path.display(), error = %procyard_core::Report(&e),
                            "unable to read ahead of pruning; pruning reads on the daemon's loop meanwhile");
                    }
                    break;
                }
            }
        }
        shared.asked.store(false, Ordering::Release);
    }
}

/// Reads the next `n` rows a pruning step would delete after `from` (up to `cut`), with
/// their attempts and index entries; returns how many, and the last one.
fn read_ahead(
    conn: &Connection,
    from: Option<Key>,
    cut: Key,
    n: i64,
) -> rusqlite::Result<(i64, Option<Key>)> {
    let (from_ms, from_seq) = from.unwrap_or((i64::MIN, i64::MIN));
    let mut rows: Vec<(i64, i64, String, String, Option<String>)> = Vec::new();
    {
        // The pruning order over the same index as [`super::retention::PRUNE_SELECT`], every
        // column read (a long payload's overflow pages too).
        let mut stmt = conn.prepare_cached(
            "SELECT finished_ms, seq, id, task, unique_key, * FROM jobs WHERE state IN (2, 4)
               AND finished_ms <= ?1 AND (finished_ms, seq) <= (?1, ?2)
               AND finished_ms >= ?3 AND (finished_ms, seq) > (?3, ?4)
             ORDER BY finished_ms, seq LIMIT ?5",
        )?;
        let mut q = stmt.query(params![cut.0, cut.1, from_ms, from_seq, n])?;
        while let Some(row) = q.next()? {
            touch(row)?;
            let unique: Option<String> = row.get(4)?;
            rows.push((row.get::<_, i64>(0)?, row.get(1)?, row.get(2)?, row.get(3)?, unique));
        }
    }
    // The entries a delete removes from the other indexes, and the attempts with their output.
    let mut by_id = conn.prepare_cached("SELECT seq FROM jobs WHERE id = ?1")?;
    let mut by_key =
        conn.prepare_cached("SELECT seq FROM jobs WHERE task = ?1 AND unique_key = ?2")?;
    let mut attempts = conn.prepare_cached("SELECT * FROM attempts WHERE job_seq = ?1")?;
    for (_, seq, id, task, unique) in &rows {
        by_id.query([id])?.next()?;
        if let Some(key) = unique {
            by_key.query(params![task, key])?.next()?;
        }
        let mut q = attempts.query([seq])?;
        while let Some(row) = q.next()? {
            touch(row)?;
        }
    }
    let last = rows.last().map(|r| (r.0, r.1));
    Ok((rows.len() as i64, last))
}

/// Reads every column of `row` (a blob or text in full, overflow pages and all).
fn touch(row: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
    for i in 0..row.as_ref().column_count() {
        match row.get_ref(i)? {
            ValueRef::Blob(b) => {
                std::hint::black_box(b.len());
            }
            ValueRef::Text(t) => {
                std::hint::black_box(t.len());
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::queue::OpenMode;
    use crate::queue::sqlite::tests::bound;

    /// `rows` done jobs ended at 1, 2, … ms, each with one attempt.
    fn ended(conn: &Connection, rows: i64) {
        for i in 1..=rows {
            conn.execute(
                "INSERT INTO jobs (id, task, routing_key, payload, state, published_ms, finished_ms)
                 VALUES (?1, 'mail', 'mail', x'00', 2, 0, ?2)",
                params![format!("j{i}"), i],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO attempts (job_seq, delivery, stdout) VALUES (?1, 1, x'0102')",
                [conn.last_insert_rowid()],
            )
            .unwrap();
        }
    }

    /// The thread reads in pruning order, from after the last row read, up to the cutoff.
    #[test]
    fn reads_ahead_in_pruning_order_up_to_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        ended(&q.conn, 10);
        let conn = open(&dir.path().join("q.db")).unwrap();
        let cut = (8, i64::MAX);
        assert_eq!(read_ahead(&conn, None, cut, 3).unwrap(), (3, Some((3, 3))));
        assert_eq!(read_ahead(&conn, Some((3, 3)), cut, 100).unwrap(), (5, Some((8, 8))));
        assert_eq!(read_ahead(&conn, Some((8, 8)), cut, 100).unwrap(), (0, None));
    }

    /// Steps are held to what the thread has read: nothing before its first read, then up
    /// to the cutoff once it read everything there.
    #[test]
    fn steps_wait_for_the_rows_to_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
        ended(&q.conn, 10);
        let warmer = Warmer::start(&dir.path().join("q.db")).unwrap();
        let cut = (8, i64::MAX);
        assert!(!warmer.started(cut), "nothing read before the thread runs");
        procyard_core::testkit::wait_for("the first read", Duration::from_secs(10), || {
            warmer.started(cut) && !warmer.waiting()
        });
        assert_eq!(warmer.bound(cut), cut, "everything up to the cutoff was read");
        assert_eq!(warmer.bound((5, 5)), (5, 5), "a nearer cutoff stays");
        // A cutoff far past the last read: a short step waits for the thread.
        let far = (10_000, i64::MAX);
        assert!(warmer.deleted(8, true, warmer.bound(far), far), "the step ran out");
        assert!(warmer.waiting());
        procyard_core::testkit::wait_for("the next read", Duration::from_secs(10), || {
            !warmer.waiting()
        });
        assert_eq!(warmer.bound(far), far);
    }
}
