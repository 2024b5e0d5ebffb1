//! A `lost` task — its supervisor died (SIGKILL, crash) — is still ours: its process group
//! may still run, and its files are still in the pool. `kill` and `delete` act on it without
//! a supervisor, but only on what the record proves is ours:
//!
//! - the record is a regular file owned by us (or root) and not writable by others;
//! - the process it names has the recorded pid, start time and boot, and is still in the
//!   session its supervisor gave it (or one of its own): a recycled pid is never signalled;
//! - the group is signalled while its id is held (its leader alive or a zombie, or members
//!   found in `/proc`), so it cannot name another group;
//! - a socket file is removed only if it is a stale socket (nothing answers on it).
//!
//! Escapees adopted by the dead supervisor went to init with it: without a supervisor they
//! can no longer be told from strangers, and are left alone.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use procyard_core::{Deadline, KILL_SETTLE, Pid, ProcStat, Signal, socket, state_file};

use crate::layout::{SOCKET_FILES, STATE_FILES, TaskPaths};
use crate::record::{TaskRecord, read_record};
use crate::status::Status;
use crate::{Error, RefusalKind, Result};

/// Time the task's group gets to act on SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// The record of `id`, which must be lost (else: its supervisor is alive but unreachable).
fn lost_record(dir: &Path, id: &str) -> Result<TaskRecord> {
    let record = read_record(dir, id)?;
    if record.status != Status::Lost {
        return Err(Error::SupervisorGone { id: id.to_owned() });
    }
    Ok(record)
}

/// The lost task's leader as `/proc` shows it now, if it is still the recorded process.
fn verified_leader(record: &TaskRecord) -> Result<Option<(Pid, ProcStat)>> {
    let Some(ident) = &record.process else { return Ok(None) };
    if ident.boot_id != procyard_core::boot_id() {
        return Ok(None);
    }
    let Some(stat) = ProcStat::read(ident.pid)? else { return Ok(None) };
    let session_ok =
        record.session.is_some_and(|s| s.as_raw() == stat.sid) || stat.sid == ident.pid.as_raw();
    if stat.start_time != ident.start_time || !session_ok {
        return Ok(None);
    }
    Ok(Some((ident.pid, stat)))
}

/// Sends `signal` to the task's group (or the leader alone if it left its group).
fn signal_leader(pid: Pid, stat: &ProcStat, signal: Signal) -> Result<()> {
    if stat.pgid == pid.as_raw() {
        procyard_core::kill_process_group(pid, signal)?;
    } else {
        procyard_core::kill_process(pid, signal)?;
    }
    Ok(())
}

/// `kill` on a lost task: the signal goes to its identity-checked group.
pub(crate) fn signal(dir: &Path, id: &str, signal: Signal) -> Result<()> {
    let record = lost_record(dir, id)?;
    match verified_leader(&record)? {
        Some((_, stat)) if stat.is_zombie() => Err(Error::Refused {
            id: id.to_owned(),
            kind: RefusalKind::NotRunning,
            message: format!("task {id} is not running (its supervisor is gone, and so is it)"),
        }),
        Some((pid, stat)) => signal_leader(pid, &stat, signal),
        None => Err(Error::SupervisorGone { id: id.to_owned() }),
    }
}

/// `delete` on a lost task: TERM → grace → KILL to its identity-checked group, then its files.
pub(crate) fn delete(dir: &Path, id: &str) -> Result<()> {
    let record = lost_record(dir, id)?;
    let paths = TaskPaths::new(dir, id);
    // Refuse before acting if a socket path holds something that is not a socket.
    for suffix in SOCKET_FILES {
        socket::check_socket_path(&paths.file(suffix))?;
    }
    if let Some((pid, stat)) = verified_leader(&record)? {
        stop_group(pid, &stat)?;
    }
    for suffix in SOCKET_FILES {
        remove_stale_socket(&paths.file(suffix), suffix == "data")?;
    }
    for suffix in STATE_FILES {
        state_file::remove(paths.file(suffix))?;
    }
    Ok(())
}

/// TERM (and CONT) to the group, KILL after the grace to what is left of it.
fn stop_group(pid: Pid, stat: &ProcStat) -> Result<()> {
    // Opened before signalling and checked after: the pidfd then names the task's leader.
    let pidfd = open_pidfd(pid, stat.start_time);
    if !stat.is_zombie() {
        signal_leader(pid, stat, Signal::TERM)?;
        let _ = signal_leader(pid, stat, Signal::CONT);
        if let Some(fd) = &pidfd {
            wait_exited(std::slice::from_ref(fd), Deadline::after(GRACE));
        }
    }
    let group = stat.pgid;
    // The group id is held while the leader is (alive or a zombie) or while members remain.
    let leader_holds =
        matches!(ProcStat::read(pid), Ok(Some(st)) if st.start_time == stat.start_time);
    let members = group_members(group, stat.sid);
    if (leader_holds && group == pid.as_raw()) || !members.is_empty() {
        if let Some(group) = Pid::from_raw(group) {
            let _ = procyard_core::kill_process_group(group, Signal::KILL);
        }
    } else if leader_holds {
        let _ = procyard_core::kill_process(pid, Signal::KILL);
    }
    let fds: Vec<OwnedFd> =
        members.iter().filter_map(|(p, start)| open_pidfd(*p, *start)).chain(pidfd).collect();
    wait_exited(&fds, Deadline::after(KILL_SETTLE));
    Ok(())
}

/// A pidfd for `pid` if it is still the process that started at `start_time`.
fn open_pidfd(pid: Pid, start_time: u64) -> Option<OwnedFd> {
    let raw = rustix::process::Pid::from_raw(pid.as_raw())?;
    let fd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).ok()?;
    matches!(ProcStat::read(pid), Ok(Some(st)) if st.start_time == start_time).then_some(fd)
}

/// Waits until every pidfd is readable (its process exited) or the deadline passes.
fn wait_exited(fds: &[OwnedFd], deadline: Deadline) {
    let mut pending: Vec<&OwnedFd> = fds.iter().collect();
    while !pending.is_empty() && !deadline.is_expired() {
        let timeout = rustix::event::Timespec::try_from(deadline.remaining())
            .unwrap_or(rustix::event::Timespec { tv_sec: 1, tv_nsec: 0 });
        let mut polls: Vec<_> = pending
            .iter()
            .map(|fd| rustix::event::PollFd::new(*fd, rustix::event::PollFlags::IN))
            .collect();
        match rustix::event::poll(&mut polls, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
        let done: Vec<bool> = polls.iter().map(|p| !p.revents().is_empty()).collect();
        pending = pending.into_iter().zip(done).filter(|(_, d)| !d).map(|(fd, _)| fd).collect();
    }
}

/// Live processes (pid, start time) of process group `group` in session `sid`, from `/proc`.
fn group_members(group: i32, sid: i32) -> Vec<(Pid, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Pid::from_raw)
        .filter_map(|pid| match ProcStat::read(pid) {
            Ok(Some(st)) if st.pgid == group && st.sid == sid && !st.is_zombie() => {
                Some((pid, st.start_time))
            }
            _ => None,
        })
        .collect()
}

/// Removes the dead supervisor's socket at `path` if it is stale: core binds the path (which
/// unlinks only a socket nothing answers on, and refuses anything else) and we remove the
/// socket we bound.
fn remove_stale_socket(path: &Path, datagram: bool) -> Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let bound = if datagram {
        socket::bind_unix_datagram(path).map(|(_, bound)| bound)
    } else {
        socket::bind_unix_listener(path).map(|(_, bound)| bound)
    };
    bound?.remove()?;
    Ok(())
}
