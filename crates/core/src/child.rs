//! [`Child`]: a spawned process, owned by pid and pidfd.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use crate::{Deadline, Error, Exit, Pid, Result, Signal, Usage, sys};

/// A child process started by [`Command::spawn`](crate::Command::spawn) or
/// [`fork`](crate::fork::fork).
///
/// It holds a pidfd opened right after the spawn, so signals sent through [`Child::signal`]
/// reach exactly this process even after its pid is recycled, and it reaps only its own pid
/// (`waitid(P_PIDFD)`, never `waitpid(-1)`). Register it with mio to learn of its exit without
/// SIGCHLD. Reaping records what the child cost ([`Child::usage`]).
///
/// Dropping a child that was neither waited for nor [detached](Child::detach) kills its
/// process group (or itself) with SIGKILL and reaps it: a safety net, not the main path.
#[derive(Debug)]
pub struct Child {
    pid: Pid,
    pidfd: OwnedFd,
    group: Option<Pid>,
    exit: Option<Exit>,
    usage: Option<Usage>,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

impl Child {
    pub(crate) fn from_spawned(
        pid: Pid,
        group: Option<Pid>,
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    ) -> Result<Child> {
        let pidfd =
            rustix::process::pidfd_open(pid.to_rustix(), rustix::process::PidfdFlags::empty())
                .map_err(|e| Error::Process {
                    action: "open a pidfd for",
                    pid,
                    source: e.into(),
                })?;
        Ok(Child { pid, pidfd, group, exit: None, usage: None, stdin, stdout, stderr })
    }

    /// Takes charge of a child of this process that another process forked for it (a zygote,
    /// with [`fork_sibling`](crate::fork::fork_sibling)), given its pid, as if this process
    /// had forked it. With `new_process_group` it also makes the child the leader of a group
    /// of its own (which the child does too, after [`ForkConfig`](crate::fork::ForkConfig)'s
    /// `new_process_group`: whichever runs first).
    ///
    /// Refused unless `pid` names an unreaped child of this process; so it cannot name a
    /// recycled pid, since only this process reaps its children (through their pidfds).
    pub fn adopt(pid: Pid, new_process_group: bool) -> Result<Child> {
        let failed = |source: std::io::Error| Error::Process { action: "adopt", pid, source };
        let pidfd =
            rustix::process::pidfd_open(pid.to_rustix(), rustix::process::PidfdFlags::empty())
                .map_err(|e| failed(e.into()))?;
        // Reaps nothing (WNOWAIT); fails with ECHILD unless the process is our child.
        let options = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        sys::wait::waitid_pidfd(pidfd.as_fd(), options).map_err(failed)?;
        let group = new_process_group.then_some(pid);
        if new_process_group {
            let _ = rustix::process::setpgid(Some(pid.to_rustix()), Some(pid.to_rustix()));
        }
        Ok(Child {
            pid,
            pidfd,
            group,
            exit: None,
            usage: None,
            stdin: None,
            stdout: None,
            stderr: None,
        })
    }

    /// The process id (stable until the child is reaped).
    pub fn id(&self) -> Pid {
        self.pid
    }

    /// The process group the child leads, if it was given one.
    pub fn process_group(&self) -> Option<Pid> {
        self.group
    }

    /// The pidfd; it becomes readable when the child exits.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The exit, if the child was reaped already.
    pub fn exit(&self) -> Option<Exit> {
        self.exit
    }

    /// What the child cost (max RSS, user and system CPU), once it was reaped by this
    /// `Child` (`None` before, and after [`Child::detach`]).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Takes the parent's end of a [`Stdio::Pipe`](crate::Stdio::Pipe) stdin.
    pub fn take_stdin(&mut self) -> Option<OwnedFd> {
        self.stdin.take()
    }

    /// Takes the parent's end of a [`Stdio::Pipe`](crate::Stdio::Pipe) stdout
    /// (`std::fs::File::from(fd)` makes it a `Read`; [`Child::wait_with_output`] collects both
    /// streams for you).
    pub fn take_stdout(&mut self) -> Option<OwnedFd> {
        self.stdout.take()
    }

    /// Takes the parent's end of a [`Stdio::Pipe`](crate::Stdio::Pipe) stderr.
    pub fn take_stderr(&mut self) -> Option<OwnedFd> {
        self.stderr.take()
    }

    /// Reaps through the pidfd (so only this child, never a recycled pid), keeping the exit
    /// and the kernel's rusage of the child.
    fn reap(&mut self, nohang: bool) -> Result<Option<Exit>> {
        if let Some(exit) = self.exit {
            return Ok(Some(exit));
        }
        let options = libc::WEXITED | if nohang { libc::WNOHANG } else { 0 };
        loop {
            match sys::wait::waitid_pidfd(self.pidfd.as_fd(), options) {
                Ok(Some(waited)) => {
                    if let Some(exit) = Exit::from_child_code(waited.code, waited.status) {
                        self.exit = Some(exit);
                        self.usage = Some(Usage::from_rusage(&waited.usage));
                        self.stdin = None;
                        return Ok(Some(exit));
                    }
                    if nohang {
                        return Ok(None);
                    }
                }
                Ok(None) => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    return Err(Error::Process { action: "wait for", pid: self.pid, source: e });
                }
            }
        }
    }

    /// Whether the child has exited (it may not be reaped yet); never blocks and reaps
    /// nothing: one `waitid(WNOWAIT)` on the pidfd, where reading `/proc/PID/stat` for a
    /// zombie takes several system calls.
    pub fn has_exited(&self) -> Result<bool> {
        if self.exit.is_some() {
            return Ok(true);
        }
        let options = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        loop {
            match sys::wait::waitid_pidfd(self.pidfd.as_fd(), options) {
                Ok(waited) => return Ok(waited.is_some()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    return Err(Error::Process { action: "wait for", pid: self.pid, source: e });
                }
            }
        }
    }

    /// Reaps the child if it has exited; never blocks.
    pub fn try_wait(&mut self) -> Result<Option<Exit>> {
        self.reap(true)
    }

    /// Like [`Child::try_wait`], with what the child cost.
    pub fn try_wait_usage(&mut self) -> Result<Option<(Exit, Usage)>> {
        Ok(self.try_wait()?.map(|exit| (exit, self.usage.unwrap_or_default())))
    }

    /// Like [`Child::wait`], with what the child cost.
    pub fn wait_usage(&mut self) -> Result<(Exit, Usage)> {
        let exit = self.wait()?;
        Ok((exit, self.usage.unwrap_or_default()))
    }

    /// Blocks until the child exits, then reaps it. Stopped children are not "exited".
    pub fn wait(&mut self) -> Result<Exit> {
        loop {
            if let Some(exit) = self.reap(false)? {
                return Ok(exit);
            }
        }
    }

    /// Waits at most `timeout`; `Ok(None)` if the child is still running then.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Exit>> {
        self.wait_deadline(Deadline::after(timeout))
    }

    /// Waits until `deadline`; `Ok(None)` if the child is still running then.
    pub fn wait_deadline(&mut self, deadline: Deadline) -> Result<Option<Exit>> {
        loop {
            if let Some(exit) = self.try_wait()? {
                return Ok(Some(exit));
            }
            if deadline.is_expired() {
                return Ok(None);
            }
            let remaining = deadline.remaining();
            let timeout = rustix::event::Timespec::try_from(remaining)
                .unwrap_or(rustix::event::Timespec { tv_sec: i64::MAX / 2, tv_nsec: 0 });
            let mut fds = [rustix::event::PollFd::new(&self.pidfd, rustix::event::PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(Error::Process { action: "poll", pid: self.pid, source: e.into() });
                }
            }
        }
    }

    /// Sends `signal` to this process (through its pidfd, so never to a recycled pid).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        if self.exit.is_some() {
            return Err(Error::AlreadyReaped { pid: self.pid });
        }
        sys::signal::pidfd_send_signal(self.pidfd.as_fd(), signal.as_raw())
            .map_err(|source| Error::Signal { pid: self.pid, signal, source })
    }

    /// Sends `signal` to the child's whole process group (grandchildren included).
    ///
    /// Refused once the child has been reaped: its group id could then name another group.
    pub fn signal_group(&self, signal: Signal) -> Result<()> {
        let group = self.group.ok_or(Error::NoProcessGroup { pid: self.pid })?;
        if self.exit.is_some() {
            return Err(Error::AlreadyReaped { pid: self.pid });
        }
        crate::signal::kill_process_group(group, signal)
    }

    /// SIGKILLs the process group (or the process if it has no group of its own). The child
    /// still has to be waited for.
    pub fn kill(&self) -> Result<()> {
        if self.group.is_some() {
            self.signal_group(Signal::KILL)
        } else {
            self.signal(Signal::KILL)
        }
    }

    /// Gives up ownership without killing or reaping: the process lives on. Returns its pid.
    pub fn detach(mut self) -> Pid {
        // Mark as finished so Drop leaves the process alone; the pidfd and pipes close.
        self.exit = Some(Exit::Code(0));
        self.pid
    }

    /// Kills the group (or process) with SIGKILL and reaps the child.
    pub fn kill_and_reap(&mut self) -> Result<Exit> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        match self.kill() {
            Ok(()) => {}
            // The group may be gone while the leader is an unreaped zombie.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e),
        }
        self.wait()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.kill_and_reap();
        }
    }
}

impl AsFd for Child {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

crate::event::fd_source!(Child, pidfd);
