//! Cron and period math against a fake clock: DST gaps and repeats in two zones, leap days,
//! every missed policy.

use super::*;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn tz(name: &str) -> TimeZone {
    TimeZone::get(name).unwrap()
}

/// The first `n` due times after `from`.
fn next_n(c: &Cadence, zone: &TimeZone, from: &str, n: usize) -> Vec<String> {
    let mut t = ts(from);
    let mut out = Vec::new();
    for _ in 0..n {
        t = c.next_after(t, zone).expect("a next due time");
        out.push(t.to_string());
    }
    out
}

#[test]
fn five_and_six_fields_and_bad_expressions() {
    let c = Cadence::cron("0 3 * * *").unwrap();
    assert_eq!(next_n(&c, &TimeZone::UTC, "2026-12-05T03:00:00Z", 1), ["2026-12-06T03:00:00Z"]);
    let s = Cadence::cron("*/10 * * * * *").unwrap();
    assert_eq!(
        next_n(&s, &TimeZone::UTC, "2026-12-05T03:00:05.500Z", 2),
        ["2026-12-05T03:00:10Z", "2026-12-05T03:00:20Z"]
    );
    for bad in ["", "* * *", "61 * * * *", "0 3 * * * * *", "bogus * * * *", "0 0 30 2 *"] {
        assert!(Cadence::cron(bad).is_err(), "{bad:?} accepted");
    }
    assert!(Cadence::every(Duration::from_millis(500)).is_err());
}

/// Berlin springs forward on 2026-03-29 (02:00 → 03:00 CEST) and falls back on 2026-10-25
/// (03:00 → 02:00 CET).
#[test]
fn berlin_gap_and_repeat() {
    let berlin = tz("Europe/Berlin");
    let daily = Cadence::cron("30 2 * * *").unwrap();
    // 02:30 does not exist on 03-29: the run moves past the gap, to 03:00 CEST (01:00Z).
    assert_eq!(
        next_n(&daily, &berlin, "2026-03-28T12:00:00Z", 2),
        ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
    );
    // 02:30 comes twice on 10-25: the run is once, at the first (CEST, 00:30Z).
    assert_eq!(
        next_n(&daily, &berlin, "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
}

/// New York springs forward on 2026-03-08 (02:00 → 03:00 EDT) and falls back on 2026-11-01
/// (02:00 EDT → 01:00 EST).
#[test]
fn new_york_gap_and_repeat() {
    let ny = tz("America/New_York");
    let fixed = Cadence::cron("30 2 * * *").unwrap();
    assert_eq!(
        next_n(&fixed, &ny, "2026-03-07T12:00:00Z", 2),
        ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]
    );
    let once = Cadence::cron("30 1 * * *").unwrap();
    assert_eq!(
        next_n(&once, &ny, "2026-10-31T12:00:00Z", 2),
        ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"],
        "a fixed time in the repeated hour fires once"
    );
    // An interval expression fires on both passes of the repeated hour.
    let half_hourly = Cadence::cron("*/30 * * * *").unwrap();
    assert_eq!(
        next_n(&half_hourly, &ny, "2026-11-01T04:45:00Z", 5),
        [
            "2026-11-01T05:00:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T06:30:00Z",
            "2026-11-01T07:00:00Z"
        ]
    );
}

#[test]
fn leap_days() {
    let c = Cadence::cron("0 12 29 2 *").unwrap();
    assert_eq!(
        next_n(&c, &TimeZone::UTC, "2026-01-01T00:00:00Z", 2),
        ["2028-02-29T12:00:00Z", "2032-02-29T12:00:00Z"]
    );
    let last = Cadence::cron("0 0 L 2 *").unwrap();
    assert_eq!(
        next_n(&last, &TimeZone::UTC, "2027-03-01T00:00:00Z", 2),
        ["2028-02-29T00:00:00Z", "2029-02-28T00:00:00Z"]
    );
}

#[test]
fn every_is_aligned_real_time() {
    let c = Cadence::every(Duration::from_secs(30)).unwrap();
    let berlin = tz("Europe/Berlin");
    assert_eq!(
        next_n(&c, &berlin, "2026-03-29T00:59:45Z", 3),
        ["2026-03-29T01:00:00Z", "2026-03-29T01:00:30Z", "2026-03-29T01:01:00Z"],
        "DST does not move a period"
    );
}

#[test]
fn missed_policies() {
    let hourly = Cadence::cron("0 * * * *").unwrap();
    let utc = TimeZone::UTC;
    let after = ts("2026-12-05T00:30:00Z");
    // Down from 00:30 to 03:20: 01:00, 02:00 and 03:00 passed, the latest 20 minutes ago.
    let now = ts("2026-12-05T03:20:00Z");
    let f = fires(&hourly, &utc, after, now, Missed::Skip);
    assert_eq!((f.fire.len(), f.settled), (0, Some(ts("2026-12-05T03:00:00Z"))));
    let f = fires(&hourly, &utc, after, now, Missed::Once);
    assert_eq!(f.fire, [ts("2026-12-05T03:00:00Z")]);
    let f = fires(&hourly, &utc, after, now, Missed::All);
    assert_eq!(
        f.fire,
        [ts("2026-12-05T01:00:00Z"), ts("2026-12-05T02:00:00Z"), ts("2026-12-05T03:00:00Z")]
    );
    assert_eq!(f.settled, Some(ts("2026-12-05T03:00:00Z")));
    // A due time a moment ago is on time under every policy.
    let just = ts("2026-12-05T03:00:00.300Z");
    for m in [Missed::Skip, Missed::Once, Missed::All] {
        let f = fires(&hourly, &utc, ts("2026-12-05T02:00:00Z"), just, m);
        assert_eq!(f.fire, [ts("2026-12-05T03:00:00Z")], "{m:?}");
    }
    // Nothing due: nothing fired, nothing settled.
    let f = fires(&hourly, &utc, ts("2026-12-05T03:00:00Z"), just, Missed::All);
    assert_eq!(f, Fires::default());
    // A long gap under `all` fires at most MAX_FIRES_PER_TURN at once, oldest first.
    let every = Cadence::every(Duration::from_secs(1)).unwrap();
    let f = fires(&every, &utc, after, ts("2026-12-05T03:30:00Z"), Missed::All);
    assert_eq!(f.fire.len(), MAX_FIRES_PER_TURN);
    assert_eq!(f.fire[0], ts("2026-12-05T00:30:01Z"));
    assert_eq!(f.settled, f.fire.last().copied());
    let f = fires(&every, &utc, after, ts("2026-12-05T03:30:00Z"), Missed::Skip);
    assert_eq!(f.fire, [ts("2026-12-05T03:30:00Z")]);
}
