//! The daemon: a closed state machine under a thin mio shell.
//!
//! - [`state`]: the [`State`](state::State) and its pure transition
//!   `step(&mut State, Event, now) -> Vec<Action>` ([`event`] lists both vocabularies), with
//!   its parts in their own files: [`schedule`] (claim, start, dispatch), [`outcome`] (how a
//!   job ended), [`reload`] (the `plan(old, new)` diff), [`snapshot`] (`status`), [`worker`]
//!   and [`group`] (what the state keeps per worker and per task).
//! - [`shell`]: one mio loop over signals (signalfd), worker exits (pidfds), worker pipes,
//!   the control socket, the queue backend's token and the state's deadlines (job timeouts,
//!   stop ladders, retry backoff, idle timeouts, restart backoff); [`effects`] performs the
//!   actions, [`readiness`] turns worker exits and replies into events, [`process`] holds a
//!   worker's process and pipes, [`strays`] and [`escapees`] deal with children that are not
//!   workers, [`orphans`] with the workers of a dead daemon.
//!
//! Nothing polls: the loop sleeps until an event or the earliest real deadline.

mod capture;
mod effects;
mod escapees;
mod event;
mod follow;
mod group;
mod live;
mod orphans;
mod outcome;
mod process;
mod readiness;
mod reload;
mod requests;
mod schedule;
mod shell;
mod snapshot;
mod state;
mod strays;
#[cfg(test)]
mod testing;
mod worker;

use std::os::fd::RawFd;
use std::path::Path;

use procyard_core::{Signal, SignalFd};

use crate::Result;
use crate::config::Config;

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

/// Runs the daemon for the config at `config_path` until a stop signal; `signals` must come
/// from [`SignalFd::new`] with [`DAEMON_SIGNALS`], created before any thread.
pub fn run(config_path: &Path, signals: SignalFd, options: RunOptions) -> Result<()> {
    let config = Config::load_runnable(config_path)?;
    let mut shell = shell::Shell::new(config, signals)?;
    shell.start(options)?;
    shell.run_loop()
}
