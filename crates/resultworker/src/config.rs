//! [`Config`]: how a [`ResultWorker`](crate::ResultWorker) runs.

use std::path::PathBuf;
use std::time::Duration;

use procyard_core::Backoff;

/// How a [`ResultWorker`](crate::ResultWorker) runs: `Config::default()` and the builder
/// methods.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Jobs running at once (each in its own child process). Default: the number of CPUs.
    pub max_workers: usize,
    /// The first restart delay after the worker dies; it doubles up to `backoff_max`.
    /// Default: 50 ms.
    pub backoff_initial: Duration,
    /// The longest restart delay. Default: 5 s.
    pub backoff_max: Duration,
    /// The program to start as the worker; default: this program (`/proc/self/exe`). It must
    /// call [`init`](crate::init) first thing in `main`.
    pub program: Option<PathBuf>,
    /// Let a job's child process run further function jobs instead of exiting after one
    /// (default false). Much faster: no fork per job, and small jobs are written ahead into a
    /// busy child's pipe (up to 8, 16 KiB) so it never waits for the worker. But jobs then
    /// share a process one after another: state a function leaves behind (globals, leaked
    /// memory, a changed working directory) is seen by later jobs. A child that crashes or
    /// times out is replaced, and the jobs written ahead to it run elsewhere. Commands are
    /// unaffected, and so is a worker whose `init` ran with other threads alive (it starts
    /// each function job by exec).
    pub reuse_processes: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            program: None,
            reuse_processes: false,
        }
    }
}

impl Config {
    /// Sets [`Config::max_workers`] (at least 1).
    pub fn max_workers(mut self, n: usize) -> Config {
        self.max_workers = n.max(1);
        self
    }

    /// Sets the restart backoff range ([`Config::backoff_initial`], [`Config::backoff_max`];
    /// a `max` below `initial` is raised to it).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Config {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }

    /// Sets [`Config::reuse_processes`].
    pub fn reuse_processes(mut self, reuse: bool) -> Config {
        self.reuse_processes = reuse;
        self
    }

    /// Sets [`Config::program`].
    pub fn program(mut self, program: impl Into<PathBuf>) -> Config {
        self.program = Some(program.into());
        self
    }

    /// The restart policy.
    pub(crate) fn restart_backoff(&self) -> Backoff {
        Backoff::new(self.backoff_initial, self.backoff_max)
    }
}
