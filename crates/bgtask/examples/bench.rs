//! procyard-bgtask benchmarks: output capture throughput through the supervisor against a
//! plain pipe, spawn → running latency, supervisor RSS beyond retained output, and `list`
//! over 1,000 tasks (output capture: the median of five interleaved rounds of each, as MiB/s
//! and as the CPU time all processes of each pipeline spent per GiB). Run with
//! `cargo run --release -p procyard-bgtask --example bench_bgtask`.
//! Supervisor RSS is the median over several supervisors, each with its task still running,
//! after an idle moment. Supervisors forked from this process are always measured; with the
//! binaries built (`cargo build --release -p procyard-bgtask`), so are supervisors started by
//! executing `procyard-bgtask-supervise` (`_exec`, the default; also its spawn latency), by
//! executing the CLI binary's hidden mode (`_exec_cli_binary`) and by the CLI's `spawn`
//! command (`_cli`).
//! For profiling: `PROCYARD_BENCH_ONLY=capture` (a comma-separated list of `rss`, `spawn`,
//! `list`, `capture`) runs only those parts (`capture` also prints each process's share of
//! the CPU time); `BGTASK_BENCH_MIB` sets the bytes captured per
//! round (default 1024), `BGTASK_BENCH_ROUNDS` the interleaved rounds (default 5),
//! `BGTASK_BENCH_RETAIN_MIB` the task's retain cap (default 8; the ring readers copy from, so
//! it sets how much of the output stays in the caches). `capture` also prints the wake-ups per
//! MiB (voluntary context switches) and the `read(2)` calls per MiB (`/proc/PID/io`) of the
//! plain reader and of the supervisor.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procyard_bgtask::{Filter, Launch, ReadOptions, SpawnOptions, StreamName, Task, TaskPool};

const MIB: u64 = 1024 * 1024;

/// `name` from the environment as a number, else `default`.
fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

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

/// A plain pipe read with 64 KiB reads: the baseline for output capture. Returns the rate,
/// the CPU ms per GiB, that CPU split between the reader and the writer, and the reader's
/// wake-ups and `read(2)` calls per MiB.
fn pipe_baseline(bytes: u64) -> (f64, f64, [f64; 2], [f64; 2]) {
    let (self_before, children_before) = (cpu_ticks("thread-self", false), cpu_ticks("self", true));
    let (sleeps_before, reads_before) = (sleeps("thread-self"), read_calls("thread-self"));
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
    let rate = total as f64 / MIB as f64 / start.elapsed().as_secs_f64();
    assert_eq!(total, bytes);
    let split =
        [cpu_ticks("thread-self", false) - self_before, cpu_ticks("self", true) - children_before]
            .map(|t| cpu_ms_per_gib(t, bytes));
    let per_mib = MIB as f64 / bytes as f64;
    let wakeups = (sleeps("thread-self") - sleeps_before) as f64 * per_mib;
    let reads = (read_calls("thread-self") - reads_before) as f64 * per_mib;
    (rate, split.iter().sum(), split, [wakeups, reads])
}

/// Voluntary context switches of `/proc/<who>` so far: how often it slept (each a wake-up).
fn sleeps(who: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{who}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `read(2)`-family calls made so far by `/proc/<who>` (`syscr` of its `io` file).
fn read_calls(who: &str) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{who}/io")).unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("syscr:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system, in clock ticks) of `/proc/<who>`: its own, or with `reaped` that
/// of the children it waited for.
fn cpu_ticks(who: &str, reaped: bool) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis, from the state (field 3) on.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect())
        .unwrap_or_default();
    let at = if reaped { 13 } else { 11 }; // utime, stime (14, 15) or cutime, cstime (16, 17)
    fields.get(at - 1).copied().unwrap_or(0) + fields.get(at).copied().unwrap_or(0)
}

/// Clock ticks (100 a second, Linux's `USER_HZ`) spent on `bytes`, as milliseconds per GiB.
fn cpu_ms_per_gib(ticks: u64, bytes: u64) -> f64 {
    ticks as f64 * 10.0 * (1024.0 * MIB as f64) / bytes as f64
}

/// Reads `bytes` of a task's stdout through its supervisor, 4 MiB at most per read into one
/// reused buffer ([`procyard_bgtask::Stream::read_with_into`], the high-throughput read), each
/// read waiting for `at_least` bytes (0: answered as soon as there is any). Returns the rate,
/// the CPU ms per GiB, that CPU split between the reader, the supervisor and the task, and
/// the supervisor's wake-ups and `read(2)` calls per MiB.
fn through_supervisor(
    pool: &TaskPool,
    bytes: u64,
    at_least: u64,
) -> (f64, f64, [f64; 3], [f64; 2]) {
    let self_before = cpu_ticks("thread-self", false);
    let start = Instant::now();
    let options = SpawnOptions::new(["head", "-c", &bytes.to_string(), "/dev/zero"])
        .retain(env_u64("BGTASK_BENCH_RETAIN_MIB", 8) * MIB)
        .block_when_full(true);
    let mut task = pool.spawn(&options).expect("spawn");
    let mut total = 0u64;
    // One buffer for every read, as the baseline reuses its 64 KiB (a fresh 4 MiB `Vec` per
    // read would be page-faulted in again each time).
    let mut buf = Vec::with_capacity(4 * MIB as usize);
    loop {
        let read = ReadOptions::new().count(4 * MIB).at_least(at_least).consume(true).wait(true);
        buf.clear();
        let chunk = task.stream(StreamName::Stdout).read_with_into(read, &mut buf).expect("read");
        total += buf.len() as u64;
        if chunk.is_final() {
            break;
        }
    }
    let rate = total as f64 / MIB as f64 / start.elapsed().as_secs_f64();
    assert_eq!(total, bytes, "every byte read through the supervisor");
    // The supervisor's CPU with its reaped task's (`head`, as in the baseline): once the task
    // has exited (its end of output may come a moment before its exit).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut info = task.info().expect("info");
    while info.status.to_string() == "running" && Instant::now() < deadline {
        info = task.info().expect("info");
    }
    let pid = info.supervisor_pid.to_string();
    let split = [
        cpu_ticks("thread-self", false) - self_before,
        cpu_ticks(&pid, false),
        cpu_ticks(&pid, true),
    ];
    let per_mib = MIB as f64 / bytes as f64;
    let wakeups = [sleeps(&pid), read_calls(&pid)].map(|n| n as f64 * per_mib);
    task.delete().expect("delete");
    let per_gib = split.map(|t| cpu_ms_per_gib(t, bytes));
    (rate, per_gib.iter().sum(), per_gib, wakeups)
}

fn rss_kib(pid: procyard_core::Pid) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Writes 1 MiB to stdout, then stays running.
const RSS_TASK: &str = "head -c 1048576 /dev/zero; exec sleep 300";
/// Supervisors measured per launch path (their text RSS varies with where ASLR puts them).
const RSS_SAMPLES: usize = 5;

/// Median RSS (MiB) beyond retained output of supervisors started by `spawn`, each with a task
/// still running, measured after its 1 MiB of output is in and the supervisor sat idle a bit.
fn supervisor_rss(mut spawn: impl FnMut() -> String, pool: &TaskPool) -> f64 {
    let ids: Vec<String> = (0..RSS_SAMPLES).map(|_| spawn()).collect();
    let mut tasks: Vec<Task> = ids.iter().map(|id| pool.task(id).expect("task")).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut infos = Vec::new();
    for task in &mut tasks {
        let mut info = task.info().expect("info");
        while info.streams[&StreamName::Stdout].limit < MIB && Instant::now() < deadline {
            // Waits (server side) for more output than we have seen.
            let seen = info.streams[&StreamName::Stdout].limit;
            let _ = task
                .stream(StreamName::Stdout)
                .read_with(ReadOptions::new().offset(seen).count(1).wait(true));
            info = task.info().expect("info");
        }
        infos.push(info);
    }
    // Steady state: the supervisors idle with their tasks running.
    std::thread::sleep(Duration::from_millis(300));
    let mut rss = Vec::new();
    for (task, info) in tasks.iter_mut().zip(&infos) {
        let info2 = task.info().expect("info");
        assert_eq!(info2.status.to_string(), "running", "the task still runs");
        let retained: u64 = info.streams.values().map(|s| s.limit - s.start).sum();
        let kib = rss_kib(info.supervisor_pid).unwrap_or(0) as f64 - retained as f64 / 1024.0;
        rss.push(kib / 1024.0);
    }
    for task in tasks {
        task.delete().expect("delete");
    }
    median(rss)
}

/// RSS of `sleep` once it runs its own code (asleep).
fn sleep_rss_kib() -> f64 {
    let mut sleeper = Command::new("sleep").arg("300").spawn().expect("sleep");
    let sleeper_pid = procyard_core::Pid::from_raw(sleeper.id() as i32).expect("pid");
    let comm = format!("/proc/{}/comm", sleeper.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep")
        && procyard_core::ProcStat::read(sleeper_pid)
            .ok()
            .flatten()
            .is_some_and(|s| s.state == 'S'))
        && Instant::now() < deadline
    {
        std::thread::yield_now();
    }
    let rss =
        procyard_core::Pid::from_raw(sleeper.id() as i32).and_then(rss_kib).unwrap_or(0) as f64;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    rss
}

fn main() {
    let root = tempfile::tempdir().expect("tempdir");
    // Forked supervisors, as the CLI starts them (no dependency on a built binary).
    let pool = TaskPool::open(root.path().join("pool")).expect("pool").launch(Launch::Fork);

    let only = std::env::var("PROCYARD_BENCH_ONLY").ok();
    let part = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|p| p == name));
    // Binaries built beside this example (target/<profile>/).
    let built = |name: &str| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent()?.parent().map(|d| d.join(name)))
            .filter(|b| b.is_file())
    };
    if part("rss") {
        // Supervisor RSS first, while this (forking) process is still small.
        let fork_rss = supervisor_rss(
            || {
                pool.spawn(&SpawnOptions::new(["sh", "-c", RSS_TASK]))
                    .expect("spawn")
                    .id()
                    .to_owned()
            },
            &pool,
        );
        let sleep_rss = sleep_rss_kib() / 1024.0;
        bench("supervisor_rss_beyond_retained", fork_rss, "MiB", "sleep_rss", sleep_rss, false);
        // The same, for supervisors started by executing a program (the default wherever
        // `procyard-bgtask-supervise` is found) and by the CLI, when the binaries are built
        // (target/<profile>/).
        let exec_rss = |bin: &Path| {
            let exec_pool = pool.clone().launch(Launch::Exec).supervisor_binary(bin);
            supervisor_rss(
                || {
                    exec_pool
                        .spawn(&SpawnOptions::new(["sh", "-c", RSS_TASK]))
                        .expect("spawn")
                        .id()
                        .to_owned()
                },
                &pool,
            )
        };
        if let Some(small) = built(procyard_bgtask::SUPERVISOR_BIN) {
            let rss = exec_rss(&small);
            bench("supervisor_rss_beyond_retained_exec", rss, "MiB", "sleep_rss", sleep_rss, false);
        }
        if let Some(bin) = &built("procyard-bgtask") {
            let rss = exec_rss(bin);
            bench(
                "supervisor_rss_beyond_retained_exec_cli_binary",
                rss,
                "MiB",
                "sleep_rss",
                sleep_rss,
                false,
            );
            let rss = supervisor_rss(
                || {
                    let out = Command::new(bin)
                        .args(["--pool"])
                        .arg(pool.dir())
                        .args(["spawn", "--", "sh", "-c", RSS_TASK])
                        .output()
                        .expect("cli spawn");
                    assert!(out.status.success(), "cli spawn failed");
                    String::from_utf8_lossy(&out.stdout).trim().to_owned()
                },
                &pool,
            );
            bench("supervisor_rss_beyond_retained_cli", rss, "MiB", "sleep_rss", sleep_rss, false);
        }
    }
    if part("spawn") {
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
        bench(
            "spawn_to_running_median",
            median(ours),
            "ms",
            "std_command_spawn",
            median(base.clone()),
            false,
        );
        if let Some(small) = built(procyard_bgtask::SUPERVISOR_BIN) {
            let exec_pool = pool.clone().launch(Launch::Exec).supervisor_binary(small);
            let mut ours = Vec::new();
            for _ in 0..25 {
                let t = Instant::now();
                let task = exec_pool.spawn(&SpawnOptions::new(["sleep", "300"])).expect("spawn");
                ours.push(t.elapsed().as_secs_f64() * 1000.0);
                task.delete().expect("delete");
            }
            bench(
                "spawn_to_running_exec_median",
                median(ours),
                "ms",
                "std_command_spawn",
                median(base.clone()),
                false,
            );
        }
    }
    if part("list") {
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
    }
    if part("capture") {
        // Output capture.
        let size: u64 = env_u64("BGTASK_BENCH_MIB", 1024) * MIB;
        // Medians of interleaved rounds: with three processes in the pipeline on two cores, one
        // round's rate depends on how the scheduler happens to place them. The supervisor is
        // read as a throughput reader would (each read waits for at least 1 MiB, so one answer
        // carries many of the task's writes), and as a follower would (each read answered as
        // soon as there is any byte).
        // Beside the rates, the CPU time each pipeline spent per GiB (all its processes: the
        // reader, the supervisor, `head`): less sensitive to what else the machine runs.
        let (mut base, mut ours, mut any) = (Vec::new(), Vec::new(), Vec::new());
        let (mut base_cpu, mut ours_cpu, mut any_cpu) = (Vec::new(), Vec::new(), Vec::new());
        let mut splits: [Vec<f64>; 3] = Default::default();
        let mut base_splits: [Vec<f64>; 2] = Default::default();
        let (mut base_wakeups, mut wakeups) = (Vec::new(), Vec::new());
        for _ in 0..env_u64("BGTASK_BENCH_ROUNDS", 5).max(1) {
            let (rate, cpu, split, woke) = pipe_baseline(size);
            base_wakeups.push(woke);
            base.push(rate);
            base_cpu.push(cpu);
            for (all, one) in base_splits.iter_mut().zip(split) {
                all.push(one);
            }
            let (rate, cpu, split, woke) = through_supervisor(&pool, size, MIB);
            wakeups.push(woke);
            ours.push(rate);
            ours_cpu.push(cpu);
            for (all, one) in splits.iter_mut().zip(split) {
                all.push(one);
            }
            let (rate, cpu, _, _) = through_supervisor(&pool, size, 0);
            any.push(rate);
            any_cpu.push(cpu);
        }
        let [reader, supervisor, task] = splits.map(median);
        let [base_reader, base_writer] = base_splits.map(median);
        println!(
            "output capture CPU ms/GiB, medians per process: plain pipe reader {base_reader:.0}, writer {base_writer:.0}; through the supervisor (reads of at least 1 MiB) reader {reader:.0}, supervisor {supervisor:.0}, task {task:.0}"
        );
        let [base_wakeups, base_reads] =
            [0, 1].map(|k| median(base_wakeups.iter().map(|w: &[f64; 2]| w[k]).collect()));
        let [wakeups, reads] =
            [0, 1].map(|k| median(wakeups.iter().map(|w: &[f64; 2]| w[k]).collect()));
        println!(
            "output capture wake-ups per MiB, medians: plain pipe reader {base_wakeups:.1}; supervisor (reads of at least 1 MiB) {wakeups:.1}"
        );
        println!(
            "output capture read(2) calls per MiB, medians: plain pipe reader {base_reads:.1}; supervisor (reads of at least 1 MiB) {reads:.1}"
        );
        println!(
            "output capture MiB/s, plain pipe {base:.0?}, through the supervisor {ours:.0?} (reads of at least 1 MiB), {any:.0?} (reads of any size)"
        );
        println!(
            "output capture CPU ms/GiB, plain pipe {base_cpu:.0?}, through the supervisor {ours_cpu:.0?} (reads of at least 1 MiB), {any_cpu:.0?} (reads of any size)"
        );
        let base = median(base);
        bench("output_capture_1gib", median(ours), "MiB/s", "plain_pipe_64k", base, true);
        bench("output_capture_1gib_any_read", median(any), "MiB/s", "plain_pipe_64k", base, true);
        let base_cpu = median(base_cpu);
        let (ours_cpu, any_cpu) = (median(ours_cpu), median(any_cpu));
        bench("output_capture_cpu", ours_cpu, "ms/GiB", "plain_pipe_64k_cpu", base_cpu, false);
        bench(
            "output_capture_cpu_any_read",
            any_cpu,
            "ms/GiB",
            "plain_pipe_64k_cpu",
            base_cpu,
            false,
        );
    }
}
