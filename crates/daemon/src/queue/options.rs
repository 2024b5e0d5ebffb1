//! What a publish may ask for besides a key and a payload — when the job may start (a delay
//! or a time), its priority, a unique key, headers — and what a publish answers
//! ([`Publication`]: the ids, and which of them already existed).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Error, Result};

/// The priority of a job published without one.
pub const DEFAULT_PRIORITY: u8 = 5;
/// The highest priority (runs first within its task).
pub const MAX_PRIORITY: u8 = 9;

/// A unique key: while a job of the same task with this key is ready, delayed or running (or,
/// with `hold_for`, was published less than that long ago), publishing another returns the
/// existing job's id instead of queueing a second job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UniqueKey {
    /// The key, compared within each receiving task.
    pub key: String,
    /// Also hold the key this long after publish, even once the job has ended.
    pub hold_for: Option<Duration>,
}

/// Publish-time controls, built with the methods below; the default publishes a job that
/// may start now, with priority [`DEFAULT_PRIORITY`], no unique key and no headers.
///
/// ```
/// use std::time::Duration;
/// use procyard_daemon::queue::PublishOptions;
/// let opts = PublishOptions::new()
///     .delay(Duration::from_secs(30))
///     .priority(8)
///     .unique("report-42")
///     .unique_for(Duration::from_secs(3600))
///     .header("tenant", "acme");
/// assert!(opts.check().is_ok());
/// assert!(PublishOptions::new().priority(10).check().is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// The job may not start before this time (`None`: now).
    pub not_before: Option<SystemTime>,
    /// 0..=9, higher first within a task (`None`: [`DEFAULT_PRIORITY`]).
    pub priority: Option<u8>,
    /// A unique key, if any.
    pub unique: Option<UniqueKey>,
    /// Headers stored with the job (`concurrency_key = "header:NAME"` reads them).
    pub headers: Vec<(String, String)>,
}

impl PublishOptions {
    /// The defaults: start now, priority 5, not unique, no headers.
    pub fn new() -> PublishOptions {
        PublishOptions::default()
    }

    /// Starts the job no sooner than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> PublishOptions {
        self.not_before = Some(SystemTime::now() + delay);
        self
    }

    /// Starts the job no sooner than `at` (a time in the past means now).
    pub fn at(mut self, at: SystemTime) -> PublishOptions {
        self.not_before = Some(at);
        self
    }

    /// Sets the priority (0..=9; [`PublishOptions::check`] refuses more).
    pub fn priority(mut self, priority: u8) -> PublishOptions {
        self.priority = Some(priority);
        self
    }

    /// Makes the job unique by `key` within its task (see [`UniqueKey`]).
    pub fn unique(mut self, key: impl Into<String>) -> PublishOptions {
        let hold_for = self.unique.take().and_then(|u| u.hold_for);
        self.unique = Some(UniqueKey { key: key.into(), hold_for });
        self
    }

    /// Holds the unique key this long after publish (needs [`PublishOptions::unique`]).
    pub fn unique_for(mut self, hold_for: Duration) -> PublishOptions {
        let key = self.unique.take().map(|u| u.key).unwrap_or_default();
        self.unique = Some(UniqueKey { key, hold_for: Some(hold_for) });
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> PublishOptions {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Whether these are the defaults (a backend without these controls can publish them).
    pub fn is_plain(&self) -> bool {
        self.not_before.is_none()
            && self.priority.is_none_or(|p| p == DEFAULT_PRIORITY)
            && self.unique.is_none()
            && self.headers.is_empty()
    }

    /// The priority to store.
    pub fn priority_or_default(&self) -> u8 {
        self.priority.unwrap_or(DEFAULT_PRIORITY)
    }

    /// When the job may start, in ms since the epoch (0: now).
    pub fn not_before_ms(&self) -> i64 {
        self.not_before
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64)
    }

    /// Refuses a priority above [`MAX_PRIORITY`], an empty unique key, and an empty header
    /// name, with [`Error::InvalidArgument`] naming the option.
    pub fn check(&self) -> Result<()> {
        if let Some(p) = self.priority.filter(|p| *p > MAX_PRIORITY) {
            return Err(Error::InvalidArgument {
                what: "--priority",
                value: p.to_string(),
                expected: "a priority from 0 (lowest) to 9 (highest); the default is 5",
            });
        }
        if let Some(u) = &self.unique
            && u.key.is_empty()
        {
            return Err(Error::InvalidArgument {
                what: "--unique",
                value: String::new(),
                expected: "a non-empty key (--unique-for needs --unique KEY)",
            });
        }
        if let Some((name, _)) = self.headers.iter().find(|(n, _)| n.is_empty() || n.contains('='))
        {
            return Err(Error::InvalidArgument {
                what: "--header",
                value: name.clone(),
                expected: "NAME=VALUE with a non-empty NAME",
            });
        }
        Ok(())
    }

    /// The headers as the JSON object stored with the job (`None` when there are none).
    pub fn headers_json(&self) -> Option<String> {
        if self.headers.is_empty() {
            return None;
        }
        let map: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        Some(serde_json::Value::Object(map).to_string())
    }
}

/// What a publish did: the job ids, one per payload and receiving task, in order, and which
/// of them name a job that already existed (its unique key was held).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Publication {
    /// Every id, new or existing, in publish order.
    pub ids: Vec<String>,
    /// The ids (of `ids`) of jobs that existed before this publish.
    pub existing: Vec<String>,
}

impl Publication {
    /// Whether any id names an existing job rather than a new one.
    pub fn is_duplicate(&self) -> bool {
        !self.existing.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_plain_and_checks_name_the_option() {
        assert!(PublishOptions::new().is_plain());
        assert!(PublishOptions::new().priority(5).is_plain());
        assert!(!PublishOptions::new().priority(9).is_plain());
        for p in 0..=9 {
            assert!(PublishOptions::new().priority(p).check().is_ok());
        }
        let e = PublishOptions::new().priority(10).check().unwrap_err();
        assert!(e.to_string().contains("--priority"), "{e}");
        let e = PublishOptions::new().unique_for(Duration::from_secs(1)).check().unwrap_err();
        assert!(e.to_string().contains("--unique"), "{e}");
        let both = PublishOptions::new().unique_for(Duration::from_secs(9)).unique("k");
        assert_eq!(
            both.unique,
            Some(UniqueKey { key: "k".into(), hold_for: Some(Duration::from_secs(9)) })
        );
    }

    #[test]
    fn a_time_in_the_past_means_now_and_headers_are_json() {
        let past = PublishOptions::new().at(UNIX_EPOCH);
        assert_eq!(past.not_before_ms(), 0);
        let later = PublishOptions::new().delay(Duration::from_secs(60)).not_before_ms();
        assert!(later > 0);
        let h = PublishOptions::new().header("tenant", "a\"b").headers_json().unwrap();
        assert_eq!(h, r#"{"tenant":"a\"b"}"#);
    }
}
