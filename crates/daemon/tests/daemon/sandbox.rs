//! A sandbox for end-to-end scenarios: core's `testkit::Sandbox` (a temp dir and a watchdog)
//! with a config, a queue file and the daemon started as a real process, with readiness
//! through `--ready-fd`; the daemon is stopped on drop.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use procyard_core::testkit;
use procyard_core::{
    Child, Command, Deadline, Exit, Pid, Readiness, ReadyReader, Signal, Stdio, ready_pipe,
};
use procyard_daemon::queue::{self, OpenMode};
use procyard_daemon::status::Status;
use procyard_daemon::{Config, control};

pub const BIN: &str = env!("CARGO_BIN_EXE_procyard-daemon");

pub fn echo_worker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/echo_worker.py")
}

/// How long one scenario may run before the watchdog ends the test process.
const TEST_LIMIT: Duration = Duration::from_secs(300);

/// The running test's name (libtest names its threads after the tests), short enough for a
/// socket path in the sandbox.
fn test_name() -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("daemon").rsplit("::").next().unwrap_or("daemon");
    let name = name.strip_prefix("daemon_").unwrap_or(name);
    name.chars().take(24).collect()
}

pub struct Sandbox {
    pub dir: testkit::Sandbox,
    pub config: PathBuf,
    pub daemon: Option<Child>,
}

impl Sandbox {
    /// A sandbox whose config has `daemon` lines in `[daemon]` and `tasks` after `[queue]`.
    /// `{dir}` is replaced by the sandbox directory, `{worker}` by the example echo worker.
    pub fn with(daemon: &str, tasks: &str) -> Sandbox {
        let dir = testkit::Sandbox::new(&test_name(), TEST_LIMIT);
        let config = dir.path().join("procyard.toml");
        let sandbox = Sandbox { dir, config, daemon: None };
        sandbox.write_config(daemon, tasks);
        std::fs::create_dir_all(sandbox.out_dir()).expect("out dir");
        sandbox
    }

    pub fn new(tasks: &str) -> Sandbox {
        Sandbox::with("grace_period = \"5s\"\nkill_timeout = \"2s\"", tasks)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn out_dir(&self) -> PathBuf {
        self.path().join("out")
    }

    pub fn expand(&self, text: &str) -> String {
        text.replace("{dir}", &self.path().display().to_string())
            .replace("{worker}", &echo_worker().display().to_string())
            .replace("{out}", &self.out_dir().display().to_string())
    }

    pub fn write_config(&self, daemon: &str, tasks: &str) {
        let text = format!("[daemon]\n{daemon}\n\n[queue]\npath = \"{{dir}}/q.db\"\n\n{tasks}\n");
        let text = self.expand(&text);
        // Atomic replace, so a HUP never reads half a file.
        let tmp = self.path().join("procyard.toml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    pub fn write_raw_config(&self, text: &str) {
        std::fs::write(&self.config, self.expand(text)).expect("write config");
    }

    pub fn load_config(&self) -> Config {
        Config::load(&self.config).expect("config")
    }

    /// Starts the daemon and waits until it says it is ready.
    pub fn start(&mut self) -> Pid {
        self.start_with(None)
    }

    /// Starts the daemon through `sh -c '<prefix>; exec daemon …'`, so the shell's
    /// background jobs become the daemon's children.
    pub fn start_with(&mut self, shell_prefix: Option<&str>) -> Pid {
        let reader = self.spawn_daemon(shell_prefix);
        self.wait_ready(reader)
    }

    /// Starts the daemon as `wrapper… daemon-command…`: the wrapper program execs the daemon
    /// (with its arguments) after doing what it must first.
    pub fn start_wrapped(&mut self, wrapper: &[&str]) -> Pid {
        let mut cmd = Command::new(wrapper[0]);
        for arg in &wrapper[1..] {
            cmd.arg(self.expand(arg));
        }
        cmd.arg(BIN).arg("run").arg("--config").arg(&self.config).arg("--ready-fd").arg("3");
        let reader = self.spawn_command(cmd);
        self.wait_ready(reader)
    }

    /// Spawns the daemon without waiting; see [`Sandbox::wait_ready`].
    pub fn spawn_daemon(&mut self, shell_prefix: Option<&str>) -> ReadyReader {
        let cmd = match shell_prefix {
            None => {
                let mut c = Command::new(BIN);
                c.arg("run").arg("--config").arg(&self.config).arg("--ready-fd").arg("3");
                c
            }
            Some(prefix) => Command::shell(format!(
                "{}; exec {BIN} run --config {} --ready-fd 3",
                self.expand(prefix),
                self.config.display()
            )),
        };
        self.spawn_command(cmd)
    }

    fn spawn_command(&mut self, mut cmd: Command) -> ReadyReader {
        let (reader, writer) = ready_pipe().expect("ready pipe");
        let log = self.path().join("daemon.log");
        let out = self.path().join("daemon.out");
        cmd.stdin(Stdio::Null)
            .stdout(Stdio::Append(out))
            .stderr(Stdio::Append(log))
            .env(
                "RUST_LOG",
                std::env::var("TEST_DAEMON_LOG").unwrap_or_else(|_| "procyard_daemon=debug".into()),
            )
            .env_remove("NOTIFY_SOCKET")
            .pass_fd(writer.into_fd(), 3);
        let child = cmd.spawn().expect("spawn daemon");
        self.daemon = Some(child);
        reader
    }

    pub fn wait_ready(&mut self, mut reader: ReadyReader) -> Pid {
        match reader.wait(Deadline::after(Duration::from_secs(30))).expect("wait ready") {
            Readiness::Ready(_) => self.daemon.as_ref().expect("daemon").id(),
            other => panic!("daemon not ready: {other:?}\n{}", self.log()),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("q.db.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn signal(&self, signal: Signal) {
        self.daemon.as_ref().expect("daemon").signal(signal).expect("signal daemon");
    }

    /// Publishes through the library (as `publish` does) and pokes the daemon.
    pub fn publish(&self, key: &str, payload: &[u8]) -> Vec<String> {
        let ids = self.publish_quiet(key, payload);
        let _ = control::poke(&self.socket());
        ids
    }

    pub fn publish_quiet(&self, key: &str, payload: &[u8]) -> Vec<String> {
        let config = self.load_config();
        let mut q = queue::open(&config.queue, OpenMode::Client).expect("open queue");
        q.bind(&config.bindings()).expect("bind");
        q.publish(key, payload).expect("publish")
    }

    pub fn publish_many(
        &self,
        key: &str,
        payloads: impl IntoIterator<Item = Vec<u8>>,
    ) -> Vec<String> {
        let config = self.load_config();
        let mut q = queue::open(&config.queue, OpenMode::Client).expect("open queue");
        q.bind(&config.bindings()).expect("bind");
        let mut ids = Vec::new();
        for p in payloads {
            ids.extend(q.publish(key, &p).expect("publish"));
        }
        let _ = control::poke(&config.daemon.control_socket);
        ids
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut full: Vec<&str> =
            vec![args[0], "--config", self.config.to_str().expect("utf-8 path")];
        full.extend_from_slice(&args[1..]);
        std::process::Command::new(BIN).args(&full).output().expect("run cli")
    }

    pub fn status(&self) -> Status {
        control::status(&self.socket()).unwrap_or_else(|e| panic!("status: {e}\n{}", self.log()))
    }

    /// Blocks up to `d` on the daemon's pidfd (returns early if it exits).
    pub fn pause(&self, d: Duration) {
        let ts = rustix::event::Timespec::try_from(d).expect("timespec");
        match &self.daemon {
            Some(child) => {
                let pidfd = child.pidfd();
                let mut fds = [rustix::event::PollFd::new(&pidfd, rustix::event::PollFlags::IN)];
                let _ = rustix::event::poll(&mut fds, Some(&ts));
            }
            None => {
                let (r, _w) = rustix::pipe::pipe().expect("pipe");
                let fd = r.as_fd();
                let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
                let _ = rustix::event::poll(&mut fds, Some(&ts));
            }
        }
    }

    /// Waits until `cond` holds (core's `testkit::try_wait_for`); panics with the daemon's
    /// log after `timeout`.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Sandbox) -> bool,
    ) {
        if !testkit::try_wait_for(timeout, || cond(self)) {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n--- daemon log ---\n{}",
                self.log()
            );
        }
    }

    /// Waits for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Exit> {
        let child = self.daemon.as_mut().expect("daemon");
        let exit = child.wait_timeout(timeout).expect("wait daemon");
        if exit.is_some() {
            self.daemon = None;
        }
        exit
    }

    /// Files in `out/` and the total number of bytes (side effects written by jobs).
    pub fn side_effects(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = std::fs::read_dir(self.out_dir())
            .expect("read out")
            .filter_map(|e| e.ok())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let len = std::fs::read(e.path()).map(|b| b.len()).unwrap_or(0);
                (name, len)
            })
            .collect();
        v.sort();
        v
    }

    pub fn worker_pids(&self, task: &str) -> Vec<i32> {
        let status = self.status();
        let mut pids: Vec<i32> = status
            .groups
            .iter()
            .filter(|g| g.name == task)
            .flat_map(|g| g.workers.iter().map(|w| w.pid))
            .collect();
        pids.sort();
        pids
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // Graceful, then forceful (which kills the workers' groups), then SIGKILL.
            let _ = child.signal(Signal::TERM);
            if child.wait_timeout(Duration::from_secs(3)).ok().flatten().is_none() {
                let _ = child.signal(Signal::TERM);
                if child.wait_timeout(Duration::from_secs(5)).ok().flatten().is_none() {
                    let _ = child.kill_and_reap();
                }
            }
        }
    }
}

/// Whether a process exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    match Pid::from_raw(pid).and_then(|p| procyard_core::ProcStat::read(p).ok().flatten()) {
        Some(stat) => !stat.is_zombie(),
        None => false,
    }
}
