//! The thin mio shell around the [`State`]: it turns readiness into [`Event`]s (signals from
//! the signalfd, worker exits from pidfds, replies from worker pipes, control requests, the
//! queue's wake-ups, a tick per turn for deadlines) and performs the [`Action`]s
//! ([`super::effects`]). Every decision is the state's.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use procyard_core::{Deadline, Report, SignalFd, Timer};

use super::escapees::Escapees;
use super::event::{Action, Event, WorkerId};
use super::process::{
    KIND_BITS, KIND_CONN, KIND_PIDFD, KIND_STDERR, KIND_STDIN, KIND_STDOUT, Process, token,
};
use super::state::{Phase, State};
use super::{RunOptions, orphans, strays};
use crate::config::Config;
use crate::control::{ControlServer, Incoming};
use crate::queue::{self, Captured, OpenMode, QueueBackend, ResourceUse};
use crate::stamp;
use crate::{Error, Result};

const SIGNAL: Token = Token(0);
const LISTENER: Token = Token(1);
const QUEUE: Token = Token(2);
/// The loop's wake-up timer (worker and connection tokens are 8 and above).
const TIMER: Token = Token(3);
/// How soon to ask the queue again when it could not say when jobs fall due.
const RETRY_READ: Duration = Duration::from_secs(1);

pub(super) struct Shell {
    pub(super) state: State,
    pub(super) poll: Poll,
    signals: SignalFd,
    /// Wakes the loop at its next deadline to the nanosecond (a poll timeout is in whole
    /// milliseconds, plus the kernel's slack).
    timer: Timer,
    pub(super) control: ControlServer,
    pub(super) queue: Box<dyn QueueBackend>,
    pub(super) processes: HashMap<WorkerId, Process>,
    /// Descendants of workers that escaped their process group, adopted as a subreaper.
    pub(super) escapees: Escapees,
    /// Why the daemon must stop with an error (its queue is gone), once it has stopped.
    pub(super) fatal: Option<Error>,
    /// A second stop signal arrived.
    pub(super) forced: bool,
    /// A SIGCHLD arrived: reap strays at the end of the turn.
    pub(super) reap_strays: bool,
    /// A worker exited: stop its escapees at the end of the turn.
    pub(super) escapees_due: bool,
    /// The captured stdout and stderr of oneshot workers that exited, until their job's
    /// attempt is recorded.
    pub(super) outputs: HashMap<WorkerId, (Option<Captured>, Option<Captured>)>,
    /// What oneshot workers that exited cost, until their job's attempt is recorded.
    pub(super) usage: HashMap<WorkerId, ResourceUse>,
    /// Control connections following a running attempt's output (`logs -f`).
    pub(super) followers: Vec<super::live::Follower>,
    /// The HTTP face (`[http]`), fed snapshots and job starts and ends.
    pub(super) http: Option<crate::http::Face>,
    /// While a batch of events (or of one worker's replies) is handled: the workers sent
    /// jobs, whose stdin is written once the batch is done (one write for the jobs that
    /// refill a worker, not one per job); `None`: written at once.
    pub(super) stdin_later: Option<Vec<WorkerId>>,
}

pub(super) fn os(action: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Os { action, source }
}

impl Shell {
    pub(super) fn new(config: Config, mut signals: SignalFd) -> Result<Shell> {
        let poll = Poll::new().map_err(os("create the event loop"))?;
        poll.registry()
            .register(&mut signals, SIGNAL, Interest::READABLE)
            .map_err(os("register the signalfd"))?;
        let mut timer = Timer::new().map_err(os("create the loop's timer"))?;
        poll.registry()
            .register(&mut timer, TIMER, Interest::READABLE)
            .map_err(os("register the loop's timer"))?;
        let mut queue = queue::open(&config.queue, OpenMode::Daemon)?;
        // Before any claim: the workers a killed daemon left running are stopped, and only
        // then are their jobs put back.
        orphans::recover(&mut *queue, config.daemon.kill_timeout)?;
        queue.bind(&config.bindings())?;
        queue.set_schedules(&config.schedules)?;
        queue.set_limits(&config.limits())?;
        queue.set_retention(config.daemon.retention);
        queue.attach(poll.registry(), QUEUE)?;
        let control =
            ControlServer::bind(&config.daemon.control_socket, poll.registry(), LISTENER, |id| {
                token(id, KIND_CONN)
            })?;
        Ok(Shell {
            state: State::new(config, Instant::now()),
            poll,
            signals,
            timer,
            control,
            queue,
            processes: HashMap::new(),
            escapees: Escapees::default(),
            fatal: None,
            forced: false,
            reap_strays: false,
            escapees_due: false,
            outputs: HashMap::new(),
            usage: HashMap::new(),
            followers: Vec::new(),
            http: None,
            stdin_later: None,
        })
    }

    pub(super) fn start(&mut self, options: RunOptions) -> Result<()> {
        // A child inherited from the process that exec'd the daemon may have exited before
        // the signalfd existed: its SIGCHLD is gone, and none may follow. Reap it now.
        strays::reap_unknown_children(self);
        if options.subreaper {
            procyard_core::subreaper::become_subreaper()
                .map_err(|e| Error::process("become a child subreaper", e))?;
        }
        // Children the daemon has before its first worker are not its to stop.
        self.escapees.note_foreign(&strays::children_of_self());
        for g in self.state.groups.values() {
            self.queue.set_capacity(&g.cfg.name, g.cfg.held_jobs())?;
        }
        self.feed(Event::Reconcile);
        self.flush_queue();
        if let Some(settings) = self.state.config.http.clone() {
            let face =
                crate::http::Face::start(&self.state.config, &settings, self.light_status())?;
            self.http = Some(face);
        }
        tracing::info!(
            config = %self.state.config.path.display(),
            socket = %self.control.path().display(),
            queue = %self.queue.health().detail,
            tasks = self.state.groups.len(),
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

    /// Steps the state with `event` and performs what it answers, feeding back the answers of
    /// actions that have one, until nothing is left to do.
    pub(super) fn feed(&mut self, event: Event) {
        let mut todo: VecDeque<Action> = self.state.step(event, Instant::now()).into();
        while let Some(action) = todo.pop_front() {
            if let Some(answer) = self.perform(action) {
                todo.extend(self.state.step(answer, Instant::now()));
            }
        }
    }

    pub(super) fn run_loop(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let deadline = self.next_deadline();
            // The timer wakes the poll at the deadline; should it fail, the poll's timeout
            // (whole milliseconds) does.
            let timeout = match self.timer.set(deadline) {
                Ok(()) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "unable to set the loop's timer");
                    deadline.map(|d| Deadline::at(d).remaining())
                }
            };
            tracing::trace!(?deadline, ?timeout, due = ?self.state.queue_due, "waiting");
            procyard_core::event::poll(&mut self.poll, &mut events, timeout)
                .map_err(os("wait for events"))?;
            // Woken for the timer alone (no other event came first): how late it woke.
            let timer_alone = events.iter().all(|e| e.token() == TIMER);
            if timer_alone && let Some(d) = deadline {
                stamp::woke(d);
            }
            // The jobs sent to workers during this batch of events go out in one write per
            // worker once it is handled (not one per job).
            self.stdin_later = Some(Vec::new());
            for event in events.iter() {
                match event.token() {
                    SIGNAL => self.on_signals(),
                    LISTENER => {
                        for (conn, request) in self.control.accept(self.poll.registry()) {
                            self.feed(Event::Control { conn, request });
                        }
                    }
                    QUEUE => self.on_queue_wake(),
                    TIMER => {
                        self.timer.fired();
                    }
                    Token(t) => {
                        let id = (t >> KIND_BITS) as u64;
                        match t & ((1 << KIND_BITS) - 1) {
                            KIND_PIDFD => stamp::timed("reap", || self.on_worker_exit(id)),
                            KIND_STDOUT | KIND_STDERR => self.read_output(id, t & 7),
                            KIND_STDIN => {
                                if let Some(p) = self.processes.get_mut(&id) {
                                    p.flush_stdin(self.poll.registry());
                                }
                            }
                            KIND_CONN => {
                                if let Incoming::Request(request) =
                                    self.control.on_ready(id, self.poll.registry())
                                {
                                    self.feed(Event::Control { conn: id, request });
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
            self.write_stdin_later();
            self.stdin_later = Some(Vec::new());
            let now = Instant::now();
            for (conn, request) in self.control.on_deadlines(now, self.poll.registry()) {
                self.feed(Event::Control { conn, request });
            }
            self.escapees.on_deadlines(now);
            self.feed(Event::Tick);
            // The outcomes of this turn are recorded no later than the claims that refill the
            // freed capacity (the SQLite backend writes both in one transaction; others flush
            // buffered outcomes before claiming): the queue then never holds more leased jobs
            // than `max_workers` per task, so a daemon killed at any moment leaves at most that
            // many to run again.
            self.feed(Event::Reconcile);
            self.write_stdin_later();
            // Strays and escapees after the claims and starts that refill the freed capacity.
            let (reap, stop) =
                (std::mem::take(&mut self.reap_strays), std::mem::take(&mut self.escapees_due));
            if reap || stop {
                stamp::timed("strays", || strays::tend(self, reap, stop));
            }
            if self.state.phase == Phase::Running {
                self.flush_queue_soon();
            } else {
                self.flush_queue();
            }
            self.publish_http(Instant::now());
            if self.state.is_finished() && self.escapees.is_empty() {
                return self.finish_stop();
            }
        }
    }

    /// Writes the stdin of the workers sent jobs while writes were held
    /// ([`Shell::stdin_later`]), and holds them no more.
    pub(super) fn write_stdin_later(&mut self) {
        for worker in self.stdin_later.take().unwrap_or_default() {
            if let Some(p) = self.processes.get_mut(&worker) {
                p.flush_stdin(self.poll.registry());
            }
        }
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let mut extra = vec![
            self.control.next_deadline(),
            self.escapees.next_deadline(),
            self.http.as_ref().and_then(crate::http::Face::next_deadline),
        ];
        if self.state.phase == Phase::Running {
            match self.queue.next_due() {
                // Keep a known retry time even if the queue no longer reports it as future
                // (it may have fallen due a moment ago).
                Ok(due) => self.state.note_queue_due(due),
                Err(e) => {
                    self.on_queue_error(e, "unable to read retry times");
                    // Look again soon; at once if the queue is gone (the stop has begun).
                    let again = if self.fatal.is_some() { Duration::ZERO } else { RETRY_READ };
                    extra.push(Some(Instant::now() + again));
                }
            }
        }
        extra.into_iter().flatten().chain(self.state.next_deadline()).min()
    }

    fn on_signals(&mut self) {
        match self.signals.pending() {
            Ok(signals) => {
                for signal in signals {
                    self.feed(Event::Signal(signal));
                }
            }
            Err(e) => tracing::error!(error = %Report(&e), "unable to read signals"),
        }
    }

    pub(super) fn on_queue_wake(&mut self) {
        if let Err(e) = self.queue.on_wake() {
            self.on_queue_error(e, "queue backend error");
        }
        let ids = self.queue.take_cancels();
        if !ids.is_empty() {
            self.feed(Event::CancelRequested { ids });
        }
        self.feed(Event::QueueWake);
    }

    /// The end of a loop iteration while running: the queue may batch these outcomes with
    /// the next ones, by a deadline it reports (`next_due`).
    fn flush_queue_soon(&mut self) {
        if let Err(e) = stamp::timed("flush", || self.queue.flush_soon()) {
            tracing::error!(error = %Report(&e), "unable to record job outcomes; will retry");
        }
    }

    pub(super) fn flush_queue(&mut self) {
        if let Err(e) = stamp::timed("flush", || self.queue.flush()) {
            tracing::error!(error = %Report(&e), "unable to record job outcomes; will retry");
        }
    }

    /// Logs a queue error; a queue that is gone (its file deleted or replaced) stops the
    /// daemon, which then exits with that error.
    pub(super) fn on_queue_error(&mut self, e: Error, what: &'static str) {
        if !e.is_queue_lost() {
            tracing::error!(error = %e.chain(), "{what}");
            return;
        }
        if self.fatal.is_none() {
            tracing::error!(error = %e.chain(), "the queue is gone: stopping");
            self.fatal = Some(e);
            self.feed(Event::QueueLost);
        }
    }
}
