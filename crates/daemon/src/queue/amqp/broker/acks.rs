//! Acknowledging a loop turn's finished jobs in as few frames as is safe: a run of consecutive
//! delivery tags goes as one `basic.ack` with `multiple` set, the rest one by one.
//!
//! The broker numbers the deliveries of a channel 1, 2, 3… (AMQP 0-9-1: a delivery tag is
//! channel-scoped and increases by one per delivery), and `multiple` acknowledges every
//! unsettled tag up to the one given. A [`Lane`] is one consumer channel's ledger: the tags
//! settled so far (acknowledged, or given back with a nack), as a watermark below which all
//! are settled plus the settled tags above it. A multiple ack is planned only over a range
//! whose every tag is either settled already or acknowledged now, so it never acknowledges a
//! job still running or whose retry copy is not confirmed yet. A tag that never settles here
//! (a delivery the client dropped) holds the watermark where it is: the lane then falls back
//! to single acks above it, which is slower, never wrong.
//!
//! Order matters across turns: a turn's single acks must reach the connection before a later
//! turn's multiple ack that covers them (a tag acknowledged twice closes the channel). The
//! broker thread therefore issues every ack of a turn while it handles that turn
//! ([`issue_now`]): lapin queues an ack's frame on the first poll of its future.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// What to send for one turn's acks on one lane.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct AckPlan {
    /// One ack with `multiple` set, at this tag.
    pub(super) multiple: Option<u64>,
    /// The tags acknowledged one by one (the multiple ack's own tag is not among them).
    pub(super) single: Vec<u64>,
}

/// The settled delivery tags of one consumer channel.
#[derive(Debug, Default)]
pub(super) struct Lane {
    /// Every tag up to this one is settled.
    through: u64,
    /// Settled tags above `through`.
    above: BTreeSet<u64>,
}

impl Lane {
    /// Plans the acknowledgement of `tags` (delivered on this lane, not settled yet, in any
    /// order) and counts them settled from now on: the caller sends the plan at once.
    pub(super) fn plan(&mut self, tags: &[u64]) -> AckPlan {
        let mut tags: Vec<u64> = tags.iter().copied().filter(|t| *t > self.through).collect();
        tags.sort_unstable();
        tags.dedup();
        // The longest run from the watermark up whose every tag is settled or acked now.
        let mut next = self.through + 1;
        let mut covered = 0;
        for t in &tags {
            while self.above.contains(&next) {
                next += 1;
            }
            if *t != next {
                break;
            }
            covered += 1;
            next += 1;
        }
        let mut plan = AckPlan::default();
        if covered >= 2 {
            let top = tags[covered - 1];
            plan.multiple = Some(top);
            plan.single = tags[covered..].to_vec();
            self.through = top;
            self.above = self.above.split_off(&(top + 1));
        } else {
            plan.single = tags.clone();
        }
        for t in &plan.single {
            self.above.insert(*t);
        }
        self.advance();
        plan
    }

    /// Counts `tag` settled (acknowledged or nacked on its own, its frame already queued).
    pub(super) fn settled(&mut self, tag: u64) {
        if tag > self.through {
            self.above.insert(tag);
            self.advance();
        }
    }

    fn advance(&mut self) {
        while self.above.first() == Some(&(self.through + 1)) {
            self.above.pop_first();
            self.through += 1;
        }
    }
}

/// Polls `fut` once, now: its output when it is done already, or the future to finish
/// elsewhere (a spawned task), every frame it queues on its first poll queued by then.
pub(super) fn issue_now<F: Future + Unpin>(mut fut: F) -> Result<F::Output, F> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut fut).poll(&mut cx) {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => Err(fut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Consecutive tags from the watermark go as one multiple ack; a gap (a job still
    /// running) stops the run, and the tags past it go one by one.
    #[test]
    fn a_run_is_one_multiple_ack_and_a_gap_stops_it() {
        let mut lane = Lane::default();
        let plan = lane.plan(&[2, 1, 3, 5]);
        assert_eq!(plan, AckPlan { multiple: Some(3), single: vec![5] });
        // 4 is still running: 6 and 7 cannot be covered.
        let plan = lane.plan(&[6, 7]);
        assert_eq!(plan, AckPlan { multiple: None, single: vec![6, 7] });
        // 4 ends: the run 4..=7 is settled, 8 goes with it.
        let plan = lane.plan(&[4, 8, 9]);
        assert_eq!(plan, AckPlan { multiple: Some(9), single: vec![] });
    }

    /// A lone tag is acked on its own (a multiple ack of one frame saves nothing), and a
    /// tag settled elsewhere (a retry acked after its copy, a nack) lets a run pass it.
    #[test]
    fn tags_settled_elsewhere_join_the_run() {
        let mut lane = Lane::default();
        assert_eq!(lane.plan(&[1]), AckPlan { multiple: None, single: vec![1] });
        lane.settled(3);
        let plan = lane.plan(&[2, 4]);
        assert_eq!(plan, AckPlan { multiple: Some(4), single: vec![] });
        // Never planned twice, never below the watermark.
        assert_eq!(lane.plan(&[4, 5]), AckPlan { multiple: None, single: vec![5] });
    }

    /// A tag that never settles holds the watermark: nothing above it is ever covered by a
    /// multiple ack, so that delivery is never acknowledged by one.
    #[test]
    fn a_tag_never_settled_is_never_covered() {
        let mut lane = Lane::default();
        let mut sent = Vec::new();
        for turn in 0..10u64 {
            let tags: Vec<u64> = (2 + turn * 3..5 + turn * 3).collect();
            let plan = lane.plan(&tags);
            assert_eq!(plan.multiple, None, "turn {turn}");
            sent.extend(plan.single);
        }
        assert!(!sent.contains(&1));
        assert_eq!(sent.len(), 30);
    }
}
