//! The daemon thread's side of the broker's news: deliveries waiting to be claimed, per task,
//! and which connection (epoch) is live.
//!
//! A delivery is only good on the connection it came on: one that arrives from an older
//! epoch (sent before a reconnect, read after it) is dropped, and a disconnection drops
//! every waiting delivery — the broker requeues them itself. A disconnection reported for an
//! older epoch after a newer connection came up changes nothing.

use std::collections::{HashMap, VecDeque};

use super::broker::Ev;

/// A delivery received and not yet claimed, with the epoch of its connection.
#[derive(Debug)]
pub(super) struct Received<D> {
    pub(super) epoch: u64,
    pub(super) delivery: D,
}

/// Deliveries waiting per task, and the connection's state. `D` is the delivery
/// (`Box<lapin::message::Delivery>`; anything in tests).
#[derive(Debug)]
pub(super) struct Inbox<D> {
    waiting: HashMap<String, VecDeque<Received<D>>>,
    /// The epoch of the live connection, `None` while disconnected.
    live_epoch: Option<u64>,
    last_problem: Option<String>,
}

impl<D> Inbox<D> {
    /// Nothing received, not connected yet.
    pub(super) fn new() -> Inbox<D> {
        Inbox { waiting: HashMap::new(), live_epoch: None, last_problem: None }
    }

    /// Takes in one event from the broker thread. `broker` names the broker in logs.
    pub(super) fn apply(&mut self, ev: Ev<D>, broker: &str) {
        match ev {
            Ev::Delivery { epoch, task, delivery } => {
                if self.live_epoch == Some(epoch) {
                    self.waiting.entry(task).or_default().push_back(Received { epoch, delivery });
                }
            }
            Ev::Connected { epoch } => {
                tracing::info!("amqp: connected to {broker}");
                self.live_epoch = Some(epoch);
                self.last_problem = None;
            }
            Ev::Disconnected { epoch, error } => {
                if self.live_epoch.is_some_and(|live| live > epoch) {
                    return;
                }
                self.live_epoch = None;
                let dropped: usize = self.waiting.values().map(VecDeque::len).sum();
                self.waiting.clear();
                if dropped > 0 {
                    tracing::info!(
                        "amqp: {dropped} received jobs not started; the broker requeues them"
                    );
                }
                self.last_problem = Some(error);
            }
            Ev::Warning(message) => {
                tracing::warn!("amqp: {message}");
                self.last_problem = Some(message);
            }
            // Taken by the backend before it gets here.
            Ev::Heard(_) => {}
        }
    }

    /// Up to `max` waiting deliveries of `task`, oldest first.
    pub(super) fn take(&mut self, task: &str, max: usize) -> Vec<Received<D>> {
        let Some(queue) = self.waiting.get_mut(task) else { return Vec::new() };
        let n = max.min(queue.len());
        queue.drain(..n).collect()
    }

    /// Up to `max` waiting deliveries of `task` for which `pick` holds, oldest first; the
    /// others keep their place (`pick` is asked in order and may count what it took).
    pub(super) fn take_if(
        &mut self,
        task: &str,
        max: usize,
        mut pick: impl FnMut(&D) -> bool,
    ) -> Vec<Received<D>> {
        let Some(queue) = self.waiting.get_mut(task) else { return Vec::new() };
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(queue.len());
        while let Some(r) = queue.pop_front() {
            if taken.len() < max && pick(&r.delivery) {
                taken.push(r);
            } else {
                kept.push_back(r);
            }
        }
        *queue = kept;
        taken
    }

    /// Every waiting delivery of `task`, to give back to the broker.
    pub(super) fn take_all(&mut self, task: &str) -> Vec<D> {
        self.waiting.remove(task).into_iter().flatten().map(|r| r.delivery).collect()
    }

    /// How many deliveries of `task` wait.
    pub(super) fn waiting(&self, task: &str) -> usize {
        self.waiting.get(task).map_or(0, VecDeque::len)
    }

    /// The live connection's epoch, `None` while disconnected.
    pub(super) fn live_epoch(&self) -> Option<u64> {
        self.live_epoch
    }

    /// The last trouble reported since the connection came up (or while it is down).
    pub(super) fn last_problem(&self) -> Option<&str> {
        self.last_problem.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(epoch: u64, task: &str, n: u32) -> Ev<u32> {
        Ev::Delivery { epoch, task: task.into(), delivery: n }
    }

    fn taken(inbox: &mut Inbox<u32>, task: &str, max: usize) -> Vec<u32> {
        inbox.take(task, max).into_iter().map(|r| r.delivery).collect()
    }

    #[test]
    fn deliveries_on_the_live_connection_wait_per_task_in_order() {
        let mut inbox = Inbox::new();
        inbox.apply(Ev::Connected { epoch: 1 }, "b");
        for n in 0..3 {
            inbox.apply(delivery(1, "a", n), "b");
        }
        inbox.apply(delivery(1, "other", 9), "b");
        assert_eq!((inbox.waiting("a"), inbox.live_epoch()), (3, Some(1)));
        assert_eq!(taken(&mut inbox, "a", 2), [0, 1]);
        assert_eq!(taken(&mut inbox, "a", 5), [2]);
        assert!(taken(&mut inbox, "a", 5).is_empty());
        assert_eq!(inbox.take_all("other"), [9]);
        assert_eq!(inbox.waiting("other"), 0);
    }

    /// A delivery sent on a connection that has since been replaced, or that arrives while
    /// disconnected, is not kept: the broker requeued it.
    #[test]
    fn a_delivery_of_another_connection_is_dropped() {
        let mut inbox = Inbox::new();
        inbox.apply(delivery(1, "a", 0), "b");
        assert_eq!(inbox.waiting("a"), 0, "before any connection");
        inbox.apply(Ev::Connected { epoch: 2 }, "b");
        inbox.apply(delivery(1, "a", 1), "b");
        inbox.apply(delivery(2, "a", 2), "b");
        assert_eq!(taken(&mut inbox, "a", 5), [2]);
    }

    /// Deliveries passed over keep their order for the next claim.
    #[test]
    fn take_if_skips_without_reordering() {
        let mut inbox = Inbox::new();
        inbox.apply(Ev::Connected { epoch: 1 }, "b");
        for n in 0..6 {
            inbox.apply(delivery(1, "a", n), "b");
        }
        let odd: Vec<u32> =
            inbox.take_if("a", 2, |n| n % 2 == 1).into_iter().map(|r| r.delivery).collect();
        assert_eq!(odd, [1, 3]);
        assert_eq!(taken(&mut inbox, "a", 9), [0, 2, 4, 5]);
    }

    /// Disconnection drops what waits and says why; the next connection clears the problem.
    #[test]
    fn a_disconnection_drops_waiting_deliveries() {
        let mut inbox = Inbox::new();
        inbox.apply(Ev::Connected { epoch: 1 }, "b");
        inbox.apply(delivery(1, "a", 0), "b");
        inbox.apply(Ev::Disconnected { epoch: 1, error: "reset".into() }, "b");
        assert_eq!((inbox.waiting("a"), inbox.live_epoch()), (0, None));
        assert_eq!(inbox.last_problem(), Some("reset"));
        inbox.apply(Ev::Connected { epoch: 2 }, "b");
        assert_eq!((inbox.live_epoch(), inbox.last_problem()), (Some(2), None));
    }

    /// The report of an old connection's loss that comes after the new one is up changes
    /// nothing: the new connection stays live and keeps its deliveries.
    #[test]
    fn a_late_disconnection_of_an_old_connection_is_ignored() {
        let mut inbox = Inbox::new();
        inbox.apply(Ev::Connected { epoch: 3 }, "b");
        inbox.apply(delivery(3, "a", 7), "b");
        inbox.apply(Ev::Disconnected { epoch: 2, error: "old".into() }, "b");
        assert_eq!(
            (inbox.live_epoch(), inbox.waiting("a"), inbox.last_problem()),
            (Some(3), 1, None)
        );
    }

    /// A warning is shown but the connection stays live.
    #[test]
    fn a_warning_keeps_the_connection() {
        let mut inbox: Inbox<u32> = Inbox::new();
        inbox.apply(Ev::Connected { epoch: 1 }, "b");
        inbox.apply(Ev::Warning("the broker blocks publishing".into()), "b");
        assert_eq!(inbox.live_epoch(), Some(1));
        assert_eq!(inbox.last_problem(), Some("the broker blocks publishing"));
    }
}
