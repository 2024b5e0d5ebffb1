//! The wire protocol between clients and a supervisor: procyard-core frames (big-endian `u32`
//! length, then JSON), a version handshake, and a closed set of requests.
//!
//! Every request gets exactly one [`Response`] frame, in order. A [`Request::Write`] frame is
//! followed by one raw frame holding the bytes for the task's stdin, and a [`Response::Data`]
//! frame by one raw frame holding the output bytes, so bytes are never JSON-encoded. After
//! [`Request::Subscribe`], the supervisor also sends [`Response::Event`] frames on that
//! connection whenever something happens.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use procyard_core::Pid;

pub use crate::meta::Meta;
use crate::status::Status;
use crate::{Error, RefusalKind};

/// The protocol version; the handshake refuses any other. Version 2 sends stdin bytes as a raw
/// frame after [`Request::Write`] (version 1 sent them as a JSON array of numbers).
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest request frame a supervisor accepts (a stdin write is at most this big).
pub const MAX_REQUEST: usize = 1024 * 1024;

/// Largest number of bytes returned by one read.
pub const MAX_READ: u64 = 4 * 1024 * 1024;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An output stream of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

impl std::fmt::Display for StreamName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StreamName {
    type Err = Error;

    /// `stdout` or `1`, `stderr` or `2`; anything else is [`Error::UnknownStream`].
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "stdout" | "1" => Ok(StreamName::Stdout),
            "stderr" | "2" => Ok(StreamName::Stderr),
            _ => Err(Error::UnknownStream { given: s.to_owned() }),
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
        /// Keys to set (a `null` value removes its key).
        meta: Meta,
    },
    /// Reads output bytes.
    Read {
        /// Which output stream to read.
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
        /// With `wait`: wait until at least this many bytes are there (at most `count` and
        /// the retention cap; 0 and 1 both mean "any"), or the stream ends, the task exits or
        /// the retention is full. Fewer, larger answers for a reader that wants throughput.
        #[serde(default, skip_serializing_if = "is_zero")]
        at_least: u64,
        /// The reader holds the stream's memfd ([`Request::OutputFile`]): answer with where
        /// the bytes are (a [`Response::Data`] with `ring` set, no raw frame), pinned until
        /// its [`Request::Release`].
        #[serde(default, skip_serializing_if = "is_false")]
        file: bool,
    },
    /// Asks for the memfd holding `stream`'s retained bytes: the [`Response::OutputFile`]
    /// answer carries a read-only descriptor of it (`SCM_RIGHTS`).
    OutputFile {
        /// Which output stream.
        stream: StreamName,
    },
    /// The reader copied the bytes of its last `file` read of `stream`: the supervisor may
    /// fill the ring over them again. The one request without an answer.
    Release {
        /// Which output stream.
        stream: StreamName,
    },
    /// Drops retained bytes before `upto`.
    Discard {
        /// Which output stream to trim.
        stream: StreamName,
        /// Absolute offset.
        upto: u64,
    },
    /// Takes (or peeks at) the datagrams the task sent on its data channel.
    ReadData {
        /// Remove them from the supervisor.
        consume: bool,
    },
    /// Writes to the task's stdin: the next frame holds `len` raw bytes (at most
    /// [`MAX_REQUEST`]). The answer comes once the bytes are queued within the supervisor's
    /// stdin buffer (backpressure).
    Write {
        /// How many bytes the raw frame after this one holds.
        len: u64,
    },
    /// Closes the task's stdin (after the queued bytes).
    CloseStdin,
    /// Sends a signal to the task's process group.
    Signal {
        /// What to send (any signal, by name or number on the CLI).
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
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Metadata.
    pub meta: Meta,
    /// Whether it runs, is paused, or how it ended.
    pub status: Status,
    /// The task's pid while it runs.
    pub pid: Option<Pid>,
    /// The supervisor's pid.
    pub supervisor_pid: Pid,
    /// How many times it was restarted.
    pub restarts: u32,
    /// The retain cap per stream, in bytes.
    pub retain: u64,
    /// The offsets of stdout and stderr.
    pub streams: BTreeMap<StreamName, StreamInfo>,
    /// Whether stdin is still open.
    pub stdin_open: bool,
    /// Datagrams waiting on the data channel.
    pub datagrams: usize,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When the current (or last) run started, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When the last run ended (`None` while it runs).
    pub ended_ms: Option<u64>,
}

/// Something that happened, sent to subscribers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// New output is available on `stream` up to `limit` (coalesced).
    Output {
        /// Which stream grew.
        stream: StreamName,
        /// The offset just past the newest byte.
        limit: u64,
    },
    /// The stream's pipe closed.
    EndOfStream {
        /// Which stream ended.
        stream: StreamName,
        /// Its final limit for this run.
        limit: u64,
    },
    /// The task ended.
    Exit {
        /// How it ended.
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
        /// The id of the task it supervises.
        task: String,
    },
    /// Done.
    Ok,
    /// [`Request::Info`].
    Info(Box<TaskInfo>),
    /// Output bytes; the next frame holds `len` raw bytes.
    Data {
        /// Which stream the bytes are from.
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
        /// Nonzero for a `file` read: no raw frame follows; the bytes are in the stream's
        /// memfd, a ring of this many bytes (offset `o` at `o % ring`), until the reader's
        /// [`Request::Release`].
        #[serde(default, skip_serializing_if = "is_zero")]
        ring: u64,
    },
    /// The answer to [`Request::OutputFile`], sent with the memfd's descriptor.
    OutputFile {
        /// Which output stream.
        stream: StreamName,
        /// The ring's size in bytes.
        ring: u64,
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
        /// Why, for a program to act on.
        kind: RefusalKind,
        /// Why, in words for a person.
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
                at_least: 5,
                file: true,
            },
            Request::OutputFile { stream: StreamName::Stdout },
            Request::Release { stream: StreamName::Stdout },
            Request::Signal { signal: procyard_core::Signal::HUP },
            Request::Write { len: 3 },
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
        assert!(matches!("1".parse::<StreamName>(), Ok(StreamName::Stdout)));
        assert!(matches!("stderr".parse::<StreamName>(), Ok(StreamName::Stderr)));
        assert!(matches!("data".parse::<StreamName>(), Err(Error::UnknownStream { .. })));
        let info = StreamInfo { start: 0, limit: 1, consumed: 0, eof: false };
        let streams = BTreeMap::from([(StreamName::Stdout, info)]);
        let text = serde_json::to_string(&streams).unwrap();
        assert!(text.starts_with(r#"{"stdout":"#), "{text}");
    }
}
