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
//! Clients (the `publish` command) with no daemon running checkpoint `PASSIVE` from 2,500
//! pages in the log ([`CLIENT_PAGES`]; SQLite's own mark is 1,000). Beside a running daemon
//! (its lock file names it) they leave that to the daemon's thread, which starts at
//! [`KICK_PAGES`] and starts the log again at [`RESTART_PAGES`]: a publish that copied the
//! log itself returned that much later.
//!
//! # Keeping the log bounded while others write all the time
//!
//! SQLite starts the log again only when a writer begins while every page of it is in the
//! file and no reader still reads from the log. A `PASSIVE` checkpoint never stops anyone
//! writing, so with a client publishing in a loop beside a daemon pruning a big history
//! there was never such a moment: the log grew without bound (80 MB in 12 s). Three rules
//! keep it bounded:
//!
//! - Pruning waits for the log ([`Checkpointer::behind`]): while the log holds more than
//!   [`PACE_PAGES`] pages not known to be copied, a pruning step does not run (it wakes the
//!   thread and looks again a few milliseconds later). Pruning is the daemon's big writer.
//! - A client whose commit leaves more than [`HARD_PAGES`] pages in the log checkpoints
//!   `RESTART` before it goes on: that waits for the write lock, copies what is left, waits
//!   for readers to leave the log, and so its next write starts the log again. A client
//!   publishing faster than checkpoints keep up is the writer that must slow down. When
//!   another connection checkpoints meanwhile (a daemon's thread), the client does not wait
//!   for it to end (it retried for up to 250 ms, and publishes took that long while a
//!   million records were pruned): it pauses [`HARD_GAP`] instead, a gap between its
//!   commits in which the thread's own `RESTART` takes the write lock.
//! - But a client should rarely get there: the daemon's thread, once the log passes
//!   [`RESTART_PAGES`], checkpoints `RESTART` itself ([`restart`]): first `PASSIVE` (the
//!   copy and its sync, while everyone writes on), again while a pass finds many pages
//!   committed during the one before ([`catch_up`]), then `RESTART`, which takes the write
//!   lock between two commits (tried every [`RESTART_TRY`], so it catches the gap), copies
//!   the few pages committed since, and waits for readers to leave the log only briefly.
//!   The loop never checkpoints: when it did (`RESTART` on its own connection, from the
//!   pruning step), each one held it for the pages the thread had not copied and a sync,
//!   7.9 ms at p99, and about 2.5 % of the loop's time while a million records were pruned:
//!   the jobs that came meanwhile waited.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;

use crate::queue::{Durability, OpenMode};

/// Pages in the log at which a commit wakes the checkpointer (half of SQLite's own mark).
pub(super) const KICK_PAGES: i32 = 500;
/// Pages in the log (not known to be copied) past which pruning waits for the checkpointer.
const PACE_PAGES: i64 = 2 * KICK_PAGES as i64;
/// Pages in the log at which the daemon's thread starts the log again ([`restart`]): below
/// [`HARD_PAGES`], so that clients never get there.
const RESTART_PAGES: i64 = 2000;
/// Pages committed during a `PASSIVE` pass below which the `RESTART` follows it at once
/// ([`catch_up`]): copied with the write lock held, about a millisecond's worth.
const RESTART_FRESH: i64 = 128;
/// `PASSIVE` passes at most before a `RESTART`, after the first ([`catch_up`]).
const CATCH_UP_PASSES: usize = 4;
/// How often the thread's `RESTART` tries for the write lock (and, once it holds it, for
/// readers to leave the log): well under one commit, so it takes the lock in the first gap
/// between two writers' commits; a wait that doubles up to a millisecond (the usual busy
/// handler) almost never caught that gap beside a client publishing in a loop.
const RESTART_TRY: Duration = Duration::from_micros(25);
/// Tries of the thread's `RESTART` in all (about 2 ms): once it holds the write lock, every
/// writer waits while it waits for readers, so that wait must stay short.
const RESTART_TRIES: i32 = 40;
/// The longest the thread's `RESTART` waits in all (see [`briefly`]).
const RESTART_WAIT: Duration = Duration::from_millis(3);
/// The next `RESTART` after one that a reader outlasted (the thread checkpoints `PASSIVE`
/// meanwhile): a reader that stays would otherwise have every writer wait on each try.
const RESTART_AGAIN: Duration = Duration::from_millis(50);
/// Pages in the log at which a client's commit checkpoints `PASSIVE`: above
/// [`RESTART_PAGES`], where a daemon starts the log again, so that beside a daemon a
/// publish rarely pays for a checkpoint (a copy and two syncs) while its commit waits to
/// return; SQLite's own mark (1,000) had every publish checkpoint while the daemon pruned.
const CLIENT_PAGES: i32 = 2500;
/// Pages in the log past which a client's commit checkpoints `RESTART` (about 12 MiB): far
/// above where a daemon keeps the log while jobs flow, because that `RESTART` holds the write
/// lock (the daemon's claims wait) through two syncs, and waits out the daemon's checkpoint.
const HARD_PAGES: i32 = 3000;
/// Pages in the log up to which a client beside a running daemon only pauses past
/// [`HARD_PAGES`] ([`hard_gap`]) and leaves the copy to the daemon's thread: the thread
/// catches up within one of its checkpoints, while a client that copied the log itself
/// (thousands of pages, then a `RESTART` with its sync under the write lock) made its
/// publish, and the daemon's next claim, wait 100-170 ms. Past it the client copies anyway
/// (a daemon that writes nothing does not wake its thread).
const ALONE_PAGES: i32 = HARD_PAGES + 2000;
/// Pages past [`HARD_PAGES`] per [`HARD_GAP`] more of a client's pause ([`hard_gap`]).
const HARD_STEP: i32 = 256;
/// The longest pause of a client's ([`hard_gap`]).
const HARD_GAP_MOST: Duration = Duration::from_millis(20);
/// How long a client's answer to "does a daemon serve this queue" stands.
const DAEMON_LOOK: Duration = Duration::from_millis(250);
/// How long a client pauses after its commit when its `RESTART` found another connection
/// checkpointing: several of the thread's tries for the write lock ([`RESTART_TRY`]).
const HARD_GAP: Duration = Duration::from_millis(1);

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
    /// Pages in the log as last seen (after a commit of the loop's or a checkpoint; 0 once
    /// a checkpoint copied them all).
    log: Arc<AtomicI64>,
}

impl Checkpointer {
    /// A daemon's connection (`conn`): starts the thread for the queue at `path` and hands
    /// `conn` the hook that wakes it; on any failure (logged) the loop's connection keeps
    /// SQLite's automatic checkpoint. A client's: hands `conn` the client's hook.
    pub(super) fn start(
        conn: &mut Connection,
        path: &Path,
        mode: OpenMode,
        durability: Durability,
    ) -> Option<Checkpointer> {
        if mode == OpenMode::Client {
            let mut daemon = DaemonSeen::new(path);
            let hook = move |wal: &mut Wal, pages: i32| client_hook(wal, pages, &mut daemon);
            if let Err(e) = conn.wal_hook(Some(hook)) {
                tracing::warn!(queue = %path.display(), error = %procyard_core::Report(&e),
                    "this client checkpoints as SQLite does by default");
            }
            return None;
        }
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
        let log = Arc::new(AtomicI64::new(0));
        let thread = std::thread::Builder::new()
            .name("procyard-checkpoint".into())
            .spawn({
                let (path, log) = (path.to_owned(), log.clone());
                move || serve(own, &path, &rx, &log)
            })
            .map_err(CheckpointerError::Spawn)?;
        let checkpointer = Checkpointer { tx: tx.clone(), thread: Some(thread), log: log.clone() };
        conn.wal_hook(Some(move |_: &mut Wal, pages: i32| {
            log.store(i64::from(pages), Ordering::Relaxed);
            if pages >= KICK_PAGES {
                kick(&tx);
            }
            Ok(())
        }))
        .map_err(CheckpointerError::Hook)?;
        Ok(checkpointer)
    }

    /// Whether the log holds more than [`PACE_PAGES`] pages not known to be copied: pruning
    /// waits (and wakes the thread, [`Checkpointer::kick`]).
    pub(super) fn behind(&self) -> bool {
        self.log.load(Ordering::Relaxed) > PACE_PAGES
    }

    /// Asks for a checkpoint (never blocks).
    pub(super) fn kick(&self) {
        kick(&self.tx);
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

/// Asks the thread for a checkpoint, never blocking. Full: a kick is already waiting, and the
/// thread checkpoints all there is when it runs. Disconnected: the thread stopped (the queue
/// closes).
fn kick(tx: &Sender<Msg>) {
    match tx.try_send(Msg::Kick) {
        Ok(()) | Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
    }
}

/// A client's commit that left `pages` in the log. From [`CLIENT_PAGES`], SQLite's own
/// `PASSIVE` checkpoint, unless a daemon serves the queue (its thread checkpoints anyway, and
/// a publish that copies 2,500 pages and syncs the file returns that much later). Past
/// [`HARD_PAGES`], a pause ([`hard_gap`]) while a daemon runs, up to [`ALONE_PAGES`]; past
/// that, or with no daemon, the log is started again: `PASSIVE` first (the copy, with no lock held), then `RESTART` (the write lock, for
/// the few pages committed meanwhile, and readers, as the connection's busy handler says);
/// when another connection checkpoints (a daemon's thread), a pause instead ([`hard_gap`])
/// that lets that one start the log again.
fn client_hook(wal: &mut Wal, pages: i32, daemon: &mut DaemonSeen) -> rusqlite::Result<()> {
    let busy =
        |e: &rusqlite::Error| e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy);
    if pages > HARD_PAGES {
        if pages <= ALONE_PAGES && daemon.runs() {
            // The daemon's thread is behind (a long checkpoint): slow down, do not copy.
            std::thread::sleep(hard_gap(pages));
            return Ok(());
        }
        let restarted = wal
            .checkpoint_v2(CheckpointMode::PASSIVE)
            .and_then(|_| wal.checkpoint_v2(CheckpointMode::RESTART));
        match restarted {
            Ok(_) => {}
            Err(e) if busy(&e) => std::thread::sleep(hard_gap(pages)),
            Err(e) => tracing::debug!(pages, error = %e, "the log was not started again"),
        }
    } else if pages >= CLIENT_PAGES && !daemon.runs() {
        // Refused: another connection checkpoints; the next commit tries again.
        let _ = wal.checkpoint_v2(CheckpointMode::PASSIVE);
    }
    Ok(())
}

/// How long a client pauses after a commit that left `pages` (past [`HARD_PAGES`]) in the
/// log while another connection checkpoints: [`HARD_GAP`], and one more for every
/// [`HARD_STEP`] pages further, up to [`HARD_GAP_MOST`]. The further the log outgrows its
/// bound, the slower the writer that outruns the checkpoints (under load a checkpoint of the
/// daemon's thread took a third of a second, and a client pausing 1 ms per commit grew the
/// log by 6 MB meanwhile).
fn hard_gap(pages: i32) -> Duration {
    let steps = u32::try_from((pages - HARD_PAGES) / HARD_STEP).unwrap_or(0);
    (HARD_GAP * (1 + steps)).min(HARD_GAP_MOST)
}

/// Whether a daemon serves a client's queue (the holder its lock file names runs), looked
/// at most every [`DAEMON_LOOK`].
struct DaemonSeen {
    queue: PathBuf,
    /// The answer and when it was found.
    seen: Option<(Instant, bool)>,
}

impl DaemonSeen {
    fn new(queue: &Path) -> DaemonSeen {
        DaemonSeen { queue: queue.to_owned(), seen: None }
    }

    fn runs(&mut self) -> bool {
        let now = Instant::now();
        match self.seen {
            Some((at, runs)) if now.duration_since(at) < DAEMON_LOOK => runs,
            _ => {
                let runs = super::lock::holder_runs(&self.queue);
                self.seen = Some((now, runs));
                runs
            }
        }
    }
}

/// The busy handler of the thread's connection (only its `RESTART` waits): a try every
/// [`RESTART_TRY`], [`RESTART_TRIES`] in all and for [`RESTART_WAIT`] at most. On a loaded
/// machine each sleep lasts until the thread gets a core again, several milliseconds: counted
/// in tries alone, the wait for readers (with the write lock held) took over 100 ms.
fn briefly(n: i32) -> bool {
    thread_local! {
        /// When this wait began (SQLite counts `n` from 0 for each).
        static SINCE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = Instant::now();
    let since = SINCE.with(|since| {
        if n == 0 || since.get().is_none() {
            since.set(Some(now));
        }
        since.get().unwrap_or(now)
    });
    if n >= RESTART_TRIES || now.duration_since(since) >= RESTART_WAIT {
        return false;
    }
    std::thread::sleep(RESTART_TRY);
    true
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

/// The thread's own connection: as durable as the queue's, waiting for a lock only briefly
/// (in its `RESTART`; a `PASSIVE` checkpoint waits for none).
fn open(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_handler(Some(briefly))?;
    conn.pragma_update(None, "synchronous", durability.synchronous())?;
    // This connection writes nothing; it must not checkpoint on close either way.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// The thread: a checkpoint per kick, until asked to stop or the loop's connection is gone.
/// A log of [`RESTART_PAGES`] or more is started again ([`restart`]), unless a reader
/// outlasted the last try less than [`RESTART_AGAIN`] ago.
fn serve(conn: Connection, path: &Path, rx: &Receiver<Msg>, pages: &AtomicI64) {
    let path: PathBuf = path.to_owned();
    let mut failing = false;
    let mut restart_at = Instant::now();
    for msg in rx {
        match msg {
            Msg::Kick => {
                // The log as a `PASSIVE` checkpoint finds it (whoever wrote it), started
                // again when long.
                let result =
                    crate::stamp::timed("checkpoint", || checkpoint(&conn)).and_then(|passive| {
                        if passive.1 < RESTART_PAGES || Instant::now() < restart_at {
                            return Ok(passive);
                        }
                        // Short now (the log started again meanwhile), or `-1`: another
                        // connection checkpoints.
                        let passive = catch_up(&conn, passive)?;
                        if passive.1 < RESTART_PAGES {
                            return Ok(passive);
                        }
                        let restarted = crate::stamp::timed("restart", || restart(&conn))?;
                        // A reader outlasted the tries (`-1`: another connection was
                        // checkpointing, and the next kick tries again).
                        if restarted.1 > 0 {
                            restart_at = Instant::now() + RESTART_AGAIN;
                        }
                        Ok(restarted)
                    });
                match result {
                    Ok((_, log, copied)) => {
                        // All copied: the next write starts the log again (after a `RESTART`
                        // that ended, the log is empty: 0 pages). `-1`: another connection
                        // was checkpointing; nothing learnt.
                        if log >= 0 {
                            pages.store(if copied >= log { 0 } else { log }, Ordering::Relaxed);
                        }
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
                }
            }
            Msg::Settle(reply) => {
                let _ = reply.send(());
            }
            Msg::Stop => break,
        }
    }
}

/// `PASSIVE` again while the last pass found more than [`RESTART_FRESH`] pages committed
/// since the one before (at most [`CATCH_UP_PASSES`] more passes), so that the `RESTART`
/// after them has few pages left to copy: it copies them holding the write lock, and after
/// a long pass (a log of thousands of pages, while clients and the loop wrote on) copying
/// what came meanwhile held every writer up to 390 ms (a prune of 1,000,000 records beside
/// builds).
/// Each pass copies what came during the one before, so they shorten quickly. Returns the
/// last pass's report.
fn catch_up(conn: &Connection, first: (i64, i64, i64)) -> rusqlite::Result<(i64, i64, i64)> {
    let mut last = first;
    for _ in 0..CATCH_UP_PASSES {
        let next = crate::stamp::timed("checkpoint", || checkpoint(conn))?;
        // Fewer pages than before: the log started again meanwhile; `-1`: another
        // connection checkpoints.
        let fresh = next.1 - last.1;
        last = next;
        if next.1 < 0 || fresh <= RESTART_FRESH {
            break;
        }
    }
    Ok(last)
}

/// Starts the log again, after a `PASSIVE` checkpoint copied it (its sync done while
/// writers went on): `RESTART` takes the write lock, copies the pages committed since and
/// waits for readers to leave the log. Returns its report: busy (0 when the log starts again
/// at the next write), the pages in the log (0 then) and those copied.
fn restart(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map(|(busy, log, copied)| if busy == 0 { (0, 0, 0) } else { (busy, log, copied) })
}

/// One `PASSIVE` checkpoint: busy, the pages in the log and how many of them are now in the
/// file (busy 1 and `-1` both: another connection was checkpointing).
fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
