//! Process ids.

use std::fmt;
use std::num::NonZeroI32;

use serde::{Deserialize, Serialize};

/// A process id: a positive integer. Zero and negative numbers (which mean "my group" or
/// "that group" to `kill(2)`) cannot be represented, so no `Pid` can signal a group by
/// accident.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i32", into = "i32")]
pub struct Pid(NonZeroI32);

impl Pid {
    /// Wraps a raw pid; `None` unless it is positive.
    pub const fn from_raw(raw: i32) -> Option<Pid> {
        if raw > 0 {
            match NonZeroI32::new(raw) {
                Some(nz) => Some(Pid(nz)),
                None => None,
            }
        } else {
            None
        }
    }

    /// The raw number.
    pub const fn as_raw(self) -> i32 {
        self.0.get()
    }

    /// This process.
    pub fn current() -> Pid {
        Pid(rustix::process::getpid().as_raw_nonzero())
    }

    /// This process's parent, if it has one visible in this namespace.
    pub fn parent() -> Option<Pid> {
        rustix::process::getppid().map(|p| Pid(p.as_raw_nonzero()))
    }

    pub(crate) fn to_rustix(self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(self.as_raw()).expect("a Pid is always positive")
    }
}

impl TryFrom<i32> for Pid {
    type Error = String;
    fn try_from(raw: i32) -> Result<Self, Self::Error> {
        Pid::from_raw(raw).ok_or_else(|| format!("invalid pid {raw}: must be positive"))
    }
}

impl From<Pid> for i32 {
    fn from(pid: Pid) -> i32 {
        pid.as_raw()
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_zero_and_negative() {
        assert!(Pid::from_raw(0).is_none());
        assert!(Pid::from_raw(-5).is_none());
        assert_eq!(Pid::from_raw(42).map(Pid::as_raw), Some(42));
    }

    #[test]
    fn serde_round_trip_and_refusal() {
        let pid = Pid::from_raw(77).unwrap();
        assert_eq!(serde_json::to_string(&pid).unwrap(), "77");
        assert_eq!(serde_json::from_str::<Pid>("77").unwrap(), pid);
        assert!(serde_json::from_str::<Pid>("0").is_err());
        assert!(serde_json::from_str::<Pid>("-1").is_err());
    }
}
