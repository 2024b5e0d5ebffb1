//! The daemon loop's closed vocabulary: every [`Event`] the shell feeds to
//! [`State::step`](super::state::State::step), and every [`Action`] it answers with.
//!
//! Some actions ask the shell for something the state cannot do itself (claim jobs, start a
//! worker, load the config); the shell performs them at once and feeds the answer back as an
//! event (`Claimed`, `Spawned`, `Reloaded`, …), so every decision stays in the state.

use procyard_core::{Exit, Signal};

use crate::config::Config;
use crate::control::Request;
use crate::protocol::{Hello, Reply};
use crate::queue::{AttemptEnd, Job, Outcome};

/// A worker's id in the daemon (tags its tokens; never reused).
pub(crate) type WorkerId = u64;
/// A control connection's id.
pub(crate) type ConnId = u64;

/// How an attempt ended, as the state saw it (the shell adds the output and the times).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Ended {
    /// The worker that ran it.
    pub worker: WorkerId,
    /// Its pid, once started.
    pub pid: Option<i32>,
    /// How it ended.
    pub end: AttemptEnd,
}

/// Something that happened, as the shell saw it.
#[derive(Debug)]
pub(crate) enum Event {
    /// A signal arrived (TERM/INT/QUIT stop, HUP reloads, CHLD may mean strays to reap).
    Signal(Signal),
    /// A worker's process exited (its last replies were fed first).
    Exited { worker: WorkerId, exit: Exit },
    /// A longlived worker's reply frame.
    Reply { worker: WorkerId, reply: Reply },
    /// A longlived worker's hello: what it understands (cancel frames).
    Hello { worker: WorkerId, hello: Hello },
    /// A longlived worker wrote something that is not a reply frame.
    ProtocolError { worker: WorkerId, reason: String },
    /// A deadline may have passed (sent once per turn of the loop).
    Tick,
    /// Claim, dispatch and start workers (sent once per turn, after the other events).
    Reconcile,
    /// A control request arrived on connection `conn`.
    Control { conn: ConnId, request: Request },
    /// The queue backend says jobs may be waiting.
    QueueWake,
    /// The queue backend heard requests to cancel these jobs (AMQP: from another daemon's
    /// `cancel`): cancel those this daemon holds.
    CancelRequested { ids: Vec<String> },
    /// The queue is gone (its file deleted or replaced): stop.
    QueueLost,
    /// Answer to [`Action::Claim`]: `jobs` of the `max` asked for.
    Claimed { task: String, max: usize, jobs: Vec<Job> },
    /// Answer to [`Action::Claim`] when the queue failed.
    ClaimFailed { task: String },
    /// Answer to [`Action::Spawn`]: the worker runs as `pid`.
    Spawned { worker: WorkerId, pid: i32 },
    /// Answer to [`Action::Spawn`]: the worker could not be started.
    SpawnFailed { worker: WorkerId, error: String },
    /// Answer to [`Action::Reload`]: the new config (its queue already bound to it).
    Reloaded(Box<Config>),
    /// Answer to [`Action::Reload`]: the running config is kept.
    ReloadFailed { error: String },
    /// Answer to [`Action::CheckFollow`]: the job has not ended; follow it once it runs.
    FollowPending { conn: ConnId, id: String },
    /// Answer to [`Action::Watch`]: of the jobs asked about, those that have not ended.
    Watching { conn: ConnId, pending: Vec<String>, any_attempt: bool },
}

/// What the shell is to do.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Action {
    /// Claim up to `max` jobs of `task`; answer with `Claimed` or `ClaimFailed`.
    Claim { task: String, max: usize },
    /// Start the worker `worker` the state recorded (its task, generation and, for a oneshot
    /// worker, its job); answer with `Spawned` or `SpawnFailed`.
    Spawn { worker: WorkerId },
    /// Send job `job`, which the state just handed to the (longlived) worker, to it: the
    /// job it runs, or one sent ahead.
    SendJob { worker: WorkerId, job: String },
    /// Send a cancel frame for `job` to the (longlived) worker running it.
    SendCancel { worker: WorkerId, job: String },
    /// Signal the worker's process group (and continue it, for any signal but KILL).
    Signal { worker: WorkerId, signal: Signal },
    /// Close the worker's stdin.
    CloseStdin { worker: WorkerId },
    /// Stop reading the worker's stdout (it broke the protocol).
    CloseStdout { worker: WorkerId },
    /// Tell the queue how a job ended, and how its attempt ended (none when no attempt ran).
    Complete { job: Job, outcome: Outcome, attempt: Option<Ended> },
    /// Tell the queue how many jobs of `task` may be leased at once.
    SetCapacity { task: String, capacity: usize },
    /// Ask the queue backend what woke it.
    WakeQueue,
    /// Load the config file again; answer with `Reloaded` or `ReloadFailed`.
    Reload,
    /// Close a control connection (a poke needs no answer).
    CloseConnection { conn: ConnId },
    /// Answer a control connection with the status.
    AnswerStatus { conn: ConnId },
    /// Keep a control connection open until `timeout` and find which of `ids` have not ended
    /// (the queue's buffered outcomes written first); answer with `Watching`.
    Watch { conn: ConnId, ids: Vec<String>, any_attempt: bool, timeout: std::time::Duration },
    /// Hold a control connection until `timeout` and send it the output of `worker`'s run
    /// `run` written after the offsets, as soon as there is some or the run ends.
    Follow {
        conn: ConnId,
        worker: WorkerId,
        run: u64,
        delivery: u32,
        stdout_at: u64,
        stderr_at: u64,
        timeout: std::time::Duration,
    },
    /// Hold a control connection until `timeout`: answer it now (`Ended`) if job `id` has
    /// ended, else with `FollowPending`.
    CheckFollow { conn: ConnId, id: String, timeout: std::time::Duration },
    /// Tell a waiting control connection that what it waited for happened.
    AnswerWait { conn: ConnId },
    /// Answer a cancel request: the jobs found claimed or running here (being cancelled).
    AnswerCancel { conn: ConnId, found: Vec<String> },
    /// Answer a pause, resume or scale request: applied (`Ok`) or refused (`Err`).
    AnswerApplied { conn: ConnId, result: Result<String, String> },
    /// Reap children the daemon did not start, and stop workers' escapees.
    ReapStrays,
    /// Stop the escapees of workers that are gone.
    StopEscapees,
    /// Tell the service manager (`sd_notify`).
    Notify(&'static str),
    /// A second stop signal: kill everything now and exit.
    ForceStop,
}
