//! Per-task limits on starts, as pure logic: a rate ([`RateLimit`], a token bucket) and a
//! concurrency key ([`ConcurrencyKey`]: at most `max_per_key` jobs of one key run at once).
//!
//! `rate_limit = "100/s"` (also `/m`, `/h`) lets a task start at most that many jobs per
//! unit: a bucket of that many tokens, refilled evenly, one token per start; jobs beyond it
//! wait `ready`, and the daemon wakes when the next token comes (a deadline, not a poll).
//! `concurrency_key = "header:tenant"` or `"payload-json:/customer_id"` with
//! `max_per_key = N` (default 1) starts a job only while fewer than N jobs of its key run;
//! with 1, the jobs of one key run one at a time, in publish order (within a priority). A
//! job without the header, or whose payload is not JSON or lacks the pointer, has no key and
//! is not limited by it.

use std::time::{Duration, Instant};

mod gate;
pub(crate) use gate::Gate;

/// At most `count` starts per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Starts per period (at least 1).
    pub count: u32,
    /// The period: a second, a minute or an hour.
    pub per: Duration,
}

impl RateLimit {
    /// Parses `N/s`, `N/m` or `N/h` (N ≥ 1).
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let bad = || format!("{text:?}: expected a rate such as \"100/s\", \"30/m\" or \"500/h\"");
        let (n, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!(
                "{text:?}: a rate of 0 would start nothing; remove the task or its keys instead"
            ));
        }
        Ok(RateLimit { count, per })
    }
}

/// Where a job's concurrency key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConcurrencyKey {
    /// A header given at publish (`--header NAME=VALUE`).
    Header(String),
    /// A JSON pointer into the payload (`/customer_id`).
    PayloadJson(String),
}

impl ConcurrencyKey {
    /// Parses `header:NAME` or `payload-json:/pointer`.
    pub fn parse(text: &str) -> Result<ConcurrencyKey, String> {
        if let Some(name) = text.strip_prefix("header:").filter(|n| !n.is_empty()) {
            return Ok(ConcurrencyKey::Header(name.to_owned()));
        }
        if let Some(ptr) = text.strip_prefix("payload-json:").filter(|p| p.starts_with('/')) {
            return Ok(ConcurrencyKey::PayloadJson(ptr.to_owned()));
        }
        Err(format!("{text:?}: expected \"header:NAME\" or \"payload-json:/pointer\""))
    }

    /// The key of a job with these headers (a JSON object, if any) and payload.
    pub fn of(&self, headers: Option<&str>, payload: &[u8]) -> Option<String> {
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match self {
            ConcurrencyKey::Header(name) => {
                let map: serde_json::Value = serde_json::from_str(headers?).ok()?;
                map.get(name).map(text)
            }
            ConcurrencyKey::PayloadJson(ptr) => {
                let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
                v.pointer(ptr).map(text)
            }
        }
    }
}

/// A task's limits (`rate_limit`, `concurrency_key`, `max_per_key`), validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskLimits {
    /// The task.
    pub task: String,
    /// Starts per period, if limited.
    pub rate: Option<RateLimit>,
    /// The key that limits concurrency, if any.
    pub key: Option<ConcurrencyKey>,
    /// Running jobs per key (with `key`).
    pub max_per_key: usize,
}

impl TaskLimits {
    /// Whether nothing is limited.
    pub fn is_none(&self) -> bool {
        self.rate.is_none() && self.key.is_none()
    }
}

/// A token bucket: `count` tokens, refilled evenly over `per`.
#[derive(Clone, Debug)]
pub struct Bucket {
    rate: RateLimit,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn new(rate: RateLimit, now: Instant) -> Bucket {
        Bucket { rate, tokens: f64::from(rate.count), at: now }
    }

    fn refill(&mut self, now: Instant) {
        let per_sec = f64::from(self.rate.count) / self.rate.per.as_secs_f64();
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * per_sec;
        self.tokens = (self.tokens + gained).min(f64::from(self.rate.count));
        self.at = now;
    }

    /// How many of `want` starts may happen at `now`.
    pub fn available(&mut self, want: usize, now: Instant) -> usize {
        self.refill(now);
        (self.tokens.floor().max(0.0) as usize).min(want)
    }

    /// Takes `n` tokens (after [`Bucket::available`]).
    pub fn take(&mut self, n: usize) {
        self.tokens -= n as f64;
    }

    /// Whether no whole token is left (as of the last refill).
    pub fn is_empty(&self) -> bool {
        self.tokens < 1.0
    }

    /// When the next whole token is there (`now` if one is).
    pub fn next_token(&self, now: Instant) -> Instant {
        let per_sec = f64::from(self.rate.count) / self.rate.per.as_secs_f64();
        let missing = (1.0 - self.tokens).max(0.0);
        self.at.max(now) + Duration::from_secs_f64(missing / per_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_zero_is_refused() {
        assert_eq!(RateLimit::parse("100/s").unwrap().count, 100);
        assert_eq!(RateLimit::parse("3/h").unwrap().per, Duration::from_secs(3600));
        for bad in ["0/s", "10", "10/d", "x/s", "-1/s"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
        assert!(RateLimit::parse("0/m").unwrap_err().contains("0"));
    }

    #[test]
    fn a_bucket_allows_its_count_then_refills_evenly() {
        let t0 = Instant::now();
        let mut b = Bucket::new(RateLimit::parse("10/s").unwrap(), t0);
        assert_eq!(b.available(50, t0), 10);
        b.take(10);
        assert_eq!(b.available(5, t0), 0);
        let next = b.next_token(t0);
        assert_eq!(next.duration_since(t0), Duration::from_millis(100));
        assert_eq!(b.available(5, t0 + Duration::from_millis(250)), 2);
        assert_eq!(b.available(50, t0 + Duration::from_secs(9)), 10, "never more than its count");
    }

    #[test]
    fn keys_from_headers_and_payloads() {
        let h = ConcurrencyKey::parse("header:tenant").unwrap();
        assert_eq!(h.of(Some(r#"{"tenant":"acme"}"#), b""), Some("acme".into()));
        assert_eq!(h.of(None, b""), None);
        let p = ConcurrencyKey::parse("payload-json:/customer/id").unwrap();
        assert_eq!(p.of(None, br#"{"customer":{"id":42}}"#), Some("42".into()));
        assert_eq!(p.of(None, b"not json"), None);
        assert!(ConcurrencyKey::parse("tenant").is_err());
        assert!(ConcurrencyKey::parse("payload-json:customer").is_err());
    }
}
