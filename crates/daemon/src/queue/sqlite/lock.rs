//! The daemon's lock on a queue file: an `flock` on `<file>.lock`, which names its holder
//! (pid, start time, boot) so that a refused start can tell a live daemon from a dead one's
//! last child.
//!
//! The kernel drops an `flock` when the last descriptor of it closes, and a child the daemon
//! was starting holds a copy from `clone` until its `exec` closes it (close-on-exec). A daemon
//! SIGKILLed in that window leaves the lock held a moment after its death: under load, long
//! enough (over 100 ms was seen) for the next daemon's start to be refused. So a start that
//! finds the lock held by a process that no longer runs waits for it, up to
//! [`LEFTOVER_WAIT`]; one held by a running daemon is refused at once.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use procyard_core::{Deadline, FileLock, ProcessIdentity};

use crate::{Error, Result};

/// How long a start waits for a lock whose recorded holder no longer runs.
pub(crate) const LEFTOVER_WAIT: Duration = Duration::from_secs(5);

/// The lock file that marks the daemon serving `queue`.
pub fn lock_path(queue: &Path) -> PathBuf {
    let mut p = queue.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Takes the daemon lock of the queue at `path` ([`Error::AlreadyRunning`] when a running
/// daemon holds it) and records this process in it. The kernel drops it when the daemon dies,
/// however it dies.
pub(crate) fn lock(path: &Path) -> Result<FileLock> {
    lock_within(path, LEFTOVER_WAIT)
}

fn lock_within(path: &Path, leftover_wait: Duration) -> Result<FileLock> {
    let lock_file = lock_path(path);
    let deadline = Deadline::after(leftover_wait);
    let mut pause = Duration::from_millis(1);
    let mut waiting = false;
    loop {
        match FileLock::try_exclusive(&lock_file) {
            Ok(Some(lock)) => {
                record_holder(&lock);
                return Ok(lock);
            }
            Ok(None) => {}
            Err(e) => return Err(Error::process(format!("lock {}", lock_file.display()), e)),
        }
        let refused = || Error::AlreadyRunning { queue: path.to_owned(), lock: lock_file.clone() };
        // No holder recorded (a daemon of an older version, or one between its lock and the
        // record): taken for a running daemon.
        let Some(holder) = read_holder(&lock_file) else { return Err(refused()) };
        if holder.is_running().unwrap_or(true) || deadline.is_expired() {
            return Err(refused());
        }
        if !waiting {
            waiting = true;
            tracing::info!(
                lock = %lock_file.display(),
                pid = %holder.pid,
                "the daemon that held the queue's lock is gone and a process it was starting still holds it; waiting for it to let go (up to {leftover_wait:?})"
            );
        }
        std::thread::sleep(pause.min(deadline.remaining()));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Writes this process's identity into the lock file (best effort: without it, a later start
/// refused by a leftover holder does not wait).
fn record_holder(lock: &FileLock) {
    let written = ProcessIdentity::current()
        .map_err(|e| e.to_string())
        .and_then(|me| serde_json::to_vec(&me).map_err(|e| e.to_string()))
        .and_then(|mut text| {
            text.push(b'\n');
            let file = lock.file();
            file.set_len(0).map_err(|e| e.to_string())?;
            file.write_all_at(&text, 0).map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::warn!(lock = %lock.path().display(), error = %e, "unable to record this daemon in its lock file");
    }
}

/// Whether a running daemon serves the queue at `queue`: its lock file names a holder that
/// runs. Without a record (none yet, or a daemon of an older version): no.
pub(super) fn holder_runs(queue: &Path) -> bool {
    read_holder(&lock_path(queue)).is_some_and(|h| h.is_running().unwrap_or(false))
}

/// The holder recorded in the lock file, if one is.
fn read_holder(lock_file: &Path) -> Option<ProcessIdentity> {
    let text = std::fs::read(lock_file).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    use procyard_core::Pid;

    /// A lock held by a process other than the recorded (dead) holder is waited for and taken
    /// once it is let go; a lock whose recorded holder runs is refused at once.
    #[test]
    fn a_dead_holders_leftover_is_waited_for_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let queue = dir.path().join("q.db");
        let held = FileLock::try_exclusive(lock_path(&queue)).unwrap().unwrap();
        // Recorded: this process, running. Refused without waiting.
        record_holder(&held);
        let t0 = std::time::Instant::now();
        assert!(matches!(
            lock_within(&queue, Duration::from_secs(30)),
            Err(Error::AlreadyRunning { .. })
        ));
        assert!(t0.elapsed() < Duration::from_secs(10), "a live holder is refused at once");

        // Recorded: a process that is gone (pid 1's identity with another start time).
        let gone = ProcessIdentity {
            pid: Pid::from_raw(1).unwrap(),
            start_time: u64::MAX,
            boot_id: procyard_core::boot_id().to_owned(),
        };
        std::fs::write(lock_path(&queue), serde_json::to_vec(&gone).unwrap()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                tx.send(()).unwrap();
                lock_within(&queue, Duration::from_secs(30))
            })
        };
        rx.recv().unwrap();
        let kept_waiting =
            !procyard_core::testkit::try_wait_for(Duration::from_millis(200), || {
                waiter.is_finished()
            });
        assert!(kept_waiting, "a start waits while the leftover holds the lock");
        drop(held);
        let lock = waiter.join().unwrap().expect("taken once the leftover let go");
        let me = read_holder(&lock_path(&queue)).expect("holder recorded");
        assert_eq!(me, ProcessIdentity::current().unwrap());
        drop(lock);

        // Still held past the wait: refused.
        let held = FileLock::try_exclusive(lock_path(&queue)).unwrap().unwrap();
        std::fs::write(lock_path(&queue), serde_json::to_vec(&gone).unwrap()).unwrap();
        assert!(matches!(
            lock_within(&queue, Duration::from_millis(50)),
            Err(Error::AlreadyRunning { .. })
        ));
        drop(held);
    }
}
