//! The zygote of a worker that forks a process per function job (`Config::fork_per_job`): a
//! small process that the worker forks first thing, before it grows (no queue, no buffers, one
//! thread), and that forks each job's child on the worker's order, the job already in its
//! memory.
//!
//! Why: a fork copies the page-table entries of every resident page of the process that
//! forks and write-protects them (each page either side writes afterwards is a fault), and
//! the child's exit unmaps them all again. The worker's resident pages grow with its queue (a
//! burst of 10,000 jobs took it from about 200 to 860 KiB); the zygote's stay those of the
//! program at `init`. And the forks run beside the worker's loop, on another core, instead of
//! inside it.
//!
//! The children are the worker's, not the zygote's (core's `fork_sibling`: `clone3` with
//! `CLONE_PARENT`): the worker adopts each once told its pid, and waits for it, times it out
//! and signals it as a child it forked itself. Each still runs one job in a fresh process,
//! leads its own process group, dies with the worker (parent-death signal), and reports into
//! the shared report pipe like any function child.
//!
//! Its two pipes, both blocking on the zygote's side: orders (worker → zygote), a frame each:
//! `u32` length, `u64` child id, the job message; births (zygote → worker), [`BIRTH`] bytes
//! each: the `u64` child id, then the `i32` pid, or minus the `errno` of a failed fork. When the
//! zygote dies (end of file on births), the worker fails the jobs it ordered and that were not
//! born, and forks the next ones itself.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use procyard_core::event::retry_interrupted;
use procyard_core::fork::{ForkConfig, ForkedSibling};
use procyard_core::mio::unix::SourceFd;
use procyard_core::mio::{Interest, Token};
use procyard_core::{Child, Exit, Forked, Pid, Signal};

use super::job::{call, lookup};
use super::process::{raw, write_all, write_all_vectored, write_report};
use super::shell::{FIRST_JOB, Shell, TOKENS_PER_JOB};
use super::state::{ChildId, Event};
use crate::job::ErasedFn;
use crate::wire::WireError;

/// Bytes of one birth: child id, pid (or minus an `errno`).
pub(super) const BIRTH: usize = 12;
/// The zygote's order buffer (it grows for a larger job, once).
const ORDERS: usize = 16 * 1024;

/// The worker's handle on its zygote.
#[derive(Debug)]
pub(super) struct Zygote {
    /// The zygote process (killed and reaped on drop).
    process: Child,
    /// Orders, blocking: the zygote reads them as they come.
    orders: OwnedFd,
    /// Births, non-blocking (watched by the worker's loop).
    births: OwnedFd,
}

/// The zygote's ends of its pipes.
pub(super) struct Ends {
    orders: OwnedFd,
    births: OwnedFd,
}

/// Which side of [`fork`] this is.
pub(super) enum Side {
    Worker(Zygote),
    Zygote(Ends),
}

/// Forks the zygote (the worker must still be single-threaded: checked).
pub(super) fn fork() -> io::Result<Side> {
    let flags = rustix::pipe::PipeFlags::CLOEXEC;
    let (orders_read, orders_write) = rustix::pipe::pipe_with(flags)?;
    let (births_read, births_write) = rustix::pipe::pipe_with(flags)?;
    let config = ForkConfig { new_process_group: false, parent_death_signal: Some(Signal::KILL) };
    match procyard_core::fork(config).map_err(io::Error::other)? {
        Forked::Parent(process) => {
            rustix::io::ioctl_fionbio(&births_read, true)?;
            Ok(Side::Worker(Zygote { process, orders: orders_write, births: births_read }))
        }
        Forked::Child => Ok(Side::Zygote(Ends { orders: orders_read, births: births_write })),
    }
}

impl Zygote {
    /// The births pipe, to watch.
    pub(super) fn births(&self) -> &OwnedFd {
        &self.births
    }

    /// Orders a child `id` for the job `message`; false if the zygote is gone.
    pub(super) fn order(&self, id: ChildId, message: &[u8]) -> bool {
        let Ok(len) = u32::try_from(8 + message.len()) else { return false };
        let mut header = [0u8; 12];
        header[..4].copy_from_slice(&len.to_be_bytes());
        header[4..].copy_from_slice(&(id as u64).to_be_bytes());
        write_all_vectored(&self.orders, &header, message)
    }

    /// Reads the births that arrived into `out` (the child's id, then its pid or minus an
    /// `errno`); false once the zygote is gone (end of file, or an error).
    pub(super) fn read_births(&self, out: &mut Vec<(ChildId, i32)>) -> bool {
        read_births(&self.births, out)
    }
}

/// Reads the non-blocking births pipe until it is empty: false at its end of file (or an
/// error).
///
/// Never stops at a short read. The zygote's last births and its death (the pipe's last
/// writer closing) can come before the worker's read: one read then returns the births, and
/// the end of file raises no further readiness edge (it happened before the read). Stopping
/// there left the jobs ordered and not born waiting forever (the zygote SIGKILLed amid a
/// burst: "future N not set"). The read that says `EAGAIN` costs the worker one syscall per
/// wake-up, on no child's pages: the zygote forks the children, not the worker.
fn read_births(births: &OwnedFd, out: &mut Vec<(ChildId, i32)>) -> bool {
    // A multiple of BIRTH: births are written whole (below PIPE_BUF), so reads never split
    // one.
    let mut buf = [0u8; BIRTH * 64];
    loop {
        let read = retry_interrupted(|| rustix::io::read(births, &mut buf[..]).map_err(Into::into));
        let n = match read {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        };
        for birth in buf[..n].chunks_exact(BIRTH) {
            let (id, pid) = birth.split_at(8);
            let id = u64::from_be_bytes(id.try_into().unwrap_or_default()) as ChildId;
            out.push((id, i32::from_be_bytes(pid.try_into().unwrap_or_default())));
        }
    }
}

/// Runs the zygote: forks a child per order until the worker closes the orders pipe (or dies:
/// the zygote has its parent-death signal). Never returns.
pub(super) fn run(ends: Ends, functions: &HashMap<String, ErasedFn>, reports: &OwnedFd) -> ! {
    // The worker's stdin and stdout are the application's pipes: not the zygote's business.
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = rustix::stdio::dup2_stdin(&null);
    }
    let _ = rustix::stdio::dup2_stdout(io::stderr().as_fd());
    let config = ForkConfig { new_process_group: true, parent_death_signal: Some(Signal::KILL) };
    // Blocks of the size a job's value starts at (serde_json's `to_vec` reserves 128 bytes),
    // freed here into the allocator's per-thread cache (glibc's tcache keeps 7 of each size):
    // each child's first allocation takes one, and writes fewer pages than carving a new
    // block from the heap would (each page a child writes first is a fault, and a copy).
    drop((0..7).map(|_| Vec::<u8>::with_capacity(128)).collect::<Vec<_>>());
    // Allocated once; a read writes only the bytes it brings (each page the zygote writes
    // after a fork is a fault).
    let mut buf = vec![0u8; ORDERS];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let read = retry_interrupted(|| {
            rustix::io::read(&ends.orders, &mut buf[filled..]).map_err(Into::into)
        });
        match read {
            Ok(0) => procyard_core::exit_immediately(0),
            Ok(n) => filled += n,
            Err(_) => procyard_core::exit_immediately(1),
        }
        let mut pos = 0;
        while let Some(header) = buf[pos..filled].first_chunk::<12>() {
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let end = pos + 4 + len;
            if !(8..=8 + procyard_core::MAX_FRAME).contains(&len) {
                // Only the worker writes there: a corrupt stream ends the zygote.
                procyard_core::exit_immediately(1);
            }
            if end > filled {
                if end - pos > buf.len() {
                    buf.resize(end - pos, 0);
                }
                break;
            }
            let mut id = [0u8; 8];
            id.copy_from_slice(&header[4..12]);
            let id = u64::from_be_bytes(id);
            // Looked up here, not in each child: the child then runs less code, and each
            // page of code a child runs first is a page fault in it.
            let job = lookup(functions, &buf[pos + 12..end]);
            let pid = match procyard_core::fork::fork_sibling(config) {
                Ok(ForkedSibling::Child) => {
                    drop(ends);
                    let (tag, body) = match job {
                        Ok((f, args)) => call(f, args),
                        Err(report) => report,
                    };
                    let code =
                        if write_report(reports, id as ChildId, tag, &body) { 0 } else { 70 };
                    procyard_core::exit_immediately(code)
                }
                Ok(ForkedSibling::Forker(pid)) => pid.as_raw(),
                Err(e) => -e.raw_os_error().unwrap_or(libc_eagain()),
            };
            let mut birth = [0u8; BIRTH];
            birth[..8].copy_from_slice(&id.to_be_bytes());
            birth[8..].copy_from_slice(&pid.to_be_bytes());
            if !write_all(&ends.births, &birth) {
                procyard_core::exit_immediately(0);
            }
            pos = end;
        }
        buf.copy_within(pos..filled, 0);
        filled -= pos;
        // A large job's buffer is let go once empty (each resident page costs every fork).
        if filled == 0 && buf.len() > ORDERS {
            buf = vec![0u8; ORDERS];
        }
    }
}

/// `EAGAIN`, for a failed fork that gave no `errno`.
fn libc_eagain() -> i32 {
    rustix::io::Errno::AGAIN.raw_os_error()
}

/// A child the zygote forked, adopted: `Err` with the reason if it could not be.
fn adopt(pid: i32) -> Result<Child, String> {
    if pid <= 0 {
        let error = io::Error::from_raw_os_error(-pid);
        return Err(format!("unable to fork: {error}"));
    }
    let pid = Pid::from_raw(pid).ok_or_else(|| "the zygote sent no pid".to_owned())?;
    Child::adopt(pid, true).map_err(|e| procyard_core::report(&e))
}

impl Zygote {
    /// Kills and reaps the zygote; how it ended.
    fn end(mut self) -> Option<Exit> {
        self.process.kill_and_reap().ok()
    }

    /// In a child of the worker: lets go of the zygote (closes the pipes, leaves the process).
    pub(super) fn detach(self) {
        self.process.detach();
    }
}

impl Shell {
    /// The zygote's births pipe is readable: adopts each child born, forks here a job whose
    /// fork failed there, and if the zygote is gone, fails the jobs it did not say were born.
    pub(super) fn read_births(&mut self) {
        let Some(zygote) = &self.zygote else { return };
        let mut births = std::mem::take(&mut self.births);
        let alive = zygote.read_births(&mut births);
        for (id, pid) in births.drain(..) {
            self.born(id, pid);
        }
        self.births = births;
        if !alive {
            self.zygote_lost();
        }
    }

    /// The zygote forked the child `id` (or failed to: `pid` is then minus an `errno`).
    fn born(&mut self, id: ChildId, pid: i32) {
        let message = self.children.get_mut(&id).and_then(|job| job.unborn.take());
        let child = match (adopt(pid), message) {
            (Ok(child), _) => Ok(child),
            // No process runs the job: fork it here (its message was kept for this).
            (Err(_), Some(message)) if pid <= 0 => self.fork_job(id, &message),
            (Err(message), _) => Err(WireError::Failed { message }),
        };
        let Some(job) = self.children.get_mut(&id) else {
            // Not ordered by this worker: nobody's job.
            if let Ok(mut child) = child {
                let _ = child.kill_and_reap();
            }
            return;
        };
        let token = Token(FIRST_JOB + id * TOKENS_PER_JOB);
        let registered = child.and_then(|mut child| {
            match self.poll.registry().register(&mut child, token, Interest::READABLE) {
                Ok(()) => Ok(child),
                Err(e) => {
                    let _ = child.kill_and_reap();
                    Err(WireError::Failed { message: format!("unable to watch the job: {e}") })
                }
            }
        });
        match registered {
            Ok(child) => {
                // A timeout or a stop that came while it was being born.
                match job.pending.take() {
                    Some(Signal::KILL) => drop(child.kill()),
                    Some(signal) => drop(child.signal_group(signal)),
                    None => {}
                }
                job.child = Some(child);
            }
            Err(error) => {
                self.children.remove(&id);
                self.step(Event::Lost { id, error });
            }
        }
    }

    /// The zygote is gone: the worker forks the next jobs itself. The jobs ordered from it and
    /// not born fail; a child it forked and did not tell of (it died in between) is found
    /// among the worker's children, killed and reaped.
    fn zygote_lost(&mut self) {
        let Some(zygote) = self.zygote.take() else { return };
        let _ = self.poll.registry().deregister(&mut SourceFd(&raw(zygote.births())));
        let exit = zygote.end();
        tracing::warn!(?exit, "procyard-resultworker: the zygote died; the worker forks jobs");
        let mut unborn: Vec<ChildId> = self
            .children
            .iter()
            .filter(|(_, job)| job.child.is_none())
            .map(|(id, _)| *id)
            .collect();
        if unborn.is_empty() {
            return;
        }
        self.reap_strays();
        unborn.sort_unstable();
        let how = exit.map_or_else(|| "unknown".to_owned(), |exit| exit.to_string());
        for id in unborn {
            self.children.remove(&id);
            let message = format!(
                "the worker's zygote, which forks the job's process, died ({how}) before it said \
                 the process was started"
            );
            self.step(Event::Lost { id, error: WireError::Failed { message } });
        }
    }

    /// Kills and reaps the worker's children that it does not know (forked by a zygote that
    /// died before saying so).
    fn reap_strays(&mut self) {
        let me = procyard_core::Pid::current().as_raw();
        let Ok(list) = std::fs::read_to_string(format!("/proc/self/task/{me}/children")) else {
            return;
        };
        let known: HashSet<i32> = (self.children.values().filter_map(|job| job.child.as_ref()))
            .chain(self.idle.iter().map(|spare| &spare.child))
            .map(|child| child.id().as_raw())
            .collect();
        for pid in list.split_whitespace().filter_map(|pid| pid.parse::<i32>().ok()) {
            if !known.contains(&pid)
                && let Ok(mut stray) = adopt(pid)
            {
                let _ = stray.kill_and_reap();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn birth(id: u64, pid: i32) -> [u8; BIRTH] {
        let mut birth = [0u8; BIRTH];
        birth[..8].copy_from_slice(&id.to_be_bytes());
        birth[8..].copy_from_slice(&pid.to_be_bytes());
        birth
    }

    fn births_pipe() -> (OwnedFd, OwnedFd) {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        rustix::io::ioctl_fionbio(&read, true).unwrap();
        (read, write)
    }

    /// The order that hung: the zygote's last births and its death, both before the worker
    /// reads. One wake-up must bring the births and the news that it is gone.
    #[test]
    fn last_births_and_the_zygotes_end_are_read_in_one_go() {
        let (read, write) = births_pipe();
        assert!(write_all(&write, &birth(7, 1234)));
        assert!(write_all(&write, &birth(8, -11)));
        drop(write);
        let mut out = Vec::new();
        assert!(!read_births(&read, &mut out), "the zygote is gone");
        assert_eq!(out, vec![(7, 1234), (8, -11)]);
    }

    #[test]
    fn births_while_the_zygote_lives_then_its_end() {
        let (read, write) = births_pipe();
        let mut out = Vec::new();
        assert!(read_births(&read, &mut out), "nothing yet");
        // More than one read's worth.
        for id in 0..100 {
            assert!(write_all(&write, &birth(id, 100 + id as i32)));
        }
        assert!(read_births(&read, &mut out), "alive");
        assert_eq!(out.len(), 100);
        assert_eq!(out[99], (99, 199));
        drop(write);
        out.clear();
        assert!(!read_births(&read, &mut out));
        assert!(out.is_empty());
    }
}
