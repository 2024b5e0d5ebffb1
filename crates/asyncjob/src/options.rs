//! [`AsyncJobOptions`]: the builder of an [`AsyncJob`].

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{AsyncJob, Error, Result};

/// What the job runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Program {
    /// A program and its arguments (the program is looked up in `PATH`).
    Argv(Vec<OsString>),
    /// A `/bin/sh -c` script.
    Shell(OsString),
}

/// Everything the monitor needs, with every path absolute.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JobSpec {
    pub state: Option<PathBuf>,
    pub program: Option<Program>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    pub append: bool,
    pub env: Vec<(OsString, Option<OsString>)>,
    pub cwd: PathBuf,
    pub timeout: Option<Duration>,
    pub grace: Duration,
    /// The binary that hosts the monitor when the caller is multi-threaded.
    pub monitor_program: Option<PathBuf>,
}

impl JobSpec {
    /// The command as text, for the state file.
    pub fn command_words(&self) -> Vec<String> {
        match &self.program {
            Some(Program::Argv(argv)) => {
                argv.iter().map(|a| a.to_string_lossy().into_owned()).collect()
            }
            Some(Program::Shell(script)) => {
                vec!["/bin/sh".into(), "-c".into(), script.to_string_lossy().into_owned()]
            }
            None => Vec::new(),
        }
    }
}

/// Options for an [`AsyncJob`]: the state file, the command, its output files, environment,
/// working directory and timeout.
///
/// Relative paths are resolved against the working directory of the process that calls
/// [`AsyncJobOptions::build`], before anything forks.
///
/// ```
/// use std::time::Duration;
/// let job = procyard_asyncjob::AsyncJob::options()
///     .state_file("/tmp/procyard-doc-example.state")
///     .command(["sleep", "300"])
///     .stdout("/tmp/procyard-doc-example.out")
///     .env("GREETING", "hello")
///     .timeout(Duration::from_secs(600))
///     .build()?;
/// assert_eq!(job.state_file().unwrap().to_str(), Some("/tmp/procyard-doc-example.state"));
/// # Ok::<(), procyard_asyncjob::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct AsyncJobOptions {
    state: Option<PathBuf>,
    program: Option<Program>,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
    append: bool,
    env: Vec<(OsString, Option<OsString>)>,
    cwd: Option<PathBuf>,
    timeout: Option<Duration>,
    grace: Option<Duration>,
    monitor_program: Option<PathBuf>,
}

/// The default time between TERM and KILL when a timeout stops a job.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

impl AsyncJobOptions {
    /// Options with nothing set (no state file, no command).
    pub fn new() -> AsyncJobOptions {
        AsyncJobOptions::default()
    }

    /// The state file. Without one nothing is persisted: `check` says absent and `kill` and
    /// `reap` refuse with [`Error::NoStateFile`].
    pub fn state_file(mut self, path: impl AsRef<Path>) -> Self {
        self.state = Some(path.as_ref().to_owned());
        self
    }

    /// Runs `argv[0]` (looked up in `PATH`) with the rest as arguments.
    pub fn command<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.program = Some(Program::Argv(argv.into_iter().map(|a| a.as_ref().into()).collect()));
        self
    }

    /// Runs `/bin/sh -c script`.
    pub fn shell(mut self, script: impl AsRef<OsStr>) -> Self {
        self.program = Some(Program::Shell(script.as_ref().to_owned()));
        self
    }

    /// The job's standard output file (default `/dev/null`).
    pub fn stdout(mut self, path: impl AsRef<Path>) -> Self {
        self.stdout = Some(path.as_ref().to_owned());
        self
    }

    /// The job's standard error file (default `/dev/null`).
    pub fn stderr(mut self, path: impl AsRef<Path>) -> Self {
        self.stderr = Some(path.as_ref().to_owned());
        self
    }

    /// Appends to the output files instead of truncating them (default: truncate).
    pub fn append_output(mut self, append: bool) -> Self {
        self.append = append;
        self
    }

    /// Sets an environment variable for the job (on top of the caller's environment).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes an environment variable from the job's environment.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// The job's working directory (default: the caller's).
    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Stops the job after `timeout`: SIGTERM to its process group, then SIGKILL after the
    /// grace period.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The time between SIGTERM and SIGKILL when the timeout fires (default 5 s).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// The `procyard-asyncjob` binary that hosts the monitor when [`AsyncJob::start`] is
    /// called from a multi-threaded process (where forking is unsound). Default:
    /// `$PROCYARD_ASYNCJOB_BIN`, else `procyard-asyncjob` beside this program, in the directory
    /// above it or on `PATH`, else this program if its `main` called
    /// [`run_if_monitor`](crate::run_if_monitor) (see [`AsyncJob::start`]).
    pub fn monitor_program(mut self, path: impl AsRef<Path>) -> Self {
        self.monitor_program = Some(path.as_ref().to_owned());
        self
    }

    /// Checks the options and resolves every relative path against the caller's working
    /// directory. A command is needed only to [`start`](AsyncJob::start) the job; `check`,
    /// `kill`, `reap` and `wait` need only the state file.
    pub fn build(self) -> Result<AsyncJob> {
        let program = match self.program {
            Some(Program::Argv(argv)) if argv.is_empty() => return Err(Error::NoCommand),
            program => program,
        };
        let cwd = match self.cwd {
            Some(dir) => absolute(&dir)?,
            None => std::env::current_dir()
                .map_err(|source| Error::ResolvePath { path: PathBuf::from("."), source })?,
        };
        let spec = JobSpec {
            state: self.state.as_deref().map(absolute).transpose()?,
            program,
            stdout: self.stdout.as_deref().map(absolute).transpose()?,
            stderr: self.stderr.as_deref().map(absolute).transpose()?,
            append: self.append,
            env: self.env,
            cwd,
            timeout: self.timeout,
            grace: self.grace.unwrap_or(DEFAULT_GRACE),
            monitor_program: self.monitor_program,
        };
        Ok(AsyncJob::from_spec(spec))
    }
}

/// `path` made absolute against the current directory (without resolving symlinks).
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|source| Error::ResolvePath { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_become_absolute() {
        let job = AsyncJobOptions::new()
            .state_file("state")
            .stdout("out")
            .cwd("sub")
            .command(["true"])
            .build()
            .unwrap();
        let here = std::env::current_dir().unwrap();
        assert_eq!(job.spec().state.as_deref(), Some(here.join("state").as_path()));
        assert_eq!(job.spec().stdout.as_deref(), Some(here.join("out").as_path()));
        assert_eq!(job.spec().cwd, here.join("sub"));
    }

    #[test]
    fn a_command_is_required() {
        let job = AsyncJobOptions::new().build().unwrap();
        assert!(matches!(job.start(), Err(Error::NoCommand)));
        let empty: [&str; 0] = [];
        assert!(matches!(AsyncJobOptions::new().command(empty).build(), Err(Error::NoCommand)));
    }
}
