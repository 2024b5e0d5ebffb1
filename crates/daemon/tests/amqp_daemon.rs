//! Real `procyard-daemon` processes sharing one RabbitMQ queue: every job done exactly once
//! with no fault; a daemon SIGKILLed mid-run loses nothing and duplicates stay within what it
//! could hold unacknowledged (its prefetch = its `max_workers`).
//!
//! Broker: `PROCYARD_AMQP_URL`, else `amqp://guest:guest@127.0.0.1:5672/%2f`; with no broker
//! the tests print a skip notice and return, except under `CI=true`, where they fail.

#[path = "common/dirwatch.rs"]
mod dirwatch;
#[path = "common/ready.rs"]
mod ready;
use dirwatch::DirWatch;

use std::collections::{BTreeMap, BTreeSet};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/broker.rs"]
mod broker;
use broker::{broker_url, wait_consumers};

const MAX_WORKERS: usize = 4;
/// How long a test may wait for its jobs. The work takes seconds (about 15 s for 2,000 jobs
/// on a quiet 2-core machine); this holds on a machine several times slower, and a real hang
/// still fails.
const JOBS_DEADLINE: Duration = Duration::from_secs(240);

/// A set of daemons on one exchange, each writing the payloads it ran to its own file.
struct Cluster {
    dir: tempfile::TempDir,
    watch: DirWatch,
    url: String,
    exchange: String,
    daemons: Vec<Option<Child>>,
}

impl Cluster {
    fn start(url: &str, n: usize) -> Self {
        Self::start_with(url, n, r#"p=$(cat); echo \"$p\" >> {out}"#)
    }

    /// Starts `n` daemons whose task runs `sh -c SCRIPT` (`{out}` is the daemon's output file).
    fn start_with(url: &str, n: usize, script: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let exchange = format!("procyard-test-{}", uuid::Uuid::now_v7().simple());
        let watch = DirWatch::new(&[dir.path()]);
        let mut cluster =
            Cluster { dir, watch, url: url.to_owned(), exchange, daemons: Vec::new() };
        for i in 0..n {
            let config = cluster.write_config(i, script);
            let mut child = ready::daemon_command(&config)
                .env("RUST_LOG", "warn")
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn procyard-daemon");
            let line = ready::ready_line(&mut child, Duration::from_secs(60));
            cluster.daemons.push(Some(child));
            match line {
                Some(line) => assert!(line.starts_with("ready"), "daemon {i} not ready: {line:?}"),
                None => panic!("daemon {i} not ready within 60 s"),
            }
        }
        // Ready does not mean subscribed (the daemon sets its prefetch asynchronously): wait
        // until every daemon consumes, so none finds the queue drained by the others.
        let queue = format!("{}.work", cluster.exchange);
        wait_consumers(url, &queue, n as u32, Duration::from_secs(60));
        cluster
    }

    fn out(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("out-{i}"))
    }

    fn write_config(&self, i: usize, script: &str) -> PathBuf {
        let script = script.replace("{out}", &self.out(i).display().to_string());
        let text = format!(
            r#"[daemon]
grace_period = "5s"
control_socket = "{sock}"
[queue]
backend = "amqp"
url = "{url}"
exchange = "{exchange}"
[[task]]
name = "work"
routing_keys = ["work.#"]
command = ["sh", "-c", "{script}"]
work_model = "oneshot"
max_workers = {MAX_WORKERS}
max_attempts = 3
backoff_initial = "50ms"
"#,
            sock = self.dir.path().join(format!("d{i}.sock")).display(),
            url = self.url,
            exchange = self.exchange,
        );
        let path = self.dir.path().join(format!("d{i}.toml"));
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn publish(&self, n: usize) {
        broker::publish_work(&self.url, &self.exchange, n);
    }

    /// Payloads each daemon ran (with repeats).
    fn runs(&self) -> Vec<Vec<String>> {
        (0..self.daemons.len()).map(|i| read_lines(&self.out(i))).collect()
    }

    /// Waits until `n` distinct payloads ran.
    fn wait_distinct(&self, n: usize, limit: Duration) -> Vec<Vec<String>> {
        let deadline = Instant::now() + limit;
        loop {
            let runs = self.runs();
            let distinct: BTreeSet<&String> = runs.iter().flatten().collect();
            if distinct.len() >= n {
                return runs;
            }
            assert!(Instant::now() < deadline, "only {} of {n} jobs ran", distinct.len());
            self.watch.wait(Duration::from_millis(500));
        }
    }

    fn stop_all(&mut self) {
        for child in self.daemons.iter_mut().filter_map(Option::take) {
            stop(child);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
        // Retry queues for a 50 ms backoff that doubles (50, 100, 200 ms).
        drop(broker::Cleanup::task(&self.url, &self.exchange, "work", &[50, 100, 200]));
    }
}

/// The complete lines of a file: a line still being appended (a write can become visible in
/// parts) is not counted until its newline is there.
fn read_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// SIGTERM, then wait (a graceful stop finishes quickly with idle workers).
fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

#[test]
fn amqp_daemons_three_share_one_queue_each_job_once() {
    let Some(url) = broker_url("amqp_daemons_three_share_one_queue_each_job_once") else {
        return;
    };
    const JOBS: usize = 2_000;
    let mut cluster = Cluster::start(&url, 3);
    cluster.publish(JOBS);
    let runs = cluster.wait_distinct(JOBS, JOBS_DEADLINE);
    cluster.stop_all();
    let runs_after_stop = cluster.runs();
    let mut count: BTreeMap<&String, usize> = BTreeMap::new();
    for p in runs_after_stop.iter().flatten() {
        *count.entry(p).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!("per daemon: {:?}", runs.iter().map(Vec::len).collect::<Vec<_>>());
    assert_eq!(count.len(), JOBS);
    assert!(twice.is_empty(), "jobs run twice without any fault: {twice:?}");
    assert!(runs.iter().filter(|r| !r.is_empty()).count() >= 2, "the queue was not shared");
}

#[test]
fn amqp_daemons_sigkilled_daemon_loses_nothing() {
    let Some(url) = broker_url("amqp_daemons_sigkilled_daemon_loses_nothing") else {
        return;
    };
    const JOBS: usize = 2_000;
    let mut cluster = Cluster::start(&url, 3);
    cluster.publish(JOBS);
    let deadline = Instant::now() + JOBS_DEADLINE;
    while read_lines(&cluster.out(0)).len() < 100 {
        assert!(Instant::now() < deadline, "daemon 0 never ran 100 jobs");
        cluster.watch.wait(Duration::from_millis(500));
    }
    let mut victim = cluster.daemons[0].take().expect("daemon 0");
    victim.kill().expect("SIGKILL");
    victim.wait().expect("reap");
    cluster.wait_distinct(JOBS, JOBS_DEADLINE);
    // Every run is in the files once the daemons have stopped.
    cluster.stop_all();
    let runs = cluster.runs();
    let by_victim: BTreeSet<&String> = runs[0].iter().collect();
    let by_others: Vec<&String> = runs[1..].iter().flatten().collect();
    let others_set: BTreeSet<&String> = by_others.iter().copied().collect();
    let duplicates: Vec<&&String> = by_victim.intersection(&others_set).collect();
    eprintln!(
        "SIGKILL: the killed daemon ran {}, the others {}; {} jobs ran twice",
        by_victim.len(),
        others_set.len(),
        duplicates.len()
    );
    assert_eq!(by_victim.union(&others_set).count(), JOBS, "jobs lost");
    assert_eq!(others_set.len(), by_others.len(), "a surviving daemon ran a job twice");
    // Only jobs the killed daemon held unacknowledged can run again: at most its prefetch.
    assert!(duplicates.len() <= MAX_WORKERS, "{} duplicates", duplicates.len());
}

#[test]
fn amqp_daemons_failing_job_retried_dead_lettered_and_requeued() {
    let Some(url) = broker_url("amqp_daemons_failing_job_retried_dead_lettered_and_requeued")
    else {
        return;
    };
    let cluster =
        Cluster::start_with(&url, 1, r#"cat >/dev/null; echo $PROCYARD_ATTEMPT >> {out}; exit 1"#);
    cluster.publish(1);
    let config = cluster.dir.path().join("d0.toml");
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_procyard-daemon"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run procyard-daemon");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    // Three attempts (max_attempts = 3), through the broker's retry queues, then dead.
    let dead = loop {
        let dead: serde_json::Value =
            serde_json::from_str(&cli(&["dead", "--json"])).expect("dead --json");
        if dead.as_array().is_some_and(|a| !a.is_empty()) {
            break dead;
        }
        assert!(Instant::now() < deadline, "the job was never dead-lettered");
        cluster.watch.wait(Duration::from_millis(200));
    };
    assert_eq!(read_lines(&cluster.out(0)), ["1", "2", "3"]);
    assert_eq!(dead[0]["attempts"], 3, "{dead}");
    cli(&["requeue", "--all"]);
    while read_lines(&cluster.out(0)).len() < 4 {
        assert!(Instant::now() < deadline, "the requeued job never ran");
        cluster.watch.wait(Duration::from_millis(500));
    }
    assert_eq!(read_lines(&cluster.out(0))[3], "1", "a requeued job starts again at attempt 1");
}
