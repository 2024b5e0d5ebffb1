//! Waiting on many futures at once: [`wait_all`], [`wait_all_timeout`], [`wait_any`],
//! [`wait_any_timeout`], and [`as_completed`] — the same shape as procyard-procmgr's.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use procyard_core::Deadline;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::future::{ResultFuture, lock};

/// Waits for every future; the outcomes in the same order. Always a `Vec`, whatever the
/// timing.
pub fn wait_all<T: DeserializeOwned>(futures: &[ResultFuture<T>]) -> Vec<Result<T, Error>> {
    futures.iter().map(ResultFuture::wait).collect()
}

/// Waits until one of the futures has its outcome; returns its index and outcome (the lowest
/// index among those already set). Always this pair, whatever the timing; `None` only for
/// an empty slice.
pub fn wait_any<T: DeserializeOwned>(
    futures: &[ResultFuture<T>],
) -> Option<(usize, Result<T, Error>)> {
    wait_any_deadline(futures, None)
}

/// Like [`wait_any`], giving up at `deadline` (`None`: wait forever); `None` when the deadline
/// passed or the slice is empty.
pub fn wait_any_deadline<T: DeserializeOwned>(
    futures: &[ResultFuture<T>],
    deadline: Option<Deadline>,
) -> Option<(usize, Result<T, Error>)> {
    if futures.is_empty() {
        return None;
    }
    let signal = Arc::new((Mutex::new(false), Condvar::new()));
    for future in futures {
        let signal = Arc::clone(&signal);
        // Registered before checking, so a result set in between is not missed.
        future.slot.on_set(Box::new(move |_| {
            let (flag, cond) = &*signal;
            *lock(flag) = true;
            cond.notify_all();
        }));
    }
    let (flag, cond) = &*signal;
    let mut fired = lock(flag);
    loop {
        if let Some(found) =
            futures.iter().enumerate().find_map(|(i, f)| f.try_get().map(|r| (i, r)))
        {
            return Some(found);
        }
        // The flag only says "look again"; the loop above decides.
        if *fired {
            *fired = false;
            continue;
        }
        match deadline {
            None => fired = cond.wait(fired).unwrap_or_else(|p| p.into_inner()),
            Some(d) => {
                if d.is_expired() {
                    return None;
                }
                fired =
                    cond.wait_timeout(fired, d.remaining()).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
    }
}

/// Waits at most `timeout` for every future; the outcomes in the same order, or `None` if
/// some have not arrived by then (the futures still hold them when they do).
pub fn wait_all_timeout<T: DeserializeOwned>(
    futures: &[ResultFuture<T>],
    timeout: Duration,
) -> Option<Vec<Result<T, Error>>> {
    let deadline = Deadline::after(timeout);
    futures.iter().map(|f| f.wait_deadline(deadline)).collect()
}

/// [`wait_any`], giving up after `timeout`.
pub fn wait_any_timeout<T: DeserializeOwned>(
    futures: &[ResultFuture<T>],
    timeout: Duration,
) -> Option<(usize, Result<T, Error>)> {
    wait_any_deadline(futures, Some(Deadline::after(timeout)))
}

/// The outcomes in the order they arrive, each with the index of its future:
///
/// ```no_run
/// # fn demo(futures: Vec<procyard_resultworker::ResultFuture<u64>>) {
/// for (index, outcome) in procyard_resultworker::as_completed(&futures) {
///     println!("job {index}: {outcome:?}");
/// }
/// # }
/// ```
pub fn as_completed<T: DeserializeOwned>(futures: &[ResultFuture<T>]) -> AsCompleted<'_, T> {
    let (tx, rx) = mpsc::channel();
    for (index, future) in futures.iter().enumerate() {
        let tx = tx.clone();
        future.slot.on_set(Box::new(move |_| {
            let _ = tx.send(index);
        }));
    }
    AsCompleted { futures, arrived: rx, left: futures.len() }
}

/// The iterator of [`as_completed`]: `(index, outcome)` pairs in the order the outcomes
/// arrive; it ends after the last one.
#[derive(Debug)]
pub struct AsCompleted<'a, T> {
    futures: &'a [ResultFuture<T>],
    arrived: mpsc::Receiver<usize>,
    left: usize,
}

impl<T: DeserializeOwned> AsCompleted<'_, T> {
    /// The next outcome to arrive within `timeout`; `None` if none did (or none is left).
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<(usize, Result<T, Error>)> {
        if self.left == 0 {
            return None;
        }
        let index = self.arrived.recv_timeout(timeout).ok()?;
        self.take(index)
    }

    fn take(&mut self, index: usize) -> Option<(usize, Result<T, Error>)> {
        self.left -= 1;
        let outcome = self.futures[index].try_get().unwrap_or(Err(Error::Stopped));
        Some((index, outcome))
    }
}

impl<T: DeserializeOwned> Iterator for AsCompleted<'_, T> {
    type Item = (usize, Result<T, Error>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        // Every future's callback holds a sender: the channel stays open until each fired.
        let index = self.arrived.recv().ok()?;
        self.take(index)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::future::tests::{future, value};

    #[test]
    fn resultworker_r8_wait_any_and_all_have_one_shape() {
        let (a, sa, _) = future(1);
        let (b, sb, _) = future(2);
        let futures = vec![a, b];
        assert!(
            wait_any_deadline(&futures, Some(Deadline::after(Duration::from_millis(5)))).is_none()
        );
        sb.set(value("b"));
        let (i, r) = wait_any(&futures).unwrap();
        assert_eq!((i, r.unwrap()), (1, "b".to_string()));
        sa.set(Err(Error::WorkerLost));
        let all = wait_all(&futures);
        assert_eq!(all.len(), 2);
        assert!(matches!(all[0], Err(Error::WorkerLost)));
        assert!(wait_any::<String>(&[]).is_none());
    }

    #[test]
    fn resultworker_hardening_as_completed_in_arrival_order() {
        let (a, sa, _) = future(1);
        let (b, sb, _) = future(2);
        let (c, sc, _) = future(3);
        let futures = vec![a, b, c];
        sc.set(value("c"));
        let mut order = as_completed(&futures);
        assert_eq!(order.next().map(|(i, r)| (i, r.unwrap())), Some((2, "c".to_string())));
        assert!(order.next_timeout(Duration::from_millis(5)).is_none());
        sa.set(value("a"));
        sb.set(Err(Error::WorkerLost));
        let rest: Vec<usize> = order.map(|(i, _)| i).collect();
        assert_eq!(rest, [0, 1]);
        assert!(wait_all_timeout(&futures, Duration::ZERO).is_some());
        let (d, _sd, _) = future(4);
        assert!(wait_all_timeout(std::slice::from_ref(&d), Duration::from_millis(5)).is_none());
        assert!(wait_any_timeout(&[d], Duration::from_millis(5)).is_none());
    }
}
