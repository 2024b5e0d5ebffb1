//! Test helpers shared by the workspace's tests (feature `testkit`, for dev-dependencies).
//!
//! - [`wait_for`]: wait until a condition holds, with a deadline and a message naming what
//!   was awaited. For state that offers no event to wait on (a process table, a file another
//!   process writes); checks back off from 1 ms to 20 ms, so a wait costs little CPU.
//! - [`Sandbox`]: a private temporary directory and a watchdog that ends a hung test process
//!   with a message instead of letting it run into CI's wall.
//! - [`run_tests`]: the single-threaded test runner for `harness = false` targets (fork tests
//!   need a process with one thread, and libtest runs each test on a thread of its own). It
//!   understands the libtest arguments cargo and nextest pass.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Deadline, Pid, Signal};

/// Waits until `condition` holds; panics with `what` and the time waited after `timeout`.
#[track_caller]
pub fn wait_for(what: &str, timeout: Duration, condition: impl FnMut() -> bool) {
    if !try_wait_for(timeout, condition) {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// Waits until `condition` holds or `timeout` passes; returns whether it held.
pub fn try_wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Deadline::after(timeout);
    let mut pause = Duration::from_millis(1);
    loop {
        if condition() {
            return true;
        }
        if deadline.is_expired() {
            return false;
        }
        std::thread::sleep(pause.min(deadline.remaining()));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Live processes whose environment holds `key=value` (a test tags the processes it starts
/// this way to find every copy later, children of children included). A zombie's environment
/// reads as empty, so only live processes count.
pub fn processes_with_env(key: &str, value: &str) -> Vec<Pid> {
    let needle = format!("{key}={value}");
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Pid::from_raw)
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            environ.split(|&b| b == 0).any(|var| var == needle.as_bytes())
        })
        .collect()
}

/// SIGKILLs every live process tagged `key=value` until none is left (or `timeout` passes);
/// returns how many were still there at the end.
pub fn kill_processes_with_env(key: &str, value: &str, timeout: Duration) -> usize {
    let mut left = Vec::new();
    try_wait_for(timeout, || {
        left = processes_with_env(key, value);
        for pid in &left {
            let _ = crate::kill_process(*pid, Signal::KILL);
        }
        left.is_empty()
    });
    left.len()
}

/// Live processes whose executable is `program`.
pub fn processes_running(program: &Path) -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Pid::from_raw)
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == program)
        })
        .collect()
}

/// The lines `source` produces, delivered as they arrive (a reader thread feeds the channel;
/// `recv_timeout` on it waits for the next line with a deadline).
pub fn lines_of(source: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(source).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Everything `source` produces, delivered once it ends (lossy UTF-8).
pub fn all_of(
    mut source: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = source.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// A test's private temporary directory, plus a watchdog: if the sandbox is still alive after
/// its time limit, the whole test process is ended with a message naming the test, so a hang
/// fails fast and by name.
pub struct Sandbox {
    dir: tempfile::TempDir,
    done: Arc<AtomicBool>,
}

impl Sandbox {
    /// A sandbox for test `name` that may live `limit` at most.
    pub fn new(name: &str, limit: Duration) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix(&format!("procyard-{name}-"))
            .tempdir()
            .expect("create a temporary directory for the test");
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let name = name.to_owned();
        std::thread::Builder::new()
            .name(format!("watchdog-{name}"))
            .spawn(move || {
                let started = Instant::now();
                while started.elapsed() < limit {
                    std::thread::park_timeout(limit - started.elapsed());
                    if flag.load(Ordering::Acquire) {
                        return;
                    }
                }
                if !flag.load(Ordering::Acquire) {
                    eprintln!("watchdog: test {name} still running after {limit:?}: aborting");
                    std::process::abort();
                }
            })
            .expect("start the watchdog thread");
        Sandbox { dir, done }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A copy of the running test program alone in `app/my-app` inside the sandbox, as a user's
    /// installed program: nothing of this build's target directory is beside or above it.
    pub fn installed_copy(&self) -> PathBuf {
        let dir = self.join("app");
        std::fs::create_dir_all(&dir).expect("create the sandbox's app directory");
        let copy = dir.join("my-app");
        std::fs::copy(std::env::current_exe().expect("the test's executable"), &copy)
            .expect("copy the test's executable");
        copy
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
    }
}

/// A test of a `harness = false` target: a name and a function that panics on failure.
pub type Test = (&'static str, fn());

/// Runs `tests` one after the other on the calling thread, with libtest's arguments (name
/// filters, `--exact`, `--skip NAME`, `--list`; other flags are accepted and ignored), and
/// prints libtest's lines, so cargo and nextest read the outcome as usual.
pub fn run_tests(tests: &[Test]) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters: Vec<&str> = Vec::new();
    let mut skips: Vec<&str> = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--skip" => skips.extend(iter.next().map(String::as_str)),
            "--test-threads" | "--format" | "--color" | "--logfile" | "--shuffle-seed" | "-Z" => {
                iter.next();
            }
            a if a.starts_with('-') => {}
            a => filters.push(a),
        }
    }
    let exact = args.iter().any(|a| a == "--exact");
    if args.iter().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let matches =
        |name: &str, pattern: &str| if exact { name == pattern } else { name.contains(pattern) };
    let selected: Vec<&Test> = tests
        .iter()
        .filter(|(name, _)| !skips.iter().any(|s| matches(name, s)))
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| matches(name, f)))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let started = Instant::now();
    let mut failed = Vec::new();
    for (name, test) in &selected {
        let began = Instant::now();
        match std::panic::catch_unwind(AssertUnwindSafe(test)) {
            Ok(()) => println!("test {name} ... ok ({:.2?})", began.elapsed()),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    if !failed.is_empty() {
        println!("\nfailures:");
        for name in &failed {
            println!("    {name}");
        }
    }
    let verdict = if failed.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {} passed; {} failed; 0 ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        selected.len() - failed.len(),
        failed.len(),
        tests.len() - selected.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
