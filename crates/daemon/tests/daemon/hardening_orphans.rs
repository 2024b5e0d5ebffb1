//! Issue 13, orphans and escapees: a daemon SIGKILLed right after it spawned a worker must
//! leave no job running with a payload it was not given, and no job running twice at once;
//! a job's `setsid` grandchild is stopped with the job.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use procyard_core::{Deadline, Pid, ProcStat, Signal};

use crate::broker;
use crate::sandbox::{Sandbox, is_alive};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const KILLS: usize = 20;
const JOBS: usize = 3;

/// Wakes up when a file in a directory is created or written (inotify): the test waits for
/// what jobs write without a timer.
struct DirWatch(OwnedFd);

impl DirWatch {
    fn new(dir: &Path) -> DirWatch {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).expect("inotify");
        inotify::add_watch(&fd, dir, WatchFlags::MODIFY | WatchFlags::CREATE).expect("watch");
        DirWatch(fd)
    }

    /// Waits until `cond` holds, re-checking whenever the directory changes; panics with
    /// `what` (and the daemon's log) after `timeout`.
    fn wait_for<T>(
        &self,
        sb: &Sandbox,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Deadline::after(timeout);
        loop {
            if let Some(v) = cond() {
                return v;
            }
            assert!(!deadline.is_expired(), "timed out waiting for {what}\n{}", sb.log());
            let mut fds = [rustix::event::PollFd::new(&self.0, rustix::event::PollFlags::IN)];
            let left = rustix::event::Timespec::try_from(deadline.remaining().min(SECS(1)))
                .expect("timespec");
            let _ = rustix::event::poll(&mut fds, Some(&left));
            let mut buf = [0u8; 4096];
            while matches!(rustix::io::read(&self.0, &mut buf), Ok(n) if n > 0) {}
        }
    }
}

/// The complete lines of a file (a line still being written is not counted yet).
fn lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// The job: it takes a lock on its job id (a second run that finds it taken records an
/// overlap), says it started, reads its payload a moment later (a daemon that fed stdin after
/// the spawn has been killed by then), records how many bytes it got, works, and ends. In
/// `child` mode its work is a subprocess in the worker's process group that holds the lock too.
const JOB: &str = r#"
import fcntl, os, subprocess, sys, time
out, mode = sys.argv[1], sys.argv[2]
job, attempt, me = os.environ["PROCYARD_JOB_ID"], os.environ["PROCYARD_ATTEMPT"], os.getpid()
def log(name, text):
    with open(os.path.join(out, name), "a") as f:
        f.write(text + "\n")
lock = os.open(os.path.join(out, "lock-" + job), os.O_WRONLY | os.O_CREAT, 0o600)
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    log("overlaps", f"{job} attempt {attempt} pid {me}")
    fcntl.flock(lock, fcntl.LOCK_EX)
helper = None
if mode == "child":
    helper = subprocess.Popen(["sleep", "60"], pass_fds=[lock])
    log("helpers", str(helper.pid))
log("events", f"spawn {job} {attempt} {me}")
time.sleep(0.3)
payload = sys.stdin.buffer.read()
log("runs", f"run {job} {attempt} {me} {len(payload)}")
time.sleep(0.5)
if helper:
    helper.kill()
    helper.wait()
log("runs", f"end {job} {attempt} {me}")
"#;

fn task(mode: &str) -> String {
    format!(
        r#"[[task]]
name = "orphans"
routing_keys = ["orphans.#"]
command = ["python3", "{{dir}}/job.py", "{{out}}", "{mode}"]
max_workers = 2
max_attempts = 100
backoff_initial = "50ms"
"#
    )
}

/// Payloads bigger than a pipe's buffer, each of its own length, so a cut one shows.
fn payloads() -> Vec<Vec<u8>> {
    (0..JOBS).map(|i| (0..200_000 + 1_000 * i).map(|b| b"abcdefgh"[b % 8]).collect()).collect()
}

/// 20 times: wait until a job says it started, SIGKILL the daemon at once, start it again.
/// Then let every job finish and check what the jobs recorded.
fn kill_after_spawn_repeatedly(sb: &mut Sandbox, ids: &[String], lens: &[usize]) {
    let out = sb.out_dir();
    let watch = DirWatch::new(&out);
    let spawns = || lines(&out.join("events")).len();
    for round in 0..KILLS {
        let seen = spawns();
        watch.wait_for(sb, &format!("a worker spawn (kill {round})"), SECS(30), || {
            (spawns() > seen).then_some(())
        });
        sb.signal(Signal::KILL);
        sb.wait_exit(SECS(10)).expect("the SIGKILLed daemon exits");
        sb.start();
    }
    let ended = |id: &String| {
        let prefix = format!("end {id} ");
        lines(&out.join("runs")).iter().any(|l| l.starts_with(&prefix))
    };
    watch.wait_for(sb, "every job to end", SECS(60), || ids.iter().all(ended).then_some(()));
    sb.signal(Signal::TERM);
    sb.wait_exit(SECS(20)).expect("graceful stop");

    let expected: BTreeMap<&str, usize> =
        ids.iter().map(String::as_str).zip(lens.iter().copied()).collect();
    let runs = lines(&out.join("runs"));
    let mut wrong = Vec::new();
    for run in runs.iter().filter(|l| l.starts_with("run ")) {
        let f: Vec<&str> = run.split(' ').collect();
        let got: usize = f[4].parse().expect("length");
        if expected.get(f[1]) != Some(&got) {
            wrong.push(format!("{run} (expected {:?} bytes)", expected.get(f[1])));
        }
    }
    let overlaps = lines(&out.join("overlaps"));
    let spawned = spawns();
    let first = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>();
    assert!(
        wrong.is_empty() && overlaps.is_empty(),
        "over {KILLS} SIGKILLs ({spawned} spawns): {} runs with a payload they were not given \
         (first: {:?}); {} runs beside another run of the same job (first: {:?})",
        wrong.len(),
        first(&wrong),
        overlaps.len(),
        first(&overlaps)
    );
    let log = sb.log();
    let stopped = log.matches("stopping a worker the previous daemon left running").count();
    eprintln!(
        "{KILLS} SIGKILLs: {spawned} spawns, {} runs read their payload, {stopped} leftover \
         worker groups stopped at a start",
        runs.iter().filter(|l| l.starts_with("run ")).count()
    );
    assert!(spawned > KILLS, "every kill came right after a spawn");
    for pid in lines(&out.join("helpers")) {
        let pid: i32 = pid.parse().expect("pid");
        assert!(!is_alive(pid), "a job's subprocess {pid} outlived every daemon");
    }
}

#[test]
fn daemon_hardening_sigkill_never_runs_empty_or_twice() {
    // SQLite: the job's subprocess outlives a killed worker and must be stopped by the next
    // daemon (by the identity recorded with the lease) before the job runs again.
    let mut sb = Sandbox::new(&task("child"));
    std::fs::write(sb.path().join("job.py"), JOB).expect("job script");
    let payloads = payloads();
    let lens: Vec<usize> = payloads.iter().map(Vec::len).collect();
    let ids = sb.publish_many("orphans.x", payloads.clone());
    sb.start();
    kill_after_spawn_repeatedly(&mut sb, &ids, &lens);

    // AMQP: the broker redelivers at once; the worker dies with its daemon.
    let Some(url) = broker::broker_url("daemon_hardening_sigkill_never_runs_empty_or_twice") else {
        return;
    };
    let mut sb = Sandbox::new(&task("single"));
    let exchange = format!("procyard-test-{}", uuid::Uuid::now_v7().simple());
    let text = format!(
        "[daemon]\ngrace_period = \"5s\"\nkill_timeout = \"2s\"\ncontrol_socket = \"{{dir}}/q.db.sock\"\n\n\
         [queue]\nbackend = \"amqp\"\nurl = \"{url}\"\nexchange = \"{exchange}\"\n\n{}",
        task("single")
    );
    sb.write_raw_config(&text);
    std::fs::write(sb.path().join("job.py"), JOB).expect("job script");
    let _cleanup = broker::Cleanup::task(&url, &exchange, "orphans", &[50, 100, 200]);
    sb.start();
    broker::wait_consumers(&url, &format!("{exchange}.orphans"), 1, SECS(60));
    let ids = sb.publish_many("orphans.x", payloads);
    kill_after_spawn_repeatedly(&mut sb, &ids, &lens);
}

/// Kills, on drop, the escapees a failed run would leave behind (each checked to be the
/// session leader the job made, so a recycled pid is never signalled).
struct EscapeeGuard(Vec<(Pid, u64)>);

impl Drop for EscapeeGuard {
    fn drop(&mut self) {
        for (pid, start) in &self.0 {
            if ProcStat::read(*pid).ok().flatten().is_some_and(|s| s.start_time == *start) {
                let _ = procyard_core::kill_process(*pid, Signal::KILL);
            }
        }
    }
}

/// A job script that starts `sleep 300` in a session of its own (`setsid`) — from a subshell
/// that exits at once when `double_fork` — writes its pid to `{out}/NAME.pid` once it runs in
/// that session, then runs `then`.
fn escape_script(out: &Path, name: &str, double_fork: bool, then: &str) -> Vec<u8> {
    let fifo = out.join(format!("{name}.fifo"));
    let pid = out.join(format!("{name}.pid"));
    let start = format!("setsid sh -c 'echo $$ > {}; exec sleep 300' &", fifo.display());
    let start = if double_fork { format!("( {start} )") } else { start };
    format!(
        "mkfifo {fifo}\n{start}\nread p < {fifo}\necho $p > {pid}.tmp && mv {pid}.tmp {pid}\n{then}\n",
        fifo = fifo.display(),
        pid = pid.display(),
    )
    .into_bytes()
}

#[test]
fn daemon_hardening_setsid_grandchild_stopped() {
    let mut sb = Sandbox::with(
        "grace_period = \"300ms\"\nkill_timeout = \"1s\"",
        r#"[[task]]
name = "escape"
routing_keys = ["escape"]
command = ["sh", "-s"]
max_workers = 4
max_attempts = 1
timeout = "2s"
"#,
    );
    sb.start();
    let out = sb.out_dir();
    let watch = DirWatch::new(&out);
    let mut guard = EscapeeGuard(Vec::new());
    let mut escapee = |sb: &Sandbox, name: &str| -> Pid {
        let path = out.join(format!("{name}.pid"));
        let pid = watch.wait_for(sb, &format!("{name}'s escapee"), SECS(30), || {
            std::fs::read_to_string(&path).ok()?.trim().parse::<i32>().ok()
        });
        let pid = Pid::from_raw(pid).expect("pid");
        if let Some(stat) = ProcStat::read(pid).ok().flatten() {
            guard.0.push((pid, stat.start_time));
        }
        pid
    };
    let gone = |sb: &Sandbox, name: &str, pid: Pid| {
        sb.wait_until(&format!("{name}'s escapee {pid} stopped"), SECS(15), |_| {
            !is_alive(pid.as_raw())
        });
    };

    // A job that ends at once, one whose escapee is adopted while the job still runs (double
    // fork), and one killed at its timeout.
    sb.publish("escape", &escape_script(&out, "done", false, "exit 0"));
    sb.publish("escape", &escape_script(&out, "double", true, "exit 0"));
    sb.publish("escape", &escape_script(&out, "timeout", false, "sleep 300"));
    let done = escapee(&sb, "done");
    let double = escapee(&sb, "double");
    let timeout = escapee(&sb, "timeout");
    let stat = ProcStat::read(timeout).ok().flatten().expect("the escapee runs");
    assert_eq!(stat.sid, timeout.as_raw(), "the grandchild left the job's session and group");
    gone(&sb, "done", done);
    gone(&sb, "double", double);
    gone(&sb, "timeout", timeout);

    // A job interrupted by the daemon's graceful stop.
    sb.publish("escape", &escape_script(&out, "stop", false, "sleep 300"));
    let stop = escapee(&sb, "stop");
    sb.signal(Signal::TERM);
    sb.wait_exit(SECS(20)).expect("the daemon stops");
    assert!(!is_alive(stop.as_raw()), "the escapee of an interrupted job outlived the daemon");
    let log = sb.log();
    assert!(log.contains("escaped"), "the daemon says what it stopped:\n{log}");
}
