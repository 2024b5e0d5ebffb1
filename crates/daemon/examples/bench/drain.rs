//! The drain benchmarks of `bench_daemon` (issue 19), each against a baseline measured in the
//! same run, each measured [`ROUNDS`] times (the median printed, the spread on stderr):
//!
//! - part `drain`: 20,000 no-op jobs published first, then drained by 2 longlived Rust
//!   workers (`serve_cancellable`, which takes jobs ahead) against a bare loop of the same
//!   frames over two pipes (this program as the daemon, no queue), one job at a time and with
//!   as many ahead as the task's `prefetch`; and the same drain with `prefetch = 1`. With
//!   `PROCYARD_BENCH_DRAIN_VS=/path/to/procyard-daemon` (a build of another commit) it also
//!   drains with that binary, interleaved with ours (`PROCYARD_BENCH_ROUNDS` pairs, default
//!   3, which goes first alternating), and prints both rates and the daemons' CPU per job.
//! - part `huey`: 20,000 no-op jobs drained by 2 longlived Python workers against huey's
//!   `SqliteHuey` consumer (`-w 2 -k process`), installed with pip into a virtualenv under the
//!   target directory (`HUEY_VENV` names another); skipped, and said so, when pip fails.
//! - part `backlog`: 10,000 jobs drained from a queue that holds 1,000,000 ready jobs
//!   (inserted with rusqlite directly) against a queue of 10,000, and the daemon's RSS with
//!   the big backlog.
//! - part `oneshot_latency`: publish→done p50/p99 of a oneshot job (this program, reporting
//!   on a datagram socket) on an idle daemon against spawning and waiting for the same
//!   program directly, 1,000 jobs each (with 300, the p99 was the third-slowest sample: one
//!   hiccup of a shared machine moved it).

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio as StdStdio};
use std::time::{Duration, Instant};

use procyard_core::frame;
use procyard_daemon::protocol::{JobHeader, Reply};
use procyard_daemon::{Client, Config, control};
use rusqlite::params;

use super::{NOTIFY_ENV, Run, bench, median, rss_kib};

/// Jobs per drain.
const JOBS: usize = 20_000;
/// Measurements of each figure.
const ROUNDS: usize = 3;
/// The environment variable that makes this program a worker that takes jobs ahead.
pub(super) const AHEAD_ENV: &str = "PROCYARD_BENCH_AHEAD";
/// The environment variable that makes this program a oneshot job that reports its payload.
pub(super) const ONESHOT_ENV: &str = "PROCYARD_BENCH_ONESHOT";

/// Worker mode for `AHEAD_ENV`: a no-op longlived worker that takes jobs ahead.
pub(super) fn ahead_worker() -> anyhow::Result<()> {
    procyard_daemon::worker::serve_cancellable(|_, _| procyard_daemon::worker::Outcome::Done)?;
    Ok(())
}

/// Oneshot mode: sends the payload (stdin) to the notify socket.
pub(super) fn oneshot_job() -> anyhow::Result<()> {
    let mut payload = Vec::new();
    std::io::stdin().read_to_end(&mut payload)?;
    if let Some(path) = std::env::var_os(NOTIFY_ENV) {
        UnixDatagram::unbound()?.send_to(&payload, path)?;
    }
    Ok(())
}

/// Median and spread (min–max) of `v`, the spread logged on stderr under `name`.
fn summary(name: &str, v: &mut [f64]) -> f64 {
    let m = median(v);
    let (lo, hi) = (v[0], v[v.len() - 1]);
    eprintln!("bench: {name}: median {m:.1}, runs {v:.1?} (spread {lo:.1}–{hi:.1})");
    m
}

fn task(command: &Path, env: &str, prefetch: Option<usize>, model: &str, workers: usize) -> String {
    let prefetch = prefetch.map(|p| format!("prefetch = {p}\n")).unwrap_or_default();
    let min = if model == "longlived" { workers } else { 0 };
    format!(
        "[[task]]\nname = \"echo\"\nrouting_keys = [\"echo\"]\ncommand = [\"{}\"]\nwork_model = \"{model}\"\nmin_workers = {min}\nmax_workers = {workers}\n{prefetch}env = {{ {env} }}\n",
        command.display()
    )
}

/// Names another daemon binary to drain with, interleaved with ours (part `drain`).
const VERSUS_ENV: &str = "PROCYARD_BENCH_DRAIN_VS";

/// Jobs/s of a daemon draining `n` jobs published before it starts (start to last done).
fn drain(bin: &Path, tasks: &str, n: usize) -> anyhow::Result<f64> {
    Ok(drain_cpu(bin, tasks, n)?.0)
}

/// [`drain`], with the daemon's CPU time per job (µs, all its threads, from start to the last
/// job done): a figure that a loaded machine blurs less than the rate.
fn drain_cpu(bin: &Path, tasks: &str, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut run = Run::new(tasks)?;
    let last = {
        let mut q = run.queue()?;
        let lines: Vec<Vec<u8>> = (0..n).map(|i| format!("{i}").into_bytes()).collect();
        let ids = q.publish_batch("echo", &lines).map_err(|e| anyhow::anyhow!("{}", e.error))?;
        ids.last().cloned().ok_or_else(|| anyhow::anyhow!("nothing published"))?
    };
    let t0 = Instant::now();
    run.start(bin)?;
    let rate = wait_last(&run, &last, n, t0)?;
    let cpu_us = cpu_ns(run.pid())? / 1e3 / n as f64;
    run.stop()?;
    Ok((rate, cpu_us))
}

/// The CPU time (ns) every thread of process `pid` has run (`/proc/PID/task/*/schedstat`).
fn cpu_ns(pid: i32) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        total += stat.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    }
    Ok(total)
}

/// Drains with our daemon and with `other` in turn, `rounds` pairs (which goes first
/// alternating), at the default `prefetch`; prints the medians of both rates and CPU per job.
fn versus(bin: &Path, other: &Path, tasks: &str, rounds: usize) -> anyhow::Result<()> {
    let (mut ours, mut theirs, mut ratios) = ((vec![], vec![]), (vec![], vec![]), vec![]);
    for round in 0..rounds {
        let (a, b) = if round % 2 == 0 {
            let a = drain_cpu(bin, tasks, JOBS)?;
            (a, drain_cpu(other, tasks, JOBS)?)
        } else {
            let b = drain_cpu(other, tasks, JOBS)?;
            (drain_cpu(bin, tasks, JOBS)?, b)
        };
        ratios.push(a.0 / b.0);
        ours.0.push(a.0);
        ours.1.push(a.1);
        theirs.0.push(b.0);
        theirs.1.push(b.1);
    }
    let rate = summary("drain_rust_this_daemon", &mut ours.0);
    let other_rate = summary("drain_rust_other_daemon", &mut theirs.0);
    let cpu = summary("drain_rust_this_daemon_cpu_us_per_job", &mut ours.1);
    let other_cpu = summary("drain_rust_other_daemon_cpu_us_per_job", &mut theirs.1);
    let ratio = summary("drain_rust_this_vs_other_per_round", &mut ratios);
    bench("drain_rust_vs_other_daemon", rate, "jobs/s", "other_daemon_per_s", other_rate);
    bench("drain_rust_cpu_per_job", cpu, "us", "other_daemon_cpu_per_job_us", other_cpu);
    println!("ROUNDS\tdrain_rust_vs_other_daemon\t{rounds}\tmedian ratio {ratio:.3}");
    Ok(())
}

/// Waits for job `last` (published or inserted last) to end, on the daemon's control socket
/// (no status polling, which would cost the daemon a count per look); jobs/s of `n` jobs
/// since `t0`. Then checks that `n` are done (a few sent ahead to the other worker may end a
/// moment after the last one).
fn wait_last(run: &Run, last: &str, n: usize, t0: Instant) -> anyhow::Result<f64> {
    let mut client = Client::new(Config::load(&run.config)?);
    let waited = client.wait(&[last.to_owned()], Some(Duration::from_secs(300)))?;
    anyhow::ensure!(!waited.timed_out, "the drain did not end in 300 s");
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    run.wait_done("echo", n as u64, Duration::from_secs(60))?;
    Ok(rate)
}

/// The bare loop: this program plays the daemon for 2 workers (the same program, the same
/// frames), keeping `window` jobs in flight per worker; jobs/s from the spawn to the last
/// reply.
fn bare_loop(me: &Path, n: usize, window: usize) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|w| {
            let me = me.to_owned();
            std::thread::spawn(move || serve_bare(&me, w, n / 2, window))
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("bare loop thread panicked"))??;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

fn serve_bare(me: &Path, worker: usize, n: usize, window: usize) -> anyhow::Result<()> {
    let mut child = StdCommand::new(me)
        .env(AHEAD_ENV, "1")
        .stdin(StdStdio::piped())
        .stdout(StdStdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let mut stdout =
        BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
    let mut out = Vec::new();
    let mut send = |i: usize, out: &mut Vec<u8>| -> anyhow::Result<()> {
        let header = JobHeader {
            id: format!("0190a1b2-c3d4-7e5f-8a9b-{worker:04}{i:08}"),
            task: "echo".into(),
            routing_key: "echo".into(),
            attempt: 1,
        };
        out.clear();
        frame::write_frame(&mut *out, &header)?;
        frame::write_frame_bytes(&mut *out, format!("{i}").as_bytes())?;
        stdin.write_all(out)?;
        Ok(())
    };
    let mut sent = 0;
    while sent < window.min(n) {
        send(sent, &mut out)?;
        sent += 1;
    }
    for _ in 0..n {
        let bytes = frame::read_frame_bytes(&mut stdout, frame::MAX_FRAME)?
            .ok_or_else(|| anyhow::anyhow!("worker ended early"))?;
        let _reply: Reply = serde_json::from_slice(&bytes)?;
        if sent < n {
            send(sent, &mut out)?;
            sent += 1;
        }
    }
    drop(stdin);
    child.wait()?;
    Ok(())
}

pub(super) fn rust(bin: &Path, me: &Path) -> anyhow::Result<()> {
    let env = format!("{AHEAD_ENV} = \"1\"");
    let default = procyard_daemon::config::DEFAULT_PREFETCH as usize;
    // The sweep that chose the default.
    let sweep = [1, 2, 4, 8, 16, 32];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); sweep.len()];
    let (mut bare1, mut bare_n) = (vec![], vec![]);
    for _ in 0..ROUNDS {
        for (p, out) in sweep.iter().zip(rates.iter_mut()) {
            out.push(drain(bin, &task(me, &env, Some(*p), "longlived", 2), JOBS)?);
        }
        bare1.push(bare_loop(me, JOBS, 1)?);
        bare_n.push(bare_loop(me, JOBS, default)?);
    }
    let medians: Vec<f64> = sweep
        .iter()
        .zip(rates.iter_mut())
        .map(|(p, v)| summary(&format!("drain_rust_2_workers_prefetch_{p}"), v))
        .collect();
    let at = |p: usize| sweep.iter().position(|&x| x == p).map(|i| medians[i]).unwrap_or(0.0);
    let ours = at(default);
    let bare1 = summary("bare_loop_2_pipes_window_1", &mut bare1);
    let bare_n = summary("bare_loop_2_pipes_window_prefetch", &mut bare_n);
    bench("drain_rust_2_workers_per_s", ours, "jobs/s", "goal_jobs_per_s", 25_000.0);
    bench("drain_rust_vs_bare_loop_one_at_a_time", ours, "jobs/s", "bare_loop_1_per_s", bare1);
    bench("drain_rust_vs_bare_loop_same_window", ours, "jobs/s", "bare_loop_window_per_s", bare_n);
    for (p, m) in sweep.iter().zip(&medians).skip(1) {
        bench(&format!("drain_rust_prefetch_{p}_vs_1"), *m, "jobs/s", "prefetch_1_per_s", at(1));
    }
    if let Some(other) = std::env::var_os(VERSUS_ENV) {
        let rounds = std::env::var("PROCYARD_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok());
        let tasks = task(me, &env, None, "longlived", 2);
        versus(bin, Path::new(&other), &tasks, rounds.unwrap_or(ROUNDS))?;
    }
    Ok(())
}

/// A longlived Python worker that takes jobs ahead: a thread reads stdin (jobs and cancel
/// frames), the main thread runs jobs in order and does not run one cancelled before it
/// starts.
const PY_WORKER: &str = r#"
import json, os, queue, struct, sys, threading
inp, out = sys.stdin.buffer, sys.stdout.buffer
def read(n):
    b = inp.read(n)
    return b if b is not None and len(b) == n else None
def frame():
    h = read(4)
    return None if h is None else read(struct.unpack(">I", h)[0])
def send(obj):
    b = json.dumps(obj).encode()
    out.write(struct.pack(">I", len(b)) + b)
    out.flush()
jobs, cancelled = queue.SimpleQueue(), set()
def reader():
    while (h := frame()) is not None:
        msg = json.loads(h)
        if msg.get("type") == "cancel":
            cancelled.add(msg["id"])
            continue
        jobs.put((msg, frame()))
    jobs.put(None)
if os.environ.get("PROCYARD_PROTOCOL", "1") >= "2":
    send({"type": "hello", "cancel": True, "prefetch": True})
threading.Thread(target=reader, daemon=True).start()
while (item := jobs.get()) is not None:
    job, payload = item
    if job["id"] in cancelled:
        send({"id": job["id"], "outcome": "cancelled"})
        continue
    send({"id": job["id"], "outcome": "done"})
"#;

const HUEY_APP: &str = r#"
import os
from huey import SqliteHuey
huey = SqliteHuey(filename=os.environ["BENCH_HUEY_DB"])
@huey.task()
def noop(i):
    pass
"#;

/// Enqueues n jobs, then times the consumer (-w 2 -k process) until none is pending.
const HUEY_DRIVER: &str = r#"
import os, subprocess, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import huey_app
n = int(sys.argv[1])
for i in range(n):
    huey_app.noop(i)
assert huey_app.huey.pending_count() == n
consumer = os.path.join(os.path.dirname(sys.executable), "huey_consumer")
t0 = time.monotonic()
p = subprocess.Popen([consumer, "huey_app.huey", "-w", "2", "-k", "process", "-q"],
                     cwd=os.path.dirname(os.path.abspath(__file__)))
while huey_app.huey.pending_count() > 0:
    if p.poll() is not None:
        sys.exit("the huey consumer exited early")
    time.sleep(0.002)
t1 = time.monotonic()
p.terminate()
p.wait()
print(n / (t1 - t0))
"#;

fn huey_venv(me: &Path) -> anyhow::Result<PathBuf> {
    if let Some(v) = std::env::var_os("HUEY_VENV") {
        return Ok(PathBuf::from(v));
    }
    // <target>/release/examples/bench_daemon → <target>/bench-venv-huey
    let target = me
        .ancestors()
        .nth(3)
        .ok_or_else(|| anyhow::anyhow!("no target directory above {}", me.display()))?;
    let venv = target.join("bench-venv-huey");
    if !venv.join("bin/huey_consumer").exists() {
        let ok = StdCommand::new("python3").args(["-m", "venv"]).arg(&venv).status()?.success()
            && StdCommand::new(venv.join("bin/pip"))
                .args(["install", "-q", "huey"])
                .status()?
                .success();
        anyhow::ensure!(ok, "pip install huey failed");
    }
    Ok(venv)
}

fn huey_rate(venv: &Path, dir: &Path) -> anyhow::Result<f64> {
    let hdir = dir.join(format!("huey-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&hdir)?;
    std::fs::write(hdir.join("huey_app.py"), HUEY_APP)?;
    std::fs::write(hdir.join("driver.py"), HUEY_DRIVER)?;
    let out = StdCommand::new(venv.join("bin/python"))
        .arg(hdir.join("driver.py"))
        .arg(JOBS.to_string())
        .env("BENCH_HUEY_DB", hdir.join("huey.db"))
        .current_dir(&hdir)
        .stderr(StdStdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "the huey driver failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

pub(super) fn python(bin: &Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let worker = dir.path().join("worker.py");
    std::fs::write(&worker, PY_WORKER)?;
    let python = which_python()?;
    let command = format!(
        "[[task]]\nname = \"echo\"\nrouting_keys = [\"echo\"]\ncommand = [\"{}\", \"{}\"]\nwork_model = \"longlived\"\nmin_workers = 2\nmax_workers = 2\n",
        python.display(),
        worker.display()
    );
    let one = command.replace("max_workers = 2\n", "max_workers = 2\nprefetch = 1\n");
    let venv = match huey_venv(&std::env::current_exe()?) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("bench: huey skipped (the peer could not be installed): {e:#}");
            None
        }
    };
    let (mut ours, mut ours_one, mut huey) = (vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        ours.push(drain(bin, &command, JOBS)?);
        ours_one.push(drain(bin, &one, JOBS)?);
        if let Some(v) = &venv {
            match huey_rate(v, dir.path()) {
                Ok(r) => huey.push(r),
                Err(e) => eprintln!("bench: a huey run failed: {e:#}"),
            }
        }
    }
    let ours = summary("drain_python_2_workers", &mut ours);
    let ours_one = summary("drain_python_2_workers_prefetch_1", &mut ours_one);
    if huey.is_empty() {
        bench("drain_python_2_workers_per_s", ours, "jobs/s", "huey_skipped", 0.0);
    } else {
        let huey = summary("huey_sqlite_w2_process", &mut huey);
        bench(
            "drain_python_2_workers_vs_huey",
            ours,
            "jobs/s",
            "huey_sqlite_w2_process_per_s",
            huey,
        );
        bench(
            "drain_python_prefetch_1_vs_huey",
            ours_one,
            "jobs/s",
            "huey_sqlite_w2_process_per_s",
            huey,
        );
    }
    Ok(())
}

/// The Python the peers use: the machine's `python3`, by its full path.
fn which_python() -> anyhow::Result<PathBuf> {
    let out =
        StdCommand::new("python3").args(["-c", "import sys; print(sys.executable)"]).output()?;
    anyhow::ensure!(out.status.success(), "python3 not found");
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Inserts `n` ready jobs of task `echo` directly (one transaction), after the schema exists;
/// returns the id of job number `mark` (from 1).
fn fill_ready(db: &Path, n: usize, mark: usize) -> anyhow::Result<String> {
    let t0 = Instant::now();
    let mut conn = rusqlite::Connection::open(db)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let tx = conn.transaction()?;
    let mut marked = String::new();
    {
        let mut job = tx.prepare(
            "INSERT INTO jobs (id, task, routing_key, payload, state, published_ms)
             VALUES (?1, 'echo', 'echo', ?2, 0, ?3)",
        )?;
        for i in 0..n {
            let id = uuid::Uuid::now_v7().to_string();
            job.execute(params![id, format!("{i}").as_bytes(), now])?;
            if i + 1 == mark {
                marked = id;
            }
        }
    }
    tx.commit()?;
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
    eprintln!("bench: {n} ready jobs written in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(marked)
}

/// Jobs/s of the first `take` jobs drained from a backlog of `n`, from the daemon's ready
/// signal; and its RSS then.
fn backlog_drain(bin: &Path, me: &Path, n: usize, take: usize) -> anyhow::Result<(f64, f64)> {
    let mut run = Run::new(&task(me, &format!("{AHEAD_ENV} = \"1\""), None, "longlived", 2))?;
    drop(run.queue()?); // the schema
    let mark = fill_ready(&run.dir.path().join("q.db"), n, take)?;
    run.start(bin)?;
    let t0 = Instant::now();
    let mut client = Client::new(Config::load(&run.config)?);
    let waited = client.wait(&[mark], Some(Duration::from_secs(300)))?;
    anyhow::ensure!(!waited.timed_out, "{take} jobs did not drain in 300 s");
    let rate = take as f64 / t0.elapsed().as_secs_f64();
    let rss = rss_kib(run.pid())?;
    run.stop()?;
    Ok((rate, rss))
}

pub(super) fn backlog(bin: &Path, me: &Path) -> anyhow::Result<()> {
    const BIG: usize = 1_000_000;
    const SMALL: usize = 10_000;
    let (mut big, mut small, mut rss) = (vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let (r, _) = backlog_drain(bin, me, SMALL, SMALL)?;
        small.push(r);
        let (r, m) = backlog_drain(bin, me, BIG, SMALL)?;
        big.push(r);
        rss.push(m);
    }
    let big = summary("drain_10k_of_1m_backlog", &mut big);
    let small = summary("drain_10k_of_10k_backlog", &mut small);
    let rss = summary("daemon_rss_1m_backlog_kib", &mut rss);
    bench("drain_1m_backlog_vs_10k_per_s", big, "jobs/s", "backlog_10k_per_s", small);
    bench("daemon_rss_1m_backlog_kib", rss, "KiB", "goal_kib", 16.0 * 1024.0);
    Ok(())
}

/// Publish→done p50/p99 (µs) of oneshot jobs on an idle daemon, against spawning and waiting
/// for the same program with the same payload.
pub(super) fn oneshot_latency(bin: &Path, me: &Path) -> anyhow::Result<()> {
    const N: usize = 1000;
    // Unmeasured jobs first, each side: the first few took 5-8 ms (caches, the daemon's first
    // spawns), and ours ran first, so only ours paid for them.
    const WARM: usize = 20;
    let dir = tempfile::tempdir()?;
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let env = format!("{ONESHOT_ENV} = \"1\", {NOTIFY_ENV} = \"{}\"", notify.display());
    let mut run = Run::new(&task(me, &env, None, "oneshot", 1))?;
    run.start_logging(bin, super::sched::log_filter())?;
    let mut q = run.queue()?;
    let socket = run.socket();
    let mut buf = [0u8; 64];
    let mut ours = Vec::with_capacity(N);
    // With `PROCYARD_BENCH_TRACE=FILE`: each job's publish, poke and done instants (µs since
    // the epoch) to FILE, and the daemon's log (its stamps) to FILE.daemon.log.
    let trace = std::env::var_os("PROCYARD_BENCH_TRACE").map(PathBuf::from);
    let mut lines = String::new();
    let unix_us = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    };
    for i in 0..WARM + N {
        let payload = format!("{i}");
        let (t0, w0) = (Instant::now(), unix_us());
        q.publish("echo", payload.as_bytes())?;
        let w1 = unix_us();
        control::poke(&socket)?;
        let w2 = unix_us();
        loop {
            let len = sock.recv(&mut buf)?;
            if &buf[..len] == payload.as_bytes() {
                break;
            }
        }
        if i >= WARM {
            ours.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        if trace.is_some() {
            lines += &format!("{i} {w0} {w1} {w2} {}\n", unix_us());
        }
    }
    run.stop()?;
    if let Some(path) = &trace {
        std::fs::write(path, lines)?;
        let log = std::fs::read(run.dir.path().join("daemon.log")).unwrap_or_default();
        std::fs::write(path.with_extension("daemon.log"), log)?;
    }
    if super::sched::log_filter() != "warn" {
        eprintln!("bench:   oneshot stamps p50/p99/max ms:{}", super::lateness::stamps(&run));
    }
    let mut raw = Vec::with_capacity(N);
    for i in 0..WARM + N {
        let payload = format!("r{i}");
        let t0 = Instant::now();
        let mut child = StdCommand::new(me)
            .env(ONESHOT_ENV, "1")
            .env(NOTIFY_ENV, &notify)
            .stdin(StdStdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(payload.as_bytes())?;
        }
        child.wait()?;
        loop {
            let len = sock.recv(&mut buf)?;
            if &buf[..len] == payload.as_bytes() {
                break;
            }
        }
        if i >= WARM {
            raw.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    ours.sort_by(|a, b| a.total_cmp(b));
    raw.sort_by(|a, b| a.total_cmp(b));
    let p = |v: &[f64], q: usize| v[(v.len() * q / 100).min(v.len() - 1)];
    bench("oneshot_publish_done_p50_us", p(&ours, 50), "us", "raw_spawn_wait_p50_us", p(&raw, 50));
    bench("oneshot_publish_done_p99_us", p(&ours, 99), "us", "raw_spawn_wait_p99_us", p(&raw, 99));
    Ok(())
}
