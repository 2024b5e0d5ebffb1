//! The worker's decisions, as a closed state machine: an [`Event`] (a request, a job's
//! report, a job's exit, a timer, an end of pipe), the [`State`], and [`State::step`], which
//! answers with [`Action`]s for the shell to perform. No process, descriptor or clock in here:
//! `now` is an argument, so every transition is unit-tested.
//!
//! What the state decides: which queued job starts when (at most `max_workers` whose outcome
//! is not known yet), each job's outcome from how it ended (value, error, crash, timeout,
//! stop), timeouts, the stop (drain for the grace, then TERM, then KILL), which jobs are
//! written ahead into a reused child, and when the worker is done. How a job is started (a
//! spare child, a fork, a spawn), and reading and writing the pipes, is the shell's.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use procyard_core::{Exit, Signal, StopLadder};

use super::process::{PIPE_ATOMIC, PIPELINE_BYTES, PIPELINE_DEPTH};
use crate::stop::GracefulStop;
use crate::wire::{CommandSpec, TAG_ERROR, WireError, encode_report, error_body, is_report};
use crate::wire::{function_name, is_delivered};
use outcome::{Captured, outcome};

/// A job child's id in the worker (tags its reports; never reused).
pub(super) type ChildId = usize;

/// How long a job gets between TERM and KILL during a stop.
pub(super) const TERM_GRACE: Duration = Duration::from_millis(500);

/// Queue slots always kept: past them, the queue's buffer shrinks to twice its length once
/// under a quarter full, as a burst drains. Every resident page of the worker is
/// copied into the page tables of each child it forks (and unmapped at the child's exit):
/// a burst of 10,000 jobs grew the queue to 640 KiB, kept for the worker's life, and 1 MiB
/// more resident costs a fork and its exit about 15 µs here (a C fork loop: 88-94 against
/// 101-107 µs of CPU per fork).
const QUEUE_KEEP: usize = 256;

/// A job waiting for a free slot. Kept small (40 bytes and one allocation): a burst of
/// submissions can queue thousands, and every page the queue occupies is copied into the page
/// tables of each child forked meanwhile.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) key: u64,
    pub(super) work: Work,
    pub(super) timeout: Option<Duration>,
}

/// What a job runs.
#[derive(Debug)]
pub(super) enum Work {
    /// A function job's message as its child reads it (see `job_message`).
    Function(Box<[u8]>),
    Command(Box<CommandSpec>),
}

impl Queued {
    /// The framed size of a function job written ahead into a child's pipe.
    fn pipelined_len(&self) -> usize {
        match &self.work {
            Work::Function(message) => 4 + message.len(),
            Work::Command(_) => 0,
        }
    }
}

/// What a job's child runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Function,
    Command,
}

/// Where a running job is. Only a `Running` job's report or exit decides its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No outcome yet.
    Running,
    /// Its outcome was sent (a complete report arrived before the exit).
    Reported,
    /// Killed for running past its timeout.
    TimedOut,
    /// Signalled by a stop.
    Stopped,
}

#[derive(Debug)]
struct Job {
    key: u64,
    kind: Kind,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    phase: Phase,
    /// Further jobs the child may take after its current one, through its job pipe (reuse
    /// mode; 0: it runs this one job; `usize::MAX`: no limit).
    further: usize,
    /// Jobs written into the child's pipe behind the current one (reuse mode).
    next: VecDeque<Queued>,
    /// Bytes of the jobs in `next`.
    next_bytes: usize,
}

/// Something that happened, as the shell saw it.
#[derive(Debug)]
pub(super) enum Event {
    /// A job request from the application.
    Run(Queued),
    /// The application asks for a stop: running jobs get `grace`, then TERM, then KILL.
    Stop { grace: Duration },
    /// The shell may start queued jobs now (it sends this once per turn, after flushing
    /// results, so that a fork never delays a result).
    Admit,
    /// The child `id` runs the job `key` (after [`Action::Start`]); `further`: how many more
    /// jobs it may take through its job pipe after this one (0 for a one-job child; see
    /// `Config::max_jobs_per_process`).
    Started { key: u64, id: ChildId, kind: Kind, timeout: Option<Duration>, further: usize },
    /// The job `key` could not be started.
    StartFailed { key: u64, error: WireError },
    /// A function child's complete report (tag and body) for its current job. `recyclable`
    /// is false when the child is known to have exited.
    Report { id: ChildId, report: Vec<u8>, recyclable: bool },
    /// A child exited; `output` is what it wrote that was not a complete report (a command:
    /// its stdout), `stderr` a command's stderr, `truncated` whether a command's stream
    /// went beyond the limit.
    Exited { id: ChildId, exit: Exit, output: Vec<u8>, stderr: Vec<u8>, truncated: bool },
    /// The child `id` never ran its job: the zygote could not fork it, or died first.
    Lost { id: ChildId, error: WireError },
    /// A job written ahead into the child `id` could not be written (the last one).
    WriteAheadFailed { id: ChildId },
    /// A deadline may have passed.
    Tick,
    /// The request pipe ended (the application closed it, or it was corrupt).
    InputClosed,
    /// The result pipe broke: nobody reads results any more.
    OutputClosed,
}

/// What the shell is to do.
#[derive(Debug, PartialEq)]
pub(super) enum Action {
    /// Queue the result frame of `key` (a report: tag and body).
    Send { key: u64, report: Vec<u8> },
    /// Start the job (then answer with [`Event::Started`] or [`Event::StartFailed`]).
    Start(StartJob),
    /// Write this function job message into the job pipe of the child `id`.
    WriteAhead { id: ChildId, message: Box<[u8]> },
    /// SIGKILL the child `id` (its group).
    Kill { id: ChildId },
    /// Send `signal` to the group of every job child.
    SignalAll(Signal),
    /// The child `id` finished its jobs: make it an idle spare.
    Recycle { id: ChildId },
    /// The child `id` finished its jobs: close its job pipe so that it exits.
    Retire { id: ChildId },
}

/// A job to start, as [`Action::Start`] hands it over.
#[derive(Debug, PartialEq)]
pub(super) struct StartJob {
    pub(super) key: u64,
    pub(super) function: Option<Box<[u8]>>,
    pub(super) command: Option<Box<CommandSpec>>,
    pub(super) timeout: Option<Duration>,
}

/// Whether the worker is finished, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Stopped and every job has ended: flush the results and exit 0.
    Done,
    /// The application is gone: kill every job and exit 1.
    Abandoned,
}

/// The worker's state.
#[derive(Debug)]
pub(super) struct State {
    max_workers: usize,
    reuse: bool,
    functions: HashSet<String>,
    queue: VecDeque<Queued>,
    jobs: HashMap<ChildId, Job>,
    /// Start actions not answered yet.
    starting: usize,
    stop: Option<GracefulStop>,
    input_closed: bool,
    output_closed: bool,
}

impl State {
    /// A worker running at most `max_workers` jobs at once, knowing `functions` by name.
    pub(super) fn new(max_workers: usize, reuse: bool, functions: HashSet<String>) -> State {
        State {
            max_workers: max_workers.max(1),
            reuse,
            functions,
            queue: VecDeque::new(),
            jobs: HashMap::new(),
            starting: 0,
            stop: None,
            input_closed: false,
            output_closed: false,
        }
    }

    /// Handles `event` at `now`, appending what to do to `actions`.
    pub(super) fn step(&mut self, event: Event, now: Instant, actions: &mut Vec<Action>) {
        match event {
            Event::Run(job) => self.on_run(job, actions),
            Event::Stop { grace } => self.on_stop(grace, now, actions),
            Event::Admit => self.admit(actions),
            Event::Started { key, id, kind, timeout, further } => {
                self.starting = self.starting.saturating_sub(1);
                let job = Job {
                    key,
                    kind,
                    timeout,
                    deadline: timeout.map(|t| now + t),
                    phase: Phase::Running,
                    further,
                    next: VecDeque::new(),
                    next_bytes: 0,
                };
                self.jobs.insert(id, job);
                // A reusable child gets jobs written ahead at once, not only at the next
                // admission: it would otherwise finish its one job and be recycled for nothing.
                if further > 0 {
                    self.write_ahead(actions);
                }
            }
            Event::StartFailed { key, error } => {
                self.starting = self.starting.saturating_sub(1);
                actions.push(send_error(key, &error));
            }
            Event::Report { id, report, recyclable } => {
                self.on_report(id, report, recyclable, now, actions);
            }
            Event::Exited { id, exit, output, stderr, truncated } => {
                self.on_exit(id, exit, Captured { output, stderr, truncated }, actions);
            }
            Event::Lost { id, error } => {
                if let Some(job) = self.jobs.remove(&id)
                    && let Some(report) = outcome::lost(&job, error)
                {
                    actions.push(Action::Send { key: job.key, report });
                }
            }
            Event::WriteAheadFailed { id } => {
                if let Some(job) = self.jobs.get_mut(&id)
                    && let Some(queued) = job.next.pop_back()
                {
                    job.next_bytes = job.next_bytes.saturating_sub(queued.pipelined_len());
                    job.further = job.further.saturating_add(1);
                    self.queue.push_front(queued);
                }
            }
            Event::Tick => self.on_tick(now, actions),
            Event::InputClosed => self.input_closed = true,
            Event::OutputClosed => self.output_closed = true,
        }
    }

    /// The next instant at which a [`Event::Tick`] has something to do.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let timeouts =
            self.jobs.values().filter(|j| j.phase == Phase::Running).filter_map(|j| j.deadline);
        let stop = self.stop.as_ref().and_then(GracefulStop::deadline);
        timeouts.chain(stop).min()
    }

    /// Whether the worker is finished.
    pub(super) fn verdict(&self) -> Option<Verdict> {
        if self.stop.is_some() && self.jobs.is_empty() && self.queue.is_empty() {
            return (self.starting == 0).then_some(Verdict::Done);
        }
        if self.output_closed || (self.input_closed && self.stop.is_none()) {
            return Some(Verdict::Abandoned);
        }
        None
    }

    /// Whether a stop was asked for.
    pub(super) fn is_stopping(&self) -> bool {
        self.stop.is_some()
    }

    /// Whether a report must be taken at once (to start a queued job, time one out, or stop);
    /// otherwise notes of results delivered straight to the application can wait.
    pub(super) fn needs_reports(&self) -> bool {
        let timed = self.jobs.values().any(|j| j.phase == Phase::Running && j.deadline.is_some());
        self.stop.is_some() || !self.queue.is_empty() || timed
    }

    /// Whether the shell should fork a spare child now, having `idle` of them: only while
    /// idle (a fork while a lone job runs would delay its result), or in reuse mode when jobs
    /// wait. Jobs that queue up without reuse are each forked with their job instead.
    pub(super) fn wants_spare(&self, idle: usize) -> bool {
        idle == 0
            && self.stop.is_none()
            && (self.busy() == 0 || (self.reuse && !self.queue.is_empty()))
    }

    /// Jobs whose outcome is not known yet (a job that reported but has not exited yet no
    /// longer counts against `max_workers`).
    pub(super) fn busy(&self) -> usize {
        self.starting + self.jobs.values().filter(|j| j.phase != Phase::Reported).count()
    }

    fn is_registered(&self, message: &[u8]) -> bool {
        self.functions.contains(String::from_utf8_lossy(function_name(message)).as_ref())
    }

    fn on_run(&mut self, job: Queued, actions: &mut Vec<Action>) {
        if self.stop.is_some() {
            actions.push(send_error(job.key, &WireError::Stopped));
        } else {
            self.queue.push_back(job);
        }
    }

    fn on_stop(&mut self, grace: Duration, now: Instant, actions: &mut Vec<Action>) {
        if self.stop.is_some() {
            return;
        }
        let ladder = StopLadder::new([(Signal::TERM, TERM_GRACE), (Signal::KILL, Duration::ZERO)]);
        self.stop = Some(GracefulStop::new(now, grace, ladder));
        // Jobs already written ahead into a child's pipe stay: the child runs them during the
        // grace, or they end as stopped when it exits.
        for queued in std::mem::take(&mut self.queue) {
            actions.push(send_error(queued.key, &WireError::Stopped));
        }
    }

    /// Starts queued jobs while slots are free, then (reuse mode) writes small function jobs
    /// ahead into the pipes of busy children.
    fn admit(&mut self, actions: &mut Vec<Action>) {
        while self.stop.is_none() && self.busy() < self.max_workers {
            let Some(job) = self.queue.pop_front() else { break };
            let start = match job.work {
                Work::Function(message) if !self.is_registered(&message) => {
                    let name = String::from_utf8_lossy(function_name(&message)).into_owned();
                    actions.push(send_error(job.key, &WireError::UnknownFunction { name }));
                    continue;
                }
                Work::Function(message) => StartJob {
                    key: job.key,
                    function: Some(message),
                    command: None,
                    timeout: job.timeout,
                },
                Work::Command(spec) => StartJob {
                    key: job.key,
                    function: None,
                    command: Some(spec),
                    timeout: job.timeout,
                },
            };
            self.starting += 1;
            actions.push(Action::Start(start));
        }
        self.write_ahead(actions);
        // A burst grows the queue to thousands of slots; shrink it as it drains (see
        // `QUEUE_KEEP`).
        let (len, capacity) = (self.queue.len(), self.queue.capacity());
        if capacity > QUEUE_KEEP && len < capacity / 4 {
            self.queue.shrink_to(len * 2);
        }
    }

    fn write_ahead(&mut self, actions: &mut Vec<Action>) {
        if !self.reuse || self.stop.is_some() || self.queue.is_empty() {
            return;
        }
        let mut ids: Vec<ChildId> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.kind == Kind::Function && j.further > 0 && j.phase == Phase::Running)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        // One more job per child per round, so that they share the queue evenly.
        for depth in 0..PIPELINE_DEPTH {
            for &id in &ids {
                let Some(front) = self.queue.front() else { return };
                let Work::Function(message) = &front.work else { return };
                let len = front.pipelined_len();
                if !self.is_registered(message) || len > PIPE_ATOMIC {
                    return;
                }
                let Some(job) = self.jobs.get_mut(&id) else { continue };
                if job.next.len() != depth
                    || job.further == 0
                    || job.next_bytes + len > PIPELINE_BYTES
                {
                    continue;
                }
                let Some(next) = self.queue.pop_front() else { return };
                if let Work::Function(message) = &next.work {
                    actions.push(Action::WriteAhead { id, message: message.clone() });
                }
                job.next_bytes += len;
                job.further -= 1;
                job.next.push_back(next);
            }
        }
    }

    fn on_report(
        &mut self,
        id: ChildId,
        report: Vec<u8>,
        recyclable: bool,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        if job.phase != Phase::Running || job.kind != Kind::Function {
            return;
        }
        // The child sent its report straight to the application: nothing to forward.
        let delivered = is_delivered(&report);
        if !delivered && !is_report(&report) {
            // The child is in no state to trust: its exit settles what it still holds.
            job.phase = Phase::Reported;
            actions.push(Action::Kill { id });
            let reason = "the job's process sent an undecodable report".to_owned();
            actions.push(send_error(job.key, &WireError::Malformed { reason }));
            return;
        }
        if !delivered {
            actions.push(Action::Send { key: job.key, report });
        }
        if let Some(next) = job.next.pop_front() {
            job.next_bytes = job.next_bytes.saturating_sub(next.pipelined_len());
            job.key = next.key;
            job.timeout = next.timeout;
            job.deadline = next.timeout.map(|t| now + t);
            return;
        }
        job.phase = Phase::Reported;
        // A child that reached its job limit (`further` is 0) is retired: it exits.
        if recyclable && self.reuse && job.further > 0 && self.stop.is_none() {
            self.jobs.remove(&id);
            actions.push(Action::Recycle { id });
        } else {
            actions.push(Action::Retire { id });
        }
    }

    fn on_exit(&mut self, id: ChildId, exit: Exit, output: Captured, actions: &mut Vec<Action>) {
        // An exit of a child the state does not know (a spare, or a recycled one) is the
        // shell's business.
        let Some(mut job) = self.jobs.remove(&id) else { return };
        // Written to the child but never started: run them elsewhere (or not, if stopping).
        while let Some(next) = job.next.pop_back() {
            if self.stop.is_some() {
                actions.push(send_error(next.key, &WireError::Stopped));
            } else {
                self.queue.push_front(next);
            }
        }
        if let Some(report) = outcome(&job, exit, output) {
            actions.push(Action::Send { key: job.key, report });
        }
    }

    fn on_tick(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut expired: Vec<ChildId> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.phase == Phase::Running && j.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        expired.sort_unstable();
        for id in expired {
            if let Some(job) = self.jobs.get_mut(&id) {
                job.phase = Phase::TimedOut;
                actions.push(Action::Kill { id });
            }
        }
        let signal = self.stop.as_mut().and_then(|stop| stop.tick(now));
        if let Some(signal) = signal {
            for job in self.jobs.values_mut() {
                if job.phase == Phase::Running {
                    job.phase = Phase::Stopped;
                }
            }
            actions.push(Action::SignalAll(signal));
        }
    }
}

fn send_error(key: u64, error: &WireError) -> Action {
    Action::Send { key, report: encode_report(TAG_ERROR, &error_body(error)) }
}

#[path = "outcome.rs"]
mod outcome;

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
