//! Time for scheduling, as pure functions: when a periodic job is due ([`Cadence`]: cron in a
//! time zone, or a fixed period), which due times to fire after a gap ([`fires`], [`Missed`]),
//! time zones and `--at` times ([`zone`], [`parse_at`]); and a `[[schedule]]` as configured
//! ([`ScheduleConfig`]).

mod cadence;
mod zone;

pub use cadence::{Cadence, Fires, MAX_FIRES_PER_TURN, Missed, ON_TIME, fires};
pub use zone::{parse_at, zone};

/// A periodic job (`[[schedule]]`), validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// Its name (unique in the config): the key of its stored state.
    pub name: String,
    /// When it is due.
    pub cadence: Cadence,
    /// The cadence as written (`cron 0 3 * * *`, `every 30s`) with its zone: a schedule whose
    /// `spec` changes on reload starts counting afresh.
    pub spec: String,
    /// The zone its cron expression is read in (IANA name, default UTC).
    pub timezone: String,
    /// The routing key its jobs are published with.
    pub routing_key: String,
    /// The payload of its jobs.
    pub payload: String,
    /// What to do with due times that passed while no daemon ran.
    pub missed: Missed,
}
