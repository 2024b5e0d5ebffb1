//! The [`Command`] builder: program, arguments, environment, working directory, stdio,
//! process group or session, parent-death signal and extra descriptors.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::sys::spawn::{GroupMode, SpawnPlan};
use crate::{Child, Error, Pid, Result, Signal, sys};

/// What a child's standard stream is connected to.
#[derive(Debug)]
#[non_exhaustive]
pub enum Stdio {
    /// The parent's own descriptor.
    Inherit,
    /// `/dev/null`.
    Null,
    /// A new pipe; the parent's end is taken from the [`Child`].
    Pipe,
    /// A file opened for reading (stdin) when the child is spawned.
    Read(PathBuf),
    /// A file created or truncated for writing when the child is spawned.
    Truncate(PathBuf),
    /// A file created or appended to when the child is spawned.
    Append(PathBuf),
    /// An open descriptor, duplicated into the child at each spawn.
    Fd(OwnedFd),
}

/// Whether the child gets a process group or session of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Grouping {
    /// Stay in the parent's process group (signals to "the group" then reach the parent too,
    /// so [`Child::signal_group`] refuses).
    Inherit,
    /// A new process group led by the child (the default).
    #[default]
    NewProcessGroup,
    /// A new session (and so a new process group), detached from the controlling terminal.
    NewSession,
}

/// A builder for child processes.
///
/// It takes the `posix_spawn` (vfork-like) fast path, or, for a parent-death signal (which
/// `posix_spawn` cannot express), the same kind of spawn written in core:
/// `clone(CLONE_VM | CLONE_VFORK)`, as cheap, never a `fork` of this process. Either way the
/// child starts with an empty signal mask and default signal dispositions, in a new process
/// group unless told otherwise, with only its stdio and the descriptors passed by [`Command::pass_fd`] open (everything procyard creates is
/// close-on-exec). Exec failures (missing program, no permission, missing working directory)
/// are returned by [`Command::spawn`] itself.
///
/// ```
/// use procyard_core::{Command, Exit, Stdio};
/// let mut child = Command::shell("exit 7").stdout(Stdio::Null).spawn()?;
/// assert_eq!(child.wait()?, Exit::Code(7));
/// # Ok::<(), procyard_core::Error>(())
/// ```
#[derive(Debug)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    arg0: Option<OsString>,
    env_clear: bool,
    env: BTreeMap<OsString, Option<OsString>>,
    cwd: Option<PathBuf>,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
    grouping: Grouping,
    parent_death_signal: Option<Signal>,
    fds: Vec<(RawFd, OwnedFd)>,
}

impl Command {
    /// A command running `program` (looked up in `PATH` unless it contains a `/`).
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            arg0: None,
            env_clear: false,
            env: BTreeMap::new(),
            cwd: None,
            stdin: Stdio::Inherit,
            stdout: Stdio::Inherit,
            stderr: Stdio::Inherit,
            grouping: Grouping::default(),
            parent_death_signal: None,
            fds: Vec::new(),
        }
    }

    /// `/bin/sh -c script`.
    pub fn shell(script: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        cmd
    }

    /// Appends an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Command {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets `argv[0]` (defaults to the program).
    pub fn arg0(&mut self, arg0: impl AsRef<OsStr>) -> &mut Command {
        self.arg0 = Some(arg0.as_ref().to_owned());
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Command {
        self.env.insert(key.as_ref().to_owned(), Some(value.as_ref().to_owned()));
        self
    }

    /// Removes an environment variable from the child's environment.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Command {
        self.env.insert(key.as_ref().to_owned(), None);
        self
    }

    /// Starts the child from an empty environment (plus what [`Command::env`] sets).
    pub fn env_clear(&mut self) -> &mut Command {
        self.env_clear = true;
        self.env.retain(|_, v| v.is_some());
        self
    }

    /// Sets the working directory.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Command {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Connects stdin.
    pub fn stdin(&mut self, stdio: Stdio) -> &mut Command {
        self.stdin = stdio;
        self
    }

    /// Connects stdout.
    pub fn stdout(&mut self, stdio: Stdio) -> &mut Command {
        self.stdout = stdio;
        self
    }

    /// Connects stderr.
    pub fn stderr(&mut self, stdio: Stdio) -> &mut Command {
        self.stderr = stdio;
        self
    }

    /// Chooses the process group or session of the child.
    pub fn grouping(&mut self, grouping: Grouping) -> &mut Command {
        self.grouping = grouping;
        self
    }

    /// Asks the kernel to send `signal` to the child when the spawning thread exits.
    ///
    /// Note that Linux ties the parent-death signal to the spawning *thread*: the child gets
    /// it when that thread exits, even if the process lives on.
    pub fn parent_death_signal(&mut self, signal: Signal) -> &mut Command {
        self.parent_death_signal = Some(signal);
        self
    }

    /// Passes `fd` to the child as descriptor number `target` (≥ 3). The descriptor moves into
    /// the next spawned child and is closed in the parent right after that spawn, so a pipe's
    /// reader sees end-of-file once the child closes its copy.
    pub fn pass_fd(&mut self, fd: OwnedFd, target: RawFd) -> &mut Command {
        self.fds.retain(|(t, _)| *t != target);
        self.fds.push((target, fd));
        self
    }

    /// The program name, for messages.
    pub fn get_program(&self) -> &OsStr {
        &self.program
    }

    /// Spawns the child.
    pub fn spawn(&mut self) -> Result<Child> {
        let program_name = self.program.to_string_lossy().into_owned();
        let to_cstring = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|_| Error::Spawn {
                program: program_name.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "argument or environment contains a NUL byte",
                ),
            })
        };
        let program = to_cstring(&self.program)?;
        let mut argv = Vec::with_capacity(self.args.len() + 1);
        argv.push(to_cstring(self.arg0.as_deref().unwrap_or(&self.program))?);
        for arg in &self.args {
            argv.push(to_cstring(arg)?);
        }
        let envp = if self.env_clear || !self.env.is_empty() {
            Some(self.build_env(&to_cstring)?)
        } else {
            None
        };
        let cwd = self.cwd.as_deref().map(|c| to_cstring(c.as_os_str())).transpose()?;

        // Descriptors for the child: stdio first, then passed fds. Every source is moved
        // above the highest target so the dup2 sequence cannot clobber a later source.
        let extra = std::mem::take(&mut self.fds);
        let max_target = extra.iter().map(|(t, _)| *t).max().unwrap_or(2).max(2);
        let floor = max_target + 1;
        let mut keep: Vec<OwnedFd> = Vec::new();
        let mut dups: Vec<(RawFd, RawFd)> = Vec::new();
        let mut parent_ends: [Option<OwnedFd>; 3] = [None, None, None];
        for (target, stdio) in [(0, &self.stdin), (1, &self.stdout), (2, &self.stderr)] {
            let child_end = match stdio {
                Stdio::Inherit => None,
                Stdio::Null => Some(open_file(Path::new("/dev/null"), target != 0, false, true)?),
                Stdio::Read(p) => Some(open_file(p, false, false, false)?),
                Stdio::Truncate(p) => Some(open_file(p, true, false, false)?),
                Stdio::Append(p) => Some(open_file(p, true, true, false)?),
                Stdio::Fd(fd) => {
                    Some(fd.try_clone().map_err(|e| Error::os("duplicate a descriptor", e))?)
                }
                Stdio::Pipe => {
                    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                        .map_err(|e| Error::os("create a pipe", e))?;
                    let (child_end, parent_end) =
                        if target == 0 { (read, write) } else { (write, read) };
                    parent_ends[target as usize] = Some(parent_end);
                    Some(child_end)
                }
            };
            if let Some(fd) = child_end {
                let fd = raise(fd, floor)?;
                dups.push((fd.as_raw_fd(), target));
                keep.push(fd);
            }
        }
        for (target, fd) in extra {
            let fd = raise(fd, floor)?;
            dups.push((fd.as_raw_fd(), target));
            keep.push(fd);
        }

        let plan = SpawnPlan {
            search_path: !self.program.as_bytes().contains(&b'/'),
            program: &program,
            argv: &argv,
            envp: envp.as_deref(),
            cwd: cwd.as_deref(),
            dups: &dups,
            group: match self.grouping {
                Grouping::Inherit => GroupMode::Inherit,
                Grouping::NewProcessGroup => GroupMode::NewGroup,
                Grouping::NewSession => GroupMode::NewSession,
            },
            parent_death_signal: self.parent_death_signal.map(Signal::as_raw),
            min_private_fd: floor,
        };
        let spawned = if plan.parent_death_signal.is_some() {
            sys::vfork::vfork_exec(&plan)
        } else {
            sys::spawn::posix_spawn(&plan)
        };
        drop(keep);
        let raw_pid = spawned.map_err(|source| self.spawn_error(program_name, source))?;
        let pid = Pid::from_raw(raw_pid).ok_or_else(|| {
            Error::os("spawn", std::io::Error::other("kernel returned an invalid pid"))
        })?;
        let group = match self.grouping {
            Grouping::Inherit => None,
            _ => Some(pid),
        };
        let [stdin, stdout, stderr] = parent_ends;
        Child::from_spawned(pid, group, stdin, stdout, stderr)
    }

    fn build_env(&self, to_cstring: &dyn Fn(&OsStr) -> Result<CString>) -> Result<Vec<CString>> {
        let mut vars: BTreeMap<OsString, OsString> =
            if self.env_clear { BTreeMap::new() } else { std::env::vars_os().collect() };
        for (k, v) in &self.env {
            match v {
                Some(v) => vars.insert(k.clone(), v.clone()),
                None => vars.remove(k),
            };
        }
        vars.into_iter()
            .map(|(k, v)| {
                let mut kv = k;
                kv.push("=");
                kv.push(v);
                to_cstring(&kv)
            })
            .collect()
    }

    fn spawn_error(&self, program: String, source: std::io::Error) -> Error {
        if let Some(cwd) = &self.cwd {
            let cwd_ok = std::fs::metadata(cwd).map(|m| m.is_dir()).unwrap_or(false)
                && rustix::fs::access(cwd, rustix::fs::Access::EXEC_OK).is_ok();
            if !cwd_ok {
                return Error::SpawnCwd { program, cwd: cwd.clone(), source };
            }
        }
        Error::Spawn { program, source }
    }
}

/// Opens a stdio file close-on-exec, creating it (mode 0666 & umask) when writing.
fn open_file(path: &Path, write: bool, append: bool, is_null: bool) -> Result<OwnedFd> {
    let mut opts = OpenOptions::new();
    if write {
        opts.write(true);
        if !is_null {
            opts.create(true);
            if append {
                opts.append(true)
            } else {
                opts.truncate(true)
            };
        }
    } else {
        opts.read(true);
    }
    opts.custom_flags(libc::O_CLOEXEC);
    let file: File = opts.open(path).map_err(|e| Error::path("open", path, e))?;
    Ok(file.into())
}

/// Moves `fd` to a number ≥ `floor` (close-on-exec) when it is below.
fn raise(fd: OwnedFd, floor: RawFd) -> Result<OwnedFd> {
    if fd.as_raw_fd() >= floor {
        return Ok(fd);
    }
    sys::spawn::dup_above(fd.as_fd(), floor).map_err(|e| Error::os("duplicate a descriptor", e))
}
