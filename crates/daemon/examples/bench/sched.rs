//! The scheduling benchmarks (issue 17), part of `../bench.rs` (`PROCYARD_BENCH_ONLY=sched`),
//! each against a baseline measured in the same run:
//!
//! - claim cost with 1,000,000 delayed jobs in the table against the same queue without them
//!   (goal ≤ 1.1×), [`ROUNDS`] rounds alternating the two files;
//! - how late delayed jobs start when a worker is free: due times spaced [`SPACING`] apart (a
//!   `true` job runs in a few ms, eight workers), p50 and p99 of start − due (goals < 5 ms and
//!   < 20 ms), beside the publish→start time of jobs published for now;
//! - 100,000 jobs due in the same second on two longlived echo workers: the time from the due
//!   second until all ran, against 100,000 ÷ the jobs/s of the same workers draining 100,000
//!   jobs published for now, plus 1 s (the goal);
//! - the FIFO path's cost of priorities: claim-and-finish jobs/s of the claim the daemon runs
//!   (`jobs_next (task, priority DESC, seq)`, `ORDER BY priority DESC, seq`) on jobs of the
//!   default priority, against the same drain with a FIFO-only index and order
//!   (`(task, seq)`, `ORDER BY seq`) as before priorities existed (goal ≥ 0.95×).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use procyard_daemon::queue::sqlite::SqliteQueue;
use procyard_daemon::queue::{OpenMode, PublishOptions, QueueBackend, TaskBinding};
use procyard_daemon::{Client, Config, control};
use rusqlite::params;

use super::{Run, bench, longlived_task, median};

const READY: usize = 20_000;
const DELAYED: usize = 1_000_000;
const BATCH: usize = 10_000;
/// Rounds of each same-run comparison (medians reported, every round on stderr).
const ROUNDS: usize = 3;
/// Delayed jobs measured for lateness, and how far apart their due times are.
const LATE_JOBS: usize = 200;
const SPACING: Duration = Duration::from_millis(25);
/// Jobs due in the same second.
const BURST: usize = 100_000;

fn binding() -> Vec<TaskBinding> {
    vec![TaskBinding { name: "t".into(), routing_keys: vec!["t.#".into()], max_attempts: 3 }]
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn at_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms as u64)
}

/// A queue file with `delayed` jobs due in an hour (older than every ready job to come).
fn delayed_file(dir: &Path, delayed: usize) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("claims-{delayed}.db"));
    let mut client = SqliteQueue::open(&path, OpenMode::Client)?;
    client.bind(&binding())?;
    let later = PublishOptions::new().delay(Duration::from_secs(3600));
    let payloads: Vec<Vec<u8>> = vec![b"x".to_vec(); BATCH];
    for _ in 0..delayed / BATCH {
        client.publish_with("t.x", &payloads, &later).map_err(|p| p.error)?;
    }
    Ok(path)
}

/// The median µs of one claim (with the previous job's outcome, as the daemon does), over
/// batches of 1,000 claims of [`READY`] jobs published now to the file at `path`.
fn claim_us(path: &Path) -> anyhow::Result<f64> {
    let mut client = SqliteQueue::open(path, OpenMode::Client)?;
    client.bind(&binding())?;
    let payloads: Vec<Vec<u8>> = vec![b"x".to_vec(); BATCH];
    for _ in 0..READY / BATCH {
        client.publish_batch("t.x", &payloads).map_err(|p| p.error)?;
    }
    drop(client);
    let mut daemon = SqliteQueue::open(path, OpenMode::Daemon)?;
    daemon.bind(&binding())?;
    daemon.set_retention(procyard_daemon::queue::Retention {
        keep_done: Duration::ZERO,
        keep_done_max: 0,
    });
    let mut per_claim = super::claims::per_claim_us(&mut daemon, READY)?;
    daemon.flush()?;
    Ok(median(&mut per_claim))
}

/// Start lateness (ms) of [`LATE_JOBS`] jobs to a daemon with eight workers for a `true`
/// command: delayed, each due [`SPACING`] after the previous one (all published before the
/// first is due), start − due; or, for the baseline, published for now one at a time
/// [`SPACING`] apart, start − publish. Returns p50 and p99.
fn lateness_ms(bin: &Path, delayed: bool) -> anyhow::Result<(f64, f64)> {
    let task =
        "[[task]]\nname = \"t\"\nrouting_keys = [\"t.#\"]\ncommand = [\"true\"]\nmax_workers = 8\n";
    let mut run = Run::new(task)?;
    run.start(bin)?;
    let mut client = Client::new(Config::load(&run.config)?);
    let spacing = SPACING.as_millis() as i64;
    let first = now_ms() + 2000;
    let mut due = Vec::with_capacity(LATE_JOBS);
    for i in 0..LATE_JOBS {
        if delayed {
            let at = first + i as i64 * spacing;
            let p = client.publish_with("t.x", b"", &PublishOptions::new().at(at_ms(at)))?;
            due.push((p.ids[0].clone(), at));
        } else {
            let at = now_ms();
            let p = client.publish_with("t.x", b"", &PublishOptions::new())?;
            due.push((p.ids[0].clone(), at));
            let next = Instant::now() + SPACING;
            while Instant::now() < next {
                run.pause();
            }
        }
    }
    anyhow::ensure!(!delayed || now_ms() < first, "publishing took longer than the margin");
    run.wait_done("t", LATE_JOBS as u64, Duration::from_secs(120))?;
    let mut late = Vec::with_capacity(LATE_JOBS);
    for (id, at) in &due {
        let job = client.job(id)?;
        let started = job.attempts.first().and_then(|a| a.started_ms);
        let started = started.ok_or_else(|| anyhow::anyhow!("job {id} has no start"))?;
        late.push((started - at).max(0) as f64);
    }
    late.sort_by(|a, b| a.total_cmp(b));
    let p99 = late[(late.len() * 99 / 100).min(late.len() - 1)];
    Ok((median(&mut late), p99))
}

/// Jobs/s of two longlived echo workers draining [`BURST`] jobs published for now (the
/// daemon started after the publish, as `longlived_rate` does).
fn burst_rate(bin: &Path, me: &Path) -> anyhow::Result<f64> {
    let mut run = Run::new(&longlived_task(me, 2, 2, None))?;
    publish_burst(&run, &PublishOptions::new())?;
    let t0 = Instant::now();
    run.start(bin)?;
    run.wait_done("echo", BURST as u64, Duration::from_secs(300))?;
    let rate = BURST as f64 / t0.elapsed().as_secs_f64();
    run.stop()?;
    Ok(rate)
}

/// Seconds from the due second until [`BURST`] jobs due in it all ran, on the same workers
/// as [`burst_rate`], the daemon running (and asleep) when they fall due.
fn burst_due_s(bin: &Path, me: &Path) -> anyhow::Result<f64> {
    let mut run = Run::new(&longlived_task(me, 2, 2, None))?;
    run.start(bin)?;
    let due = now_ms() + 10_000;
    publish_burst(&run, &PublishOptions::new().at(at_ms(due)))?;
    anyhow::ensure!(now_ms() < due, "publishing took longer than the margin");
    control::poke(&run.socket())?;
    run.wait_done("echo", BURST as u64, Duration::from_secs(300))?;
    let took = (now_ms() - due) as f64 / 1e3;
    run.stop()?;
    Ok(took)
}

fn publish_burst(run: &Run, options: &PublishOptions) -> anyhow::Result<()> {
    let config = Config::load(&run.config)?;
    let mut q = procyard_daemon::queue::open(&config.queue, OpenMode::Client)?;
    q.bind(&config.bindings())?;
    let payloads: Vec<Vec<u8>> = (0..BATCH).map(|i| format!("{i}").into_bytes()).collect();
    for _ in 0..BURST / BATCH {
        q.publish_with("echo", &payloads, options).map_err(|p| p.error)?;
    }
    Ok(())
}

/// The claim-order index and claim of the FIFO-only baseline (before priorities).
const FIFO_INDEX: &str = "DROP INDEX jobs_next;
    CREATE INDEX jobs_fifo ON jobs(task, seq) WHERE state = 0 AND not_before = 0;";
const FIFO_CLAIM: &str = "UPDATE jobs SET state = 1, attempts = attempts + 1, lease_owner = 'b'
    WHERE seq IN (SELECT seq FROM jobs INDEXED BY jobs_fifo
                  WHERE task = 't' AND state = 0 AND not_before = 0 ORDER BY seq LIMIT 1)
    RETURNING seq, id, routing_key, payload, attempts";
/// The daemon's claim (`lease.rs`), with its priority order.
const PRIORITY_CLAIM: &str = "UPDATE jobs SET state = 1, attempts = attempts + 1, lease_owner = 'b'
    WHERE seq IN (SELECT seq FROM jobs INDEXED BY jobs_next
                  WHERE task = 't' AND state = 0 AND not_before = 0
                  ORDER BY priority DESC, seq LIMIT 1)
    RETURNING seq, id, routing_key, payload, attempts, priority";

/// Jobs/s of claiming [`READY`] default-priority jobs one at a time, each claim in one
/// transaction with the previous job marked done, by `claim` (after `setup`).
fn drain_rate(dir: &Path, name: &str, setup: &str, claim: &str) -> anyhow::Result<f64> {
    let path = dir.join(format!("{name}.db"));
    let mut client = SqliteQueue::open(&path, OpenMode::Client)?;
    client.bind(&binding())?;
    let payloads: Vec<Vec<u8>> = vec![b"x".to_vec(); BATCH];
    for _ in 0..READY / BATCH {
        client.publish_batch("t.x", &payloads).map_err(|p| p.error)?;
    }
    drop(client);
    let mut conn = rusqlite::Connection::open(&path)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(setup)?;
    let t0 = Instant::now();
    let mut last: Option<i64> = None;
    for _ in 0..READY {
        let tx = conn.transaction()?;
        if let Some(seq) = last {
            tx.prepare_cached("UPDATE jobs SET state = 2, finished_ms = ?1 WHERE seq = ?2")?
                .execute(params![now_ms(), seq])?;
        }
        let seq: i64 = tx.prepare_cached(claim)?.query_row([], |r| r.get(0))?;
        tx.commit()?;
        last = Some(seq);
    }
    let rate = READY as f64 / t0.elapsed().as_secs_f64();
    drop(conn);
    for f in procyard_daemon::queue::sqlite::companion_files(&path) {
        let _ = std::fs::remove_file(f);
    }
    Ok(rate)
}

/// Runs the scheduling benchmarks and prints their lines.
pub fn run(bin: &Path, me: &Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (none_db, with_db) = (delayed_file(dir.path(), 0)?, delayed_file(dir.path(), DELAYED)?);
    let (mut none, mut with) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        none.push(claim_us(&none_db)?);
        with.push(claim_us(&with_db)?);
        eprintln!(
            "bench: claim µs round {round}: none {:.1}, 1m delayed {:.1}",
            none[round], with[round]
        );
    }
    bench("claim_us_1m_delayed", median(&mut with), "us", "claim_us_no_delayed", median(&mut none));

    let (now50, now99) = lateness_ms(bin, false)?;
    let (p50, p99) = lateness_ms(bin, true)?;
    bench("delayed_start_late_p50_ms", p50, "ms", "goal_ms", 5.0);
    bench("delayed_start_late_p99_ms", p99, "ms", "goal_ms", 20.0);
    bench("delayed_start_late_p50_ms_vs_now", p50, "ms", "publish_start_p50_ms", now50);
    bench("delayed_start_late_p99_ms_vs_now", p99, "ms", "publish_start_p99_ms", now99);

    let rate = burst_rate(bin, me)?;
    let took = burst_due_s(bin, me)?;
    let goal = BURST as f64 / rate + 1.0;
    eprintln!(
        "bench: {BURST} jobs drained at {rate:.0}/s; due in one second, all ran in {took:.2} s"
    );
    bench("due_100k_same_second_all_ran_s", took, "s", "goal_100k_over_rate_plus_1_s", goal);

    let (mut prio, mut fifo) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        prio.push(drain_rate(dir.path(), "prio", "", PRIORITY_CLAIM)?);
        fifo.push(drain_rate(dir.path(), "fifo", FIFO_INDEX, FIFO_CLAIM)?);
        eprintln!(
            "bench: default-priority drain round {round}: {:.0}/s, FIFO-only {:.0}/s",
            prio[round], fifo[round]
        );
    }
    bench(
        "claim_default_priority_per_s",
        median(&mut prio),
        "jobs/s",
        "claim_fifo_only_per_s",
        median(&mut fifo),
    );
    Ok(())
}
