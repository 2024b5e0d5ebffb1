//! The job history over one SQLite connection ([`History`]), shared by the two places that
//! keep job records in SQLite: the embedded queue (whose `jobs` table is its queue and its
//! history at once) and the AMQP backend's local history (`queue/amqp/history.rs`: the jobs
//! one daemon ran). Both use the same file layout ([`open`]: `jobs`, `attempts`, `stats`), the
//! same writers (lease holders, ended attempts, outcomes, in one transaction) and the same
//! readers, purge and retention ([`History::job`], [`History::jobs`], [`History::purge`],
//! [`History::prune`]).
//!
//! A history file keeps a job's row (keyed by its job id) with its state code, and one row per
//! attempt with the bounded output; see `schema.rs` for the columns.

use std::path::Path;
use std::time::Instant;

use rusqlite::Connection;

pub(crate) use super::attempts::{AttemptLog, end_open};
pub(crate) use super::holders::{Held, write as write_holders};
pub(crate) use super::lock::lock;
pub(crate) use super::outcomes::{PendingOutcome, write_outcomes};
pub(crate) use super::retention::PruneClock;
pub(crate) use super::schema::{STATE_LEASED, STATE_READY};
use super::{files, schema};
use crate::Result;
use crate::queue::{OpenMode, Retention};

/// The history in the database at `path`, over its connection: `&mut` because purging and
/// pruning write in short transactions of their own.
pub(crate) struct History<'a> {
    pub(crate) conn: &'a mut Connection,
    /// The file, named in errors.
    pub(crate) path: &'a Path,
}

impl<'a> History<'a> {
    /// The history over `conn`, the database at `path`.
    pub(crate) fn new(conn: &'a mut Connection, path: &'a Path) -> History<'a> {
        History { conn, path }
    }

    /// One pruning step of the retention, when `clock` says it is due (errors are logged:
    /// pruning is tried again at the next step).
    pub(crate) fn prune(&mut self, retention: &Retention, clock: &mut PruneClock) {
        let now = Instant::now();
        if clock.due(now) {
            // No warm thread here: every step runs whole.
            let _ = clock.step(self, retention, now);
        }
    }
}

/// Opens (creating if needed, private) the history database at `path`, with the schema of the
/// embedded queue's file; a daemon checks its integrity first.
pub(crate) fn open(path: &Path, mode: OpenMode) -> Result<Connection> {
    if path.as_os_str().is_empty() {
        return Err(crate::Error::io(
            "open history",
            path,
            std::io::ErrorKind::InvalidInput.into(),
        ));
    }
    files::prepare_dir(path)?;
    files::create_private(path)?;
    let conn = schema::connect(path, mode)?;
    files::tighten(path);
    Ok(conn)
}
