//! Time zones and times given by people: IANA names resolved through `jiff` (the system's
//! zoneinfo, else the copy bundled in the binary), and `--at` times — RFC 3339 with an offset,
//! or a local date and time read in the config's zone.

use std::time::SystemTime;

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::{Disambiguation, TimeZone};

use crate::{Error, Result};

/// The zone named `name` (an IANA name such as `Europe/Berlin`, or `UTC`), or why not.
pub fn zone(name: &str) -> std::result::Result<TimeZone, String> {
    if name.eq_ignore_ascii_case("utc") {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|_| {
        format!(
            "unknown time zone {name:?}: expected an IANA name such as \"Europe/Berlin\" or \"UTC\""
        )
    })
}

/// A time given on the command line: RFC 3339 (`2026-12-05T03:00:00Z`, `…+01:00`), or a
/// local date and time (`2026-12-05T03:00`, `2026-12-05 03:00:00`) in the zone `tz`. A local
/// time that a DST change skips is moved past the gap; one that it repeats is the first.
pub fn parse_at(text: &str, tz: &TimeZone) -> Result<SystemTime> {
    let invalid = || Error::InvalidArgument {
        what: "--at",
        value: text.to_owned(),
        expected: "an RFC 3339 time (2026-12-05T03:00:00Z) or a local time (2026-12-05 03:00)",
    };
    let trimmed = text.trim();
    let ts = match trimmed.parse::<Timestamp>() {
        Ok(ts) => ts,
        Err(_) => {
            let local: DateTime = trimmed.parse().map_err(|_| invalid())?;
            tz.to_ambiguous_zoned(local)
                .disambiguate(Disambiguation::Compatible)
                .map_err(|_| invalid())?
                .timestamp()
        }
    };
    Ok(SystemTime::from(ts))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
    }

    #[test]
    fn rfc3339_and_local_times_in_the_zone() {
        let berlin = zone("Europe/Berlin").unwrap();
        let utc = parse_at("2026-12-05T03:00:00Z", &berlin).unwrap();
        assert_eq!(secs(utc), 1_796_439_600);
        let offset = parse_at("2026-12-05T04:00:00+01:00", &TimeZone::UTC).unwrap();
        assert_eq!(utc, offset);
        // Berlin is UTC+1 in December: 04:00 local is 03:00Z.
        assert_eq!(parse_at("2026-12-05 04:00", &berlin).unwrap(), utc);
        assert_eq!(parse_at("2026-12-05T03:00:00", &TimeZone::UTC).unwrap(), utc);
        let e = parse_at("tomorrow", &berlin).unwrap_err();
        assert!(e.to_string().contains("--at"), "{e}");
        assert!(zone("Mars/Olympus").unwrap_err().contains("Mars/Olympus"));
        assert!(zone("UTC").is_ok() && zone("America/New_York").is_ok());
    }
}
