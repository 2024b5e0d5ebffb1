//! [`Outcome`]: how a task ended, typed, with nothing swallowed.

use std::fmt;
use std::path::PathBuf;

use procyard_core::{Exit, Signal};
use serde_json::Value;

use crate::output::CommandOutput;

/// How a task ended. Every way a child can end has its own variant, with the facts kept.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// The task returned a value.
    Value(Value),
    /// The task returned an error (or panicked); its message is kept.
    TaskError {
        /// The task's own words (`Display` of its error, or the panic message).
        message: String,
    },
    /// A command task made with [`Task::capture_output`](crate::Task::capture_output) ended
    /// (however it ended): its status, stdout and stderr.
    Output(CommandOutput),
    /// The child exited without sending a result: a command's usual ending, or a task that
    /// called `exit` itself.
    Exited {
        /// The exit code.
        code: u8,
    },
    /// The child was killed by a signal before sending a result.
    Killed {
        /// The signal.
        signal: Signal,
    },
    /// The child ended in the middle of a message (a partial frame was left in the pipe).
    DiedMidMessage {
        /// How the child ended.
        exit: Exit,
        /// Bytes of the frame (header included) that arrived.
        received: usize,
        /// Bytes the frame announced (header included).
        expected: usize,
    },
    /// The manager could not learn how the child ended, or the child broke the protocol
    /// (oversized or undecodable frame).
    Lost {
        /// What went wrong.
        reason: String,
    },
    /// A function task named a function that the process started for it does not know
    /// (register it with [`register`](crate::register) before [`init`](crate::init)).
    UnknownFunction {
        /// The name asked for.
        name: String,
    },
    /// The task was dropped by [`Scheduler::stop`](crate::Scheduler::stop) before it started.
    Cancelled,
    /// A function task did not run: the program's `main` does not call
    /// [`init`](crate::init) first, so the process started for the task ran `main` again and
    /// reached a [`ProcessManager`](crate::ProcessManager), where it exited instead of
    /// starting another copy of the program.
    InitNotCalled {
        /// The program started for the task.
        program: PathBuf,
    },
}

impl Outcome {
    /// Whether the task succeeded: a value, or exit code 0 without one.
    pub fn is_success(&self) -> bool {
        match self {
            Outcome::Value(_) | Outcome::Exited { code: 0 } => true,
            Outcome::Output(output) => output.status.success(),
            _ => false,
        }
    }

    /// A captured command's output (see [`Task::capture_output`](crate::Task::capture_output)).
    pub fn output(&self) -> Option<&CommandOutput> {
        match self {
            Outcome::Output(output) => Some(output),
            _ => None,
        }
    }

    /// The value, if the task returned one.
    pub fn value(&self) -> Option<&Value> {
        match self {
            Outcome::Value(v) => Some(v),
            _ => None,
        }
    }

    /// The value, deserialized into `T` (`None` if there is none or it does not fit).
    pub fn value_as<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        self.value().and_then(|v| T::deserialize(v).ok())
    }

    pub(crate) fn from_exit(exit: Exit) -> Outcome {
        match exit {
            Exit::Code(code) => Outcome::Exited { code },
            Exit::Signal { signal, .. } => Outcome::Killed { signal },
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Value(v) => write!(f, "value {v}"),
            Outcome::TaskError { message } => write!(f, "task error: {message}"),
            Outcome::Output(o) => write!(
                f,
                "{} ({} bytes on stdout, {} on stderr{})",
                o.status,
                o.stdout.len(),
                o.stderr.len(),
                if o.truncated { ", truncated" } else { "" }
            ),
            Outcome::Exited { code } => write!(f, "exited with code {code} without a result"),
            Outcome::Killed { signal } => write!(f, "killed by {signal}"),
            Outcome::DiedMidMessage { exit, received, expected } => {
                write!(f, "{exit} in the middle of a message ({received} of {expected} bytes)")
            }
            Outcome::Lost { reason } => write!(f, "lost: {reason}"),
            Outcome::UnknownFunction { name } => {
                write!(f, "not run: no function is registered as {name:?}")
            }
            Outcome::Cancelled => write!(f, "cancelled before it started"),
            Outcome::InitNotCalled { program } => write!(
                f,
                "not run: {} does not call procyard_procmgr::init() first thing in main (the \
                 process started for the task ran main again instead of the function)",
                program.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_and_accessors() {
        assert!(Outcome::Value(Value::from(3)).is_success());
        assert!(Outcome::Exited { code: 0 }.is_success());
        assert!(!Outcome::Exited { code: 1 }.is_success());
        assert!(!Outcome::TaskError { message: "x".into() }.is_success());
        assert_eq!(Outcome::Value(Value::from(3)).value_as::<u32>(), Some(3));
        assert_eq!(Outcome::Exited { code: 0 }.value_as::<u32>(), None);
        assert_eq!(
            Outcome::from_exit(Exit::Signal { signal: Signal::KILL, core_dumped: false }),
            Outcome::Killed { signal: Signal::KILL }
        );
        assert_eq!(Outcome::from_exit(Exit::Code(4)), Outcome::Exited { code: 4 });
        assert_eq!(Outcome::Killed { signal: Signal::TERM }.to_string(), "killed by SIGTERM");
    }
}
