//! Run jobs in a background worker process and get futures for their results.
//!
//! One worker process per application (or per [`ResultWorker`] instance) runs the jobs;
//! results come back over a pipe to a listener thread that completes the future of each
//! job's key.
//!
//! # Concepts
//!
//! - The **worker** is this same program started again by exec: [`init`] (called first thing
//!   in `main`) returns at once in a normal run and turns the process into the worker when
//!   its environment says so. The worker is single-threaded and forks the children that run
//!   function jobs — which is sound, unlike forking a multi-threaded application — or spawns
//!   the command, up to [`Config::max_workers`] at once, each in its own process group. (When
//!   `init` runs with other threads alive, the worker starts function jobs by exec instead;
//!   see below.)
//! - **Reuse or a fork per job.** By default a function job's child serves job after job, as
//!   in every mainstream pool (Python's `ProcessPoolExecutor`, Celery's prefork): no fork per
//!   job, tens of microseconds a round trip. Which to choose:
//!   - the default, for functions that leave nothing behind;
//!   - [`Config::max_jobs_per_process`]`(n)` when they leak slowly (memory, descriptors,
//!     caches): a child exits after `n` jobs and a fresh one takes over;
//!   - [`Config::fork_per_job`] when each job must start from the program's state as it was
//!     at `init` (a function changes globals, the working directory or the environment, or
//!     must not see what an earlier job left behind), at the cost of a fork per job (a few
//!     thousand jobs a second instead of a hundred thousand).
//!
//!   On a stop, the few jobs already written ahead into a busy reused child (at most 8 per
//!   child) run within the grace; the rest end as [`Error::Stopped`].
//! - A **handle** ([`ResultWorker`]): [`ResultWorker::new`] makes a worker of its own,
//!   stopped when its last clone is dropped; [`ResultWorker::start`] starts the process's
//!   global one (an error if it runs already with another [`Config`]), and
//!   [`ResultWorker::global`] returns it. [`ResultWorker::stop`] takes a grace period.
//! - A **job** ([`Job`]) is a function registered with [`register`] (before [`init`]) called
//!   with JSON arguments, or a command. Its outcome is `Result<T, Error>`: the value, or the
//!   job's own error, a crash (exit code or signal), a timeout, the worker's death
//!   ([`Error::WorkerLost`]) or a stop ([`Error::Stopped`]).
//! - A **future** ([`ResultFuture`]) is keyed by a unique [`Key`]: wait, wait with a timeout,
//!   poll, register a callback, or `.await` it. The key is forgotten once the result arrives
//!   or when the last future of the job is dropped. Many at once: [`wait_all`],
//!   [`wait_all_timeout`], [`wait_any`], [`wait_any_timeout`], and [`as_completed`] (the
//!   outcomes in the order they arrive) — the same shape as procyard-procmgr's handles.
//! - A **command** job's value is a [`CommandOutput`] shaped like `std::process::Output`
//!   (status, stdout, stderr, each stream bounded by [`OUTPUT_LIMIT`]); one that does not exit
//!   with status 0 is [`Error::CommandFailed`], which keeps the same output.
//! - A fork per job ([`Config::fork_per_job`]) is the cost of isolation, so the worker keeps
//!   it cheap. When jobs queue up, each is forked with its job already in memory (no job
//!   pipe, no wake-up) by the worker's **zygote**: a small process the worker forks as it
//!   starts, before it holds any queue or buffer, so each fork copies few page tables and
//!   the child writes (copies) few pages; the forks also run beside the worker's loop rather
//!   than inside it. The job's process is still the worker's child (the zygote forks it with
//!   `CLONE_PARENT`, through procyard-core's `fork_sibling`): the worker waits for it, times
//!   it out and signals its group as before, it dies with the worker, and its outcome is typed
//!   the same. If the zygote dies, the jobs it had not started fail with [`Error::Failed`]
//!   and the worker forks the next ones itself. When idle, the worker keeps a spare child
//!   forked ahead of time (the next job does not wait for a fork). A function child that the
//!   worker forked writes a small result (up to `PIPE_BUF` bytes) straight to the
//!   application's listener, on a pipe all children share, and tells the worker only that it
//!   did, so the worker is no hop on the result's way; a larger one (or one that pipe has no
//!   room for) goes through the worker: every function child reports into one pipe shared by
//!   all (whole chunks of at most `PIPE_BUF` bytes, tagged with the child's id), and a result
//!   is forwarded as soon as its report arrives, before the child exits.
//! - Frames are procyard-core's length-prefixed frames, so payloads are binary-safe. If the
//!   worker dies, every pending future fails with [`Error::WorkerLost`] and the worker is
//!   restarted with backoff. The worker dies with the application (parent-death signal and
//!   end of file on its request pipe). No signal handler is installed anywhere.
//!
//! # Example
//!
//! ```rust,standalone_crate
//! use std::time::Duration;
//! use procyard_resultworker::{Config, Job, ResultWorker, register};
//!
//! fn main() -> Result<(), procyard_resultworker::Error> {
//!     let square = register("square", |x: u64| Ok::<_, String>(x * x));
//!     procyard_resultworker::init(); // the worker process never returns from here
//!
//!     // Children serve job after job; each is replaced after 1,000 jobs. For a fresh
//!     // process per job instead: `Config::default().fork_per_job()`.
//!     let config = Config::default().max_workers(2).max_jobs_per_process(1_000);
//!     let worker = ResultWorker::start(config)?;
//!     let a = worker.call(&square, &7);
//!     let b = worker.submit::<procyard_resultworker::CommandOutput>(Job::command("echo", ["hi"]));
//!     assert_eq!(a.wait()?, 49);
//!     assert_eq!(b.wait()?.stdout, b"hi\n");
//!     worker.stop(Duration::from_secs(5));
//!     Ok(())
//! }
//! ```
//!
//! # Async programs and thread pools
//!
//! `#[tokio::main]` with `init()` inside it works: the worker process (this program run
//! again) then has the runtime's threads too, so it does not fork its jobs — unsound in a
//! multi-threaded process — but starts each function job as a new process of this program by
//! exec, whose `main` reaches `init` and runs the job. That costs a program start per job.
//! For the fast path, call `init` before any thread starts, in a plain `main`, and build the
//! runtime after it; the worker then forks its jobs:
//!
//! ```rust,no_run
//! # use procyard_resultworker::{Config, Function, ResultWorker, register};
//! fn main() {
//!     let square = register("square", |x: u64| Ok::<_, String>(x * x));
//!     procyard_resultworker::init();
//!     let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
//!     runtime.block_on(async_main(square));
//! }
//!
//! async fn async_main(square: Function<u64, u64>) {
//!     let worker = ResultWorker::start(Config::default()).unwrap();
//!     assert_eq!(worker.call(&square, &7).await.unwrap(), 49);
//! }
//! ```
//!
//! Runnable programs: `examples/tokio_main.rs` (`#[tokio::main]`, `init` inside it),
//! `examples/tokio.rs` (`init`, then tokio's multi-threaded runtime) and
//! `examples/thread_pool.rs` (a pool of threads started after `init`, and a plain `block_on`
//! executor); the tests `example_tokio_main`, `example_tokio` and `example_thread_pool` run
//! them.
//!
//! # Limitations
//!
//! Linux only. A dropped future does not cancel its job. A job that has reported its value
//! no longer counts against `max_workers`, even while its process is still exiting. After the
//! application forks, the child sees the parent's workers as stopped and may start its own
//! (the usual caveat applies: a multi-threaded process should only exec after `fork`).
//! Registered functions must be registered before [`init`] runs, and arguments and values
//! travel as JSON (at most 64 MiB).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod error;
mod future;
mod handle;
mod job;
mod listener;
mod mode;
mod output;
mod shared;
mod stop;
mod waiting;
mod wire;
mod worker;

pub use config::Config;
pub use error::{Error, JobError, Result};
pub use future::{Key, ResultFuture};
pub use handle::ResultWorker;
pub use job::{ArgsFor, Function, Job, register};
pub use output::{CommandOutput, OUTPUT_LIMIT};
/// Types of procyard-core that appear in this crate's signatures, so one dependency suffices.
pub use procyard_core::{Deadline, Exit, Pid, Signal};
pub use waiting::{
    AsCompleted, as_completed, wait_all, wait_all_timeout, wait_any, wait_any_deadline,
    wait_any_timeout,
};

/// Call first thing in `main` (after [`register`]ing functions). In a normal run it returns
/// at once; in the worker process started by a [`ResultWorker`] it runs the worker and exits
/// the process when the worker is done.
///
/// A program that forgets it gets [`Error::InitNotCalled`] from [`ResultWorker::start`]: the
/// worker process runs `main` again, and when it reaches `start` it exits at once (saying why
/// on stderr) instead of starting a worker of its own. Called with other threads alive (inside
/// `#[tokio::main]`, after starting a thread pool) it works, more slowly: see the crate docs.
pub fn init() {
    if let Some(id) = mode::job_mode() {
        worker::run_job(id);
    }
    if let Some(max_workers) = mode::worker_mode() {
        let code = worker::run(max_workers, mode::is_threaded());
        std::process::exit(code);
    }
}

/// Whether this process is a worker (only ever true inside [`init`] or a job).
pub fn is_worker_process() -> bool {
    mode::worker_mode().is_some()
}

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_and_futures_cross_threads() {
        assert_send_sync::<crate::ResultWorker>();
        assert_send_sync::<crate::ResultFuture<std::rc::Rc<u8>>>();
        assert_send_sync::<crate::Error>();
        assert_send_sync::<crate::Job>();
    }
}
