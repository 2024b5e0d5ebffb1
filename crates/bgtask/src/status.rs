//! [`Status`]: where a task is in its life, and [`StatusKind`], its name without the details.

use std::fmt;
use std::str::FromStr;

use procyard_core::Signal;
use serde::{Deserialize, Serialize};

use crate::Error;

/// A task's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    /// The task's process runs.
    Running,
    /// Stopped by [`Task::pause`](crate::Task::pause).
    Paused,
    /// The task exited on its own.
    Exited {
        /// Its exit code.
        code: u8,
    },
    /// A signal ended the task.
    Signaled {
        /// The signal that ended it.
        signal: Signal,
    },
    /// The supervisor is gone (its output went with it unless logged).
    Lost,
}

/// The name of a [`Status`], without its details: what a [`Filter`](crate::Filter) selects on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusKind {
    /// [`Status::Running`].
    Running,
    /// [`Status::Paused`].
    Paused,
    /// [`Status::Exited`].
    Exited,
    /// [`Status::Signaled`].
    Signaled,
    /// [`Status::Lost`].
    Lost,
}

impl StatusKind {
    /// Every kind, in the order of a task's life.
    pub const ALL: [StatusKind; 5] = [
        StatusKind::Running,
        StatusKind::Paused,
        StatusKind::Exited,
        StatusKind::Signaled,
        StatusKind::Lost,
    ];

    /// `running`, `paused`, `exited`, `signaled` or `lost`.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusKind::Running => "running",
            StatusKind::Paused => "paused",
            StatusKind::Exited => "exited",
            StatusKind::Signaled => "signaled",
            StatusKind::Lost => "lost",
        }
    }
}

impl fmt::Display for StatusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StatusKind {
    type Err = Error;

    /// Parses a status name; an unknown one is [`Error::UnknownStatus`].
    fn from_str(s: &str) -> Result<StatusKind, Error> {
        StatusKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| Error::UnknownStatus { given: s.to_owned() })
    }
}

impl Status {
    /// Which kind of status this is.
    pub fn kind(&self) -> StatusKind {
        match self {
            Status::Running => StatusKind::Running,
            Status::Paused => StatusKind::Paused,
            Status::Exited { .. } => StatusKind::Exited,
            Status::Signaled { .. } => StatusKind::Signaled,
            Status::Lost => StatusKind::Lost,
        }
    }

    /// The state's name: `running`, `paused`, `exited`, `signaled`, `lost`.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// Whether the task's process is alive (running or paused).
    pub fn is_alive(&self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }

    /// Whether the task ended (exited or signaled).
    pub fn is_finished(&self) -> bool {
        matches!(self, Status::Exited { .. } | Status::Signaled { .. })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Exited { code } => write!(f, "exited({code})"),
            Status::Signaled { signal } => write!(f, "signaled({signal})"),
            other => f.write_str(other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_serde_shape() {
        let s = Status::Signaled { signal: Signal::TERM };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"{"state":"signaled","signal":"SIGTERM"}"#);
        assert_eq!(serde_json::from_str::<Status>(&j).unwrap(), s);
    }

    #[test]
    fn kinds_parse_and_unknown_is_an_error() {
        for kind in StatusKind::ALL {
            assert_eq!(kind.as_str().parse::<StatusKind>().unwrap(), kind);
        }
        assert_eq!(Status::Exited { code: 3 }.kind(), StatusKind::Exited);
        let err = "runing".parse::<StatusKind>().unwrap_err();
        assert!(matches!(err, Error::UnknownStatus { ref given } if given == "runing"), "{err}");
    }
}
