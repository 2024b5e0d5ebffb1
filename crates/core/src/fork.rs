//! `fork` exposed soundly, and `daemonize` with a status pipe.
//!
//! Forking without exec is sound only when the process has one thread (a lock held by another
//! thread at the fork would stay locked forever in the child). [`fork()`] and [`daemonize`]
//! check that at run time through `/proc/self/task`; [`fork_unchecked`] is the `unsafe` escape
//! hatch whose contract says what the child may do.

pub use crate::sys::forking::{
    DaemonConfig, DaemonStatus, Daemonized, ForkConfig, Forked, ForkedSibling, daemonize,
    exit_immediately, fork, fork_sibling, fork_unchecked, set_parent_death_signal, thread_count,
};
