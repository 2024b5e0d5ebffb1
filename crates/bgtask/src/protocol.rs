//! The wire protocol between clients and a supervisor: procyard-core frames (big-endian `u32`
//! length, then JSON), a version handshake, and a closed set of requests.
//!
//! Every request gets exactly one [`Response`] frame, in order. A [`Response::Data`] frame is
//! followed by one raw frame holding the bytes (so binary output is not JSON-encoded). After
//! [`Request::Subscribe`], the supervisor also sends [`Response::Event`] frames on that
//! connection whenever something happens.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::RefusalKind;
use crate::record::Status;

/// The protocol version; the handshake refuses any other.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest request frame a supervisor accepts (a stdin write is at most this big).
pub const MAX_REQUEST: usize = 1024 * 1024;

/// Largest number of bytes returned by one read.
pub const MAX_READ: u64 = 4 * 1024 * 1024;

/// Metadata: a JSON object.
pub type Meta = serde_json::Map<String, serde_json::Value>;

/// An output stream of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamName {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl StreamName {
    /// `"stdout"` or `"stderr"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::Stdout => "stdout",
            StreamName::Stderr => "stderr",
        }
    }
}

impl std::str::FromStr for StreamName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" | "1" => Ok(StreamName::Stdout),
            "stderr" | "2" => Ok(StreamName::Stderr),
            _ => Err(format!("unknown stream {s:?} (expected stdout or stderr)")),
        }
    }
}

/// A client's request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The first frame on every connection.
    Hello {
        /// [`PROTOCOL_VERSION`].
        version: u32,
        /// The task the client means to talk to.
        task: String,
    },
    /// The task's [`TaskInfo`].
    Info,
    /// Merges keys into the metadata (a `null` value removes the key).
    ApplyMeta {
        /// The keys.
        meta: Meta,
    },
    /// Reads output bytes.
    Read {
        /// The stream.
        stream: StreamName,
        /// Absolute offset; `None` means "from the consumed mark".
        offset: Option<u64>,
        /// At most this many bytes (capped at [`MAX_READ`]).
        count: u64,
        /// Mark the bytes consumed (they stay retained up to the cap).
        consume: bool,
        /// If nothing is available yet, wait until something is, or the stream ends, or the
        /// task exits.
        wait: bool,
    },
    /// Drops retained bytes before `upto`.
    Discard {
        /// The stream.
        stream: StreamName,
        /// Absolute offset.
        upto: u64,
    },
    /// Takes (or peeks at) the datagrams the task sent on its data channel.
    ReadData {
        /// Remove them from the supervisor.
        consume: bool,
    },
    /// Writes to the task's stdin. The answer comes once the bytes are queued within the
    /// supervisor's stdin buffer (backpressure).
    Write {
        /// The bytes.
        data: Vec<u8>,
    },
    /// Closes the task's stdin (after the queued bytes).
    CloseStdin,
    /// Sends a signal to the task's process group.
    Signal {
        /// The signal.
        signal: procyard_core::Signal,
    },
    /// SIGSTOP to the group.
    Pause,
    /// SIGCONT to the group.
    Resume,
    /// Runs a finished task again, keeping its output and offsets.
    Restart,
    /// Turns this connection into an event feed as well.
    Subscribe,
    /// Kills the task (INT, TERM, KILL with grace), removes its files, ends the supervisor.
    Delete,
}

/// One stream's offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// First retained offset.
    pub start: u64,
    /// Next offset to be written.
    pub limit: u64,
    /// Offset up to which readers consumed.
    pub consumed: u64,
    /// Whether the stream ended (the pipe closed) for the current run.
    pub eof: bool,
}

/// What a supervisor knows about its task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// The task id.
    pub id: String,
    /// The command.
    pub command: Vec<String>,
    /// Metadata.
    pub meta: Meta,
    /// The status.
    pub status: Status,
    /// The task's pid while it runs.
    pub pid: Option<i32>,
    /// The supervisor's pid.
    pub supervisor_pid: i32,
    /// How many times it was restarted.
    pub restarts: u32,
    /// The retain cap per stream, in bytes.
    pub retain: u64,
    /// stdout and stderr.
    pub streams: BTreeMap<String, StreamInfo>,
    /// Whether stdin is still open.
    pub stdin_open: bool,
    /// Datagrams waiting on the data channel.
    pub datagrams: usize,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Start of the current run.
    pub started_ms: u64,
    /// End of the last run.
    pub ended_ms: Option<u64>,
}

/// Something that happened, sent to subscribers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// New output is available on `stream` up to `limit` (coalesced).
    Output {
        /// The stream.
        stream: StreamName,
        /// Its limit.
        limit: u64,
    },
    /// The stream's pipe closed.
    EndOfStream {
        /// The stream.
        stream: StreamName,
        /// Its final limit for this run.
        limit: u64,
    },
    /// The task ended.
    Exit {
        /// How.
        status: Status,
    },
    /// The task was restarted.
    Restarted,
    /// The task is being deleted; the connection closes next.
    Deleted,
}

/// The supervisor's answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// Handshake accepted.
    Hello {
        /// The supervisor's [`PROTOCOL_VERSION`].
        version: u32,
        /// Its task.
        task: String,
    },
    /// Done.
    Ok,
    /// [`Request::Info`].
    Info(Box<TaskInfo>),
    /// Output bytes; the next frame holds `len` raw bytes.
    Data {
        /// The stream.
        stream: StreamName,
        /// Offset of the first byte (above the requested one if those bytes were dropped).
        offset: u64,
        /// How many bytes follow.
        len: u64,
        /// How many of the bytes asked for (from the requested offset, or the consumed mark)
        /// were dropped beyond the retain cap before this read: the gap before `offset`.
        #[serde(default)]
        dropped: u64,
        /// The stream's state after the read.
        info: StreamInfo,
        /// Whether the task has ended (and its output was collected).
        exited: bool,
    },
    /// Datagrams from the data channel.
    Datagrams {
        /// Each message as sent (JSON when it parsed, else a string).
        messages: Vec<serde_json::Value>,
    },
    /// An event (only on subscribed connections).
    Event(Event),
    /// The request was refused.
    Error {
        /// Why.
        kind: RefusalKind,
        /// In words.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_round_trip() {
        let requests = [
            Request::Hello { version: PROTOCOL_VERSION, task: "t".into() },
            Request::Info,
            Request::Read {
                stream: StreamName::Stderr,
                offset: Some(12),
                count: 23,
                consume: false,
                wait: true,
            },
            Request::Signal { signal: procyard_core::Signal::HUP },
            Request::Write { data: vec![0, 255, b'\n'] },
            Request::Delete,
        ];
        for r in requests {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r, "{text}");
        }
    }

    #[test]
    fn the_request_set_is_closed() {
        for bad in [
            json!({"request": "rm_rf"}),
            json!({"request": "apply_meta", "meta": {}, "extra": 1}),
            json!({"request": "signal", "signal": "NOPE"}),
            json!({"request": "read", "stream": "stdin", "offset": 0, "count": 1,
                   "consume": false, "wait": false}),
            json!({"verb": "info"}),
            json!([1, 2, 3]),
        ] {
            assert!(serde_json::from_value::<Request>(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn stream_names() {
        assert_eq!("1".parse::<StreamName>(), Ok(StreamName::Stdout));
        assert_eq!("stderr".parse::<StreamName>(), Ok(StreamName::Stderr));
        assert!("data".parse::<StreamName>().is_err());
    }
}
