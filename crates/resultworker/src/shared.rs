//! What a [`ResultWorker`](crate::ResultWorker)'s handles and its listener thread share: the
//! futures' key map, the link to the worker's request pipe (with the jobs waiting for a
//! worker, and the stop), and a status for the handles to read.
//!
//! Lock order, where two are held: `link`, then the key map. No lock is held while a future
//! is set (its callbacks may take them).

use std::collections::HashSet;
use std::fs::File;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use procyard_core::Pid;
use procyard_core::mio::Waker;

use crate::Error;
use crate::config::Config;
use crate::future::{KeyMap, Slot, lock_map};

/// Locks `m`, whether or not a panicking thread poisoned it (every critical section here
/// leaves the data consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The application's side of the request pipe.
#[derive(Default)]
pub(crate) struct Link {
    /// The request pipe of the running worker, if any.
    pub(crate) file: Option<File>,
    /// Requests submitted while no worker runs (key, payload), for the next one.
    pub(crate) backlog: Vec<(u64, Vec<u8>)>,
}

/// What the handles show of the worker.
#[derive(Default)]
pub(crate) struct Status {
    pub(crate) worker_pid: Option<Pid>,
    pub(crate) restarts: u64,
}

/// The listener thread, for `stop` to join (and to know when it runs on it).
#[derive(Default)]
pub(crate) struct Thread {
    pub(crate) handle: Mutex<Option<JoinHandle<()>>>,
    pub(crate) id: OnceLock<ThreadId>,
}

pub(crate) struct Shared {
    /// The process that made the instance: a forked child sees it as stopped.
    pub(crate) owner: Pid,
    pub(crate) config: Config,
    pub(crate) keys: Arc<KeyMap>,
    pub(crate) next_key: AtomicU64,
    pub(crate) link: Mutex<Link>,
    /// The grace of the stop that was asked for (the first one counts). Set under the
    /// `link` lock, so that a submission sees either no stop or a drained backlog; read
    /// without it by the listener, which must not contend with submissions.
    pub(crate) stop: OnceLock<Duration>,
    pub(crate) status: Mutex<Status>,
    /// Wakes the listener (a stop).
    pub(crate) waker: Waker,
    pub(crate) thread: Thread,
}

impl Shared {
    /// Fresh state for an instance owned by this process, nothing submitted yet.
    pub(crate) fn new(config: Config, waker: Waker) -> Shared {
        Shared {
            owner: Pid::current(),
            config,
            keys: Arc::default(),
            next_key: AtomicU64::new(1),
            link: Mutex::default(),
            stop: OnceLock::new(),
            status: Mutex::default(),
            waker,
            thread: Thread::default(),
        }
    }

    pub(crate) fn is_owner(&self) -> bool {
        Pid::current() == self.owner
    }

    /// The grace of the stop asked for, if one was.
    pub(crate) fn stop_grace(&self) -> Option<Duration> {
        self.stop.get().copied()
    }

    /// Removes `keys` from the map and fails their futures with `error` (outside the lock:
    /// callbacks may drop futures, which takes the lock).
    pub(crate) fn fail(&self, keys: impl IntoIterator<Item = u64>, error: &Error) {
        let slots: Vec<Arc<Slot>> = {
            let mut map = lock_map(&self.keys);
            keys.into_iter().filter_map(|k| map.remove(&k)).filter_map(|w| w.upgrade()).collect()
        };
        for slot in slots {
            slot.set(Err(error.clone()));
        }
    }

    /// Fails every pending future.
    pub(crate) fn fail_all(&self, error: &Error) {
        let keys: Vec<u64> = lock_map(&self.keys).keys().copied().collect();
        self.fail(keys, error);
    }

    /// Fails, with `error`, the jobs waiting in the backlog.
    pub(crate) fn fail_backlog(&self, error: &Error) {
        let backlog: Vec<u64> = lock(&self.link).backlog.drain(..).map(|(k, _)| k).collect();
        self.fail(backlog, error);
    }

    /// The worker is gone: forgets its request pipe and fails, with `error`, every job that
    /// was sent to it, but not the backlog (those go to the next worker). The keys are taken
    /// under the link's lock, which `submit` holds while it adds a key, so a job submitted
    /// meanwhile is either failed here or goes to the backlog, never both (failed here, it
    /// would still run on the next worker, and its result be discarded).
    pub(crate) fn fail_sent(&self, error: &Error) {
        let keys: Vec<u64> = {
            let mut link = lock(&self.link);
            link.file = None;
            let backlog: HashSet<u64> = link.backlog.iter().map(|(k, _)| *k).collect();
            lock_map(&self.keys).keys().copied().filter(|k| !backlog.contains(k)).collect()
        };
        self.fail(keys, error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::future::{Key, ResultFuture};
    use procyard_core::mio::{Poll, Token};

    pub(crate) fn shared() -> Arc<Shared> {
        let poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), Token(0)).unwrap();
        Arc::new(Shared::new(Config::default(), waker))
    }

    fn pending(shared: &Shared, key: u64) -> ResultFuture<String> {
        let slot = Arc::new(Slot::default());
        lock_map(&shared.keys).insert(key, Arc::downgrade(&slot));
        ResultFuture::new(Key(key), slot, Arc::clone(&shared.keys))
    }

    #[test]
    fn resultworker_r2_worker_loss_keeps_jobs_submitted_after_it() {
        let shared = shared();
        let sent = pending(&shared, 1);
        // Submitted once the worker was gone: in the backlog, for the next worker.
        let later = pending(&shared, 2);
        lock(&shared.link).backlog.push((2, Vec::new()));
        shared.fail_sent(&Error::WorkerLost);
        assert!(matches!(sent.try_get(), Some(Err(Error::WorkerLost))));
        assert!(later.try_get().is_none());
        assert_eq!(lock_map(&shared.keys).keys().copied().collect::<Vec<_>>(), [2]);
        assert!(lock(&shared.link).file.is_none());
        shared.fail_backlog(&Error::Stopped);
        assert!(matches!(later.try_get(), Some(Err(Error::Stopped))));
        assert!(lock_map(&shared.keys).is_empty());
    }
}
