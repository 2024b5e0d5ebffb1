//! Periodic jobs on RabbitMQ, the pure part: the state of every schedule as one JSON message
//! ([`Book`]) kept in the broker's `E.scheduler` queue, and what the daemon holding it does
//! with it — merge copies ([`Book::merge`]), apply the config as a diff ([`Book::sync`]),
//! find the due times to fire ([`Book::plan`]), answer `schedules`, `schedule trigger|pause|
//! resume` ([`Book::apply`]). The broker side is `broker/scheduler.rs`.
//!
//! Fired jobs get a UUID v7 whose timestamp is the due time (and random bits), and carry the
//! `message-id` `schedule:<name>:<due time>`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::queue::ScheduleStatus;
use crate::schedule::{self, ScheduleConfig};

/// One schedule's stored state (as the SQLite queue's `schedules` row).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) spec: String,
    pub(crate) since_ms: i64,
    pub(crate) last_due_ms: Option<i64>,
    pub(crate) last_run_ms: Option<i64>,
    pub(crate) last_job: Option<String>,
    pub(crate) paused: bool,
    /// The daemon that last fired it (`host/pid`).
    #[serde(default)]
    pub(crate) fired_by: Option<String>,
}

impl Entry {
    /// Where counting resumes: after the last due time, or when it began.
    fn after(&self) -> Timestamp {
        ts(self.last_due_ms.unwrap_or(self.since_ms).max(self.since_ms))
    }

    /// Which of two copies is further along.
    fn progress(&self) -> (Option<i64>, Option<i64>, i64) {
        (self.last_due_ms, self.last_run_ms, self.since_ms)
    }
}

/// Every schedule's state: the body of a state message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Book {
    pub(crate) schedules: BTreeMap<String, Entry>,
}

/// What a client asks of the daemon holding the book.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub(crate) enum Request {
    List,
    Trigger { name: String },
    Pause { name: String },
    Resume { name: String },
}

/// A message on `E.scheduler`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum Message {
    State(Book),
    Request(Request),
}

/// The answer to a [`Request`]: the schedules' states, the ids of a triggered job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Answer {
    pub(crate) statuses: Vec<ScheduleStatus>,
    pub(crate) ids: Vec<String>,
}

/// A job to publish for a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fire {
    pub(crate) name: String,
    pub(crate) routing_key: String,
    pub(crate) payload: Vec<u8>,
    /// The due time (`None`: a trigger).
    pub(crate) due: Option<Timestamp>,
    pub(crate) id: String,
}

impl Fire {
    fn new(s: &ScheduleConfig, due: Option<Timestamp>, now: Timestamp) -> Fire {
        let random = uuid::Uuid::now_v7();
        let mut bytes = [0u8; 10];
        bytes.copy_from_slice(&random.as_bytes()[6..16]);
        let ms = due.unwrap_or(now).as_millisecond().max(0) as u64;
        let id = uuid::Builder::from_unix_timestamp_millis(ms, &bytes).into_uuid().to_string();
        Fire {
            name: s.name.clone(),
            routing_key: s.routing_key.clone(),
            payload: s.payload.as_bytes().to_vec(),
            due,
            id,
        }
    }

    /// The deterministic `message-id`: `schedule:<name>:<due time>` (or `trigger:<id>`).
    pub(crate) fn message_id(&self) -> String {
        match self.due {
            Some(due) => format!("schedule:{}:{due}", self.name),
            None => format!("schedule:{}:trigger:{}", self.name, self.id),
        }
    }

    /// The publisher headers of the job (as the embedded queue stores them).
    pub(crate) fn headers_json(&self) -> String {
        let due = self.due.map_or_else(|| "trigger".to_owned(), |d| d.to_string());
        serde_json::json!({ "schedule": self.name, "due": due }).to_string()
    }
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn zone_of(s: &ScheduleConfig) -> TimeZone {
    schedule::zone(&s.timezone).unwrap_or(TimeZone::UTC)
}

impl Book {
    /// Merges copies (several state messages: daemons that started publish an empty one):
    /// per schedule, the copy furthest along.
    pub(crate) fn merge(books: impl IntoIterator<Item = Book>) -> Book {
        let mut out = Book::default();
        for b in books {
            for (name, e) in b.schedules {
                match out.schedules.get(&name) {
                    Some(have) if have.progress() >= e.progress() => {}
                    _ => {
                        out.schedules.insert(name, e);
                    }
                }
            }
        }
        out
    }

    /// Applies `configs` as a diff at `now`: a new name counts from now, a changed spec
    /// counts afresh, an unchanged one keeps its state, and with `forget` a removed one is
    /// forgotten (a client that names one schedule keeps the others).
    pub(crate) fn sync(&mut self, configs: &[ScheduleConfig], now: Timestamp, forget: bool) {
        let now = now.as_millisecond();
        if forget {
            self.schedules.retain(|name, _| configs.iter().any(|s| &s.name == name));
        }
        for s in configs {
            match self.schedules.get_mut(&s.name) {
                Some(e) if e.spec == s.spec => {}
                Some(e) => {
                    tracing::info!(schedule = %s.name, from = %e.spec, to = %s.spec, "schedule changed: counting afresh from now");
                    *e = Entry {
                        spec: s.spec.clone(),
                        since_ms: now,
                        paused: e.paused,
                        ..Entry::default()
                    };
                }
                None => {
                    let e = Entry { spec: s.spec.clone(), since_ms: now, ..Entry::default() };
                    self.schedules.insert(s.name.clone(), e);
                }
            }
        }
    }

    /// Fires every due time that came by `now` (as each schedule's `missed` says), moving
    /// its last due time forward; returns the jobs to publish with this book.
    pub(crate) fn plan(
        &mut self,
        configs: &[ScheduleConfig],
        now: Timestamp,
        me: &str,
    ) -> Vec<Fire> {
        let mut out = Vec::new();
        for s in configs {
            let Some(e) = self.schedules.get_mut(&s.name) else { continue };
            if e.paused || e.spec != s.spec {
                continue;
            }
            let f = schedule::fires(&s.cadence, &zone_of(s), e.after(), now, s.missed);
            let Some(settled) = f.settled else { continue };
            e.last_due_ms = Some(settled.as_millisecond().max(e.last_due_ms.unwrap_or(i64::MIN)));
            if f.fire.is_empty() {
                tracing::info!(schedule = %s.name, due = %settled, missed = ?s.missed, "due time missed: skipped");
            }
            for due in f.fire {
                let fire = Fire::new(s, Some(due), now);
                e.last_run_ms = Some(now.as_millisecond());
                e.last_job = Some(fire.id.clone());
                e.fired_by = Some(me.to_owned());
                out.push(fire);
            }
        }
        out
    }

    /// The next due time of an unpaused schedule (ms), if any.
    pub(crate) fn next_due(&self, configs: &[ScheduleConfig]) -> Option<i64> {
        configs
            .iter()
            .filter_map(|s| {
                let e = self.schedules.get(&s.name).filter(|e| !e.paused && e.spec == s.spec)?;
                s.cadence.next_after(e.after(), &zone_of(s)).map(|t| t.as_millisecond())
            })
            .min()
    }

    /// Does what `request` asks at `now`: the answer, or why not; a trigger's job is pushed
    /// to `fires`.
    pub(crate) fn apply(
        &mut self,
        request: &Request,
        configs: &[ScheduleConfig],
        now: Timestamp,
        fires: &mut Vec<Fire>,
    ) -> Result<Answer, String> {
        let find = |name: &str| {
            configs.iter().find(|s| s.name == name).ok_or_else(|| {
                format!("no schedule {name:?} in the config of the daemon that runs the schedules")
            })
        };
        let mut ids = Vec::new();
        match request {
            Request::List => {}
            Request::Trigger { name } => {
                let s = find(name)?;
                let fire = Fire::new(s, None, now);
                if let Some(e) = self.schedules.get_mut(name) {
                    e.last_run_ms = Some(now.as_millisecond());
                    e.last_job = Some(fire.id.clone());
                }
                ids.push(fire.id.clone());
                fires.push(fire);
            }
            Request::Pause { name } | Request::Resume { name } => {
                find(name)?;
                let pause = matches!(request, Request::Pause { .. });
                if let Some(e) = self.schedules.get_mut(name)
                    && e.paused != pause
                {
                    e.paused = pause;
                    if !pause {
                        // A resumed schedule counts from now: what passed while paused is skipped.
                        e.since_ms = now.as_millisecond();
                        e.last_due_ms = None;
                    }
                }
            }
        }
        Ok(Answer { statuses: self.statuses(configs, now), ids })
    }

    /// The state of `configs` in this book, in their order.
    pub(crate) fn statuses(
        &self,
        configs: &[ScheduleConfig],
        now: Timestamp,
    ) -> Vec<ScheduleStatus> {
        configs
            .iter()
            .map(|s| {
                let e = self
                    .schedules
                    .get(&s.name)
                    .filter(|e| e.spec == s.spec)
                    .cloned()
                    .unwrap_or(Entry { since_ms: now.as_millisecond(), ..Entry::default() });
                let next = (!e.paused)
                    .then(|| s.cadence.next_after(e.after(), &zone_of(s)))
                    .flatten()
                    .map(|t| t.as_millisecond());
                ScheduleStatus {
                    name: s.name.clone(),
                    spec: s.spec.clone(),
                    paused: e.paused,
                    next_ms: next,
                    last_due_ms: e.last_due_ms,
                    last_run_ms: e.last_run_ms,
                    last_job: e.last_job,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::schedule::{Cadence, Missed};

    fn every(name: &str, secs: u64, missed: Missed) -> ScheduleConfig {
        ScheduleConfig {
            name: name.into(),
            cadence: Cadence::every(Duration::from_secs(secs)).unwrap(),
            spec: format!("every {}ms in UTC", secs * 1000),
            timezone: "UTC".into(),
            routing_key: "work.tick".into(),
            payload: "p".into(),
            missed,
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn each_due_time_fires_once_and_a_merged_older_copy_does_not_fire_it_again() {
        let configs = [every("tick", 10, Missed::All)];
        let mut book = Book::default();
        book.sync(&configs, at(1000), true);
        assert!(book.plan(&configs, at(1005), "a").is_empty());
        let fires = book.plan(&configs, at(1031), "a");
        let dues: Vec<i64> = fires.iter().map(|f| f.due.unwrap().as_second()).collect();
        assert_eq!(dues, [1010, 1020, 1030]);
        assert_eq!(fires[0].message_id(), "schedule:tick:1970-01-01T00:16:50Z");
        // The fire's id is a UUID v7 stamped with its due time.
        let id = uuid::Uuid::parse_str(&fires[0].id).unwrap();
        assert_eq!(id.get_timestamp().unwrap().to_unix().0, 1010);
        assert!(book.plan(&configs, at(1032), "a").is_empty(), "nothing twice");
        // An empty copy (a daemon that started) and the old copy merge into the newest.
        let mut old = Book::default();
        old.sync(&configs, at(1000), true);
        let mut merged = Book::merge([Book::default(), old, book.clone()]);
        assert_eq!(merged, book);
        assert!(merged.plan(&configs, at(1035), "b").is_empty());
        assert_eq!(merged.plan(&configs, at(1040), "b").len(), 1);
    }

    #[test]
    fn config_changes_apply_as_a_diff() {
        let mut book = Book::default();
        book.sync(&[every("a", 10, Missed::Skip), every("b", 10, Missed::Skip)], at(0), true);
        book.plan(&[every("a", 10, Missed::Skip)], at(15), "d");
        book.sync(&[every("a", 10, Missed::Skip), every("b", 20, Missed::Skip)], at(16), true);
        assert_eq!(book.schedules["a"].last_due_ms, Some(10_000), "unchanged: kept");
        assert_eq!(book.schedules["b"].since_ms, 16_000, "changed: afresh");
        book.sync(&[every("b", 20, Missed::Skip)], at(17), true);
        assert!(!book.schedules.contains_key("a"), "removed: forgotten");
    }

    #[test]
    fn requests_pause_resume_trigger_and_name_unknown_schedules() {
        let configs = [every("t", 10, Missed::All)];
        let mut book = Book::default();
        book.sync(&configs, at(0), true);
        let mut fires = Vec::new();
        let pause = Request::Pause { name: "t".into() };
        let a = book.apply(&pause, &configs, at(5), &mut fires).unwrap();
        assert!(a.statuses[0].paused && a.statuses[0].next_ms.is_none());
        assert!(book.plan(&configs, at(100), "d").is_empty(), "paused: nothing fires");
        book.apply(&Request::Resume { name: "t".into() }, &configs, at(101), &mut fires).unwrap();
        assert_eq!(book.next_due(&configs), Some(110_000), "counts from the resume");
        let a = book.apply(&Request::Trigger { name: "t".into() }, &configs, at(102), &mut fires);
        assert_eq!(a.unwrap().ids.len(), 1);
        assert_eq!(fires.len(), 1);
        assert!(fires[0].message_id().starts_with("schedule:t:trigger:"));
        let e = book.apply(&Request::Trigger { name: "x".into() }, &configs, at(103), &mut fires);
        assert!(e.unwrap_err().contains("\"x\""));
        let msg = serde_json::to_string(&Message::Request(Request::List)).unwrap();
        assert_eq!(serde_json::from_str::<Message>(&msg).unwrap(), Message::Request(Request::List));
    }
}
