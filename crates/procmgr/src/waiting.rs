//! Waiting on many [`Handle`]s at once: [`wait_all`], [`wait_all_timeout`], [`wait_any`],
//! [`wait_any_timeout`] and [`as_completed`] — the same shape as procyard-resultworker's.
//!
//! Handles of one scheduler (the usual case) are waited for by driving that scheduler from
//! this thread, as [`Handle::wait`] does; handles of several schedulers are awaited as
//! futures (each scheduler then gets its helper thread).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Duration;

use procyard_core::Deadline;

use crate::scheduler::State;
use crate::{Handle, Outcome};

/// Waits for every handle; the outcomes in the same order.
pub fn wait_all(handles: &[Handle]) -> Vec<Outcome> {
    handles.iter().map(Handle::wait).collect()
}

/// Waits at most `timeout` for every handle; the outcomes in the same order, or `None` if some
/// task has not completed by then (its handle still gets the outcome when it does).
pub fn wait_all_timeout(handles: &[Handle], timeout: Duration) -> Option<Vec<Outcome>> {
    let deadline = Deadline::after(timeout);
    handles.iter().map(|h| h.wait_deadline(deadline)).collect()
}

/// Waits until one of the handles has its outcome; returns its index and outcome (the lowest
/// index among those done). `None` only for an empty slice.
pub fn wait_any(handles: &[Handle]) -> Option<(usize, Outcome)> {
    wait_any_deadline(handles, None)
}

/// [`wait_any`], giving up after `timeout` (`None` then).
pub fn wait_any_timeout(handles: &[Handle], timeout: Duration) -> Option<(usize, Outcome)> {
    wait_any_deadline(handles, Some(Deadline::after(timeout)))
}

fn first_done<'a>(handles: impl Iterator<Item = (usize, &'a Handle)>) -> Option<(usize, Outcome)> {
    handles.into_iter().find_map(|(i, h)| h.peek().map(|o| (i, o)))
}

fn wait_any_deadline(handles: &[Handle], deadline: Option<Deadline>) -> Option<(usize, Outcome)> {
    wait_any_of(handles, &(0..handles.len()).collect::<Vec<_>>(), deadline)
}

/// Waits until one of `handles[i]` for `i` in `among` is done.
fn wait_any_of(
    handles: &[Handle],
    among: &[usize],
    deadline: Option<Deadline>,
) -> Option<(usize, Outcome)> {
    let first = handles.get(*among.first()?)?;
    let pick = || first_done(among.iter().map(|&i| (i, &handles[i])));
    let one_scheduler =
        among.iter().all(|&i| Arc::ptr_eq(&handles[i].scheduler.shared, &first.scheduler.shared));
    if one_scheduler {
        let done = |_: &State| among.iter().any(|&i| handles[i].is_done());
        first.scheduler.drive_until(&done, deadline);
        return pick();
    }
    // Several schedulers: poll each handle as a future; a completion unparks this thread.
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        for &i in among {
            if let Poll::Ready(outcome) = Pin::new(&mut handles[i].clone()).poll(&mut cx) {
                return Some((i, outcome));
            }
        }
        match deadline {
            None => std::thread::park(),
            Some(d) if d.is_expired() => return pick(),
            Some(d) => std::thread::park_timeout(d.remaining()),
        }
    }
}

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// The outcomes as the tasks complete, each with the index of its handle:
///
/// ```
/// use procyard_procmgr::{Command, Scheduler, Strategy, Task, as_completed};
///
/// let scheduler = Scheduler::new(Strategy::Simple)?;
/// let handles = ["exit 3", "exit 0"]
///     .map(|script| scheduler.schedule(Task::command(Command::shell(script))));
/// let handles = handles.into_iter().collect::<Result<Vec<_>, _>>()?;
/// let mut seen: Vec<usize> = as_completed(&handles).map(|(index, _outcome)| index).collect();
/// seen.sort();
/// assert_eq!(seen, [0, 1]);
/// # Ok::<(), procyard_procmgr::Error>(())
/// ```
pub fn as_completed(handles: &[Handle]) -> AsCompleted<'_> {
    AsCompleted { handles, left: (0..handles.len()).collect() }
}

/// The iterator of [`as_completed`]: `(index, outcome)` pairs as the tasks complete (among
/// those completed between two calls, the lowest index first); it ends after the last one.
#[derive(Debug)]
pub struct AsCompleted<'a> {
    handles: &'a [Handle],
    left: Vec<usize>,
}

impl AsCompleted<'_> {
    /// The next outcome within `timeout`; `None` if no other task completed by then (or none
    /// is left).
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<(usize, Outcome)> {
        self.next_by(Some(Deadline::after(timeout)))
    }

    fn next_by(&mut self, deadline: Option<Deadline>) -> Option<(usize, Outcome)> {
        let (index, outcome) = wait_any_of(self.handles, &self.left, deadline)?;
        self.left.retain(|&i| i != index);
        Some((index, outcome))
    }
}

impl Iterator for AsCompleted<'_> {
    type Item = (usize, Outcome);

    fn next(&mut self) -> Option<(usize, Outcome)> {
        self.next_by(None)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left.len(), Some(self.left.len()))
    }
}
