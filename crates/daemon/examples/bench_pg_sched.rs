//! Benchmark: the scheduling controls on the PostgreSQL backend (issues 17 and 20), each
//! against a baseline measured in the same run on the same database.
//!
//! - Claim cost: the median µs of one claim (with the previous job's outcome, as the daemon
//!   does) with 1,000,000 delayed jobs in the table, against the same with none; medians of
//!   batches of 1,000 claims, 3 rounds alternating the two schemas.
//! - Buffers per claim: `EXPLAIN (ANALYZE, BUFFERS)` of the daemon's claim statement (one job,
//!   rolled back) with the 1,000,000 delayed jobs against none: the shared buffers (pages)
//!   it touched, a count that load does not blur.
//! - Priorities: the same claims when the ready jobs have mixed priorities (0..9) against all
//!   at the default.
//! - Due-time lateness: 300 jobs delayed 300 ms + i × 7 ms, claimed by a daemon backend driven
//!   like the daemon's loop (its timer wakes it at `next_due`, or its session does);
//!   p50 and p99 of claim time − due time, against the publish → claim time of jobs published
//!   for now through the same loop.
//!
//! Run: `cargo run --release -p procyard-daemon --example bench_pg_sched`. Needs PostgreSQL at
//! `PROCYARD_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`); each schema is its
//! own, dropped after.

#[path = "bench/claims.rs"]
mod claims;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use procyard_daemon::queue::{
    self, BackendKind, OpenMode, Outcome, PublishOptions, QueueBackend, QueueConfig, Retention,
    TaskBinding,
};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const DELAYED: usize = 1_000_000;
const READY: usize = 10_000;
const BATCH: usize = 10_000;
const ROUNDS: usize = 3;
const TIMED: usize = 300;
/// Claims explained per schema.
const EXPLAINS: usize = 20;

fn binding() -> Vec<TaskBinding> {
    vec![TaskBinding { name: "t".into(), routing_keys: vec!["t.#".into()], max_attempts: 3 }]
}

fn config(url: &str, schema: &str) -> QueueConfig {
    QueueConfig {
        backend: BackendKind::Postgres,
        path: PathBuf::new(),
        url: Some(url.to_owned()),
        exchange: "procyard".into(),
        queue_type: Default::default(),
        schema: schema.to_owned(),
        durability: Default::default(),
        events: true,
        priorities: false,
    }
}

fn open(url: &str, schema: &str, mode: OpenMode) -> anyhow::Result<Box<dyn QueueBackend>> {
    let mut q = queue::open(&config(url, schema), mode)?;
    q.bind(&binding())?;
    Ok(q)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A schema dropped at the end.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(url: &str) -> Schema {
        Schema { url: url.to_owned(), name: format!("bench_{}", uuid::Uuid::now_v7().simple()) }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.url, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}

/// Publishes `READY` ready jobs (priorities 0..9 in turn when `mixed`).
fn fill(url: &str, s: &Schema, mixed: bool) -> anyhow::Result<()> {
    let mut client = open(url, &s.name, OpenMode::Client)?;
    let payloads = vec![b"x".to_vec(); BATCH / 10];
    for i in 0..READY / (BATCH / 10) {
        let opts = if mixed {
            PublishOptions::new().priority((i % 10) as u8)
        } else {
            PublishOptions::new()
        };
        client.publish_with("t.x", &payloads, &opts).map_err(|p| p.error)?;
    }
    Ok(())
}

/// The median µs of one claim (with the previous outcome) over the schema's ready jobs.
fn claim_us(url: &str, s: &Schema) -> anyhow::Result<f64> {
    let mut daemon = open(url, &s.name, OpenMode::Daemon)?;
    daemon.set_retention(Retention { keep_done: Duration::ZERO, keep_done_max: 0 });
    let mut per_claim = claims::per_claim_us(daemon.as_mut(), READY)?;
    daemon.shutdown()?;
    Ok(median(&mut per_claim))
}

/// Shared buffers (hit + read) of the top plan node, then those of the index scan on
/// `jobs_ready`, that the daemon's claim of one job touches: `EXPLAIN (ANALYZE, BUFFERS)`,
/// [`EXPLAINS`] times, each in a transaction rolled back (the same job each time).
fn claim_buffers(url: &str, s: &Schema) -> anyhow::Result<(Vec<f64>, String)> {
    let mut c = postgres::Client::connect(url, postgres::NoTls)?;
    c.batch_execute(&format!("SET search_path = {}", s.name))?;
    // The rounds before left dead rows, which autovacuum clears when it gets to them.
    c.batch_execute("VACUUM ANALYZE jobs, queue")?;
    let sql = format!("EXPLAIN (ANALYZE, BUFFERS) {}", queue::postgres::CLAIM);
    let mut touched = Vec::with_capacity(EXPLAINS);
    let mut last = String::new();
    for _ in 0..EXPLAINS {
        let mut tx = c.transaction()?;
        let rows = tx.query(&sql, &[&424_242i64, &"t", &1i64])?;
        tx.rollback()?;
        let lines: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        // The first `Buffers:` line is the top node's: the whole statement's pages.
        let top = lines.iter().find(|l| l.trim_start().starts_with("Buffers:"));
        let count = |what: &str| {
            top.and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix(what)))
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        touched.push(count("hit=") + count("read="));
        last = lines.join("\n");
    }
    Ok((touched, last))
}

/// Claim time − due time (ms) of `TIMED` jobs, each published with `delay(i)`, claimed by a
/// daemon backend sleeping on its own deadlines and wake-ups.
fn lateness_ms(url: &str, delay: impl Fn(usize) -> Duration) -> anyhow::Result<Vec<f64>> {
    let s = Schema::new(url);
    let mut daemon = open(url, &s.name, OpenMode::Daemon)?;
    let mut poll = mio::Poll::new()?;
    daemon.attach(poll.registry(), mio::Token(0))?;
    let mut timer = procyard_core::Timer::new()?;
    poll.registry().register(&mut timer, mio::Token(1), mio::Interest::READABLE)?;
    let mut due: HashMap<Vec<u8>, Instant> = HashMap::new();
    let publisher = std::thread::spawn({
        let (url, name) = (url.to_owned(), s.name.clone());
        let delays: Vec<Duration> = (0..TIMED).map(&delay).collect();
        move || -> anyhow::Result<Vec<(Vec<u8>, Instant)>> {
            let mut c = open(&url, &name, OpenMode::Client)?;
            let start = Instant::now();
            let mut out = Vec::new();
            for (i, d) in delays.into_iter().enumerate() {
                let payload = i.to_string().into_bytes();
                let at = Instant::now() + d;
                let opts = if d.is_zero() {
                    PublishOptions::new().header("b", "x")
                } else {
                    PublishOptions::new().delay(d)
                };
                c.publish_with("t.x", std::slice::from_ref(&payload), &opts)
                    .map_err(|p| p.error)?;
                out.push((payload, at));
                // Jobs for now: one every 7 ms, so each meets an idle loop.
                let next = start + Duration::from_millis(7 * (i as u64 + 1));
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok(out)
        }
    });
    let mut late = Vec::new();
    let mut events = mio::Events::with_capacity(8);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut claimed: Vec<(Vec<u8>, Instant)> = Vec::new();
    while claimed.len() < TIMED && Instant::now() < deadline {
        daemon.on_wake()?;
        for job in daemon.claim("t", 100)? {
            claimed.push((job.payload.clone(), Instant::now()));
            daemon.complete(&job, Outcome::Done)?;
        }
        daemon.flush()?;
        // As the daemon's loop: its timer wakes the poll at the next due time.
        timer.set(Some(daemon.next_due()?.unwrap_or(deadline)))?;
        poll.poll(&mut events, None)?;
        if events.iter().any(|e| e.token() == mio::Token(1)) {
            timer.fired();
        }
    }
    for (payload, at) in publisher.join().map_err(|_| anyhow::anyhow!("publisher panicked"))?? {
        due.insert(payload, at);
    }
    for (payload, at) in claimed {
        if let Some(d) = due.get(&payload) {
            late.push(at.saturating_duration_since(*d).as_secs_f64() * 1e3);
        }
    }
    anyhow::ensure!(late.len() == TIMED, "only {} of {TIMED} jobs claimed", late.len());
    daemon.shutdown()?;
    Ok(late)
}

fn main() -> anyhow::Result<()> {
    let url = std::env::var("PROCYARD_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    // `PROCYARD_BENCH_SCHED=claims` (claim cost and buffers only) skips the other parts.
    let only = std::env::var("PROCYARD_BENCH_SCHED").ok();
    let part = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|p| p == name));
    // Claim cost with a million delayed jobs against none.
    let (with, without) = (Schema::new(&url), Schema::new(&url));
    {
        let mut c = open(&url, &with.name, OpenMode::Client)?;
        let later = PublishOptions::new().delay(Duration::from_secs(3600));
        let payloads = vec![b"x".to_vec(); BATCH];
        for _ in 0..DELAYED / BATCH {
            c.publish_with("t.x", &payloads, &later).map_err(|p| p.error)?;
        }
        drop(open(&url, &without.name, OpenMode::Client)?);
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        fill(&url, &without, false)?;
        b.push(claim_us(&url, &without)?);
        fill(&url, &with, false)?;
        a.push(claim_us(&url, &with)?);
    }
    eprintln!("claim µs: with {DELAYED} delayed {a:.1?}, with none {b:.1?}");
    let (a, b) = (median(&mut a), median(&mut b));
    println!(
        "BENCH\tpg_claim_with_1m_delayed_us\t{a:.1}\tus\tpg_claim_with_none\t{b:.1}\t{:.2}",
        a / b
    );
    // The pages the claim touches, with the delayed jobs and without (ready jobs in both).
    fill(&url, &without, false)?;
    fill(&url, &with, false)?;
    let (mut a, plan_with) = claim_buffers(&url, &with)?;
    let (mut b, plan_without) = claim_buffers(&url, &without)?;
    eprintln!("claim plan with {DELAYED} delayed:\n{plan_with}\nwith none:\n{plan_without}");
    eprintln!("claim shared buffers: with {DELAYED} delayed {a:?}, with none {b:?}");
    let (a, b) = (median(&mut a), median(&mut b));
    println!(
        "BENCH\tpg_claim_buffers_1m_delayed\t{a:.0}\tpages\tpg_claim_buffers_no_delayed\t{b:.0}\t{:.2}",
        a / b
    );
    drop(with);
    if !part("priority") && !part("lateness") {
        return Ok(());
    }
    // Mixed priorities against all default.
    let (mut m, mut d) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        d.push(claim_us(&url, &{
            let s = Schema::new(&url);
            fill(&url, &s, false)?;
            s
        })?);
        m.push(claim_us(&url, &{
            let s = Schema::new(&url);
            fill(&url, &s, true)?;
            s
        })?);
    }
    eprintln!("claim µs: mixed priorities {m:.1?}, all default {d:.1?}");
    let (m, d) = (median(&mut m), median(&mut d));
    println!(
        "BENCH\tpg_claim_mixed_priorities_us\t{m:.1}\tus\tpg_claim_default_priority\t{d:.1}\t{:.2}",
        m / d
    );
    // Due-time lateness against publish → claim of jobs for now.
    let mut delayed = lateness_ms(&url, |i| Duration::from_millis(300 + 7 * i as u64))?;
    let mut now = lateness_ms(&url, |_| Duration::ZERO)?;
    let (p50, p99) = (percentile(&mut delayed, 0.5), percentile(&mut delayed, 0.99));
    let (n50, n99) = (percentile(&mut now, 0.5), percentile(&mut now, 0.99));
    eprintln!("lateness ms: delayed p50 {p50:.2} p99 {p99:.2}; for now p50 {n50:.2} p99 {n99:.2}");
    println!(
        "BENCH\tpg_due_lateness_p50_ms\t{p50:.2}\tms\tpg_publish_to_claim_p50\t{n50:.2}\t{:.2}",
        p50 / n50
    );
    println!(
        "BENCH\tpg_due_lateness_p99_ms\t{p99:.2}\tms\tpg_publish_to_claim_p99\t{n99:.2}\t{:.2}",
        p99 / n99
    );
    Ok(())
}
