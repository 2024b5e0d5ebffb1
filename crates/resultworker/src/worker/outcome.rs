//! A job's outcome from how its child ended: the report a function child sent, a crash, a
//! timeout, a stop, or a command's captured output.

use procyard_core::Exit;

use super::{Job, Kind, Phase};
use crate::output::CommandOutput;
use crate::wire::{
    TAG_ERROR, TAG_VALUE, WireError, encode_report, error_body, is_delivered, is_report,
};

/// What a child left behind: its unreported bytes (a command: its stdout), a command's stderr,
/// and whether a command's stream was cut at the limit.
pub(super) struct Captured {
    pub(super) output: Vec<u8>,
    pub(super) stderr: Vec<u8>,
    pub(super) truncated: bool,
}

/// The report for a job whose child exited, unless it was sent already.
pub(super) fn outcome(job: &Job, exit: Exit, captured: Captured) -> Option<Vec<u8>> {
    let error = |e: WireError| Some(encode_report(TAG_ERROR, &error_body(&e)));
    match job.phase {
        Phase::Reported => return None,
        Phase::TimedOut => {
            let timeout_ms = job.timeout.map_or(0, |t| t.as_millis() as u64);
            return error(WireError::TimedOut { timeout_ms });
        }
        Phase::Stopped => return error(WireError::Stopped),
        Phase::Running => {}
    }
    match job.kind {
        Kind::Function => {
            let mut bytes = &captured.output[..];
            let report =
                procyard_core::frame::read_frame_bytes(&mut bytes, procyard_core::MAX_FRAME);
            match (exit, report) {
                (Exit::Code(0), Ok(Some(report))) if is_report(&report) => Some(report),
                // Its report went straight to the application.
                (Exit::Code(0), Ok(Some(report))) if is_delivered(&report) => None,
                (Exit::Code(0), _) => error(WireError::Malformed {
                    reason: "the job exited without a complete report".into(),
                }),
                _ => error(WireError::Crashed { exit }),
            }
        }
        Kind::Command => {
            let output = CommandOutput {
                status: exit,
                stdout: captured.output,
                stderr: captured.stderr,
                truncated: captured.truncated,
            };
            if !exit.success() {
                return error(WireError::CommandFailed { output: Box::new(output) });
            }
            match serde_json::to_vec(&output) {
                Ok(json) => Some(encode_report(TAG_VALUE, &json)),
                Err(e) => error(WireError::Malformed { reason: e.to_string() }),
            }
        }
    }
}

/// The report for a job whose child was never born (see `Event::Lost`), unless it was sent
/// already.
pub(super) fn lost(job: &Job, error: WireError) -> Option<Vec<u8>> {
    if job.phase != Phase::Running {
        let captured = Captured { output: Vec::new(), stderr: Vec::new(), truncated: false };
        return outcome(job, Exit::Code(0), captured);
    }
    Some(encode_report(TAG_ERROR, &error_body(&error)))
}
