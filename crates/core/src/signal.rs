//! Signals: the [`Signal`] type, and event sources that deliver signals to a mio loop.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::str::FromStr;

use mio::event::Source;
use mio::{Interest, Registry, Token};
use serde::{Deserialize, Serialize};

use crate::{Error, Pid, Result, sys};

/// A signal number, 1 to 64. Parses from `TERM`, `SIGTERM`, `term` or `15`; displays as
/// `SIGTERM` (or `SIGRTMIN+n` for real-time signals).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Signal(i32);

const NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// The first real-time signal number as the kernel counts it (glibc reserves 32 and 33).
const KERNEL_SIGRTMIN: i32 = 32;
const MAX_SIGNAL: i32 = 64;

impl Signal {
    /// SIGHUP.
    pub const HUP: Signal = Signal(libc::SIGHUP);
    /// SIGINT.
    pub const INT: Signal = Signal(libc::SIGINT);
    /// SIGQUIT.
    pub const QUIT: Signal = Signal(libc::SIGQUIT);
    /// SIGKILL.
    pub const KILL: Signal = Signal(libc::SIGKILL);
    /// SIGUSR1.
    pub const USR1: Signal = Signal(libc::SIGUSR1);
    /// SIGUSR2.
    pub const USR2: Signal = Signal(libc::SIGUSR2);
    /// SIGPIPE.
    pub const PIPE: Signal = Signal(libc::SIGPIPE);
    /// SIGALRM.
    pub const ALRM: Signal = Signal(libc::SIGALRM);
    /// SIGTERM.
    pub const TERM: Signal = Signal(libc::SIGTERM);
    /// SIGCHLD.
    pub const CHLD: Signal = Signal(libc::SIGCHLD);
    /// SIGCONT.
    pub const CONT: Signal = Signal(libc::SIGCONT);
    /// SIGSTOP.
    pub const STOP: Signal = Signal(libc::SIGSTOP);
    /// SIGSEGV.
    pub const SEGV: Signal = Signal(libc::SIGSEGV);
    /// SIGABRT.
    pub const ABRT: Signal = Signal(libc::SIGABRT);

    /// Wraps a signal number; `None` outside 1..=64.
    pub const fn from_raw(raw: i32) -> Option<Signal> {
        if raw >= 1 && raw <= MAX_SIGNAL { Some(Signal(raw)) } else { None }
    }

    /// The number.
    pub const fn as_raw(self) -> i32 {
        self.0
    }

    /// The short name without `SIG` (`TERM`), or `None` for an unnamed number.
    pub fn short_name(self) -> Option<&'static str> {
        NAMES.iter().find(|(_, n)| *n == self.0).map(|(name, _)| *name)
    }
}

/// Sends `signal` to the process `pid` named by a record (a state file, a lease, a pid file).
///
/// This is the one checked path for signalling by a recorded pid: pid 1 (somebody's init, in
/// any pid namespace) is refused with [`Error::RefusedSignalTarget`] before any system call.
/// The caller is still responsible for checking that the pid names the process it means
/// ([`ProcessIdentity`](crate::ProcessIdentity)); a [`Child`](crate::Child) you hold signals
/// through its pidfd instead.
pub fn kill_process(pid: Pid, signal: Signal) -> Result<()> {
    let target = checked_target(pid, false, signal)?;
    sys::signal::kill(target, signal.as_raw()).map_err(|source| Error::Signal {
        pid,
        signal,
        source,
    })
}

/// Sends `signal` to the process group led by `group` (grandchildren included).
///
/// Refuses group 1 with [`Error::RefusedSignalTarget`]: `kill(-1, …)` would signal every process
/// the caller may signal. Check first that `group` still leads the group you mean.
pub fn kill_process_group(group: Pid, signal: Signal) -> Result<()> {
    let target = checked_target(group, true, signal)?;
    sys::signal::kill(-target, signal.as_raw()).map_err(|source| Error::Signal {
        pid: group,
        signal,
        source,
    })
}

/// The raw target of a signal call, or the refusal: a [`Pid`] is never zero or negative, and
/// this refuses 1, so no call here can become `kill(0)`, `kill(-1)` or a signal to an init.
fn checked_target(pid: Pid, group: bool, signal: Signal) -> Result<i32> {
    let raw = pid.as_raw();
    if raw <= 1 {
        return Err(Error::RefusedSignalTarget { pid, group, signal });
    }
    Ok(raw)
}

impl FromStr for Signal {
    type Err = Error;
    fn from_str(input: &str) -> Result<Signal> {
        let invalid = || Error::InvalidSignal { input: input.to_owned() };
        let trimmed = input.trim();
        if let Ok(n) = trimmed.parse::<i32>() {
            return Signal::from_raw(n).ok_or_else(invalid);
        }
        let upper = trimmed.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some((_, n)) = NAMES.iter().find(|(name, _)| *name == bare) {
            return Ok(Signal(*n));
        }
        if let Some(rest) = bare.strip_prefix("RTMIN+") {
            let offset: i32 = rest.parse().map_err(|_| invalid())?;
            return Signal::from_raw(KERNEL_SIGRTMIN + offset).ok_or_else(invalid);
        }
        if bare == "RTMIN" {
            return Ok(Signal(KERNEL_SIGRTMIN));
        }
        Err(invalid())
    }
}

impl TryFrom<String> for Signal {
    type Error = Error;
    fn try_from(s: String) -> Result<Signal> {
        s.parse()
    }
}

impl From<Signal> for String {
    fn from(sig: Signal) -> String {
        sig.to_string()
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.short_name() {
            Some(name) => write!(f, "SIG{name}"),
            None if self.0 >= KERNEL_SIGRTMIN => write!(f, "SIGRTMIN+{}", self.0 - KERNEL_SIGRTMIN),
            None => write!(f, "signal {}", self.0),
        }
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Resets the disposition of `signal` to its default action in this process.
pub fn restore_default(signal: Signal) -> Result<()> {
    sys::signal::set_default_disposition(signal.0).map_err(|e| Error::os("restore a signal", e))
}

/// A mio source that delivers signals through signal-hook's self-pipe, for libraries.
///
/// Creating one installs a process-wide handler for the given signals (chained with any other
/// signal-hook handler); dropping it unregisters the handler. Use it only when the
/// application asked its library to handle signals.
pub struct SignalSource {
    inner: signal_hook_mio::v1_0::Signals,
}

impl SignalSource {
    /// Starts catching `signals`.
    pub fn new(signals: &[Signal]) -> Result<SignalSource> {
        let raw: Vec<i32> = signals.iter().map(|s| s.0).collect();
        let inner = signal_hook_mio::v1_0::Signals::new(raw)
            .map_err(|e| Error::os("install signal handlers", e))?;
        Ok(SignalSource { inner })
    }

    /// Drains and returns the signals that arrived since the last call.
    pub fn pending(&mut self) -> Vec<Signal> {
        self.inner.pending().filter_map(Signal::from_raw).collect()
    }
}

impl Source for SignalSource {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.inner.register(registry, token, interests)
    }
    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.inner.reregister(registry, token, interests)
    }
    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.inner.deregister(registry)
    }
}

/// A signalfd-backed mio source, for binaries that own `main`.
///
/// `SignalFd::new` blocks the signals in the calling thread, so create it in `main` before
/// starting any thread (threads inherit the mask) — otherwise another thread may take the
/// signal the ordinary way. Children spawned by procyard-core reset their mask. Dropping it
/// unblocks the signals again.
pub struct SignalFd {
    fd: OwnedFd,
    signals: Vec<i32>,
}

impl SignalFd {
    /// Blocks `signals` in this thread and returns a descriptor that reports them.
    pub fn new(signals: &[Signal]) -> Result<SignalFd> {
        let raw: Vec<i32> = signals.iter().map(|s| s.0).collect();
        sys::signal::block_in_thread(&raw).map_err(|e| Error::os("block signals", e))?;
        let fd = sys::signal::signalfd(&raw).map_err(|e| Error::os("create a signalfd", e))?;
        Ok(SignalFd { fd, signals: raw })
    }

    /// Reads one pending signal; `None` when none is pending (the fd is non-blocking).
    pub fn read(&self) -> Result<Option<Signal>> {
        let sig = sys::signal::signalfd_read(self.fd.as_fd())
            .map_err(|e| Error::os("read a signalfd", e))?;
        Ok(sig.and_then(Signal::from_raw))
    }

    /// Drains every pending signal.
    pub fn pending(&self) -> Result<Vec<Signal>> {
        let mut out = Vec::new();
        while let Some(sig) = self.read()? {
            out.push(sig);
        }
        Ok(out)
    }
}

impl Drop for SignalFd {
    fn drop(&mut self) {
        let _ = sys::signal::unblock_in_thread(&self.signals);
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

crate::event::fd_source!(SignalFd, fd);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_hardening_pid1_and_group1_are_refused() {
        // Signal 0 would only probe, but the refusal must come before any system call.
        let init = Pid::from_raw(1).unwrap();
        for result in [kill_process(init, Signal::TERM), kill_process_group(init, Signal::TERM)] {
            let err = result.unwrap_err();
            assert!(matches!(err, Error::RefusedSignalTarget { .. }), "{err}");
        }
        // Our own process is a valid target (SIGCONT is harmless).
        kill_process(Pid::current(), Signal::CONT).unwrap();
    }

    #[test]
    fn parses_every_spelling() {
        for s in ["TERM", "SIGTERM", "term", "sigterm", "15", " 15 "] {
            assert_eq!(s.parse::<Signal>().unwrap(), Signal::TERM, "{s}");
        }
        assert_eq!("KILL".parse::<Signal>().unwrap().as_raw(), 9);
        assert_eq!("RTMIN+2".parse::<Signal>().unwrap().as_raw(), 34);
    }

    #[test]
    fn refuses_nonsense() {
        for s in ["", "0", "65", "-9", "TERMINATE", "SIG", "RTMIN+99"] {
            let err = s.parse::<Signal>().unwrap_err();
            assert!(matches!(err, Error::InvalidSignal { .. }), "{s}");
        }
    }

    #[test]
    fn displays_names() {
        assert_eq!(Signal::KILL.to_string(), "SIGKILL");
        assert_eq!(Signal::from_raw(40).unwrap().to_string(), "SIGRTMIN+8");
        assert_eq!(serde_json::to_string(&Signal::HUP).unwrap(), "\"SIGHUP\"");
        assert_eq!(serde_json::from_str::<Signal>("\"INT\"").unwrap(), Signal::INT);
    }

    #[test]
    fn every_name_round_trips() {
        for (_, n) in NAMES {
            let sig = Signal::from_raw(*n).unwrap();
            assert_eq!(sig.to_string().parse::<Signal>().unwrap(), sig);
        }
    }
}
