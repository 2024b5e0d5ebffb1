//! A job's outcome: how an attempt ended ([`classify`] for an exit, [`JobResult::from_reply`]
//! for a longlived worker's reply) and what the queue is told ([`settle`]). Pure.

use std::time::Duration;

use procyard_core::Exit;

use crate::config::{TaskConfig, WorkModel};
use crate::protocol::{Reply, ReplyOutcome};
use crate::queue::{AttemptEnd, Outcome};

/// The exit code by which a oneshot job asks to be retried later (`EX_TEMPFAIL` of
/// `sysexits.h`).
pub(crate) const EX_TEMPFAIL: u8 = 75;

/// How one attempt of a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum JobResult {
    /// Done: acknowledge it.
    Done,
    /// A temporary failure the job itself reported (exit 75, a `retry` reply): run it again
    /// later, until `max_attempts`.
    Retry {
        /// Why.
        reason: String,
    },
    /// A failure (an exit code, a signal, a timeout, a dead worker, a `fail` reply): run it
    /// again until `max_attempts`, then dead-letter it.
    Fail {
        /// Why.
        reason: String,
    },
    /// Cancelled: never run again.
    Cancelled,
}

impl JobResult {
    /// What a longlived worker's reply says.
    pub(crate) fn from_reply(reply: Reply) -> JobResult {
        match reply.outcome {
            ReplyOutcome::Done => JobResult::Done,
            ReplyOutcome::Retry => JobResult::Retry {
                reason: reply.message.unwrap_or_else(|| "worker asked for a retry".into()),
            },
            ReplyOutcome::Fail => JobResult::Fail {
                reason: reply.message.unwrap_or_else(|| "worker reported a failure".into()),
            },
            ReplyOutcome::Cancelled => JobResult::Cancelled,
        }
    }

    /// Whether the attempt succeeded.
    pub(crate) fn is_done(&self) -> bool {
        *self == JobResult::Done
    }
}

/// How a job ended when its worker exited while running it. `timed_out` when the daemon
/// killed it for running past `timeout`. A longlived worker's exit always fails its job (its
/// outcome is what a reply says, never an exit code).
pub(crate) fn classify(
    exit: Exit,
    model: WorkModel,
    timed_out: bool,
    timeout: Option<Duration>,
) -> JobResult {
    if timed_out {
        return JobResult::Fail {
            reason: format!("timed out after {:?}", timeout.unwrap_or_default()),
        };
    }
    match (model, exit.code()) {
        (WorkModel::Longlived, _) => {
            JobResult::Fail { reason: format!("worker died during the job ({exit})") }
        }
        (WorkModel::Oneshot, Some(0)) => JobResult::Done,
        (WorkModel::Oneshot, Some(EX_TEMPFAIL)) => {
            JobResult::Retry { reason: format!("temporary failure (exit code {EX_TEMPFAIL})") }
        }
        (WorkModel::Oneshot, _) => JobResult::Fail { reason: exit.to_string() },
    }
}

/// How an attempt ended when its worker exited, for the job's record.
pub(crate) fn attempt_end(
    exit: Exit,
    model: WorkModel,
    timed_out: bool,
    cancelled: bool,
) -> AttemptEnd {
    match (model, exit) {
        _ if cancelled => AttemptEnd::Cancelled,
        _ if timed_out => AttemptEnd::TimedOut,
        (WorkModel::Longlived, _) => AttemptEnd::WorkerLost,
        (WorkModel::Oneshot, Exit::Code(code)) => AttemptEnd::Exited { code },
        (WorkModel::Oneshot, Exit::Signal { signal, .. }) => {
            AttemptEnd::Signalled { signal: signal.to_string() }
        }
    }
}

/// What the queue is told about attempt `attempt` of a job of `task` that ended with `result`.
pub(crate) fn settle(task: &TaskConfig, attempt: u32, result: JobResult) -> Outcome {
    let reason = match result {
        JobResult::Done => return Outcome::Done,
        JobResult::Cancelled => return Outcome::Cancelled { reason: "cancelled".into() },
        JobResult::Retry { reason } | JobResult::Fail { reason } => reason,
    };
    if attempt >= task.max_attempts {
        Outcome::DeadLetter { reason }
    } else {
        Outcome::Retry { delay: task.backoff().delay(attempt), reason }
    }
}

#[cfg(test)]
mod tests {
    use procyard_core::Signal;

    use super::*;
    use crate::supervisor::testing::task;

    #[test]
    fn oneshot_exit_codes() {
        let c = |exit| classify(exit, WorkModel::Oneshot, false, None);
        assert_eq!(c(Exit::Code(0)), JobResult::Done);
        assert!(
            matches!(c(Exit::Code(EX_TEMPFAIL)), JobResult::Retry { reason } if reason.contains("75"))
        );
        assert!(matches!(c(Exit::Code(3)), JobResult::Fail { .. }));
        let killed = Exit::Signal { signal: Signal::KILL, core_dumped: false };
        assert!(matches!(c(killed), JobResult::Fail { .. }));
    }

    #[test]
    fn a_timeout_fails_whatever_the_exit() {
        let t = Some(Duration::from_secs(2));
        let r = classify(Exit::Code(0), WorkModel::Oneshot, true, t);
        assert_eq!(r, JobResult::Fail { reason: "timed out after 2s".into() });
    }

    #[test]
    fn a_longlived_exit_fails_its_job_even_with_code_zero() {
        let r = classify(Exit::Code(0), WorkModel::Longlived, false, None);
        assert!(matches!(r, JobResult::Fail { reason } if reason.contains("worker died")));
    }

    #[test]
    fn replies() {
        let reply = |outcome, message: Option<&str>| Reply {
            id: "j".into(),
            outcome,
            message: message.map(str::to_owned),
        };
        assert_eq!(JobResult::from_reply(reply(ReplyOutcome::Done, None)), JobResult::Done);
        assert_eq!(
            JobResult::from_reply(reply(ReplyOutcome::Retry, Some("busy"))),
            JobResult::Retry { reason: "busy".into() }
        );
        assert!(matches!(
            JobResult::from_reply(reply(ReplyOutcome::Fail, None)),
            JobResult::Fail { reason } if reason == "worker reported a failure"
        ));
    }

    #[test]
    fn settle_retries_with_backoff_then_dead_letters() {
        let t = task("t", WorkModel::Oneshot); // max_attempts 3, backoff 1s..
        assert_eq!(settle(&t, 1, JobResult::Done), Outcome::Done);
        let fail = || JobResult::Fail { reason: "x".into() };
        assert_eq!(
            settle(&t, 1, fail()),
            Outcome::Retry { delay: Duration::from_secs(1), reason: "x".into() }
        );
        assert_eq!(
            settle(&t, 2, JobResult::Retry { reason: "y".into() }),
            Outcome::Retry { delay: Duration::from_secs(2), reason: "y".into() }
        );
        assert_eq!(settle(&t, 3, fail()), Outcome::DeadLetter { reason: "x".into() });
    }
}
