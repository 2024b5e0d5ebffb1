//! Timing stamps of the loop's steps on the way from a due time to a started job: how late
//! the timer woke the loop, and how long each claim, each flush of buffered writes (with its
//! pruning step), each worker start, and on the embedded queue each pruning step took.
//! Emitted as
//! `debug` events of the target `procyard_daemon::stamp` (off unless asked for, e.g.
//! `RUST_LOG=warn,procyard_daemon::stamp=debug`), which the scheduling benchmark reads to
//! say where start lateness goes.

use std::time::Instant;

/// The target of the stamps, for a log filter.
const TARGET: &str = "procyard_daemon::stamp";

/// The loop woke for the timer of `deadline` (no event came first).
pub(crate) fn woke(deadline: Instant) {
    if tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
        let late = Instant::now().saturating_duration_since(deadline);
        tracing::debug!(target: TARGET, late_us = late.as_micros() as u64, "woke");
    }
}

/// Runs `step` (a claim, a spawn) and stamps how long it took.
pub(crate) fn timed<T>(what: &'static str, step: impl FnOnce() -> T) -> T {
    if !tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
        return step();
    }
    let t0 = Instant::now();
    let out = step();
    tracing::debug!(target: TARGET, took_us = t0.elapsed().as_micros() as u64, "{what}");
    out
}
