//! Periodic jobs on the SQLite queue: fired once per due time across daemons, paused,
//! triggered, and changed on reload.

use std::time::Duration;

use super::*;
use crate::queue::sqlite::tests::bound;
use crate::queue::{OpenMode, QueueBackend};
use crate::schedule::ScheduleConfig;
use crate::schedule::{Cadence, Missed};

fn every(name: &str, secs: u64, missed: Missed) -> ScheduleConfig {
    ScheduleConfig {
        name: name.into(),
        cadence: Cadence::every(Duration::from_secs(secs)).unwrap(),
        spec: format!("every {secs}s in UTC"),
        timezone: "UTC".into(),
        routing_key: "mail.tick".into(),
        payload: "tick".into(),
        missed,
    }
}

/// A period of about an hour whose latest due time is minutes away from now. An `every` grid
/// is aligned to the epoch, so a plain hourly one has a due time "on time" (within
/// [`crate::schedule::ON_TIME`]) during the first minute of every hour, and fires there.
fn off_grid_period() -> u64 {
    let now = (now_ms() / 1000) as u64;
    (3000..4000)
        .find(|p| (120..p - 120).contains(&(now % p)))
        .expect("some period in 3000..4000 s is off its grid by 2 minutes")
}

/// A schedule stored with a last due time in the past: as if a daemon fired it then and died.
fn backdate(q: &SqliteQueue, name: &str, secs_ago: i64) {
    let t = now_ms() - secs_ago * 1000;
    q.conn
        .execute(
            "UPDATE schedules SET since_ms = ?2, last_due_ms = ?2 WHERE name = ?1",
            params![name, t],
        )
        .unwrap();
}

fn jobs(q: &mut SqliteQueue) -> u64 {
    q.depths().unwrap()["mail"].ready
}

#[test]
fn missed_due_times_fire_once_each_under_all_and_never_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let mut q = bound(&path, OpenMode::Daemon);
    q.bind(&crate::queue::sqlite::tests::bindings()[..1]).unwrap();
    let s = every("tick", 1, Missed::All);
    q.set_schedules(std::slice::from_ref(&s)).unwrap();
    assert_eq!(jobs(&mut q), 0, "a new schedule counts from now");
    backdate(&q, "tick", 5);
    q.book.invalidate();
    let wake = q.fire_due_schedules().unwrap().unwrap();
    assert!(wake <= Instant::now(), "fired: look again at once");
    let n = jobs(&mut q);
    assert!((5..=6).contains(&n), "{n} jobs for 5 missed seconds");
    drop(q);
    // The next daemon sees the due times dealt with and fires none of them again.
    let mut again = bound(&path, OpenMode::Daemon);
    again.bind(&crate::queue::sqlite::tests::bindings()[..1]).unwrap();
    again.set_schedules(std::slice::from_ref(&s)).unwrap();
    let _ = again.fire_due_schedules().unwrap();
    assert!(jobs(&mut again) <= n + 1, "at most the second that came since");
    let state = again.schedules(std::slice::from_ref(&s)).unwrap();
    assert!(state[0].last_job.is_some() && state[0].next_ms.is_some());
}

#[test]
fn skip_fires_only_an_on_time_due_time_and_pause_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
    q.bind(&crate::queue::sqlite::tests::bindings()[..1]).unwrap();
    let period = off_grid_period();
    let s = every("hourly", period, Missed::Skip);
    q.set_schedules(std::slice::from_ref(&s)).unwrap();
    backdate(&q, "hourly", 5 * period as i64);
    q.book.invalidate();
    q.fire_due_schedules().unwrap();
    assert_eq!(jobs(&mut q), 0, "due times hours ago are skipped");
    let state = &q.schedules(std::slice::from_ref(&s)).unwrap()[0];
    assert!(state.last_due_ms.is_some() && state.last_job.is_none());

    let t = every("tick", 1, Missed::Skip);
    q.set_schedules(&[s.clone(), t.clone()]).unwrap();
    q.pause_schedule(&t, true).unwrap();
    backdate(&q, "tick", 3);
    q.fire_due_schedules().unwrap();
    assert_eq!(jobs(&mut q), 0, "paused");
    assert!(q.schedules(std::slice::from_ref(&t)).unwrap()[0].paused);
    let ids = q.trigger_schedule(&t).unwrap();
    assert_eq!(ids.len(), 1, "a trigger publishes even when paused");
    assert_eq!(q.schedules(std::slice::from_ref(&t)).unwrap()[0].last_job, Some(ids[0].clone()));
    q.pause_schedule(&t, false).unwrap();
    assert_eq!(jobs(&mut q), 1);
}

/// A reload is a diff: an unchanged schedule keeps its state, a changed one counts afresh,
/// a removed one is forgotten.
#[test]
fn reload_keeps_unchanged_and_resets_changed() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
    q.bind(&crate::queue::sqlite::tests::bindings()[..1]).unwrap();
    let a = every("a", 60, Missed::Skip);
    let b = every("b", 60, Missed::Skip);
    q.set_schedules(&[a.clone(), b.clone()]).unwrap();
    backdate(&q, "a", 120);
    backdate(&q, "b", 120);
    let b2 = every("b", 30, Missed::Skip);
    q.set_schedules(&[a.clone(), b2.clone()]).unwrap();
    let rows = |q: &SqliteQueue, n: &str| read_row(&q.conn, n).unwrap();
    assert!(rows(&q, "a").unwrap().last_due_ms.is_some(), "unchanged keeps its state");
    assert!(rows(&q, "b").unwrap().last_due_ms.is_none(), "changed counts afresh");
    q.set_schedules(std::slice::from_ref(&b2)).unwrap();
    assert!(rows(&q, "a").is_none(), "removed is forgotten");
}
