//! The daemon: one mio event loop over signals (signalfd), worker exits (pidfds), worker
//! pipes, the control socket, the queue backend's token and real deadlines (job timeouts,
//! stop ladders, retry backoff, idle timeouts, restart backoff). Nothing polls.

mod escapees;
mod group;
mod orphans;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::io::ErrorKind;
use std::os::fd::RawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use procyard_core::{Deadline, Signal, SignalFd, StreamState};

use crate::config::{Config, WorkModel};
use crate::control::{ControlServer, Incoming, Request, Response};
use crate::protocol::{Reply, ReplyOutcome};
use crate::queue::{self, OpenMode, Outcome, QueueBackend};
use crate::status::{GroupStatus, Status, WorkerStatus};
use crate::{Error, Result};
use escapees::Escapees;
use group::Group;
use procyard_core::Report;
use worker::{KIND_CONN, KIND_PIDFD, KIND_STDIN, KIND_STDOUT, StopStage, Worker};

const SIGNAL: Token = Token(0);
const LISTENER: Token = Token(1);
const QUEUE: Token = Token(2);
/// How soon to ask the queue again when it could not say when jobs fall due.
const RETRY_READ: Duration = Duration::from_secs(1);

/// The signals the daemon handles; block them with [`SignalFd`] in `main` before any thread
/// starts: `SignalFd::new(procyard_daemon::DAEMON_SIGNALS)`.
pub const DAEMON_SIGNALS: &[Signal] =
    &[Signal::TERM, Signal::INT, Signal::QUIT, Signal::HUP, Signal::CHLD];

/// Options of `run`.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Write `ready\n` to this inherited descriptor once the daemon serves.
    pub ready_fd: Option<RawFd>,
    /// Make the process a child subreaper (`PR_SET_CHILD_SUBREAPER`), so that a job's
    /// descendant that leaves its worker's process group (`setsid`) is reparented to the
    /// daemon and stopped with that worker. Process-wide: set it only in a program that owns
    /// all its children (the `procyard-daemon` binary does).
    pub subreaper: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Graceful stop: no new jobs; in-flight jobs until `grace_until`, then TERM, then KILL.
    Stopping {
        grace_until: Instant,
        terminated: bool,
    },
}

/// Runs the daemon for the config at `config_path` until a stop signal; `signals` must come
/// from [`SignalFd::new`] with [`DAEMON_SIGNALS`], created before any thread.
pub fn run(config_path: &Path, signals: SignalFd, options: RunOptions) -> Result<()> {
    let config = Config::load_runnable(config_path)?;
    let mut daemon = Daemon::new(config, signals)?;
    daemon.start(options)?;
    daemon.run_loop()
}

struct Daemon {
    config: Config,
    poll: Poll,
    signals: SignalFd,
    control: ControlServer,
    queue: Box<dyn QueueBackend>,
    groups: BTreeMap<String, Group>,
    workers: HashMap<u64, Worker>,
    next_id: u64,
    phase: Phase,
    started: Instant,
    reloads: u64,
    failed_reloads: u64,
    last_reload_error: Option<String>,
    child_signal: bool,
    forced: bool,
    /// When the queue said a delayed job becomes available.
    queue_due: Option<Instant>,
    /// Why the daemon must stop with an error (its queue is gone), once it has stopped.
    fatal: Option<Error>,
    /// Descendants of workers that escaped their process group, adopted as a subreaper.
    escapees: Escapees,
}

fn os(action: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Os { action, source }
}

impl Daemon {
    fn new(config: Config, mut signals: SignalFd) -> Result<Daemon> {
        let poll = Poll::new().map_err(os("create the event loop"))?;
        poll.registry()
            .register(&mut signals, SIGNAL, Interest::READABLE)
            .map_err(os("register the signalfd"))?;
        let mut queue = queue::open(&config.queue, OpenMode::Daemon)?;
        // Before any claim: the workers a killed daemon left running are stopped, and only
        // then are their jobs put back.
        orphans::recover(&mut *queue, config.daemon.kill_timeout)?;
        queue.bind(&config.bindings())?;
        queue.attach(poll.registry(), QUEUE)?;
        let control =
            ControlServer::bind(&config.daemon.control_socket, poll.registry(), LISTENER, |id| {
                worker::token(id, KIND_CONN)
            })?;
        let groups = config.tasks.iter().map(|t| (t.name.clone(), Group::new(t.clone()))).collect();
        Ok(Daemon {
            config,
            poll,
            signals,
            control,
            queue,
            groups,
            workers: HashMap::new(),
            next_id: 1,
            phase: Phase::Running,
            started: Instant::now(),
            reloads: 0,
            failed_reloads: 0,
            last_reload_error: None,
            child_signal: false,
            forced: false,
            queue_due: None,
            fatal: None,
            escapees: Escapees::default(),
        })
    }

    fn start(&mut self, options: RunOptions) -> Result<()> {
        // A child inherited from the process that exec'd the daemon may have exited before
        // the signalfd existed: its SIGCHLD is gone, and none may follow. Reap it now.
        self.reap_unknown_children();
        if options.subreaper {
            procyard_core::subreaper::become_subreaper()
                .map_err(|e| Error::process("become a child subreaper", e))?;
        }
        // Children the daemon has before its first worker are not its to stop.
        self.escapees.note_foreign(&children_of_self());
        for g in self.groups.values() {
            self.queue.set_capacity(&g.cfg.name, g.cfg.max_workers)?;
        }
        self.reconcile();
        if let Err(e) = self.queue.flush() {
            tracing::error!(error = %Report(&e), "queue flush failed");
        }
        tracing::info!(
            config = %self.config.path.display(),
            socket = %self.control.path().display(),
            queue = %self.queue.health().detail,
            tasks = self.groups.len(),
            "procyard-daemon ready"
        );
        if let Some(fd) = options.ready_fd {
            let writer = procyard_core::ReadyWriter::inherited(fd)
                .map_err(|e| Error::process(format!("open --ready-fd {fd}"), e))?;
            writer.notify("ready").map_err(|e| Error::process("write to --ready-fd", e))?;
        }
        crate::notify::systemd("READY=1");
        Ok(())
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn run_loop(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.next_deadline().map(|d| Deadline::at(d).remaining());
            tracing::trace!(?timeout, due = ?self.queue_due, "waiting");
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Os { action: "wait for events", source: e }),
            }
            for event in events.iter() {
                match event.token() {
                    SIGNAL => self.on_signals(),
                    LISTENER => {
                        let requests = self.control.accept(self.poll.registry());
                        self.handle_requests(requests);
                    }
                    QUEUE => {
                        if let Err(e) = self.queue.on_wake() {
                            self.on_queue_error(e, "queue backend error");
                        }
                        self.poke_groups();
                    }
                    Token(t) => {
                        let id = (t >> 2) as u64;
                        match t & 3 {
                            KIND_PIDFD => self.on_worker_exit(id),
                            KIND_STDOUT => self.on_worker_stdout(id),
                            KIND_STDIN => {
                                if let Some(w) = self.workers.get_mut(&id) {
                                    w.flush_stdin(self.poll.registry());
                                }
                            }
                            KIND_CONN => {
                                if let Incoming::Request(r) =
                                    self.control.on_ready(id, self.poll.registry())
                                {
                                    self.handle_requests(vec![(id, r)]);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                if self.forced {
                    return self.force_stop();
                }
            }
            if self.child_signal {
                self.child_signal = false;
                self.reap_unknown_children();
                // An escapee may have been reparented to us when its parent exited.
                self.stop_escapees();
            }
            self.on_deadlines();
            // The outcomes of this iteration are recorded no later than the claims that refill
            // the freed capacity (the SQLite backend writes both in one transaction; others
            // flush buffered outcomes before claiming): the queue then never holds more leased
            // jobs than `max_workers` per task, so a daemon killed at any moment leaves at most
            // that many to run again (not also the finished ones whose outcome was still
            // buffered when the new jobs were claimed).
            self.reconcile();
            if let Err(e) = self.queue.flush() {
                tracing::error!(error = %Report(&e), "unable to record job outcomes; will retry");
            }
            if matches!(self.phase, Phase::Stopping { .. })
                && self.workers.is_empty()
                && self.escapees.is_empty()
            {
                return self.finish_stop();
            }
        }
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        // A delayed job fell due since the last look (possibly while another event was being
        // handled): claim now. The queue reports only future instants, so this cannot spin.
        let now = Instant::now();
        if self.phase == Phase::Running && self.queue_due.is_some_and(|d| d <= now) {
            self.queue_due = None;
            self.poke_groups();
            return Some(now);
        }
        let mut next: Option<Instant> = None;
        let mut consider = |d: Option<Instant>| {
            if let Some(d) = d {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        };
        for w in self.workers.values() {
            consider(w.next_deadline());
            if w.is_idle()
                && w.model == WorkModel::Longlived
                && self.phase == Phase::Running
                && let Some(g) = self.groups.get(&w.group)
                && g.live_workers(&self.workers) > g.cfg.min_workers
            {
                consider(Some(w.idle_since + g.cfg.idle_timeout));
            }
        }
        for g in self.groups.values() {
            if g.wants_spawn(&self.workers) {
                consider(g.next_spawn);
            }
        }
        if let Phase::Stopping { grace_until, terminated: false } = self.phase {
            consider(Some(grace_until));
        }
        consider(self.control.next_deadline());
        consider(self.escapees.next_deadline());
        if self.phase == Phase::Running {
            match self.queue.next_due() {
                Ok(d) => {
                    // Keep a known retry time even if the queue no longer reports it as
                    // future (it may have fallen due a moment ago).
                    let due = match (d, self.queue_due) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    self.queue_due = due;
                    consider(due);
                }
                Err(e) => {
                    self.on_queue_error(e, "unable to read retry times");
                    // Look again soon; at once if the queue is gone (the stop has begun).
                    let again = if self.fatal.is_some() { Duration::ZERO } else { RETRY_READ };
                    consider(Some(Instant::now() + again));
                }
            }
        }
        next
    }

    fn on_signals(&mut self) {
        let signals = match self.signals.pending() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %Report(&e), "unable to read signals");
                return;
            }
        };
        for sig in signals {
            match sig {
                Signal::TERM | Signal::INT | Signal::QUIT => match self.phase {
                    Phase::Running => {
                        tracing::info!(signal = %sig, "graceful stop: finishing in-flight jobs");
                        self.begin_graceful_stop();
                    }
                    Phase::Stopping { .. } => {
                        tracing::warn!(signal = %sig, "second stop signal: forceful stop");
                        self.forced = true;
                    }
                },
                Signal::HUP => {
                    if self.phase == Phase::Running {
                        self.reload();
                    }
                }
                Signal::CHLD => self.child_signal = true,
                other => tracing::debug!(signal = %other, "ignored signal"),
            }
        }
    }

    fn begin_graceful_stop(&mut self) {
        crate::notify::systemd("STOPPING=1");
        self.phase = Phase::Stopping {
            grace_until: Instant::now() + self.config.daemon.grace_period,
            terminated: false,
        };
        for g in self.groups.values() {
            let _ = self.queue.set_capacity(&g.cfg.name, 0);
        }
        let kill_timeout = self.config.daemon.kill_timeout;
        let registry = self.poll.registry();
        for w in self.workers.values_mut() {
            if w.job.is_none() {
                w.abandon_job = true;
                w.begin_stop(registry, Duration::ZERO, kill_timeout);
            }
        }
    }

    fn force_stop(&mut self) -> Result<()> {
        for w in self.workers.values_mut() {
            w.abandon_job = true;
            w.kill();
        }
        for (_, mut w) in self.workers.drain() {
            if let Err(e) = w.child.wait() {
                tracing::error!(pid = %w.child.id(), error = %Report(&e), "unable to reap worker");
            }
        }
        // Escapees too, at once (the daemon exits next; init reaps them).
        self.stop_escapees();
        self.escapees.kill_all();
        self.finish_stop()
    }

    fn finish_stop(&mut self) -> Result<()> {
        if let Err(e) = self.queue.shutdown() {
            tracing::error!(error = %Report(&e), "queue shutdown failed");
        }
        self.control.shut_down(self.poll.registry());
        match self.fatal.take() {
            Some(e) => {
                tracing::error!(error = %e.chain(), "procyard-daemon stopped");
                Err(e)
            }
            None => {
                tracing::info!("procyard-daemon stopped");
                Ok(())
            }
        }
    }

    /// Logs a queue error; a queue that is gone (its file deleted or replaced) stops the
    /// daemon, which then exits with that error.
    fn on_queue_error(&mut self, e: Error, what: &'static str) {
        if !e.is_queue_lost() {
            tracing::error!(error = %e.chain(), "{what}");
            return;
        }
        if self.fatal.is_none() {
            tracing::error!(error = %e.chain(), "the queue is gone: stopping");
            self.fatal = Some(e);
            if self.phase == Phase::Running {
                self.begin_graceful_stop();
            }
        }
    }

    fn poke_groups(&mut self) {
        for g in self.groups.values_mut() {
            g.maybe_more = true;
        }
    }

    fn reload(&mut self) {
        let new = match Config::load_runnable(&self.config.path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %Report(&e), "reload failed: keeping the running config");
                self.failed_reloads += 1;
                self.last_reload_error = Some(e.chain().to_string());
                return;
            }
        };
        let mut new = new;
        if new.queue != self.config.queue {
            tracing::warn!(
                "the [queue] section changed: that needs a restart; keeping the old queue"
            );
            new.queue = self.config.queue.clone();
        }
        if new.daemon.control_socket != self.config.daemon.control_socket {
            tracing::warn!(
                "daemon.control_socket changed: that needs a restart; keeping the old socket"
            );
            new.daemon.control_socket = self.config.daemon.control_socket.clone();
        }
        if let Err(e) = self.queue.bind(&new.bindings()) {
            tracing::error!(error = %Report(&e), "reload failed: the queue refused the new bindings; keeping the running config");
            self.failed_reloads += 1;
            self.last_reload_error = Some(e.chain().to_string());
            let _ = self.queue.bind(&self.config.bindings());
            return;
        }
        let registry = self.poll.registry();
        let (grace, kill_timeout) = (new.daemon.grace_period, new.daemon.kill_timeout);
        for (name, g) in self.groups.iter_mut() {
            match new.task(name) {
                None => {
                    if g.configured {
                        tracing::info!(task = %name, "task removed: draining its workers");
                        g.configured = false;
                        let _ = self.queue.set_capacity(name, 0);
                    }
                }
                Some(cfg) if *cfg == g.cfg && g.configured => {}
                Some(cfg) => {
                    let restart = g.cfg.needs_restart(cfg) || !g.configured;
                    tracing::info!(task = %name, restart, "task changed");
                    if restart {
                        g.generation += 1;
                    }
                    g.cfg = cfg.clone();
                    g.configured = true;
                    g.crash_streak = 0;
                    g.next_spawn = None;
                    let _ = self.queue.set_capacity(name, cfg.max_workers);
                }
            }
            // Idle workers that no longer belong stop now; busy ones after their job.
            for w in self.workers.values_mut().filter(|w| &w.group == name) {
                if w.is_idle() && (!g.configured || w.generation != g.generation) {
                    w.begin_stop(registry, grace.min(kill_timeout), kill_timeout);
                }
            }
        }
        for t in &new.tasks {
            if !self.groups.contains_key(&t.name) {
                tracing::info!(task = %t.name, "task added");
                let _ = self.queue.set_capacity(&t.name, t.max_workers);
                self.groups.insert(t.name.clone(), Group::new(t.clone()));
            }
        }
        self.config = new;
        self.reloads += 1;
        self.last_reload_error = None;
        self.poke_groups();
        tracing::info!(reloads = self.reloads, "config reloaded");
    }

    fn on_deadlines(&mut self) {
        let now = Instant::now();
        let requests = self.control.on_deadlines(now, self.poll.registry());
        self.handle_requests(requests);
        let kill_timeout = self.config.daemon.kill_timeout;
        self.escapees.on_deadlines(now);
        if let Phase::Stopping { grace_until, terminated: false } = self.phase
            && grace_until <= now
        {
            tracing::warn!(workers = self.workers.len(), "grace period over: sending SIGTERM");
            let registry = self.poll.registry();
            for w in self.workers.values_mut() {
                w.abandon_job = true;
                match w.stop {
                    Some(StopStage::Term(_) | StopStage::Killed) => {}
                    _ => {
                        w.stop = None;
                        w.begin_stop(registry, Duration::ZERO, kill_timeout);
                    }
                }
            }
            self.phase = Phase::Stopping { grace_until, terminated: true };
        }
        let registry = self.poll.registry();
        for w in self.workers.values_mut() {
            if w.next_deadline().is_some_and(|d| d <= now) {
                w.on_deadline(now, kill_timeout);
            }
        }
        if self.phase == Phase::Running {
            // Scale down: stop idle workers past their idle timeout while above min.
            let mut to_stop = Vec::new();
            for g in self.groups.values() {
                let mut live = g.live_workers(&self.workers);
                let mut idle: Vec<&Worker> = self
                    .workers
                    .values()
                    .filter(|w| {
                        w.group == g.cfg.name
                            && w.is_idle()
                            && w.idle_since + g.cfg.idle_timeout <= now
                    })
                    .collect();
                idle.sort_by_key(|w| w.idle_since);
                for w in idle {
                    if live <= g.cfg.min_workers {
                        break;
                    }
                    to_stop.push(w.id);
                    live -= 1;
                }
            }
            for id in to_stop {
                if let Some(w) = self.workers.get_mut(&id) {
                    tracing::info!(task = %w.group, pid = %w.child.id(), "idle timeout: stopping worker");
                    w.begin_stop(registry, kill_timeout, kill_timeout);
                }
            }
            if self.queue_due.is_some_and(|d| d <= now) {
                self.queue_due = None;
                self.poke_groups();
            }
        }
    }

    /// Claims, dispatches and spawns for every group; drops drained groups.
    fn reconcile(&mut self) {
        let running = self.phase == Phase::Running;
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let Some(mut g) = self.groups.remove(&name) else { continue };
            if running && g.configured {
                self.reconcile_group(&mut g);
            } else if !g.pending.is_empty() && g.configured {
                // Stopping: pending jobs stay claimed; the queue gets them back at shutdown.
            } else if !g.configured {
                for job in g.pending.drain(..) {
                    let _ = self.queue.complete(
                        &job,
                        Outcome::Retry {
                            delay: Duration::ZERO,
                            reason: "task removed before the job started".into(),
                        },
                    );
                }
            }
            let has_workers = self.workers.values().any(|w| w.group == name);
            if g.configured || has_workers {
                self.groups.insert(name, g);
            } else {
                tracing::info!(task = %name, "removed task group stopped");
            }
        }
    }

    fn reconcile_group(&mut self, g: &mut Group) {
        let now = Instant::now();
        if g.next_spawn.is_some_and(|t| t <= now) {
            g.next_spawn = None;
        }
        let busy =
            self.workers.values().filter(|w| w.group == g.cfg.name && w.job.is_some()).count();
        if g.maybe_more {
            let capacity = g.cfg.max_workers.saturating_sub(busy + g.pending.len());
            if capacity > 0 {
                match self.queue.claim(&g.cfg.name, capacity) {
                    Ok(jobs) => {
                        tracing::trace!(task = %g.cfg.name, capacity, claimed = jobs.len(), "claim");
                        if jobs.len() < capacity {
                            g.maybe_more = false;
                        }
                        g.pending.extend(jobs);
                    }
                    Err(e) => {
                        tracing::error!(task = %g.cfg.name, error = %Report(&e), "unable to claim jobs");
                        g.maybe_more = false;
                    }
                }
            }
        }
        let may_spawn = g.next_spawn.is_none_or(|t| t <= now);
        match g.cfg.work_model {
            WorkModel::Oneshot => {
                while may_spawn && let Some(job) = g.pending.pop_front() {
                    let id = self.alloc_id();
                    match Worker::spawn(
                        id,
                        &g.cfg,
                        g.generation,
                        Some(job.clone()),
                        self.poll.registry(),
                    ) {
                        Ok(w) => {
                            record_holder(&mut *self.queue, &job, &w);
                            self.workers.insert(id, w);
                        }
                        Err(e) => {
                            tracing::error!(task = %g.cfg.name, error = %Report(&e), "unable to start a oneshot worker");
                            g.note_crash(now);
                            self.finish_job(g, &job, Err((e.chain().to_string(), false)));
                            break;
                        }
                    }
                }
            }
            WorkModel::Longlived => {
                self.dispatch(g);
                let live = g.live_workers(&self.workers);
                let busy = self
                    .workers
                    .values()
                    .filter(|w| {
                        w.group == g.cfg.name && w.generation == g.generation && w.job.is_some()
                    })
                    .count();
                let want = (busy + g.pending.len()).clamp(g.cfg.min_workers, g.cfg.max_workers);
                if live < want && may_spawn {
                    let n = if g.crash_streak > 0 { 1 } else { want - live };
                    for _ in 0..n {
                        let id = self.alloc_id();
                        match Worker::spawn(id, &g.cfg, g.generation, None, self.poll.registry()) {
                            Ok(w) => {
                                tracing::debug!(task = %g.cfg.name, pid = %w.child.id(), "worker started");
                                self.workers.insert(id, w);
                            }
                            Err(e) => {
                                tracing::error!(task = %g.cfg.name, error = %Report(&e), "unable to start a worker");
                                g.note_crash(now);
                                break;
                            }
                        }
                    }
                    self.dispatch(g);
                }
            }
        }
    }

    /// Longlived: hands pending jobs to idle workers of the current generation.
    fn dispatch(&mut self, g: &mut Group) {
        if g.pending.is_empty() {
            return;
        }
        let registry = self.poll.registry();
        for w in self.workers.values_mut() {
            if w.group != g.cfg.name || w.generation != g.generation || !w.is_idle() {
                continue;
            }
            let Some(job) = g.pending.pop_front() else { break };
            record_holder(&mut *self.queue, &job, w);
            if let Err(e) = w.send_job(job, g.cfg.timeout, registry) {
                tracing::error!(error = %Report(&e), "unable to send a job to a worker");
            }
        }
    }

    /// Records the outcome of an attempt: `Ok(())` done, `Err((reason, temporary))` failed.
    fn finish_job(
        &mut self,
        g: &mut Group,
        job: &crate::queue::Job,
        result: std::result::Result<(), (String, bool)>,
    ) {
        let mut retry_delay = None;
        let outcome = match result {
            Ok(()) => {
                g.done += 1;
                tracing::debug!(task = %g.cfg.name, job = %job.id, "job done");
                Outcome::Done
            }
            Err((reason, temporary)) => {
                g.failed += 1;
                if job.attempt >= g.cfg.max_attempts {
                    g.dead_lettered += 1;
                    tracing::warn!(task = %g.cfg.name, job = %job.id, attempt = job.attempt, %reason, "job dead-lettered");
                    Outcome::DeadLetter { reason }
                } else {
                    g.retried += 1;
                    let delay = g.cfg.backoff(job.attempt);
                    tracing::info!(task = %g.cfg.name, job = %job.id, attempt = job.attempt, temporary, %reason, delay_ms = delay.as_millis() as u64, "job failed: retrying");
                    retry_delay = Some(delay);
                    Outcome::Retry { delay, reason }
                }
            }
        };
        if let Err(e) = self.queue.complete(job, outcome) {
            tracing::error!(job = %job.id, error = %Report(&e), "unable to record a job outcome");
        }
        // Remember when the retry falls due: if its delay has already passed by the time the
        // outcome is flushed, the queue no longer reports it as a future instant, and without
        // this the loop would sleep with a claimable job waiting. The delay runs from
        // `complete` (queue contract), so this instant, taken after it (plus a millisecond for
        // the queue's clock granularity), is never before the job is claimable: a claim made
        // at this instant finds it, instead of finding nothing and forgetting it.
        if let Some(delay) = retry_delay {
            let due = Instant::now() + delay + Duration::from_millis(1);
            self.queue_due = Some(self.queue_due.map_or(due, |d| d.min(due)));
        }
    }

    fn on_worker_exit(&mut self, id: u64) {
        // The leader is a zombie until reaped, so its group id cannot be recycled yet: kill
        // whatever the worker left behind in its group before reaping it.
        if let Some(w) = self.workers.get(&id)
            && procyard_core::ProcStat::read(w.child.id())
                .ok()
                .flatten()
                .is_some_and(|s| s.is_zombie())
        {
            let _ = w.child.signal_group(Signal::KILL);
        }
        let exit = match self.workers.get_mut(&id).map(|w| w.child.try_wait()) {
            None | Some(Ok(None)) => return,
            Some(Ok(Some(exit))) => exit,
            Some(Err(e)) => {
                tracing::error!(error = %Report(&e), "unable to reap a worker");
                return;
            }
        };
        let Some(mut w) = self.workers.remove(&id) else { return };
        // What escaped the worker's group (and was reparented to us) goes with it.
        self.stop_escapees();
        // Read the last replies a longlived worker wrote before it exited.
        if w.stdout.is_some() {
            self.read_replies(&mut w);
        }
        w.deregister_all(self.poll.registry());
        let Some(mut g) = self.groups.remove(&w.group) else { return };
        let now = Instant::now();
        if let Some(run) = w.job.take() {
            if w.abandon_job {
                tracing::info!(job = %run.job.id, "job interrupted by the stop: it goes back to the queue");
            } else {
                let result = if run.timed_out {
                    g.timeouts += 1;
                    Err((format!("timed out after {:?}", g.cfg.timeout.unwrap_or_default()), false))
                } else if w.model == WorkModel::Longlived {
                    Err((format!("worker died during the job ({exit})"), false))
                } else {
                    match exit.code() {
                        Some(0) => Ok(()),
                        Some(75) => Err(("temporary failure (exit code 75)".to_owned(), true)),
                        _ => Err((exit.to_string(), false)),
                    }
                };
                if result.is_ok() {
                    g.crash_streak = 0;
                }
                self.finish_job(&mut g, &run.job, result);
            }
        }
        if w.model == WorkModel::Longlived && w.stop.is_none() && self.phase == Phase::Running {
            tracing::warn!(task = %g.cfg.name, pid = %w.child.id(), %exit, "worker exited unexpectedly");
            if now.duration_since(w.started) >= Duration::from_secs(10) {
                g.crash_streak = 0;
            }
            g.note_crash(now);
        } else {
            tracing::debug!(task = %g.cfg.name, pid = %w.child.id(), %exit, "worker exited");
        }
        g.maybe_more = true;
        self.groups.insert(w.group.clone(), g);
    }

    fn on_worker_stdout(&mut self, id: u64) {
        let Some(mut w) = self.workers.remove(&id) else { return };
        self.read_replies(&mut w);
        self.workers.insert(id, w);
    }

    fn read_replies(&mut self, w: &mut Worker) {
        let Some(stdout) = w.stdout.as_mut() else { return };
        let state = w.decoder.read_from(stdout);
        let mut bad: Option<String> = None;
        loop {
            match w.decoder.next::<Reply>() {
                Ok(None) => break,
                Ok(Some(reply)) => {
                    let Some(run) = w.job.take_if(|r| r.job.id == reply.id && !r.timed_out) else {
                        bad = Some(format!("reply for job {} which it was not running", reply.id));
                        break;
                    };
                    let Some(mut g) = self.groups.remove(&w.group) else { break };
                    let result = match reply.outcome {
                        ReplyOutcome::Done => Ok(()),
                        ReplyOutcome::Retry => Err((
                            reply.message.unwrap_or_else(|| "worker asked for a retry".into()),
                            true,
                        )),
                        ReplyOutcome::Fail => Err((
                            reply.message.unwrap_or_else(|| "worker reported a failure".into()),
                            false,
                        )),
                    };
                    if result.is_ok() {
                        w.jobs_done += 1;
                        g.crash_streak = 0;
                    }
                    self.finish_job(&mut g, &run.job, result);
                    w.idle_since = Instant::now();
                    g.maybe_more = true;
                    let stale = !g.configured
                        || w.generation != g.generation
                        || self.phase != Phase::Running;
                    if stale && w.stop.is_none() {
                        w.abandon_job = true;
                        let eof = if self.phase == Phase::Running {
                            self.config.daemon.kill_timeout
                        } else {
                            Duration::ZERO
                        };
                        w.begin_stop(self.poll.registry(), eof, self.config.daemon.kill_timeout);
                    } else if w.stop.is_none()
                        && let Some(job) = g.pending.pop_front()
                    {
                        record_holder(&mut *self.queue, &job, w);
                        if let Err(e) = w.send_job(job, g.cfg.timeout, self.poll.registry()) {
                            tracing::error!(error = %Report(&e), "unable to send a job to a worker");
                        }
                    }
                    self.groups.insert(w.group.clone(), g);
                }
                Err(e) => {
                    bad = Some(e.to_string());
                    break;
                }
            }
        }
        match state {
            Ok(StreamState::Open) => {}
            Ok(StreamState::Closed) => w.close_stdout(self.poll.registry()),
            Err(e) => bad = bad.or(Some(e.to_string())),
        }
        if let Some(reason) = bad {
            tracing::error!(task = %w.group, pid = %w.child.id(), %reason, "worker broke the protocol: killing it");
            w.close_stdout(self.poll.registry());
            w.kill();
        }
    }

    /// Answers control requests (a poke closes its connection; a status is answered).
    fn handle_requests(&mut self, requests: Vec<(u64, Request)>) {
        for (id, request) in requests {
            match request {
                Request::Poke => {
                    if let Err(e) = self.queue.on_wake() {
                        self.on_queue_error(e, "queue backend error");
                    }
                    self.poke_groups();
                    self.control.close(id, self.poll.registry());
                }
                Request::Status => {
                    let response = Response::Status(Box::new(self.status()));
                    self.control.respond(id, &response, self.poll.registry());
                }
            }
        }
    }

    fn status(&mut self) -> Status {
        // The counters below already include outcomes of this loop iteration: write them
        // first, so the queue's depths and dead letters agree with the counters.
        if let Err(e) = self.queue.flush() {
            tracing::error!(error = %Report(&e), "unable to record job outcomes; will retry");
        }
        let depths = self.queue.depths().unwrap_or_else(|e| {
            tracing::error!(error = %Report(&e), "unable to read queue depths");
            BTreeMap::new()
        });
        let now = Instant::now();
        let groups = self
            .groups
            .values()
            .map(|g| {
                let mut workers: Vec<WorkerStatus> = self
                    .workers
                    .values()
                    .filter(|w| w.group == g.cfg.name)
                    .map(|w| WorkerStatus {
                        pid: w.child.id().as_raw(),
                        state: w.state_name().to_owned(),
                        job: w.job.as_ref().map(|r| r.job.id.clone()),
                        uptime_secs: now.duration_since(w.started).as_secs_f64(),
                        jobs_done: w.jobs_done,
                    })
                    .collect();
                workers.sort_by_key(|w| w.pid);
                GroupStatus {
                    name: g.cfg.name.clone(),
                    work_model: g.cfg.work_model,
                    min_workers: g.cfg.min_workers,
                    max_workers: g.cfg.max_workers,
                    configured: g.configured,
                    queue: depths.get(&g.cfg.name).cloned(),
                    pending: g.pending.len(),
                    in_flight: workers.iter().filter(|w| w.job.is_some()).count(),
                    done: g.done,
                    failed: g.failed,
                    retried: g.retried,
                    dead_lettered: g.dead_lettered,
                    timeouts: g.timeouts,
                    crashes: g.crashes,
                    crash_loop: g.next_spawn.is_some_and(|t| t > now),
                    workers,
                }
            })
            .collect();
        Status {
            pid: procyard_core::Pid::current().as_raw(),
            uptime_secs: now.duration_since(self.started).as_secs_f64(),
            config: self.config.path.display().to_string(),
            state: match self.phase {
                Phase::Running => "running".into(),
                Phase::Stopping { .. } => "stopping".into(),
            },
            reloads: self.reloads,
            failed_reloads: self.failed_reloads,
            last_reload_error: self.last_reload_error.clone(),
            queue: self.queue.health(),
            groups,
            dead_letters: self.queue.dead_letters(None, 100).unwrap_or_default(),
            control_connections: self.control.connections(),
        }
    }

    /// Starts stopping the adopted escapees of workers that no longer run.
    fn stop_escapees(&mut self) {
        let known: std::collections::HashSet<i32> =
            self.workers.values().map(|w| w.child.id().as_raw()).collect();
        let running: std::collections::HashSet<u64> = self.workers.keys().copied().collect();
        let kill_timeout = self.config.daemon.kill_timeout;
        self.escapees.stop_orphaned(&children_of_self(), &known, &running, kill_timeout);
    }

    /// Reaps children this daemon did not start (it can inherit some, e.g. when a shell
    /// `exec`s it after starting background jobs), by their pid only — never `waitpid(-1)`,
    /// never a pid of one of its workers (those are reaped through their pidfds).
    fn reap_unknown_children(&mut self) {
        let ours: std::collections::HashSet<i32> =
            self.workers.values().map(|w| w.child.id().as_raw()).collect();
        for pid in children_of_self() {
            if ours.contains(&pid) {
                continue;
            }
            let Some(p) = procyard_core::Pid::from_raw(pid) else { continue };
            let is_zombie =
                procyard_core::ProcStat::read(p).ok().flatten().is_some_and(|s| s.is_zombie());
            if !is_zombie {
                continue;
            }
            let Some(rpid) = rustix::process::Pid::from_raw(pid) else { continue };
            match rustix::process::waitpid(Some(rpid), rustix::process::WaitOptions::NOHANG) {
                Ok(Some((_, status))) => {
                    if self.escapees.reaped(p) {
                        tracing::debug!(pid, ?status, "reaped a process that escaped its worker");
                    } else {
                        tracing::warn!(pid, ?status, "reaped a child this daemon did not start");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(pid, error = %Report(&e), "unable to reap an unknown child")
                }
            }
        }
    }
}

/// Records with the lease which worker runs `job`.
fn record_holder(queue: &mut dyn QueueBackend, job: &queue::Job, w: &Worker) {
    if let Some(holder) = &w.holder
        && let Err(e) = queue.record_holder(job, holder)
    {
        tracing::error!(job = %job.id, error = %Report(&e), "unable to record a job's worker");
    }
}

fn children_of_self() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(text.split_whitespace().filter_map(|s| s.parse::<i32>().ok()));
        }
    }
    out
}
