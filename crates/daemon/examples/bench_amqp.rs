//! Benchmark: 10,000 no-op jobs through RabbitMQ with two `procyard-daemon` processes, on
//! quorum queues (the default) and on classic queues (`queue_type = "classic"`), beside the
//! embedded SQLite queue (one daemon) and Celery's prefork worker on the same broker, itself on
//! classic queues (its default) and on quorum queues.
//!
//! Run: `cargo run --release -p procyard-daemon --example bench_amqp` (builds the daemon
//! binary first: `cargo build --release -p procyard-daemon`). Needs RabbitMQ at
//! `PROCYARD_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`). Celery is measured
//! when `pip install celery` works in a venv under /tmp (`CELERY_VENV` to reuse one).
//!
//! `-- events` measures only what job events cost the drain (events on and off, same run,
//! `BENCH_ROUNDS` rounds, default 3): jobs/s, and CPU time per job of the two daemons and of
//! the broker (`beam.smp`, when this user can read its `/proc` entry; other clients of the
//! broker count too). `-- drain` measures the drains against Celery's (quorum and classic,
//! `BENCH_ROUNDS` interleaved rounds, medians). `BENCH_PREFETCH=N` sets the tasks' `prefetch`
//! (default 8; 1 holds one job per worker, as Celery's `worker_prefetch_multiplier = 1`).
//! `BENCH_DAEMON=PATH` runs another `procyard-daemon` binary (an A/B of two builds).
//!
//! Every job is handled by a longlived worker (this example re-executed as `worker FILE`) that
//! appends `JOB_ID DONE_NS` to FILE; latency is done time minus publish time.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use procyard_daemon::queue::{
    self, AmqpQueueType, BackendKind, OpenMode, QueueConfig, TaskBinding,
};

const JOBS: usize = 10_000;
const WORKERS_PER_DAEMON: usize = 2;
const PUBLISHERS: usize = 4;
const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn worker(file: &str) -> anyhow::Result<()> {
    let mut out = OpenOptions::new().create(true).append(true).open(file)?;
    procyard_daemon::worker::serve(|job| {
        let line = format!("{} {}\n", job.id, now_ns());
        let _ = out.write_all(line.as_bytes());
        procyard_daemon::worker::Outcome::Done
    })?;
    Ok(())
}

fn daemon_bin() -> anyhow::Result<PathBuf> {
    if let Ok(bin) = std::env::var("BENCH_DAEMON") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/bench_amqp → target/<profile>/procyard-daemon
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("procyard-daemon"))
        .ok_or_else(|| anyhow::anyhow!("cannot locate the target directory"))?;
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p procyard-daemon` first",
        bin.display()
    );
    Ok(bin)
}

fn write_config(dir: &Path, name: &str, queue: &str, socket: &Path) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let done = dir.join("done.log");
    // `BENCH_PREFETCH=N`: the tasks' `prefetch` (default: the daemon's, 8); with 1, a daemon
    // holds one job per worker, as Celery with `worker_prefetch_multiplier = 1` does.
    let prefetch = match std::env::var("BENCH_PREFETCH") {
        Ok(n) => format!("prefetch = {}\n", n.parse::<u32>()?),
        Err(_) => String::new(),
    };
    let text = format!(
        r#"[daemon]
grace_period = "5s"
control_socket = "{socket}"
[queue]
{queue}
[[task]]
name = "noop"
routing_keys = ["noop"]
command = ["{exe}", "worker", "{done}"]
work_model = "longlived"
min_workers = {w}
max_workers = {w}
max_attempts = 3
{prefetch}"#,
        socket = socket.display(),
        exe = exe.display(),
        done = done.display(),
        w = WORKERS_PER_DAEMON,
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Starts a daemon and waits for its readiness line on stdout (`--ready-fd 1`).
fn start_daemon(bin: &Path, config: &Path) -> anyhow::Result<Child> {
    let mut child = Command::new(bin)
        .args(["run", "--ready-fd", "1", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    // The readiness line (or EOF) within a deadline: a daemon that cannot reach the broker
    // fails the benchmark instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) if line.starts_with("ready") => Ok(child),
        outcome => {
            stop(child);
            anyhow::bail!("daemon did not become ready within 60 s: {outcome:?}")
        }
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

/// Waits until `file` names `n` distinct jobs; returns job id → done time.
fn wait_done(file: &Path, n: usize, limit: Duration) -> anyhow::Result<HashMap<String, u128>> {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let mut done = HashMap::new();
        for line in text.lines() {
            if let Some((id, ns)) = line.split_once(' ')
                && let Ok(ns) = ns.parse::<u128>()
            {
                done.entry(id.to_owned()).or_insert(ns);
            }
        }
        if done.len() >= n {
            return Ok(done);
        }
        anyhow::ensure!(Instant::now() < deadline, "only {} of {n} jobs done", done.len());
        // A benchmark harness, not a test: a short wait between reads of the result file.
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Figures {
    jobs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time of the daemons (all their threads, start to stop) per job, µs.
    daemon_cpu_us: f64,
    /// CPU time of the broker while the daemons ran, per job, µs (NaN when unreadable).
    broker_cpu_us: f64,
}

/// User + system CPU time of process `pid` (all its threads), in µs.
fn cpu_us(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start with the state (field 3);
    // utime and stime are fields 14 and 15, in clock ticks of 100 Hz on Linux.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10_000.0)
}

/// The broker's process (`beam.smp`), when this machine runs it.
fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "beam.smp").then_some(pid)
    })
}

fn figures(published: &HashMap<String, u128>, done: &HashMap<String, u128>) -> Figures {
    let first = published.values().min().copied().unwrap_or(0);
    let last = done.values().max().copied().unwrap_or(first);
    let mut lat: Vec<u128> =
        published.iter().filter_map(|(id, p)| done.get(id).map(|d| d.saturating_sub(*p))).collect();
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q).round() as usize).map_or(0.0, |ns| *ns as f64 / 1e6)
    };
    let secs = (last.saturating_sub(first)) as f64 / 1e9;
    Figures {
        jobs_per_s: published.len() as f64 / secs.max(1e-9),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        daemon_cpu_us: f64::NAN,
        broker_cpu_us: f64::NAN,
    }
}

/// Publishes `JOBS` jobs from `PUBLISHERS` threads; returns id → publish time.
fn publish_all(config: &QueueConfig) -> anyhow::Result<HashMap<String, u128>> {
    let binding =
        TaskBinding { name: "noop".into(), routing_keys: vec!["noop".into()], max_attempts: 3 };
    let handles: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (config, binding) = (config.clone(), binding.clone());
            std::thread::spawn(move || -> anyhow::Result<Vec<(String, u128)>> {
                let mut client = queue::open(&config, OpenMode::Client)?;
                client.bind(&[binding])?;
                let mut out = Vec::new();
                for i in (p..JOBS).step_by(PUBLISHERS) {
                    let t = now_ns();
                    for id in client.publish("noop", i.to_string().as_bytes())? {
                        out.push((id, t));
                    }
                }
                client.shutdown()?;
                Ok(out)
            })
        })
        .collect();
    let mut published = HashMap::new();
    for h in handles {
        let part = h.join().map_err(|_| anyhow::anyhow!("publisher panicked"))??;
        published.extend(part);
    }
    Ok(published)
}

/// Live: daemons running while jobs are published (latency, end-to-end rate). Drain
/// (`prepublish`): jobs published first, then the daemons start; the rate is from the first
/// to the last completion, as Celery's is measured.
fn run_amqp(
    bin: &Path,
    url: &str,
    dir: &Path,
    queue_type: AmqpQueueType,
    prepublish: bool,
    events: bool,
) -> anyhow::Result<Figures> {
    std::fs::create_dir_all(dir)?;
    let exchange = format!("procyard-bench-{}", uuid::Uuid::now_v7().simple());
    let kind = match queue_type {
        AmqpQueueType::Quorum => "quorum",
        AmqpQueueType::Classic => "classic",
    };
    let queue = format!(
        "backend = \"amqp\"\nurl = \"{url}\"\nexchange = \"{exchange}\"\nqueue_type = \"{kind}\"\nevents = {events}"
    );
    let c1 = write_config(dir, "amqp1", &queue, &dir.join("d1.sock"))?;
    let c2 = write_config(dir, "amqp2", &queue, &dir.join("d2.sock"))?;
    let config = QueueConfig {
        backend: BackendKind::Amqp,
        path: PathBuf::new(),
        url: Some(url.to_owned()),
        exchange: exchange.clone(),
        queue_type,
        events,
        priorities: false,
        schema: "procyard".into(),
        durability: Default::default(),
    };
    let early = if prepublish { Some(publish_all(&config)?) } else { None };
    let broker = broker_pid();
    let broker_before = broker.and_then(cpu_us);
    let d1 = start_daemon(bin, &c1)?;
    let d2 = start_daemon(bin, &c2)?;
    let result = match early {
        Some(published) => Ok(published),
        None => publish_all(&config),
    }
    .and_then(|published| {
        Ok((wait_done(&dir.join("done.log"), JOBS, Duration::from_secs(120))?, published))
    });
    let broker_cpu = match (broker_before, broker.and_then(cpu_us)) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let daemon_cpu = [&d1, &d2].iter().map(|d| cpu_us(d.id()).unwrap_or(f64::NAN)).sum::<f64>();
    stop(d1);
    stop(d2);
    let queues = [format!("{exchange}.noop"), format!("{exchange}.noop.dead")];
    let exchanges = [exchange.clone(), format!("{exchange}.dead"), format!("{exchange}.events")];
    delete_topology(url, &queues, &exchanges);
    let (done, published) = result?;
    let mut f = figures(&published, &done);
    f.daemon_cpu_us = daemon_cpu / JOBS as f64;
    f.broker_cpu_us = broker_cpu / JOBS as f64;
    if prepublish {
        let first = done.values().min().copied().unwrap_or(0);
        let last = done.values().max().copied().unwrap_or(0);
        f.jobs_per_s = JOBS as f64 / (last.saturating_sub(first) as f64 / 1e9).max(1e-9);
    }
    Ok(f)
}

fn run_sqlite(bin: &Path, dir: &Path) -> anyhow::Result<Figures> {
    let db = dir.join("queue.db");
    let socket = dir.join("s.sock");
    let queue = format!("backend = \"sqlite\"\npath = \"{}\"", db.display());
    // One daemon with the same total number of workers as the two AMQP daemons.
    let text = std::fs::read_to_string(write_config(dir, "sqlite", &queue, &socket)?)?
        .replace(&format!("= {WORKERS_PER_DAEMON}\n"), &format!("= {}\n", 2 * WORKERS_PER_DAEMON));
    let config_path = dir.join("sqlite.toml");
    std::fs::write(&config_path, text)?;
    let d = start_daemon(bin, &config_path)?;
    let config = QueueConfig {
        backend: BackendKind::Sqlite,
        path: db,
        url: None,
        exchange: "procyard".into(),
        queue_type: AmqpQueueType::default(),
        events: true,
        priorities: false,
        schema: "procyard".into(),
        durability: Default::default(),
    };
    let binding =
        TaskBinding { name: "noop".into(), routing_keys: vec!["noop".into()], max_attempts: 3 };
    let result = (|| -> anyhow::Result<_> {
        let mut client = queue::open(&config, OpenMode::Client)?;
        client.bind(&[binding])?;
        let mut published = HashMap::new();
        for i in 0..JOBS {
            let t = now_ns();
            for id in client.publish("noop", i.to_string().as_bytes())? {
                published.insert(id, t);
            }
            if i % 64 == 0 {
                let _ = procyard_daemon::control::poke(&socket);
            }
        }
        let _ = procyard_daemon::control::poke(&socket);
        Ok((wait_done(&dir.join("done.log"), JOBS, Duration::from_secs(120))?, published))
    })();
    stop(d);
    let (done, published) = result?;
    Ok(figures(&published, &done))
}

fn delete_topology(url: &str, queues: &[String], exchanges: &[String]) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    rt.block_on(async {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        let Ok(conn) = lapin::Connection::connect(url, Default::default()).await else { return };
        for q in queues.iter().cloned() {
            if let Ok(ch) = conn.create_channel().await {
                let _ = ch.queue_delete(q.into(), QueueDeleteOptions::default()).await;
            }
        }
        for x in exchanges.iter().cloned() {
            if let Ok(ch) = conn.create_channel().await {
                let _ = ch.exchange_delete(x.into(), ExchangeDeleteOptions::default()).await;
            }
        }
        let _ = conn.close(200, "bench cleanup".into()).await;
    });
}

/// Whether exchange `name` exists on the broker (a passive declare).
fn exchange_exists(url: &str, name: &str) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return true;
    };
    rt.block_on(async {
        use lapin::options::ExchangeDeclareOptions;
        let Ok(conn) = lapin::Connection::connect(url, Default::default()).await else {
            return true;
        };
        let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
        let exists = match conn.create_channel().await {
            Ok(ch) => ch
                .exchange_declare(
                    name.into(),
                    lapin::ExchangeKind::Topic,
                    passive,
                    lapin::types::FieldTable::default(),
                )
                .await
                .is_ok(),
            Err(_) => true,
        };
        let _ = conn.close(200, "bench check".into()).await;
        exists
    })
}

/// Celery's delayed-delivery topology (declared by a worker on quorum queues).
const CELERY_DELAYED_LEVELS: usize = 28;

/// Exchanges a Celery worker declares for events and remote control.
const CELERY_SHARED_EXCHANGES: [&str; 2] = ["celeryev", "celery.pidbox"];

const CELERY_APP: &str = r#"
import os, time
from celery import Celery
app = Celery("procyard_bench", broker=os.environ["BENCH_BROKER"])
app.conf.task_default_queue = os.environ["BENCH_QUEUE"]
app.conf.task_default_queue_type = os.environ["BENCH_QUEUE_TYPE"]
app.conf.worker_prefetch_multiplier = 1
app.conf.task_acks_late = True
OUT = os.environ["BENCH_DONE"]

@app.task(ignore_result=True)
def noop(i):
    with open(OUT, "a") as f:
        f.write("%s %d\n" % (i, time.time_ns()))
"#;

const CELERY_PUBLISH: &str = r#"
import sys, time, os
sys.path.insert(0, os.environ["BENCH_DIR"])
from bench_app import noop
n = int(sys.argv[1])
with open(os.environ["BENCH_PUB"], "w") as f:
    for i in range(n):
        t = time.time_ns()
        noop.delay(i)
        f.write("%d %d\n" % (i, t))
"#;

/// Celery's prefork worker (concurrency = 2 × workers per daemon) on the same broker.
fn run_celery(url: &str, dir: &Path, queue_type: &str) -> anyhow::Result<Figures> {
    let venv = match std::env::var("CELERY_VENV") {
        Ok(v) => PathBuf::from(v),
        Err(_) => {
            let venv = PathBuf::from("/tmp/procyard-bench-celery-venv");
            if !venv.join("bin/celery").exists() {
                let ok =
                    Command::new("python3").args(["-m", "venv"]).arg(&venv).status()?.success()
                        && Command::new(venv.join("bin/pip"))
                            .args(["install", "-q", "celery"])
                            .status()?
                            .success();
                anyhow::ensure!(ok, "pip install celery failed");
            }
            venv
        }
    };
    let python = venv.join("bin/python");
    let cdir = dir.join(format!("celery-{queue_type}"));
    std::fs::create_dir_all(&cdir)?;
    std::fs::write(cdir.join("bench_app.py"), CELERY_APP)?;
    std::fs::write(cdir.join("publish.py"), CELERY_PUBLISH)?;
    let queue_name = format!("procyard-bench-celery-{}", uuid::Uuid::now_v7().simple());
    let done = cdir.join("done.log");
    let pubs = cdir.join("pub.log");
    let envs = [
        ("BENCH_BROKER", url.replace("%2f", "")),
        ("BENCH_QUEUE", queue_name.clone()),
        ("BENCH_QUEUE_TYPE", queue_type.to_owned()),
        ("BENCH_DONE", done.display().to_string()),
        ("BENCH_PUB", pubs.display().to_string()),
        ("BENCH_DIR", cdir.display().to_string()),
    ];
    // A Celery worker declares exchanges shared by every Celery app on the vhost (events,
    // remote control, and on quorum queues a delayed-delivery topology): remove afterwards
    // only what this run created.
    let shared_existed: Vec<(&str, bool)> =
        CELERY_SHARED_EXCHANGES.iter().map(|&name| (name, exchange_exists(url, name))).collect();
    let delayed_existed = queue_type != "quorum" || exchange_exists(url, "celery_delayed_delivery");
    // Publish first (the queue is declared by the publisher), then time the worker.
    let status = Command::new(&python)
        .arg(cdir.join("publish.py"))
        .arg(JOBS.to_string())
        .envs(envs.clone())
        .status()?;
    anyhow::ensure!(status.success(), "celery publish failed");
    let mut worker = Command::new(&python)
        .args(["-m", "celery", "-A", "bench_app", "worker", "--pool", "prefork", "-c"])
        .arg((2 * WORKERS_PER_DAEMON).to_string())
        .args(["--loglevel", "warning", "-Q", &queue_name, "--without-gossip", "--without-mingle"])
        .current_dir(&cdir)
        .envs(envs)
        .stdout(Stdio::null())
        .spawn()?;
    let result = wait_done(&done, JOBS, Duration::from_secs(180));
    let _ = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
    let _ = worker.wait();
    // Celery declares a queue and a direct exchange named after it.
    delete_topology(url, std::slice::from_ref(&queue_name), std::slice::from_ref(&queue_name));
    let created: Vec<String> = shared_existed
        .iter()
        .filter(|(_, existed)| !existed)
        .map(|(n, _)| (*n).to_owned())
        .collect();
    delete_topology(url, &[], &created);
    if !delayed_existed {
        let levels: Vec<String> =
            (0..CELERY_DELAYED_LEVELS).map(|i| format!("celery_delayed_{i}")).collect();
        let mut exchanges = levels.clone();
        exchanges.push("celery_delayed_delivery".into());
        delete_topology(url, &levels, &exchanges);
    }
    let done = result?;
    // Throughput from the first to the last completion (publishing happened before).
    let first = done.values().min().copied().unwrap_or(0);
    let last = done.values().max().copied().unwrap_or(0);
    let secs = last.saturating_sub(first) as f64 / 1e9;
    Ok(Figures {
        jobs_per_s: JOBS as f64 / secs.max(1e-9),
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        daemon_cpu_us: f64::NAN,
        broker_cpu_us: f64::NAN,
    })
}

/// `BENCH_ROUNDS` (default 3).
fn rounds() -> anyhow::Result<usize> {
    match std::env::var("BENCH_ROUNDS") {
        Ok(n) => Ok(n.parse::<usize>()?.max(1)),
        Err(_) => Ok(3),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// What job events cost the drain: classic queues, jobs published first, with events on and
/// off alternately (which goes first alternates too), same run; medians and their ratios.
fn events_cost(bin: &Path, url: &str, root: &Path) -> anyhow::Result<()> {
    let mut runs: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds()? {
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for events in order {
            let dir = root.join(format!("events-{events}-{round}"));
            let f = run_amqp(bin, url, &dir, AmqpQueueType::Classic, true, events)?;
            println!(
                "round {round}: events {}: {:.0} jobs/s, CPU per job: daemons {:.1} µs, broker {:.1} µs",
                if events { "on" } else { "off" },
                f.jobs_per_s,
                f.daemon_cpu_us,
                f.broker_cpu_us
            );
            runs[usize::from(events)].push(f);
        }
    }
    let med = |v: &[Figures], f: fn(&Figures) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let [off, on] = &runs;
    let rate = (med(on, |f| f.jobs_per_s), med(off, |f| f.jobs_per_s));
    let daemon = (med(on, |f| f.daemon_cpu_us), med(off, |f| f.daemon_cpu_us));
    let broker = (med(on, |f| f.broker_cpu_us), med(off, |f| f.broker_cpu_us));
    println!(
        "amqp classic drain of {JOBS} jobs, 2 daemons x {WORKERS_PER_DAEMON} workers, medians of {} rounds: events on {:.0} jobs/s, off {:.0} (ratio on/off {:.2}); CPU per job: daemons {:.1} vs {:.1} µs ({:.2}x), broker {:.1} vs {:.1} µs ({:.2}x)",
        on.len(),
        rate.0,
        rate.1,
        rate.0 / rate.1,
        daemon.0,
        daemon.1,
        daemon.0 / daemon.1,
        broker.0,
        broker.1,
        broker.0 / broker.1
    );
    Ok(())
}

/// The drains against Celery's, quorum and classic, in `BENCH_ROUNDS` interleaved rounds
/// (ours, then Celery's, per queue type; events on, as by default): medians and the ratio of
/// the medians, and each round's ratio.
fn drain_vs_celery(bin: &Path, url: &str, root: &Path) -> anyhow::Result<()> {
    let n = rounds()?;
    for (kind, queue_type) in
        [("classic", AmqpQueueType::Classic), ("quorum", AmqpQueueType::Quorum)]
    {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..n {
            let dir = root.join(format!("drain-{kind}-{round}"));
            let us = run_amqp(bin, url, &dir, queue_type, true, true)?.jobs_per_s;
            let celery = run_celery(url, &dir, kind)?.jobs_per_s;
            println!(
                "round {round}, {kind}: procyard {us:.0} jobs/s, celery {celery:.0} jobs/s ({:.2}x)",
                us / celery
            );
            ours.push(us);
            theirs.push(celery);
        }
        let (m_us, m_celery) = (median(&ours), median(&theirs));
        let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| a / b).collect();
        println!(
            "amqp {kind} drain, medians of {n} rounds: procyard {m_us:.0} jobs/s (runs {ours:.0?}), celery prefork {m_celery:.0} jobs/s (runs {theirs:.0?}); ratio of medians {:.2}x, round ratios {ratios:.2?}",
            m_us / m_celery
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        return worker(args.get(2).map_or("/dev/null", String::as_str));
    }
    let url = std::env::var("PROCYARD_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let bin = daemon_bin()?;
    let root = tempfile::tempdir()?;
    match args.get(1).map(String::as_str) {
        Some("events") => return events_cost(&bin, &url, root.path()),
        Some("drain") => return drain_vs_celery(&bin, &url, root.path()),
        _ => {}
    }
    let sqlite_dir = root.path().join("sqlite");
    std::fs::create_dir_all(&sqlite_dir)?;

    let sqlite = run_sqlite(&bin, &sqlite_dir)?;
    println!(
        "sqlite (1 daemon, {} workers): {:.0} jobs/s, p50 {:.1} ms, p99 {:.1} ms",
        2 * WORKERS_PER_DAEMON,
        sqlite.jobs_per_s,
        sqlite.p50_ms,
        sqlite.p99_ms
    );
    // Quorum queues (the default) and classic queues, each published live (latency) and
    // published first (drain rate, measured as Celery's is).
    let mut amqp = Vec::new();
    for (kind, queue_type) in
        [("quorum", AmqpQueueType::Quorum), ("classic", AmqpQueueType::Classic)]
    {
        let dir = root.path().join(format!("amqp-{kind}"));
        let measured =
            run_amqp(&bin, &url, &dir.join("live"), queue_type, false, true).and_then(|live| {
                Ok((live, run_amqp(&bin, &url, &dir.join("drain"), queue_type, true, true)?))
            });
        let (live, drain) = match measured {
            Ok(f) => f,
            Err(e) => {
                println!("amqp: not measured: {e:#} (is RabbitMQ running at {url}?)");
                return Ok(());
            }
        };
        println!(
            "amqp {kind} queues (2 daemons x {WORKERS_PER_DAEMON} workers), published live: {:.0} jobs/s end to end, p50 {:.1} ms, p99 {:.1} ms; {JOBS} jobs published first: drained at {:.0} jobs/s",
            live.jobs_per_s, live.p50_ms, live.p99_ms, drain.jobs_per_s
        );
        amqp.push((kind, live, drain));
    }
    // Celery's prefork worker on each queue type (its default is classic).
    let mut celery = Vec::new();
    for kind in ["classic", "quorum"] {
        match run_celery(&url, root.path(), kind) {
            Ok(f) => {
                println!(
                    "celery prefork (-c {}), {kind} queue: {:.0} jobs/s",
                    2 * WORKERS_PER_DAEMON,
                    f.jobs_per_s
                );
                celery.push((kind, Some(f)));
            }
            Err(e) => {
                println!("celery ({kind} queue): could not be measured: {e:#}");
                celery.push((kind, None));
            }
        }
    }
    for (kind, live, drain) in &amqp {
        for (ckind, c) in &celery {
            let (cname, cval, ratio) = match c {
                Some(c) => (
                    format!("celery_prefork_{ckind}"),
                    format!("{:.0}", c.jobs_per_s),
                    format!("{:.2}", drain.jobs_per_s / c.jobs_per_s),
                ),
                None => (format!("celery_prefork_{ckind}(unavailable)"), "-".into(), "-".into()),
            };
            println!(
                "BENCH\tamqp_{kind}_drain_jobs_per_s\t{:.0}\tjobs/s\t{cname}\t{cval}\t{ratio}",
                drain.jobs_per_s
            );
        }
        println!(
            "BENCH\tamqp_{kind}_live_jobs_per_s\t{:.0}\tjobs/s\tsqlite_embedded\t{:.0}\t{:.2}",
            live.jobs_per_s,
            sqlite.jobs_per_s,
            live.jobs_per_s / sqlite.jobs_per_s
        );
        println!(
            "BENCH\tamqp_{kind}_publish_to_done_p50\t{:.2}\tms\tsqlite_embedded\t{:.2}\t{:.2}",
            live.p50_ms,
            sqlite.p50_ms,
            live.p50_ms / sqlite.p50_ms
        );
        println!(
            "BENCH\tamqp_{kind}_publish_to_done_p99\t{:.2}\tms\tsqlite_embedded\t{:.2}\t{:.2}",
            live.p99_ms,
            sqlite.p99_ms,
            live.p99_ms / sqlite.p99_ms
        );
    }
    Ok(())
}
