//! Jobs claimed ahead: a claim takes as many jobs as the daemon may hold of the task
//! ([`QueueBackend::set_capacity`](crate::queue::QueueBackend::set_capacity): `max_workers ×
//! prefetch`, what the AMQP backend gives the broker as its prefetch), hands the loop what it
//! asked for and keeps the rest, leased to this daemon, for the next claims. Those are then
//! answered without a round trip, so a worker gets its next job before the loop writes the
//! last one's outcome, and runs it while that write is on its way; the write that flushes the
//! outcomes also takes the next batch when the jobs held ahead run low (one statement,
//! `turn.rs`). A claim thus costs a round trip per batch, not per job, and a write carries the
//! outcomes of every worker that finished during the one before.
//!
//! A daemon holds ahead no more than its workers finished in the last [`PACE`] (and at most
//! the capacity): jobs of a few milliseconds are claimed by the batch, while slow jobs are
//! still claimed one per free worker, so no daemon keeps jobs that another, idle, could run.
//!
//! The price: a daemon killed or cut off reruns elsewhere the jobs it was running and those
//! its workers took from what it held in the loop turn that met the loss, before a write
//! failed (at most `2 × max_workers`, where a claim per job allowed `max_workers`), and
//! those done whose outcomes waited for the next write ([`WRITE_WINDOW`]).
//!
//! Jobs held ahead never started: a SIGKILLed daemon's are put back like its other leases, with
//! no attempt recorded (they have no worker) and their attempt count restored, as at a stop.
//! They are put back at once when the task's capacity drops (pause, stop, a reload that lowers
//! or removes it) or when the task gets limits (rate limits and per-key concurrency claim
//! only what they start, `limits.rs`); a cancel request for one completes it as cancelled; a
//! daemon that registered anew (its leases recovered elsewhere) drops them. While writes fail
//! none is handed out (their outcomes could not be written: a daemon whose leases are
//! recovered meanwhile runs again only the jobs a claim would have let it start). A daemon never
//! asked for its capacity (a library caller) claims only what it is asked for.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use super::PgQueue;
use crate::Result;
use crate::queue::{Job, OpenMode, Outcome};

/// The window over which a task's pace (jobs finished) is counted.
const PACE: Duration = Duration::from_millis(100);

/// Jobs of a task finished in the current window and in the one before.
#[derive(Debug)]
struct Pace {
    since: Instant,
    now: usize,
    last: usize,
}

/// Jobs held ahead per task, and what sizes each claim.
#[derive(Debug, Default)]
pub(super) struct Ahead {
    /// The most jobs of a task the daemon holds unfinished at once; none: only what is asked.
    capacity: HashMap<String, usize>,
    /// Claimed and not yet handed to the loop, in claim order, each with the session's
    /// [`epoch`](PgQueue::epoch) when it was claimed.
    held: HashMap<String, VecDeque<(u64, Job)>>,
    /// Handed to the loop and not yet completed.
    given: HashMap<String, usize>,
    /// Tasks whose last claim found fewer ready jobs than it asked for (until a publish).
    dry: HashSet<String>,
    /// Jobs finished lately, per task.
    pace: HashMap<String, Pace>,
}

impl Ahead {
    /// How many jobs to hold ahead of `task`, beyond `want` more handed out now: what its
    /// workers finished in a window of [`PACE`], within its capacity.
    fn target(&self, task: &str, want: usize) -> usize {
        let cap = self.capacity.get(task).copied().unwrap_or(0);
        let given = self.given.get(task).copied().unwrap_or(0);
        let pace = match self.pace.get(task) {
            Some(p) if p.since.elapsed() < 2 * PACE => p.last.max(p.now),
            _ => 0,
        };
        pace.min(cap.saturating_sub(given + want))
    }

    fn len(&self, task: &str) -> usize {
        self.held.get(task).map_or(0, VecDeque::len)
    }

    /// Something was published: every task may have jobs again.
    pub(super) fn published(&mut self) {
        self.dry.clear();
    }

    /// A job handed to the loop was completed.
    pub(super) fn completed(&mut self, job: &Job) {
        if let Some(n) = self.given.get_mut(&job.task) {
            *n = n.saturating_sub(1);
        }
        let now = Instant::now();
        let p = self.pace.entry(job.task.clone()).or_insert(Pace { since: now, now: 0, last: 0 });
        let age = now.saturating_duration_since(p.since);
        if age >= PACE {
            p.last = if age < 2 * PACE { p.now } else { 0 };
            (p.since, p.now) = (now, 0);
        }
        p.now += 1;
    }

    /// The task (and how many to take) whose jobs held ahead ran low: under a quarter of its
    /// target (the claim rides with a write that then carries the outcomes of three quarters
    /// of it: 0.10 writes per job in a drain, against 0.13 at a half), and not known to be
    /// drained.
    fn low(&self) -> Option<(String, usize)> {
        self.capacity.keys().find_map(|task| {
            let (target, len) = (self.target(task, 0), self.len(task));
            let low = len * 4 < target && !self.dry.contains(task);
            low.then(|| (task.clone(), target - len))
        })
    }
}

/// How long the outcomes of a loop iteration may wait to be written with those of the next
/// ones (`flush_soon`): a write's cost on the server is mostly its own, not its rows', so
/// workers that finish a job every few hundred microseconds would otherwise pay a write
/// each. A daemon killed meanwhile has its jobs run again, as the jobs it holds ahead.
const WRITE_WINDOW: Duration = Duration::from_millis(2);

/// The most outcomes left for a later write.
const WRITE_BATCH: usize = 32;

impl PgQueue {
    /// Whether the loop's end-of-iteration write may wait (at most [`WRITE_WINDOW`] after
    /// the first thing buffered, [`WRITE_BATCH`] outcomes): only jobs done are buffered
    /// (a retry or a dead letter goes at once), the database answers, and no task's jobs
    /// held ahead run low (that claim rides with the write now).
    pub(super) fn may_defer_write(&self) -> bool {
        let Some(since) = self.buffered_since else { return false };
        self.mode == OpenMode::Daemon
            && self.trouble.is_none()
            && !self.unsure_claim
            && since.elapsed() < WRITE_WINDOW
            && self.buffers.outcomes.len() < WRITE_BATCH
            && self.buffers.outcomes.iter().all(|p| p.outcome == Outcome::Done)
            && self.ahead.low().is_none()
    }

    /// When the buffered outcomes are written at the latest.
    pub(super) fn write_due(&self) -> Option<Instant> {
        self.buffered_since.map(|s| s + WRITE_WINDOW)
    }

    /// A claim of up to `max` jobs of `task` (no limits on it): the jobs held ahead first; a
    /// round trip only when they are not enough, taking the task's capacity.
    pub(super) fn claim_ahead(&mut self, task: &str, max: usize) -> Result<Vec<Job>> {
        if self.epoch() == u64::MAX {
            // The session is lost, and this daemon's lock with it: another daemon may put
            // back whatever it takes now. Its reconnection wakes the loop to claim again.
            return Ok(Vec::new());
        }
        if self.trouble.is_some() {
            // The last write failed: outcomes wait unwritten, so no job starts that a claim
            // could not take now (the jobs held wait for the database to answer again).
            let mut jobs = self.write(Some((task, max)))?;
            // It answers again: the jobs held come next (none is left waiting for a claim
            // that the loop, told the queue is empty, would not make).
            let more = self.take_held(task, max - jobs.len());
            jobs.extend(more);
            *self.ahead.given.entry(task.to_owned()).or_default() += jobs.len();
            return Ok(jobs);
        }
        let mut out = self.take_held(task, max);
        if out.len() < max {
            let want = max - out.len();
            let n = want + self.ahead.target(task, max);
            let epoch = self.epoch();
            match self.write(Some((task, n))) {
                Ok(jobs) => self.keep_ahead(task, (n, epoch), jobs, &mut out, want),
                Err(e) => {
                    // Held again, in order: the loop retries the claim after a failure.
                    let held = self.ahead.held.entry(task.to_owned()).or_default();
                    for job in out.into_iter().rev() {
                        held.push_front((epoch, job));
                    }
                    return Err(e);
                }
            }
        }
        *self.ahead.given.entry(task.to_owned()).or_default() += out.len();
        Ok(out)
    }

    /// The flush: the buffered writes, with a claim riding along when a task's jobs held
    /// ahead ran low (one statement either way).
    pub(super) fn flush_ahead(&mut self) -> Result<()> {
        let low = self.ahead.low().filter(|(task, _)| self.limits.of(task).is_none());
        let low = low.filter(|_| self.epoch() != u64::MAX);
        let Some((task, n)) = low else {
            return self.write(None).map(|_| ());
        };
        let epoch = self.epoch();
        let jobs = self.write(Some((&task, n)))?;
        let mut none = Vec::new();
        self.keep_ahead(&task, (n, epoch), jobs, &mut none, 0);
        Ok(())
    }

    /// Of the `n` jobs a claim asked for, hands `want` to `out` and holds the others ahead.
    fn keep_ahead(
        &mut self,
        task: &str,
        (n, epoch): (usize, u64),
        mut jobs: Vec<Job>,
        out: &mut Vec<Job>,
        want: usize,
    ) {
        if jobs.len() < n {
            self.ahead.dry.insert(task.to_owned());
        }
        let held = self.ahead.held.entry(task.to_owned()).or_default();
        // A job held under an earlier number of this daemon and claimed again: one copy.
        let new: HashSet<u64> = jobs.iter().map(|j| j.receipt.0).collect();
        held.retain(|(_, j)| !new.contains(&j.receipt.0));
        let rest = jobs.split_off(want.min(jobs.len()));
        out.extend(jobs);
        held.extend(rest.into_iter().map(|j| (epoch, j)));
    }

    /// The session's epoch: how many times it was lost, or `u64::MAX` while it is (jobs claimed
    /// then are never handed out from what is held: their leases may be put back meanwhile).
    pub(super) fn epoch(&self) -> u64 {
        self.session.as_ref().map_or(0, |s| {
            if s.shared.connected.load(Ordering::SeqCst) {
                s.shared.losses.load(Ordering::SeqCst)
            } else {
                u64::MAX
            }
        })
    }

    /// Up to `max` jobs held ahead for `task` claimed in this epoch of the session. Those of an
    /// earlier one (the session was lost since: another daemon may have put them back and run
    /// them) are put back here, if still this daemon's, and never handed out.
    fn take_held(&mut self, task: &str, max: usize) -> Vec<Job> {
        let epoch = self.epoch();
        let mut out = Vec::new();
        let mut stale = Vec::new();
        let Some(held) = self.ahead.held.get_mut(task) else { return out };
        while out.len() < max
            && let Some((at, job)) = held.pop_front()
        {
            if at == epoch && epoch != u64::MAX {
                out.push(job);
            } else {
                stale.push((at, job));
            }
        }
        if !stale.is_empty() {
            self.put_back_jobs(task, stale);
        }
        out
    }

    /// Sets the capacity of `task`; jobs held ahead beyond it are put back.
    pub(super) fn set_ahead_capacity(&mut self, task: &str, capacity: usize) {
        if capacity == 0 {
            self.ahead.capacity.remove(task);
        } else {
            self.ahead.capacity.insert(task.to_owned(), capacity);
        }
        let given = self.ahead.given.get(task).copied().unwrap_or(0);
        if given + self.ahead.len(task) > capacity {
            self.put_back(task);
        }
    }

    /// Puts back the jobs held ahead of the tasks that limits now govern.
    pub(super) fn put_back_limited(&mut self) {
        let limited: Vec<String> =
            self.ahead.held.keys().filter(|t| self.limits.of(t).is_some()).cloned().collect();
        for task in limited {
            self.put_back(&task);
        }
    }

    /// The cancel requests heard, but those of jobs held ahead: completed here as cancelled
    /// (they never started; the loop does not know them).
    pub(super) fn cancel_held(&mut self, mut ids: Vec<String>) -> Vec<String> {
        let mut found = Vec::new();
        for held in self.ahead.held.values_mut() {
            held.retain(|(_, job)| {
                let hit = ids.contains(&job.id);
                if hit {
                    found.push(job.clone());
                }
                !hit
            });
        }
        for job in &found {
            ids.retain(|id| *id != job.id);
            self.buffer_outcome(job, Outcome::Cancelled { reason: "cancelled".into() });
        }
        ids
    }

    /// Puts the jobs held ahead of `task` back in `ready` (their attempt count restored).
    fn put_back(&mut self, task: &str) {
        let jobs: Vec<(u64, Job)> = self.ahead.held.remove(task).map(Vec::from).unwrap_or_default();
        self.put_back_jobs(task, jobs);
    }

    /// Puts `jobs` back in `ready` where they are still leased to this daemon; on a failure
    /// they stay held under an epoch never handed out, tried again at the next claim.
    fn put_back_jobs(&mut self, task: &str, jobs: Vec<(u64, Job)>) {
        if jobs.is_empty() {
            return;
        }
        let (owner, channel) = (self.owner(), self.target.channel());
        let seqs: Vec<i64> = jobs.iter().map(|(_, j)| j.receipt.0 as i64).collect();
        let put = self.with("return jobs held ahead to", |c| {
            c.execute(
                "WITH q AS (UPDATE queue SET state = 0, lease_owner = NULL
                    WHERE seq = ANY($1) AND state = 1 AND lease_owner = $2 RETURNING seq),
                 b AS (UPDATE jobs SET state = 0, attempts = GREATEST(attempts - 1, 0),
                        lease_owner = NULL
                    WHERE seq = ANY(ARRAY(SELECT seq FROM q)) RETURNING task)
                 SELECT pg_notify($3, t) FROM (SELECT DISTINCT task FROM b) AS x(t)",
                &[&seqs, &owner, &channel],
            )
        });
        match put {
            Ok(_) => {
                for s in &seqs {
                    self.leases.remove(s);
                }
            }
            Err(e) => {
                tracing::warn!(jobs = seqs.len(), error = %e.chain(), "postgres: unable to return jobs held ahead; will retry");
                let held = self.ahead.held.entry(task.to_owned()).or_default();
                held.extend(jobs.into_iter().map(|(_, j)| (u64::MAX, j)));
            }
        }
    }
}
