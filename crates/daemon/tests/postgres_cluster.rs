//! Cluster-wide features of real `procyard-daemon` processes on one PostgreSQL schema (see
//! `common/pg.rs`): a `[[schedule]]` fired exactly once per due time by two daemons while
//! one of them is SIGKILLed around due times; the schedule verbs from a machine that runs no
//! daemon; the dashboard of one daemon showing the jobs another daemon ran.

#[path = "common/pg.rs"]
mod pg;
#[path = "common/ready.rs"]
mod ready;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pg::Schema;
use procyard_daemon::queue::ScheduleStatus;

/// How long a test waits for what should take a few seconds (a loaded machine is slow; a
/// hang still fails).
const DEADLINE: Duration = Duration::from_secs(60);

struct Node {
    config: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Writes daemon `i`'s config in `dir` (`extra` before the tasks).
    fn new(dir: &Path, schema: &Schema, i: usize, extra: &str, tasks: &str) -> Node {
        let config = dir.join(format!("d{i}.toml"));
        let text = format!(
            "{extra}\n[daemon]\ngrace_period = \"5s\"\ncontrol_socket = \"{sock}\"\n{queue}\n{tasks}",
            sock = dir.join(format!("d{i}.sock")).display(),
            queue = schema.toml(),
        );
        std::fs::write(&config, text).expect("write config");
        Node { config, child: None }
    }

    fn start(&mut self) {
        let mut child = ready::daemon_command(&self.config)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn procyard-daemon");
        let line = ready::ready_line(&mut child, Duration::from_secs(60)).unwrap_or_default();
        self.child = Some(child);
        assert!(line.starts_with("ready"), "not ready: {line:?}");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_procyard-daemon"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run procyard-daemon")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const TASK: &str = r#"[[task]]
name = "tick"
routing_keys = ["tick.#"]
command = ["sh", "-c", "cat > /dev/null"]
max_workers = 2
"#;

const BEAT: &str = r#"[[schedule]]
name = "beat"
every = "1s"
routing_key = "tick.beat"
payload = "beat"
missed = "all"
"#;

/// The due times (ms) of the jobs schedule `name` published, in publish order.
fn due_times(schema: &Schema, name: &str) -> Vec<i64> {
    let rows = schema
        .client()
        .query(
            &format!(
                "SELECT headers::jsonb ->> 'due' FROM {}.jobs
                 WHERE headers::jsonb ->> 'schedule' = $1 ORDER BY seq",
                schema.name
            ),
            &[&name],
        )
        .expect("read due times");
    rows.iter()
        .filter_map(|r| r.get::<_, String>(0).parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond())
        .collect()
}

/// Waits for published jobs (notifications on the schema's channel) until `done` holds.
fn wait_published(schema: &Schema, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    let mut listener = schema.client();
    listener.batch_execute(&format!("LISTEN {}_jobs", schema.name)).unwrap();
    while !done() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what}: not within {DEADLINE:?}");
        let mut n = listener.notifications();
        let _ = postgres::fallible_iterator::FallibleIterator::next(&mut n.timeout_iter(left));
    }
}

/// Two daemons run one `every = "1s"` schedule (`missed = "all"`) while one or the other is
/// SIGKILLed again and again, just after a fire or between fires, and started again: every
/// due time from the first to the last is published exactly once — no gap, no double —
/// because each due time is recorded in the transaction of its job, under the row's lock.
#[test]
fn pg_schedules_fire_once_with_two_daemons_across_sigkills() {
    let Some(schema) = Schema::new("pg_schedules_fire_once_with_two_daemons_across_sigkills")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tasks = format!("{TASK}\n{BEAT}");
    let mut nodes: Vec<Node> =
        (0..2).map(|i| Node::new(dir.path(), &schema, i, "", &tasks)).collect();
    for n in &mut nodes {
        n.start();
    }
    for round in 0..6 {
        let before = due_times(&schema, "beat").len();
        let want = before + 1 + round % 2;
        wait_published(&schema, "a fire", || due_times(&schema, "beat").len() >= want);
        let victim = &mut nodes[round % 2];
        victim.kill();
        victim.start();
    }
    let before = due_times(&schema, "beat").len();
    wait_published(&schema, "fires after the last restart", || {
        due_times(&schema, "beat").len() >= before + 2
    });
    for n in &mut nodes {
        n.stop();
    }
    let dues = due_times(&schema, "beat");
    let mut sorted = dues.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), dues.len(), "a due time fired twice: {dues:?}");
    for pair in sorted.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "a due time was skipped: {dues:?}");
    }
    assert!(dues.len() >= 8, "{dues:?}");
}

/// `schedules`, `schedule pause|trigger|resume` from a config whose daemon does not run: the
/// state is in the database, shared by every daemon; a pause stops the running daemon's
/// fires, a resume starts them again (it is told through a notification).
#[test]
fn pg_schedule_verbs_from_another_machine() {
    let Some(schema) = Schema::new("pg_schedule_verbs_from_another_machine") else { return };
    let dir = tempfile::tempdir().unwrap();
    let tasks = format!("{TASK}\n{}", BEAT.replace("\"all\"", "\"skip\""));
    let mut daemon = Node::new(dir.path(), &schema, 0, "", &tasks);
    let other = Node::new(dir.path(), &schema, 1, "", &tasks);
    daemon.start();
    wait_published(&schema, "a fire", || !due_times(&schema, "beat").is_empty());
    let list = |n: &Node| -> ScheduleStatus {
        let out = n.cli(&["schedules", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let l: Vec<ScheduleStatus> = serde_json::from_slice(&out.stdout).expect("json");
        l.into_iter().next().expect("listed")
    };
    let s = list(&other);
    assert!(s.last_job.is_some() && s.next_ms.is_some() && !s.paused, "{s:?}");

    let out = other.cli(&["schedule", "pause", "beat"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(list(&other).paused);
    let fired = due_times(&schema, "beat").len();
    let out = other.cli(&["schedule", "trigger", "beat"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let out = other.cli(&["wait", "--timeout", "60s", &id]);
    assert!(out.status.success(), "the triggered job ran: {}", text(&out.stderr));
    assert_eq!(list(&other).last_job, Some(id));
    assert!(due_times(&schema, "beat").len() <= fired + 1, "at most the fire in flight");

    let out = other.cli(&["schedule", "resume", "beat"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let resumed = due_times(&schema, "beat").len();
    wait_published(&schema, "fires again", || due_times(&schema, "beat").len() > resumed);
    daemon.stop();
}

/// The dashboard's API of daemon A lists and shows the jobs daemon B ran (A runs no task
/// of theirs): one history for the cluster.
#[test]
fn pg_dashboard_of_one_daemon_shows_all() {
    let Some(schema) = Schema::new("pg_dashboard_of_one_daemon_shows_all") else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let http = format!("[http]\nlisten = \"127.0.0.1:{port}\"\n");
    let idle = "[[task]]\nname = \"other\"\nrouting_keys = [\"other.#\"]\ncommand = [\"true\"]\n";
    let mut a = Node::new(dir.path(), &schema, 0, &http, idle);
    let mut b = Node::new(dir.path(), &schema, 1, "", TASK);
    a.start();
    b.start();
    let out = b.cli(&["publish", "--wait", "--timeout", "60s", "tick.x", "hello"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let out = b.cli(&["publish", "tick.y", "more"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            text(&out.stdout).trim().to_owned()
        })
        .collect();
    for id in &ids {
        let out = b.cli(&["wait", "--timeout", "60s", id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let base = format!("http://127.0.0.1:{port}");
    let get = |path: &str| -> serde_json::Value {
        let mut reply = ureq::get(&format!("{base}{path}")).call().expect("GET");
        serde_json::from_str(&reply.body_mut().read_to_string().expect("body")).expect("json")
    };
    let page = get("/api/jobs?task=tick");
    let listed: Vec<&str> =
        page["jobs"].as_array().expect("jobs").iter().filter_map(|j| j["id"].as_str()).collect();
    assert_eq!(listed.len(), 4, "{page}");
    for id in &ids {
        assert!(listed.contains(&id.as_str()), "{id} not in {page}");
        let job = get(&format!("/api/jobs/{id}"));
        assert_eq!(job["state"], "done", "{job}");
    }
    a.stop();
    b.stop();
}

/// The command line on three "machines" (three configs) at once: 48 `publish --unique k1
/// --json` processes, each with its own connection, queue one job; the others answer its id
/// with `"duplicate": true`. `publish --delay` shows `delayed` in `job`, and a daemon on
/// another machine runs both.
#[test]
fn pg_cli_unique_and_delay_from_three_machines() {
    let Some(schema) = Schema::new("pg_cli_unique_and_delay_from_three_machines") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> =
        (0..3).map(|i| Node::new(dir.path(), &schema, i, "", TASK)).collect();
    // The schema exists before the race (as after any daemon's first start).
    let out = nodes[0].cli(&["migrate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let outs: Vec<std::process::Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..48)
            .map(|i| {
                let node = &nodes[i % 3];
                s.spawn(move || node.cli(&["publish", "--unique", "k1", "--json", "tick.x", "u"]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("publisher")).collect()
    });
    let mut ids = Vec::new();
    let mut duplicates = 0;
    for out in &outs {
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        ids.push(v["jobs"][0].as_str().expect("id").to_owned());
        duplicates += usize::from(v["duplicate"] == serde_json::Value::Bool(true));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one job for one key: {ids:?}");
    assert_eq!(duplicates, 47);

    let out = nodes[1].cli(&["publish", "--delay", "1s", "--priority", "9", "tick.y", "later"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let later = text(&out.stdout).trim().to_owned();
    let job = nodes[2].cli(&["job", "--json", &later]);
    let rec: serde_json::Value = serde_json::from_slice(&job.stdout).expect("job --json");
    assert_eq!(rec["state"], "delayed", "{rec}");
    nodes[0].start();
    for id in [&ids[0], &later] {
        let out = nodes[2].cli(&["wait", "--timeout", "60s", id]);
        assert!(out.status.success(), "{id}: {}", text(&out.stderr));
    }
    nodes[0].stop();
}
