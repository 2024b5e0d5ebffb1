//! Event-loop helpers over mio: the one EINTR-retrying poll of the workspace.

use std::io;
use std::time::Duration;

use mio::{Events, Poll};

/// `poll.poll(events, timeout)`, retried when a signal interrupts it (mio returns
/// `Interrupted`). On a retry `events` is empty, so the caller's loop simply runs again:
/// deadlines are recomputed by the caller on every turn.
pub fn poll(poll: &mut Poll, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
    loop {
        match poll.poll(events, timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Runs `op` until it returns something other than `Interrupted` (a read, write, accept or
/// wait that a signal may interrupt).
pub fn retry_interrupted<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
