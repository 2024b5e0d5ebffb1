//! Scheduling end to end (issue 17): delayed jobs, priorities and unique keys through the
//! real binary, real worker processes and the real SQLite queue.

use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use procyard_daemon::Client;
use procyard_daemon::queue::{JobState, PublishOptions};

use crate::sandbox::Sandbox;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn client(sb: &Sandbox) -> Client {
    Client::new(sb.load_config())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A oneshot task that appends its payload and a newline to out/order.
fn ordering_task(max_workers: usize) -> String {
    format!(
        r#"[[task]]
name = "order"
routing_keys = ["order.#"]
command = ["sh", "-c", "cat >> {{out}}/order; echo >> {{out}}/order"]
max_workers = {max_workers}
"#
    )
}

fn order(sb: &Sandbox) -> Vec<String> {
    let text = std::fs::read_to_string(sb.out_dir().join("order")).unwrap_or_default();
    text.lines().map(str::to_owned).collect()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// A job published with --delay waits as `delayed` (in `job` and in `status`), then starts
/// by itself once due — never before — with no publish or poke to wake the daemon.
#[test]
fn daemon_sched_delayed_job_waits_then_starts_when_due() {
    let mut sb = Sandbox::new(&ordering_task(1));
    sb.start();
    let before = now_ms();
    let out = sb.cli(&["publish", "--delay", "1500ms", "order.x", "late"]);
    let id = ok(&out).trim().to_owned();
    let mut c = client(&sb);
    assert_eq!(c.job(&id).expect("job").state, JobState::Delayed);
    let status = sb.status();
    let g = status.groups.iter().find(|g| g.name == "order").expect("group");
    assert_eq!(g.queue.as_ref().and_then(|q| q.delayed), Some(1), "status shows it delayed");
    sb.wait_until("the delayed job ran", SECS(20), |sb| order(sb) == ["late"]);
    sb.wait_until("the delayed job done", SECS(20), |_| {
        c.job(&id).is_ok_and(|j| j.state == JobState::Done)
    });
    let job = c.job(&id).expect("job");
    let started = job.attempts[0].started_ms.expect("started");
    assert!(started >= before + 1500, "started {} ms after publish", started - before);
    assert_eq!(job.state, JobState::Done);
}

/// With one worker, jobs start highest priority first and in publish order within one
/// priority; a priority of 10 is refused, naming the option.
#[test]
fn daemon_sched_priorities_order_jobs_within_a_task() {
    let mut sb = Sandbox::new(&ordering_task(1));
    for (payload, priority) in [("low", "1"), ("a", "5"), ("high", "9"), ("b", "5"), ("c", "5")] {
        ok(&sb.cli(&["publish", "--priority", priority, "order.x", payload]));
    }
    let out = sb.cli(&["publish", "--priority", "10", "order.x", "nope"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--priority"), "{}", text(&out.stderr));
    sb.start();
    sb.wait_until("five jobs ran", SECS(20), |sb| order(sb).len() == 5);
    assert_eq!(order(&sb), ["high", "a", "b", "c", "low"]);
}

/// 50 publishers racing with one unique key make one job; every other publish answers the
/// existing id with `"duplicate": true`. Once that job is done the key is free again.
#[test]
fn daemon_sched_unique_key_under_fifty_concurrent_publishes() {
    let mut sb = Sandbox::new(&ordering_task(1));
    // The queue file exists before the race (50 processes creating a new file at once can
    // meet SQLite's lock while one of them turns on WAL: a separate matter, see the notes).
    assert!(client(&sb).jobs(&Default::default()).expect("jobs").is_empty());
    let outs: Vec<Output> = std::thread::scope(|s| {
        let sb = &sb;
        let handles: Vec<_> = (0..50)
            .map(|_| {
                s.spawn(move || sb.cli(&["publish", "--unique", "k1", "--json", "order.x", "u"]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("publisher")).collect()
    });
    let mut ids = Vec::new();
    let mut duplicates = 0;
    for out in &outs {
        let v: serde_json::Value = serde_json::from_str(&ok(out)).expect("json");
        ids.push(v["jobs"][0].as_str().expect("id").to_owned());
        duplicates += usize::from(v["duplicate"] == serde_json::Value::Bool(true));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one job for one key: {ids:?}");
    assert_eq!(duplicates, 49);
    let jobs = client(&sb).jobs(&Default::default()).expect("jobs");
    assert_eq!(jobs.len(), 1);
    sb.start();
    sb.wait_until("the job ran", SECS(20), |sb| order(sb) == ["u"]);
    sb.wait_until("the job done", SECS(20), |sb| {
        client(sb).job(&ids[0]).is_ok_and(|j| j.state == JobState::Done)
    });
    let again = client(&sb)
        .publish_with("order.x", b"v", &PublishOptions::new().unique("k1"))
        .expect("publish");
    assert!(!again.is_duplicate() && again.ids[0] != ids[0], "a done job frees its key");
}

/// `--at` in the past runs now and says so; a malformed `--at` is a clear error.
#[test]
fn daemon_sched_at_in_the_past_runs_now() {
    let mut sb = Sandbox::new(&ordering_task(1));
    sb.start();
    let out = sb.cli(&["publish", "--at", "2020-01-01T00:00:00Z", "order.x", "past"]);
    ok(&out);
    assert!(text(&out.stderr).contains("in the past"), "{}", text(&out.stderr));
    sb.wait_until("the job ran", SECS(20), |sb| order(sb) == ["past"]);
    let out = sb.cli(&["publish", "--at", "soon", "order.x", "x"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--at"), "{}", text(&out.stderr));
}

/// `rate_limit = "5/s"`: 15 jobs published at once start at most 5 per second (a burst of 5,
/// then one every 200 ms), wait `ready` meanwhile (shown rate-limited in `status`), and all
/// run; a rate of 0 is a config error naming the field.
#[test]
fn daemon_sched_rate_limit_spaces_starts() {
    let task = "[[task]]\nname = \"order\"\nrouting_keys = [\"order.#\"]\ncommand = [\"sh\", \"-c\", \"cat >> {out}/order; echo >> {out}/order\"]\nmax_workers = 8\nrate_limit = \"5/s\"\n";
    let mut sb = Sandbox::new(task);
    sb.start();
    let ids = sb.publish_many("order.x", (0..15).map(|i| format!("r{i}").into_bytes()));
    sb.wait_until("rate-limited in status", SECS(20), |sb| {
        let s = sb.status();
        let g = s.groups.iter().find(|g| g.name == "order").expect("group");
        g.queue.as_ref().is_some_and(|q| q.rate_limited) || order(sb).len() == 15
    });
    sb.wait_until("every job ran", SECS(30), |sb| order(sb).len() == 15);
    let mut c = client(&sb);
    sb.wait_until("every job recorded done", SECS(30), |_| {
        ids.iter().all(|id| c.job(id).is_ok_and(|j| j.state == JobState::Done))
    });
    let mut starts: Vec<i64> = ids
        .iter()
        .map(|id| c.job(id).expect("job").attempts[0].started_ms.expect("started"))
        .collect();
    starts.sort();
    // Any 1-second window of claims holds at most 5 tokens plus the 5 refilled within it. A
    // start time is stamped after the spawn, which on a loaded machine lags its token by up to
    // a few hundred ms, so two of the window's neighbours may slide in: ≤ 12. Without the limit
    // all 15 start within a few ms of each other.
    for (i, s) in starts.iter().enumerate() {
        let in_window = starts[i..].iter().take_while(|t| **t < s + 1000).count();
        assert!(in_window <= 12, "{in_window} starts within a second: {starts:?}");
    }
    assert!(starts[14] - starts[0] >= 1500, "15 starts at 5/s take ≥ 2 s: {starts:?}");
    sb.write_config("", &task.replace("5/s", "0/s"));
    let out = sb.cli(&["check-config"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("task[0].rate_limit"), "{}", text(&out.stderr));
}

/// `concurrency_key = "header:tenant"`, `max_per_key = 1`: with 4 workers, jobs of one tenant
/// never overlap and run in publish order, while another tenant's run beside them.
#[test]
fn daemon_sched_one_at_a_time_per_key_in_publish_order() {
    let task = "[[task]]\nname = \"order\"\nrouting_keys = [\"order.#\"]\ncommand = [\"sh\", \"-c\", \"p=$(cat); echo start $p >> {out}/order; sleep 0.05; echo end $p >> {out}/order\"]\nmax_workers = 4\nconcurrency_key = \"header:tenant\"\n";
    let mut sb = Sandbox::new(task);
    let mut c = client(&sb);
    for i in 0..6 {
        for tenant in ["a", "b"] {
            let opts = PublishOptions::new().header("tenant", tenant);
            c.publish_with("order.x", format!("{tenant}{i}").as_bytes(), &opts).expect("publish");
        }
    }
    sb.start();
    sb.wait_until("every job ran", SECS(30), |sb| order(sb).len() == 24);
    let lines = order(&sb);
    for tenant in ["a", "b"] {
        let mine: Vec<&String> =
            lines.iter().filter(|l| l.contains(&format!(" {tenant}"))).collect();
        let expected: Vec<String> = (0..6)
            .flat_map(|i| [format!("start {tenant}{i}"), format!("end {tenant}{i}")])
            .collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "tenant {tenant}: {lines:?}");
    }
}
