//! Benchmarks for procyard-daemon: `cargo run --release -p procyard-daemon --example bench`.
//!
//! Runs the release daemon binary (built if needed) on a temp SQLite queue and prints one
//! `BENCH` line per metric with a baseline measured in the same run:
//! oneshot jobs/s (2,000 `true` jobs) vs raw spawn+wait; longlived jobs/s with an echo worker
//! (this program re-executed in worker mode); both again with job records on (the default)
//! against `keep_done = "0s"` (no history), the job-lifecycle issue's ≥ 0.9 goal; publish→done latency p50/p99; daemon RSS idle
//! and with 100 workers; graceful stop time with 10 idle workers.
//!
//! Part `history` ([`history`]): `job ID` and `jobs --limit 50` with 1,000,000 records,
//! pruning them while jobs flow, daemon RSS with them.
//!
//! Part `sched` (`bench/sched.rs`): claim cost with 1,000,000 delayed jobs against none, and
//! the start lateness of delayed jobs (p50, p99) against jobs published for now.
//!
//! Parts `drain`, `huey`, `backlog`, `oneshot_latency` (`bench/drain.rs`): the drain against
//! a bare loop of the same frames and against huey, a 1,000,000-job backlog, oneshot
//! publish→done latency.
//!
//! `PROCYARD_BENCH_ROUNDS=N` runs the history on/off pairs N times, alternating their order,
//! and prints the median and spread of the ratios (`ROUNDS` lines).
//!
//! For profiling: `PROCYARD_BENCH_ONLY=longlived` (a comma-separated list of `oneshot`,
//! `longlived`, `latency`, `drain`, `huey`, `backlog`, `oneshot_latency`, `rss`, `stop`,
//! `history`, `http`, `sched`) runs only those parts.
//! Part `http` is the HTTP face's (`bench/http.rs`).

#[path = "bench/burst_ab.rs"]
mod burst_ab;
#[path = "bench/claims.rs"]
mod claims;
#[path = "bench/lateness.rs"]
mod lateness;
#[path = "bench/sched.rs"]
mod sched;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use procyard_core::{Child, Command, Deadline, Readiness, Signal, Stdio, ready_pipe};
use procyard_daemon::queue::{self, OpenMode, QueueBackend};
use procyard_daemon::{Config, control, worker};

#[path = "bench/drain.rs"]
mod drain;
#[path = "bench/history.rs"]
mod history;
#[path = "bench/http.rs"]
mod http;

const WORKER_ENV: &str = "PROCYARD_BENCH_WORKER";
const NOTIFY_ENV: &str = "PROCYARD_BENCH_NOTIFY";
/// The `[daemon]` line that turns job records off (the baseline of the history benches).
const NO_HISTORY: &str = "keep_done = \"0s\"";

fn main() -> anyhow::Result<()> {
    if std::env::var_os(WORKER_ENV).is_some() {
        return echo_worker();
    }
    if std::env::var_os(drain::AHEAD_ENV).is_some() {
        return drain::ahead_worker();
    }
    if std::env::var_os(drain::ONESHOT_ENV).is_some() {
        return drain::oneshot_job();
    }
    let daemon_bin = build_daemon()?;
    let me = std::env::current_exe()?;

    let only = std::env::var("PROCYARD_BENCH_ONLY").ok();
    let part = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|p| p == name));

    // History on against off: `PROCYARD_BENCH_ROUNDS` rounds (default 1), the order of the
    // two swapped every round (the first of a pair ran slower on a loaded machine); the
    // median of the rounds' ratios and their spread.
    let rounds: usize =
        std::env::var("PROCYARD_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(1);
    if part("oneshot") {
        let raw = raw_spawn_rate(2000)?;
        let (oneshot, off, spread) = on_off(rounds, |keep| oneshot_rate(&daemon_bin, 2000, keep))?;
        bench("oneshot_jobs_per_s", oneshot, "jobs/s", "raw_spawn_wait_per_s", raw);
        bench("oneshot_history_on_per_s", oneshot, "jobs/s", "oneshot_keep_done_0s_per_s", off);
        println!("ROUNDS\toneshot_history_on_vs_off\t{rounds}\t{spread}");
    }

    if part("longlived") {
        let (longlived, off, spread) =
            on_off(rounds, |keep| longlived_rate(&daemon_bin, &me, 20_000, keep))?;
        bench("longlived_jobs_per_s", longlived, "jobs/s", "goal_jobs_per_s", 5000.0);
        bench(
            "longlived_history_on_per_s",
            longlived,
            "jobs/s",
            "longlived_keep_done_0s_per_s",
            off,
        );
        println!("ROUNDS\tlonglived_history_on_vs_off\t{rounds}\t{spread}");
    }

    if part("latency") {
        let spawn_us = raw_spawn_latency_us(200)?;
        let (p50, p99) = latency(&daemon_bin, &me, 300)?;
        bench("publish_done_p50_us", p50, "us", "raw_spawn_wait_us", spawn_us);
        bench("publish_done_p99_us", p99, "us", "raw_spawn_wait_us", spawn_us);
    }

    if part("drain") {
        drain::rust(&daemon_bin, &me)?;
    }
    if part("huey") {
        drain::python(&daemon_bin)?;
    }
    if part("backlog") {
        drain::backlog(&daemon_bin, &me)?;
    }
    if part("oneshot_latency") {
        drain::oneshot_latency(&daemon_bin, &me)?;
    }

    if part("rss") {
        let (idle, busy) = rss(&daemon_bin, &me)?;
        bench("daemon_rss_idle_kib", idle, "KiB", "goal_idle_kib", 10.0 * 1024.0);
        bench("daemon_rss_100_workers_kib", busy, "KiB", "daemon_rss_idle_kib", idle);
    }

    if part("sched") {
        sched::run(&daemon_bin, &me)?;
    }

    if part("stop") {
        let mut stops = Vec::new();
        for _ in 0..5 {
            stops.push(stop_time_ms(&daemon_bin, &me)?);
        }
        bench("graceful_stop_10_idle_ms", median(&mut stops), "ms", "symphony_stop_ms", 5000.0);
    }

    if part("history") {
        history::run(&daemon_bin, &me)?;
    }
    if part("http") {
        http::run(&daemon_bin, &me)?;
    }
    Ok(())
}

fn bench(metric: &str, value: f64, unit: &str, baseline: &str, baseline_value: f64) {
    let ratio =
        if baseline_value > 0.0 { format!("{:.3}", value / baseline_value) } else { "-".into() };
    println!("BENCH\t{metric}\t{value:.1}\t{unit}\t{baseline}\t{baseline_value:.1}\t{ratio}");
}

/// `rounds` rounds of `rate` (jobs/s, daemon CPU µs per job) with history on (`""`) and off
/// ([`NO_HISTORY`]), alternating which goes first: the median rates (on, off), and as text
/// the rounds' rate ratios (sorted) and the median CPU per job of each.
fn on_off(
    rounds: usize,
    mut rate: impl FnMut(&str) -> anyhow::Result<(f64, f64)>,
) -> anyhow::Result<(f64, f64, String)> {
    let (mut on, mut off, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_on, mut cpu_off) = (Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        let (a, b) = if round % 2 == 0 {
            let b = rate(NO_HISTORY)?;
            (rate("")?, b)
        } else {
            let a = rate("")?;
            (a, rate(NO_HISTORY)?)
        };
        on.push(a.0);
        off.push(b.0);
        cpu_on.push(a.1);
        cpu_off.push(b.1);
        ratios.push(a.0 / b.0);
    }
    let text = ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(" ");
    let mid = median(&mut ratios);
    let (con, coff) = (median(&mut cpu_on), median(&mut cpu_off));
    Ok((
        median(&mut on),
        median(&mut off),
        format!(
            "ratios(in round order) {text} median {mid:.3}; daemon cpu us/job on {con:.1} off {coff:.1} ({:.3}x)",
            con / coff
        ),
    ))
}

/// CPU time (user + system) of process `pid` so far, in µs.
fn cpu_us(pid: i32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    Ok((ticks(11) + ticks(12)) * 1e6 / 100.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Worker mode: a longlived echo worker that reports each job on a datagram socket.
fn echo_worker() -> anyhow::Result<()> {
    let notify = std::env::var_os(NOTIFY_ENV).map(PathBuf::from);
    let sock = UnixDatagram::unbound()?;
    worker::serve(|job| {
        if let Some(path) = &notify {
            let _ = sock.send_to(&job.payload, path);
        }
        worker::Outcome::Done
    })?;
    Ok(())
}

/// The daemon the benchmarks drive: `PROCYARD_BENCH_DAEMON` (a binary built elsewhere, e.g.
/// the previous commit's, to compare two builds on the same machine in alternating runs), or
/// the release build of this checkout.
fn build_daemon() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("PROCYARD_BENCH_DAEMON") {
        return Ok(PathBuf::from(bin));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "procyard-daemon",
            "--bin",
            "procyard-daemon",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()?;
    anyhow::ensure!(status.success(), "building the daemon failed");
    let exe = std::env::current_exe()?;
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join("procyard-daemon"));
    match bin {
        Some(b) if b.exists() => Ok(b),
        _ => anyhow::bail!("procyard-daemon binary not found next to {}", exe.display()),
    }
}

fn raw_spawn_rate(n: usize) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    for _ in 0..n {
        Command::new("true").stdout(Stdio::Null).spawn()?.wait()?;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

fn raw_spawn_latency_us(n: usize) -> anyhow::Result<f64> {
    let mut v = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        Command::new("true").stdout(Stdio::Null).spawn()?.wait()?;
        v.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(&mut v))
}

struct Run {
    dir: tempfile::TempDir,
    config: PathBuf,
    daemon: Option<Child>,
}

impl Run {
    fn new(tasks: &str) -> anyhow::Result<Run> {
        Run::with("", tasks)
    }

    /// A run whose `[daemon]` section also has `daemon` lines.
    fn with(daemon: &str, tasks: &str) -> anyhow::Result<Run> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("bench.toml");
        let text = format!(
            "[daemon]\ngrace_period = \"5s\"\nkill_timeout = \"2s\"\n{daemon}\n[queue]\npath = \"{}/q.db\"\n{tasks}",
            dir.path().display()
        );
        std::fs::write(&config, text)?;
        Ok(Run { dir, config, daemon: None })
    }

    fn start(&mut self, bin: &Path) -> anyhow::Result<()> {
        self.start_logging(bin, "warn")
    }

    /// [`Run::start`] with `RUST_LOG` set to `filter` (the log is `daemon.log` in the dir).
    fn start_logging(&mut self, bin: &Path, filter: &str) -> anyhow::Result<()> {
        let (mut reader, writer) = ready_pipe()?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--ready-fd")
            .arg("3")
            .env("RUST_LOG", filter)
            .stdin(Stdio::Null)
            .stdout(Stdio::Null)
            .stderr(Stdio::Append(self.dir.path().join("daemon.log")))
            .pass_fd(writer.into_fd(), 3)
            .spawn()?;
        self.daemon = Some(child);
        match reader.wait(Deadline::after(Duration::from_secs(30)))? {
            Readiness::Ready(_) => Ok(()),
            other => anyhow::bail!("daemon not ready: {other:?}"),
        }
    }

    fn queue(&self) -> anyhow::Result<Box<dyn QueueBackend>> {
        let config = Config::load(&self.config)?;
        let mut q = queue::open(&config.queue, OpenMode::Client)?;
        q.bind(&config.bindings())?;
        Ok(q)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("q.db.sock")
    }

    fn done(&self, task: &str) -> anyhow::Result<u64> {
        let status = control::status(&self.socket())?;
        Ok(status.groups.iter().find(|g| g.name == task).map(|g| g.done).unwrap_or(0))
    }

    /// Waits (blocking a few ms at a time on the daemon's pidfd) until `task` did `n` jobs.
    fn wait_done(&self, task: &str, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Deadline::after(timeout);
        while self.done(task)? < n {
            anyhow::ensure!(!deadline.is_expired(), "timed out waiting for {n} {task} jobs");
            if let Some(child) = &self.daemon {
                anyhow::ensure!(child.wait_timeout_ref(Duration::from_millis(5)), "daemon died");
            }
        }
        Ok(())
    }

    /// Blocks a few milliseconds on the daemon's pidfd.
    fn pause(&self) {
        if let Some(child) = &self.daemon {
            child.wait_timeout_ref(Duration::from_millis(5));
        }
    }

    fn pid(&self) -> i32 {
        self.daemon.as_ref().map(|c| c.id().as_raw()).unwrap_or(0)
    }

    fn stop(&mut self) -> anyhow::Result<Duration> {
        let mut child = self.daemon.take().ok_or_else(|| anyhow::anyhow!("not running"))?;
        let t0 = Instant::now();
        child.signal(Signal::TERM)?;
        child
            .wait_timeout(Duration::from_secs(30))?
            .ok_or_else(|| anyhow::anyhow!("daemon did not stop"))?;
        Ok(t0.elapsed())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.signal(Signal::TERM);
            let _ = child.signal(Signal::TERM);
            let _ = child.wait_timeout(Duration::from_secs(10));
        }
    }
}

/// A tiny extension: wait on the pidfd without reaping; `false` if the process exited.
trait WaitRef {
    fn wait_timeout_ref(&self, d: Duration) -> bool;
}

impl WaitRef for Child {
    fn wait_timeout_ref(&self, d: Duration) -> bool {
        let ts = rustix::event::Timespec::try_from(d)
            .unwrap_or(rustix::event::Timespec { tv_sec: 0, tv_nsec: 5_000_000 });
        let pidfd = self.pidfd();
        let mut fds = [rustix::event::PollFd::new(&pidfd, rustix::event::PollFlags::IN)];
        !matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
    }
}

fn longlived_task(me: &Path, min: usize, max: usize, notify: Option<&Path>) -> String {
    let notify =
        notify.map(|n| format!(", {NOTIFY_ENV} = \"{}\"", n.display())).unwrap_or_default();
    format!(
        "[[task]]\nname = \"echo\"\nrouting_keys = [\"echo\"]\ncommand = [\"{}\"]\nwork_model = \"longlived\"\nmin_workers = {min}\nmax_workers = {max}\nenv = {{ {WORKER_ENV} = \"1\"{notify} }}\n",
        me.display()
    )
}

fn oneshot_rate(bin: &Path, n: usize, daemon: &str) -> anyhow::Result<(f64, f64)> {
    let mut run = Run::with(
        daemon,
        "[[task]]\nname = \"t\"\nrouting_keys = [\"t\"]\ncommand = [\"true\"]\nmax_workers = 8\n",
    )?;
    {
        let mut q = run.queue()?;
        for _ in 0..n {
            q.publish("t", b"")?;
        }
    }
    let t0 = Instant::now();
    run.start(bin)?;
    run.wait_done("t", n as u64, Duration::from_secs(60))?;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let cpu = cpu_us(run.pid())? / n as f64;
    run.stop()?;
    Ok((rate, cpu))
}

fn longlived_rate(bin: &Path, me: &Path, n: usize, daemon: &str) -> anyhow::Result<(f64, f64)> {
    let mut run = Run::with(daemon, &longlived_task(me, 2, 2, None))?;
    {
        let mut q = run.queue()?;
        for i in 0..n {
            q.publish("echo", format!("{i}").as_bytes())?;
        }
    }
    let t0 = Instant::now();
    run.start(bin)?;
    run.wait_done("echo", n as u64, Duration::from_secs(60))?;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let cpu = cpu_us(run.pid())? / n as f64;
    run.stop()?;
    Ok((rate, cpu))
}

fn latency(bin: &Path, me: &Path, n: usize) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut run = Run::new(&longlived_task(me, 1, 1, Some(&notify)))?;
    run.start(bin)?;
    let mut q = run.queue()?;
    let socket = run.socket();
    let mut v = Vec::with_capacity(n);
    let mut buf = [0u8; 64];
    for i in 0..n {
        let payload = format!("{i}");
        let t0 = Instant::now();
        q.publish("echo", payload.as_bytes())?;
        control::poke(&socket)?;
        loop {
            let len = sock.recv(&mut buf)?;
            if &buf[..len] == payload.as_bytes() {
                break;
            }
        }
        v.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    run.stop()?;
    v.sort_by(|a, b| a.total_cmp(b));
    Ok((v[n / 2], v[(n * 99) / 100]))
}

fn rss_kib(pid: i32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0.0))
}

fn rss(bin: &Path, me: &Path) -> anyhow::Result<(f64, f64)> {
    let mut idle =
        Run::new("[[task]]\nname = \"t\"\nrouting_keys = [\"t\"]\ncommand = [\"true\"]\n")?;
    idle.start(bin)?;
    let idle_rss = rss_kib(idle.pid())?;
    idle.stop()?;
    let mut busy = Run::new(&longlived_task(me, 100, 100, None))?;
    busy.start(bin)?;
    let deadline = Deadline::after(Duration::from_secs(30));
    loop {
        let status = control::status(&busy.socket())?;
        if status.groups.iter().map(|g| g.workers.len()).sum::<usize>() >= 100 {
            break;
        }
        anyhow::ensure!(!deadline.is_expired(), "100 workers did not start");
        busy.pause();
    }
    // Give them a job each so every pipe and buffer is in use.
    {
        let mut q = busy.queue()?;
        for i in 0..100 {
            q.publish("echo", format!("{i}").as_bytes())?;
        }
        control::poke(&busy.socket())?;
    }
    busy.wait_done("echo", 100, Duration::from_secs(30))?;
    let busy_rss = rss_kib(busy.pid())?;
    busy.stop()?;
    Ok((idle_rss, busy_rss))
}

fn stop_time_ms(bin: &Path, me: &Path) -> anyhow::Result<f64> {
    let mut run = Run::new(&longlived_task(me, 10, 10, None))?;
    run.start(bin)?;
    let deadline = Deadline::after(Duration::from_secs(30));
    loop {
        let status = control::status(&run.socket())?;
        if status.groups.iter().map(|g| g.workers.len()).sum::<usize>() >= 10 {
            break;
        }
        anyhow::ensure!(!deadline.is_expired(), "10 workers did not start");
        run.pause();
    }
    Ok(run.stop()?.as_secs_f64() * 1e3)
}
