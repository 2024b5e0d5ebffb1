//! Benchmark: round trip of a trivial job (submit → value, p50 and p99) and throughput of
//! 10,000 trivial jobs with `max_workers` = cores, beside Python's
//! `concurrent.futures.ProcessPoolExecutor` running the same trivial job in the same run: the
//! default (children reused) against the pool, and `Config::fork_per_job()` against a bare
//! fork + `_exit` + wait loop with as many in flight, measured before each of its runs.
//! For profiling, `PROCYARD_BENCH_ONLY=default` (or `fork_per_job`) runs that part alone.
//!
//! Run with `cargo run --release -p procyard-resultworker --example bench`.

use std::process::Command;
use std::time::{Duration, Instant};

use procyard_resultworker::{Config, Function, ResultFuture, ResultWorker, register};

const ROUND_TRIPS: usize = 1_000;
const JOBS: usize = 10_000;
const RUNS: usize = 3;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

struct Figures {
    p50_us: f64,
    p99_us: f64,
    jobs_per_s: f64,
}

/// `before_run` runs before each of the `RUNS` rounds (a same-run baseline).
fn bench_procyard(
    config: Config,
    noop: &Function<u64, u64>,
    before_run: &mut dyn FnMut(),
) -> Result<Figures, procyard_resultworker::Error> {
    let worker = ResultWorker::new(config)?;
    for i in 0..50 {
        worker.call(noop, &i).wait()?;
    }
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        before_run();
        let mut samples = Vec::with_capacity(ROUND_TRIPS);
        for i in 0..ROUND_TRIPS as u64 {
            let t = Instant::now();
            let v = worker.call(noop, &i).wait()?;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
            assert_eq!(v, i);
        }
        samples.sort_by(f64::total_cmp);
        p50s.push(percentile(&samples, 0.5));
        p99s.push(percentile(&samples, 0.99));
        let t = Instant::now();
        let futures: Vec<ResultFuture<u64>> =
            (0..JOBS as u64).map(|i| worker.call(noop, &i)).collect();
        for f in &futures {
            f.wait()?;
        }
        rates.push(JOBS as f64 / t.elapsed().as_secs_f64());
    }
    worker.stop(Duration::from_secs(5));
    Ok(Figures { p50_us: median(p50s), p99_us: median(p99s), jobs_per_s: median(rates) })
}

const PYTHON: &str = r#"
import concurrent.futures as cf, multiprocessing as mp, sys, time, statistics, json
def noop(x):
    return x
def main():
    cores, trips, jobs, runs = (int(a) for a in sys.argv[1:5])
    ctx = mp.get_context("fork")
    with cf.ProcessPoolExecutor(max_workers=cores, mp_context=ctx) as ex:
        for i in range(50):
            ex.submit(noop, i).result()
        p50s, p99s, rates = [], [], []
        for _ in range(runs):
            samples = []
            for i in range(trips):
                t = time.perf_counter()
                ex.submit(noop, i).result()
                samples.append((time.perf_counter() - t) * 1e6)
            samples.sort()
            p50s.append(samples[round((len(samples) - 1) * 0.5)])
            p99s.append(samples[round((len(samples) - 1) * 0.99)])
            t = time.perf_counter()
            fs = [ex.submit(noop, i) for i in range(jobs)]
            for f in fs:
                f.result()
            rates.append(jobs / (time.perf_counter() - t))
    print(json.dumps({"p50_us": statistics.median(p50s), "p99_us": statistics.median(p99s),
                      "jobs_per_s": statistics.median(rates)}))
if __name__ == "__main__":
    main()
"#;

fn bench_python(cores: usize) -> Option<Figures> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(PYTHON)
        .args([cores, ROUND_TRIPS, JOBS, RUNS].map(|n| n.to_string()))
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("python baseline failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(Figures {
        p50_us: v["p50_us"].as_f64()?,
        p99_us: v["p99_us"].as_f64()?,
        jobs_per_s: v["jobs_per_s"].as_f64()?,
    })
}

/// The ceiling for a fork per job on this machine: fork + `_exit` + wait with `in_flight`
/// children at once, from this (still single-threaded) process. Fork rates differ 2x between
/// machines of one kind; the ratio to this does not.
fn bare_fork_rate(in_flight: usize) -> Option<f64> {
    let mut running = std::collections::VecDeque::with_capacity(in_flight);
    let started = Instant::now();
    for _ in 0..JOBS {
        if running.len() == in_flight
            && let Some(mut oldest) = running.pop_front()
        {
            procyard_core::Child::wait(&mut oldest).ok()?;
        }
        match procyard_core::fork(procyard_core::ForkConfig::default()).ok()? {
            procyard_core::Forked::Child => procyard_core::exit_immediately(0),
            procyard_core::Forked::Parent(child) => running.push_back(child),
        }
    }
    for mut child in running {
        child.wait().ok()?;
    }
    Some(JOBS as f64 / started.elapsed().as_secs_f64())
}

/// [`bare_fork_rate`] in a fresh copy of this program (this one has the worker's threads).
fn bare_fork_in_a_fresh_process() -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe).arg("--bare-fork").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().last()?.trim().parse().ok().filter(|r: &f64| r.is_finite())
}

fn main() {
    let noop = register("noop", |x: u64| Ok::<_, String>(x));
    procyard_resultworker::init();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "# procyard-resultworker bench: {cores} cores, {ROUND_TRIPS} round trips x {RUNS}, {JOBS} jobs x {RUNS}, medians"
    );
    let run = |config: Config, before_run: &mut dyn FnMut()| match bench_procyard(
        config.max_workers(cores),
        &noop,
        before_run,
    ) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("bench: procyard-resultworker failed: {e}");
            std::process::exit(1);
        }
    };
    if std::env::args().nth(1).as_deref() == Some("--bare-fork") {
        // A fresh single-threaded process (forking needs one): print the bare fork rate.
        println!("{}", bare_fork_rate(cores).unwrap_or(f64::NAN));
        return;
    }
    // For profiling: `PROCYARD_BENCH_ONLY=default` or `fork_per_job` runs that part alone and
    // prints its figures (no baseline).
    let only = std::env::var("PROCYARD_BENCH_ONLY").ok();
    if let Some(part @ ("default" | "fork_per_job")) = only.as_deref() {
        let config =
            if part == "default" { Config::default() } else { Config::default().fork_per_job() };
        let f = run(config, &mut || {});
        println!(
            "{part}: {:.1} jobs/s, p50 {:.1} us, p99 {:.1} us",
            f.jobs_per_s, f.p50_us, f.p99_us
        );
        return;
    }
    let python = bench_python(cores);
    let ours = run(Config::default(), &mut || {});
    let mut bare_forks = Vec::new();
    let forked = run(Config::default().fork_per_job(), &mut || {
        bare_forks.extend(bare_fork_in_a_fresh_process());
    });
    let line = |metric: &str, value: f64, unit: &str, base: Option<f64>, lower_is_better: bool| {
        let (base_s, ratio) = match base {
            Some(b) => {
                let r = if lower_is_better { b / value } else { value / b };
                (format!("{b:.1}"), format!("{r:.2}"))
            }
            None => ("-".into(), "-".into()),
        };
        println!(
            "BENCH\t{metric}\t{value:.1}\t{unit}\tpython_processpoolexecutor\t{base_s}\t{ratio}"
        );
    };
    println!(
        "# ratio = how many times better than the baseline (baseline/ours for times, ours/baseline for rates)"
    );
    println!("# the default: children reused (no fork per job)");
    line("round_trip_p50", ours.p50_us, "us", python.as_ref().map(|p| p.p50_us), true);
    line("round_trip_p99", ours.p99_us, "us", python.as_ref().map(|p| p.p99_us), true);
    line("throughput_10k", ours.jobs_per_s, "jobs/s", python.as_ref().map(|p| p.jobs_per_s), false);
    println!("# with Config::fork_per_job(): a fresh child per job");
    line(
        "round_trip_p50_fork_per_job",
        forked.p50_us,
        "us",
        python.as_ref().map(|p| p.p50_us),
        true,
    );
    line(
        "round_trip_p99_fork_per_job",
        forked.p99_us,
        "us",
        python.as_ref().map(|p| p.p99_us),
        true,
    );
    line(
        "throughput_10k_fork_per_job",
        forked.jobs_per_s,
        "jobs/s",
        python.as_ref().map(|p| p.jobs_per_s),
        false,
    );
    if bare_forks.len() == RUNS {
        let bare = median(bare_forks);
        println!(
            "BENCH\tthroughput_10k_fork_per_job_vs_bare_fork\t{:.1}\tjobs/s\tbare_fork_exit_wait_{cores}_in_flight\t{bare:.1}\t{:.2}",
            forked.jobs_per_s,
            forked.jobs_per_s / bare
        );
    }
}
