//! The scheduling benchmarks (issue 17), part of `../bench.rs` (`PROCYARD_BENCH_ONLY=sched`):
//! claim cost with 1,000,000 delayed jobs in the table against the same queue without them,
//! and how late delayed jobs start against the publish→start time of jobs published for now,
//! both measured in the same run.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use procyard_daemon::queue::sqlite::SqliteQueue;
use procyard_daemon::queue::{OpenMode, Outcome, PublishOptions, QueueBackend, TaskBinding};
use procyard_daemon::{Client, Config};

use super::{Run, bench, median};

const READY: usize = 20_000;
const DELAYED: usize = 1_000_000;
const BATCH: usize = 10_000;

fn binding() -> Vec<TaskBinding> {
    vec![TaskBinding { name: "t".into(), routing_keys: vec!["t.#".into()], max_attempts: 3 }]
}

/// The median µs of one claim (with the previous job's outcome, as the daemon does), over
/// batches of 1,000 claims of the `READY` jobs, with `delayed` jobs due in an hour published
/// first (so they are older than every ready job).
fn claim_us(dir: &Path, delayed: usize) -> anyhow::Result<f64> {
    let path = dir.join(format!("claims-{delayed}.db"));
    let mut client = SqliteQueue::open(&path, OpenMode::Client)?;
    client.bind(&binding())?;
    let later = PublishOptions::new().delay(Duration::from_secs(3600));
    let payloads: Vec<Vec<u8>> = vec![b"x".to_vec(); BATCH];
    for _ in 0..delayed / BATCH {
        client.publish_with("t.x", &payloads, &later).map_err(|p| p.error)?;
    }
    for _ in 0..READY / BATCH {
        client.publish_batch("t.x", &payloads).map_err(|p| p.error)?;
    }
    drop(client);
    let mut daemon = SqliteQueue::open(&path, OpenMode::Daemon)?;
    daemon.bind(&binding())?;
    daemon.set_retention(procyard_daemon::queue::Retention {
        keep_done: Duration::ZERO,
        keep_done_max: 0,
    });
    let mut per_claim = Vec::new();
    let mut last = None;
    for _ in 0..READY / 1000 {
        let t0 = Instant::now();
        for _ in 0..1000 {
            if let Some(job) = last.take() {
                daemon.complete(&job, Outcome::Done)?;
            }
            let mut jobs = daemon.claim("t", 1)?;
            anyhow::ensure!(jobs.len() == 1, "a ready job to claim");
            last = jobs.pop();
        }
        per_claim.push(t0.elapsed().as_secs_f64() * 1e6 / 1000.0);
    }
    Ok(median(&mut per_claim))
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Start lateness (ms) of `n` jobs, each published with a delay of 100–300 ms (or, for the
/// baseline, for now) to a daemon with free workers: p50 and p99 of start − due.
fn lateness_ms(bin: &Path, n: usize, delayed: bool) -> anyhow::Result<(f64, f64)> {
    let task =
        "[[task]]\nname = \"t\"\nrouting_keys = [\"t.#\"]\ncommand = [\"true\"]\nmax_workers = 8\n";
    let mut run = Run::new(task)?;
    run.start(bin)?;
    let mut client = Client::new(Config::load(&run.config)?);
    let mut due = Vec::with_capacity(n);
    for i in 0..n {
        let delay = if delayed {
            Duration::from_millis(100 + (i as u64 * 37) % 200)
        } else {
            Duration::ZERO
        };
        let at = now_ms() + delay.as_millis() as i64;
        let opts = if delayed { PublishOptions::new().delay(delay) } else { PublishOptions::new() };
        let p = client.publish_with("t.x", b"", &opts)?;
        due.push((p.ids[0].clone(), at));
        if i % 20 == 19 {
            // Spread publishes out so due times are spread and workers free.
            run.pause();
        }
    }
    run.wait_done("t", n as u64, Duration::from_secs(120))?;
    let mut late = Vec::with_capacity(n);
    for (id, at) in &due {
        let job = client.job(id)?;
        let started = job.attempts.first().and_then(|a| a.started_ms).unwrap_or(*at);
        late.push((started - at).max(0) as f64);
    }
    late.sort_by(|a, b| a.total_cmp(b));
    let p99 = late[(late.len() * 99 / 100).min(late.len() - 1)];
    Ok((median(&mut late), p99))
}

/// Runs the scheduling benchmarks and prints their lines.
pub fn run(bin: &Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let none = claim_us(dir.path(), 0)?;
    let with = claim_us(dir.path(), DELAYED)?;
    bench("claim_us_1m_delayed", with, "us", "claim_us_no_delayed", none);
    let (now50, now99) = lateness_ms(bin, 300, false)?;
    let (p50, p99) = lateness_ms(bin, 300, true)?;
    bench("delayed_start_late_p50_ms", p50, "ms", "publish_start_p50_ms", now50);
    bench("delayed_start_late_p99_ms", p99, "ms", "publish_start_p99_ms", now99);
    Ok(())
}
