//! Children the daemon did not start as workers: processes it inherited (reaped by pid once
//! they exit) and workers' escapees (adopted as a subreaper, stopped with their worker).

use std::collections::HashSet;

use procyard_core::{Pid, ProcStat, Report};

use super::shell::Shell;

/// Starts stopping the adopted escapees of workers that no longer run.
pub(super) fn stop_escapees(shell: &mut Shell) {
    stop_escapees_among(shell, &children_of_self());
}

/// What a turn of the loop asked for its children, done with one look at them: strays reaped
/// (a SIGCHLD came) and escapees of the workers that are gone stopped (a worker exited, or a
/// SIGCHLD came). Done after the turn's claims and starts, which it must not delay.
pub(super) fn tend(shell: &mut Shell, reap: bool, stop: bool) {
    if !reap && !stop {
        return;
    }
    let mut children = children_of_self();
    if reap {
        // Reaped, a pid is no longer our child's: it could name another process at once.
        let reaped = reap_unknown_among(shell, &children);
        children.retain(|pid| !reaped.contains(pid));
    }
    // An escapee may have been reparented to us when its parent exited.
    stop_escapees_among(shell, &children);
}

/// [`stop_escapees`] among `children`, which must all still be our children (not reaped).
fn stop_escapees_among(shell: &mut Shell, children: &[i32]) {
    let known: HashSet<i32> = shell.processes.values().map(|p| p.child.id().as_raw()).collect();
    let running: HashSet<u64> = shell.state.workers.keys().copied().collect();
    let kill_timeout = shell.state.config.daemon.kill_timeout;
    shell.escapees.stop_orphaned(children, &known, &running, kill_timeout);
}

/// Reaps children this daemon did not start (it can inherit some, e.g. when a shell `exec`s
/// it after starting background jobs), by their pid only — never `waitpid(-1)`, never a pid
/// of one of its workers (those are reaped through their pidfds).
pub(super) fn reap_unknown_children(shell: &mut Shell) {
    reap_unknown_among(shell, &children_of_self());
}

/// [`reap_unknown_children`] among `children`; returns the pids it reaped.
fn reap_unknown_among(shell: &mut Shell, children: &[i32]) -> Vec<i32> {
    let ours: HashSet<i32> = shell.processes.values().map(|p| p.child.id().as_raw()).collect();
    let mut reaped = Vec::new();
    for &pid in children {
        let Some(p) = Pid::from_raw(pid) else { continue };
        if ours.contains(&pid) {
            continue;
        }
        if !ProcStat::read(p).ok().flatten().is_some_and(|s| s.is_zombie()) {
            continue;
        }
        let Some(rpid) = rustix::process::Pid::from_raw(pid) else { continue };
        match rustix::process::waitpid(Some(rpid), rustix::process::WaitOptions::NOHANG) {
            Ok(Some((_, status))) => {
                reaped.push(pid);
                if shell.escapees.reaped(p) {
                    tracing::debug!(pid, ?status, "reaped a process that escaped its worker");
                } else {
                    tracing::warn!(pid, ?status, "reaped a child this daemon did not start");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(pid, error = %Report(&e), "unable to reap an unknown child"),
        }
    }
    reaped
}

/// The daemon's children (started or adopted), as raw pids.
pub(super) fn children_of_self() -> Vec<i32> {
    procyard_core::subreaper::children().into_iter().map(Pid::as_raw).collect()
}
