//! Who gets a connection slot: a cap on connections in all and per uid, an idle timeout, and
//! eviction of the oldest idle connection so idle connections never lock the owner out.
//!
//! A connection is *idle* when it owes nothing and is owed nothing: no request half-received,
//! none being served (a waiting read, a stdin write waiting for room), no answer unsent. Idle
//! connections that are not subscriptions are closed after [`IDLE_TIMEOUT`]; when a new
//! connection would exceed a cap, the oldest idle connection (of the same uid when that uid is
//! at its own cap) is closed to make room, subscriptions last. Only when every connection is
//! busy is the newcomer refused ("supervisor busy"). The client library reconnects (and
//! resends) when it finds its idle connection closed, so eviction costs a well-behaved client
//! one reconnection.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use mio::{Interest, Token};
use procyard_core::event::retry_interrupted;
use procyard_core::{Deadline, FrameDecoder, frame};

use super::connection::Client;
use super::{HELLO_TIMEOUT, Supervisor};
use crate::RefusalKind;
use crate::protocol::{MAX_REQUEST, Response};

/// Most connections served at once.
pub(super) const MAX_CLIENTS: usize = 128;
/// Most connections of one uid (the owner and root each have room beside the other).
pub(super) const MAX_PER_UID: usize = 96;
/// An idle connection (not a subscription) is closed after this long.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the admission sees of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slot {
    pub(super) token: Token,
    pub(super) uid: u32,
    /// Since when it has been idle (`None`: busy).
    pub(super) idle_since: Option<Instant>,
    pub(super) subscribed: bool,
}

/// The decision for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// There is room.
    Admit,
    /// Close this connection, then admit.
    Evict(Token),
    /// Every candidate connection is busy.
    Refuse,
}

/// Decides on a new connection from `uid`, given the connections now open.
pub(super) fn admit(slots: &[Slot], uid: u32) -> Admission {
    let same_uid = slots.iter().filter(|s| s.uid == uid).count();
    // Whose connections may make room: the uid's own when it is at its cap, anyone's when
    // the total is.
    let only = if same_uid >= MAX_PER_UID {
        Some(uid)
    } else if slots.len() >= MAX_CLIENTS {
        None
    } else {
        return Admission::Admit;
    };
    slots
        .iter()
        .filter(|s| only.is_none_or(|u| s.uid == u))
        .filter_map(|s| Some(((s.subscribed, s.idle_since?), s.token)))
        .min_by_key(|(rank, _)| *rank)
        .map_or(Admission::Refuse, |(_, token)| Admission::Evict(token))
}

/// When an idle connection times out (`None`: never, it is busy or a subscription).
pub(super) fn idle_deadline(slot: &Slot) -> Option<Instant> {
    if slot.subscribed {
        return None;
    }
    slot.idle_since.map(|since| since + IDLE_TIMEOUT)
}

impl Supervisor {
    pub(super) fn accept(&mut self) {
        loop {
            let (mut stream, _) = match retry_interrupted(|| self.listener.accept()) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            };
            let uid = rustix::net::sockopt::socket_peercred(&stream).ok().map(|c| c.uid);
            let allowed = uid.is_some_and(|uid| uid.is_root() || uid.as_raw() == self.owner);
            let uid = uid.map_or(u32::MAX, |uid| uid.as_raw());
            let admission = if allowed && !self.state.is_deleting() {
                let slots: Vec<_> = self.clients.iter().map(|(t, c)| self.slot(*t, c)).collect();
                admit(&slots, uid)
            } else {
                Admission::Refuse
            };
            if let Admission::Evict(victim) = admission
                && let Some(mut c) = self.clients.remove(&victim)
            {
                tracing::debug!("closing an idle connection to make room");
                let _ = self.poll.registry().deregister(&mut c.stream);
                self.emit(super::state::Event::ClientGone { client: victim });
            }
            if admission == Admission::Refuse {
                let message = if allowed { "supervisor busy" } else { "permission denied" };
                let resp = Response::Error {
                    kind: RefusalKind::PermissionDenied,
                    message: message.into(),
                };
                if let Ok(bytes) = frame::encode_frame(&resp) {
                    let _ = stream.write(&bytes);
                }
                continue;
            }
            // Large reads then go out straight from the ring in one write (best effort;
            // the kernel caps it at net.core.wmem_max).
            let _ = rustix::net::sockopt::set_socket_send_buffer_size(&stream, 4 * 1024 * 1024);
            let token = Token(self.next_token);
            self.next_token += 1;
            if self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            self.clients.insert(
                token,
                Client {
                    stream,
                    decoder: FrameDecoder::with_max(MAX_REQUEST + 1024),
                    out: Vec::new(),
                    out_pos: 0,
                    readable: true,
                    hello: false,
                    hello_deadline: Deadline::after(HELLO_TIMEOUT),
                    raw_write: None,
                    closing: false,
                    dead: false,
                    uid,
                    last_active: Instant::now(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(token: usize, uid: u32, idle: Option<u64>, subscribed: bool) -> Slot {
        let base = Instant::now();
        Slot {
            token: Token(token),
            uid,
            idle_since: idle.map(|s| base + Duration::from_secs(s)),
            subscribed,
        }
    }

    #[test]
    fn room_is_admitted() {
        assert_eq!(admit(&[], 1000), Admission::Admit);
        let some: Vec<Slot> = (0..10).map(|i| slot(i, 1000, None, false)).collect();
        assert_eq!(admit(&some, 1000), Admission::Admit);
    }

    #[test]
    fn at_the_cap_the_oldest_idle_goes_subscriptions_last() {
        let mut slots: Vec<Slot> = (0..MAX_CLIENTS - 3).map(|i| slot(i, 0, None, false)).collect();
        slots.push(slot(500, 1000, Some(1), true));
        slots.push(slot(501, 1000, Some(5), false));
        slots.push(slot(502, 1000, Some(3), false));
        assert_eq!(admit(&slots, 1000), Admission::Evict(Token(502)));
        slots.retain(|s| s.token.0 < 500);
        slots.push(slot(500, 1000, Some(1), true));
        slots.push(slot(501, 1000, None, false));
        slots.push(slot(502, 1000, None, false));
        assert_eq!(admit(&slots, 1000), Admission::Evict(Token(500)));
    }

    #[test]
    fn all_busy_is_refused() {
        let slots: Vec<Slot> = (0..MAX_CLIENTS).map(|i| slot(i, 1000, None, false)).collect();
        assert_eq!(admit(&slots, 1000), Admission::Refuse);
    }

    #[test]
    fn a_uid_at_its_own_cap_evicts_only_its_own() {
        // The owner fills its share with idle connections; root's busy ones are untouched,
        // and the owner's newcomer takes the place of the owner's oldest idle one.
        let mut slots: Vec<Slot> =
            (0..MAX_PER_UID).map(|i| slot(i, 1000, Some(10 + i as u64), false)).collect();
        slots.push(slot(900, 0, Some(0), false));
        assert_eq!(admit(&slots, 1000), Admission::Evict(Token(0)));
        // Root, under its own cap and the total, is simply admitted.
        assert_eq!(admit(&slots, 0), Admission::Admit);
    }

    #[test]
    fn idle_deadlines_spare_busy_connections_and_subscriptions() {
        assert!(idle_deadline(&slot(1, 0, None, false)).is_none());
        assert!(idle_deadline(&slot(1, 0, Some(0), true)).is_none());
        assert!(idle_deadline(&slot(1, 0, Some(0), false)).is_some());
    }
}
