//! Jobs on RabbitMQ as a user follows them, with real `procyard-daemon` processes sharing one
//! broker: `publish --wait` answered through the reply queue by whichever of two daemons ran
//! the job; job events seen on `<exchange>.events` by a consumer bound to `#` (each job's
//! life, and every event of a 200-job drain, started then done, once each); `cancel` across
//! two daemons (a job running on either, and one still queued); `job` and `logs` from the
//! local history of the daemon that ran the job (and a clear refusal from the other); bad ids.
//!
//! Broker: `PROCYARD_AMQP_URL`, else `amqp://guest:guest@127.0.0.1:5672/%2f`; with no broker
//! the tests print a skip notice and return, except under `CI=true`, where they fail.

#[path = "common/dirwatch.rs"]
mod dirwatch;
#[path = "common/ready.rs"]
mod ready;
use dirwatch::DirWatch;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

#[path = "common/broker.rs"]
mod broker;
use broker::{broker_url, wait_consumers};
use serde_json::Value;

/// How long a test waits for one thing to happen (generous: a loaded 2-core machine).
const DEADLINE: Duration = Duration::from_secs(60);

/// Daemons on one exchange, task `work` running `sh -c SCRIPT` with at most `workers` at once.
struct Cluster {
    dir: tempfile::TempDir,
    url: String,
    exchange: String,
    daemons: Vec<Option<Child>>,
}

impl Cluster {
    fn start(url: &str, n: usize, workers: usize, script: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let exchange = format!("procyard-test-{}", uuid::Uuid::now_v7().simple());
        let mut cluster = Cluster { dir, url: url.to_owned(), exchange, daemons: Vec::new() };
        for i in 0..n {
            let config = cluster.write_config(i, workers, script);
            let mut child = ready::daemon_command(&config)
                .env("RUST_LOG", "warn")
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn procyard-daemon");
            let line = ready::ready_line(&mut child, DEADLINE);
            cluster.daemons.push(Some(child));
            match line {
                Some(line) => assert!(line.starts_with("ready"), "daemon {i} not ready: {line:?}"),
                None => panic!("daemon {i} not ready within {DEADLINE:?}"),
            }
        }
        let queue = format!("{}.work", cluster.exchange);
        wait_consumers(url, &queue, n as u32, DEADLINE);
        cluster
    }

    fn config(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("d{i}.toml"))
    }

    fn write_config(&self, i: usize, workers: usize, script: &str) -> PathBuf {
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
[[task]]
name = "work"
routing_keys = ["work.#"]
command = ["sh", "-c", {script:?}]
work_model = "oneshot"
max_workers = {workers}
max_attempts = 2
backoff_initial = "50ms"
"#,
            sock = self.dir.path().join(format!("d{i}.sock")).display(),
            url = self.url,
            exchange = self.exchange,
        );
        let path = self.config(i);
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// `procyard-daemon ARGS --config <daemon i's config>`.
    fn cli(&self, i: usize, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_procyard-daemon"))
            .args(args)
            .arg("--config")
            .arg(self.config(i))
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

    /// Which daemon has the id `host/pid` in events.
    fn index_of(&self, daemon: &str) -> usize {
        let pid: u32 = daemon.rsplit('/').next().and_then(|p| p.parse().ok()).expect("pid");
        self.daemons
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.id() == pid))
            .unwrap_or_else(|| panic!("no daemon {daemon}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.daemons.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
        drop(broker::Cleanup::task(&self.url, &self.exchange, "work", &[50, 100]));
    }
}

/// A consumer of `<exchange>.events` bound to `#`: every job event, as JSON, one by one (a
/// message holds an array of events of its routing key, a cancel request one object).
struct Tap {
    rx: Receiver<Value>,
    /// Messages received so far.
    messages: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Tap {
    fn new(url: &str, exchange: &str) -> Tap {
        let (tx, rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (url, events) = (url.to_owned(), format!("{exchange}.events"));
        let messages = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&messages);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                use lapin::options::*;
                let conn = lapin::Connection::connect(&url, Default::default()).await.unwrap();
                let ch = conn.create_channel().await.unwrap();
                let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
                ch.exchange_declare(
                    events.clone().into(),
                    lapin::ExchangeKind::Topic,
                    durable,
                    Default::default(),
                )
                .await
                .unwrap();
                let excl = QueueDeclareOptions { exclusive: true, ..Default::default() };
                let q = ch.queue_declare("".into(), excl, Default::default()).await.unwrap();
                let name = q.name().as_str().to_owned();
                ch.queue_bind(
                    name.clone().into(),
                    events.into(),
                    "#".into(),
                    Default::default(),
                    Default::default(),
                )
                .await
                .unwrap();
                let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
                let consumer = ch
                    .basic_consume(name.into(), "tap".into(), no_ack, Default::default())
                    .await
                    .unwrap();
                let _ = ready_tx.send(());
                let mut consumer = std::pin::pin!(consumer);
                loop {
                    let next = std::future::poll_fn(|cx| {
                        futures_core::Stream::poll_next(consumer.as_mut(), cx)
                    })
                    .await;
                    let Some(Ok(d)) = next else { return };
                    let v: Value = serde_json::from_slice(&d.data).expect("event is JSON");
                    let key = d.routing_key.as_str().to_owned();
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Job events always come as an array (even of one); only a cancel
                    // request is a lone object.
                    let events = match v {
                        Value::Array(many) => many,
                        one => {
                            assert_eq!(one["event"], "cancel", "a lone object: {one}");
                            vec![one]
                        }
                    };
                    for v in events {
                        let event = v["event"].as_str().unwrap_or("?");
                        assert!(key.ends_with(&format!(".{event}")), "{event} sent as {key}");
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            });
        });
        ready_rx.recv_timeout(DEADLINE).expect("tap ready");
        Tap { rx, messages }
    }

    /// The next event for which `pick` holds, within [`DEADLINE`] (panics otherwise); the
    /// events passed over are returned too, in order.
    fn until(&self, mut pick: impl FnMut(&Value) -> bool) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + DEADLINE;
        let mut passed = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if pick(&v) => return (v, passed),
                Ok(v) => passed.push(v),
                Err(RecvTimeoutError::Timeout) => panic!("no such event; saw {passed:#?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("the tap stopped"),
            }
        }
    }
}

fn is(v: &Value, id: &str, event: &str) -> bool {
    v["id"] == id && v["event"] == event
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `publish --wait` exits with the job's status and prints its record (with its output) from
/// the reply queue, whichever of the two daemons ran it: done → 0, dead → 1.
#[test]
fn amqp_publish_wait_answers_through_the_reply_queue_with_two_daemons() {
    let Some(url) = broker_url("amqp_publish_wait_answers_through_the_reply_queue") else {
        return;
    };
    let script = r#"p=$(cat); echo "ran $p"; [ "$p" != fail ] || exit 3"#;
    let cluster = Cluster::start(&url, 2, 2, script);
    for (i, payload) in ["hello", "world"].into_iter().enumerate() {
        let out =
            cluster.cli(i, &["publish", "--wait", "--json", "--timeout", "60s", "work.a", payload]);
        assert_eq!(out.status.code(), Some(0));
        let record: Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON record");
        assert_eq!(record["state"], "done");
        assert_eq!(record["task"], "work");
        assert_eq!(record["attempts"][0]["stdout"]["bytes"], format!("ran {payload}\n"));
    }
    // Exit code 3 twice (max_attempts = 2): dead-lettered, and `--wait` says so.
    let out = cluster.cli(0, &["publish", "--wait", "--timeout", "60s", "work.a", "fail"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("\tdead (exit code 3)"), "{}", stdout(&out));
}

/// A consumer bound to `#` on the events exchange sees each job's life: started and done; a
/// failing one started, failed, retried, started, failed, dead — with id, task, attempt,
/// daemon, time and outcome.
#[test]
fn amqp_job_events_are_seen_on_the_events_exchange() {
    let Some(url) = broker_url("amqp_job_events_are_seen_on_the_events_exchange") else {
        return;
    };
    let cluster = Cluster::start(&url, 2, 2, r#"[ "$(cat)" = ok ] || exit 3"#);
    let tap = Tap::new(&url, &cluster.exchange);
    let out = cluster.cli(0, &["publish", "work.a", "ok"]);
    let ok = stdout(&out).trim().to_owned();
    let out = cluster.cli(1, &["publish", "work.a", "bad"]);
    let bad = stdout(&out).trim().to_owned();
    // Everything until both jobs have ended, then each job's events in order.
    let mut all = Vec::new();
    let (last, passed) = tap.until(|v| {
        all.push(v.clone());
        let seen = |id: &str, e: &str| all.iter().any(|v| is(v, id, e));
        seen(&ok, "done") && seen(&bad, "dead")
    });
    drop((last, passed));
    let life = |id: &str| -> Vec<Value> { all.iter().filter(|v| v["id"] == id).cloned().collect() };
    let names = |l: &[Value]| -> Vec<String> {
        l.iter().map(|v| v["event"].as_str().unwrap_or("").to_owned()).collect()
    };
    let ok_life = life(&ok);
    assert_eq!(names(&ok_life), ["started", "done"]);
    let started = &ok_life[0];
    assert_eq!((started["task"].as_str(), started["attempt"].as_u64()), (Some("work"), Some(1)));
    assert!(started["time_ms"].as_i64().unwrap() > 0);
    cluster.index_of(started["daemon"].as_str().unwrap());
    let bad_life = life(&bad);
    assert_eq!(names(&bad_life), ["started", "failed", "retried", "started", "failed", "dead"]);
    assert_eq!(bad_life[1]["outcome"], "exit code 3");
    assert_eq!(bad_life[3]["attempt"], 2);
    assert_eq!(bad_life[5]["attempt"], 2);
}

/// A drain's events all reach a listener: with jobs ending and starting in the same loop turns
/// and a few milliseconds' events gathered into one message per run of a routing key, each of
/// 200 jobs is seen started once and then done once, and fewer messages than events came.
#[test]
fn amqp_every_event_of_a_drain_reaches_the_events_exchange_in_order() {
    let Some(url) = broker_url("amqp_every_event_of_a_drain_reaches_the_events_exchange") else {
        return;
    };
    let cluster = Cluster::start(&url, 2, 2, "cat >/dev/null");
    let tap = Tap::new(&url, &cluster.exchange);
    let ids = publish_classic(&url, &cluster.exchange, 200);
    let mut life: std::collections::HashMap<String, Vec<String>> = Default::default();
    let (mut done, mut events) = (0, 0);
    tap.until(|v| {
        let event = v["event"].as_str().unwrap_or("").to_owned();
        done += usize::from(event == "done");
        events += 1;
        life.entry(v["id"].as_str().unwrap_or("").to_owned()).or_default().push(event);
        done == ids.len()
    });
    for id in &ids {
        assert_eq!(life.get(id).map(|l| l.join(" ")).as_deref(), Some("started done"), "{id}");
    }
    assert_eq!(life.len(), ids.len(), "events of jobs not published here: {life:?}");
    let messages = tap.messages.load(std::sync::atomic::Ordering::Relaxed);
    assert!(messages < events, "{events} events came in {messages} messages");
}

/// Publishes `job0` … `job<n-1>` to `work.job` on the classic queues of `exchange` through the
/// library's client; returns their ids.
fn publish_classic(url: &str, exchange: &str, n: usize) -> Vec<String> {
    use procyard_daemon::queue::{self, AmqpQueueType, BackendKind, OpenMode, QueueConfig};
    let config = QueueConfig {
        backend: BackendKind::Amqp,
        path: PathBuf::new(),
        url: Some(url.to_owned()),
        exchange: exchange.to_owned(),
        queue_type: AmqpQueueType::Classic,
        events: true,
        priorities: false,
        schema: "procyard".into(),
        durability: Default::default(),
    };
    let mut client = queue::open(&config, OpenMode::Client).expect("client");
    let mut ids = Vec::new();
    for i in 0..n {
        ids.extend(client.publish("work.job", format!("job{i}").as_bytes()).expect("publish"));
    }
    client.shutdown().expect("shutdown");
    ids
}

/// `cancel` from either daemon's config reaches the daemon running the job (stopped, ended
/// `cancelled`, never retried) and the one that receives a queued job later (dropped, never
/// started); `wait` on a job published elsewhere hears its end through the events exchange.
#[test]
fn amqp_cancel_across_two_daemons_running_and_queued() {
    let Some(url) = broker_url("amqp_cancel_across_two_daemons_running_and_queued") else {
        return;
    };
    // One worker each, jobs that run until stopped: two run, the third waits in the broker.
    let cluster = Cluster::start(&url, 2, 1, "exec sleep 600");
    let tap = Tap::new(&url, &cluster.exchange);
    let ids: Vec<String> = (0..3)
        .map(|i| stdout(&cluster.cli(0, &["publish", "work.a", &format!("{i}")])).trim().to_owned())
        .collect();
    let mut running = Vec::new();
    for _ in 0..2 {
        let (v, _) = tap.until(|v| v["event"] == "started");
        running.push((
            v["id"].as_str().unwrap().to_owned(),
            cluster.index_of(v["daemon"].as_str().unwrap()),
        ));
    }
    assert_ne!(running[0].1, running[1].1, "each daemon runs one");
    let queued = ids.iter().find(|id| running.iter().all(|(r, _)| r != *id)).unwrap().clone();
    // The queued one first: every daemon keeps its tombstone.
    let out = cluster.cli(1, &["cancel", &queued]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("cancel requested"));
    // A running one, cancelled from the config of the daemon that does NOT run it.
    let (victim, on) = running[0].clone();
    let other = 1 - on;
    // A waiter on the other daemon's config (which never ran the job): it listens on the
    // events exchange from `expect_replies` on, so the end is heard even if it comes first.
    let config = procyard_daemon::Config::load(&cluster.config(other)).expect("config");
    let mut waiter = procyard_daemon::Client::new(config);
    waiter.expect_replies().expect("listen");
    assert_eq!(cluster.cli(other, &["cancel", &victim]).status.code(), Some(0));
    let (cancelled, passed) = tap.until(|v| is(v, &victim, "cancelled"));
    assert_eq!(cluster.index_of(cancelled["daemon"].as_str().unwrap()), on);
    assert!(!passed.iter().any(|v| is(v, &victim, "retried")), "never retried");
    // Its daemon is free: it receives the queued job, and drops it without starting it.
    let (dropped, passed) = tap.until(|v| is(v, &queued, "cancelled"));
    assert_eq!(dropped["outcome"], "cancelled before it ran");
    assert!(!passed.iter().any(|v| is(v, &queued, "started")), "a cancelled job never starts");
    let waited = waiter.wait(std::slice::from_ref(&victim), Some(DEADLINE)).expect("wait");
    assert_eq!(waited.exit_code(), 2, "{:?}", waited.jobs);
    assert_eq!(waited.jobs[0].state, procyard_daemon::queue::JobState::Cancelled);
    // The daemon that ran the victim has it in its history, cancelled, its attempt too.
    let out = cluster.cli(on, &["job", "--json", &victim]);
    let record: Value = serde_json::from_slice(&out.stdout).expect("record");
    assert_eq!(record["state"], "cancelled");
    assert_eq!(record["attempts"][0]["end"]["kind"], "cancelled");
    // A job that has ended there: cancel is refused, saying so.
    let out = cluster.cli(on, &["cancel", &victim]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already cancelled"));
    // Clean up the other running job.
    let (last, _) = running[1].clone();
    assert_eq!(cluster.cli(0, &["cancel", &last]).status.code(), Some(0));
    tap.until(|v| is(v, &last, "cancelled"));
}

/// `job` and `logs` answer from the local history of the daemon that ran the job; the other
/// daemon's config says the job is not in its history and why. Malformed ids are refused
/// before anything is looked up; an unknown id makes `wait` time out (124).
#[test]
fn amqp_job_and_logs_from_the_local_history_and_bad_ids() {
    let Some(url) = broker_url("amqp_job_and_logs_from_the_local_history_and_bad_ids") else {
        return;
    };
    let cluster = Cluster::start(&url, 2, 2, r#"echo "out $(cat)"; echo "err" >&2"#);
    let tap = Tap::new(&url, &cluster.exchange);
    let id = stdout(&cluster.cli(0, &["publish", "work.a", "x"])).trim().to_owned();
    let watch = DirWatch::new(&[cluster.dir.path()]);
    let (done, _) = tap.until(|v| is(v, &id, "done"));
    let ran = cluster.index_of(done["daemon"].as_str().unwrap());
    // The history is written at the daemon's next loop turn: wait for the record there.
    let deadline = Instant::now() + DEADLINE;
    let record = loop {
        let out = cluster.cli(ran, &["job", "--json", &id]);
        if let Ok(r) = serde_json::from_slice::<Value>(&out.stdout)
            && r["state"] == "done"
        {
            assert!(String::from_utf8_lossy(&out.stderr).contains("from this daemon's history"));
            break r;
        }
        assert!(Instant::now() < deadline, "no done record for {id}");
        watch.wait(Duration::from_millis(500));
    };
    assert_eq!(record["attempts"][0]["stdout"]["bytes"], "out x\n");
    let logs = cluster.cli(ran, &["logs", &id]);
    assert_eq!((logs.status.code(), stdout(&logs).as_str()), (Some(0), "out x\n"));
    let listed = cluster.cli(ran, &["jobs", "--json"]);
    assert!(stdout(&listed).contains(&id));
    let elsewhere = cluster.cli(1 - ran, &["job", &id]);
    assert_eq!(elsewhere.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&elsewhere.stderr)
            .contains("jobs run by other daemons are not here"),
    );
    for verb in ["job", "logs", "cancel", "wait"] {
        let out = cluster.cli(0, &[verb, "not-a-job-id"]);
        assert_ne!(out.status.code(), Some(0), "{verb}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("is not a job id"), "{verb}");
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    let out = cluster.cli(0, &["wait", "--timeout", "1s", &unknown]);
    assert_eq!(out.status.code(), Some(124));
}
