//! The HTTP face's benchmarks (issue 18), part `http` of the daemon's bench:
//! longlived jobs/s with a dashboard's event stream open and `/metrics` scraped every 100 ms
//! against the same run without `[http]` (goal ≥ 0.95×; interleaved rounds,
//! `PROCYARD_BENCH_HTTP_ROUNDS`, default 5), with the daemon's CPU time per 1,000 jobs and the
//! HTTP threads' share of it (from `/proc/PID/task/*/schedstat`: what the watchers' own CPU
//! use on a busy two-core machine does not blur); `/metrics` p50 with 100 tasks (goal
//! < 5 ms); daemon RSS with `[http]` on (an event stream open, scraped) against off (goal ≤
//! +4 MiB).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Run, bench, longlived_task, median, rss_kib};

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn http_section(port: u16) -> String {
    format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into()
}

/// A dashboard left open: an event stream read as it comes, and `/metrics` every 100 ms,
/// until `stop` is set. Returns how many scrapes and event bytes it got.
fn watchers(port: u16, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<u64>> {
    let events_stop = stop.clone();
    let events = std::thread::spawn(move || {
        let Ok(mut r) = agent().get(format!("http://127.0.0.1:{port}/api/events")).call() else {
            return 0;
        };
        let mut body = r.body_mut().as_reader();
        let mut buf = [0u8; 65536];
        let mut total = 0u64;
        while !events_stop.load(Ordering::Relaxed) {
            match body.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        total
    });
    let scraper = std::thread::spawn(move || {
        let agent = agent();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(mut r) = agent.get(format!("http://127.0.0.1:{port}/metrics")).call() {
                let _ = r.body_mut().read_to_string();
                n += 1;
            }
            // The scrape interval under test.
            std::thread::sleep(Duration::from_millis(100));
        }
        n
    });
    vec![events, scraper]
}

/// CPU time (ms) the daemon's threads have used so far, in all and in the HTTP face's threads
/// (named `procyard-http…`), from each thread's `/proc/PID/task/TID/schedstat` (ns on CPU).
fn daemon_cpu_ms(pid: i32) -> anyhow::Result<(f64, f64)> {
    let (mut all, mut http) = (0u64, 0u64);
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = t?.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("schedstat")) else { continue };
        let ns: u64 = stat.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        all += ns;
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.starts_with("procyard-http") {
            http += ns;
        }
    }
    Ok((all as f64 / 1e6, http as f64 / 1e6))
}

/// One drain: jobs/s, and the daemon's CPU time per 1,000 jobs (all threads, HTTP threads).
struct Drain {
    rate: f64,
    cpu_ms_per_1k: f64,
    http_cpu_ms_per_1k: f64,
}

fn longlived_rate(bin: &Path, me: &Path, n: usize, with_http: bool) -> anyhow::Result<Drain> {
    let port = free_port()?;
    let mut tasks = longlived_task(me, 2, 2, None);
    if with_http {
        tasks.push_str(&http_section(port));
    }
    let mut run = Run::new(&tasks)?;
    {
        let mut q = run.queue()?;
        for i in 0..n {
            q.publish("echo", format!("{i}").as_bytes())?;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    run.start(bin)?;
    let threads = if with_http { watchers(port, stop.clone()) } else { Vec::new() };
    run.wait_done("echo", n as u64, Duration::from_secs(120))?;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let (cpu, http_cpu) = daemon_cpu_ms(run.pid())?;
    stop.store(true, Ordering::Relaxed);
    run.stop()?;
    for t in threads {
        let _ = t.join();
    }
    let per_1k = 1000.0 / n as f64;
    Ok(Drain { rate, cpu_ms_per_1k: cpu * per_1k, http_cpu_ms_per_1k: http_cpu * per_1k })
}

fn metrics_p50_ms(bin: &Path) -> anyhow::Result<f64> {
    let port = free_port()?;
    let mut tasks: String = (0..100)
        .map(|i| {
            format!("[[task]]\nname = \"t{i}\"\nrouting_keys = [\"t{i}\"]\ncommand = [\"true\"]\n")
        })
        .collect();
    tasks.push_str(&http_section(port));
    let mut run = Run::new(&tasks)?;
    {
        let mut q = run.queue()?;
        for i in 0..100 {
            q.publish(&format!("t{i}"), b"")?;
        }
    }
    run.start(bin)?;
    run.wait_done("t99", 1, Duration::from_secs(60))?;
    let agent = agent();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut times = Vec::new();
    for _ in 0..200 {
        let t0 = Instant::now();
        let body = agent.get(&url).call()?.body_mut().read_to_string()?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(body.contains("task=\"t99\""), "every task in /metrics");
    }
    run.stop()?;
    Ok(median(&mut times))
}

fn rss_pair(bin: &Path) -> anyhow::Result<(f64, f64)> {
    let task = "[[task]]\nname = \"t\"\nrouting_keys = [\"t\"]\ncommand = [\"true\"]\n";
    let mut off = Run::new(task)?;
    off.start(bin)?;
    let off_rss = rss_kib(off.pid())?;
    off.stop()?;
    let port = free_port()?;
    let mut on = Run::new(&format!("{task}{}", http_section(port)))?;
    on.start(bin)?;
    let stop = Arc::new(AtomicBool::new(false));
    let threads = watchers(port, stop.clone());
    // Let the dashboard scrape a few times before reading the RSS.
    let agent = agent();
    for _ in 0..20 {
        agent.get(format!("http://127.0.0.1:{port}/api/status")).call()?;
        agent.get(format!("http://127.0.0.1:{port}/")).call()?;
    }
    let on_rss = rss_kib(on.pid())?;
    stop.store(true, Ordering::Relaxed);
    on.stop()?;
    for t in threads {
        let _ = t.join();
    }
    Ok((on_rss, off_rss))
}

/// Runs the part and prints its `BENCH` lines.
pub fn run(bin: &Path, me: &Path) -> anyhow::Result<()> {
    let rounds: usize =
        std::env::var("PROCYARD_BENCH_HTTP_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let (mut on, mut off) = (Vec::new(), Vec::new());
    // Interleaved rounds (the machine's load drifts), medians of each.
    for _ in 0..rounds {
        off.push(longlived_rate(bin, me, 20_000, false)?);
        on.push(longlived_rate(bin, me, 20_000, true)?);
    }
    let col = |v: &[Drain], f: fn(&Drain) -> f64| -> Vec<f64> { v.iter().map(f).collect() };
    let (mut on_rate, mut off_rate) = (col(&on, |d| d.rate), col(&off, |d| d.rate));
    let (mut on_cpu, mut off_cpu) = (col(&on, |d| d.cpu_ms_per_1k), col(&off, |d| d.cpu_ms_per_1k));
    let mut http_cpu = col(&on, |d| d.http_cpu_ms_per_1k);
    // Each watched drain against the drain just before it (the nearest in machine load).
    let mut pairs: Vec<f64> = on_rate.iter().zip(&off_rate).map(|(a, b)| a / b).collect();
    // The HTTP threads' share of the watched daemon's CPU.
    let mut shares: Vec<f64> =
        on.iter().map(|d| 100.0 * d.http_cpu_ms_per_1k / d.cpu_ms_per_1k).collect();
    println!(
        "longlived jobs/s, [http] off {off_rate:.0?}, watched {on_rate:.0?} (pair ratios {pairs:.2?}); daemon CPU ms per 1,000 jobs, off {off_cpu:.1?}, watched {on_cpu:.1?} (HTTP threads {http_cpu:.1?}, {shares:.1?} %)"
    );
    bench("longlived_http_watched_pair_ratio_median", median(&mut pairs), "x", "goal", 0.95);
    bench("http_threads_share_of_daemon_cpu", median(&mut shares), "%", "-", 0.0);
    bench(
        "longlived_http_watched_per_s",
        median(&mut on_rate),
        "jobs/s",
        "longlived_http_off_per_s",
        median(&mut off_rate),
    );
    // The daemon's own cost, which the watchers' CPU use on a busy machine does not blur:
    // ratio < 1 means the watched daemon spends more CPU per job.
    bench(
        "daemon_cpu_ms_per_1k_jobs_off",
        median(&mut off_cpu),
        "ms",
        "daemon_cpu_ms_per_1k_jobs_watched",
        median(&mut on_cpu),
    );
    bench("http_threads_cpu_ms_per_1k_jobs", median(&mut http_cpu), "ms", "-", 0.0);
    bench("http_metrics_100_tasks_p50_ms", metrics_p50_ms(bin)?, "ms", "goal_ms", 5.0);
    let (on_rss, off_rss) = rss_pair(bin)?;
    bench("daemon_rss_http_on_kib", on_rss, "KiB", "daemon_rss_http_off_kib", off_rss);
    Ok(())
}
