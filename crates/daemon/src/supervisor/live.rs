//! The shell's half of `logs -f`: the connections following a running attempt, answered with
//! the bytes its capture took since the offsets they have seen — when the worker writes
//! (after each read of its pipes), or when the attempt ends (its last bytes, `ended`). The
//! decision of which run to follow is the state's ([`super::follow`]).

use std::time::Duration;

use mio::Registry;

use super::capture::Capture;
use super::event::{ConnId, Event, WorkerId};
use super::shell::Shell;
use crate::control::LiveOutput;
use crate::control::{ControlServer, Response};

/// A control connection following a worker's run.
#[derive(Debug)]
pub(crate) struct Follower {
    conn: ConnId,
    worker: WorkerId,
    run: u64,
    delivery: u32,
    pid: Option<i32>,
    stdout_at: u64,
    stderr_at: u64,
}

/// Where a run's captures are.
pub(crate) struct Captures<'a> {
    pub out: Option<&'a Capture>,
    pub err: Option<&'a Capture>,
}

impl Shell {
    /// [`super::event::Action::Follow`]: holds the connection, answers it at once if output
    /// it has not seen is there.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_follow(
        &mut self,
        conn: ConnId,
        worker: WorkerId,
        run: u64,
        delivery: u32,
        (stdout_at, stderr_at): (u64, u64),
        timeout: Duration,
    ) {
        self.control.hold(conn, timeout, self.poll.registry());
        let pid = self.state.workers.get(&worker).and_then(|w| w.pid);
        self.followers.push(Follower { conn, worker, run, delivery, pid, stdout_at, stderr_at });
        self.answer_followers(worker);
    }

    /// [`super::event::Action::CheckFollow`]: holds the connection; a job that has ended (or
    /// is unknown) is answered at once.
    pub(super) fn check_follow(
        &mut self,
        conn: ConnId,
        id: String,
        timeout: Duration,
    ) -> Option<Event> {
        self.control.hold(conn, timeout, self.poll.registry());
        self.flush_queue();
        match self.queue.job(&id) {
            Ok(job) if !job.state.is_final() => Some(Event::FollowPending { conn, id }),
            _ => {
                self.control.respond(conn, &Response::Ended, self.poll.registry());
                None
            }
        }
    }

    /// Answers the followers of `worker`'s run that have output they have not seen.
    pub(super) fn answer_followers(&mut self, worker: WorkerId) {
        if !self.followers.iter().any(|f| f.worker == worker) {
            return;
        }
        let Some(p) = self.processes.get(&worker) else { return };
        let captures = match (&p.output, &p.relay) {
            (Some(o), _) => Captures { out: Some(&o.out), err: Some(&o.err) },
            (None, Some(r)) => Captures { out: None, err: r.job.as_ref() },
            (None, None) => return,
        };
        answer(
            &mut self.followers,
            &mut self.control,
            self.poll.registry(),
            worker,
            &captures,
            false,
        );
    }
}

/// Answers `worker`'s followers: those with unseen output, or all when the run `ended`
/// (with its last bytes).
pub(super) fn answer(
    followers: &mut Vec<Follower>,
    control: &mut ControlServer,
    registry: &Registry,
    worker: WorkerId,
    captures: &Captures<'_>,
    ended: bool,
) {
    followers.retain(|f| {
        if f.worker != worker {
            return true;
        }
        let total = |c: Option<&Capture>| c.map_or(0, Capture::total);
        let (stdout_at, stderr_at) = (total(captures.out), total(captures.err));
        if !ended && stdout_at <= f.stdout_at && stderr_at <= f.stderr_at {
            return true;
        }
        let since = |c: Option<&Capture>, at| c.map(|c| c.since(at)).unwrap_or_default();
        let out = LiveOutput {
            run: f.run,
            delivery: f.delivery,
            worker_pid: f.pid,
            stdout: since(captures.out, f.stdout_at),
            stderr: since(captures.err, f.stderr_at),
            stdout_at,
            stderr_at,
            ended,
        };
        control.respond(f.conn, &Response::Output(Box::new(out)), registry);
        false
    });
}
