//! The scheduling benchmarks (issue 17), part of `../bench.rs` (`PROCYARD_BENCH_ONLY=sched`;
//! `PROCYARD_BENCH_SCHED` picks parts), each against a baseline measured in the same run:
//!
//! - `claims`: claim cost with 1,000,000 delayed jobs in the table against the same queue
//!   without them (goal ≤ 1.1×), [`ROUNDS`] rounds alternating the two files, in µs and in
//!   SQLite VM steps per claim (repeatable: the rows and index entries a claim visits);
//! - `lateness` (`lateness.rs`): how late delayed jobs start when a worker is free;
//! - `burst`: 100,000 jobs due in the same second on two longlived echo workers: the time from
//!   the due second until all ran, against 100,000 ÷ the jobs/s of the same workers draining
//!   100,000 jobs published for now, plus 1 s (the goal), [`ROUNDS`] rounds;
//! - `priority`: the FIFO path's cost of priorities: claim-and-finish jobs/s of the claim the
//!   daemon runs (`jobs_next (task, priority DESC, seq)`, `ORDER BY priority DESC, seq`) on
//!   jobs of the default priority, against the same drain with a FIFO-only index and order
//!   (`(task, seq)`, `ORDER BY seq`) as before priorities existed (goal ≥ 0.95×).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use procyard_daemon::queue::sqlite::SqliteQueue;
use procyard_daemon::queue::{OpenMode, PublishOptions, QueueBackend, TaskBinding};
use procyard_daemon::{Client, Config, control};
use rusqlite::params;

use super::burst_ab::{Cost, Meter};
use super::{Run, bench, longlived_task, median};

const READY: usize = 20_000;
const DELAYED: usize = 1_000_000;
const BATCH: usize = 10_000;
/// Rounds of each same-run comparison (medians reported, every round on stderr).
const ROUNDS: usize = 3;
/// Jobs due in the same second.
pub(super) const BURST: usize = 100_000;
/// The jobs of a burst waited for (the last published: two workers end the burst with them).
const LAST: usize = 8;

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
/// batches of 1,000 claims of [`READY`] jobs published now to the file at `path`, and the
/// SQLite VM steps of one claim (the mean: the same in every round, whatever the load).
fn claim_us(path: &Path) -> anyhow::Result<(f64, f64)> {
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
    let steps0 = daemon.claim_steps();
    let mut per_claim = super::claims::per_claim_us(&mut daemon, READY)?;
    let steps = (daemon.claim_steps() - steps0) as f64 / READY as f64;
    daemon.flush()?;
    Ok((median(&mut per_claim), steps))
}

/// Jobs/s of two longlived echo workers draining [`BURST`] jobs published for now (the
/// daemon started after the publish, as `longlived_rate` does).
pub(super) fn burst_rate(bin: &Path, me: &Path) -> anyhow::Result<(f64, Cost)> {
    let mut run = Run::new(&longlived_task(me, 2, 2, None))?;
    let last = publish_burst(&run, &PublishOptions::new())?;
    let t0 = Instant::now();
    run.start_logging(bin, log_filter())?;
    let meter = Meter::start(&run)?;
    wait_burst(&run, &last)?;
    let rate = BURST as f64 / t0.elapsed().as_secs_f64();
    let cost = meter.stop(&run)?;
    run.stop()?;
    if log_filter() != "warn" {
        eprintln!("bench:   drain stamps p50/p99/max ms:{}", super::lateness::stamps(&run));
    }
    Ok((rate, cost))
}

/// Seconds from the due second until [`BURST`] jobs due in it all ran, on the same workers
/// as [`burst_rate`], the daemon running (and asleep) when they fall due.
pub(super) fn burst_due_s(bin: &Path, me: &Path) -> anyhow::Result<(f64, Cost)> {
    let mut run = Run::new(&longlived_task(me, 2, 2, None))?;
    run.start_logging(bin, log_filter())?;
    let due = now_ms() + 10_000;
    let last = publish_burst(&run, &PublishOptions::new().at(at_ms(due)))?;
    anyhow::ensure!(now_ms() < due, "publishing took longer than the margin");
    control::poke(&run.socket())?;
    let meter = Meter::start(&run)?;
    wait_burst(&run, &last)?;
    let took = (now_ms() - due) as f64 / 1e3;
    let cost = meter.stop(&run)?;
    run.stop()?;
    if log_filter() != "warn" {
        eprintln!("bench:   burst stamps p50/p99/max ms:{}", super::lateness::stamps(&run));
    }
    Ok((took, cost))
}

/// The burst daemons' log filter: with `PROCYARD_BENCH_STAMPS=1`, the daemon's stamps of its
/// claims (a log line per claim, which costs the drain: only to see where the time goes).
pub(super) fn log_filter() -> &'static str {
    match std::env::var("PROCYARD_BENCH_STAMPS") {
        // A filter of its own (e.g. `warn,procyard_daemon=trace`), or the stamps.
        Ok(f) if f.contains('=') => Box::leak(f.into_boxed_str()),
        Ok(_) => super::lateness::STAMPS,
        Err(_) => "warn",
    }
}

/// Waits until the burst ran: for the jobs published last (the daemon tells when they end:
/// no status polls, whose ready-row counts would take the loop's time from the drain), then
/// checks that all did.
fn wait_burst(run: &Run, last: &[String]) -> anyhow::Result<()> {
    let mut client = Client::new(Config::load(&run.config)?);
    let waited = client.wait(last, Some(Duration::from_secs(300)))?;
    anyhow::ensure!(!waited.timed_out, "timed out waiting for the burst");
    run.wait_done("echo", BURST as u64, Duration::from_secs(60))
}

/// Publishes the burst; returns the ids of the last [`LAST`] jobs.
fn publish_burst(run: &Run, options: &PublishOptions) -> anyhow::Result<Vec<String>> {
    let config = Config::load(&run.config)?;
    let mut q = procyard_daemon::queue::open(&config.queue, OpenMode::Client)?;
    q.bind(&config.bindings())?;
    let payloads: Vec<Vec<u8>> = (0..BATCH).map(|i| format!("{i}").into_bytes()).collect();
    let mut ids = Vec::new();
    for _ in 0..BURST / BATCH {
        ids = q.publish_with("echo", &payloads, options).map_err(|p| p.error)?.ids;
    }
    Ok(ids.split_off(ids.len() - LAST))
}

/// The loop's side of the burst without workers: one claim (with the previous outcome) at a
/// time through the daemon's queue, over [`BURST`] jobs published for now to a closed file,
/// against the same jobs published delayed (due in 1 s) while the daemon's queue is open,
/// promoted by its first claim. Prints µs and VM steps per claim of each, and the first claim.
fn burst_claims(dir: &Path) -> anyhow::Result<()> {
    for delayed in [false, true] {
        let path = dir.join(format!("burst-{delayed}.db"));
        let mut client = SqliteQueue::open(&path, OpenMode::Client)?;
        client.bind(&binding())?;
        let payloads: Vec<Vec<u8>> = vec![b"x".to_vec(); BATCH];
        let due = now_ms() + 3000;
        let options =
            if delayed { PublishOptions::new().at(at_ms(due)) } else { PublishOptions::new() };
        let publish = |mut client: SqliteQueue| -> anyhow::Result<()> {
            for _ in 0..BURST / BATCH {
                client.publish_with("t.x", &payloads, &options).map_err(|p| p.error)?;
            }
            Ok(())
        };
        let mut client = Some(client);
        if !delayed {
            publish(client.take().expect("a client"))?;
        }
        let mut daemon = SqliteQueue::open(&path, OpenMode::Daemon)?;
        daemon.bind(&binding())?;
        if let Some(client) = client {
            publish(client)?;
            while now_ms() <= due {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let t0 = Instant::now();
        let first = daemon.claim("t", 1)?;
        let first_ms = t0.elapsed().as_secs_f64() * 1e3;
        daemon.complete(&first[0], procyard_daemon::queue::Outcome::Done)?;
        let steps0 = daemon.claim_steps();
        let t1 = Instant::now();
        let mut per = super::claims::per_claim_us(&mut daemon, BURST - 1000)?;
        let total = t1.elapsed().as_secs_f64();
        let steps = (daemon.claim_steps() - steps0) as f64 / (BURST - 1000) as f64;
        eprintln!(
            "bench: burst claims, {}: first claim {first_ms:.1} ms, then {:.1} µs per claim \
             (median of rounds), {total:.2} s for {}, {steps:.1} VM steps per claim",
            if delayed { "delayed (due together)" } else { "published for now" },
            median(&mut per),
            BURST - 1000
        );
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

/// Runs the scheduling benchmarks and prints their lines; `PROCYARD_BENCH_SCHED` (a
/// comma-separated list of `claims`, `lateness`, `burst`, `priority`) runs only those parts.
pub fn run(bin: &Path, me: &Path) -> anyhow::Result<()> {
    let only = std::env::var("PROCYARD_BENCH_SCHED").ok();
    let part = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|p| p == name));
    let dir = tempfile::tempdir()?;
    if part("claims") {
        claims(dir.path())?;
    }
    if part("lateness") {
        super::lateness::run(bin, me)?;
    }
    if part("burstclaims") {
        burst_claims(dir.path())?;
    }
    if part("burst")
        && let Some(old) = std::env::var_os("PROCYARD_BENCH_BURST_AB")
    {
        super::burst_ab::run(Path::new(&old), bin, me)?;
    } else if part("burst") {
        let (mut rates, mut tooks, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let (rate, _) = burst_rate(bin, me)?;
            let (took, _) = burst_due_s(bin, me)?;
            let goal = BURST as f64 / rate + 1.0;
            eprintln!(
                "bench: burst round {round}: {BURST} jobs drained at {rate:.0}/s (goal {goal:.2} s); \
                 due in one second, all ran in {took:.2} s ({:.2}x)",
                took / goal
            );
            rates.push(rate);
            tooks.push(took);
            ratios.push(took / goal);
        }
        let goal = BURST as f64 / median(&mut rates) + 1.0;
        eprintln!("bench: burst ratios to the goal {ratios:.2?}");
        bench(
            "due_100k_same_second_all_ran_s",
            median(&mut tooks),
            "s",
            "goal_100k_over_rate_plus_1_s",
            goal,
        );
    }
    if part("priority") {
        priority(dir.path())?;
    }
    Ok(())
}

/// Claim cost with [`DELAYED`] delayed jobs against none: µs (medians of rounds alternating
/// the two files) and SQLite VM steps per claim.
fn claims(dir: &Path) -> anyhow::Result<()> {
    let (none_db, with_db) = (delayed_file(dir, 0)?, delayed_file(dir, DELAYED)?);
    let (mut none, mut with) = (Vec::new(), Vec::new());
    let (mut none_steps, mut with_steps) = (0.0, 0.0);
    for round in 0..ROUNDS {
        let (us, steps) = claim_us(&none_db)?;
        none.push(us);
        none_steps = steps;
        let (us, steps) = claim_us(&with_db)?;
        with.push(us);
        with_steps = steps;
        eprintln!(
            "bench: claim µs round {round}: none {:.1}, 1m delayed {:.1}; VM steps per claim: \
             none {none_steps:.2}, 1m delayed {with_steps:.2}",
            none[round], with[round]
        );
    }
    let ratios: Vec<String> =
        with.iter().zip(&none).map(|(a, b)| format!("{:.2}", a / b)).collect();
    eprintln!("bench: claim µs per-round ratios (1m delayed / none): {}", ratios.join(" "));
    bench("claim_us_1m_delayed", median(&mut with), "us", "claim_us_no_delayed", median(&mut none));
    bench(
        "claim_vm_steps_1m_delayed",
        with_steps,
        "steps",
        "claim_vm_steps_no_delayed",
        none_steps,
    );
    Ok(())
}

/// The FIFO path's cost of priorities: rounds alternating the two drains.
fn priority(dir: &Path) -> anyhow::Result<()> {
    let (mut prio, mut fifo) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        prio.push(drain_rate(dir, "prio", "", PRIORITY_CLAIM)?);
        fifo.push(drain_rate(dir, "fifo", FIFO_INDEX, FIFO_CLAIM)?);
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
