//! The task's data channel (`<id>.data`): datagrams the task sends to its supervisor, each
//! checked against its sender's credentials.
//!
//! The socket file is mode 0600, but a mode can be loosened (by its owner, or root), and the
//! pool directory's mode is all that stands between it and other users. So, as the stream
//! socket checks `SO_PEERCRED`, every datagram is received with `SO_PASSCRED` set and its
//! `SCM_CREDENTIALS` (filled in by the kernel, not by the sender) is checked: only the pool
//! owner and root are heard; anything else — or a datagram without credentials — is dropped.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use super::Supervisor;
use super::state::Event;

/// Longest datagram kept whole (longer ones are cut).
const MAX_DATAGRAM: usize = 64 * 1024;

/// Whether a datagram from `sender` (its uid, if it came with credentials) is heard by the
/// supervisor of a pool owned by `owner`.
fn sender_allowed(sender: Option<u32>, owner: u32) -> bool {
    sender.is_some_and(|uid| uid == 0 || uid == owner)
}

impl Supervisor {
    pub(super) fn receive_datagrams(&mut self) {
        let mut received = Vec::new();
        let mut dropped = 0usize;
        loop {
            // Each datagram gets a buffer of its own size (peeked), none is kept in between.
            let peek = RecvFlags::PEEK | RecvFlags::TRUNC;
            let size = match rustix::net::recv(&self.data, &mut [0u8; 0], peek) {
                Ok((_, size)) => size,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
            };
            let mut buf = vec![0u8; size.min(MAX_DATAGRAM)];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = rustix::net::recvmsg(
                &self.data,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            );
            let n = match got {
                Ok(msg) => msg.bytes.min(buf.len()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
            };
            let mut sender = None;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmCredentials(cred) = message {
                    sender = Some(cred.uid.as_raw());
                }
            }
            if !sender_allowed(sender, self.owner) {
                dropped += 1;
                continue;
            }
            let value: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&buf[..n]).into_owned())
            });
            received.push(value);
        }
        if dropped > 0 {
            tracing::warn!(
                "task {}: ignored {dropped} datagram(s) from users other than the pool owner",
                self.state.task.id
            );
        }
        if !received.is_empty() {
            self.emit(Event::Datagrams(received));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sender_allowed;

    #[test]
    fn only_the_owner_and_root_are_heard() {
        assert!(sender_allowed(Some(1000), 1000));
        assert!(sender_allowed(Some(0), 1000));
        assert!(!sender_allowed(Some(65534), 1000));
        assert!(!sender_allowed(None, 1000));
        assert!(sender_allowed(Some(0), 0));
        assert!(!sender_allowed(Some(1), 0));
    }
}
