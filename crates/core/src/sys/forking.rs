//! `fork` exposed soundly, and `daemonize` with a status pipe (re-exported as
//! [`procyard_core::fork`](crate::fork)).
//!
//! Forking without exec is sound only when the process has one thread (a lock held by another
//! thread at the fork would stay locked forever in the child). [`fork`] and [`daemonize`] check
//! that at run time through `/proc/self/task`; [`fork_unchecked`] is the `unsafe` escape hatch
//! whose contract says what the child may do.

use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::sys::fork::ForkSide;
use crate::{Child, Error, Pid, Result, Signal, frame, sys};

/// Options for [`fork`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkConfig {
    /// Put the child in a new process group it leads (so [`Child::signal_group`] works).
    pub new_process_group: bool,
    /// Signal the child receives when the forking thread dies.
    pub parent_death_signal: Option<Signal>,
}

/// Which side of a [`fork`] this is.
#[derive(Debug)]
pub enum Forked {
    /// The parent, holding the new child.
    Parent(Child),
    /// The child. It should end with [`exit_immediately`], not by returning from `main`
    /// (which would run the parent's destructors and flush its buffers a second time).
    Child,
}

/// The number of threads in this process.
///
/// One `stat` of `/proc/self/task`, whose link count procfs reports as 2 plus the number of
/// threads (the check Chromium's sandbox relies on); a read of `/proc/self/stat` where that
/// does not give a plausible answer. Both come from the same kernel counter. Every [`fork`]
/// asks, so it must be cheap.
pub fn thread_count() -> Result<usize> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata("/proc/self/task")
        && let Some(threads) = meta.nlink().checked_sub(2)
        && threads >= 1
    {
        return Ok(usize::try_from(threads).unwrap_or(usize::MAX));
    }
    let stat = crate::ProcStat::read(Pid::current())?.ok_or_else(|| {
        Error::path("read", "/proc/self/stat", std::io::Error::from(std::io::ErrorKind::NotFound))
    })?;
    Ok(stat.num_threads as usize)
}

fn ensure_single_threaded(action: &'static str) -> Result<()> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(Error::NotSingleThreaded { action, threads });
    }
    Ok(())
}

/// Forks the calling process, which must be single-threaded (checked; otherwise
/// [`Error::NotSingleThreaded`]).
pub fn fork(config: ForkConfig) -> Result<Forked> {
    ensure_single_threaded("fork")?;
    // SAFETY: the process has exactly one thread (the calling one): no other thread can hold a
    // lock at the fork, and none can be started concurrently since only this thread runs.
    unsafe { fork_unchecked(config) }
}

/// Forks without checking the thread count.
///
/// # Safety
/// Either the process has one thread, or the child calls only async-signal-safe functions
/// until it execs or calls [`exit_immediately`]: any lock (the allocator's, stdio's, a
/// `Mutex`) held by another thread at the fork stays locked forever in the child.
pub unsafe fn fork_unchecked(config: ForkConfig) -> Result<Forked> {
    let parent = Pid::current();
    // SAFETY: forwarded from this function's contract.
    let side = unsafe { sys::fork::fork() }.map_err(|e| Error::os("fork", e))?;
    match side {
        ForkSide::Child => {
            set_up_child(&config, Some(parent));
            Ok(Forked::Child)
        }
        ForkSide::Parent(raw) => {
            let pid = Pid::from_raw(raw)
                .ok_or_else(|| Error::os("fork", std::io::Error::other("invalid pid")))?;
            let group = if config.new_process_group {
                // Both sides set the group, so whichever runs first wins the race.
                let _ = rustix::process::setpgid(Some(pid.to_rustix()), Some(pid.to_rustix()));
                Some(pid)
            } else {
                None
            };
            Ok(Forked::Parent(Child::from_spawned(pid, group, None, None, None)?))
        }
    }
}

/// Which side of a [`fork_sibling`] this is.
#[derive(Debug)]
pub enum ForkedSibling {
    /// The caller, given the new process's pid. The process is its parent's child, which
    /// owns it from [`Child::adopt`] on.
    Forker(Pid),
    /// The new process. It should end with [`exit_immediately`], as after [`fork`].
    Child,
}

/// Forks a process that is the calling process's **parent's** child (`clone3` with
/// `CLONE_PARENT`): for a zygote, a small process forked early, which forks the processes its
/// parent asks for (each fork then copies the zygote's few pages, not the parent's), while
/// the parent owns them (waits for them, signals them) after [`Child::adopt`]. The calling
/// process must be single-threaded (checked; otherwise [`Error::NotSingleThreaded`]).
///
/// It differs from [`fork`] in two ways: no `pthread_atfork` handler runs (as with glibc's
/// `_Fork`), and the child's parent-death signal, when asked for, follows its new parent.
/// Linux with glibc only (`clone3`, `PR_GET_TID_ADDRESS`); an error elsewhere, or while the
/// calling thread holds a robust mutex.
pub fn fork_sibling(config: ForkConfig) -> Result<ForkedSibling> {
    ensure_single_threaded("fork")?;
    let parent = Pid::parent();
    // SAFETY: the process has exactly one thread (checked above), as for `fork`.
    let side = unsafe { sys::fork::fork_sibling() }.map_err(|e| Error::os("fork", e))?;
    match side {
        ForkSide::Child => {
            set_up_child(&config, parent);
            Ok(ForkedSibling::Child)
        }
        ForkSide::Parent(raw) => Pid::from_raw(raw)
            .map(ForkedSibling::Forker)
            .ok_or_else(|| Error::os("fork", std::io::Error::other("invalid pid"))),
    }
}

/// In a forked child: its own process group and its parent-death signal as `config` asks
/// (raised at once when `parent`, the parent it was forked for, is no longer its parent).
/// Async-signal-safe: system calls only.
fn set_up_child(config: &ForkConfig, parent: Option<Pid>) {
    if config.new_process_group {
        let _ = rustix::process::setpgid(None, None);
    }
    if let Some(sig) = config.parent_death_signal {
        let _ = sys::fork::set_parent_death_signal(sig.as_raw());
        if Pid::parent() != parent {
            let _ = sys::signal::raise_self(sig.as_raw());
        }
    }
}

/// Ends the process at once: no destructors, no atexit handlers, no stdio flush.
pub fn exit_immediately(code: i32) -> ! {
    sys::fork::exit_immediately(code)
}

/// Sets the signal this process gets when the thread that created it dies.
pub fn set_parent_death_signal(signal: Signal) -> Result<()> {
    sys::fork::set_parent_death_signal(signal.as_raw())
        .map_err(|e| Error::os("set the parent-death signal", e))
}

/// Options for [`daemonize`].
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// `chdir("/")` in the daemon, so it holds no mount busy (default true).
    pub chdir_root: bool,
    /// Connect stdin, stdout and stderr to `/dev/null` (default true).
    pub null_stdio: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig { chdir_root: true, null_stdio: true }
    }
}

/// Which side of a [`daemonize`] this is.
#[derive(Debug)]
pub enum Daemonized {
    /// The caller: the daemon reported that it started, with this pid.
    Parent(Pid),
    /// The daemon: report through the [`DaemonStatus`] whether it started.
    Daemon(DaemonStatus),
}

#[derive(Serialize, Deserialize)]
enum Report {
    Started { pid: Pid },
    Failed { message: String },
}

/// The daemon's end of the status pipe (close-on-exec, so an exec'd program does not hold it).
#[derive(Debug)]
pub struct DaemonStatus {
    fd: OwnedFd,
}

impl DaemonStatus {
    /// Tells the caller of [`daemonize`] that the daemon started.
    pub fn ready(self) -> Result<()> {
        self.send(&Report::Started { pid: Pid::current() })
    }

    /// Tells the caller of [`daemonize`] that the daemon could not start, and why.
    pub fn fail(self, message: &str) -> Result<()> {
        self.send(&Report::Failed { message: message.to_owned() })
    }

    fn send(self, report: &Report) -> Result<()> {
        let mut file = std::fs::File::from(self.fd);
        frame::write_frame(&mut file, report)
            .map_err(|e| Error::os("write the daemon status pipe", e))
    }
}

/// Detaches a daemon: fork, `setsid`, fork again (so the daemon is no session leader and is
/// adopted by init or the nearest subreaper), then optionally `chdir("/")` and stdio to
/// `/dev/null`. The caller returns only once the daemon reported through its
/// [`DaemonStatus`] (or died without reporting, which is an error); the intermediate process is
/// reaped by pid. The calling process must be single-threaded (checked).
pub fn daemonize(config: &DaemonConfig) -> Result<Daemonized> {
    ensure_single_threaded("daemonize")?;
    let (read_end, write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::os("create a status pipe", e))?;
    // SAFETY: the process is single-threaded (checked above).
    let side = unsafe { sys::fork::fork() }.map_err(|e| Error::os("fork", e))?;
    match side {
        ForkSide::Parent(raw) => {
            drop(write_end);
            if let Some(pid) = rustix::process::Pid::from_raw(raw) {
                while let Err(rustix::io::Errno::INTR) =
                    rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())
                {
                }
            }
            let mut file = std::fs::File::from(read_end);
            match frame::read_frame::<_, Report>(&mut file) {
                Ok(Some(Report::Started { pid })) => Ok(Daemonized::Parent(pid)),
                Ok(Some(Report::Failed { message })) => Err(Error::DetachFailed { message }),
                Ok(None) | Err(_) => Err(Error::DetachFailed {
                    message: "the detached process exited before reporting".into(),
                }),
            }
        }
        ForkSide::Child => {
            drop(read_end);
            let status = DaemonStatus { fd: write_end };
            if let Err(e) = rustix::process::setsid() {
                let _ = status.fail(&format!("setsid failed: {e}"));
                exit_immediately(1);
            }
            // SAFETY: still single-threaded: we are the only thread of the forked child.
            match unsafe { sys::fork::fork() } {
                Err(e) => {
                    let _ = status.fail(&format!("second fork failed: {e}"));
                    exit_immediately(1);
                }
                Ok(ForkSide::Parent(_)) => exit_immediately(0),
                Ok(ForkSide::Child) => {}
            }
            if config.chdir_root {
                let _ = std::env::set_current_dir("/");
            }
            if config.null_stdio
                && let Err(e) = null_stdio()
            {
                let _ = status.fail(&format!("cannot redirect stdio to /dev/null: {e}"));
                exit_immediately(1);
            }
            Ok(Daemonized::Daemon(status))
        }
    }
}

fn null_stdio() -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&null)?;
    Ok(())
}
