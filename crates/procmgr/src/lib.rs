//! Run tasks in child processes: a low-level [`ProcessManager`] with completion handlers,
//! child→parent messages and typed outcomes; a [`Scheduler`] with throttling and result
//! [`Handle`]s (also futures); a supervised [`Server`] of n workers; and a [`NamedLock`]
//! between processes.
//!
//! # Concepts
//!
//! - A [`Task`] is a command, a function from a [`Registry`] (run by re-executing the current
//!   binary, which calls [`init`] first thing in `main`: safe from any thread), or a closure
//!   forked in place (only in a single-threaded process, checked at each fork:
//!   [`Error::NotSingleThreaded`] otherwise).
//! - A task talks to its parent through an [`Endpoint`]: any number of messages, delivered in
//!   order before its [`Outcome`] — a value, a task error with its message, an exit code, a
//!   signal, a death in the middle of a message, or a lost child. Nothing is swallowed.
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
//! use procyard_core::Command;
//! use procyard_procmgr::{Outcome, Scheduler, Strategy, Task};
//!
//! let scheduler = Scheduler::new(Strategy::Throttled(2))?;
//! let ok = scheduler.schedule(Task::command(Command::new("true")))?;
//! let failed = scheduler.schedule(Task::command(Command::shell("exit 3")))?;
//! assert_eq!(ok.wait(), Outcome::Exited { code: 0 });
//! assert_eq!(failed.wait(), Outcome::Exited { code: 3 });
//! scheduler.shutdown();
//! # Ok::<(), procyard_procmgr::Error>(())
//! ```
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
mod lock;
mod manager;
mod outcome;
mod registry;
mod running;
mod scheduler;
mod server;
mod task;

pub use error::{Error, Result};
pub use lock::{LockGuard, NamedLock};
pub use manager::{ProcessId, ProcessManager, WakeHandle};
pub use outcome::Outcome;
pub use registry::{Registry, init};
pub use scheduler::{Handle, Scheduler, Strategy};
pub use server::{Server, ServerConfig, ServerStatus, WorkerState};
pub use task::{Endpoint, MAX_FUNCTION_ARGS, Task};
