//! What a backend tells about periodic jobs ([`ScheduleStatus`], for `schedules`).

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
