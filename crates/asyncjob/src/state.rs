//! The job's state: what the monitor records in the state file and `check` prints.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use procyard_core::Signal;
use serde::{Deserialize, Deserializer, Serialize};

use crate::StartFailure;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// No state file: no job, or it was reaped.
    Absent,
    /// The monitor is starting the command.
    Invoking,
    /// The command runs.
    Running,
    /// The command ended (exit code or signal recorded).
    Finished,
    /// The command could not be started (`error` says why).
    Failed,
    /// The monitor died without recording an end (computed on read, never written).
    Lost,
}

impl Status {
    /// Whether the job can change no more (finished, failed or lost): it can be reaped.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Finished | Status::Failed | Status::Lost)
    }

    /// The lower-case name used in the state file.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Absent => "absent",
            Status::Invoking => "invoking",
            Status::Running => "running",
            Status::Finished => "finished",
            Status::Failed => "failed",
            Status::Lost => "lost",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The content of a state file, and what `check` prints: first the keys that handlers read
/// (`status`, `pid`, `ppid`, `time`, `exitstatus`, `signal`, `error`), then when the job ran and
/// who its processes are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// Where the job is in its life.
    pub status: Status,
    /// The job's pid, `-1` until it runs.
    pub pid: i32,
    /// The pid of the job's monitor (the detached process that runs it and records its end),
    /// `-1` when there is none.
    pub ppid: i32,
    /// When the monitor started, in Unix seconds.
    pub time: i64,
    /// The job's exit code, once finished by exiting.
    #[serde(default)]
    pub exitstatus: Option<i32>,
    /// The signal that ended the job, once finished by a signal; written as its name
    /// (`"SIGTERM"`).
    #[serde(default, deserialize_with = "signal_name")]
    pub signal: Option<Signal>,
    /// Why the job failed to start.
    #[serde(default)]
    pub error: Option<String>,
    /// What failed to start: `spawn`, `cwd`, `output` or `state`.
    #[serde(default)]
    pub error_kind: Option<StartFailure>,
    /// When the job started, Unix seconds with fractions.
    #[serde(default)]
    pub started_at: Option<f64>,
    /// When the job ended (or failed), Unix seconds with fractions.
    #[serde(default)]
    pub ended_at: Option<f64>,
    /// Whether the monitor stopped the job because its timeout expired.
    #[serde(default)]
    pub timed_out: bool,
    /// The job's start time in clock ticks since boot (identity, with `pid` and `boot_id`).
    #[serde(default)]
    pub job_start_time: Option<u64>,
    /// The monitor's start time in clock ticks since boot (its identity, with `ppid`).
    #[serde(default)]
    pub monitor_start_time: Option<u64>,
    /// The kernel's boot id when the pids were recorded: after a reboot they name other
    /// processes.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// The command, for people reading the file.
    #[serde(default)]
    pub command: Vec<String>,
}

impl JobState {
    /// The state of a job that does not exist.
    pub fn absent() -> JobState {
        JobState {
            status: Status::Absent,
            pid: -1,
            ppid: -1,
            time: 0,
            exitstatus: None,
            signal: None,
            error: None,
            error_kind: None,
            started_at: None,
            ended_at: None,
            timed_out: false,
            job_start_time: None,
            monitor_start_time: None,
            boot_id: None,
            command: Vec::new(),
        }
    }

    /// The JSON that `check` prints: `{"status":"absent"}` for no job, else every field.
    pub fn to_json(&self) -> String {
        if self.status == Status::Absent {
            return r#"{"status":"absent"}"#.to_owned();
        }
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"status":"absent"}"#.to_owned())
    }
}

/// Reads the `signal` of a state: a name (`SIGTERM`, `TERM`, `SIGRTMIN+2`), a number, or null.
/// A name this version does not know reads as null rather than making the whole state
/// unreadable.
fn signal_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Signal>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Name(String),
        Number(i32),
    }
    Ok(match Option::<Raw>::deserialize(deserializer)? {
        None => None,
        Some(Raw::Number(n)) => Signal::from_raw(n),
        Some(Raw::Name(name)) => name.parse().ok(),
    })
}

/// Now, as Unix seconds with fractions.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_json_is_the_status_alone() {
        assert_eq!(JobState::absent().to_json(), r#"{"status":"absent"}"#);
    }

    #[test]
    fn handler_keys_are_present_and_round_trip() {
        let mut state = JobState::absent();
        state.status = Status::Finished;
        state.pid = 42;
        state.ppid = 41;
        state.time = 1_700_000_000;
        state.exitstatus = Some(7);
        let json = state.to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        for key in ["status", "pid", "ppid", "time", "exitstatus", "signal", "error"] {
            assert!(value.get(key).is_some(), "{key} missing in {json}");
        }
        assert_eq!(value["status"], "finished");
        assert_eq!(serde_json::from_str::<JobState>(&json).unwrap(), state);
    }

    #[test]
    fn signal_is_written_as_its_name_and_read_from_old_states() {
        let mut state = JobState::absent();
        state.status = Status::Finished;
        state.signal = Some(Signal::TERM);
        let value: serde_json::Value = serde_json::from_str(&state.to_json()).unwrap();
        assert_eq!(value["signal"], "SIGTERM");
        let read = |signal: &str| {
            let json =
                format!(r#"{{"status":"finished","pid":5,"ppid":4,"time":1,"signal":{signal}}}"#);
            serde_json::from_str::<JobState>(&json).unwrap().signal
        };
        assert_eq!(read(r#""SIGKILL""#), Some(Signal::KILL));
        assert_eq!(read(r#""SIGRTMIN+2""#), Signal::from_raw(34));
        assert_eq!(read("15"), Some(Signal::TERM));
        assert_eq!(read("null"), None);
        assert_eq!(read(r#""SIGNONSENSE""#), None);
    }

    #[test]
    fn minimal_state_parses() {
        let state: JobState =
            serde_json::from_str(r#"{"status":"running","pid":5,"ppid":4,"time":1}"#).unwrap();
        assert_eq!(state.status, Status::Running);
        assert!(!state.status.is_terminal());
    }
}
