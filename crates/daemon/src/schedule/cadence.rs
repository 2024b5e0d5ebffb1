//! When a periodic job is due: a cron expression read in a time zone (through `croner`, with
//! `jiff` zones), or a fixed period (`every`), and which due times to fire after a gap
//! ([`Missed`]). Pure functions of the times they are given, so a fake clock tests them.
//!
//! # Time zones and DST
//!
//! A cron expression is read on the wall clock of its zone. A fixed time that a DST change
//! skips (02:30 on a spring-forward night in Berlin) fires at the first instant after the gap
//! (03:00 local); a fixed time that a DST change repeats (01:30 on a fall-back night in New
//! York) fires once, at the first of the two. An interval expression (`*/15 * * * *`) fires
//! on every instant the wall clock shows a match, both passes of a repeated hour included.
//! `every` is a period of real time, aligned to the Unix epoch (`every = "1h"` fires on the
//! hour in UTC), unaffected by DST.

use std::str::FromStr;
use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// How often a schedule is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cadence {
    /// A cron expression: 5 fields, or 6 with seconds first.
    Cron(Box<Cron>),
    /// A fixed period of real time, aligned to the epoch (at least a second).
    Every(Duration),
}

/// What to do with due times that passed while no daemon fired them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Missed {
    /// Fire none of them; a due time at most [`ON_TIME`] ago is not missed and fires.
    #[default]
    Skip,
    /// Fire one job for all of them (stamped with the latest).
    Once,
    /// Fire every one, oldest first.
    All,
}

/// A due time this recent is fired under every policy: it is late, not missed (a restart, a
/// busy moment).
pub const ON_TIME: Duration = Duration::from_secs(60);

/// The most due times fired at once under [`Missed::All`]; the rest follow at the next turn.
pub const MAX_FIRES_PER_TURN: usize = 1000;

impl Cadence {
    /// Parses a cron expression of 5 fields (minute first) or 6 (second first).
    pub fn cron(expr: &str) -> Result<Cadence, String> {
        let fields = expr.split_whitespace().count();
        if !(fields == 5 || fields == 6) {
            return Err(format!(
                "{expr:?} has {fields} fields: expected 5 (minute hour day month weekday) or 6 (second first)"
            ));
        }
        let parser =
            CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
        let cron =
            parser.parse(expr).map_err(|e| format!("{expr:?} is not a cron expression: {e}"))?;
        // One due time must exist (`0 0 30 2 *` never comes).
        let probe = Timestamp::UNIX_EPOCH.to_zoned(TimeZone::UTC);
        cron.find_next_occurrence(&probe, false)
            .map_err(|_| format!("{expr:?} never falls due"))?;
        Ok(Cadence::Cron(Box::new(cron)))
    }

    /// A fixed period (at least one second, whole milliseconds).
    pub fn every(period: Duration) -> Result<Cadence, String> {
        if period < Duration::from_secs(1) {
            return Err(format!("{period:?} is shorter than the shortest period, 1s"));
        }
        Ok(Cadence::Every(period))
    }

    /// The first due time strictly after `after`, read in `tz`.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        match self {
            Cadence::Every(period) => {
                let p = period.as_millis().max(1) as i64;
                let t = after.as_millisecond();
                let next = (t.div_euclid(p) + 1).checked_mul(p)?;
                Timestamp::from_millisecond(next).ok()
            }
            Cadence::Cron(cron) => {
                // Croner counts whole seconds: from the second `after` falls in, exclusive.
                let whole = Timestamp::from_second(after.as_second()).ok()?;
                let next = cron.find_next_occurrence(&whole.to_zoned(tz.clone()), false).ok()?;
                Some(next.timestamp())
            }
        }
    }

    /// The latest due time at or before `now` and after `after`, if any.
    fn latest_in(&self, after: Timestamp, now: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let first = self.next_after(after, tz).filter(|t| *t <= now)?;
        match self {
            Cadence::Every(period) => {
                let p = period.as_millis().max(1) as i64;
                let t = now.as_millisecond();
                Timestamp::from_millisecond(t.div_euclid(p) * p).ok().filter(|l| *l >= first)
            }
            Cadence::Cron(cron) => {
                let whole = Timestamp::from_second(now.as_second()).ok()?;
                let prev = cron.find_previous_occurrence(&whole.to_zoned(tz.clone()), true).ok()?;
                Some(prev.timestamp()).filter(|l| *l >= first)
            }
        }
    }
}

impl FromStr for Missed {
    type Err = String;
    fn from_str(s: &str) -> Result<Missed, String> {
        match s {
            "skip" => Ok(Missed::Skip),
            "once" => Ok(Missed::Once),
            "all" => Ok(Missed::All),
            other => Err(format!("{other:?}: expected \"skip\", \"once\" or \"all\"")),
        }
    }
}

/// What a schedule fires now: the due times to publish a job for (oldest first), and the due
/// time to record as its last (`None`: nothing fell due since `after`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fires {
    /// One job per entry, each stamped with this due time.
    pub fire: Vec<Timestamp>,
    /// The last due time dealt with (fired or skipped): the next look starts after it.
    pub settled: Option<Timestamp>,
}

/// The due times in (`after`, `now`] of `cadence` and what `missed` makes of them.
pub fn fires(
    cadence: &Cadence,
    tz: &TimeZone,
    after: Timestamp,
    now: Timestamp,
    missed: Missed,
) -> Fires {
    let Some(latest) = cadence.latest_in(after, now, tz) else { return Fires::default() };
    let on_time = now.duration_since(latest).unsigned_abs() <= ON_TIME;
    match missed {
        Missed::Skip => {
            Fires { fire: if on_time { vec![latest] } else { vec![] }, settled: Some(latest) }
        }
        Missed::Once => Fires { fire: vec![latest], settled: Some(latest) },
        Missed::All => {
            let mut fire = Vec::new();
            let mut t = after;
            while fire.len() < MAX_FIRES_PER_TURN {
                match cadence.next_after(t, tz) {
                    Some(next) if next <= now => {
                        fire.push(next);
                        t = next;
                    }
                    _ => break,
                }
            }
            let settled = fire.last().copied();
            Fires { fire, settled }
        }
    }
}

#[cfg(test)]
mod tests;
