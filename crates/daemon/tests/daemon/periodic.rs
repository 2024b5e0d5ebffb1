//! Periodic jobs end to end (issue 17): `[[schedule]]` fired by the real daemon on the real
//! SQLite queue — exactly once per due time across SIGKILLs, the verbs, reload as a diff.

use std::time::Duration;

use procyard_core::Signal;
use procyard_daemon::Client;
use procyard_daemon::queue::ScheduleStatus;

use crate::sandbox::Sandbox;

const SECS: fn(u64) -> Duration = Duration::from_secs;

const TASK: &str = r#"[[task]]
name = "tick"
routing_keys = ["tick.#"]
command = ["sh", "-c", "cat >> {out}/ticks"]
max_workers = 2
"#;

fn schedule(name: &str, every: &str, missed: &str) -> String {
    format!(
        "[[schedule]]\nname = \"{name}\"\nevery = \"{every}\"\nrouting_key = \"tick.{name}\"\npayload = \"{name}\"\nmissed = \"{missed}\"\n"
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The due times (ms) of the jobs schedule `name` published, oldest first, read from the
/// queue file (each fire stores its schedule and due time with the job).
fn due_times(sb: &Sandbox, name: &str) -> Vec<i64> {
    let conn = rusqlite::Connection::open(sb.path().join("q.db")).expect("open queue");
    conn.busy_timeout(SECS(10)).expect("busy timeout");
    let mut st = conn
        .prepare(
            "SELECT json_extract(headers, '$.due') FROM jobs
             WHERE json_extract(headers, '$.schedule') = ?1 ORDER BY seq",
        )
        .expect("prepare");
    let rows = st.query_map([name], |r| r.get::<_, String>(0)).expect("query");
    rows.map(|r| r.expect("row"))
        .filter_map(|due| due.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond())
        .collect()
}

fn state(sb: &Sandbox, name: &str) -> ScheduleStatus {
    let list = Client::new(sb.load_config()).schedules().expect("schedules");
    list.into_iter().find(|s| s.name == name).expect("schedule listed")
}

/// A daemon SIGKILLed again and again around due times (a `every = "1s"` schedule, `missed =
/// "all"`): every due time from the first to the last is published exactly once — no gap, no
/// double — because each due time is recorded in the transaction of its job.
#[test]
fn daemon_sched_periodic_exactly_once_across_sigkills() {
    let mut sb = Sandbox::new(&format!("{TASK}\n{}", schedule("beat", "1s", "all")));
    for round in 0..6 {
        sb.start();
        let before = due_times(&sb, "beat").len();
        sb.wait_until("a fire", SECS(20), |sb| due_times(sb, "beat").len() > before);
        if round % 2 == 1 {
            // The other half of the rounds die just after a fire, before the next.
            sb.wait_until("the next fire", SECS(20), |sb| due_times(sb, "beat").len() > before + 1);
        }
        sb.signal(Signal::KILL);
        sb.wait_exit(SECS(10)).expect("daemon died");
    }
    sb.start();
    let before = due_times(&sb, "beat").len();
    sb.wait_until("fires after the last restart", SECS(20), |sb| {
        due_times(sb, "beat").len() >= before + 2
    });
    let dues = due_times(&sb, "beat");
    let mut sorted = dues.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), dues.len(), "a due time fired twice: {dues:?}");
    for pair in sorted.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "a due time was skipped: {dues:?}");
    }
    assert!(dues.len() >= 8, "{dues:?}");
    sb.wait_until("every job ran", SECS(20), |sb| {
        let ran = std::fs::read_to_string(sb.out_dir().join("ticks")).unwrap_or_default();
        ran.matches("beat").count() >= dues.len()
    });
}

/// `schedules` lists a schedule with its next and last run and last job; `schedule pause`
/// stops it (persisted, shown), `trigger` fires it at once anyway, `resume` starts it again;
/// an unknown name is a clear error.
#[test]
fn daemon_sched_schedule_verbs() {
    let mut sb = Sandbox::new(&format!("{TASK}\n{}", schedule("beat", "1s", "skip")));
    sb.start();
    sb.wait_until("a fire", SECS(20), |sb| state(sb, "beat").last_job.is_some());
    let out = sb.cli(&["schedules", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: Vec<ScheduleStatus> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed[0].name, "beat");
    assert!(listed[0].next_ms.is_some() && listed[0].last_run_ms.is_some());
    let table = text(&sb.cli(&["schedules"]).stdout);
    assert!(table.contains("beat") && table.contains("every 1000ms in UTC"), "{table}");

    let out = sb.cli(&["schedule", "pause", "beat"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let paused = state(&sb, "beat");
    assert!(paused.paused && paused.next_ms.is_none());
    let fired = due_times(&sb, "beat").len();
    // A trigger publishes one job now, paused or not; it runs.
    let out = sb.cli(&["schedule", "trigger", "beat"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    sb.wait_until("the triggered job ran", SECS(20), |sb| {
        Client::new(sb.load_config())
            .job(&id)
            .is_ok_and(|j| j.state == procyard_daemon::queue::JobState::Done)
    });
    assert_eq!(state(&sb, "beat").last_job, Some(id));
    // Still paused: the due times that came during the trigger fired nothing.
    assert!(due_times(&sb, "beat").len() <= fired + 1, "at most the fire in flight at the pause");
    let out = sb.cli(&["schedule", "resume", "beat"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let resumed = due_times(&sb, "beat").len();
    sb.wait_until("fires again", SECS(20), |sb| due_times(sb, "beat").len() > resumed);

    let out = sb.cli(&["schedule", "trigger", "nope"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
}

/// HUP applies schedule changes as a diff: an unchanged schedule keeps its state, a new one
/// starts, a removed one stops firing.
#[test]
fn daemon_sched_hup_applies_schedules_as_a_diff() {
    let mut sb = Sandbox::new(&format!("{TASK}\n{}", schedule("keep", "1s", "skip")));
    sb.start();
    sb.wait_until("keep fires", SECS(20), |sb| state(sb, "keep").last_job.is_some());
    let kept = state(&sb, "keep");
    sb.write_config(
        "grace_period = \"5s\"\nkill_timeout = \"2s\"",
        &format!("{TASK}\n{}{}", schedule("keep", "1s", "skip"), schedule("fresh", "1s", "skip")),
    );
    sb.signal(Signal::HUP);
    sb.wait_until("fresh fires", SECS(20), |sb| !due_times(sb, "fresh").is_empty());
    let keep_now = state(&sb, "keep");
    assert!(keep_now.last_due_ms >= kept.last_due_ms, "an unchanged schedule kept its state");
    let keep_dues = due_times(&sb, "keep");
    let mut sorted = keep_dues.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), keep_dues.len(), "the reload fired nothing twice");

    sb.write_config(
        "grace_period = \"5s\"\nkill_timeout = \"2s\"",
        &format!("{TASK}\n{}", schedule("fresh", "1s", "skip")),
    );
    sb.signal(Signal::HUP);
    sb.wait_until("keep is gone", SECS(20), |sb| {
        Client::new(sb.load_config()).schedules().is_ok_and(|l| l.len() == 1)
            && sb.status().reloads >= 2
    });
    let after = due_times(&sb, "keep").len();
    let fresh = due_times(&sb, "fresh").len();
    sb.wait_until("fresh fires twice more", SECS(20), |sb| {
        due_times(sb, "fresh").len() >= fresh + 2
    });
    assert!(due_times(&sb, "keep").len() <= after + 1, "a removed schedule stops firing");
}
