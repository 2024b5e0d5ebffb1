//! Job events as they travel on the events exchange `<exchange>.events` ([`JobEvent`], JSON,
//! routing key `<task>.<event>`), and the tombstones a daemon keeps of the jobs it was asked
//! to cancel ([`Tombstones`]: bounded, expiring), checked when a job arrives.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::queue::JobRecord;

/// What happened to a job (the last word of the event's routing key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// An attempt began: the job was handed to a worker.
    Started,
    /// The job is done (final).
    Done,
    /// An attempt failed (a `retried` or `dead` follows).
    Failed,
    /// The job goes back to the broker for another attempt after its backoff.
    Retried,
    /// The job was dead-lettered (final until requeued).
    Dead,
    /// The job was cancelled (final).
    Cancelled,
    /// A request: every daemon cancels this job if it runs it, and drops it if it arrives.
    Cancel,
}

impl EventKind {
    /// The event's name, as in routing keys.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Done => "done",
            EventKind::Failed => "failed",
            EventKind::Retried => "retried",
            EventKind::Dead => "dead",
            EventKind::Cancelled => "cancelled",
            EventKind::Cancel => "cancel",
        }
    }

    /// Whether the job has ended with it.
    pub fn is_final(self) -> bool {
        matches!(self, EventKind::Done | EventKind::Dead | EventKind::Cancelled)
    }
}

/// One job event: on the events exchange a message holds one (a JSON object) or several of
/// its routing key (a JSON array, see [`JobEvent::from_message`]); in a publisher's reply
/// queue, with its `record`, always one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// What happened.
    pub event: EventKind,
    /// The job's id.
    pub id: String,
    /// Its task (empty in a cancel request whose sender did not know it).
    pub task: String,
    /// The delivery it concerns (1 for the first; 0 in a cancel request).
    pub attempt: u32,
    /// The daemon that sent it (`host/pid`), or `client/pid` for a cancel request.
    pub daemon: String,
    /// When (ms since the epoch).
    pub time_ms: i64,
    /// How the attempt or the job ended (`exit code 3`, the reason), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// In a reply: the job's record as the daemon that ended it knows it (its last attempt,
    /// with the output captured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<JobRecord>,
}

impl JobEvent {
    /// An event of `kind` about job `id` of `task`, now.
    pub fn new(kind: EventKind, id: &str, task: &str, attempt: u32, daemon: &str) -> JobEvent {
        JobEvent {
            event: kind,
            id: id.to_owned(),
            task: task.to_owned(),
            attempt,
            daemon: daemon.to_owned(),
            time_ms: now_ms(),
            outcome: None,
            record: None,
        }
    }

    /// The events in one message from the events exchange or a reply queue: one JSON object
    /// (a reply, a cancel request, or an event from a daemon before events shared messages),
    /// or a JSON array of them, in order (job events, which a daemon gathers for a few
    /// milliseconds, all of the message's routing key).
    pub fn from_message(body: &[u8]) -> serde_json::Result<Vec<JobEvent>> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Message {
            One(Box<JobEvent>),
            Many(Vec<JobEvent>),
        }
        Ok(match serde_json::from_slice(body)? {
            Message::One(e) => vec![*e],
            Message::Many(v) => v,
        })
    }

    /// Its routing key: `<task>.<event>` (`_.cancel` for a cancel request of unknown task).
    pub fn routing_key(&self) -> String {
        let task = if self.task.is_empty() { "_" } else { &self.task };
        format!("{task}.{}", self.event.name())
    }
}

/// The wall clock in ms since the epoch.
pub(super) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// This process's name in events: `host/pid`.
pub(super) fn daemon_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}/{}", host.trim(), std::process::id())
}

/// How long a daemon remembers a cancel request for a job it has not seen.
pub(crate) const TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);
/// The most cancel requests a daemon remembers (the oldest are forgotten first).
pub(crate) const TOMBSTONE_MAX: usize = 100_000;

/// The ids of jobs whose cancellation was asked, each kept [`TOMBSTONE_TTL`] and at most
/// [`TOMBSTONE_MAX`] of them, so a job still in the broker's queue is dropped when it arrives.
#[derive(Debug)]
pub(super) struct Tombstones {
    until: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
    ttl: Duration,
    max: usize,
}

impl Tombstones {
    pub(super) fn new(ttl: Duration, max: usize) -> Tombstones {
        Tombstones { until: HashMap::new(), order: VecDeque::new(), ttl, max }
    }

    /// Remembers `id` from `now` on.
    pub(super) fn insert(&mut self, id: &str, now: Instant) {
        self.expire(now);
        let until = now + self.ttl;
        self.until.insert(id.to_owned(), until);
        self.order.push_back((until, id.to_owned()));
        while self.until.len() > self.max {
            let Some((at, old)) = self.order.pop_front() else { break };
            if self.until.get(&old) == Some(&at) {
                self.until.remove(&old);
            }
        }
    }

    /// Whether `id` was asked to be cancelled (and not so long ago it was forgotten).
    pub(super) fn contains(&mut self, id: &str, now: Instant) -> bool {
        self.expire(now);
        self.until.contains_key(id)
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if *at > now {
                break;
            }
            let Some((at, id)) = self.order.pop_front() else { break };
            if self.until.get(&id) == Some(&at) {
                self.until.remove(&id);
            }
        }
    }

    /// How many are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_their_routing_key_and_round_trip_as_json() {
        let mut e = JobEvent::new(EventKind::Failed, "0190", "mail", 2, "h/1");
        e.outcome = Some("exit code 3".into());
        assert_eq!(e.routing_key(), "mail.failed");
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"event\":\"failed\"") && !json.contains("record"), "{json}");
        assert_eq!(serde_json::from_str::<JobEvent>(&json).unwrap(), e);
        let cancel = JobEvent::new(EventKind::Cancel, "0190", "", 0, "client/2");
        assert_eq!(cancel.routing_key(), "_.cancel");
        assert!(EventKind::Dead.is_final() && !EventKind::Retried.is_final());
    }

    /// A message holds one event (an object) or several (an array); anything else is refused.
    #[test]
    fn a_message_holds_one_event_or_an_array_of_them() {
        let a = JobEvent::new(EventKind::Done, "01", "mail", 1, "h/1");
        let b = JobEvent::new(EventKind::Done, "02", "mail", 1, "h/1");
        let one = serde_json::to_vec(&a).unwrap();
        assert_eq!(JobEvent::from_message(&one).unwrap(), std::slice::from_ref(&a));
        let many = serde_json::to_vec(&[&a, &b]).unwrap();
        assert_eq!(JobEvent::from_message(&many).unwrap(), [a, b]);
        for bad in [&b"{}"[..], b"[1]", b"\"x\"", b"[{\"event\":\"done\"}"] {
            assert!(JobEvent::from_message(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// A tombstone is kept for its time, then forgotten; past the bound the oldest go first.
    #[test]
    fn tombstones_expire_and_are_bounded() {
        let t0 = Instant::now();
        let mut t = Tombstones::new(Duration::from_secs(10), 3);
        t.insert("a", t0);
        assert!(t.contains("a", t0 + Duration::from_secs(9)));
        assert!(!t.contains("a", t0 + Duration::from_secs(10)), "expired");
        for id in ["b", "c", "d", "e"] {
            t.insert(id, t0 + Duration::from_secs(11));
        }
        assert_eq!(t.len(), 3);
        let later = t0 + Duration::from_secs(12);
        assert!(!t.contains("b", later), "the oldest went first");
        assert!(t.contains("e", later) && t.contains("c", later));
        // Asked again: kept from the later time.
        t.insert("c", later);
        assert!(t.contains("c", t0 + Duration::from_secs(21)));
    }
}
