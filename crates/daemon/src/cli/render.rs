//! How the job verbs print records for a person: times in UTC, durations, sizes, one line per
//! job in listings.

use std::fmt::Write as _;
use std::time::Duration;

use procyard_daemon::queue::{Attempt, Captured, JobRecord, ResourceUse};

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// A duration as `1.234s` (or `12ms`).
pub fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

fn size(c: Option<&Captured>) -> String {
    match c {
        None => "-".into(),
        Some(c) if c.dropped > 0 => format!("{} B ({} dropped)", c.total, c.dropped),
        Some(c) => format!("{} B", c.total),
    }
}

/// One attempt on one line.
pub fn attempt(a: &Attempt) -> String {
    let mut line = format!("  #{:<3} delivery {}", a.number, a.delivery);
    if let Some(pid) = a.worker_pid {
        let _ = write!(line, "  pid {pid}");
    }
    if let Some(start) = a.started_ms {
        let _ = write!(line, "  started {}", time(start));
    }
    match (&a.end, a.duration()) {
        (Some(end), Some(d)) => {
            let _ = write!(line, "  {}  {end}", duration(d));
        }
        (Some(end), None) => {
            let _ = write!(line, "  {end}");
        }
        (None, _) => line.push_str("  running"),
    }
    if let Some(reason) = &a.reason {
        let _ = write!(line, "  ({reason})");
    }
    let _ =
        write!(line, "  stdout {}  stderr {}", size(a.stdout.as_ref()), size(a.stderr.as_ref()));
    if let Some(u) = &a.usage {
        let _ = write!(line, "  {}", usage(u));
    }
    line
}

/// What an attempt's process cost: `max RSS 51200 KiB  cpu 12ms user + 3ms system`.
pub fn usage(u: &ResourceUse) -> String {
    format!(
        "max RSS {} KiB  cpu {} user + {} system",
        u.max_rss_kib,
        duration(Duration::from_micros(u.user_cpu_us)),
        duration(Duration::from_micros(u.system_cpu_us))
    )
}

/// A whole record, for `job ID`.
pub fn record(j: &JobRecord) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "id          {}", j.id);
    let _ = writeln!(out, "task        {}", j.task);
    let _ = writeln!(out, "routing key {}", j.routing_key);
    let _ = writeln!(out, "state       {}", j.state);
    let _ = writeln!(out, "published   {}", time(j.published_ms));
    if let Some(f) = j.finished_ms {
        let _ = writeln!(out, "finished    {}", time(f));
    }
    let _ = writeln!(out, "payload     {} B", j.payload_len);
    let _ = writeln!(out, "deliveries  {}", j.deliveries);
    if let Some(r) = &j.reason {
        let _ = writeln!(out, "reason      {r}");
    }
    let _ = writeln!(out, "attempts    {}", j.attempts.len());
    for a in &j.attempts {
        let _ = writeln!(out, "{}", attempt(a));
    }
    out
}

/// One job on one line, for `jobs`.
pub fn line(j: &JobRecord) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{} deliveries\t{}",
        j.id,
        j.task,
        j.state,
        time(j.published_ms),
        j.deliveries,
        j.reason.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(time(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }

    #[test]
    fn resource_use() {
        let u = ResourceUse { max_rss_kib: 51_200, user_cpu_us: 1_500_000, system_cpu_us: 3_000 };
        assert_eq!(usage(&u), "max RSS 51200 KiB  cpu 1.500s user + 3ms system");
    }
}
