//! Job events gathered into few messages: the events of a window ([`EVENTS_WINDOW`]) leave as
//! one message per run of a routing key, its body the events' JSON objects in a JSON array
//! (always an array, a lone event too: a consumer reads one shape, whatever the load), so a
//! drain pays the broker a handful of messages per window instead of two per job.
//!
//! Each event stays under its own routing key (`<task>.<event>`): a consumer bound to
//! `#.done` gets only `done` events, as before. Order: events of one key keep their order, and
//! so do the events of one job across keys — an event joins the last message of its key only
//! if no event of its job sits in a later message; otherwise it opens a new message at the
//! end. A drain's window is then mostly three messages: the `done`s of jobs started before it,
//! the `started`s, and the `done`s of jobs started within it.

use std::collections::HashMap;
use std::time::Duration;

/// How long events wait to share a message. The first event after a quiet window leaves at
/// once; later ones wait at most this long. With 2 daemons × 2 workers draining classic queues
/// (~3,000 jobs/s each), a window carries ~15 jobs: 3 messages instead of 30. Each message
/// costs the broker about 16 µs of CPU on these machines, the daemon a task and a write.
pub(crate) const EVENTS_WINDOW: Duration = Duration::from_millis(5);
/// A window's events leave early past this many bytes of JSON, so a message stays far below
/// the broker's frame size (128 KiB) and a burst does not pile up.
pub(crate) const EVENTS_MAX_BYTES: usize = 64 * 1024;

/// One message being gathered: its routing key and the events' JSON objects, in order.
#[derive(Debug)]
struct Message {
    key: String,
    bodies: Vec<Vec<u8>>,
}

/// The events of the current window, grouped into messages (see the module's header).
#[derive(Debug, Default)]
pub(crate) struct EventBatch {
    messages: Vec<Message>,
    /// For each key, the index of its last message.
    last_of_key: HashMap<String, usize>,
    /// For each job with an event in the window, the index of the message with its last one.
    last_of_job: HashMap<String, usize>,
    bytes: usize,
}

impl EventBatch {
    /// Adds the event `body` (one JSON object) of job `id` under routing key `key`.
    pub(crate) fn push(&mut self, key: &str, id: &str, body: Vec<u8>) {
        let job_at = self.last_of_job.get(id).copied();
        let at = match self.last_of_key.get(key) {
            Some(&at) if job_at.is_none_or(|j| j <= at) => at,
            _ => {
                self.messages.push(Message { key: key.to_owned(), bodies: Vec::new() });
                let at = self.messages.len() - 1;
                self.last_of_key.insert(key.to_owned(), at);
                at
            }
        };
        self.bytes += body.len() + 1;
        self.messages[at].bodies.push(body);
        self.last_of_job.insert(id.to_owned(), at);
    }

    /// Whether no event waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Whether the window holds enough to leave now ([`EVENTS_MAX_BYTES`]).
    pub(crate) fn is_full(&self) -> bool {
        self.bytes >= EVENTS_MAX_BYTES
    }

    /// The window's messages, in order, as (routing key, body); empties the batch.
    pub(crate) fn take(&mut self) -> Vec<(String, Vec<u8>)> {
        self.last_of_key.clear();
        self.last_of_job.clear();
        self.bytes = 0;
        self.messages.drain(..).map(|m| (m.key, join(m.bodies))).collect()
    }
}

/// The bodies as a JSON array of them (one or more).
fn join(bodies: Vec<Vec<u8>>) -> Vec<u8> {
    let len = bodies.iter().map(|b| b.len() + 1).sum::<usize>() + 1;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (i, body) in bodies.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(body);
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, kind: &str) -> (String, String, Vec<u8>) {
        let body = format!(r#"{{"event":"{kind}","id":"{id}"}}"#);
        (format!("t.{kind}"), id.to_owned(), body.into_bytes())
    }

    fn batch_of(events: &[(&str, &str)]) -> Vec<(String, serde_json::Value)> {
        let mut b = EventBatch::default();
        for (id, kind) in events {
            let (key, id, body) = ev(id, kind);
            b.push(&key, &id, body);
        }
        let out = b.take().into_iter().map(|(k, body)| (k, serde_json::from_slice(&body).unwrap()));
        let out: Vec<_> = out.collect();
        assert!(b.is_empty() && b.take().is_empty());
        out
    }

    /// Events of a key are one array, in order; a lone event too (one shape for consumers,
    /// whether the window held one event or many).
    #[test]
    fn events_are_always_an_array() {
        let out = batch_of(&[("a", "started")]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "t.started");
        assert_eq!(out[0].1.as_array().map(Vec::len), Some(1));
        assert_eq!(out[0].1[0]["id"], "a");
        let out = batch_of(&[("a", "started"), ("b", "started"), ("c", "started")]);
        assert_eq!(out.len(), 1);
        let ids: Vec<_> = out[0].1.as_array().unwrap().iter().map(|v| v["id"].clone()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    /// A drain's window: the `done` of a job started earlier, then jobs that start and end
    /// within it. Every job's events come out in the order they went in, and the window is
    /// three messages, not seven.
    #[test]
    fn a_jobs_events_keep_their_order_across_keys() {
        let input = [
            ("w", "done"),
            ("x", "started"),
            ("y", "started"),
            ("x", "done"),
            ("z", "started"),
            ("y", "done"),
            ("z", "done"),
        ];
        let out = batch_of(&input);
        let keys: Vec<_> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["t.done", "t.started", "t.done"]);
        let flat: Vec<(String, String)> = out
            .iter()
            .flat_map(|(_, v)| v.as_array().cloned().unwrap_or_default())
            .map(|v| (v["id"].as_str().unwrap().to_owned(), v["event"].as_str().unwrap().into()))
            .collect();
        for id in ["w", "x", "y", "z"] {
            let want: Vec<_> = input.iter().filter(|(i, _)| *i == id).map(|(_, k)| *k).collect();
            let got: Vec<_> = flat.iter().filter(|(i, _)| i == id).map(|(_, k)| k).collect();
            assert_eq!(got, want, "job {id}");
        }
    }

    /// A failing job's `failed` and `retried` follow its `started`, in that order.
    #[test]
    fn failures_keep_their_order() {
        let out = batch_of(&[("a", "started"), ("a", "failed"), ("a", "retried"), ("b", "failed")]);
        let keys: Vec<_> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["t.started", "t.failed", "t.retried"]);
        assert_eq!(out[1].1.as_array().map(Vec::len), Some(2));
    }

    /// A window fills up by bytes, and empties when taken.
    #[test]
    fn a_window_is_full_past_its_bytes() {
        let mut b = EventBatch::default();
        let body = vec![b'x'; 1000];
        for i in 0..EVENTS_MAX_BYTES / 1001 {
            b.push("t.done", &i.to_string(), body.clone());
        }
        assert!(!b.is_full());
        b.push("t.done", "last", body);
        assert!(b.is_full());
        assert_eq!(b.take().len(), 1);
        assert!(!b.is_full() && b.is_empty());
    }
}
