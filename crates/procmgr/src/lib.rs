//! Run tasks in child processes: a low-level [`ProcessManager`] with completion handlers,
//! child→parent messages and typed outcomes; a [`Scheduler`] with throttling and result
//! [`Handle`]s (also futures); a supervised [`Server`] of n workers; and a [`NamedLock`]
//! between processes.
//!
//! # Concepts
//!
//! - A [`Task`] is a command ([`Task::command`] takes a [`Command`] or the `&mut Command` its
//!   builder returns; [`Task::capture_output`] keeps its stdout and stderr as a
//!   [`CommandOutput`]), a function [`register`]ed before [`init`] (run by re-executing the
//!   current binary, which calls `init` first thing in `main` — the same shape as
//!   procyard-resultworker's `register` and `init`: safe from any thread), or a closure
//!   forked in place (only in a single-threaded process, checked at each fork:
//!   [`Error::NotSingleThreaded`] otherwise).
//! - A task talks to its parent through an [`Endpoint`]: any number of messages
//!   ([`Endpoint::send`], read back typed with [`Handle::messages`] or handed to a handler),
//!   delivered in order before its [`Outcome`] — a value, a task error with its message, an
//!   exit code, a signal, a captured output, an unknown function, a death in the middle of a
//!   message, or a lost child. Nothing is swallowed.
//! - A [`Handle`] is cheap to clone and waited on by reference ([`Handle::wait`],
//!   [`Handle::wait_timeout`]); many at once with [`wait_all`], [`wait_all_timeout`],
//!   [`wait_any`], [`wait_any_timeout`] and [`as_completed`] — the same shape as
//!   procyard-resultworker's futures.
//! - [`ProcessManager::step`] sleeps in one `mio::Poll` on the children's pidfds and pipes and
//!   on a `mio::Waker` ([`ProcessManager::wakeup`], never blocking): no timer, no polling,
//!   no SIGCHLD handler, no `waitpid(-1)`. Several managers live in one process, beside any
//!   other code that spawns children.
//! - Children run in process groups of their own; [`ProcessManager::kill_processes`] and
//!   [`ProcessManager::teardown`] (TERM, grace, KILL) signal only live children's groups.
//!
//! # Example
//!
//! ```
//! use procyard_procmgr::{Command, Outcome, Scheduler, Stdio, Strategy, Task, wait_all};
//!
//! let scheduler = Scheduler::new(Strategy::Throttled(2))?;
//! let handles = (0..20)
//!     .map(|i| {
//!         let script = format!("echo {i}; exit {}", i % 2);
//!         scheduler.schedule(Task::command(Command::shell(script).stdout(Stdio::Null)))
//!     })
//!     .collect::<Result<Vec<_>, _>>()?;
//! for (i, outcome) in wait_all(&handles).into_iter().enumerate() {
//!     assert_eq!(outcome, Outcome::Exited { code: (i % 2) as u8 });
//! }
//! scheduler.shutdown();
//! # Ok::<(), procyard_procmgr::Error>(())
//! ```
//!
//! A whole program — functions registered before [`init`], captured output, typed messages,
//! outcomes as they complete — is `examples/first_hour.rs` (run by the test
//! `example_first_hour`).
//!
//! Closure tasks, in a single-threaded program:
//!
//! ```no_run
//! use procyard_procmgr::{ProcessManager, Task};
//!
//! let mut manager = ProcessManager::new()?;
//! let task = Task::closure(|endpoint| {
//!     endpoint.send(&"halfway")?;
//!     Ok::<_, procyard_procmgr::Error>(6 * 7)
//! });
//! manager.create_process_with_messages(task, |m| println!("message {m}"), |outcome| {
//!     println!("done: {outcome}");
//! })?;
//! while manager.process_count() > 0 {
//!     manager.step()?;
//! }
//! # Ok::<(), procyard_procmgr::Error>(())
//! ```
//!
//! # Limitations
//!
//! Linux only. The scheduler has no thread of its own: work advances while some thread waits
//! on it or schedules (see [`Scheduler`]). A forked closure child drops the manager's
//! descriptors for its siblings, but other descriptors of the process that are not
//! close-on-exec-relevant (a fork does not exec) stay open in it until it exits. Function
//! arguments travel in `argv` and are limited to [`MAX_FUNCTION_ARGS`] bytes.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod handle;
mod lock;
mod manager;
mod outcome;
mod output;
mod registry;
mod running;
mod scheduler;
mod server;
mod task;
mod waiting;

pub use error::{Error, Result};
pub use handle::Handle;
pub use lock::{LockGuard, NamedLock};
pub use manager::{ProcessId, ProcessManager, WakeHandle};
pub use outcome::Outcome;
pub use output::{CommandOutput, OUTPUT_LIMIT};
/// Types of procyard-core that appear in this crate's signatures, so one dependency suffices.
pub use procyard_core::{Command, Deadline, Exit, Pid, Signal, Stdio};
pub use registry::{init, is_registered, register};
pub use scheduler::{Scheduler, Strategy};
pub use server::{Server, ServerConfig, ServerStatus, WorkerState};
pub use task::{Endpoint, Function, IntoCommand, MAX_FUNCTION_ARGS, Task};
pub use waiting::{
    AsCompleted, as_completed, wait_all, wait_all_timeout, wait_any, wait_any_timeout,
};
