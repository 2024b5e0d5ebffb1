//! What a daemon holds on RabbitMQ since its consumer's prefetch became `max_workers ×
//! prefetch` (`TaskConfig::held_jobs`) and delays went through the base-64 ladder:
//! a daemon SIGKILLed while its longlived workers hold jobs sent ahead loses none of them, and
//! the jobs run twice are at most what it held; a job left in the power-of-two ladder of
//! earlier versions (`E.delay.bit<k>`, `E.delay.<2^k>ms`) on an upgraded broker still reaches
//! its task's queue and runs on a daemon of today's code, beside a job delayed by today's
//! ladder.
//!
//! Broker: `PROCYARD_AMQP_URL`, else `amqp://guest:guest@127.0.0.1:5672/%2f`; with no broker
//! the tests print a skip notice and return, except under `CI=true`, where they fail.

#[path = "common/dirwatch.rs"]
mod dirwatch;
#[path = "common/ready.rs"]
mod ready;
use dirwatch::DirWatch;

#[path = "common/broker.rs"]
mod broker;
use broker::{broker_url, wait_consumers};

#[path = "common/old_ladder.rs"]
mod old_ladder;

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use procyard_daemon::worker::{Outcome, serve_cancellable_on};

/// Workers of the longlived task, and jobs sent ahead to each (the default, said explicitly).
const MAX_WORKERS: usize = 2;
const PREFETCH: usize = 8;
/// What one daemon holds unacknowledged: its consumer's prefetch.
const HELD: usize = MAX_WORKERS * PREFETCH;
/// How long a test may wait for its jobs (seconds of work on a quiet machine; a hang fails).
const DEADLINE: Duration = Duration::from_secs(240);
/// Set in the worker's environment to the file it appends each payload to: this test binary
/// then serves as the longlived worker.
const WORKER_ENV: &str = "PROCYARD_TEST_HELD_WORKER_OUT";

/// Daemons on one exchange, task `work` (routing key `work.#`), each writing the payloads its
/// workers ran to its own file.
struct Cluster {
    dir: tempfile::TempDir,
    watch: DirWatch,
    url: String,
    exchange: String,
    daemons: Vec<Option<Child>>,
}

impl Cluster {
    fn new(url: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let exchange = format!("procyard-test-{}", uuid::Uuid::now_v7().simple());
        let watch = DirWatch::new(&[dir.path()]);
        Cluster { dir, watch, url: url.to_owned(), exchange, daemons: Vec::new() }
    }

    fn out(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("out-{i}"))
    }

    fn config(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("d{i}.toml"))
    }

    /// Starts daemon `i` with `task` (a `[[task]]` table) and waits until it is ready.
    fn start(&mut self, i: usize, task: &str) {
        let text = format!(
            "[daemon]\ngrace_period = \"5s\"\ncontrol_socket = \"{sock}\"\n[queue]\nbackend = \"amqp\"\nurl = \"{url}\"\nexchange = \"{exchange}\"\n{task}",
            sock = self.dir.path().join(format!("d{i}.sock")).display(),
            url = self.url,
            exchange = self.exchange,
        );
        std::fs::write(self.config(i), text).expect("write config");
        let mut child = ready::daemon_command(&self.config(i))
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn procyard-daemon");
        let line = ready::ready_line(&mut child, Duration::from_secs(60));
        if self.daemons.len() <= i {
            self.daemons.resize_with(i + 1, || None);
        }
        self.daemons[i] = Some(child);
        match line {
            Some(line) => assert!(line.starts_with("ready"), "daemon {i} not ready: {line:?}"),
            None => panic!("daemon {i} not ready within 60 s"),
        }
    }

    /// Waits until `n` consumers take from the task's queue.
    fn wait_consumers(&self, n: u32) {
        let queue = format!("{}.work", self.exchange);
        wait_consumers(&self.url, &queue, n, Duration::from_secs(60));
    }

    /// Declares the task's queue (as a client does) and publishes `job0` … `job<n-1>` to
    /// `work.job` through the library's client.
    fn publish(&self, n: usize) {
        broker::publish_work(&self.url, &self.exchange, n);
    }

    /// Payloads each daemon ran (with repeats), complete lines only.
    fn runs(&self) -> Vec<Vec<String>> {
        (0..self.daemons.len()).map(|i| read_lines(&self.out(i))).collect()
    }

    /// Waits until `pred` holds of the runs, watching the output files.
    fn wait_runs(&self, what: &str, pred: impl Fn(&[Vec<String>]) -> bool) -> Vec<Vec<String>> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let runs = self.runs();
            if pred(&runs) {
                return runs;
            }
            assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
            self.watch.wait(Duration::from_millis(500));
        }
    }

    /// Jobs daemon `i` holds (running and sent ahead), jobs ready in the task's queue and the
    /// pids of its workers, from `status --json`.
    fn held(&self, i: usize) -> (usize, u64, Vec<i32>) {
        let out = Command::new(env!("CARGO_BIN_EXE_procyard-daemon"))
            .args(["status", "--json", "--config"])
            .arg(self.config(i))
            .output()
            .expect("run procyard-daemon status");
        assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        let group = &status["groups"][0];
        let in_flight = group["in_flight"].as_u64().expect("in_flight") as usize;
        let ready = group["queue"]["ready"].as_u64().unwrap_or(0);
        let pids = group["workers"].as_array().into_iter().flatten();
        let pids = pids.filter_map(|w| w["pid"].as_i64()).map(|p| p as i32).collect();
        (in_flight, ready, pids)
    }

    /// SIGTERM to daemon `i`, then wait for it.
    fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.daemons[i].take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    fn stop_all(&mut self) {
        (0..self.daemons.len()).for_each(|i| self.stop(i));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
        let mut cleanup = broker::Cleanup::task(&self.url, &self.exchange, "work", &[50, 100, 200]);
        cleanup.queues.extend(old_ladder::queues(&self.exchange));
        cleanup.ladder = true;
        drop(cleanup);
        old_ladder::delete_exchanges(&self.url, &self.exchange);
    }
}

/// The complete lines of a file (a line being appended counts once its newline is there).
fn read_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// Waits until each of `pids` has exited (a pidfd becomes readable), or panics after `limit`.
fn wait_exited(pids: &[i32], limit: Duration) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::process::{Pid, PidfdFlags, pidfd_open};
    let deadline = Instant::now() + limit;
    for &raw in pids {
        let Some(pid) = Pid::from_raw(raw) else { continue };
        // Gone already (ESRCH): nothing to wait for.
        let Ok(fd) = pidfd_open(pid, PidfdFlags::empty()) else { continue };
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = Timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos() as _ };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let ready = poll(&mut fds, Some(&timeout)).expect("poll a pidfd");
        assert!(ready == 1, "worker {raw} of the killed daemon still runs after {limit:?}");
    }
}

/// The longlived task served by this test binary's [`held_worker_entry`], writing to `out`.
fn longlived_task(out: &Path) -> String {
    let exe = std::env::current_exe().expect("test executable");
    let exe = exe.to_str().expect("utf-8 path");
    let script = "exec \"$0\" --exact held_worker_entry --nocapture --test-threads=1 3>&1 1>&2";
    format!(
        "[[task]]\nname = \"work\"\nrouting_keys = [\"work.#\"]\ncommand = [\"sh\", \"-c\", {script:?}, {exe:?}]\nwork_model = \"longlived\"\nmin_workers = {MAX_WORKERS}\nmax_workers = {MAX_WORKERS}\nprefetch = {PREFETCH}\nmax_attempts = 3\nbackoff_initial = \"50ms\"\nenv = {{ {WORKER_ENV} = {out:?} }}\n",
        out = out.display().to_string(),
    )
}

/// Not a test: the longlived worker, when this binary is started with [`WORKER_ENV`] set
/// (libtest prints on stdout, so the command moves stdout to descriptor 3 and the protocol
/// goes there). It says in its hello that it takes jobs ahead, works 10 ms on each job, and
/// appends its payload (one `write` of a line, `O_APPEND`) to the file named by [`WORKER_ENV`].
#[test]
fn held_worker_entry() {
    let Some(out) = std::env::var_os(WORKER_ENV) else { return };
    let protocol = std::fs::OpenOptions::new().write(true).open("/proc/self/fd/3").expect("fd 3");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)
        .expect("open the output file");
    let stdin = BufReader::new(std::io::stdin());
    let result = serve_cancellable_on(stdin, BufWriter::new(protocol), true, |job, _cancel| {
        // The job's work: 10 ms (a stand-in for real work, so that a daemon takes seconds to
        // drain and holds jobs sent ahead meanwhile; nothing waits on it).
        std::thread::sleep(Duration::from_millis(10));
        let mut line = job.payload.clone();
        line.push(b'\n');
        match file.write_all(&line) {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Fail(format!("write the output file: {e}")),
        }
    });
    // EOF on stdin (the daemon stopped or died) ends the worker.
    if let Err(e) = result {
        eprintln!("held worker: {e}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

#[test]
fn amqp_held_sigkilled_daemon_with_prefetch_loses_nothing_and_reruns_at_most_what_it_held() {
    let Some(url) = broker_url(
        "amqp_held_sigkilled_daemon_with_prefetch_loses_nothing_and_reruns_at_most_what_it_held",
    ) else {
        return;
    };
    const JOBS: usize = 2_000;
    let mut cluster = Cluster::new(&url);
    // A backlog first, so that each daemon holds all it may while it drains.
    cluster.publish(JOBS);
    for i in 0..2 {
        let task = longlived_task(&cluster.out(i));
        cluster.start(i, &task);
    }
    // Mid-drain (the victim has run 100 jobs), with jobs sent ahead to its workers (more in
    // flight than it has workers).
    cluster.wait_runs("daemon 0 ran 100 jobs", |runs| runs[0].len() >= 100);
    let deadline = Instant::now() + DEADLINE;
    let (in_flight, ready, workers) = loop {
        let (in_flight, ready, workers) = cluster.held(0);
        if in_flight > MAX_WORKERS {
            break (in_flight, ready, workers);
        }
        assert!(Instant::now() < deadline, "daemon 0 never held a job sent ahead");
        let ran: usize = cluster.runs().iter().map(Vec::len).sum();
        assert!(ran < JOBS, "the queue drained before daemon 0 held a job sent ahead");
        cluster.watch.wait(Duration::from_millis(100));
    };
    let mut victim = cluster.daemons[0].take().expect("daemon 0");
    victim.kill().expect("SIGKILL");
    victim.wait().expect("reap");
    let killed_at = read_lines(&cluster.out(0)).len();
    cluster.wait_runs("every job ran", |runs| {
        runs.iter().flatten().collect::<std::collections::BTreeSet<_>>().len() >= JOBS
    });
    // Every run is in the files once the survivor has stopped and the victim's orphaned
    // workers have exited (on EOF from their dead daemon, after the jobs they had read).
    cluster.stop_all();
    wait_exited(&workers, DEADLINE);
    let runs = cluster.runs();
    let mut count: BTreeMap<&String, usize> = BTreeMap::new();
    for p in runs.iter().flatten() {
        *count.entry(p).or_default() += 1;
    }
    let twice: Vec<(&&String, &usize)> = count.iter().filter(|(_, n)| **n > 1).collect();
    let reruns: usize = twice.iter().map(|(_, n)| **n - 1).sum();
    eprintln!(
        "SIGKILL with prefetch {PREFETCH}: victim in flight {in_flight} at ~{killed_at} runs ({ready} ready), \
         ran {}, survivor {}; {} jobs ran twice ({reruns} extra runs), bound {HELD}",
        runs[0].len(),
        runs[1].len(),
        twice.len()
    );
    assert!(in_flight <= HELD, "daemon 0 held {in_flight} jobs, more than {HELD}");
    assert_eq!(count.len(), JOBS, "jobs lost");
    assert!(count.keys().all(|p| p.starts_with("job")), "a payload nobody sent");
    // Only jobs the killed daemon held unacknowledged can run again, each once more.
    assert!(reruns <= HELD, "{reruns} extra runs > {HELD} held: {twice:?}");
    assert!(!runs[1].is_empty(), "the survivor took over nothing");
}

#[test]
fn amqp_held_job_in_old_power_of_two_ladder_runs_after_upgrade() {
    let Some(url) = broker_url("amqp_held_job_in_old_power_of_two_ladder_runs_after_upgrade")
    else {
        return;
    };
    let mut cluster = Cluster::new(&url);
    let oneshot = format!(
        "[[task]]\nname = \"work\"\nrouting_keys = [\"work.#\"]\ncommand = [\"sh\", \"-c\", \"p=$(cat); echo \\\"$p\\\" >> {out}\"]\nwork_model = \"oneshot\"\nmax_workers = 1\nmax_attempts = 3\nbackoff_initial = \"50ms\"\n",
        out = cluster.out(0).display(),
    );
    // The broker as the old version left it: the task's queue and the old ladder, declared
    // by a daemon that has stopped, a job on its way down the ladder.
    cluster.start(0, &oneshot);
    cluster.wait_consumers(1);
    cluster.stop(0);
    old_ladder::declare(&url, &cluster.exchange);
    // 5,000 ms = 4096 + 512 + 256 + 128 + 8: it waits in `E.delay.4096ms` first.
    let published = Instant::now();
    old_ladder::publish_delayed(&url, &cluster.exchange, "work.old", b"old-ladder-job", 5_000);
    let first = old_ladder::queue(&cluster.exchange, 12);
    assert_eq!(old_ladder::depth(&url, &first), 1, "the job waits in {first}");
    // Today's daemon takes over; it neither declares nor deletes the old ladder.
    cluster.start(0, &oneshot);
    // Beside it, a job delayed by today's code, through the base-64 ladder to the same `E`.
    let out = Command::new(env!("CARGO_BIN_EXE_procyard-daemon"))
        .args(["publish", "--delay", "1s", "work.new", "new-ladder-job", "--config"])
        .arg(cluster.config(0))
        .output()
        .expect("run procyard-daemon publish");
    assert!(out.status.success(), "publish: {}", String::from_utf8_lossy(&out.stderr));
    let runs = cluster.wait_runs("the job from the old ladder ran", |runs| {
        runs[0].iter().any(|p| p == "old-ladder-job")
    });
    let waited = published.elapsed();
    assert!(waited >= Duration::from_millis(5_000), "ran after {waited:?}, before its delay");
    cluster.wait_runs("the job from the new ladder ran", |runs| runs[0].len() >= 2);
    cluster.stop_all();
    let mut ran = read_lines(&cluster.out(0));
    ran.sort();
    assert_eq!(ran, ["new-ladder-job", "old-ladder-job"], "each ran once (first: {runs:?})");
    // The old queue is still there (today's code does not delete it), and empty.
    assert_eq!(old_ladder::depth(&url, &first), 0, "{first} after the job left it");
}
