//! What the AMQP backend knows and tells about jobs: the local history (the jobs this daemon
//! ran), the events it publishes as its jobs move (started, failed, retried, done, dead,
//! cancelled), the outcome it sends to a publisher's reply queue, and a client's side of it —
//! waiting for replies and events, and asking every daemon to cancel a job.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::broker::Cmd;
use super::events::{EventKind, JobEvent, now_ms};
use super::handle::{AmqpQueue, REQUEST_TIMEOUT};
use super::history::{LocalHistory, published_ms};
use crate::queue::{
    Attempt, AttemptReport, Job, JobRecord, JobState, LeaseHolder, OpenMode, Outcome,
};
use crate::{Error, Result};

/// The bindings of a client's listener: the events that end a job or an attempt.
const WAIT_BINDINGS: [&str; 4] = ["#.done", "#.dead", "#.cancelled", "#.failed"];
/// The longest one receive blocks when the caller gave no deadline.
const LONGEST_RECEIVE: Duration = Duration::from_secs(3600);

impl AmqpQueue {
    /// The local history: a daemon's own (when `[queue] history` names one), or for a client
    /// the file a daemon with this config keeps, opened at first use.
    pub(super) fn history(&mut self) -> Result<&mut LocalHistory> {
        if self.history.is_none() {
            if self.mode == OpenMode::Daemon || self.history_path.as_os_str().is_empty() {
                return Err(Error::Unsupported {
                    backend: "amqp",
                    what: "keep job records without a history file ([queue] history)",
                });
            }
            self.history = Some(LocalHistory::open_client(&self.history_path)?);
        }
        Ok(self.history.as_mut().expect("opened"))
    }

    /// A job was handed to a worker: recorded, and `started` sent.
    pub(super) fn note_holder(&mut self, job: &Job, holder: &LeaseHolder) {
        let now = now_ms();
        if let Some(f) = self.in_flight.get_mut(&job.receipt.0) {
            f.started_ms = Some(now);
        }
        if let Some(h) = self.history.as_mut() {
            h.holder(job, holder, now);
        }
        let ev =
            JobEvent::new(EventKind::Started, &job.id, &job.task, job.attempt, &self.daemon_id);
        self.emit(&ev, None);
    }

    /// An attempt ended: recorded, and kept for the outcome's events and reply.
    pub(super) fn note_attempt(&mut self, job: &Job, report: AttemptReport) {
        if let Some(h) = self.history.as_mut() {
            h.ended(job, report.clone(), now_ms());
        }
        if let Some(f) = self.in_flight.get_mut(&job.receipt.0) {
            f.report = Some(report);
        }
    }

    /// A job's outcome, as it is settled: recorded, its events sent (`failed` first when an
    /// attempt failed), and a final one sent to the publisher's reply queue.
    pub(super) fn note_outcome(
        &mut self,
        job: &Job,
        outcome: &Outcome,
        reply_to: Option<&str>,
        started_ms: Option<i64>,
        report: Option<AttemptReport>,
    ) {
        let now = now_ms();
        if let Some(h) = self.history.as_mut() {
            h.outcome(job, outcome.clone(), now);
        }
        let (kind, state, reason) = match outcome {
            Outcome::Done => (EventKind::Done, JobState::Done, None),
            Outcome::Retry { reason, .. } => (EventKind::Retried, JobState::Delayed, Some(reason)),
            Outcome::DeadLetter { reason } => (EventKind::Dead, JobState::Dead, Some(reason)),
            Outcome::Cancelled { reason } => {
                (EventKind::Cancelled, JobState::Cancelled, Some(reason))
            }
        };
        let how = report.as_ref().map(|r| r.end.to_string());
        let daemon = self.daemon_id.clone();
        let event = |k| {
            let mut e = JobEvent::new(k, &job.id, &job.task, job.attempt, &daemon);
            e.outcome = reason.cloned().or_else(|| how.clone());
            e
        };
        if matches!(outcome, Outcome::Retry { .. } | Outcome::DeadLetter { .. }) && how.is_some() {
            self.emit(&event(EventKind::Failed), None);
        }
        let ev = event(kind);
        // The reply first: it reaches a waiting publisher before the event does (one channel,
        // one queue: in order), so the publisher keeps the fuller record.
        if let Some(to) = reply_to.filter(|_| outcome.is_final()) {
            let attempts = report.map(|r| Attempt {
                number: 1,
                delivery: job.attempt,
                worker_pid: r.worker_pid,
                started_ms,
                ended_ms: Some(now),
                end: Some(r.end),
                reason: r.reason,
                stdout: r.stdout,
                stderr: r.stderr,
                usage: r.usage,
            });
            let mut reply = ev.clone();
            reply.record = Some(JobRecord {
                id: job.id.clone(),
                task: job.task.clone(),
                routing_key: job.routing_key.clone(),
                payload_len: job.payload.len() as u64,
                state,
                published_ms: published_ms(&job.id),
                finished_ms: Some(now),
                deliveries: job.attempt,
                reason: reason.cloned(),
                attempts: attempts.into_iter().collect(),
            });
            self.emit(&reply, Some(to));
        }
        self.emit(&ev, None);
    }

    /// A client's listening queue (bound to the events that end jobs and attempts; also its
    /// reply-to address), declared at first use.
    pub(super) fn listener(&mut self) -> Result<String> {
        if let Some(name) = &self.listener {
            return Ok(name.clone());
        }
        let keys = WAIT_BINDINGS.iter().map(|k| (*k).to_owned()).collect();
        let name = self.request("listen on the events exchange", REQUEST_TIMEOUT, |reply| {
            Cmd::Listen { keys, reply }
        })?;
        self.listener = Some(name.clone());
        Ok(name)
    }

    /// Waits for `ids` to end (or, with `any_attempt`, an attempt of one), or `deadline`:
    /// first what this daemon's history already says, then the replies and events heard.
    pub(super) fn wait_for(
        &mut self,
        ids: &[String],
        any_attempt: bool,
        deadline: Option<Instant>,
    ) -> Result<Vec<JobRecord>> {
        // Listen before looking, so an end between the look and the listening is not missed.
        self.listener()?;
        let mut ended: HashMap<String, JobRecord> = HashMap::new();
        let mut seen: HashMap<String, JobRecord> = HashMap::new();
        for id in ids {
            if let Ok(r) = self.history().and_then(|h| h.job(id)) {
                if r.state.is_final() && !any_attempt {
                    ended.insert(id.clone(), r);
                } else {
                    seen.insert(id.clone(), r);
                }
            }
        }
        loop {
            while let Some(ev) = self.heard.pop_front() {
                if !ids.contains(&ev.id) {
                    continue;
                }
                let attempt_end = any_attempt && ev.event == EventKind::Failed;
                // A job published here with a reply address ends with its reply (the fuller
                // record), which comes before its event.
                let thin = ev.record.is_none() && self.replies.contains(&ev.id);
                if (ev.event.is_final() || attempt_end) && !thin {
                    let rec = record_of(ev);
                    // A reply carries the full record; the event that follows adds nothing.
                    let fuller = ended.get(&rec.id).is_some_and(|r| r.routing_key.is_empty());
                    if fuller || !ended.contains_key(&rec.id) {
                        ended.insert(rec.id.clone(), rec);
                    }
                } else {
                    seen.insert(ev.id.clone(), record_of(ev));
                }
            }
            for id in ended.keys() {
                self.replies.remove(id);
            }
            let done = if any_attempt {
                !ended.is_empty()
            } else {
                ids.iter().all(|id| ended.contains_key(id))
            };
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if done || left.is_some_and(|l| l.is_zero()) {
                let out = ids.iter().map(|id| {
                    let known = ended.remove(id).or_else(|| seen.remove(id));
                    known.unwrap_or_else(|| unseen(id))
                });
                return Ok(out.collect());
            }
            self.wait_one(left.unwrap_or(LONGEST_RECEIVE).min(LONGEST_RECEIVE));
        }
    }

    /// Asks every daemon to cancel `id`: refused when this daemon's history shows it ended;
    /// an error when no daemon listens.
    pub(super) fn request_cancel(&mut self, id: &str) -> Result<()> {
        crate::queue::check_job_id(id)?;
        let mut task = String::new();
        if let Ok(record) = self.history().and_then(|h| h.job(id)) {
            if record.state.is_final() {
                return Err(Error::JobFinished { id: id.to_owned(), state: record.state });
            }
            task = record.task;
        }
        let daemon = format!("client/{}", std::process::id());
        let ev = JobEvent::new(EventKind::Cancel, id, &task, 0, &daemon);
        let body = serde_json::to_vec(&ev)
            .map_err(|e| Error::Broker { action: "publish a cancel request", source: e.into() })?;
        let key = ev.routing_key();
        self.request("publish a cancel request", REQUEST_TIMEOUT, |reply| Cmd::Announce {
            key,
            body,
            reply,
        })
    }
}

/// The record an event or a reply gives of its job.
fn record_of(ev: JobEvent) -> JobRecord {
    if let Some(r) = ev.record {
        return r;
    }
    let state = match ev.event {
        EventKind::Done => JobState::Done,
        EventKind::Dead => JobState::Dead,
        EventKind::Cancelled | EventKind::Cancel => JobState::Cancelled,
        EventKind::Retried | EventKind::Failed => JobState::Delayed,
        EventKind::Started => JobState::Running,
    };
    JobRecord {
        published_ms: published_ms(&ev.id),
        id: ev.id,
        task: ev.task,
        routing_key: String::new(),
        payload_len: 0,
        state,
        finished_ms: state.is_final().then_some(ev.time_ms),
        deliveries: ev.attempt,
        reason: ev.outcome,
        attempts: Vec::new(),
    }
}

/// The record of a job nothing was heard of: published, not seen to start.
fn unseen(id: &str) -> JobRecord {
    JobRecord {
        id: id.to_owned(),
        task: String::new(),
        routing_key: String::new(),
        payload_len: 0,
        state: JobState::Ready,
        published_ms: published_ms(id),
        finished_ms: None,
        deliveries: 0,
        reason: None,
        attempts: Vec::new(),
    }
}
