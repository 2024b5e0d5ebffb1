//! The monitor's event loop: the thin shell around [`Watch`] that turns the job's pidfd, the
//! `SIGCHLD` descriptor and the clock into [`Event`]s and performs the [`Action`]s.

use std::time::Instant;

use procyard_core::mio::{Events, Interest, Poll, Token};
use procyard_core::{Child, event, report};

use super::adopter::Adopter;
use super::watch::{Action, Ending, Event, Watch};
use crate::options::JobSpec;

/// The job's pidfd: readable once it has exited.
const JOB: Token = Token(0);
/// The `SIGCHLD` signalfd: an adopted process (or the job) changed state.
const CHILDREN: Token = Token(1);

/// Watches the job until it ends — stopping it when its timeout passes, reaping adopted
/// processes meanwhile, stopping escapees when the job was stopped — and returns how it
/// ended, for the state file.
pub(crate) fn watch(child: &mut Child, spec: &JobSpec, adopter: &mut Adopter) -> Ending {
    let mut watch = Watch::new(Instant::now(), spec.timeout, spec.grace, adopter.is_adopting());
    // Interest is registered before the first look at the job, so no exit is missed between.
    let mut poll = register(child, adopter);
    let mut events = Events::with_capacity(4);
    loop {
        let turn = match child.try_wait() {
            Ok(Some(exit)) => vec![Event::JobExited(exit)],
            Err(e) => vec![Event::WaitFailed(report(&e))],
            Ok(None) => match &mut poll {
                Ok(poll) => next_events(poll, &mut events, &watch),
                Err(e) => vec![Event::WaitFailed(format!("unable to watch the job: {e}"))],
            },
        };
        for event in turn {
            for action in watch.step(event, Instant::now()) {
                match action {
                    Action::SignalJob(signal) => {
                        tracing::debug!(pid = %child.id(), %signal, "timeout: stopping the job");
                        // The group may be gone already, its leader an unreaped zombie.
                        let _ = child.signal_group(signal);
                    }
                    Action::ReapAdopted => adopter.reap(child.id()),
                    Action::StopEscapees(signal) => adopter.stop_escapees(signal, spec.grace),
                    Action::Record(ending) => return ending,
                }
            }
        }
    }
}

fn register(child: &mut Child, adopter: &mut Adopter) -> std::io::Result<Poll> {
    let poll = Poll::new()?;
    poll.registry().register(child, JOB, Interest::READABLE)?;
    if let Some(signals) = adopter.child_signals() {
        poll.registry().register(signals, CHILDREN, Interest::READABLE)?;
    }
    Ok(poll)
}

/// Waits for readiness or the watch's deadline. The job's exit yields no event here: the next
/// look at the top of the loop reaps it (and its own `SIGCHLD` then costs no scan for
/// adopted processes).
fn next_events(poll: &mut Poll, events: &mut Events, watch: &Watch) -> Vec<Event> {
    let deadline = watch.deadline();
    let timeout = deadline.map(|at| at.saturating_duration_since(Instant::now()));
    if let Err(e) = event::poll(poll, events, timeout) {
        return vec![Event::WaitFailed(format!("unable to wait for the job: {e}"))];
    }
    if events.iter().any(|e| e.token() == JOB) {
        return Vec::new();
    }
    let mut turn = Vec::new();
    if events.iter().any(|e| e.token() == CHILDREN) {
        turn.push(Event::ChildSignal);
    }
    if deadline.is_some_and(|at| Instant::now() >= at) {
        turn.push(Event::Timer);
    }
    turn
}
