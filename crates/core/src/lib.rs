//! The process primitives every procyard component stands on: spawn, wait, signal,
//! fork/daemonize, pidfd event sources, IPC framing, atomic state files and process identity,
//! for Linux.
//!
//! # Concepts
//!
//! - A [`Command`] builds a child process. It uses `posix_spawn` (the vfork-like fast path),
//!   or for a parent-death signal the same kind of `clone(CLONE_VM | CLONE_VFORK)` spawn
//!   written in core (never a `fork` of the caller), starts the child in a process group of its own with an
//!   empty signal mask and default dispositions, and reports exec failures from
//!   [`Command::spawn`] itself.
//! - A [`Child`] owns its pid through a pidfd opened right after the spawn: it reaps only its
//!   own pid (never `waitpid(-1)`), signals only the process it started, and is a mio
//!   [`Source`](mio::event::Source) that becomes readable when the process exits.
//! - A [`ProcessIdentity`] (pid + start time + boot id) recognises a process across program
//!   runs, so a stale state file never leads to signalling a recycled pid.
//! - [`frame`] is the one wire format: big-endian `u32` length, then JSON, the length checked
//!   against [`MAX_FRAME`] before allocating. [`FrameDecoder`] decodes non-blocking streams.
//! - [`state_file`] writes atomically and reads with "absent" told from "corrupt";
//!   [`FileLock`] is an `flock` held for a lifetime.
//! - [`SignalSource`] (signal-hook's self-pipe, for libraries) and [`SignalFd`] (for binaries
//!   that own `main`) deliver signals to a mio loop; [`Deadline`] is for real deadlines only,
//!   and a [`Timer`] (a timerfd) wakes a mio loop at its next deadline to the nanosecond.
//! - [`fork()`] and [`daemonize`] are checked at run time to be called from a single-threaded
//!   process; [`ready_pipe`] lets a child say "ready" through a descriptor.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use procyard_core::{Command, Exit, Signal, Stdio};
//!
//! // A shell whose grandchild (sleep) shares its process group.
//! let mut child = Command::shell("sleep 30 & wait").stdout(Stdio::Null).spawn()?;
//! assert_eq!(child.wait_timeout(Duration::from_millis(20))?, None);
//! child.signal_group(Signal::TERM)?;
//! let exit = child.wait()?;
//! assert_eq!(exit.signal(), Some(Signal::TERM));
//! # Ok::<(), procyard_core::Error>(())
//! ```
//!
//! # Limitations
//!
//! Linux only (kernel 5.4 or later, for pidfds and `waitid(P_PIDFD)`). `posix_spawnp` searches
//! the `PATH` of the parent, not the one set with [`Command::env`] (so does the parent-death
//! signal path's `execvpe`, which also runs a script without `#!` through `/bin/sh`).

#![deny(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!("procyard supports Linux only");

mod backoff;
mod child;
pub mod companion;
mod deadline;
mod duration;
mod error;
pub mod event;
mod exit;
pub mod fd;
pub mod fork;
pub mod frame;
mod identity;
#[cfg(feature = "logs")]
pub mod logs;
mod mapping;
mod output;
pub mod owner;
mod pid;
mod ready;
mod report;
mod runtime_dir;
mod signal;
pub mod socket;
mod spawn;
pub mod state_file;
mod stop;
pub mod subreaper;
mod sys;
#[cfg(feature = "testkit")]
pub mod testkit;
mod timer;
mod usage;

pub use backoff::Backoff;
pub use child::Child;
pub use deadline::Deadline;
pub use duration::parse_duration;
pub use error::{Error, Result};
pub use exit::Exit;
pub use fork::{
    DaemonConfig, DaemonStatus, Daemonized, ForkConfig, Forked, daemonize, exit_immediately, fork,
};
pub use frame::{FrameDecoder, MAX_FRAME, StreamState};
pub use identity::{ProcStat, ProcessIdentity, boot_id};
pub use mapping::{FileMap, FileView};
pub use output::{OUTPUT_LIMIT, Output};
pub use pid::Pid;
pub use ready::{Readiness, ReadyReader, ReadyWriter, ready_pipe};
pub use report::{Report, report};
pub use runtime_dir::runtime_dir;
pub use signal::{
    Signal, SignalFd, SignalSource, kill_process, kill_process_group, restore_default,
};
pub use spawn::{Command, Grouping, Stdio};
pub use state_file::FileLock;
pub use stop::{Escalation, KILL_SETTLE, StopLadder, Stopping};
pub use timer::Timer;
pub use usage::Usage;

/// mio, re-exported so components use the same version for their event loops.
pub use mio;
