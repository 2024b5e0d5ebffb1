//! Reconcile: per task group, claim jobs up to the free capacity, then start workers and hand
//! jobs to idle ones. Part of the state machine (pure).
//!
//! A round per group, driven by the shell's answers: [`Event::Reconcile`] asks for a claim
//! when the queue may hold jobs; [`Event::Claimed`] (or `ClaimFailed`) continues with one
//! [`Action::Spawn`] at a time, each answered by `Spawned` (go on) or `SpawnFailed` (the crash
//! backoff stops the round), so a start that fails never lets the round start more.
//!
//! [`Event::Reconcile`]: super::event::Event::Reconcile
//! [`Event::Claimed`]: super::event::Event::Claimed

use std::time::{Duration, Instant};

use super::event::{Action, Ended, WorkerId};
use super::outcome::JobResult;
use super::state::{Phase, State, finish_job};
use super::worker::Worker;
use crate::config::WorkModel;
use crate::queue::{AttemptEnd, Job, Outcome};

impl State {
    /// Claims, dispatches and starts workers for every group; drops drained groups.
    pub(super) fn reconcile(&mut self, now: Instant, acts: &mut Vec<Action>) {
        let running = self.phase == Phase::Running;
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let Some(g) = self.groups.get_mut(&name) else { continue };
            if running && g.configured {
                self.begin_round(&name, now, acts);
            } else if !g.configured {
                for job in g.pending.drain(..) {
                    let reason = "task removed before the job started".to_owned();
                    let outcome = Outcome::Retry { delay: Duration::ZERO, reason };
                    acts.push(Action::Complete { job, outcome, attempt: None });
                }
                if !self.workers.values().any(|w| w.group == name) {
                    tracing::info!(task = %name, "removed task group stopped");
                    self.groups.remove(&name);
                }
            }
            // Stopping: pending jobs stay claimed; the queue gets them back at shutdown.
        }
    }

    fn begin_round(&mut self, name: &str, now: Instant, acts: &mut Vec<Action>) {
        let Some(g) = self.groups.get_mut(name) else { return };
        // Jobs held by workers (running or sent ahead), and how many they may hold: one per
        // worker, `prefetch` per worker that takes jobs ahead (so a claim takes a batch).
        let mut in_flight = 0;
        let mut per_worker = 1;
        for w in self.workers.values().filter(|w| w.group == name) {
            in_flight += w.in_flight();
            if w.generation == g.generation && w.stop.is_none() {
                per_worker = per_worker.max(w.capacity(g.cfg.prefetch));
            }
        }
        if g.next_spawn.is_some_and(|t| t <= now) {
            g.next_spawn = None;
        }
        if g.maybe_more && !g.paused {
            let capacity =
                (g.cfg.max_workers * per_worker).saturating_sub(in_flight + g.pending.len());
            if capacity > 0 {
                acts.push(Action::Claim { task: name.to_owned(), max: capacity });
                return;
            }
        }
        self.after_claim(name, now, acts);
    }

    pub(super) fn on_claimed(
        &mut self,
        task: &str,
        max: usize,
        jobs: Vec<Job>,
        now: Instant,
        acts: &mut Vec<Action>,
    ) {
        let Some(g) = self.groups.get_mut(task) else {
            // Not reachable (the shell answers at once), but never lose a lease.
            for job in jobs {
                let reason = "task removed before the job started".to_owned();
                acts.push(Action::Complete {
                    job,
                    outcome: Outcome::Retry { delay: Duration::ZERO, reason },
                    attempt: None,
                });
            }
            return;
        };
        tracing::trace!(task, max, claimed = jobs.len(), "claim");
        if jobs.len() < max {
            g.maybe_more = false;
        }
        g.pending.extend(jobs);
        self.after_claim(task, now, acts);
    }

    /// After the claim: a oneshot group starts a worker per pending job; a longlived group
    /// hands pending jobs to idle workers and starts what it lacks.
    pub(super) fn after_claim(&mut self, name: &str, now: Instant, acts: &mut Vec<Action>) {
        let Some(g) = self.groups.get_mut(name) else { return };
        match g.cfg.work_model {
            WorkModel::Oneshot => self.spawn_oneshot(name, now, acts),
            WorkModel::Longlived => {
                self.dispatch(name, now, acts);
                let Some(g) = self.groups.get_mut(name) else { return };
                let live = g.live_workers(&self.workers);
                let busy = self
                    .workers
                    .values()
                    .filter(|w| w.group == name && w.generation == g.generation && w.job.is_some())
                    .count();
                let want = (busy + g.pending.len()).clamp(g.cfg.min_workers, g.cfg.max_workers);
                if live < want && g.next_spawn.is_none_or(|t| t <= now) {
                    // In a crash streak, one at a time until a worker proves healthy.
                    g.spawn_budget = if g.crash_streak > 0 { 1 } else { want - live };
                    self.spawn_longlived(name, now, acts);
                }
            }
        }
    }

    /// Starts a oneshot worker for the next pending job, if the crash backoff allows.
    fn spawn_oneshot(&mut self, name: &str, now: Instant, acts: &mut Vec<Action>) {
        let Some(g) = self.groups.get(name) else { return };
        if g.pending.is_empty() || g.next_spawn.is_some_and(|t| t > now) {
            return;
        }
        let id = self.alloc_id();
        let Some(g) = self.groups.get_mut(name) else { return };
        let Some(job) = g.pending.pop_front() else { return };
        let mut w = Worker::new(id, name, g.generation, WorkModel::Oneshot, now);
        w.start_job(job, g.cfg.timeout, now);
        self.workers.insert(id, w);
        acts.push(Action::Spawn { worker: id });
    }

    /// Starts the next longlived worker of the round's budget; dispatches once it is spent.
    fn spawn_longlived(&mut self, name: &str, now: Instant, acts: &mut Vec<Action>) {
        if self.groups.get(name).is_none_or(|g| g.spawn_budget == 0) {
            return self.dispatch(name, now, acts);
        }
        let id = self.alloc_id();
        let Some(g) = self.groups.get_mut(name) else { return };
        g.spawn_budget -= 1;
        self.workers.insert(id, Worker::new(id, name, g.generation, WorkModel::Longlived, now));
        acts.push(Action::Spawn { worker: id });
    }

    pub(super) fn on_spawned(
        &mut self,
        id: WorkerId,
        pid: i32,
        now: Instant,
        acts: &mut Vec<Action>,
    ) {
        let Some(w) = self.workers.get_mut(&id) else { return };
        w.pid = Some(pid);
        let (name, model) = (w.group.clone(), w.model);
        tracing::debug!(task = %name, pid, "worker started");
        if self.phase != Phase::Running || !self.groups.get(&name).is_some_and(|g| g.configured) {
            return;
        }
        match model {
            WorkModel::Oneshot => self.spawn_oneshot(&name, now, acts),
            WorkModel::Longlived => self.spawn_longlived(&name, now, acts),
        }
    }

    pub(super) fn on_spawn_failed(
        &mut self,
        id: WorkerId,
        error: String,
        now: Instant,
        acts: &mut Vec<Action>,
    ) {
        let Some(mut w) = self.workers.remove(&id) else { return };
        let Some(g) = self.groups.get_mut(&w.group) else { return };
        tracing::error!(task = %g.cfg.name, %error, "unable to start a worker");
        g.note_crash(now);
        g.spawn_budget = 0;
        if let Some(run) = w.job.take() {
            let ended = Ended { worker: id, pid: None, end: AttemptEnd::WorkerLost };
            finish_job(g, run.job, JobResult::Fail { reason: error }, ended, acts);
        }
        if w.model == WorkModel::Longlived {
            self.dispatch(&w.group, now, acts);
        }
    }

    /// The workers [`State::dispatch`] will hand the next `max` jobs claimed for group `name`
    /// to, in order (after the jobs already pending; shorter when fewer have room; none for a
    /// oneshot group), so the claim can record them with the leases.
    pub(super) fn dispatch_plan(&self, name: &str, max: usize) -> Vec<WorkerId> {
        let Some(g) = self.groups.get(name) else { return Vec::new() };
        if g.cfg.work_model != WorkModel::Longlived {
            return Vec::new();
        }
        let prefetch = g.cfg.prefetch;
        let mut open: Vec<(usize, usize, WorkerId)> = (self.workers.values())
            .filter(|w| w.group == name && w.generation == g.generation && w.has_room(prefetch))
            .map(|w| (w.in_flight(), w.capacity(prefetch), w.id))
            .collect();
        let mut plan = Vec::new();
        for slot in 0..g.pending.len() + max {
            let room = open.iter_mut().filter(|(held, cap, _)| held < cap);
            let Some(w) = room.min_by_key(|(held, _, id)| (*held, *id)) else { break };
            w.0 += 1;
            if slot >= g.pending.len() {
                plan.push(w.2);
            }
        }
        plan
    }

    /// Longlived: hands pending jobs to workers of the current generation with room, the
    /// least loaded first (idle workers before any is sent a job ahead).
    fn dispatch(&mut self, name: &str, now: Instant, acts: &mut Vec<Action>) {
        let Some(g) = self.groups.get_mut(name) else { return };
        if g.pending.is_empty() {
            return;
        }
        let prefetch = g.cfg.prefetch;
        let mut open: Vec<&mut Worker> = self
            .workers
            .values_mut()
            .filter(|w| w.group == name && w.generation == g.generation && w.has_room(prefetch))
            .collect();
        while !g.pending.is_empty() {
            let Some(w) = open
                .iter_mut()
                .filter(|w| w.has_room(prefetch))
                .min_by_key(|w| (w.in_flight(), w.id))
            else {
                break;
            };
            let Some(job) = g.pending.pop_front() else { break };
            let job_id = job.id.clone();
            w.hand(job, g.cfg.timeout, now);
            acts.push(Action::SendJob { worker: w.id, job: job_id });
        }
    }
}

#[cfg(test)]
#[path = "prefetch_tests.rs"]
mod prefetch_tests;
