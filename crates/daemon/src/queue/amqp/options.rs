//! Publish-time controls on RabbitMQ: what [`PublishOptions`] become on the wire
//! ([`Sending`]), and what this backend refuses.
//!
//! - **Delay** (`--delay`, `--at`): the job goes through the delay ladder (see
//!   [`topology`](super::topology)): TTL queues of d·64^k ms, and the message visits one queue
//!   per nonzero base-64 digit of its delay (two for any delay under 4.1 s), then reaches the
//!   jobs exchange with its routing key unchanged. It is held by the broker, never in a daemon's memory, and starts
//!   no sooner than its due time (the delay is rounded up to the millisecond, and each hop only
//!   adds to it); at most 2^36 - 1 ms (about 795 days). The broker cannot check at the end of the
//!   ladder that a task receives the key, so a delayed publish checks it against the tasks
//!   this process knows (the config's).
//! - **Priority** (`--priority`): the AMQP message priority, on task queues declared with
//!   `x-max-priority = 9` (`[queue] priorities = true`, classic queues: quorum queues on
//!   RabbitMQ 3.10 have none). With priorities on, every job carries one (5 by default: AMQP
//!   reads a message without one as 0). Without, a priority other than 5 is refused.
//! - **Headers** (`--header`): one JSON header, carried on retries and requeues.
//! - **Unique keys** (`--unique`): refused; no store here can hold a key cluster-wide.

use std::time::{SystemTime, UNIX_EPOCH};

use super::broker::Sending;
use super::handle::AmqpQueue;
use super::topology::MAX_DELAY_MS;
use crate::queue::{DEFAULT_PRIORITY, PublishOptions};
use crate::{Error, Result};

impl AmqpQueue {
    /// Whether a task this process knows receives `routing_key`.
    pub(super) fn routes(&self, routing_key: &str) -> bool {
        self.tasks
            .iter()
            .any(|t| t.routing_keys.iter().any(|p| crate::routing::matches(p, routing_key)))
    }

    /// `options` as sent, checked ([`PublishOptions::check`] first).
    pub(super) fn sending(&self, options: &PublishOptions) -> Result<Sending> {
        options.check()?;
        if options.unique.is_some() {
            return Err(Error::Unsupported {
                backend: "amqp",
                what: "hold --unique keys (no store on the broker can hold a key for the whole cluster; use the sqlite or postgres backend)",
            });
        }
        let priority = options.priority_or_default();
        if !self.priorities && priority != DEFAULT_PRIORITY {
            return Err(Error::Unsupported {
                backend: "amqp",
                what: "order jobs by --priority without [queue] priorities = true (which needs queue_type = \"classic\")",
            });
        }
        delay_ms(options.not_before, SystemTime::now())?;
        Ok(Sending {
            not_before: options.not_before,
            priority: self.priorities.then_some(priority),
            headers_json: options.headers_json(),
            message_id: None,
        })
    }
}

/// The delay until `not_before` seen at `now`, rounded up to the millisecond (0: now or in
/// the past); more than the ladder holds is refused.
pub(super) fn delay_ms(not_before: Option<SystemTime>, now: SystemTime) -> Result<u64> {
    let Some(at) = not_before else { return Ok(0) };
    let Ok(ahead) = at.duration_since(now) else { return Ok(0) };
    let ms = ahead.as_nanos().div_ceil(1_000_000);
    if ms > u128::from(MAX_DELAY_MS) {
        let due = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        return Err(Error::InvalidArgument {
            what: "--delay",
            value: format!("{}s (due at {due} s since the epoch)", ahead.as_secs()),
            expected: "a delay of at most 795 days (2^36 ms) on the amqp backend",
        });
    }
    Ok(u64::try_from(ms).unwrap_or(MAX_DELAY_MS))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn delays_round_up_to_the_millisecond_and_the_past_is_now() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(delay_ms(None, now).unwrap(), 0);
        assert_eq!(delay_ms(Some(now - Duration::from_secs(5)), now).unwrap(), 0);
        assert_eq!(delay_ms(Some(now + Duration::from_micros(1)), now).unwrap(), 1);
        assert_eq!(delay_ms(Some(now + Duration::from_millis(1500)), now).unwrap(), 1500);
        let too_far = now + Duration::from_millis(MAX_DELAY_MS + 1);
        let e = delay_ms(Some(too_far), now).unwrap_err().to_string();
        assert!(e.contains("--delay") && e.contains("795 days"), "{e}");
        assert_eq!(
            delay_ms(Some(now + Duration::from_millis(MAX_DELAY_MS)), now).unwrap(),
            MAX_DELAY_MS
        );
    }
}
