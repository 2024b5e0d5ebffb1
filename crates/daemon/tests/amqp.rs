//! The AMQP backend against a real RabbitMQ broker: sharing one queue between consumers
//! (threads and separate processes), SIGKILL mid-run, connection cut, retry and dead-letter
//! per `max_attempts`, and topic routing observed on the broker.
//!
//! The broker is `PROCYARD_AMQP_URL`, else `amqp://guest:guest@127.0.0.1:5672/%2f`. With no
//! broker answering, each test prints a skip notice and returns, except under `CI=true`,
//! where it fails. Every test uses its own exchange (with a UUID) and deletes what it
//! declared.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "common/broker.rs"]
mod broker;
use broker::{broker_url, wait_consumers};

/// How long a test may take end to end. Its work takes seconds; this holds on a machine
/// several times slower than usual (a loaded CI runner), while a real hang still fails.
const TEST_DEADLINE: Duration = Duration::from_secs(240);
/// How long to wait for consumers to subscribe before publishing.
const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(60);

use procyard_core::testkit;
use procyard_daemon::queue::{
    self, AmqpQueueType, BackendKind, Job, OpenMode, Outcome, QueueBackend, QueueConfig, Requeue,
    TaskBinding,
};

const CHILD_ENV: &str = "PROCYARD_AMQP_TEST_CHILD";
const QUEUE_TOKEN: mio::Token = mio::Token(0);
const STDIN_TOKEN: mio::Token = mio::Token(1);

fn config(url: &str, exchange: &str) -> QueueConfig {
    config_of(url, exchange, AmqpQueueType::Quorum)
}

fn config_of(url: &str, exchange: &str, queue_type: AmqpQueueType) -> QueueConfig {
    QueueConfig {
        backend: BackendKind::Amqp,
        path: std::path::PathBuf::new(),
        url: Some(url.to_owned()),
        exchange: exchange.to_owned(),
        queue_type,
        events: true,
        priorities: false,
        schema: "procyard".into(),
        durability: Default::default(),
    }
}

fn binding(name: &str, keys: &[&str], max_attempts: u32) -> TaskBinding {
    TaskBinding {
        name: name.to_owned(),
        routing_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        max_attempts,
    }
}

/// A unique exchange; its topology is deleted on drop.
struct Topology {
    url: String,
    exchange: String,
    queues: Vec<String>,
}

impl Topology {
    fn new(url: &str, tasks: &[&str]) -> Self {
        let exchange = format!("procyard-test-{}", uuid::Uuid::now_v7().simple());
        let mut queues = Vec::new();
        for t in tasks {
            queues.push(format!("{exchange}.{t}"));
            queues.push(format!("{exchange}.{t}.dead"));
        }
        Topology { url: url.to_owned(), exchange, queues }
    }

    fn also_delete(&mut self, queue: String) {
        self.queues.push(queue);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut self.queues);
        drop(broker::Cleanup {
            url: self.url.clone(),
            exchange: self.exchange.clone(),
            queues,
            ladder: false,
        });
    }
}

/// A consumer loop like the daemon's: mio poll on the backend's waker, claim up to capacity,
/// each job "runs" for `job_time`, then `decide` gives its outcome. Returns when `stop` says so.
struct Consumer {
    backend: Box<dyn QueueBackend>,
    poll: mio::Poll,
    task: String,
    capacity: usize,
    running: Vec<(Instant, Job)>,
    /// Whether an event arrived for [`STDIN_TOKEN`] (child mode: stdin closed).
    stdin_closed: bool,
    /// Child mode: `start ID` is printed once a job is claimed and `done ID` before its
    /// outcome goes to the backend, each flushed at once, so that a SIGKILL never leaves an
    /// acknowledged job the parent did not see done.
    log: Option<std::io::Stdout>,
}

impl Consumer {
    fn new(url: &str, exchange: &str, tasks: &[TaskBinding], task: &str, capacity: usize) -> Self {
        Consumer::open(&config(url, exchange), tasks, task, capacity)
    }

    fn open(config: &QueueConfig, tasks: &[TaskBinding], task: &str, capacity: usize) -> Self {
        let mut backend = queue::open(config, OpenMode::Daemon).expect("open daemon");
        let poll = mio::Poll::new().expect("poll");
        backend.bind(tasks).expect("bind");
        backend.attach(poll.registry(), QUEUE_TOKEN).expect("attach");
        backend.set_capacity(task, capacity).expect("capacity");
        Consumer {
            backend,
            poll,
            task: task.to_owned(),
            capacity,
            running: Vec::new(),
            stdin_closed: false,
            log: None,
        }
    }

    /// One loop iteration: waits for an event or the next job end (at most `max_wait`),
    /// then claims and completes. Returns the jobs started and finished (with outcomes).
    fn step(
        &mut self,
        job_time: Duration,
        max_wait: Duration,
        decide: &mut dyn FnMut(&Job) -> Outcome,
    ) -> (Vec<Job>, Vec<Job>) {
        let now = Instant::now();
        let next_end = self.running.iter().map(|(t, _)| *t).min();
        let wait = next_end.map_or(max_wait, |t| t.saturating_duration_since(now).min(max_wait));
        let mut events = mio::Events::with_capacity(8);
        match self.poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("poll: {e}"),
        }
        self.stdin_closed |= events.iter().any(|e| e.token() == STDIN_TOKEN);
        self.backend.on_wake().expect("on_wake");
        let free = self.capacity.saturating_sub(self.running.len());
        let started = self.backend.claim(&self.task, free).expect("claim");
        for job in &started {
            self.log_line("start", job);
            self.running.push((Instant::now() + job_time, job.clone()));
        }
        let now = Instant::now();
        let mut finished = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].0 <= now {
                let (_, job) = self.running.swap_remove(i);
                let outcome = decide(&job);
                self.log_line("done", &job);
                self.backend.complete(&job, outcome).expect("complete");
                finished.push(job);
            } else {
                i += 1;
            }
        }
        self.backend.flush().expect("flush");
        (started, finished)
    }

    fn log_line(&mut self, what: &str, job: &Job) {
        if let Some(out) = &mut self.log {
            let mut out = out.lock();
            let _ = writeln!(out, "{what} {}", String::from_utf8_lossy(&job.payload));
            let _ = out.flush();
        }
    }
}

fn publisher(url: &str, exchange: &str, tasks: &[TaskBinding]) -> Box<dyn QueueBackend> {
    let mut client = queue::open(&config(url, exchange), OpenMode::Client).expect("open client");
    client.bind(tasks).expect("bind client");
    client
}

#[test]
fn amqp_three_consumers_share_one_queue_exactly_once() {
    let Some(url) = broker_url("amqp_three_consumers_share_one_queue_exactly_once") else { return };
    const JOBS: usize = 2_000;
    let topo = Topology::new(&url, &["work"]);
    let tasks = vec![binding("work", &["jobs.#"], 3)];
    let mut client = publisher(&url, &topo.exchange, &tasks);
    let done = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..3)
        .map(|_| {
            let (url, exchange, tasks, done) =
                (url.clone(), topo.exchange.clone(), tasks.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut c = Consumer::new(&url, &exchange, &tasks, "work", 8);
                let mut seen = Vec::new();
                let deadline = Instant::now() + TEST_DEADLINE;
                while done.load(Ordering::SeqCst) < JOBS && Instant::now() < deadline {
                    let (_, finished) =
                        c.step(Duration::ZERO, Duration::from_millis(20), &mut |_| Outcome::Done);
                    done.fetch_add(finished.len(), Ordering::SeqCst);
                    seen.extend(finished.into_iter().map(|j| j.payload));
                }
                c.backend.shutdown().expect("shutdown");
                seen
            })
        })
        .collect();
    // All three subscribed before the first job: otherwise the sharing is up to the scheduler.
    wait_consumers(&url, &format!("{}.work", topo.exchange), 3, SUBSCRIBE_DEADLINE);
    for i in 0..JOBS {
        let ids =
            client.publish(&format!("jobs.n{}", i % 7), i.to_string().as_bytes()).expect("publish");
        assert_eq!(ids.len(), 1);
    }
    let per_consumer: Vec<Vec<Vec<u8>>> =
        consumers.into_iter().map(|h| h.join().expect("consumer thread")).collect();
    let mut count: HashMap<Vec<u8>, usize> = HashMap::new();
    for p in per_consumer.iter().flatten() {
        *count.entry(p.clone()).or_default() += 1;
    }
    let missing = (0..JOBS).filter(|i| !count.contains_key(i.to_string().as_bytes())).count();
    let duplicated = count.values().filter(|&&n| n > 1).count();
    eprintln!(
        "per consumer: {:?}, missing {missing}, duplicated {duplicated}",
        per_consumer.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(missing, 0, "jobs lost");
    assert_eq!(duplicated, 0, "duplicates without any fault");
    assert!(per_consumer.iter().filter(|v| !v.is_empty()).count() >= 2, "the queue was not shared");
    let depths = client.depths().expect("depths");
    assert_eq!(depths["work"].ready, 0, "{depths:?}");
    client.shutdown().expect("shutdown");
}

#[test]
fn amqp_publish_unroutable_key_fails_loudly() {
    let Some(url) = broker_url("amqp_publish_unroutable_key_fails_loudly") else { return };
    let topo = Topology::new(&url, &["only"]);
    let tasks = vec![binding("only", &["a.*"], 3)];
    let mut client = publisher(&url, &topo.exchange, &tasks);
    let err = client.publish("b.c", b"x").expect_err("unroutable publish must fail");
    assert!(matches!(err, procyard_daemon::Error::Unroutable { .. }), "{err:?}");
    client.publish("a.b", b"x").expect("routable publish");
    // The client still works after the refusal.
    client.publish("a.c", b"y").expect("routable publish after a refusal");
    assert_eq!(client.depths().expect("depths")["only"].ready, 2);
    client.shutdown().expect("shutdown");
}

#[test]
fn amqp_client_without_broker_fails_with_a_clear_error() {
    // A port nobody listens on: open must fail quickly with a typed error, no hang.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let started = Instant::now();
    let err = queue::open(
        &config(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"), "procyard"),
        OpenMode::Client,
    )
    .err()
    .expect("no broker: open must fail");
    assert!(matches!(err, procyard_daemon::Error::Broker { action: "connect", .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// `*` and `#` as RabbitMQ itself routes them: publish, then count what each queue got.
#[test]
fn amqp_topic_routing_matches_the_broker() {
    let Some(url) = broker_url("amqp_topic_routing_matches_the_broker") else { return };
    let patterns: &[(&str, &str)] = &[
        ("all", "#"),
        ("astar", "a.*"),
        ("ahash", "a.#"),
        ("starb", "*.b"),
        ("hashb", "#.b"),
        ("mid", "a.*.c"),
        ("midhash", "a.#.c"),
        ("exact", "a.b"),
    ];
    let keys = ["a", "a.b", "a.b.c", "a.c", "x.b", "b", "a.x.y.c", "q"];
    let names: Vec<&str> = patterns.iter().map(|(n, _)| *n).collect();
    let topo = Topology::new(&url, &names);
    let tasks: Vec<TaskBinding> = patterns.iter().map(|(n, p)| binding(n, &[p], 3)).collect();
    let mut client = publisher(&url, &topo.exchange, &tasks);
    for key in keys {
        client.publish(key, key.as_bytes()).expect("publish");
    }
    let depths = client.depths().expect("depths");
    let mut mismatches = Vec::new();
    for (name, pattern) in patterns {
        let expected: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| procyard_daemon::routing::matches(pattern, k))
            .collect();
        let got = depths[*name].ready as usize;
        if got != expected.len() {
            mismatches.push(format!("{pattern}: broker routed {got}, expected {expected:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    // The specific AMQP rules: `#` alone matches everything, `a.#` matches `a`, `*` never
    // matches an empty word (`*.b` does not match `b`).
    assert_eq!(depths["all"].ready, keys.len() as u64);
    assert_eq!(depths["ahash"].ready, 5);
    assert_eq!(depths["starb"].ready, 2);
    client.shutdown().expect("shutdown");
}

#[test]
fn amqp_retry_then_dead_letter_follow_max_attempts_and_requeue() {
    let Some(url) = broker_url("amqp_retry_then_dead_letter_follow_max_attempts_and_requeue")
    else {
        return;
    };
    const JOBS: usize = 5;
    const MAX_ATTEMPTS: u32 = 3;
    let mut topo = Topology::new(&url, &["flaky"]);
    for ms in [30, 60] {
        topo.also_delete(format!("{}.flaky.retry.{ms}ms", topo.exchange));
    }
    let tasks = vec![binding("flaky", &["flaky"], MAX_ATTEMPTS)];
    let mut client = publisher(&url, &topo.exchange, &tasks);
    let mut c = Consumer::new(&url, &topo.exchange, &tasks, "flaky", 4);
    for i in 0..JOBS {
        client.publish("flaky", i.to_string().as_bytes()).expect("publish");
    }
    let mut attempts: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut decide = |job: &Job| {
        attempts.entry(job.id.clone()).or_default().push(job.attempt);
        if job.attempt < MAX_ATTEMPTS {
            Outcome::Retry {
                delay: Duration::from_millis(30 * u64::from(job.attempt)),
                reason: "exit 1".into(),
            }
        } else {
            Outcome::DeadLetter { reason: format!("exit 1 after {} attempts", job.attempt) }
        }
    };
    let deadline = Instant::now() + TEST_DEADLINE;
    let mut finished = 0;
    while finished < JOBS * MAX_ATTEMPTS as usize {
        assert!(Instant::now() < deadline, "only {finished} attempts ran");
        finished += c.step(Duration::ZERO, Duration::from_millis(100), &mut decide).1.len();
    }
    assert_eq!(attempts.len(), JOBS);
    for (id, a) in &attempts {
        assert_eq!(a, &vec![1, 2, 3], "job {id}");
    }
    // Wait until the broker has the dead letters (acks and publishes are asynchronous).
    // No event tells us the broker stored them: poll, without hammering it.
    let mut dead = Vec::new();
    testkit::try_wait_for(deadline.saturating_duration_since(Instant::now()), || {
        dead = client.dead_letters(Some("flaky"), 100).expect("dead letters");
        dead.len() == JOBS
    });
    assert_eq!(dead.len(), JOBS, "{dead:?}");
    for d in &dead {
        assert_eq!(d.attempts, MAX_ATTEMPTS);
        assert!(d.reason.contains("after 3 attempts"), "{d:?}");
        assert!(attempts.contains_key(&d.id));
    }
    // Listing does not consume them.
    assert_eq!(client.dead_letters(None, 100).expect("dead letters").len(), JOBS);
    // Requeue one by id: it comes back with attempt 1 and the same id.
    let first = dead[0].id.clone();
    assert_eq!(
        client.requeue_dead(Some("flaky"), &Requeue::Ids(vec![first.clone()])).expect("requeue"),
        1
    );
    let mut back = None;
    while back.is_none() {
        assert!(Instant::now() < deadline, "requeued job never came back");
        let (started, _) =
            c.step(Duration::from_secs(3600), Duration::from_millis(100), &mut |_| Outcome::Done);
        back = started.into_iter().next();
    }
    let back = back.expect("requeued job");
    assert_eq!((back.id.as_str(), back.attempt), (first.as_str(), 1));
    let unknown = client.requeue_dead(Some("flaky"), &Requeue::Ids(vec!["no-such-id".into()]));
    assert!(matches!(unknown, Err(procyard_daemon::Error::NoSuchJob { .. })), "{unknown:?}");
    c.backend.shutdown().expect("shutdown");
    client.shutdown().expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Separate consumer processes: this test binary re-executed in child mode.

/// The child side: consume `task` with `capacity`, print `start ID` / `done ID` lines, and
/// `connected` whenever the backend (re)connects; exit when stdin closes.
fn child_main(spec: &str) {
    procyard_core::logs::init_logs("warn", procyard_core::logs::LogFormat::Text);
    let parts: Vec<&str> = spec.split('|').collect();
    let [url, exchange, task, keys, capacity, job_ms] = parts[..] else {
        panic!("bad child spec {spec}")
    };
    let capacity: usize = capacity.parse().expect("capacity");
    let job_time = Duration::from_millis(job_ms.parse().expect("job time"));
    let keys: Vec<&str> = keys.split(',').collect();
    let tasks = vec![binding(task, &keys, 5)];
    let mut c = Consumer::new(url, exchange, &tasks, task, capacity);
    let stdin = std::io::stdin();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stdin);
    c.poll
        .registry()
        .register(&mut mio::unix::SourceFd(&fd), STDIN_TOKEN, mio::Interest::READABLE)
        .expect("register stdin");
    let mut was_ok = c.backend.health().ok;
    // After a newline: libtest prints "test NAME ... " without one.
    println!("\npid {}", std::process::id());
    c.log = Some(std::io::stdout());
    // stdin readable means EOF (the parent never writes): stop.
    while !c.stdin_closed {
        c.step(job_time, Duration::from_millis(200), &mut |_| Outcome::Done);
        let ok = c.backend.health().ok;
        if ok && !was_ok {
            println!("connected");
        }
        was_ok = ok;
    }
    c.backend.shutdown().expect("shutdown");
}

/// A consumer process and the lines it printed, collected on a channel.
struct ChildConsumer {
    child: Child,
    pid: u32,
}

fn spawn_children(
    n: usize,
    spec: &str,
) -> (Vec<ChildConsumer>, crossbeam_channel::Receiver<(usize, String)>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let exe = std::env::current_exe().expect("current exe");
    let mut children = Vec::new();
    for idx in 0..n {
        let mut child = Command::new(&exe)
            .args(["--exact", "amqp_child_entry", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child consumer");
        let stdout = child.stdout.take().expect("stdout");
        let tx = tx.clone();
        let pid = child.id();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((idx, line)).is_err() {
                    break;
                }
            }
        });
        children.push(ChildConsumer { child, pid });
    }
    (children, rx)
}

fn stop_children(children: Vec<ChildConsumer>) {
    for mut c in children {
        // Closing stdin asks it to stop; a child that does not exit in time is killed.
        drop(c.child.stdin.take());
        let pid = c.pid;
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = tx.send(c.child.wait());
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            let _ = rx.recv_timeout(Duration::from_secs(5));
            panic!("child consumer {pid} did not stop when its stdin closed");
        }
    }
}

/// Entry point of the child consumer processes. Run directly (no child spec), it checks that
/// a daemon-mode backend starts without a broker and reports it in its health.
#[test]
fn amqp_child_entry() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child_main(&spec);
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let mut backend = queue::open(
        &config(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"), "procyard"),
        OpenMode::Daemon,
    )
    .expect("a daemon starts without its broker");
    let health = backend.health();
    assert!(!health.ok, "{health:?}");
    assert!(health.detail.contains("disconnected"), "{health:?}");
    assert!(!health.detail.contains("guest:guest"), "password shown: {health:?}");
    backend.shutdown().expect("shutdown");
}

#[derive(Default)]
struct Tally {
    started: Vec<BTreeSet<String>>,
    done: Vec<Vec<String>>,
    connected: Vec<usize>,
}

impl Tally {
    fn new(n: usize) -> Self {
        Tally {
            started: vec![BTreeSet::new(); n],
            done: vec![Vec::new(); n],
            connected: vec![0; n],
        }
    }
    fn record(&mut self, (idx, line): (usize, String)) {
        if let Some(id) = line.strip_prefix("start ") {
            self.started[idx].insert(id.to_owned());
        } else if let Some(id) = line.strip_prefix("done ") {
            self.done[idx].push(id.to_owned());
        } else if line == "connected" {
            self.connected[idx] += 1;
        }
    }
    fn distinct_done(&self) -> BTreeSet<&String> {
        self.done.iter().flatten().collect()
    }
    fn total_done(&self) -> usize {
        self.done.iter().map(Vec::len).sum()
    }
}

fn publish_numbered(client: &mut dyn QueueBackend, key: &str, n: usize) {
    for i in 0..n {
        client.publish(key, i.to_string().as_bytes()).expect("publish");
    }
}

#[test]
fn amqp_sigkilled_consumer_jobs_are_redelivered_nothing_lost() {
    let Some(url) = broker_url("amqp_sigkilled_consumer_jobs_are_redelivered_nothing_lost") else {
        return;
    };
    const JOBS: usize = 2_000;
    let topo = Topology::new(&url, &["kill"]);
    let tasks = vec![binding("kill", &["kill.#"], 5)];
    let mut client = publisher(&url, &topo.exchange, &tasks);
    let spec = format!("{url}|{}|kill|kill.#|8|3", topo.exchange);
    let (mut children, rx) = spawn_children(3, &spec);
    // Consumer 0 must get its share (100 jobs) before the kill: all subscribe before jobs come.
    wait_consumers(&url, &format!("{}.kill", topo.exchange), 3, SUBSCRIBE_DEADLINE);
    publish_numbered(client.as_mut(), "kill.job", JOBS);
    let mut tally = Tally::new(3);
    let deadline = Instant::now() + TEST_DEADLINE;
    while tally.done[0].len() < 100 || tally.total_done() < JOBS / 4 {
        let line = rx.recv_deadline(deadline).expect("children stalled before the kill");
        tally.record(line);
    }
    let killed = &mut children[0].child;
    killed.kill().expect("SIGKILL");
    killed.wait().expect("reap");
    // Lines it printed before dying are still in the pipe.
    while tally.distinct_done().len() < JOBS {
        match rx.recv_deadline(deadline) {
            Ok(line) => tally.record(line),
            Err(_) => panic!("only {} of {JOBS} jobs done", tally.distinct_done().len()),
        }
    }
    let by_killed: BTreeSet<&String> = tally.done[0].iter().collect();
    let by_others: BTreeSet<&String> = tally.done[1..].iter().flatten().collect();
    let duplicates: Vec<&&String> = by_killed.intersection(&by_others).collect();
    let in_flight_at_kill = tally.started[0].iter().filter(|id| !by_killed.contains(id)).count();
    eprintln!(
        "SIGKILL: killed consumer did {}, others {}; {} duplicates; {} of its jobs were unfinished at the kill",
        by_killed.len(),
        by_others.len(),
        duplicates.len(),
        in_flight_at_kill
    );
    for id in &duplicates {
        assert!(
            tally.started[0].contains(**id),
            "duplicate {id} was never started by the killed one"
        );
    }
    // A job is redone only if the killed consumer had it in flight: at most its capacity
    // (done but unacknowledged when it died).
    assert!(duplicates.len() <= 8, "{} duplicates for a prefetch of 8", duplicates.len());
    for others in &tally.done[1..] {
        let distinct: BTreeSet<&String> = others.iter().collect();
        assert_eq!(distinct.len(), others.len(), "a surviving consumer ran a job twice");
    }
    children.remove(0);
    stop_children(children);
    client.shutdown().expect("shutdown");
}

/// Broker connections of a process, as `rabbitmqctl` lists them.
fn connections_of(pid: u32) -> Vec<String> {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl (needed to cut connections)");
    let marker = format!("procyard-daemon pid {pid}\"");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&marker))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn amqp_connection_cut_consumers_reconnect_and_finish() {
    let Some(url) = broker_url("amqp_connection_cut_consumers_reconnect_and_finish") else {
        return;
    };
    let usable = Command::new("rabbitmqctl")
        .args(["-q", "status"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("a working rabbitmqctl is needed to cut connections under CI");
        }
        eprintln!(
            "SKIP amqp_connection_cut_consumers_reconnect_and_finish: rabbitmqctl cannot reach the broker"
        );
        return;
    }
    const JOBS: usize = 1_500;
    let topo = Topology::new(&url, &["cut"]);
    let tasks = vec![binding("cut", &["cut"], 5)];
    let mut client = publisher(&url, &topo.exchange, &tasks);
    // 40 ms per job, 8 at a time, 2 consumers: about 4 s of work, time for the cut.
    let spec = format!("{url}|{}|cut|cut|8|40", topo.exchange);
    let (children, rx) = spawn_children(2, &spec);
    let mut tally = Tally::new(2);
    let deadline = Instant::now() + TEST_DEADLINE;
    let mut ready = 0;
    while ready < 2 {
        let (_, line) = rx.recv_deadline(deadline).expect("children did not start");
        ready += usize::from(line.starts_with("pid "));
    }
    // Both subscribed, so both connections are up and both get jobs before the cut.
    wait_consumers(&url, &format!("{}.cut", topo.exchange), 2, SUBSCRIBE_DEADLINE);
    let conns: Vec<String> = children.iter().flat_map(|c| connections_of(c.pid)).collect();
    assert_eq!(conns.len(), 2, "one broker connection per consumer: {conns:?}");
    publish_numbered(client.as_mut(), "cut", JOBS);
    while tally.total_done() < JOBS / 5 {
        tally.record(rx.recv_deadline(deadline).expect("children stalled before the cut"));
    }
    let cutters: Vec<Child> = conns
        .iter()
        .map(|conn| {
            Command::new("rabbitmqctl")
                .args(["-q", "close_connection", conn, "procyard test: connection cut"])
                .stdout(Stdio::null())
                .spawn()
                .expect("rabbitmqctl close_connection")
        })
        .collect();
    for mut cutter in cutters {
        assert!(cutter.wait().expect("rabbitmqctl").success());
    }
    let done_at_cut = tally.distinct_done().len();
    assert!(done_at_cut < JOBS, "all jobs were done before the cut: the test proves nothing");
    while tally.distinct_done().len() < JOBS {
        match rx.recv_deadline(deadline) {
            Ok(line) => tally.record(line),
            Err(_) => panic!(
                "after the cut: {} of {JOBS} done, reconnections seen {:?}",
                tally.distinct_done().len(),
                tally.connected
            ),
        }
    }
    // Each consumer has a new connection. Asked of the broker: a consumer whose backend lost
    // and regained its connection between two of its loop turns (a busy machine) never sees
    // itself disconnected, so its "connected" line is not a reliable witness.
    let fresh = || -> Vec<Vec<String>> {
        children
            .iter()
            .map(|c| connections_of(c.pid).into_iter().filter(|n| !conns.contains(n)).collect())
            .collect()
    };
    let reconnected =
        testkit::try_wait_for(deadline.saturating_duration_since(Instant::now()), || {
            fresh().iter().all(|f| !f.is_empty())
        });
    assert!(
        reconnected,
        "after the cut, new connections per consumer: {:?} (reconnections seen {:?})",
        fresh(),
        tally.connected
    );
    let duplicates = tally.total_done() - tally.distinct_done().len();
    eprintln!("connection cut: all {JOBS} done, {duplicates} run twice (in flight at the cut)");
    assert!(duplicates <= 16, "{duplicates} duplicates for two consumers with a prefetch of 8");
    stop_children(children);
    client.shutdown().expect("shutdown");
}

/// The type of each queue whose name starts with `prefix`, as `rabbitmqctl` lists them.
fn queue_types(prefix: &str) -> BTreeMap<String, String> {
    let out = Command::new("rabbitmqctl")
        .args(["list_queues", "name", "type", "-q", "--no-table-headers"])
        .output()
        .expect("rabbitmqctl (needed to list queue types)");
    assert!(
        out.status.success(),
        "rabbitmqctl list_queues: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

#[test]
fn amqp_queue_type_follows_the_config_and_classic_queues_run_jobs() {
    let Some(url) = broker_url("amqp_queue_type_follows_the_config_and_classic_queues_run_jobs")
    else {
        return;
    };
    const JOBS: usize = 300;
    let tasks = vec![binding("work", &["jobs.#"], 3)];
    let quorum = Topology::new(&url, &["work"]);
    let classic = Topology::new(&url, &["work"]);
    publisher(&url, &quorum.exchange, &tasks).shutdown().expect("shutdown");
    let classic_config = config_of(&url, &classic.exchange, AmqpQueueType::Classic);
    let mut client = queue::open(&classic_config, OpenMode::Client).expect("open client");
    client.bind(&tasks).expect("bind client");
    publish_numbered(&mut *client, "jobs.a", JOBS);
    let mut consumer = Consumer::open(&classic_config, &tasks, "work", 4);
    let mut done = BTreeSet::new();
    let deadline = Instant::now() + TEST_DEADLINE;
    while done.len() < JOBS {
        assert!(Instant::now() < deadline, "only {} of {JOBS} jobs done", done.len());
        let (_, finished) =
            consumer.step(Duration::ZERO, Duration::from_millis(20), &mut |_| Outcome::Done);
        done.extend(finished.into_iter().map(|j| j.payload));
    }
    consumer.backend.shutdown().expect("shutdown");
    assert_eq!(client.depths().expect("depths")["work"].ready, 0);
    client.shutdown().expect("shutdown");
    let q = quorum.exchange.clone();
    let c = classic.exchange.clone();
    let expect = |exchange: &str, kind: &str| {
        [
            (format!("{exchange}.work"), kind.to_owned()),
            (format!("{exchange}.work.dead"), kind.to_owned()),
        ]
    };
    assert_eq!(queue_types(&q), expect(&q, "quorum").into_iter().collect());
    assert_eq!(queue_types(&c), expect(&c, "classic").into_iter().collect());
}
