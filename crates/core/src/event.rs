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

/// Implements `mio::event::Source` for a type by registering the descriptor of one of its
/// fields (a pidfd, a signalfd): the one way core's types join a mio loop.
macro_rules! fd_source {
    ($type:ty, $field:ident) => {
        impl ::mio::event::Source for $type {
            fn register(
                &mut self,
                registry: &::mio::Registry,
                token: ::mio::Token,
                interests: ::mio::Interest,
            ) -> ::std::io::Result<()> {
                use ::std::os::fd::AsRawFd;
                ::mio::unix::SourceFd(&self.$field.as_raw_fd()).register(registry, token, interests)
            }
            fn reregister(
                &mut self,
                registry: &::mio::Registry,
                token: ::mio::Token,
                interests: ::mio::Interest,
            ) -> ::std::io::Result<()> {
                use ::std::os::fd::AsRawFd;
                ::mio::unix::SourceFd(&self.$field.as_raw_fd())
                    .reregister(registry, token, interests)
            }
            fn deregister(&mut self, registry: &::mio::Registry) -> ::std::io::Result<()> {
                use ::std::os::fd::AsRawFd;
                ::mio::unix::SourceFd(&self.$field.as_raw_fd()).deregister(registry)
            }
        }
    };
}
pub(crate) use fd_source;
