//! The one error type of procyard-core.

use std::io;
use std::path::PathBuf;

use crate::{Pid, Signal};

/// Everything that can go wrong in procyard-core.
///
/// Each variant names the object it concerns (a program, a path, a pid); the underlying OS
/// error, when there is one, is the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The program could not be started (not found, not executable, …).
    #[error("unable to spawn {program}")]
    Spawn {
        /// The program as given to the builder.
        program: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The working directory for a child could not be entered.
    #[error("unable to spawn {program}: cannot enter working directory {}", cwd.display())]
    SpawnCwd {
        /// The program as given to the builder.
        program: String,
        /// The directory.
        cwd: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A file-system operation on a path failed.
    #[error("unable to {action} {}", path.display())]
    Path {
        /// What was being done, as a verb phrase ("open", "rename", "lock").
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// An operation on a process failed.
    #[error("unable to {action} process {pid}")]
    Process {
        /// What was being done ("wait for", "signal").
        action: &'static str,
        /// The process.
        pid: Pid,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A system call that concerns no path or process failed.
    #[error("unable to {action}")]
    Os {
        /// What was being done.
        action: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The process was already reaped, so its pid may name another process now.
    #[error("process {pid} has already been reaped")]
    AlreadyReaped {
        /// The former pid.
        pid: Pid,
    },
    /// The child was not started in a process group of its own.
    #[error("process {pid} does not lead a process group of its own")]
    NoProcessGroup {
        /// The pid.
        pid: Pid,
    },
    /// A signal name or number could not be parsed.
    #[error("invalid signal {input:?} (expected a name like TERM or SIGTERM, or a number 1-64)")]
    InvalidSignal {
        /// What was given.
        input: String,
    },
    /// A companion program a library needs was not found.
    #[error(
        "{program} not found (looked beside this program and on PATH): install it with \
         `{install}` or set {env_var} to its path"
    )]
    CompanionNotFound {
        /// The program's file name.
        program: &'static str,
        /// The environment variable that names its path.
        env_var: &'static str,
        /// The command that installs it.
        install: &'static str,
    },
    /// The environment variable that names a companion program points at no executable file.
    #[error("{env_var} names {}, which is not an executable file", path.display())]
    CompanionMissing {
        /// The variable.
        env_var: &'static str,
        /// What it names.
        path: PathBuf,
    },
    /// A duration could not be parsed.
    #[error(
        "invalid duration {input:?} (expected a number and a unit: 250ms, 1.5s, 30, 5m, 2h, 3d)"
    )]
    InvalidDuration {
        /// What was given.
        input: String,
    },
    /// A frame announced a length above the maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The maximum in force.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {expected} bytes)")]
    FrameTruncated {
        /// Bytes of the frame (header included) that were needed.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// A frame's payload was not the JSON expected.
    #[error("invalid frame payload")]
    FrameDecode {
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A value could not be serialized.
    #[error("unable to serialize a value")]
    Encode {
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A state file exists but does not hold what was expected.
    #[error("corrupt state file {}", path.display())]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// An operation that needs a single-threaded process was called in a threaded one.
    #[error("{action} needs a single-threaded process, but this one has {threads} threads")]
    NotSingleThreaded {
        /// What was attempted.
        action: &'static str,
        /// Threads counted in /proc/self/task.
        threads: usize,
    },
    /// A deadline passed before the event waited for.
    #[error("timed out waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: &'static str,
    },
    /// A detached process reported that it could not start.
    #[error("detached process failed to start: {message}")]
    DetachFailed {
        /// Its own words.
        message: String,
    },
    /// A signal was refused before any system call because its target could name more than
    /// one process or somebody's init: pid or process group 1 (`kill(-1)` signals every
    /// process the caller may signal; pid 1 is the init of some namespace).
    #[error("refused to send {signal} to {} {pid}: pid 1 and its group are never signalled", if *group { "process group" } else { "process" })]
    RefusedSignalTarget {
        /// The target as recorded.
        pid: Pid,
        /// Whether a process group was to be signalled.
        group: bool,
        /// The signal.
        signal: Signal,
    },
    /// A path that must be a regular file (or a socket) is something else.
    #[error("{} is a {found}, not a {expected}", path.display())]
    WrongFileType {
        /// The path.
        path: PathBuf,
        /// What it must be ("regular file", "socket").
        expected: &'static str,
        /// What it is ("FIFO", "directory", "symbolic link", …).
        found: &'static str,
    },
    /// A file or directory whose content would be acted on belongs to another user.
    #[error("{} belongs to uid {owner}, not to uid {caller} (or root): refusing to use it", path.display())]
    NotOwned {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The caller's effective uid.
        caller: u32,
    },
    /// A file or directory whose content would be acted on can be written by other users.
    #[error("{} is writable by {who} (mode {mode:04o}): refusing to use it", path.display())]
    InsecurePermissions {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// "group" or "others".
        who: &'static str,
    },
    /// Something answers on a socket path we were to bind.
    #[error("{} is in use: another process listens on it", path.display())]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// A signal could not be delivered.
    #[error("unable to send {signal} to process {pid}")]
    Signal {
        /// The target (a group leader when a group was signalled).
        pid: Pid,
        /// The signal.
        signal: Signal,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The OS error number behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Spawn { source, .. }
            | Error::SpawnCwd { source, .. }
            | Error::Path { source, .. }
            | Error::Process { source, .. }
            | Error::Os { source, .. }
            | Error::Signal { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub(crate) fn os(action: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Os { action, source: source.into() }
    }

    pub(crate) fn path(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<io::Error>,
    ) -> Self {
        Error::Path { action, path: path.into(), source: source.into() }
    }
}
