//! What a backend tells about periodic jobs ([`ScheduleStatus`], for `schedules`), and the
//! daemon's book of them shared by the SQLite and PostgreSQL backends ([`Book`]: the configured
//! schedules with their zones, and the earliest next due time once read).

use std::time::{Duration, Instant};

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::schedule::{self, ScheduleConfig};

/// One `[[schedule]]` as stored: its next and last due times, its last job, whether paused.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScheduleStatus {
    /// Its name.
    pub name: String,
    /// Its cadence and zone as configured (`cron 0 3 * * * in Europe/Berlin`).
    pub spec: String,
    /// Paused (`schedule pause`): it fires nothing until resumed.
    pub paused: bool,
    /// The next due time (ms since the epoch); `None` when paused. In the past when no daemon
    /// has fired it yet (it fires as its `missed` policy says when one starts).
    pub next_ms: Option<i64>,
    /// The last due time dealt with (fired, or skipped as missed).
    pub last_due_ms: Option<i64>,
    /// When it last published a job (a due time or a `trigger`).
    pub last_run_ms: Option<i64>,
    /// The id of the last job it published.
    pub last_job: Option<String>,
}

/// The daemon's schedules: as configured, with their zones, and the next due time once known.
#[derive(Debug, Default)]
pub(crate) struct Book {
    pub(crate) configs: Vec<(ScheduleConfig, TimeZone)>,
    /// The earliest next due time (ms) of an unpaused schedule, once read (`Some(None)`: none).
    pub(crate) next: Option<Option<i64>>,
}

impl Book {
    /// The book of `configs`, its next due time not read yet.
    pub(crate) fn new(configs: &[ScheduleConfig]) -> Book {
        Book { configs: configs.iter().map(|s| (s.clone(), zone_of(s))).collect(), next: None }
    }

    /// Forget the next due time (a client may have changed the rows).
    pub(crate) fn invalidate(&mut self) {
        if !self.configs.is_empty() {
            self.next = None;
        }
    }

    /// When nothing can be due at `now` (ms): no schedules, or the next due time is known and
    /// has not come. Then, when to look again.
    pub(crate) fn not_due(&self, now: i64) -> Option<Option<Instant>> {
        if self.configs.is_empty() {
            return Some(None);
        }
        let next = self.next?;
        next.is_none_or(|due| due > now).then(|| next.map(|due| instant_of(due, now)))
    }
}

/// A time in ms since the epoch (the epoch for one out of range).
pub(crate) fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The zone of `s` (validated with the config; UTC if it no longer loads).
pub(crate) fn zone_of(s: &ScheduleConfig) -> TimeZone {
    schedule::zone(&s.timezone).unwrap_or(TimeZone::UTC)
}

/// The instant at which the wall-clock time `due` (ms) comes, seen at `now` (ms).
pub(crate) fn instant_of(due: i64, now: i64) -> Instant {
    Instant::now() + Duration::from_millis((due - now).max(0) as u64)
}
