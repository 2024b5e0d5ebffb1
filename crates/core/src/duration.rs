//! The one duration grammar of every procyard CLI flag and config key.
//!
//! A decimal number and an optional unit: `250ms`, `1.5s`, `30` (seconds), `5m`, `2h`, `3d`;
//! units `ms`, `s`/`sec`/`secs`, `m`/`min`/`mins`, `h`, `d`. Negative, non-finite or absurdly
//! long (over 30 years) values are refused.

use std::time::Duration;

use crate::{Error, Result};

/// The longest duration accepted: about 31.7 years.
const MAX_SECS: f64 = 1e9;

/// Parses a duration in the grammar above; [`Error::InvalidDuration`] names the input.
pub fn parse_duration(input: &str) -> Result<Duration> {
    let invalid = || Error::InvalidDuration { input: input.to_owned() };
    let text = input.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(invalid());
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(invalid()),
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=MAX_SECS).contains(&secs) {
        return Err(invalid());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds() {
        let cases = [
            ("250ms", 250),
            ("1.5s", 1500),
            ("2", 2000),
            (" 5m ", 300_000),
            ("1 h", 3_600_000),
            ("3d", 259_200_000),
        ];
        for (text, millis) in cases {
            assert_eq!(parse_duration(text).unwrap(), Duration::from_millis(millis), "{text}");
        }
    }

    #[test]
    fn refuses_garbage_with_the_input_named() {
        for bad in ["", "s", "1w", "-1s", "1e400", "abc", "1.2.3s", "99999999999d"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
