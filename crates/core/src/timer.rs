//! A loop's wake-up timer to the nanosecond: a `timerfd` on the monotonic clock, armed at the
//! loop's next deadline and registered in its mio poll.
//!
//! `mio::Poll::poll` takes its timeout in whole milliseconds, rounded up, and the kernel adds
//! the thread's timer slack to an `epoll_wait` timeout (0.1 % of it, up to 100 ms): a loop
//! that sleeps until a deadline that way wakes up to a millisecond late, and several late
//! after a long sleep. A timerfd fires on time (its timer has no slack), and its readiness
//! wakes the poll like any other event: poll without a timeout while the timer is armed.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};

/// A one-shot wake-up timer for a mio loop (a [`Source`](mio::event::Source) that becomes
/// readable when the instant it is armed at comes).
///
/// Register it with `Interest::READABLE`; before each poll, [`Timer::set`] it to the loop's
/// next deadline; when its token is ready, call [`Timer::fired`].
#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
    /// The instant the timer is armed at, until it is seen to fire or is disarmed.
    armed: Option<Instant>,
}

impl Timer {
    /// A disarmed timer (non-blocking, closed on exec).
    pub fn new() -> io::Result<Timer> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        Ok(Timer { fd, armed: None })
    }

    /// Arms the timer to fire at `at` (at once if `at` has passed), replacing what it was
    /// armed at; `None` disarms it. Makes no system call when the timer is already armed at
    /// that instant (or already disarmed), so a loop may call it on every turn.
    pub fn set(&mut self, at: Option<Instant>) -> io::Result<()> {
        if at == self.armed {
            return Ok(());
        }
        let value = match at {
            // An `it_value` of zero disarms: an instant that has passed fires after 1 ns.
            Some(at) => {
                timespec(at.saturating_duration_since(Instant::now()).max(Duration::from_nanos(1)))
            }
            None => Timespec { tv_sec: 0, tv_nsec: 0 },
        };
        let spec = Itimerspec { it_interval: Timespec { tv_sec: 0, tv_nsec: 0 }, it_value: value };
        // Setting the timer also drops an expiry not yet read: the fd is readable again only
        // when this arming fires.
        timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &spec)?;
        self.armed = at;
        Ok(())
    }

    /// The instant the timer is armed at (`None`: disarmed, or seen to fire).
    pub fn armed(&self) -> Option<Instant> {
        self.armed
    }

    /// Reads the timer's expiry, if any: whether it fired since it was last armed (then it is
    /// disarmed). Call it when the timer's token is ready (mio's readiness is edge-triggered:
    /// an expiry left unread wakes no poll again until the timer is set anew).
    pub fn fired(&mut self) -> bool {
        let mut buf = [0u8; 8];
        match crate::event::retry_interrupted(|| Ok(rustix::io::read(&self.fd, &mut buf)?)) {
            Ok(8) if u64::from_ne_bytes(buf) > 0 => {
                self.armed = None;
                true
            }
            // `WouldBlock`: no expiry (set anew since the readiness was reported).
            _ => false,
        }
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

crate::event::fd_source!(Timer, fd);

#[cfg(test)]
mod tests {
    use mio::{Events, Interest, Poll, Token};

    use super::*;

    const TIMER: Token = Token(7);

    /// Polls until the timer's token is ready and has fired; the instant it was seen.
    fn wait_fired(poll: &mut Poll, timer: &mut Timer) -> Instant {
        let mut events = Events::with_capacity(4);
        loop {
            crate::event::poll(poll, &mut events, Some(Duration::from_secs(5))).unwrap();
            assert!(!events.is_empty(), "the timer woke the poll within 5 s");
            if events.iter().any(|e| e.token() == TIMER) && timer.fired() {
                return Instant::now();
            }
        }
    }

    #[test]
    fn wakes_the_poll_at_the_instant_not_the_next_millisecond() {
        let mut poll = Poll::new().unwrap();
        let mut timer = Timer::new().unwrap();
        poll.registry().register(&mut timer, TIMER, Interest::READABLE).unwrap();
        let mut lateness = Vec::new();
        for _ in 0..20 {
            // Between two milliseconds: a millisecond poll timeout would round this up.
            let at = Instant::now() + Duration::from_micros(1_300);
            timer.set(Some(at)).unwrap();
            assert_eq!(timer.armed(), Some(at));
            let woke = wait_fired(&mut poll, &mut timer);
            assert!(woke >= at, "never early");
            assert_eq!(timer.armed(), None, "a timer seen to fire is disarmed");
            lateness.push(woke - at);
        }
        // A millisecond poll timeout (2 ms for 1.3) never wakes less than 0.7 ms late; the
        // timer does, at least once in 20 however loaded the machine.
        let least = lateness.iter().min().unwrap();
        assert!(*least < Duration::from_micros(500), "least lateness {least:?}");
    }

    #[test]
    fn a_passed_instant_fires_at_once_and_rearming_replaces() {
        let mut poll = Poll::new().unwrap();
        let mut timer = Timer::new().unwrap();
        poll.registry().register(&mut timer, TIMER, Interest::READABLE).unwrap();
        let past = Instant::now() - Duration::from_secs(1);
        timer.set(Some(past)).unwrap();
        wait_fired(&mut poll, &mut timer);

        // Armed far away, then nearer: the nearer instant wins.
        let t0 = Instant::now();
        timer.set(Some(t0 + Duration::from_secs(3600))).unwrap();
        timer.set(Some(t0 + Duration::from_millis(5))).unwrap();
        let woke = wait_fired(&mut poll, &mut timer);
        assert!(woke - t0 < Duration::from_secs(4), "woke for the second arming");
    }

    #[test]
    fn a_disarmed_timer_or_one_set_anew_does_not_fire() {
        let mut poll = Poll::new().unwrap();
        let mut timer = Timer::new().unwrap();
        poll.registry().register(&mut timer, TIMER, Interest::READABLE).unwrap();
        let mut events = Events::with_capacity(4);
        timer.set(Some(Instant::now() + Duration::from_millis(20))).unwrap();
        timer.set(None).unwrap();
        assert_eq!(timer.armed(), None);
        crate::event::poll(&mut poll, &mut events, Some(Duration::from_millis(60))).unwrap();
        assert!(events.is_empty(), "disarmed: no wake-up");

        // An expiry not yet read is dropped when the timer is set again.
        timer.set(Some(Instant::now())).unwrap();
        crate::event::poll(&mut poll, &mut events, Some(Duration::from_secs(5))).unwrap();
        assert!(events.iter().any(|e| e.token() == TIMER), "fired, not read");
        timer.set(Some(Instant::now() + Duration::from_secs(3600))).unwrap();
        assert!(!timer.fired(), "the old expiry went with the new arming");
    }
}
