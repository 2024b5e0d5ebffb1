//! [`Handle`]: one scheduled task's outcome — wait for it (by reference, from any clone),
//! poll it, `.await` it, and read the messages it sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use procyard_core::Deadline;
use serde::de::DeserializeOwned;

use crate::scheduler::{Slot, State, lock};
use serde_json::Value;

use crate::{Error, Outcome, Result, Scheduler, Task};

/// The result of one scheduled task: wait for it, poll it, or `.await` it.
///
/// Cheap to clone (clones share the outcome); waiting takes `&self`, so
/// `for h in &handles { h.wait(); }` works. Many at once: [`wait_all`](crate::wait_all),
/// [`wait_any`](crate::wait_any), [`as_completed`](crate::as_completed).
#[derive(Clone)]
pub struct Handle {
    pub(crate) slot: Arc<Slot>,
    pub(crate) scheduler: Scheduler,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("outcome", &self.peek()).finish()
    }
}

impl Handle {
    pub(crate) fn new(slot: Arc<Slot>, scheduler: Scheduler) -> Handle {
        Handle { slot, scheduler }
    }

    pub(crate) fn peek(&self) -> Option<Outcome> {
        lock(&self.slot.inner).outcome.clone()
    }

    pub(crate) fn is_done(&self) -> bool {
        lock(&self.slot.inner).outcome.is_some()
    }

    /// The messages the task sent so far ([`Endpoint::send`](crate::Endpoint::send)), each
    /// deserialized into `T` — kept when the task was scheduled with
    /// [`schedule`](Scheduler::schedule) (with
    /// [`schedule_with_messages`](Scheduler::schedule_with_messages) they go to the handler
    /// instead). A message that is no `T` is [`Error::Decode`].
    pub fn messages<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let inner = lock(&self.slot.inner);
        inner
            .messages
            .iter()
            .map(|m| {
                T::deserialize(m).map_err(|source| Error::Decode { what: "a message", source })
            })
            .collect()
    }

    /// Blocks until the task completes (from any clone of the handle, any thread).
    pub fn wait(&self) -> Outcome {
        let slot = Arc::clone(&self.slot);
        let done = move |_: &State| lock(&slot.inner).outcome.is_some();
        self.scheduler.drive_until(&done, None);
        self.peek().unwrap_or(Outcome::Lost { reason: "no outcome recorded".to_owned() })
    }

    /// Waits at most `timeout`; `None` if the task has not completed by then.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Outcome> {
        self.wait_deadline(Deadline::after(timeout))
    }

    /// Waits until `deadline`; `None` if the task has not completed by then.
    pub fn wait_deadline(&self, deadline: Deadline) -> Option<Outcome> {
        let slot = Arc::clone(&self.slot);
        let done = move |_: &State| lock(&slot.inner).outcome.is_some();
        self.scheduler.drive_until(&done, Some(deadline));
        self.peek()
    }

    /// The outcome if the task has completed; never blocks.
    pub fn try_result(&self) -> Option<Outcome> {
        if !self.is_done() {
            self.scheduler.drive_now();
        }
        self.peek()
    }
}

/// Scheduling: what gives a [`Handle`].
impl Scheduler {
    /// Queues `task`; it starts as soon as the strategy allows. The messages it sends are
    /// kept in its handle ([`Handle::messages`]).
    pub fn schedule(&self, task: Task) -> Result<Handle> {
        Ok(Handle::new(self.enqueue(task, None)?, self.clone()))
    }

    /// Like [`schedule`](Scheduler::schedule), with `on_message` called (in the driving
    /// thread) for each message of the task, in order, before the handle completes.
    pub fn schedule_with_messages<M>(&self, task: Task, on_message: M) -> Result<Handle>
    where
        M: FnMut(Value) + Send + 'static,
    {
        Ok(Handle::new(self.enqueue(task, Some(Box::new(on_message)))?, self.clone()))
    }
}

impl Future for Handle {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        if let Some(o) = self.try_result() {
            return Poll::Ready(o);
        }
        {
            let mut inner = lock(&self.slot.inner);
            if let Some(o) = inner.outcome.clone() {
                return Poll::Ready(o);
            }
            inner.waker = Some(cx.waker().clone());
        }
        self.scheduler.ensure_helper();
        Poll::Pending
    }
}
