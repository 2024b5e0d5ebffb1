//! Names, arguments and headers of the AMQP topology, kept in one place so that every
//! daemon and client on a broker agrees on them.
//!
//! For the exchange `E` (default `procyard`) and a task `T`:
//!
//! | object | name | kind |
//! | --- | --- | --- |
//! | jobs exchange | `E` | durable topic exchange; publishers send here |
//! | task queue | `E.T` | durable, quorum where the broker supports it, else classic; bound to `E` with each of the task's routing keys; its dead-letter exchange is `E.dead` |
//! | dead-letter exchange | `E.dead` | durable direct exchange, routing key = task name |
//! | dead queue | `E.T.dead` | durable, bound to `E.dead` with `T` |
//! | retry queue | `E.T.retry.<ms>ms` | durable classic queue with `x-message-ttl = ms` that dead-letters (default exchange) back into `E.T` |
//! | events exchange | `E.events` | durable topic exchange; job events, routing key `<task>.<event>`, and cancel requests (`<task>.cancel`, `_.cancel`) |
//! | cancel listener | server-named | exclusive, auto-delete, one per daemon, bound to `E.events` with `#.cancel` |
//! | reply queue | server-named | exclusive, auto-delete, one per waiting client; the daemon that ends a job sends its outcome there (`reply-to`, `correlation-id` = job id) |
//! | delay exchange | `E.delay.level<k>` | durable headers exchange for ladder level k (0..=5): digit k of the delay in base 64 is d > 0 → the level's queue for d, 0 → level k-1 (level 0: `E`) |
//! | delay queue | `E.delay.level<k>.<d·64^k>ms` | durable classic queue, declared on first use, `x-message-ttl = d·64^k`, dead-letters (routing key unchanged) to level k-1 (level 0: `E`) |
//! | scheduler queue | `E.scheduler` | durable classic queue, `x-single-active-consumer`: the schedules' state (one JSON message) and client requests |
//!
//! Messages are persistent and carry the job id as `message-id` and these headers:
//! [`H_ATTEMPT`] (1 for the first delivery), [`H_ROUTING_KEY`] (the key it was published with;
//! a retry travels through the default exchange, which changes the delivery's key),
//! and on dead letters [`H_REASON`] and [`H_TASK`]; [`H_HEADERS`] the publisher's headers,
//! [`H_JOB_ID`] the job id when the `message-id` is a schedule's fire; a delayed job the
//! base-64 digits of its delay (`procyard-delay-level<k>`, not `x-` names: headers exchanges
//! ignore those).
//!
//! A job waits in one queue per nonzero digit of its delay: two hops for any delay under
//! 4.1 s, three under 4.4 min, four under 4.7 h (each hop costs the broker's TTL timer, about a
//! millisecond or two, on top of the queue's TTL). The power-of-two ladder of earlier versions
//! (`E.delay.bit<k>`, `E.delay.<2^k>ms`, one hop per set bit) is neither declared nor deleted:
//! jobs still in it on an upgraded broker go on down it to `E` as before.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Header: the attempt number of the next delivery (1 for a fresh job).
pub(crate) const H_ATTEMPT: &str = "x-procyard-attempt";
/// Header: the routing key the job was published with.
pub(crate) const H_ROUTING_KEY: &str = "x-procyard-routing-key";
/// Header: why a dead-lettered job failed for the last time.
pub(crate) const H_REASON: &str = "x-procyard-reason";
/// Header: the task a dead-lettered job belonged to.
pub(crate) const H_TASK: &str = "x-procyard-task";

/// Header: the publisher's headers (`--header NAME=VALUE`) as one JSON object, the form
/// `concurrency_key = "header:NAME"` reads.
pub(crate) const H_HEADERS: &str = "x-procyard-headers";
/// Header: the job id, when the `message-id` is something else (a schedule's fire,
/// `schedule:<name>:<due ms>`).
pub(crate) const H_JOB_ID: &str = "x-procyard-job-id";

/// The `x-max-priority` of task queues with `[queue] priorities = true`: AMQP priorities 0..=9
/// are the job priorities as they are.
pub(crate) const MAX_PRIORITY: u8 = crate::queue::MAX_PRIORITY;

/// Bits of one digit of the delay ladder: each level holds a digit of the delay in base 64.
const DIGIT_BITS: u32 = 6;
/// The base of the delay ladder's digits.
const DELAY_BASE: u64 = 1 << DIGIT_BITS;
/// Levels of the delay ladder: level k holds d·64^k ms for the delay's digit d at k.
pub(crate) const DELAY_LEVELS: u32 = 6;
/// The longest delay the ladder holds: 64^6 - 1 = 2^36 - 1 ms, about 795 days.
pub(crate) const MAX_DELAY_MS: u64 = (1 << (DIGIT_BITS * DELAY_LEVELS)) - 1;

/// The binding of a daemon's listener on the events exchange: cancel requests
/// (`<task>.cancel`; `_.cancel` when the canceller does not know the task).
pub(crate) const CANCEL_BINDING: &str = "#.cancel";

/// The topic exchange of job events of jobs exchange `exchange`.
pub(crate) fn events_exchange(exchange: &str) -> String {
    format!("{exchange}.events")
}

/// The dead-letter exchange of jobs exchange `exchange`.
pub(crate) fn dead_exchange(exchange: &str) -> String {
    format!("{exchange}.dead")
}

/// The queue of `task`.
pub(crate) fn task_queue(exchange: &str, task: &str) -> String {
    format!("{exchange}.{task}")
}

/// The dead-letter queue of `task`.
pub(crate) fn dead_queue(exchange: &str, task: &str) -> String {
    format!("{exchange}.{task}.dead")
}

/// The retry queue of `task` for a delay of `delay_ms` (already quantized).
pub(crate) fn retry_queue(exchange: &str, task: &str, delay_ms: u64) -> String {
    format!("{exchange}.{task}.retry.{delay_ms}ms")
}

/// The headers exchange of delay ladder level `level`: it sends a message whose digit at
/// `level` is d > 0 to that level's queue for d, any other one level down (or, below level 0,
/// to the jobs exchange).
pub(crate) fn delay_exchange(exchange: &str, level: u32) -> String {
    format!("{exchange}.delay.level{level}")
}

/// How long digit `digit` at ladder level `level` holds a message: digit·64^level ms.
fn digit_ms(level: u32, digit: u8) -> u64 {
    u64::from(digit) << (DIGIT_BITS * level)
}

/// The TTL queue of delay ladder level `level` for digit `digit` (digit·64^level ms).
pub(crate) fn delay_queue(exchange: &str, level: u32, digit: u8) -> String {
    format!("{exchange}.delay.level{level}.{}ms", digit_ms(level, digit))
}

/// Where a message goes after delay level `level`: the next level down, or the jobs exchange.
pub(crate) fn below(exchange: &str, level: u32) -> String {
    match level {
        0 => exchange.to_owned(),
        l => delay_exchange(exchange, l - 1),
    }
}

/// The message header holding the digit of a delay at `level`. (A headers exchange ignores
/// headers that start with `x-`, so these do not.)
fn delay_header(level: u32) -> String {
    format!("procyard-delay-level{level}")
}

/// The base-64 digits of `delay_ms` (at most [`MAX_DELAY_MS`]), level 0 first.
pub(crate) fn delay_digits(delay_ms: u64) -> [u8; DELAY_LEVELS as usize] {
    let mut digits = [0; DELAY_LEVELS as usize];
    for (level, digit) in (0..DELAY_LEVELS).zip(digits.iter_mut()) {
        // Masked to 6 bits: the cast cannot truncate.
        *digit = (delay_ms >> (DIGIT_BITS * level) & (DELAY_BASE - 1)) as u8;
    }
    digits
}

/// Adds the digits of `delay_ms` to `headers`, one header per ladder level ("0" to "63").
pub(crate) fn add_delay_digits(headers: &mut FieldTable, delay_ms: u64) {
    for (level, digit) in (0..DELAY_LEVELS).zip(delay_digits(delay_ms)) {
        headers.insert(delay_header(level).into(), long_string(&digit.to_string()));
    }
}

/// The binding arguments that match digit `digit` at `level` (0: pass to the level below).
pub(crate) fn delay_binding(level: u32, digit: u8) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-match".into(), long_string("all"));
    args.insert(delay_header(level).into(), long_string(&digit.to_string()));
    args
}

/// Arguments of delay level `level`'s queue for `digit`: hold each message digit·64^level ms,
/// then send it on (its routing key unchanged) to the level below.
pub(crate) fn delay_queue_args(exchange: &str, level: u32, digit: u8) -> FieldTable {
    let mut args = FieldTable::default();
    let ms = i64::try_from(digit_ms(level, digit)).unwrap_or(i64::MAX);
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
    args.insert("x-dead-letter-exchange".into(), long_string(&below(exchange, level)));
    args
}

/// Rounds a retry delay to two significant digits (at least 1 ms), so that an exponential
/// backoff with jitter uses a bounded number of retry queues.
pub(crate) fn quantize_delay_ms(ms: u128) -> u64 {
    let ms = u64::try_from(ms).unwrap_or(u64::MAX).clamp(1, 24 * 3600 * 1000);
    let mut scale = 1;
    while ms / scale >= 100 {
        scale *= 10;
    }
    // Round up, so that a job never runs earlier than the daemon asked.
    ms.div_ceil(scale) * scale
}

/// Arguments of a task queue or dead queue; `quorum` asks for a quorum queue, `priorities`
/// for `x-max-priority` (classic queues only).
pub(crate) fn durable_queue_args(
    quorum: bool,
    priorities: bool,
    dead_letter: Option<(&str, &str)>,
) -> FieldTable {
    let mut args = FieldTable::default();
    if quorum {
        args.insert("x-queue-type".into(), long_string("quorum"));
    }
    if priorities {
        args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(MAX_PRIORITY));
    }
    if let Some((exchange, key)) = dead_letter {
        args.insert("x-dead-letter-exchange".into(), long_string(exchange));
        args.insert("x-dead-letter-routing-key".into(), long_string(key));
    }
    args
}

/// Arguments of a retry queue: hold each message `delay_ms`, then send it back to
/// `task_queue` through the default exchange.
pub(crate) fn retry_queue_args(task_queue: &str, delay_ms: u64) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(i64::try_from(delay_ms).unwrap_or(i64::MAX)),
    );
    args.insert("x-dead-letter-exchange".into(), long_string(""));
    args.insert("x-dead-letter-routing-key".into(), long_string(task_queue));
    args
}

/// A header table for a job.
pub(crate) fn job_headers(attempt: u32, routing_key: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(attempt)));
    headers.insert(H_ROUTING_KEY.into(), long_string(routing_key));
    headers
}

/// An AMQP long string value.
pub(crate) fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Reads a string header (long or short string).
pub(crate) fn header_str(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    let value = headers?.inner().get(&ShortString::from(name))?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Reads an integer header of any width; negative or absent → `None`.
pub(crate) fn header_u32(headers: Option<&FieldTable>, name: &str) -> Option<u32> {
    let value = headers?.inner().get(&ShortString::from(name))?;
    let n: i128 = match *value {
        AMQPValue::ShortShortInt(v) => v.into(),
        AMQPValue::ShortShortUInt(v) => v.into(),
        AMQPValue::ShortInt(v) => v.into(),
        AMQPValue::ShortUInt(v) => v.into(),
        AMQPValue::LongInt(v) => v.into(),
        AMQPValue::LongUInt(v) => v.into(),
        AMQPValue::LongLongInt(v) => v.into(),
        _ => return None,
    };
    u32::try_from(n).ok()
}

/// The URL without its password, for logs and `status`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_quantized_upwards_to_two_digits() {
        assert_eq!(quantize_delay_ms(0), 1);
        assert_eq!(quantize_delay_ms(57), 57);
        assert_eq!(quantize_delay_ms(100), 100);
        assert_eq!(quantize_delay_ms(1234), 1300);
        assert_eq!(quantize_delay_ms(60_000), 60_000);
        assert_eq!(quantize_delay_ms(60_001), 61_000);
    }

    #[test]
    fn headers_round_trip() {
        let h = job_headers(3, "mail.send");
        assert_eq!(header_u32(Some(&h), H_ATTEMPT), Some(3));
        assert_eq!(header_str(Some(&h), H_ROUTING_KEY).as_deref(), Some("mail.send"));
        assert_eq!(header_u32(Some(&h), "absent"), None);
        assert_eq!(header_u32(None, H_ATTEMPT), None);
    }

    #[test]
    fn delay_digits_spell_the_delay_in_base_64_and_each_level_passes_to_the_one_below() {
        let delay = 37 + 5 * 64 + 2 * 64 * 64 * 64;
        assert_eq!(delay_digits(delay), [37, 5, 0, 2, 0, 0]);
        let mut h = FieldTable::default();
        add_delay_digits(&mut h, delay);
        let digit = |l| header_str(Some(&h), &delay_header(l));
        assert_eq!(digit(0).as_deref(), Some("37"));
        assert_eq!(digit(2).as_deref(), Some("0"));
        assert_eq!(digit(3).as_deref(), Some("2"));
        assert_eq!(h.inner().len(), DELAY_LEVELS as usize);
        // The queues of the digits hold the delay exactly.
        let held: u64 =
            (0..DELAY_LEVELS).zip(delay_digits(delay)).map(|(l, d)| digit_ms(l, d)).sum();
        assert_eq!(held, delay);
        assert_eq!(delay_digits(MAX_DELAY_MS), [63; DELAY_LEVELS as usize]);
        assert_eq!(MAX_DELAY_MS, (1 << 36) - 1);
        assert_eq!(below("E", 0), "E");
        assert_eq!(below("E", 3), "E.delay.level2");
        assert_eq!(delay_queue("E", 1, 16), "E.delay.level1.1024ms");
        // Never a name of the power-of-two ladder (`E.delay.<2^k>ms`, `E.delay.bit<k>`), whose
        // queues on an upgraded broker have other arguments.
        assert!(!delay_queue("E", 0, 1).starts_with("E.delay.1"));
    }

    #[test]
    fn password_is_redacted() {
        assert_eq!(redact_url("amqp://guest:secret@h:5672/%2f"), "amqp://guest:***@h:5672/%2f");
        assert_eq!(redact_url("amqp://h:5672"), "amqp://h:5672");
    }
}
