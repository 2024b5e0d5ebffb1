//! The wire formats between the application and its worker, all inside procyard-core's
//! length-prefixed frames (so any byte, newline included, is just payload).
//!
//! - Requests (application → worker): `u32` header length, a JSON [`Request`] header, then the
//!   raw body (a function's JSON arguments).
//! - Results (worker → application): `u64` key, one tag byte (`0` value, `1` error), then the
//!   body: the value's JSON, or a JSON [`WireError`].
//! - Inside the worker, a job child reports to the worker with one tag byte and the body. A
//!   small report goes instead straight to the application, as its result frame, on the
//!   direct pipe; the worker then gets only a note that it was delivered ([`TAG_DELIVERED`]).

use std::collections::BTreeMap;
use std::time::Duration;

use procyard_core::Exit;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::output::CommandOutput;

/// The key of the worker's first frame, which says it is ready (job keys start at 1).
pub(crate) const READY_KEY: u64 = 0;

/// Tag byte of a value.
pub(crate) const TAG_VALUE: u8 = 0;
/// Tag byte of an error.
pub(crate) const TAG_ERROR: u8 = 1;
/// Tag byte of a job child's note to the worker (no body): its report went straight to the
/// application on the direct pipe.
pub(crate) const TAG_DELIVERED: u8 = 2;

/// What the worker runs for one job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) enum Spec {
    /// A registered function; its JSON arguments travel as the frame body.
    Function { name: String },
    /// A program to execute.
    Command(CommandSpec),
}

/// A command job as it travels to the worker.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct CommandSpec {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) cwd: Option<String>,
}

/// A request header from the application to the worker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) enum Request {
    /// Run a job.
    Run { key: u64, spec: Spec, timeout_ms: Option<u64> },
    /// Accept no more jobs, give running ones `grace_ms`, then TERM, then KILL, then exit.
    Stop { grace_ms: u64 },
}

/// An error as it travels from the worker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) enum WireError {
    Failed {
        message: String,
    },
    Crashed {
        exit: Exit,
    },
    CommandFailed {
        output: Box<CommandOutput>,
    },
    TimedOut {
        timeout_ms: u64,
    },
    Stopped,
    UnknownFunction {
        name: String,
    },
    Malformed {
        reason: String,
    },
    /// Sent instead of the ready message by a worker-mode process whose `main` did not call
    /// `init` first (`program`: its executable).
    InitNotCalled {
        program: String,
    },
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Error {
        match e {
            WireError::Failed { message } => Error::Failed { message },
            WireError::Crashed { exit } => Error::Crashed { exit },
            WireError::CommandFailed { output } => Error::CommandFailed { output },
            WireError::TimedOut { timeout_ms } => {
                Error::TimedOut { timeout: Duration::from_millis(timeout_ms) }
            }
            WireError::Stopped => Error::Stopped,
            WireError::UnknownFunction { name } => Error::UnknownFunction { name },
            WireError::Malformed { reason } => Error::Malformed { reason },
            WireError::InitNotCalled { program } => {
                Error::InitNotCalled { program: program.into() }
            }
        }
    }
}

/// Encodes a request payload (without the frame's length prefix).
pub(crate) fn encode_request(header: &Request, body: &[u8]) -> Vec<u8> {
    // A request header holds only strings and numbers: serializing it cannot fail.
    let json = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + json.len() + body.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(body);
    out
}

/// `payload` as one procyard-core frame (core's header, then the payload) in one buffer, for
/// the worker's own non-blocking writes; `None` over the frame limit.
pub(crate) fn frame(payload: &[u8]) -> Option<Vec<u8>> {
    let header = procyard_core::frame::frame_header(payload.len()).ok()?;
    let mut out = Vec::with_capacity(header.len() + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Some(out)
}

/// Writes `payload` as one frame, header and payload in one write (core's
/// `write_frame_bytes`); refuses one over the frame limit.
pub(crate) fn write_frame<W: std::io::Write + ?Sized>(
    w: &mut W,
    payload: &[u8],
) -> std::io::Result<()> {
    procyard_core::frame::write_frame_bytes(w, payload)
}

/// A function job as the job child reads it: the job's key (`u64`, for a report sent straight
/// to the application), name length, name, JSON arguments.
pub(crate) fn job_message(key: u64, name: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(12 + name.len() + body.len());
    message.extend_from_slice(&key.to_be_bytes());
    message.extend_from_slice(&(name.len() as u32).to_be_bytes());
    message.extend_from_slice(name.as_bytes());
    message.extend_from_slice(body);
    message
}

/// Splits a request payload into its header and body.
pub(crate) fn decode_request(payload: &[u8]) -> Result<(Request, &[u8]), String> {
    if payload.len() < 4 {
        return Err(format!("request of {} bytes is shorter than its header", payload.len()));
    }
    let len = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
    let rest = &payload[4..];
    if len > rest.len() {
        return Err(format!("request header of {len} bytes exceeds the {} left", rest.len()));
    }
    let header = serde_json::from_slice(&rest[..len]).map_err(|e| e.to_string())?;
    Ok((header, &rest[len..]))
}

/// A tagged report: `tag` then `body`.
pub(crate) fn encode_report(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(tag);
    out.extend_from_slice(body);
    out
}

/// The body of an error report.
pub(crate) fn error_body(error: &WireError) -> Vec<u8> {
    serde_json::to_vec(error).unwrap_or_default()
}

/// Appends the result frame for `key` (length prefix, key, report) to `out`; false, with
/// nothing appended, if it would exceed the frame limit.
pub(crate) fn push_result(out: &mut Vec<u8>, key: u64, report: &[u8]) -> bool {
    let Ok(header) = procyard_core::frame::frame_header(8 + report.len()) else {
        return false;
    };
    out.reserve(header.len() + 8 + report.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&key.to_be_bytes());
    out.extend_from_slice(report);
    true
}

/// Encodes a result payload for `key` (without the frame's length prefix).
#[cfg(test)]
pub(crate) fn encode_result(key: u64, report: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    assert!(push_result(&mut out, key, report));
    out.split_off(4)
}

/// What a result payload says: which key, and its value's JSON or its error.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// A well-formed result.
    Result { key: u64, outcome: Result<Vec<u8>, WireError> },
    /// The key could be read but not the rest: that one result fails.
    BadBody { key: u64, reason: String },
    /// Not even a key: nothing to complete.
    NoKey { len: usize },
}

/// Decodes a result payload; never panics.
pub(crate) fn decode_result(mut payload: Vec<u8>) -> Decoded {
    if payload.len() < 8 {
        return Decoded::NoKey { len: payload.len() };
    }
    let mut key_bytes = [0u8; 8];
    key_bytes.copy_from_slice(&payload[..8]);
    let key = u64::from_be_bytes(key_bytes);
    match payload.get(8) {
        Some(&TAG_VALUE) => {
            payload.drain(..9);
            Decoded::Result { key, outcome: Ok(payload) }
        }
        Some(&TAG_ERROR) => match serde_json::from_slice::<WireError>(&payload[9..]) {
            Ok(e) => Decoded::Result { key, outcome: Err(e) },
            Err(e) => Decoded::BadBody { key, reason: format!("undecodable error: {e}") },
        },
        Some(tag) => Decoded::BadBody { key, reason: format!("unknown tag {tag}") },
        None => Decoded::BadBody { key, reason: "no tag".into() },
    }
}

/// The key a job message (see [`job_message`]) carries, and the rest of it; `None` if
/// truncated.
pub(crate) fn split_job_message(message: &[u8]) -> Option<(u64, &[u8])> {
    let (key, rest) = message.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*key), rest))
}

/// The name a job message (see [`job_message`]) calls; empty if truncated.
pub(crate) fn function_name(message: &[u8]) -> &[u8] {
    let Some((_, message)) = split_job_message(message) else { return &[] };
    let Some((len, rest)) = message.split_first_chunk::<4>() else { return &[] };
    rest.get(..u32::from_be_bytes(*len) as usize).unwrap_or(&[])
}

/// Whether a job child's report (tag + body) is the note that it went straight to the
/// application (see [`TAG_DELIVERED`]).
pub(crate) fn is_delivered(report: &[u8]) -> bool {
    report == [TAG_DELIVERED]
}

/// Whether a job child's report (tag + body) is well formed: a value, or an error that
/// decodes (a [`TAG_DELIVERED`] note is not a report).
pub(crate) fn is_report(report: &[u8]) -> bool {
    match report.split_first() {
        Some((&TAG_VALUE, _)) => true,
        Some((&TAG_ERROR, body)) => serde_json::from_slice::<WireError>(body).is_ok(),
        _ => false,
    }
}

/// Reads what the non-blocking pipe `input` holds into `decoder`, through `chunk`, like
/// [`FrameDecoder::read_from`](procyard_core::FrameDecoder::read_from) but stopping at a short
/// read (`action` names the read in an error): a pipe read returns all that is buffered, up to the length asked for, so a short one
/// emptied the pipe, and a later write raises a new (edge-triggered) readiness event. That
/// saves the read that would only say `EAGAIN`, once per wake-up.
pub(crate) fn read_pipe(
    action: &'static str,
    input: &mut std::fs::File,
    decoder: &mut procyard_core::FrameDecoder,
    chunk: &mut [u8],
) -> procyard_core::Result<procyard_core::StreamState> {
    use std::io::Read;
    loop {
        match procyard_core::event::retry_interrupted(|| input.read(chunk)) {
            Ok(0) => return decoder.finish().map(|()| procyard_core::StreamState::Closed),
            Ok(n) => {
                decoder.feed(&chunk[..n]);
                if n < chunk.len() {
                    return Ok(procyard_core::StreamState::Open);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Ok(procyard_core::StreamState::Open);
            }
            Err(e) => return Err(procyard_core::Error::Os { action, source: e }),
        }
    }
}

/// What a [`FrameDecoder::read_from`](procyard_core::FrameDecoder::read_from) result means
/// once the complete frames have been taken out: the decoder reports a truncation when the end
/// of stream arrives in the same read as the last frames, which is a clean end if nothing is
/// left over.
pub(crate) fn stream_state(
    state: procyard_core::Result<procyard_core::StreamState>,
    decoder: &procyard_core::FrameDecoder,
) -> procyard_core::Result<procyard_core::StreamState> {
    match state {
        Err(procyard_core::Error::FrameTruncated { .. }) if decoder.buffered() == 0 => {
            Ok(procyard_core::StreamState::Closed)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_is_binary_safe() {
        let req = Request::Run {
            key: 7,
            spec: Spec::Function { name: "a\nb".into() },
            timeout_ms: Some(5),
        };
        let body = b"\"12345\"\n\0\xff";
        let wire = encode_request(&req, body);
        let (back, rest) = decode_request(&wire).unwrap();
        assert_eq!(back, req);
        assert_eq!(rest, body);
    }

    #[test]
    fn bad_requests_are_errors() {
        assert!(decode_request(b"").is_err());
        assert!(decode_request(&[0, 0, 0, 9, b'{']).is_err());
        assert!(decode_request(&[0, 0, 0, 1, b'{']).is_err());
    }

    #[test]
    fn results_decode_or_fail_one_key() {
        let ok = encode_result(3, &encode_report(TAG_VALUE, b"[1,2,3,4,5]"));
        assert_eq!(
            decode_result(ok),
            Decoded::Result { key: 3, outcome: Ok(b"[1,2,3,4,5]".to_vec()) }
        );
        let err = encode_result(4, &encode_report(TAG_ERROR, &error_body(&WireError::Stopped)));
        assert_eq!(
            decode_result(err),
            Decoded::Result { key: 4, outcome: Err(WireError::Stopped) }
        );
        let bad = encode_result(5, &encode_report(TAG_ERROR, b"{nope"));
        assert!(matches!(decode_result(bad), Decoded::BadBody { key: 5, .. }));
        let bad_tag = encode_result(6, &[9]);
        assert!(matches!(decode_result(bad_tag), Decoded::BadBody { key: 6, .. }));
        assert!(matches!(decode_result(encode_result(8, &[])), Decoded::BadBody { key: 8, .. }));
        assert_eq!(decode_result(vec![1, 2]), Decoded::NoKey { len: 2 });
    }

    #[test]
    fn refusal_decodes_as_init_not_called() {
        let refusal = WireError::InitNotCalled { program: "/usr/bin/app".into() };
        let frame = encode_result(READY_KEY, &encode_report(TAG_ERROR, &error_body(&refusal)));
        let Decoded::Result { key: READY_KEY, outcome: Err(e) } = decode_result(frame) else {
            panic!("not a refusal of the ready key");
        };
        let error = Error::from(e);
        assert!(
            matches!(&error, Error::InitNotCalled { program } if program.as_os_str() == "/usr/bin/app"),
            "{error:?}"
        );
        assert!(error.to_string().contains("procyard_resultworker::init()"), "{error}");
    }

    #[test]
    fn reports_decode() {
        assert!(is_report(&encode_report(TAG_VALUE, b"1")));
        assert!(is_report(&encode_report(TAG_ERROR, &error_body(&WireError::Stopped))));
        assert!(!is_report(&[]));
        assert!(!is_report(&[1, b'x']));
        assert!(!is_report(&[7, b'1']));
        assert!(!is_report(&[TAG_DELIVERED]));
        assert!(is_delivered(&[TAG_DELIVERED]));
        assert!(!is_delivered(&[TAG_DELIVERED, b'1']));
    }

    #[test]
    fn job_messages_carry_their_key() {
        let message = job_message(42, "f", b"[1]");
        let (key, rest) = split_job_message(&message).unwrap();
        assert_eq!(key, 42);
        assert_eq!(rest, [&[0, 0, 0, 1][..], b"f[1]"].concat());
        assert_eq!(split_job_message(&[1, 2, 3]), None);
    }
}
