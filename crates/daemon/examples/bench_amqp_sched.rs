//! Benchmark: scheduling on RabbitMQ, each figure against a baseline measured in the same run.
//!
//! - Delay accuracy: jobs published with `--delay` spread over 0.1–2 s go through the broker's
//!   delay ladder; lateness = start minus due time (p50, p99), beside the publish-to-start
//!   latency of the same number of jobs published without a delay (what any job costs). Twice:
//!   on a fresh exchange (each ladder queue created on first use, while other jobs wait), and
//!   warm (the same delays run once before, so the queues exist, as on a broker in use).
//! - Priorities on the FIFO path: jobs all at the default priority drained from a classic queue
//!   declared with `x-max-priority` (`[queue] priorities = true`), against the same queue type
//!   without it; alternating runs, medians.
//!
//! Run: `cargo build --release -p procyard-daemon && cargo run --release -p procyard-daemon
//! --example bench_amqp_sched`. Needs RabbitMQ at `PROCYARD_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Workers are this example re-executed as
//! `worker FILE` (longlived), appending `JOB_ID START_NS` to FILE.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use procyard_daemon::queue::{
    self, AmqpQueueType, BackendKind, OpenMode, PublishOptions, QueueConfig, TaskBinding,
};

const DELAYED: usize = 300;
const DRAIN_JOBS: usize = 4_000;
const RUNS: usize = 3;
const WORKERS: usize = 4;
const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn ns_of(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn worker(file: &str) -> anyhow::Result<()> {
    let mut out = OpenOptions::new().create(true).append(true).open(file)?;
    procyard_daemon::worker::serve(|job| {
        let _ = out.write_all(format!("{} {}\n", job.id, ns_of(SystemTime::now())).as_bytes());
        procyard_daemon::worker::Outcome::Done
    })?;
    Ok(())
}

/// One daemon on its own exchange, and a client to publish with.
struct Rig {
    dir: PathBuf,
    daemon: Option<Child>,
    config: QueueConfig,
}

impl Rig {
    fn new(url: &str, root: &Path, name: &str, priorities: bool) -> anyhow::Result<Rig> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        let exchange = format!("procyard-bench-{}", uuid::Uuid::now_v7().simple());
        let text = format!(
            r#"[daemon]
grace_period = "5s"
control_socket = "{sock}"
[queue]
backend = "amqp"
url = "{url}"
exchange = "{exchange}"
queue_type = "classic"
priorities = {priorities}
events = false
[[task]]
name = "noop"
routing_keys = ["noop"]
command = ["{exe}", "worker", "{done}"]
work_model = "longlived"
min_workers = {WORKERS}
max_workers = {WORKERS}
"#,
            sock = dir.join("d.sock").display(),
            exe = std::env::current_exe()?.display(),
            done = dir.join("done.log").display(),
        );
        std::fs::write(dir.join("d.toml"), text)?;
        let config = QueueConfig {
            backend: BackendKind::Amqp,
            path: PathBuf::new(),
            url: Some(url.to_owned()),
            exchange,
            queue_type: AmqpQueueType::Classic,
            events: false,
            priorities,
            schema: "procyard".into(),
            durability: Default::default(),
        };
        Ok(Rig { dir, daemon: None, config })
    }

    fn start(&mut self, bin: &Path) -> anyhow::Result<()> {
        let mut child = Command::new(bin)
            .args(["run", "--ready-fd", "1", "--config"])
            .arg(self.dir.join("d.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let ready = rx.recv_timeout(Duration::from_secs(60));
        self.daemon = Some(child);
        match ready {
            Ok(line) if line.starts_with("ready") => Ok(()),
            other => anyhow::bail!("daemon not ready within 60 s: {other:?}"),
        }
    }

    fn client(&self) -> anyhow::Result<Box<dyn queue::QueueBackend>> {
        let mut client = queue::open(&self.config, OpenMode::Client)?;
        let binding =
            TaskBinding { name: "noop".into(), routing_keys: vec!["noop".into()], max_attempts: 3 };
        client.bind(&[binding])?;
        Ok(client)
    }

    /// Job id → start time, once `n` jobs started.
    fn wait_started(&self, n: usize) -> anyhow::Result<HashMap<String, u128>> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let text = std::fs::read_to_string(self.dir.join("done.log")).unwrap_or_default();
            let mut done = HashMap::new();
            for (id, ns) in text.lines().filter_map(|l| l.split_once(' ')) {
                if let Ok(ns) = ns.parse::<u128>() {
                    done.entry(id.to_owned()).or_insert(ns);
                }
            }
            if done.len() >= n {
                return Ok(done);
            }
            anyhow::ensure!(Instant::now() < deadline, "only {} of {n} jobs started", done.len());
            // A benchmark harness, not a test: a short wait between reads of the result file.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
        delete_topology(&self.config.url.clone().unwrap_or_default(), &self.config.exchange);
    }
}

fn delete_topology(url: &str, exchange: &str) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    rt.block_on(async {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        let Ok(conn) = lapin::Connection::connect(url, Default::default()).await else { return };
        let Ok(ch) = conn.create_channel().await else { return };
        let mut queues = vec![format!("{exchange}.noop"), format!("{exchange}.noop.dead")];
        let mut exchanges =
            vec![exchange.to_owned(), format!("{exchange}.dead"), format!("{exchange}.events")];
        // The delay ladder: level k holds d·64^k ms (queues declared on first use).
        for level in 0..6u32 {
            for digit in 1..64u64 {
                queues.push(format!("{exchange}.delay.level{level}.{}ms", digit << (6 * level)));
            }
            exchanges.push(format!("{exchange}.delay.level{level}"));
        }
        for q in queues {
            let _ = ch.queue_delete(q.into(), QueueDeleteOptions::default()).await;
        }
        for x in exchanges {
            let _ = ch.exchange_delete(x.into(), ExchangeDeleteOptions::default()).await;
        }
        let _ = conn.close(200, "bench cleanup".into()).await;
    });
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    pct(&v, 0.5)
}

/// Lateness (ms) of delayed jobs after their due time, and the publish-to-start latency (ms)
/// of undelayed ones, both sorted.
/// `warm`: the same delays are published and run once before the measured round, so the
/// ladder's queues exist (a broker in use); else each digit's queue is created on first use,
/// while other jobs wait in the ladder (a fresh exchange).
fn delay_accuracy(
    bin: &Path,
    url: &str,
    root: &Path,
    warm: bool,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut rig = Rig::new(url, root, if warm { "delay-warm" } else { "delay" }, false)?;
    rig.start(bin)?;
    let mut client = rig.client()?;
    let before = if warm { DELAYED } else { 0 };
    for i in 0..before {
        let opts = PublishOptions::new().delay(Duration::from_millis(100 + (i as u64 * 37) % 1900));
        client.publish_with("noop", &[b"w".to_vec()], &opts).map_err(|e| e.error)?;
    }
    rig.wait_started(before)?;
    let (mut due, mut published) = (HashMap::new(), HashMap::new());
    for i in 0..DELAYED {
        let delay = Duration::from_millis(100 + (i as u64 * 37) % 1900);
        let opts = PublishOptions::new().delay(delay);
        let at = ns_of(opts.not_before.unwrap_or(UNIX_EPOCH));
        let p = client.publish_with("noop", &[b"d".to_vec()], &opts).map_err(|e| e.error)?;
        due.extend(p.ids.into_iter().map(|id| (id, at)));
    }
    for _ in 0..DELAYED {
        let t = ns_of(SystemTime::now());
        published.extend(client.publish("noop", b"n")?.into_iter().map(|id| (id, t)));
        // Spread out as the delayed ones start, so the baseline is not a burst.
        std::thread::sleep(Duration::from_millis(5));
    }
    client.shutdown()?;
    let started = rig.wait_started(before + 2 * DELAYED)?;
    let after = |from: &HashMap<String, u128>| {
        let mut ms: Vec<f64> = from
            .iter()
            .filter_map(|(id, at)| Some((*started.get(id)? as f64 - *at as f64) / 1e6))
            .collect();
        ms.sort_by(f64::total_cmp);
        ms
    };
    let (late_ms, now_ms) = (after(&due), after(&published));
    Ok((late_ms, now_ms))
}

/// Drain rate (jobs/s, first to last start) of `DRAIN_JOBS` default-priority jobs published
/// first.
fn drain(bin: &Path, url: &str, root: &Path, name: &str, priorities: bool) -> anyhow::Result<f64> {
    let mut rig = Rig::new(url, root, name, priorities)?;
    let mut client = rig.client()?;
    let payloads: Vec<Vec<u8>> = (0..DRAIN_JOBS).map(|i| i.to_string().into_bytes()).collect();
    client.publish_batch("noop", &payloads).map_err(|e| e.error)?;
    client.shutdown()?;
    rig.start(bin)?;
    let started = rig.wait_started(DRAIN_JOBS)?;
    let first = started.values().min().copied().unwrap_or(0);
    let last = started.values().max().copied().unwrap_or(0);
    Ok(DRAIN_JOBS as f64 / (last.saturating_sub(first) as f64 / 1e9).max(1e-9))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        return worker(args.get(2).map_or("/dev/null", String::as_str));
    }
    let url = std::env::var("PROCYARD_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("procyard-daemon"))
        .ok_or_else(|| anyhow::anyhow!("cannot locate the target directory"))?;
    anyhow::ensure!(bin.exists(), "{} is missing: build procyard-daemon first", bin.display());
    let root = tempfile::tempdir()?;

    for (warm, label) in [(false, ""), (true, "_warm")] {
        let (late, now) = delay_accuracy(&bin, &url, root.path(), warm)?;
        println!(
            "amqp delayed jobs ({} over 0.1-2 s, ladder {}): start after due p50 {:.1} ms, p99 {:.1} ms; undelayed publish-to-start p50 {:.1} ms, p99 {:.1} ms; earliest {:.1} ms",
            late.len(),
            if warm { "queues declared before" } else { "queues created on first use" },
            pct(&late, 0.5),
            pct(&late, 0.99),
            pct(&now, 0.5),
            pct(&now, 0.99),
            late.first().copied().unwrap_or(0.0)
        );
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            println!(
                "BENCH\tamqp_delay_lateness{label}_{name}\t{:.2}\tms\tamqp_undelayed_publish_to_start_{name}\t{:.2}\t{:.2}",
                pct(&late, q),
                pct(&now, q),
                pct(&late, q) / pct(&now, q).max(1e-9)
            );
        }
    }

    let (mut plain, mut prio) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        plain.push(drain(&bin, &url, root.path(), &format!("plain{run}"), false)?);
        prio.push(drain(&bin, &url, root.path(), &format!("prio{run}"), true)?);
    }
    println!(
        "amqp classic drain, default priority: without x-max-priority {plain:.0?} jobs/s, with {prio:.0?} jobs/s"
    );
    let (p, q) = (median(plain), median(prio));
    println!(
        "BENCH\tamqp_priorities_fifo_drain_jobs_per_s\t{q:.0}\tjobs/s\tamqp_no_priorities_drain\t{p:.0}\t{:.2}",
        q / p
    );
    Ok(())
}
