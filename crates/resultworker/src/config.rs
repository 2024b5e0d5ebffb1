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
    /// (default **true**, as in Python's `ProcessPoolExecutor` or Celery's prefork pool). Much
    /// faster: no fork per job, and small jobs are written ahead into a busy child's pipe (up
    /// to 8, 16 KiB) so it never waits for the worker. But jobs then share a process one after
    /// another: state a function leaves behind (globals, leaked memory, a changed working
    /// directory) is seen by later jobs. A child that crashes or times out is replaced, and
    /// the jobs written ahead to it run elsewhere. Commands are unaffected, and so is a worker
    /// whose `init` ran with other threads alive (it starts each function job by exec).
    ///
    /// Which to choose: keep the default for functions that clean up after themselves;
    /// [`Config::max_jobs_per_process`] when they leak slowly (memory, descriptors, caches);
    /// [`Config::fork_per_job`] when each job must start from the application's state as it
    /// was at `init` (a function that changes globals, the working directory or the
    /// environment, or that must not see what an earlier job left behind), at the cost of a
    /// fork per job.
    pub reuse_processes: bool,
    /// With [`Config::reuse_processes`]: a child runs at most this many function jobs, then
    /// exits and is replaced (default `None`: no limit), like Python's `max_tasks_per_child`
    /// or Celery's `worker_max_tasks_per_child`.
    pub max_jobs_per_process: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            program: None,
            reuse_processes: true,
            max_jobs_per_process: None,
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

    /// Reuses job children, each for at most `n` function jobs (at least 1): a child exits
    /// after its `n`th job and a fresh one forked from the worker takes the next. Sets
    /// [`Config::max_jobs_per_process`] and [`Config::reuse_processes`].
    pub fn max_jobs_per_process(mut self, n: usize) -> Config {
        self.reuse_processes = true;
        self.max_jobs_per_process = Some(n.max(1));
        self
    }

    /// One fork per function job: each job runs in a fresh child of the worker, which exits
    /// after it (isolation between jobs, at the cost of a fork each). The same as
    /// `reuse_processes(false)`.
    pub fn fork_per_job(self) -> Config {
        self.reuse_processes(false)
    }

    /// Sets [`Config::program`].
    pub fn program(mut self, program: impl Into<PathBuf>) -> Config {
        self.program = Some(program.into());
        self
    }

    /// Function jobs per child as the worker is told it (`ENV_REUSE`): 0 for a fork per job.
    pub(crate) fn jobs_per_process(&self) -> usize {
        match (self.reuse_processes, self.max_jobs_per_process) {
            (false, _) => 0,
            (true, Some(n)) => n.max(1),
            (true, None) => usize::MAX,
        }
    }

    /// The restart policy.
    pub(crate) fn restart_backoff(&self) -> Backoff {
        Backoff::new(self.backoff_initial, self.backoff_max)
    }
}
