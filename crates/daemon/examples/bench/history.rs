//! The job-history benchmarks of `bench_daemon` (part `history`): a queue file filled with
//! 1,000,000 done job records (one attempt each, a line of output) by direct inserts in one
//! transaction, then measured against a queue of 1,000 records in the same run:
//! `job ID` p50 (in-process through `Client`, and the CLI binary), `jobs --limit 50` p50,
//! daemon RSS, and publish→start latency while the daemon prunes all of them (expired) vs the
//! same flow on the same file with nothing expired (10,000 jobs): p99 ratio (goal ≤ 1.5) and
//! the longest claim delay (goal ≤ 50 ms); and against the flow on the file the prune left.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use procyard_core::Deadline;
use procyard_daemon::queue::{AttemptEnd, JobFilter};
use procyard_daemon::{Client, Config, control};
use rusqlite::params;

use super::{Run, bench, longlived_task, median, rss_kib};

/// Publish→start latencies above this are listed with their time.
const SLOW_MS: f64 = 20.0;
/// Records in the big history.
const BIG: usize = 1_000_000;
/// Records in the small one (the baseline of the lookups).
const SMALL: usize = 1_000;
/// Jobs of the no-prune baseline of publish→start (and half as many after the prune).
const BASE_JOBS: usize = 10_000;
/// Ids looked up per measurement.
const LOOKUPS: usize = 200;
/// Kept long: nothing in the history expires.
const KEEP: &str = "keep_done = \"30d\"\nkeep_done_max = 2000000";
/// Records older than this are expired (the fill dates them two days back).
const EXPIRE: &str = "keep_done = \"1h\"\nkeep_done_max = 2000000";

pub(super) fn run(bin: &Path, me: &Path) -> anyhow::Result<()> {
    settle()?;
    let dir = tempfile::tempdir()?;
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let tasks = longlived_task(me, 1, 1, Some(&notify));

    let small = Measured::of(bin, &sock, SMALL, &tasks)?;
    let big = Measured::of(bin, &sock, BIG, &tasks)?;
    // In-process (Client) in µs; through the CLI binary (a process, the config read) in ms.
    bench("history_job_p50_us_1m", big.job_ms * 1e3, "us", "goal_us", 5000.0);
    let small_job = small.job_ms * 1e3;
    bench("history_job_1m_vs_1k_p50_us", big.job_ms * 1e3, "us", "job_p50_us_1k", small_job);
    bench("history_cli_job_p50_ms_1m", big.cli_job_ms, "ms", "goal_ms", 5.0);
    bench(
        "history_cli_job_1m_vs_1k_ms",
        big.cli_job_ms,
        "ms",
        "cli_job_p50_ms_1k",
        small.cli_job_ms,
    );
    bench("history_jobs_limit50_p50_us_1m", big.jobs_ms * 1e3, "us", "goal_us", 20000.0);
    let small_jobs = small.jobs_ms * 1e3;
    bench(
        "history_jobs_limit50_1m_vs_1k_us",
        big.jobs_ms * 1e3,
        "us",
        "jobs_limit50_us_1k",
        small_jobs,
    );
    bench("history_cli_jobs_limit50_p50_ms_1m", big.cli_jobs_ms, "ms", "goal_ms", 20.0);
    bench("history_daemon_rss_1m_kib", big.rss_kib, "KiB", "daemon_rss_1k_kib", small.rss_kib);

    // "Without a prune" is the same 1,000,000-record file with nothing expired (a claim on
    // a big file costs more than on a small one, prune or not); then the same daemon restarted
    // with the records expired; then, for comparison, the flow on the file the prune left.
    let mut small_run = small.run;
    small_run.stop()?;
    drop(small_run);
    let mut run = big.run;
    let base = flow_n(&run, &sock, BASE_JOBS, None)?;
    run.stop()?;
    run.rewrite(EXPIRE, &tasks)?;
    run.start_logging(bin, super::sched::log_filter())?;
    let db = rusqlite::Connection::open(run.dir.path().join("q.db"))?;
    let t0 = Instant::now();
    let during = flow_n(&run, &sock, 0, Some(&db))?;
    let pruned_s = t0.elapsed().as_secs_f64();
    if super::sched::log_filter() != "warn" {
        eprintln!("bench:   prune stamps p50/p99/max ms:{}", super::lateness::stamps(&run));
    }
    // With `PROCYARD_BENCH_TRACE=FILE`: the daemon's log of the prune (its stamps, with the
    // wall clock) to FILE, to line up with the slow jobs printed above.
    if let Some(path) = std::env::var_os("PROCYARD_BENCH_TRACE") {
        std::fs::copy(run.dir.path().join("daemon.log"), path)?;
    }
    let after = flow_n(&run, &sock, BASE_JOBS / 2, None)?;
    run.stop()?;
    let longest = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let p99 = percentile99(&during);
    bench(
        "history_prune_1m_publish_start_p99_ms",
        p99,
        "ms",
        "no_prune_p99_ms",
        percentile99(&base),
    );
    bench("history_prune_1m_max_claim_delay_ms", longest(&during), "ms", "goal_ms", 50.0);
    bench("history_prune_1m_no_prune_max_ms", longest(&base), "ms", "goal_ms", 50.0);
    bench(
        "history_prune_1m_vs_pruned_p99_ms",
        p99,
        "ms",
        "pruned_file_p99_ms",
        percentile99(&after),
    );
    bench("history_prune_1m_seconds", pruned_s, "s", "jobs_measured_during", during.len() as f64);
    Ok(())
}

/// What one history size measures; its daemon still running, its files kept for the prune.
struct Measured {
    run: Run,
    job_ms: f64,
    cli_job_ms: f64,
    jobs_ms: f64,
    cli_jobs_ms: f64,
    rss_kib: f64,
}

impl Measured {
    fn of(bin: &Path, sock: &UnixDatagram, n: usize, tasks: &str) -> anyhow::Result<Measured> {
        let mut run = Run::with(KEEP, tasks)?;
        drop(run.queue()?); // the schema
        let ids = fill(&run.dir.path().join("q.db"), n)?;
        settle()?;
        run.start(bin)?;
        // A few jobs through the daemon first, so its caches are as they are when it serves.
        flow_n(&run, sock, 200, None)?;
        let rss = rss_kib(run.pid())?;
        let mut client = Client::new(Config::load(&run.config)?);
        let mut job = Vec::new();
        for id in &ids {
            let t0 = Instant::now();
            client.job(id)?;
            job.push(ms(t0));
        }
        let mut jobs = Vec::new();
        let filter = JobFilter { limit: 50, ..JobFilter::default() };
        for _ in 0..50 {
            let t0 = Instant::now();
            anyhow::ensure!(client.jobs(&filter)?.len() == 50, "50 jobs listed");
            jobs.push(ms(t0));
        }
        let mut cli = Vec::new();
        for id in ids.iter().take(30) {
            let t0 = Instant::now();
            let out = std::process::Command::new(bin)
                .args(["job", id, "--config"])
                .arg(&run.config)
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "job {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            cli.push(ms(t0));
        }
        let mut cli_jobs = Vec::new();
        for _ in 0..10 {
            let t0 = Instant::now();
            let out = std::process::Command::new(bin)
                .args(["jobs", "--limit", "50", "--config"])
                .arg(&run.config)
                .output()?;
            anyhow::ensure!(out.status.success(), "jobs: {}", String::from_utf8_lossy(&out.stderr));
            cli_jobs.push(ms(t0));
        }
        Ok(Measured {
            run,
            job_ms: median(&mut job),
            cli_job_ms: median(&mut cli),
            jobs_ms: median(&mut jobs),
            cli_jobs_ms: median(&mut cli_jobs),
            rss_kib: rss,
        })
    }
}

fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

/// `n` done records (finished two days ago) with one attempt each; returns [`LOOKUPS`] of
/// their ids, spread over the table.
fn fill(db: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    let t0 = Instant::now();
    let mut conn = rusqlite::Connection::open(db)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let at = now - 2 * 24 * 3600 * 1000;
    let outcome = serde_json::to_string(&AttemptEnd::Exited { code: 0 })?;
    let every = (n / LOOKUPS).max(1);
    let mut ids = Vec::new();
    let tx = conn.transaction()?;
    {
        let mut job = tx.prepare(
            "INSERT INTO jobs (id, task, routing_key, payload, state, attempts, published_ms, finished_ms)
             VALUES (?1, 'echo', 'echo', ?2, 2, 1, ?3, ?4)",
        )?;
        let mut attempt = tx.prepare(
            "INSERT INTO attempts (job_seq, delivery, worker_pid, started_ms, ended_ms, outcome,
                 stdout, stdout_total, stdout_dropped, stderr, stderr_total, stderr_dropped)
             VALUES (?1, 1, 4242, ?2, ?3, ?4, ?5, ?6, 0, x'', 0, 0)",
        )?;
        for i in 0..n {
            let id = uuid::Uuid::now_v7().to_string();
            let t = at + i as i64 / 100;
            job.execute(params![id, format!("{i}").as_bytes(), t - 5, t])?;
            let out = format!("job {i} done\n");
            attempt.execute(params![
                tx.last_insert_rowid(),
                t - 3,
                t,
                outcome,
                out.as_bytes(),
                out.len() as i64
            ])?;
            if i % every == every / 2 {
                ids.push(id);
            }
        }
    }
    tx.commit()?;
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
    eprintln!("bench: {n} job records written in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(ids)
}

/// Publish→start latencies in ms of jobs one after another: while `db` still holds expired
/// records (until they are pruned), or `n` jobs.
fn flow_n(
    run: &Run,
    sock: &UnixDatagram,
    n: usize,
    db: Option<&rusqlite::Connection>,
) -> anyhow::Result<Vec<f64>> {
    let cutoff = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis()
        as i64
        - 3600 * 1000;
    let expired = |db: &rusqlite::Connection| -> anyhow::Result<bool> {
        let mut stmt = db.prepare_cached(
            "SELECT 1 FROM jobs WHERE state IN (2, 4) AND finished_ms < ?1 LIMIT 1",
        )?;
        Ok(stmt.exists([cutoff])?)
    };
    let mut q = run.queue()?;
    let socket = run.socket();
    let deadline = Deadline::after(Duration::from_secs(600));
    let mut v = Vec::new();
    let mut slow = Vec::new();
    let mut pubs = Vec::new();
    let mut buf = [0u8; 64];
    for i in 0.. {
        match db {
            Some(db) if i % 20 == 0 && !expired(db)? => break,
            Some(_) => anyhow::ensure!(!deadline.is_expired(), "the prune did not finish"),
            None if i >= n => break,
            None => {}
        }
        let payload = format!("{i}");
        let t0 = Instant::now();
        let id = q.publish("echo", payload.as_bytes())?;
        let published = ms(t0);
        control::poke(&socket)?;
        let poked = ms(t0);
        loop {
            let len = sock.recv(&mut buf)?;
            if &buf[..len] == payload.as_bytes() {
                break;
            }
        }
        let took = ms(t0);
        if took > SLOW_MS {
            slow.push((took, published, poked, id, std::time::SystemTime::now()));
        }
        v.push(took);
        pubs.push(published);
    }
    anyhow::ensure!(!v.is_empty(), "no job measured");
    // Where the tail lies: in the client's publish (its commit) or after it (poke, claim,
    // start).
    let q = |v: &[f64], f: f64| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * f) as usize]
    };
    eprintln!(
        "bench:   {} jobs: publish→start p50/p90/p99 {:.2}/{:.2}/{:.2} ms; publish alone {:.2}/{:.2}/{:.2} ms",
        v.len(),
        q(&v, 0.5),
        q(&v, 0.9),
        q(&v, 0.99),
        q(&pubs, 0.5),
        q(&pubs, 0.9),
        q(&pubs, 0.99)
    );
    if !slow.is_empty() {
        // When they happened (the wall clock, to line up with the daemon's log or a trace).
        slow.sort_by(|a, b| b.0.total_cmp(&a.0));
        let at = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
        };
        let top: Vec<String> = slow
            .iter()
            .take(5)
            .map(|(ms, p, k, id, t)| {
                format!("{ms:.1} ms (publish {p:.1}, poked {k:.1}, {id:?}) at {:.3}", at(*t))
            })
            .collect();
        eprintln!(
            "bench:   {} of {} over {SLOW_MS} ms; longest: {}",
            slow.len(),
            v.len(),
            top.join(", ")
        );
    }
    Ok(v)
}

/// Waits until the file system has written out everything (`sync`): the fill wrote a log of
/// hundreds of MB and cut it back, and an earlier run's files were just deleted. On a disk
/// mounted with `discard`, the journal commit that frees those blocks took over a second, and
/// every `fsync` meanwhile (a checkpoint's, under the write lock) waited for it: single
/// claim delays of 1.1-1.3 s, with a prune and without, in the first seconds of a flow.
fn settle() -> anyhow::Result<()> {
    let status = std::process::Command::new("sync").status()?;
    anyhow::ensure!(status.success(), "sync: {status}");
    Ok(())
}

/// The 99th percentile of `v` (not empty).
fn percentile99(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[(v.len() * 99) / 100]
}

impl Run {
    /// Writes the config again with other `[daemon]` lines (the daemon must be stopped).
    fn rewrite(&mut self, daemon: &str, tasks: &str) -> anyhow::Result<()> {
        anyhow::ensure!(self.daemon.is_none(), "stop the daemon first");
        let text = format!(
            "[daemon]\ngrace_period = \"5s\"\nkill_timeout = \"2s\"\n{daemon}\n[queue]\npath = \"{}/q.db\"\n{tasks}",
            self.dir.path().display()
        );
        std::fs::write(&self.config, text)?;
        Ok(())
    }
}
