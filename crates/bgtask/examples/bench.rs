//! procyard-bgtask benchmarks: output capture throughput through the supervisor against a
//! plain pipe, spawn → running latency, supervisor RSS beyond retained output, and `list`
//! over 1,000 tasks. Run with `cargo run --release -p procyard-bgtask --example bench`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procyard_bgtask::{Filter, Launch, SpawnOptions, StreamName, Task, TaskPool};

const MIB: u64 = 1024 * 1024;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn bench(metric: &str, value: f64, unit: &str, baseline: &str, base: f64, higher_is_better: bool) {
    let ratio = if base > 0.0 && value > 0.0 {
        format!("{:.2}", if higher_is_better { value / base } else { base / value })
    } else {
        "-".into()
    };
    println!("BENCH\t{metric}\t{value:.2}\t{unit}\t{baseline}\t{base:.2}\t{ratio}");
}

/// A plain pipe read with 64 KiB reads: the baseline for output capture.
fn pipe_baseline(bytes: u64) -> f64 {
    let start = Instant::now();
    let mut child = Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn head");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    let _ = child.wait();
    assert_eq!(total, bytes);
    total as f64 / MIB as f64 / start.elapsed().as_secs_f64()
}

fn through_supervisor(pool: &TaskPool, bytes: u64) -> f64 {
    let start = Instant::now();
    let options = SpawnOptions::new(["head", "-c", &bytes.to_string(), "/dev/zero"])
        .retain(8 * MIB)
        .block_when_full(true);
    let mut task = pool.spawn(&options).expect("spawn");
    let mut total = 0u64;
    loop {
        let chunk =
            task.stream(StreamName::Stdout).read_request(None, 4 * MIB, true, true).expect("read");
        total += chunk.data.len() as u64;
        if chunk.is_final() {
            break;
        }
    }
    let rate = total as f64 / MIB as f64 / start.elapsed().as_secs_f64();
    assert_eq!(total, bytes, "every byte read through the supervisor");
    task.delete().expect("delete");
    rate
}

fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let root = tempfile::tempdir().expect("tempdir");
    // Forked supervisors, as the CLI starts them (no dependency on a built binary).
    let pool = TaskPool::open(root.path().join("pool")).expect("pool").launch(Launch::Fork);

    // Supervisor RSS first, while this (forking) process is still small.
    let mut task = pool
        .spawn(&SpawnOptions::new(["sh", "-c", "head -c 1048576 /dev/zero; exec sleep 300"]))
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut info = task.info().expect("info");
    while info.streams["stdout"].limit < MIB && Instant::now() < deadline {
        let _ = task.stream(StreamName::Stdout).read_request(
            Some(info.streams["stdout"].limit),
            1,
            false,
            true,
        );
        info = task.info().expect("info");
    }
    let retained: u64 = info.streams.values().map(|s| s.limit - s.start).sum();
    let sup_rss = rss_kib(info.supervisor_pid).unwrap_or(0) as f64 - retained as f64 / 1024.0;
    let mut sleeper = Command::new("sleep").arg("300").spawn().expect("sleep");
    // Wait until sleep runs its own code (asleep), so its RSS is the real one.
    let sleeper_pid = procyard_core::Pid::from_raw(sleeper.id() as i32).expect("pid");
    let comm = format!("/proc/{}/comm", sleeper.id());
    while !(std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep")
        && procyard_core::ProcStat::read(sleeper_pid)
            .ok()
            .flatten()
            .is_some_and(|s| s.state == 'S'))
        && Instant::now() < deadline + Duration::from_secs(10)
    {
        std::thread::yield_now();
    }
    let sleep_rss = rss_kib(sleeper.id() as i32).unwrap_or(0) as f64;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    task.delete().expect("delete");
    bench(
        "supervisor_rss_beyond_retained",
        sup_rss / 1024.0,
        "MiB",
        "sleep_rss",
        sleep_rss / 1024.0,
        false,
    );

    // Spawn → running latency.
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for _ in 0..25 {
        let t = Instant::now();
        let task = pool.spawn(&SpawnOptions::new(["sleep", "300"])).expect("spawn");
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
        task.delete().expect("delete");
        let t = Instant::now();
        let mut child = Command::new("sleep").arg("300").spawn().expect("spawn");
        base.push(t.elapsed().as_secs_f64() * 1000.0);
        let _ = child.kill();
        let _ = child.wait();
    }
    bench("spawn_to_running_median", median(ours), "ms", "std_command_spawn", median(base), false);

    // list with 1,000 tasks (state files) in the pool.
    let mut live = pool.spawn(&SpawnOptions::new(["sleep", "300"])).expect("spawn");
    let record = pool.record(live.id()).expect("record");
    for i in 0..1000 {
        let mut r = record.clone();
        r.id = format!("bench{i:04}");
        if i % 2 == 1 {
            r.supervisor.start_time += 1; // a dead supervisor: reported lost
        }
        r.meta.insert("n".into(), serde_json::json!(i));
        let bytes = serde_json::to_vec_pretty(&r).expect("json");
        std::fs::write(pool.dir().join(format!("{}.json", r.id)), bytes).expect("write");
    }
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let all = pool.list(&Filter::new()).expect("list");
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(all.len(), 1001);
        let t = Instant::now();
        let mut n = 0;
        for e in std::fs::read_dir(pool.dir()).expect("read_dir").flatten() {
            if e.file_name().to_string_lossy().ends_with(".json") {
                n += std::fs::read(e.path()).map(|b| b.len()).unwrap_or(0);
            }
        }
        base.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(n > 0);
    }
    bench("list_1000_tasks_median", median(ours), "ms", "read_1000_files", median(base), false);
    for i in 0..1000 {
        let _ = std::fs::remove_file(pool.dir().join(format!("bench{i:04}.json")));
    }
    let _ = live.info();
    Task::delete(live).expect("delete");

    // Output capture.
    let size: u64 =
        std::env::var("BGTASK_BENCH_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(1024) * MIB;
    let base = pipe_baseline(size);
    let ours = through_supervisor(&pool, size);
    bench("output_capture_1gib", ours, "MiB/s", "plain_pipe_64k", base, true);
}
