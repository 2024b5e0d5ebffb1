//! How a process ended.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Signal;

/// How a process ended: with an exit code, or killed by a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// `exit(code)`.
    Code(u8),
    /// Killed by a signal.
    Signal {
        /// The signal.
        signal: Signal,
        /// Whether a core file was written.
        core_dumped: bool,
    },
}

impl Exit {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// The exit code, if the process exited.
    pub fn code(self) -> Option<u8> {
        match self {
            Exit::Code(c) => Some(c),
            Exit::Signal { .. } => None,
        }
    }

    /// The signal, if one killed the process.
    pub fn signal(self) -> Option<Signal> {
        match self {
            Exit::Code(_) => None,
            Exit::Signal { signal, .. } => Some(signal),
        }
    }

    /// The conventional shell status: the code, or 128 + the signal number.
    pub fn shell_status(self) -> i32 {
        match self {
            Exit::Code(c) => i32::from(c),
            Exit::Signal { signal, .. } => 128 + signal.as_raw(),
        }
    }

    /// From a `waitid` siginfo's `si_code` and `si_status` (`None`: stopped or continued).
    pub(crate) fn from_child_code(code: i32, status: i32) -> Option<Exit> {
        match code {
            libc::CLD_EXITED => Some(Exit::Code((status & 0xff) as u8)),
            libc::CLD_KILLED | libc::CLD_DUMPED => Some(Exit::Signal {
                signal: Signal::from_raw(status)?,
                core_dumped: code == libc::CLD_DUMPED,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal { signal, core_dumped: false } => write!(f, "killed by {signal}"),
            Exit::Signal { signal, core_dumped: true } => {
                write!(f, "killed by {signal} (core dumped)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_accessors() {
        assert_eq!(Exit::Code(7).to_string(), "exit code 7");
        let killed = Exit::Signal { signal: Signal::KILL, core_dumped: false };
        assert_eq!(killed.to_string(), "killed by SIGKILL");
        let dumped = Exit::Signal { signal: Signal::SEGV, core_dumped: true };
        assert_eq!(dumped.to_string(), "killed by SIGSEGV (core dumped)");
        assert!(Exit::Code(0).success());
        assert!(!killed.success());
        assert_eq!(killed.shell_status(), 137);
        assert_eq!(Exit::Code(7).code(), Some(7));
        assert_eq!(killed.signal(), Some(Signal::KILL));
    }

    #[test]
    fn serde_shape() {
        assert_eq!(serde_json::to_string(&Exit::Code(3)).unwrap(), r#"{"code":3}"#);
        let killed = Exit::Signal { signal: Signal::TERM, core_dumped: false };
        let json = serde_json::to_string(&killed).unwrap();
        assert_eq!(json, r#"{"signal":{"signal":"SIGTERM","core_dumped":false}}"#);
        assert_eq!(serde_json::from_str::<Exit>(&json).unwrap(), killed);
    }
}
