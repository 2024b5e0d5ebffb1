//! Scheduling on RabbitMQ with real `procyard-daemon` processes: a delayed job (`--delay`,
//! `--at`) waits in the broker's delay ladder and starts after its due time, never before;
//! with `[queue] priorities` and one busy worker, higher priorities start first; periodic jobs
//! fire once per due time from exactly one of two daemons, also when the firing one is
//! SIGKILLed around due times.
//!
//! Broker: `PROCYARD_AMQP_URL`, else `amqp://guest:guest@127.0.0.1:5672/%2f`; with no broker
//! the tests print a skip notice and return, except under `CI=true`, where they fail.

#[path = "common/dirwatch.rs"]
mod dirwatch;
#[path = "common/ready.rs"]
mod ready;
use dirwatch::DirWatch;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "common/broker.rs"]
mod broker;
use broker::{broker_url, wait_consumers};

/// How long a test waits for one thing to happen (generous: a loaded 2-core machine).
const DEADLINE: Duration = Duration::from_secs(90);

/// Daemons on one exchange, task `work` running `sh -c SCRIPT`; `{out}` in the script is
/// the file the daemon's jobs append to, `{dir}` the test's directory.
struct Cluster {
    dir: tempfile::TempDir,
    watch: DirWatch,
    url: String,
    exchange: String,
    workers: usize,
    script: String,
    extra: String,
    daemons: Vec<Option<Child>>,
    /// Each daemon's log (stderr) files, one per start.
    logs: Vec<Vec<PathBuf>>,
    /// The logs of the daemons killed.
    killed: Vec<PathBuf>,
}

impl Cluster {
    /// A cluster with no daemon yet; `extra` is appended to each config (`[[schedule]]`s),
    /// `queue` to its `[queue]` section.
    fn new(url: &str, workers: usize, script: &str, queue: &str, extra: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let exchange = format!("procyard-test-{}", uuid::Uuid::now_v7().simple());
        let watch = DirWatch::new(&[dir.path()]);
        let script = script.replace("{dir}", &dir.path().display().to_string());
        Cluster {
            dir,
            watch,
            url: url.to_owned(),
            exchange,
            workers,
            script,
            extra: format!("{queue}\n[[task]]\nname = \"work\"\n{extra}"),
            daemons: Vec::new(),
            logs: Vec::new(),
            killed: Vec::new(),
        }
    }

    fn config(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("d{i}.toml"))
    }

    fn out(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("out-{i}"))
    }

    /// Starts daemon `i` (a new one, or again after it was killed) and waits until it is
    /// ready and consumes.
    fn start(&mut self, i: usize) {
        let script = self.script.replace("{out}", &self.out(i).display().to_string());
        let (queue, rest) = self.extra.split_once("\n[[task]]\nname = \"work\"\n").unwrap();
        let text = format!(
            r#"[daemon]
grace_period = "5s"
kill_timeout = "2s"
control_socket = "{sock}"
[queue]
backend = "amqp"
url = "{url}"
exchange = "{exchange}"
queue_type = "classic"
{queue}
[[task]]
name = "work"
routing_keys = ["work.#"]
command = ["sh", "-c", {script:?}]
work_model = "oneshot"
max_workers = {workers}
max_attempts = 2
backoff_initial = "50ms"
{rest}
"#,
            sock = self.dir.path().join(format!("d{i}.sock")).display(),
            url = self.url,
            exchange = self.exchange,
            workers = self.workers,
        );
        std::fs::write(self.config(i), text).expect("write config");
        while self.logs.len() <= i {
            self.logs.push(Vec::new());
        }
        let log = self.dir.path().join(format!("log-{i}-{}", self.logs[i].len()));
        self.logs[i].push(log.clone());
        let mut child = ready::daemon_command(&self.config(i))
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn procyard-daemon");
        let line = ready::ready_line(&mut child, DEADLINE);
        if !line.as_ref().is_some_and(|l| l.starts_with("ready")) {
            eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        while self.daemons.len() <= i {
            self.daemons.push(None);
        }
        self.daemons[i] = Some(child);
        match line {
            Some(line) => assert!(line.starts_with("ready"), "daemon {i} not ready: {line:?}"),
            None => panic!("daemon {i} not ready within {DEADLINE:?}"),
        }
        let running = self.daemons.iter().flatten().count() as u32;
        wait_consumers(&self.url, &format!("{}.work", self.exchange), running, DEADLINE);
    }

    /// `procyard-daemon ARGS --config <daemon 0's config>`.
    fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_procyard-daemon"))
            .args(args)
            .arg("--config")
            .arg(self.config(0))
            .env("RUST_LOG", "warn")
            .output()
            .expect("run procyard-daemon");
        eprintln!(
            "procyard-daemon {args:?}: {:?}\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Every complete line the daemons' jobs wrote, daemon by daemon.
    fn lines(&self) -> Vec<String> {
        (0..self.daemons.len()).flat_map(|i| read_lines(&self.out(i))).collect()
    }

    /// Waits until the jobs wrote at least `n` lines; returns them.
    fn wait_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let lines = self.lines();
            if lines.len() >= n {
                return lines;
            }
            assert!(Instant::now() < deadline, "{} of {n} lines: {lines:?}", lines.len());
            self.watch.wait(Duration::from_millis(500));
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.daemons[i].take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            self.killed.extend(self.logs[i].last().cloned());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.daemons.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
        let mut cleanup = broker::Cleanup::task(&self.url, &self.exchange, "work", &[50, 100]);
        cleanup.queues.push(format!("{}.scheduler", self.exchange));
        cleanup.ladder = true;
        drop(cleanup);
    }
}

/// The complete lines of a file (a line still being appended is not counted yet).
fn read_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The start time (ms) a job with `payload` wrote (`<payload> <ms>` lines).
fn started(lines: &[String], payload: &str) -> u64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{payload} ")))
        .and_then(|ms| ms.trim().parse().ok())
        .unwrap_or_else(|| panic!("no start of {payload} in {lines:?}"))
}

const STAMP: &str = r#"p=$(cat); echo "$p $(date +%s%3N)" >> {out}"#;

#[test]
fn amqp_delayed_jobs_start_after_their_due_time_never_before() {
    let Some(url) = broker_url("amqp_delayed_jobs_start_after_their_due_time_never_before") else {
        return;
    };
    let mut cluster = Cluster::new(&url, 4, STAMP, "", "");
    cluster.start(0);
    let t0 = now_ms();
    assert!(cluster.cli(&["publish", "--delay", "3s", "work.a", "late"]).status.success());
    let at = jiff::Timestamp::from_millisecond((t0 + 2000) as i64).unwrap().to_string();
    assert!(cluster.cli(&["publish", "--at", &at, "work.a", "at"]).status.success());
    let t_soon = now_ms();
    assert!(cluster.cli(&["publish", "--delay", "300ms", "work.a", "soon"]).status.success());
    assert!(cluster.cli(&["publish", "work.a", "now"]).status.success());
    let lines = cluster.wait_lines(4);
    let (soon, at_ms, late) =
        (started(&lines, "soon"), started(&lines, "at"), started(&lines, "late"));
    eprintln!(
        "started {} ms, {} ms and {} ms after their due times",
        late - t0 - 3000,
        at_ms - t0 - 2000,
        soon - t_soon - 300
    );
    assert!(late >= t0 + 3000, "--delay 3s started {} ms after publish", late - t0);
    assert!(at_ms >= t0 + 2000, "--at started {} ms before its time", t0 + 2000 - at_ms);
    assert!(soon >= t_soon + 300, "--delay 300ms started after {} ms", soon - t_soon);
    assert!(started(&lines, "now") > 0);

    // Without [queue] priorities a priority is refused, and so is a unique key: clearly.
    let refused = cluster.cli(&["publish", "--priority", "9", "work.a", "x"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("priorities = true"));
    let refused = cluster.cli(&["publish", "--unique", "k", "work.a", "x"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--unique"));
    // A delayed job for a key no task receives is refused at publish (the ladder's end has
    // no mandatory check).
    let refused = cluster.cli(&["publish", "--delay", "1s", "nobody.x", "x"]);
    assert!(!refused.status.success());
}

#[test]
fn amqp_priorities_higher_first_while_the_worker_is_busy() {
    let Some(url) = broker_url("amqp_priorities_higher_first_while_the_worker_is_busy") else {
        return;
    };
    // The first job holds the only worker until the test writes to a FIFO.
    let script =
        r#"p=$(cat); echo "$p" >> {out}; if [ "$p" = block ]; then read x < {dir}/gate; fi"#;
    let mut cluster = Cluster::new(&url, 1, script, "priorities = true", "");
    let gate = cluster.dir.path().join("gate");
    assert!(Command::new("mkfifo").arg(&gate).status().unwrap().success());
    cluster.start(0);
    assert!(cluster.cli(&["publish", "work.a", "block"]).status.success());
    cluster.wait_lines(1);
    for (payload, priority) in [("low", "1"), ("mid", "5"), ("high", "9"), ("low2", "1")] {
        let out = cluster.cli(&["publish", "--priority", priority, "work.a", payload]);
        assert!(out.status.success());
    }
    assert!(cluster.cli(&["publish", "work.a", "default"]).status.success());
    std::fs::OpenOptions::new().write(true).open(&gate).unwrap().write_all(b"go\n").unwrap();
    let lines = cluster.wait_lines(6);
    assert_eq!(lines, ["block", "high", "mid", "default", "low", "low2"]);
}

/// The due time (ms) a schedule's job id carries (a UUID v7 stamped with it).
fn due_of(id: &str) -> u64 {
    let ts = uuid::Uuid::parse_str(id.trim()).expect("job id").get_timestamp().expect("v7");
    let (s, ns) = ts.to_unix();
    s * 1000 + u64::from(ns / 1_000_000)
}

/// Distinct job ids per due time (a job run again after its daemon died keeps its id; a due
/// time fired twice has two).
fn fires(lines: &[String]) -> std::collections::BTreeMap<u64, std::collections::BTreeSet<String>> {
    let mut by_due = std::collections::BTreeMap::<u64, std::collections::BTreeSet<String>>::new();
    for line in lines {
        let id = line.split(' ').next().unwrap_or_default();
        by_due.entry(due_of(id)).or_default().insert(id.to_owned());
    }
    by_due
}

const TICK: &str = r#"
[[schedule]]
name = "tick"
every = "1s"
routing_key = "work.tick"
payload = "t"
missed = "all"
"#;

#[test]
fn amqp_schedule_fires_each_due_time_once_across_sigkilled_schedulers() {
    let Some(url) =
        broker_url("amqp_schedule_fires_each_due_time_once_across_sigkilled_schedulers")
    else {
        return;
    };
    let script = r#"cat >/dev/null; echo "$PROCYARD_JOB_ID $(date +%s%3N)" >> {out}"#;
    let mut cluster = Cluster::new(&url, 4, script, "", TICK);
    cluster.start(0);
    cluster.start(1);
    cluster.wait_lines(2);
    // Kill one daemon in turn, at a different moment of the second each time: after the
    // first kill the survivor holds the schedules, so each later kill hits the scheduler.
    for round in 0..6u64 {
        let seen = cluster.lines().len();
        cluster.wait_lines(seen + 1);
        // Pacing, not waiting for an event: where in the second the kill falls.
        std::thread::sleep(Duration::from_millis(round * 170 % 1000));
        let victim = (round % 2) as usize;
        cluster.kill(victim);
        cluster.start(victim);
    }
    // Every due time from the first to the last seen has run, each fired once.
    let deadline = Instant::now() + DEADLINE;
    let settled = fires(&cluster.lines()).keys().last().copied().unwrap() + 3000;
    let by_due = loop {
        let by_due = fires(&cluster.lines());
        let (first, last) = (*by_due.keys().next().unwrap(), *by_due.keys().last().unwrap());
        let gaps: Vec<u64> =
            (first..=last).step_by(1000).filter(|d| !by_due.contains_key(d)).collect();
        if last >= settled && gaps.is_empty() {
            break by_due;
        }
        assert!(Instant::now() < deadline, "due times never run: {gaps:?} (up to {last})");
        cluster.watch.wait(Duration::from_millis(500));
    };
    let twice: Vec<_> = by_due.iter().filter(|(_, ids)| ids.len() > 1).collect();
    // How late each due time's first run started (a figure, not a check: the machine is shared).
    let mut late: Vec<u64> = by_due
        .keys()
        .filter_map(|due| {
            cluster
                .lines()
                .iter()
                .filter(|l| fires(std::slice::from_ref(l)).contains_key(due))
                .filter_map(|l| l.split(' ').nth(1)?.parse::<u64>().ok())
                .min()
                .map(|ran| ran.saturating_sub(*due))
        })
        .collect();
    late.sort_unstable();
    eprintln!(
        "{} due times, {} runs, fired twice: {twice:?}; start after due: median {} ms, max {} ms",
        by_due.len(),
        cluster.lines().len(),
        late[late.len() / 2],
        late[late.len() - 1]
    );
    assert!(twice.is_empty(), "due times fired twice: {twice:?}");
    assert!(by_due.len() >= 8);
    // The daemon killed was the one firing (its log says it fired) in most rounds.
    let schedulers = cluster
        .killed
        .iter()
        .filter(|log| std::fs::read_to_string(log).unwrap_or_default().contains("schedule fired"))
        .count();
    eprintln!("{schedulers} of {} daemons killed were firing the schedules", cluster.killed.len());
    assert!(schedulers >= 3, "only {schedulers} kills hit the daemon firing the schedules");

    // The verbs reach the daemon that holds the schedules.
    let out = cluster.cli(&["schedules", "--json"]);
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "tick");
    assert_eq!(list[0]["paused"], false);
    assert!(list[0]["last_job"].is_string(), "{list}");
    assert!(cluster.cli(&["schedule", "pause", "tick"]).status.success());
    let list: serde_json::Value =
        serde_json::from_slice(&cluster.cli(&["schedules", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["paused"], true, "{list}");
    assert!(list[0]["next_ms"].is_null());
    let out = cluster.cli(&["schedule", "trigger", "tick"]);
    assert!(out.status.success());
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let deadline = Instant::now() + DEADLINE;
    while !cluster.lines().iter().any(|l| l.starts_with(&id)) {
        assert!(Instant::now() < deadline, "the triggered job {id} never ran");
        cluster.watch.wait(Duration::from_millis(500));
    }
    assert!(cluster.cli(&["schedule", "resume", "tick"]).status.success());
    let bad = cluster.cli(&["schedule", "trigger", "nope"]);
    assert!(!bad.status.success());
}

#[test]
fn amqp_limits_hold_per_daemon_one_per_key_in_order_and_the_rate() {
    let Some(url) = broker_url("amqp_limits_hold_per_daemon_one_per_key_in_order_and_the_rate")
    else {
        return;
    };
    // A job of a key holds a lock directory while it runs: a second one at once says so.
    let script = r#"p=$(cat); k=${p%?}; mkdir {dir}/lock-$k 2>/dev/null || echo overlap >> {out}; echo "$p $(date +%s%3N)" >> {out}; sleep 0.1; rmdir {dir}/lock-$k"#;
    let limits = "concurrency_key = \"header:tenant\"\nmax_per_key = 1\nrate_limit = \"3/s\"\n";
    let mut cluster = Cluster::new(&url, 4, script, "", limits);
    cluster.start(0);
    // Payload `a1` is a job of key `a` (the header carries the key; the script takes it from
    // the payload's first letter).
    let published = ["a1", "a2", "a3", "a4", "a5", "a6"];
    for p in &published {
        let header = format!("tenant={}", &p[..1]);
        assert!(cluster.cli(&["publish", "--header", &header, "work.x", p]).status.success());
    }
    let lines = cluster.wait_lines(published.len());
    assert!(!lines.iter().any(|l| l == "overlap"), "two jobs of one key ran at once: {lines:?}");
    let order: Vec<&str> = lines.iter().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(order, published, "one key runs in publish order");
    let starts: Vec<u64> =
        lines.iter().map(|l| l.split(' ').nth(1).unwrap().parse().unwrap()).collect();
    // 3 tokens at once, then one every 333 ms: the sixth token is taken a second after the
    // first. The stamps are the jobs' own, after their spawn, which lags its token by a few ms
    // or more on a loaded machine: 50 ms of slack (the six run back to back in ~0.7 s without
    // the rate).
    assert!(starts[5] >= starts[0] + 950, "rate 3/s: 6 starts within {} ms", starts[5] - starts[0]);
}

/// What the scheduler's exactly-once rests on, checked on the broker: a fire published in
/// a transaction that is not committed when the scheduler's connection dies (a SIGKILL
/// between publishing the job and recording the fire) is void — no job, and the old state
/// goes back to the queue for the next scheduler, which fires that due time once.
#[test]
fn amqp_a_fire_not_committed_when_the_scheduler_dies_is_void() {
    let Some(url) = broker_url("amqp_a_fire_not_committed_when_the_scheduler_dies_is_void") else {
        return;
    };
    use lapin::options::*;
    use lapin::types::{AMQPValue, FieldTable};
    let exchange = format!("procyard-test-{}", uuid::Uuid::now_v7().simple());
    let mut cleanup = broker::Cleanup::task(&url, &exchange, "work", &[]);
    cleanup.queues.push(format!("{exchange}.scheduler"));
    let (work, sched) = (format!("{exchange}.work"), format!("{exchange}.scheduler"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let conn = lapin::Connection::connect(&url, Default::default()).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(
            exchange.clone().into(),
            lapin::ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
        let q = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(work.clone().into(), q, FieldTable::default()).await.unwrap();
        ch.queue_bind(
            work.clone().into(),
            exchange.clone().into(),
            "work.#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut sac = FieldTable::default();
        sac.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        ch.queue_declare(sched.clone().into(), q, sac).await.unwrap();
        let old = br#"{"kind":"state","schedules":{}}"#;
        ch.basic_publish(
            "".into(),
            sched.clone().into(),
            Default::default(),
            old,
            Default::default(),
        )
        .await
        .unwrap();

        // The scheduler: takes the state, publishes a fire and a new state, acknowledges the
        // old one, and dies before the commit.
        let doomed = lapin::Connection::connect(&url, Default::default()).await.unwrap();
        let tx = doomed.create_channel().await.unwrap();
        tx.tx_select().await.unwrap();
        let got =
            tx.basic_get(sched.clone().into(), BasicGetOptions { no_ack: false }).await.unwrap();
        let state = got.expect("the state message");
        tx.basic_publish(
            exchange.clone().into(),
            "work.tick".into(),
            Default::default(),
            b"fire",
            Default::default(),
        )
        .await
        .unwrap();
        tx.basic_publish(
            "".into(),
            sched.clone().into(),
            Default::default(),
            b"{\"kind\":\"state\",\"schedules\":{\"new\":{}}}",
            Default::default(),
        )
        .await
        .unwrap();
        state.delivery.acker.ack(Default::default()).await.unwrap();
        // The connection dies with the transaction open (as a SIGKILLed daemon's does).
        let _ = doomed.close(320, "killed".into()).await;

        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let jobs =
            ch.queue_declare(work.clone().into(), passive, FieldTable::default()).await.unwrap();
        assert_eq!(jobs.message_count(), 0, "an uncommitted fire published a job");
        let back =
            ch.basic_get(sched.clone().into(), BasicGetOptions { no_ack: true }).await.unwrap();
        assert_eq!(back.expect("the old state is back").delivery.data, old);
        let more =
            ch.basic_get(sched.clone().into(), BasicGetOptions { no_ack: true }).await.unwrap();
        assert!(more.is_none(), "the uncommitted new state was published");
        conn.close(200, "".into()).await.unwrap();
    });
}
