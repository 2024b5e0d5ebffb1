//! Tests of the checkpoint thread: who checkpoints, and the log kept bounded while a big
//! history is pruned (alone, and beside a client publishing all the time).

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
    // The client's own hook (which SQLite reports as no automatic checkpoint).
    assert_eq!(autocheckpoint(&client.conn), 0);
    for (durability, level) in [(Durability::Crash, 1), (Durability::Power, 2)] {
        let conn = open(&path, durability).unwrap();
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, level, "{durability:?}");
    }
}

/// Fills the history of `q` with 60,000 done jobs of an hour ago (with an attempt each),
/// in commits of 1,000, the checkpointer keeping up after each; returns the largest the
/// log file grew to.
fn fill(q: &mut SqliteQueue, path: &Path) -> u64 {
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
        q._checkpointer.as_ref().unwrap().settle();
        largest = largest.max(log_len(path));
    }
    largest
}

/// Whether done jobs are left to prune (through the index pruning uses: a reader holds back
/// checkpoints while it reads).
fn expired(q: &SqliteQueue) -> bool {
    q.conn
        .query_row("SELECT EXISTS (SELECT 1 FROM jobs WHERE state IN (2, 4))", [], |r| r.get(0))
        .unwrap()
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
    let mut largest = fill(&mut q, &path);
    let db_len = std::fs::metadata(&path).unwrap().len();
    assert!(db_len > 3 * LIMIT, "the history ({db_len} bytes) dwarfs the limit");
    let mut steps = 0;
    let deadline = procyard_core::Deadline::after(Duration::from_secs(60));
    while expired(&q) {
        assert!(steps < 1000 && !deadline.is_expired(), "pruning ends");
        // A step put off (the log behind, the rows ahead not read yet) is tried again.
        if q.prune_step() {
            steps += 1;
        }
        q._checkpointer.as_ref().unwrap().settle();
        largest = largest.max(log_len(&path));
    }
    assert!(steps > 100, "in many steps: {steps}");
    assert!(largest <= LIMIT, "the log grew to {largest} bytes (limit {LIMIT})");
}

/// The same prune, as the daemon's loop runs it (each step when due), beside a client that
/// publishes all the time: the log stays bounded and the prune ends. With `PASSIVE`
/// checkpoints alone no moment ever had the whole log copied with no write under way, and
/// the log grew without bound (11 MB before the prune ended, 80 MB in 12 s beside a daemon).
#[test]
fn log_stays_bounded_while_a_client_publishes() {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    // Twice where a client starts the log again (`HARD_PAGES`, about 12 MiB): what a client
    // commits while the thread's checkpoint runs comes on top, slowed as the log grows.
    const LIMIT: u64 = 2 * HARD_PAGES as u64 * 4096;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let mut q = bound(&path, OpenMode::Daemon);
    q.set_retention(Retention { keep_done: Duration::from_secs(1), keep_done_max: 1 << 40 });
    fill(&mut q, &path);
    let stop = Arc::new(AtomicBool::new(false));
    let (published, largest) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let publisher = std::thread::spawn({
        let (stop, published, largest) = (stop.clone(), published.clone(), largest.clone());
        let path = path.clone();
        move || {
            let mut client = bound(&path, OpenMode::Client);
            while !stop.load(Ordering::Relaxed) {
                client.publish("other.a", &[b'p'; 200]).unwrap();
                published.fetch_add(1, Ordering::Relaxed);
                largest.fetch_max(log_len(&path), Ordering::Relaxed);
            }
        }
    });
    let deadline = procyard_core::Deadline::after(Duration::from_secs(120));
    while expired(&q) && !deadline.is_expired() {
        // The daemon's loop sleeps until the next step is due (or an event wakes it).
        std::thread::sleep(q.prune.next().saturating_duration_since(std::time::Instant::now()));
        q.prune_step();
        largest.fetch_max(log_len(&path), Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    assert!(!expired(&q), "the prune ended in time");
    let (largest, published) = (largest.load(Ordering::Relaxed), published.load(Ordering::Relaxed));
    eprintln!("log at most {largest} bytes; {published} publishes during the prune");
    assert!(published > 1000, "the client published all along: {published}");
    assert!(largest <= LIMIT, "the log grew to {largest} bytes (limit {LIMIT})");
}

/// Writes `n` done jobs (ids `{name}-…`) in commits of 100 on the daemon's connection.
fn write_jobs(q: &mut SqliteQueue, name: &str, n: usize) {
    for chunk in 0..n / 100 {
        let tx = q.conn.transaction().unwrap();
        for i in 0..100 {
            tx.execute(
                "INSERT INTO jobs (id, task, routing_key, payload, state, published_ms, finished_ms)
                 VALUES (?1, 'mail', 'mail.a', ?2, 2, 1, 1)",
                params![format!("{name}-{chunk}-{i}"), vec![7u8; 300]],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
}

/// Pages in the log now (a `PASSIVE` checkpoint's report, on a connection of its own).
fn log_pages(path: &Path) -> i64 {
    let conn = Connection::open(path).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1)).unwrap()
}

/// A log that could not start again (a reader held it while the daemon wrote) is started
/// again by the thread's `RESTART` once the reader is gone: the next write goes to the log's
/// beginning. While a reader still reads from the log, the `RESTART` gives up after its
/// brief wait and the log goes on growing; the daemon's writes meanwhile are not refused.
#[test]
fn the_threads_restart_starts_a_held_log_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let mut q = bound(&path, OpenMode::Daemon);
    let reader = Connection::open(&path).unwrap();
    reader.execute_batch("BEGIN; SELECT COUNT(*) FROM jobs;").unwrap();
    write_jobs(&mut q, "held", 12_000);
    q._checkpointer.as_ref().unwrap().settle();
    let held = log_pages(&path);
    assert!(held > RESTART_PAGES, "the log held {held} pages");
    write_jobs(&mut q, "still", 100);
    q._checkpointer.as_ref().unwrap().settle();
    assert!(log_pages(&path) > held, "a reader in the log: it grows on");
    reader.execute_batch("COMMIT").unwrap();
    // The reader is gone: the next kick (a commit of the daemon's, the log long) starts the
    // log again; the write after it goes to the log's beginning. The first `RESTART` may
    // come within `RESTART_AGAIN` of the one the reader outlasted: write until it has run.
    let deadline = procyard_core::Deadline::after(Duration::from_secs(30));
    let mut kicks = 0;
    while q._checkpointer.as_ref().unwrap().log.load(Ordering::Relaxed) != 0 {
        assert!(!deadline.is_expired(), "the log was not started again");
        kicks += 1;
        write_jobs(&mut q, &format!("kick-{kicks}"), 100);
        q._checkpointer.as_ref().unwrap().settle();
    }
    write_jobs(&mut q, "after", 100);
    let after = log_pages(&path);
    assert!(after < 50, "the log started again: {after} pages (was {held})");
}

/// Frames in the log of the queue at `path`, from its file's length (no checkpoint run: the
/// file only grows while nobody starts the log again).
fn log_frames(path: &Path) -> u64 {
    log_len(path).saturating_sub(32) / (24 + 4096)
}

/// Publishes from a client until `done` (at most 10,000 publishes of 3,000 bytes: about
/// 7,500 log pages); returns whether it was.
fn publish_until(client: &mut SqliteQueue, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..10_000 {
        if done() {
            return true;
        }
        client.publish("other.a", &[b'p'; 3000]).unwrap();
    }
    false
}

/// The length of the file at `path`.
fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// A client alone checkpoints from `CLIENT_PAGES` (the pages reach the queue file); beside a
/// running daemon (its lock file names it) it leaves that to the daemon's thread: past
/// `CLIENT_PAGES` but short of `HARD_PAGES`, nothing of the log is in the file.
#[test]
fn a_client_checkpoints_only_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("alone.db");
    let mut client = bound(&alone, OpenMode::Client);
    let small = len(&alone);
    let copied = publish_until(&mut client, || len(&alone) > 1000 * 4096);
    assert!(copied, "a lone client copied the log into the file ({small} bytes before)");
    assert!(
        log_frames(&alone) <= u64::try_from(CLIENT_PAGES).unwrap() + 10,
        "and started the log again: {} frames",
        log_frames(&alone)
    );

    let served = dir.path().join("served.db");
    // The daemon's lock, recording this (running) process; no daemon writes, so no thread
    // is kicked: only the client could checkpoint.
    let _lock = super::super::lock::lock(&served).unwrap();
    let mut client = bound(&served, OpenMode::Client);
    let small = len(&served);
    let short_of_hard = u64::try_from(CLIENT_PAGES + (HARD_PAGES - CLIENT_PAGES) / 2).unwrap();
    assert!(publish_until(&mut client, || log_frames(&served) >= short_of_hard));
    assert_eq!(len(&served), small, "beside a daemon the client did not checkpoint");
}
