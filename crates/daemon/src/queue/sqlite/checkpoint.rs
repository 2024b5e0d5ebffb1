//! Checkpoints off the daemon's loop.
//!
//! In WAL mode every commit appends pages to `<file>-wal`; a checkpoint copies them back into
//! the database file and syncs it. SQLite's own rule (`wal_autocheckpoint`) runs that
//! checkpoint on the connection whose commit takes the log past 1,000 pages — on a daemon,
//! its loop — and while a big history is pruned that meant a checkpoint (page copies and two
//! syncs) inside a claim every few steps: measured, up to a third of a second with no claim.
//!
//! A daemon's connection therefore only counts: its write-ahead-log hook (which replaces the
//! automatic checkpoint) wakes a [`Checkpointer`] thread when a commit leaves [`KICK_PAGES`]
//! or more in the log, and that thread checkpoints on a connection of its own, `PASSIVE`: it
//! never waits for the loop's writes and the loop never waits for it. The log stays bounded
//! as before: once a checkpoint has copied every page, the loop's next write starts the log
//! again from its beginning (the file keeps its largest size and is written over). A reader
//! holding an old snapshot holds a checkpoint back exactly as it did SQLite's own; the next
//! commit past the mark wakes the thread again. The thread's connection syncs as the queue's
//! `durability` says, so a checkpoint keeps its meaning.
//!
//! What stays on the loop: when the log starts again, SQLite syncs its new header once (its
//! guard against corruption at `synchronous = NORMAL`), one `fsync` of one page per cycle of
//! [`KICK_PAGES`] pages. The file is not cut back (`journal_size_limit`): truncating it on
//! the loop waited for the pages the thread was writing out.
//!
//! Clients (the `publish` command) keep SQLite's automatic checkpoint: with a daemon running,
//! the log rarely reaches its 1,000 pages, because the daemon's thread starts at
//! [`KICK_PAGES`].

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rusqlite::Connection;

use crate::queue::Durability;

/// Pages in the log at which a commit wakes the checkpointer (half of SQLite's own mark).
pub(super) const KICK_PAGES: i32 = 500;

/// What the checkpointer thread is asked.
enum Msg {
    /// The log passed [`KICK_PAGES`]: checkpoint.
    Kick,
    /// Answer once everything asked before is done (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Settle(Sender<()>),
    /// Stop (the queue closes).
    Stop,
}

/// The thread that checkpoints a daemon's queue file; stopped (and joined) on drop.
#[derive(Debug)]
pub(super) struct Checkpointer {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread for the queue at `path` and hands `conn` (the daemon's loop
    /// connection) the hook that wakes it. On any failure (logged) the loop's connection
    /// keeps SQLite's automatic checkpoint.
    pub(super) fn start(
        conn: &mut Connection,
        path: &Path,
        durability: Durability,
    ) -> Option<Checkpointer> {
        Checkpointer::try_start(conn, path, durability)
            .inspect_err(|e| {
                tracing::warn!(queue = %path.display(), error = %procyard_core::Report(e),
                    "checkpoints run on the daemon's loop");
            })
            .ok()
    }

    fn try_start(
        conn: &mut Connection,
        path: &Path,
        durability: Durability,
    ) -> Result<Checkpointer, CheckpointerError> {
        let own = open(path, durability).map_err(CheckpointerError::Open)?;
        // A kick waiting is enough: the thread checkpoints everything there is when it runs.
        let (tx, rx) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("procyard-checkpoint".into())
            .spawn({
                let path = path.to_owned();
                move || serve(own, &path, &rx)
            })
            .map_err(CheckpointerError::Spawn)?;
        let checkpointer = Checkpointer { tx: tx.clone(), thread: Some(thread) };
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
            if pages >= KICK_PAGES {
                // Never blocks. Full: a kick is already waiting, and the thread checkpoints
                // all there is when it runs. Disconnected: the thread stopped (the queue
                // closes).
                match tx.try_send(Msg::Kick) {
                    Ok(()) | Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
                }
            }
            Ok(())
        }))
        .map_err(CheckpointerError::Hook)?;
        Ok(checkpointer)
    }

    /// Returns once every checkpoint asked for so far has run.
    #[cfg(test)]
    pub(super) fn settle(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.tx.send(Msg::Settle(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(30));
        }
    }
}

impl Drop for Checkpointer {
    /// Stops the thread after the checkpoint it is running, if any.
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the checkpoint thread panicked");
        }
    }
}

/// Why the daemon's queue checkpoints on its loop after all.
#[derive(Debug, thiserror::Error)]
pub(super) enum CheckpointerError {
    #[error("unable to open a second connection to the queue")]
    Open(#[source] rusqlite::Error),
    #[error("unable to start the checkpoint thread")]
    Spawn(#[source] std::io::Error),
    #[error("unable to hook the loop's connection")]
    Hook(#[source] rusqlite::Error),
}

/// The thread's own connection: as durable as the queue's, never waiting for a lock (a
/// `PASSIVE` checkpoint takes none that the loop holds for long).
fn open(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(1))?;
    conn.pragma_update(None, "synchronous", durability.synchronous())?;
    // This connection writes nothing; it must not checkpoint on close either way.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// The thread: a checkpoint per kick, until asked to stop or the loop's connection is gone.
fn serve(conn: Connection, path: &Path, rx: &Receiver<Msg>) {
    let path: PathBuf = path.to_owned();
    let mut failing = false;
    for msg in rx {
        match msg {
            Msg::Kick => match checkpoint(&conn) {
                Ok((log, copied)) => {
                    if failing {
                        failing = false;
                        tracing::info!(queue = %path.display(), "checkpoints work again");
                    }
                    tracing::trace!(log, copied, "checkpoint");
                }
                Err(e) => {
                    if !failing {
                        failing = true;
                        tracing::warn!(queue = %path.display(), error = %procyard_core::Report(&e),
                            "unable to checkpoint the queue's write-ahead log; it grows until a checkpoint succeeds");
                    }
                }
            },
            Msg::Settle(reply) => {
                let _ = reply.send(());
            }
            Msg::Stop => break,
        }
    }
}

/// One `PASSIVE` checkpoint: the pages in the log and how many of them are now in the file.
fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(1)?, r.get(2)?)))
}

#[cfg(test)]
mod tests {
    use rusqlite::params;

    use super::*;
    use crate::queue::sqlite::tests::bound;
    use crate::queue::sqlite::{SqliteQueue, now_ms};
    use crate::queue::{OpenMode, QueueBackend, Retention};

    fn autocheckpoint(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap()
    }

    fn log_len(path: &Path) -> u64 {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
    }

    /// A daemon's connection leaves checkpoints to the thread (SQLite's automatic one is
    /// off on it); a client's keeps SQLite's; the thread syncs as the queue's durability says.
    #[test]
    fn daemon_leaves_checkpoints_to_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let daemon = bound(&path, OpenMode::Daemon);
        assert!(daemon._checkpointer.is_some());
        assert_eq!(autocheckpoint(&daemon.conn), 0);
        let client = bound(&path, OpenMode::Client);
        assert!(client._checkpointer.is_none());
        assert_eq!(autocheckpoint(&client.conn), 1000);
        for (durability, level) in [(Durability::Crash, 1), (Durability::Power, 2)] {
            let conn = open(&path, durability).unwrap();
            let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
            assert_eq!(sync, level, "{durability:?}");
        }
    }

    /// Filling and then pruning a history of tens of MiB: the log file never grows past a
    /// few MiB, because the thread checkpoints as the daemon's commits fill it and the
    /// daemon's next write starts the log again (with no checkpoint at all it would grow to
    /// the size of everything written).
    #[test]
    fn log_stays_bounded_while_pruning() {
        const LIMIT: u64 = 4 << 20;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let mut q = bound(&path, OpenMode::Daemon);
        q.set_retention(Retention { keep_done: Duration::from_secs(1), keep_done_max: 1 << 40 });
        let checkpointer = q._checkpointer.take().unwrap();
        let old = now_ms() - 3_600_000;
        let mut largest = 0;
        for chunk in 0..60 {
            let tx = q.conn.transaction().unwrap();
            for i in chunk * 1000..(chunk + 1) * 1000 {
                tx.execute(
                    "INSERT INTO jobs (id, task, routing_key, payload, state, published_ms,
                         finished_ms)
                     VALUES (?1, 'mail', 'mail.a', ?2, 2, ?3, ?3)",
                    params![format!("j{i}"), vec![7u8; 64], old + i],
                )
                .unwrap();
                tx.execute(
                    "INSERT INTO attempts (job_seq, delivery, stdout) VALUES (?1, 1, ?2)",
                    params![tx.last_insert_rowid(), vec![b'o'; 64]],
                )
                .unwrap();
            }
            tx.commit().unwrap();
            checkpointer.settle();
            largest = largest.max(log_len(&path));
        }
        let db_len = std::fs::metadata(&path).unwrap().len();
        assert!(db_len > 3 * LIMIT, "the history ({db_len} bytes) dwarfs the limit");
        let count = |q: &SqliteQueue| -> i64 {
            q.conn.query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0)).unwrap()
        };
        let mut steps = 0;
        while count(&q) > 0 {
            steps += 1;
            assert!(steps < 1000, "pruning ends");
            q.prune_step();
            checkpointer.settle();
            largest = largest.max(log_len(&path));
        }
        assert!(steps > 100, "in many steps: {steps}");
        assert!(largest <= LIMIT, "the log grew to {largest} bytes (limit {LIMIT})");
    }
}
