//! The job record: what a backend keeps about a job from publish to its end and for the
//! retention window after ([`JobRecord`], its [`Attempt`]s and their [`Captured`] output), the
//! states a job goes through ([`JobState`]), and what the command-line client asks for
//! ([`JobFilter`], [`Purge`], [`Retention`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be claimed.
    Ready,
    /// Waiting for its retry delay to pass.
    Delayed,
    /// Claimed by a daemon (running, or about to).
    Running,
    /// Done.
    Done,
    /// Failed for good without a dead letter (reserved: the SQLite backend dead-letters).
    Failed,
    /// Dead-lettered (until requeued or purged).
    Dead,
    /// Cancelled: it never runs again.
    Cancelled,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 7] = [
        JobState::Ready,
        JobState::Delayed,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The state's name (`ready`, `delayed`, …).
    pub fn name(self) -> &'static str {
        match self {
            JobState::Ready => "ready",
            JobState::Delayed => "delayed",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended (nothing more happens to it unless it is requeued).
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Dead | JobState::Cancelled)
    }

    /// The exit status `wait` mirrors: 0 done, 1 failed or dead, 2 cancelled (a job that has
    /// not ended has none).
    pub fn exit_code(self) -> Option<u8> {
        match self {
            JobState::Done => Some(0),
            JobState::Failed | JobState::Dead => Some(1),
            JobState::Cancelled => Some(2),
            _ => None,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for JobState {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<JobState> {
        JobState::ALL.into_iter().find(|st| st.name() == s).ok_or_else(|| {
            crate::Error::InvalidArgument {
                what: "job state",
                value: s.to_owned(),
                expected: "ready, delayed, running, done, failed, dead or cancelled",
            }
        })
    }
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AttemptEnd {
    /// A oneshot job's process exited with `code`.
    Exited {
        /// The exit code.
        code: u8,
    },
    /// A oneshot job's process was killed by `signal`.
    Signalled {
        /// The signal's name (`SIGKILL`).
        signal: String,
    },
    /// A longlived worker answered `outcome` (`done`, `retry`, `fail`).
    Replied {
        /// The worker's outcome.
        outcome: String,
    },
    /// The job ran past its `timeout` and its process group was killed.
    TimedOut,
    /// The worker died, could not start, or broke the protocol during the job.
    WorkerLost,
    /// The daemon died (SIGKILL, a crash) during the attempt; noticed by the next daemon.
    DaemonLost,
    /// The daemon stopped during the attempt and put the job back (not counted).
    DaemonStopped,
    /// The job was cancelled during the attempt.
    Cancelled,
}

impl fmt::Display for AttemptEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptEnd::Exited { code } => write!(f, "exit code {code}"),
            AttemptEnd::Signalled { signal } => write!(f, "killed by {signal}"),
            AttemptEnd::Replied { outcome } => write!(f, "replied {outcome}"),
            AttemptEnd::TimedOut => f.write_str("timed out"),
            AttemptEnd::WorkerLost => f.write_str("worker lost"),
            AttemptEnd::DaemonLost => f.write_str("daemon lost"),
            AttemptEnd::DaemonStopped => f.write_str("daemon stopped"),
            AttemptEnd::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// One output stream of an attempt, bounded: the first and last halves of the limit kept,
/// with the count of bytes dropped between them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    /// What was kept: the head, then (when bytes were dropped) a marker line, then the tail.
    #[serde(with = "lossy")]
    pub bytes: Vec<u8>,
    /// Bytes written in all.
    pub total: u64,
    /// Bytes dropped between the head and the tail.
    pub dropped: u64,
}

mod lossy {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

/// What an attempt's process cost, from the kernel when it was reaped (`waitid`'s rusage of
/// the job's process and the descendants it waited for). Oneshot jobs only: a longlived
/// worker's process serves many jobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUse {
    /// The largest resident set size, in KiB.
    pub max_rss_kib: u64,
    /// CPU time in user mode, in microseconds.
    pub user_cpu_us: u64,
    /// CPU time in the kernel on its behalf, in microseconds.
    pub system_cpu_us: u64,
}

impl From<procyard_core::Usage> for ResourceUse {
    fn from(u: procyard_core::Usage) -> ResourceUse {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        ResourceUse {
            max_rss_kib: u.max_rss_kib,
            user_cpu_us: us(u.user),
            system_cpu_us: us(u.system),
        }
    }
}

/// One attempt of a job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the job's first attempt recorded, 2 for the next, … (what `logs --attempt`
    /// takes). An attempt the daemon lost is recorded too, so this may run ahead of
    /// `delivery`.
    pub number: u32,
    /// The delivery count the worker saw (`PROCYARD_ATTEMPT`).
    pub delivery: u32,
    /// The worker's pid.
    pub worker_pid: Option<i32>,
    /// When it started (ms since the epoch).
    pub started_ms: Option<i64>,
    /// When it ended (ms since the epoch); `None` while it runs.
    pub ended_ms: Option<i64>,
    /// How it ended; `None` while it runs.
    pub end: Option<AttemptEnd>,
    /// The reason given by the worker or the retry policy.
    pub reason: Option<String>,
    /// Its stdout (oneshot jobs; `None` when not captured: a longlived worker's stdout is the
    /// protocol).
    pub stdout: Option<Captured>,
    /// Its stderr (oneshot jobs; longlived workers' lines written during the job).
    pub stderr: Option<Captured>,
    /// What its process cost (oneshot jobs whose process was reaped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ResourceUse>,
}

impl Attempt {
    /// How long it ran (`None` while it runs, or when its start was not recorded).
    pub fn duration(&self) -> Option<Duration> {
        let (start, end) = (self.started_ms?, self.ended_ms?);
        Some(Duration::from_millis(end.saturating_sub(start).max(0) as u64))
    }
}

/// What the daemon tells the backend when an attempt ends
/// ([`QueueBackend::record_attempt`](super::QueueBackend::record_attempt)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptReport {
    /// The worker's pid, when it started.
    pub worker_pid: Option<i32>,
    /// How it ended.
    pub end: AttemptEnd,
    /// Why (the worker's message or the failure), if anything.
    pub reason: Option<String>,
    /// Its stdout, when captured.
    pub stdout: Option<Captured>,
    /// Its stderr, when captured.
    pub stderr: Option<Captured>,
    /// What its process cost, when it was a oneshot job's process and was reaped.
    pub usage: Option<ResourceUse>,
}

/// A job, as `job ID` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id.
    pub id: String,
    /// The task it was routed to.
    pub task: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// The payload's size in bytes.
    pub payload_len: u64,
    /// Where it is.
    pub state: JobState,
    /// When it was published (ms since the epoch).
    pub published_ms: i64,
    /// When it ended (ms since the epoch).
    pub finished_ms: Option<i64>,
    /// Deliveries counted so far (the retry policy's count).
    pub deliveries: u32,
    /// The last failure's reason (or why it was cancelled).
    pub reason: Option<String>,
    /// Its attempts, oldest first (empty in listings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
}

/// Which jobs `jobs` lists, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFilter {
    /// Only this task.
    pub task: Option<String>,
    /// Only these states (all when empty).
    pub states: Vec<JobState>,
    /// Only jobs published within this long.
    pub since: Option<Duration>,
    /// At most this many.
    pub limit: usize,
}

impl Default for JobFilter {
    fn default() -> JobFilter {
        JobFilter { task: None, states: Vec::new(), since: None, limit: 50 }
    }
}

/// What `purge` deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Purge {
    /// Dead letters.
    pub dead: bool,
    /// Done and cancelled jobs.
    pub done: bool,
    /// Only those that ended longer ago than this.
    pub older_than: Option<Duration>,
}

/// How long ended jobs are kept (`[daemon] keep_done`, `keep_done_max`). Dead letters stay
/// until requeued or purged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Done and cancelled jobs are deleted this long after they ended; zero keeps no history
    /// (a done job's row is deleted at once).
    pub keep_done: Duration,
    /// At most this many done and cancelled jobs are kept (the oldest go first).
    pub keep_done_max: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention { keep_done: Duration::from_secs(24 * 3600), keep_done_max: 100_000 }
    }
}

/// Checks that `id` looks like a job id (a UUID) before anything is looked up:
/// [`Error::InvalidJobId`](crate::Error::InvalidJobId) otherwise.
pub fn check_job_id(id: &str) -> crate::Result<()> {
    match uuid::Uuid::try_parse(id) {
        Ok(_) => Ok(()),
        Err(_) => Err(crate::Error::InvalidJobId { id: id.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_print_and_map_to_exit_codes() {
        for st in JobState::ALL {
            assert_eq!(st.name().parse::<JobState>().unwrap(), st);
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{}\"", st.name()));
            assert_eq!(st.is_final(), st.exit_code().is_some());
        }
        assert!("finished".parse::<JobState>().is_err());
        assert_eq!(JobState::Dead.exit_code(), Some(1));
        assert_eq!(JobState::Cancelled.exit_code(), Some(2));
    }

    #[test]
    fn job_ids_are_uuids() {
        assert!(check_job_id(&uuid::Uuid::now_v7().to_string()).is_ok());
        for bad in ["", "42", "not-a-uuid", "0190a1b2-...", "'; DROP TABLE jobs"] {
            assert!(matches!(check_job_id(bad), Err(crate::Error::InvalidJobId { .. })), "{bad}");
        }
    }
}
