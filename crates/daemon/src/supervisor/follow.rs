//! `logs -f` as transitions (pure): a follow request for a job running here becomes
//! [`Action::Follow`] on its worker's run; one for a job not running here waits (once the
//! shell found it has not ended) until a worker runs it, or until it ends. The bytes
//! themselves are the shell's ([`super::live`]).

use std::time::Duration;

use super::event::{Action, ConnId};
use super::state::State;

impl State {
    /// A follow request for job `id`, from `from` (run, stdout and stderr offsets) when the
    /// client has followed a run already.
    pub(super) fn follow(
        &mut self,
        conn: ConnId,
        id: String,
        from: Option<(u64, u64, u64)>,
        timeout: Duration,
        acts: &mut Vec<Action>,
    ) {
        let running = self.workers.values().find_map(|w| {
            let run = w.job.as_ref().filter(|r| r.job.id == id)?;
            Some((w.id, w.pid, run.run, run.job.attempt))
        });
        match (running, from) {
            (Some((worker, Some(_), run, delivery)), None) => acts.push(Action::Follow {
                conn,
                worker,
                run,
                delivery,
                stdout_at: 0,
                stderr_at: 0,
                timeout,
            }),
            (Some((worker, Some(_), run, delivery)), Some((asked, stdout_at, stderr_at)))
                if asked == run =>
            {
                acts.push(Action::Follow {
                    conn,
                    worker,
                    run,
                    delivery,
                    stdout_at,
                    stderr_at,
                    timeout,
                })
            }
            // The run followed is over: the record tells the rest.
            (_, Some(_)) => acts.push(Action::AnswerWait { conn }),
            // Not running here (or its worker not started yet): wait for a run, unless the
            // job has ended.
            (_, None) => acts.push(Action::CheckFollow { conn, id, timeout }),
        }
    }

    /// Starts following the runs that began for pending follows; answers those whose job
    /// ended (a final outcome in `acts`).
    pub(super) fn resolve_follows(&mut self, acts: &mut Vec<Action>) {
        if self.pending_follows.is_empty() {
            return;
        }
        let ended: Vec<String> = acts
            .iter()
            .filter_map(|a| match a {
                Action::Complete { job, outcome, .. } if outcome.is_final() => Some(job.id.clone()),
                _ => None,
            })
            .collect();
        let mut keep = Vec::new();
        for (conn, id) in std::mem::take(&mut self.pending_follows) {
            let running = self.workers.values().find_map(|w| {
                let run = w.job.as_ref().filter(|r| r.job.id == id)?;
                w.pid.map(|_| (w.id, run.run, run.job.attempt))
            });
            if let Some((worker, run, delivery)) = running {
                // The connection is held already: its own deadline stands.
                let timeout = Duration::MAX;
                acts.push(Action::Follow {
                    conn,
                    worker,
                    run,
                    delivery,
                    stdout_at: 0,
                    stderr_at: 0,
                    timeout,
                });
            } else if ended.contains(&id) {
                acts.push(Action::AnswerWait { conn });
            } else {
                keep.push((conn, id));
            }
        }
        self.pending_follows = keep;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use procyard_core::Exit;

    use super::*;
    use crate::config::WorkModel;
    use crate::control::Request;
    use crate::supervisor::event::Event;
    use crate::supervisor::testing::{config, job, task};

    fn follow(id: &str, run: Option<u64>) -> Request {
        Request::Follow { id: id.into(), run, stdout_at: 3, stderr_at: 4, timeout_ms: 1000 }
    }

    fn follows(acts: &[Action]) -> Vec<(ConnId, u64, u64)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Follow { conn, run, stdout_at, .. } => Some((*conn, *run, *stdout_at)),
                _ => None,
            })
            .collect()
    }

    /// A follow before the job runs waits; once the worker runs it, its run is followed
    /// from the start; a follow of that run goes on from its offsets; once the run is over,
    /// a follow of it is told to read the record, and a pending one whose job ends too.
    #[test]
    fn follow_waits_for_the_run_then_follows_it() {
        let t0 = Instant::now();
        let mut s = State::new(config(vec![task("t", WorkModel::Oneshot)]), t0);
        let acts = s.step(Event::Control { conn: 1, request: follow("a", None) }, t0);
        assert!(matches!(&acts[..], [Action::CheckFollow { conn: 1, id, .. }] if id == "a"));
        s.step(Event::FollowPending { conn: 1, id: "a".into() }, t0);
        assert_eq!(s.pending_follows.len(), 1);
        s.step(Event::Claimed { task: "t".into(), max: 2, jobs: vec![job("a", 1)] }, t0);
        assert_eq!(s.pending_follows.len(), 1, "not before its process started");
        let worker = *s.workers.keys().next().unwrap();
        let acts = s.step(Event::Spawned { worker, pid: 7 }, t0);
        let started = follows(&acts);
        assert!(matches!(started[..], [(1, _, 0)]), "{acts:?}");
        assert!(s.pending_follows.is_empty());
        let run = started[0].1;
        let acts = s.step(Event::Control { conn: 2, request: follow("a", Some(run)) }, t0);
        assert_eq!(follows(&acts), [(2, run, 3)]);
        s.step(Event::Exited { worker, exit: Exit::Code(3) }, t0);
        let acts = s.step(Event::Control { conn: 3, request: follow("a", Some(run)) }, t0);
        assert_eq!(acts, vec![Action::AnswerWait { conn: 3 }]);

        s.step(Event::FollowPending { conn: 4, id: "b".into() }, t0);
        s.groups.get_mut("t").unwrap().pending.push_back(job("b", 1));
        let cancel = Request::Cancel { ids: vec!["b".into()] };
        let acts = s.step(Event::Control { conn: 5, request: cancel }, t0);
        assert!(acts.contains(&Action::AnswerWait { conn: 4 }), "{acts:?}");
        assert!(s.pending_follows.is_empty());
    }
}
