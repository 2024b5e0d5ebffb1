//! [`Scheduler`]: the strategy level over a [`ProcessManager`]: queueing, throttling, result
//! [`Handle`]s that are also futures, `join`, and shutdown.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use procyard_core::Deadline;
use serde_json::Value;

use crate::task::TaskKind;
use crate::{Error, Outcome, ProcessManager, Result, Task, WakeHandle};

/// How many tasks a [`Scheduler`] runs at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Every task starts at once, in a child of its own.
    Simple,
    /// At most this many children at once (0 is taken as 1); the rest wait in order.
    Throttled(usize),
}

impl Default for Strategy {
    /// `Throttled(number of cores)`.
    fn default() -> Strategy {
        Strategy::Throttled(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl Strategy {
    fn limit(self) -> usize {
        match self {
            Strategy::Simple => usize::MAX,
            Strategy::Throttled(n) => n.max(1),
        }
    }
}

pub(crate) type MessageHandler = Box<dyn FnMut(Value) + Send>;

struct Queued {
    task: Task,
    on_message: Option<MessageHandler>,
    slot: Arc<Slot>,
}

/// Where one task's outcome lands, with the messages it sent when nobody handles them.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) inner: Mutex<SlotInner>,
}

#[derive(Default)]
pub(crate) struct SlotInner {
    pub(crate) outcome: Option<Outcome>,
    pub(crate) waker: Option<std::task::Waker>,
    /// The task's messages, kept when it was scheduled without a message handler.
    pub(crate) messages: Vec<Value>,
}

pub(crate) struct State {
    queue: VecDeque<Queued>,
    running: usize,
    unfinished: usize,
    accepting: bool,
    driving: bool,
    stopping: bool,
    helper: bool,
    /// Threads blocked on `Shared::cond` (counted under the lock): with none, a change of state
    /// needs no `futex` wake-up.
    waiting: usize,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    manager: Mutex<ProcessManager>,
    waker: WakeHandle,
    limit: usize,
}

/// The number of threads of this process, for the early refusal of closures in `schedule`
/// (the fork itself checks again, in `procyard_core::fork`).
fn thread_count() -> Result<usize> {
    procyard_core::fork::thread_count()
        .map_err(|source| Error::Spawn { task: "closure".into(), source })
}

/// Lock a mutex even if a panicking thread poisoned it: the state stays consistent because
/// every critical section here is a few plain assignments.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs tasks in child processes under a [`Strategy`]. Cheap to clone; usable from any
/// thread.
///
/// The scheduler has no thread of its own: whichever thread waits (a [`Handle`](crate::Handle), [`join`]) or
/// schedules drives the event loop for everybody, one at a time, so in a single-threaded
/// program closure tasks fork soundly. A handle awaited as a future with nobody else waiting
/// starts a helper thread that drives until the work is done; while it runs the process is
/// threaded, so `schedule` refuses closures ([`Error::NotSingleThreaded`]) and a closure
/// already queued ends as [`Outcome::Lost`] ("not started: …"). Do not wait on the scheduler
/// from inside a message handler: handlers run in the driving thread.
///
/// [`join`]: Scheduler::join
#[derive(Clone)]
pub struct Scheduler {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.shared.state);
        f.debug_struct("Scheduler")
            .field("queued", &st.queue.len())
            .field("running", &st.running)
            .field("limit", &self.shared.limit)
            .finish()
    }
}

impl Scheduler {
    /// A scheduler with its own [`ProcessManager`].
    pub fn new(strategy: Strategy) -> Result<Scheduler> {
        let manager = ProcessManager::new()?;
        let waker = manager.waker();
        Ok(Scheduler {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    running: 0,
                    unfinished: 0,
                    accepting: true,
                    driving: false,
                    stopping: false,
                    helper: false,
                    waiting: 0,
                }),
                cond: Condvar::new(),
                manager: Mutex::new(manager),
                waker,
                limit: strategy.limit(),
            }),
        })
    }

    /// Queues `task` (see `schedule`); the slot its outcome lands in.
    pub(crate) fn enqueue(
        &self,
        task: Task,
        on_message: Option<MessageHandler>,
    ) -> Result<Arc<Slot>> {
        if matches!(task.kind, TaskKind::Closure(_)) {
            let threads = thread_count()?;
            if threads > 1 {
                return Err(Error::NotSingleThreaded { threads });
            }
        }
        let slot = Arc::new(Slot::default());
        let driving = {
            let mut st = lock(&self.shared.state);
            if !st.accepting {
                return Err(Error::ShutDown);
            }
            st.queue.push_back(Queued { task, on_message, slot: slot.clone() });
            st.unfinished += 1;
            st.driving
        };
        if driving {
            self.shared.waker.wakeup();
        } else if let Ok(mut manager) = self.shared.manager.try_lock() {
            self.fill(&mut manager);
        } else {
            self.shared.waker.wakeup();
        }
        Ok(slot)
    }

    /// Starts queued tasks while the strategy allows.
    fn fill(&self, manager: &mut ProcessManager) {
        loop {
            let queued = {
                let mut st = lock(&self.shared.state);
                if st.running >= self.shared.limit {
                    return;
                }
                let Some(queued) = st.queue.pop_front() else { return };
                st.running += 1;
                queued
            };
            let Queued { task, on_message, slot } = queued;
            let on_message = on_message.unwrap_or_else(|| {
                let slot = Arc::clone(&slot);
                Box::new(move |message| lock(&slot.inner).messages.push(message))
            });
            let shared = Arc::clone(&self.shared);
            let done_slot = slot.clone();
            let on_complete = move |outcome: Outcome| shared.complete(&done_slot, outcome);
            let started = manager.create_process_with_messages(task, on_message, on_complete);
            if let Err(e) = started {
                let reason = format!("not started: {}", procyard_core::report(&e));
                self.shared.complete(&slot, Outcome::Lost { reason });
            }
        }
    }

    /// Drives the event loop until `done` holds or `deadline` passes; whether `done` held.
    pub(crate) fn drive_until(
        &self,
        done: &dyn Fn(&State) -> bool,
        deadline: Option<Deadline>,
    ) -> bool {
        let shared = &self.shared;
        let mut st = lock(&shared.state);
        loop {
            if done(&st) {
                return true;
            }
            if deadline.is_some_and(Deadline::is_expired) {
                return false;
            }
            if !st.driving && !st.stopping {
                st.driving = true;
                drop(st);
                {
                    let mut manager = lock(&shared.manager);
                    self.fill(&mut manager);
                    if !done(&lock(&shared.state)) {
                        let timeout = deadline.map(Deadline::remaining);
                        if let Err(e) = manager.step_timeout(timeout) {
                            tracing::warn!(
                                "procyard-procmgr: scheduler event loop: {}",
                                procyard_core::Report(&e)
                            );
                        }
                        self.fill(&mut manager);
                    }
                }
                st = lock(&shared.state);
                st.driving = false;
                shared.notify(&st);
            } else {
                st.waiting += 1;
                st = match deadline {
                    None => shared.cond.wait(st).unwrap_or_else(|e| e.into_inner()),
                    Some(d) => {
                        shared
                            .cond
                            .wait_timeout(st, d.remaining())
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                };
                st.waiting -= 1;
            }
        }
    }

    /// One non-blocking turn of the event loop, if no other thread is driving.
    pub(crate) fn drive_now(&self) {
        {
            let mut st = lock(&self.shared.state);
            if st.driving || st.stopping {
                return;
            }
            st.driving = true;
        }
        {
            let mut manager = lock(&self.shared.manager);
            self.fill(&mut manager);
            if let Err(e) = manager.step_timeout(Some(Duration::ZERO)) {
                tracing::warn!(
                    "procyard-procmgr: scheduler event loop: {}",
                    procyard_core::Report(&e)
                );
            }
            self.fill(&mut manager);
        }
        let mut st = lock(&self.shared.state);
        st.driving = false;
        self.shared.notify(&st);
    }

    /// Starts a thread that drives the event loop until all work is done, unless one runs
    /// (for a handle awaited as a future, with nobody else waiting).
    pub(crate) fn ensure_helper(&self) {
        let shared = &self.shared;
        let mut st = lock(&shared.state);
        if !st.helper {
            st.helper = true;
            drop(st);
            let scheduler = self.clone();
            let spawned = std::thread::Builder::new().name("procyard-procmgr-driver".into()).spawn(
                move || {
                    loop {
                        scheduler.join();
                        let mut st = lock(&scheduler.shared.state);
                        if st.unfinished == 0 {
                            st.helper = false;
                            break;
                        }
                    }
                },
            );
            if let Err(e) = spawned {
                tracing::warn!("procyard-procmgr: unable to start a driver thread: {e}");
                lock(&shared.state).helper = false;
            }
        }
    }

    /// Waits until every task scheduled so far, and every task scheduled meanwhile from other
    /// threads, has completed. Never refuses concurrent `schedule` calls.
    pub fn join(&self) {
        self.drive_until(&|st| st.unfinished == 0, None);
    }

    /// Like [`join`](Scheduler::join), giving up at `timeout`; whether all work was done.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.drive_until(&|st| st.unfinished == 0, Some(Deadline::after(timeout)))
    }

    /// Tasks queued and not started yet.
    pub fn queued(&self) -> usize {
        lock(&self.shared.state).queue.len()
    }

    /// Tasks running now (started, completion not delivered yet).
    pub fn running(&self) -> usize {
        lock(&self.shared.state).running
    }

    /// Refuses new work ([`Error::ShutDown`]) and waits for everything already scheduled.
    pub fn shutdown(&self) {
        lock(&self.shared.state).accepting = false;
        self.join();
    }

    /// Refuses new work, cancels queued tasks ([`Outcome::Cancelled`]) and stops running ones:
    /// SIGTERM to their groups, SIGKILL after `grace`. Returns once every child is reaped.
    pub fn stop(&self, grace: Duration) -> Result<()> {
        let shared = &self.shared;
        let cancelled: Vec<Queued> = {
            let mut st = lock(&shared.state);
            st.accepting = false;
            st.stopping = true;
            st.queue.drain(..).collect()
        };
        for q in cancelled {
            shared.complete_queued(&q.slot);
        }
        let mut st = lock(&shared.state);
        while st.driving {
            shared.waker.wakeup();
            st.waiting += 1;
            st = shared.cond.wait(st).unwrap_or_else(|e| e.into_inner());
            st.waiting -= 1;
        }
        st.driving = true;
        drop(st);
        let result = lock(&shared.manager).teardown(grace);
        let mut st = lock(&shared.state);
        st.driving = false;
        st.stopping = false;
        shared.notify(&st);
        result
    }
}

impl Shared {
    /// Wakes the threads waiting on `cond`, if any; called with the state locked.
    fn notify(&self, st: &State) {
        if st.waiting > 0 {
            self.cond.notify_all();
        }
    }

    pub(crate) fn complete(&self, slot: &Slot, outcome: Outcome) {
        self.finish_slot(slot, outcome);
        let mut st = lock(&self.state);
        st.running = st.running.saturating_sub(1);
        st.unfinished = st.unfinished.saturating_sub(1);
        self.notify(&st);
    }

    fn complete_queued(&self, slot: &Slot) {
        self.finish_slot(slot, Outcome::Cancelled);
        let mut st = lock(&self.state);
        st.unfinished = st.unfinished.saturating_sub(1);
        self.notify(&st);
    }

    fn finish_slot(&self, slot: &Slot, outcome: Outcome) {
        let waker = {
            let mut inner = lock(&slot.inner);
            inner.outcome = Some(outcome);
            inner.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}
