//! Benchmark: how fast `start` returns with the job already running, and start → finished for
//! `true`, against a raw spawn + wait of `/bin/true` measured in the same run.
//!
//! Run with `cargo run --release -p procyard-asyncjob --example bench`. The process stays
//! single-threaded, as [`AsyncJob::start`] requires.

use std::time::{Duration, Instant};

use procyard_asyncjob::{AsyncJob, Status};

const JOBS: usize = 100;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn line(metric: &str, value: Duration, baseline_name: &str, baseline: Duration) {
    let ratio = value.as_secs_f64() / baseline.as_secs_f64();
    println!(
        "BENCH\t{metric}\t{:.1}\tus\t{baseline_name}\t{:.1}\t{ratio:.2}",
        micros(value),
        micros(baseline)
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("procyard-asyncjob-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let state = dir.join("job.state");

    // Baseline: spawn + wait of /bin/true with std.
    let mut baseline = Vec::with_capacity(JOBS);
    for _ in 0..JOBS {
        let t = Instant::now();
        std::process::Command::new("/bin/true").spawn()?.wait()?;
        baseline.push(t.elapsed());
    }
    let baseline = median(baseline);

    // `start` returning, with the job already `running` (a long job, killed afterwards).
    let long = AsyncJob::options().state_file(&state).command(["sleep", "60"]).build()?;
    let mut starts = Vec::with_capacity(JOBS);
    for _ in 0..JOBS {
        let t = Instant::now();
        let started = long.start()?;
        starts.push(t.elapsed());
        assert_eq!(started.status, Status::Running, "start returned before running");
        long.kill()?;
        long.reap()?;
    }

    // start → finished for `true`.
    let quick = AsyncJob::options().state_file(&state).command(["true"]).build()?;
    let mut finishes = Vec::with_capacity(JOBS);
    for _ in 0..JOBS {
        let t = Instant::now();
        quick.start()?;
        let done = quick.wait(Some(Duration::from_secs(10)))?;
        finishes.push(t.elapsed());
        assert_eq!(done.status, Status::Finished);
        assert_eq!(done.exitstatus, Some(0));
        quick.reap()?;
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "# {JOBS} jobs each; medians; the Ruby AsyncJob library measured 5.6 ms to running, 6.7 ms to finished"
    );
    line("start_returns_running", median(starts), "std_spawn_wait_true", baseline);
    line("start_to_finished_true", median(finishes), "std_spawn_wait_true", baseline);
    Ok(())
}
