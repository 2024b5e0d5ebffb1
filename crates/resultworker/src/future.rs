//! [`ResultFuture`]: a job's result, delivered once, to waiters, callbacks and async tasks.
//!
//! The outcome is stored and every waiter, callback and waker is taken under the slot's lock
//! (no lost wake-up), waits loop on the stored outcome (spurious wake-ups are harmless), and
//! a callback registered after the outcome runs at once.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use procyard_core::Deadline;
use serde::de::DeserializeOwned;

use crate::Error;

/// A job's unique key within its [`ResultWorker`](crate::ResultWorker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub(crate) u64);

impl Key {
    /// The key as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A stored outcome: the value's JSON, or why there is none.
pub(crate) type Outcome = Result<Arc<[u8]>, Error>;

pub(crate) type Callback = Box<dyn FnOnce(&Outcome) + Send>;

#[derive(Default)]
struct SlotState {
    outcome: Option<Outcome>,
    callbacks: Vec<Callback>,
    wakers: Vec<Waker>,
}

/// Where one job's outcome lands.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    set: Condvar,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Slot {
    /// Stores the outcome (the first one wins) and wakes everyone; returns whether it was
    /// stored. Callbacks and wakers run after the lock is released.
    pub(crate) fn set(&self, outcome: Outcome) -> bool {
        let (callbacks, wakers, stored) = {
            let mut state = lock(&self.state);
            if state.outcome.is_some() {
                return false;
            }
            state.outcome = Some(outcome);
            let callbacks = std::mem::take(&mut state.callbacks);
            let wakers = std::mem::take(&mut state.wakers);
            (callbacks, wakers, state.outcome.clone())
        };
        // After the lock is released, so that a woken waiter does not find it still held and
        // sleep again on it (the outcome is stored under the lock, which a waiter holds from
        // its check to its wait: none misses this).
        self.set.notify_all();
        for waker in wakers {
            waker.wake();
        }
        if let Some(outcome) = stored {
            for callback in callbacks {
                callback(&outcome);
            }
        }
        true
    }

    pub(crate) fn get(&self) -> Option<Outcome> {
        lock(&self.state).outcome.clone()
    }

    pub(crate) fn wait_deadline(&self, deadline: Option<Deadline>) -> Option<Outcome> {
        let mut state = lock(&self.state);
        loop {
            if let Some(outcome) = &state.outcome {
                return Some(outcome.clone());
            }
            match deadline {
                None => state = self.set.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    if d.is_expired() {
                        return None;
                    }
                    state = self
                        .set
                        .wait_timeout(state, d.remaining())
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    pub(crate) fn on_set(&self, callback: Callback) {
        let outcome = {
            let mut state = lock(&self.state);
            match &state.outcome {
                Some(outcome) => outcome.clone(),
                None => {
                    state.callbacks.push(callback);
                    return;
                }
            }
        };
        callback(&outcome);
    }

    fn poll_waker(&self, waker: &Waker) -> Option<Outcome> {
        let mut state = lock(&self.state);
        if let Some(outcome) = &state.outcome {
            return Some(outcome.clone());
        }
        if !state.wakers.iter().any(|w| w.will_wake(waker)) {
            state.wakers.push(waker.clone());
        }
        None
    }
}

/// The keys of unfinished jobs, shared by a worker's handles, its listener and its futures.
pub(crate) type KeyMap = Mutex<HashMap<u64, Weak<Slot>>>;

pub(crate) fn lock_map(map: &KeyMap) -> MutexGuard<'_, HashMap<u64, Weak<Slot>>> {
    lock(map)
}

/// A job's result, to wait for, poll, await or be called back with.
///
/// Dropping the last future of a job forgets its key (the job still runs; its result is
/// discarded). Clones share the outcome.
pub struct ResultFuture<T> {
    key: Key,
    pub(crate) slot: Arc<Slot>,
    keys: Arc<KeyMap>,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for ResultFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResultFuture")
            .field("key", &self.key)
            .field("is_set", &self.slot.get().is_some())
            .finish()
    }
}

impl<T> Clone for ResultFuture<T> {
    fn clone(&self) -> Self {
        ResultFuture {
            key: self.key,
            slot: Arc::clone(&self.slot),
            keys: Arc::clone(&self.keys),
            _type: PhantomData,
        }
    }
}

fn decode<T: DeserializeOwned>(outcome: &Outcome) -> Result<T, Error> {
    match outcome {
        Ok(bytes) => serde_json::from_slice(bytes)
            .map_err(|source| Error::Decode { source: Arc::new(source) }),
        Err(e) => Err(e.clone()),
    }
}

impl<T: DeserializeOwned> ResultFuture<T> {
    pub(crate) fn new(key: Key, slot: Arc<Slot>, keys: Arc<KeyMap>) -> Self {
        ResultFuture { key, slot, keys, _type: PhantomData }
    }

    /// The job's key (see [`ResultWorker::get_result_future`](crate::ResultWorker::get_result_future)).
    pub fn key(&self) -> Key {
        self.key
    }

    /// Whether the outcome has arrived.
    pub fn is_set(&self) -> bool {
        self.slot.get().is_some()
    }

    /// Blocks until the outcome arrives.
    pub fn wait(&self) -> Result<T, Error> {
        match self.slot.wait_deadline(None) {
            Some(outcome) => decode(&outcome),
            None => Err(Error::Stopped),
        }
    }

    /// Blocks at most `timeout`; `None` if the outcome has not arrived by then.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<T, Error>> {
        self.wait_deadline(Deadline::after(timeout))
    }

    /// Blocks until `deadline`; `None` if the outcome has not arrived by then.
    pub fn wait_deadline(&self, deadline: Deadline) -> Option<Result<T, Error>> {
        self.slot.wait_deadline(Some(deadline)).map(|o| decode(&o))
    }

    /// The outcome if it has arrived; never blocks.
    pub fn try_get(&self) -> Option<Result<T, Error>> {
        self.slot.get().map(|o| decode(&o))
    }

    /// Calls `callback` with the outcome: at once (on this thread) if it has arrived,
    /// otherwise on the listener thread when it does. Keep callbacks short, and do not wait
    /// in one for another future of the same worker: the listener that would deliver it is
    /// the thread running the callback.
    pub fn on_set<F>(&self, callback: F)
    where
        F: FnOnce(Result<T, Error>) + Send + 'static,
    {
        self.slot.on_set(Box::new(move |outcome| callback(decode(outcome))));
    }
}

impl<T> Drop for ResultFuture<T> {
    fn drop(&mut self) {
        let mut keys = lock_map(&self.keys);
        // Under the map lock no one can make a new future from the key, so a count of one
        // means this is the last future of the job.
        if Arc::strong_count(&self.slot) == 1 {
            keys.remove(&self.key.0);
        }
    }
}

impl<T: DeserializeOwned> Future for ResultFuture<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.slot.poll_waker(cx.waker()) {
            Some(outcome) => Poll::Ready(decode(&outcome)),
            None => Poll::Pending,
        }
    }
}

impl<T> Unpin for ResultFuture<T> {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub(crate) fn future(key: u64) -> (ResultFuture<String>, Arc<Slot>, Arc<KeyMap>) {
        let slot = Arc::new(Slot::default());
        let keys: Arc<KeyMap> = Arc::default();
        lock_map(&keys).insert(key, Arc::downgrade(&slot));
        (ResultFuture::new(Key(key), Arc::clone(&slot), Arc::clone(&keys)), slot, keys)
    }

    pub(crate) fn value(s: &str) -> Outcome {
        Ok(serde_json::to_vec(s).unwrap().into())
    }

    #[test]
    fn resultworker_r5_on_set_after_set_fires() {
        let (f, slot, _) = future(1);
        assert!(slot.set(value("hi")));
        let hits = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&hits);
        f.on_set(move |r| {
            assert_eq!(r.unwrap(), "hi");
            h.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert!(!slot.set(value("again")), "the first outcome wins");
        assert_eq!(f.try_get().unwrap().unwrap(), "hi");
    }

    #[test]
    fn resultworker_r5_no_lost_wakeup_under_races() {
        for round in 0..200 {
            let (f, slot, _) = future(round);
            let waiters: Vec<_> = (0..3)
                .map(|_| {
                    let f = f.clone();
                    std::thread::spawn(move || f.wait_timeout(Duration::from_secs(20)))
                })
                .collect();
            let fired = Arc::new(AtomicUsize::new(0));
            let fired2 = Arc::clone(&fired);
            f.on_set(move |_| {
                fired2.fetch_add(1, Ordering::SeqCst);
            });
            slot.set(value("x"));
            for w in waiters {
                assert_eq!(w.join().unwrap().unwrap().unwrap(), "x");
            }
            assert_eq!(fired.load(Ordering::SeqCst), 1);
        }
    }

    #[test]
    fn resultworker_r5_timeout_is_honoured() {
        let (f, _slot, _) = future(1);
        let start = std::time::Instant::now();
        assert!(f.wait_timeout(Duration::from_millis(30)).is_none());
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert!(f.try_get().is_none());
    }

    #[test]
    fn resultworker_r6_last_drop_forgets_the_key() {
        let (f, _slot, keys) = future(9);
        drop(_slot);
        let g = f.clone();
        drop(f);
        assert_eq!(lock_map(&keys).len(), 1, "a clone still holds the key");
        drop(g);
        assert!(lock_map(&keys).is_empty());
    }

    #[test]
    fn decode_mismatch_is_typed() {
        let (f, slot, _) = future(1);
        slot.set(Ok(b"[1,2]".to_vec().into()));
        assert!(matches!(f.wait(), Err(Error::Decode { .. })));
    }

    #[test]
    fn async_poll_completes() {
        struct Flag(AtomicUsize);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (mut f, slot, _) = future(1);
        let flag = Arc::new(Flag(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        slot.set(value("done"));
        assert_eq!(flag.0.load(Ordering::SeqCst), 1);
        match Pin::new(&mut f).poll(&mut cx) {
            Poll::Ready(r) => assert_eq!(r.unwrap(), "done"),
            Poll::Pending => panic!("still pending after set"),
        }
    }
}
