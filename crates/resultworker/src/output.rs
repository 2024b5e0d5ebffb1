//! [`CommandOutput`]: what a command job wrote and how it ended — core's `Output`, the same
//! type procyard-procmgr's command tasks give.
//!
//! A command job's value when it exits with status 0, and kept in
//! [`Error::CommandFailed`](crate::Error::CommandFailed) when it does not; each stream keeps at
//! most [`OUTPUT_LIMIT`] bytes.

pub use procyard_core::{OUTPUT_LIMIT, Output as CommandOutput};
