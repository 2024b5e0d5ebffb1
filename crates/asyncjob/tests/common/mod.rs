//! The sandbox every scenario runs in: core's testkit sandbox (a temp dir and a watchdog), the
//! binary, and a tag in the environment of every process the scenario starts (so strays can be
//! found and killed). Waits are testkit's `wait_for` / `try_wait_for`.

#![allow(dead_code, unused_imports, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use procyard_core::testkit;
pub use procyard_core::testkit::{try_wait_for, wait_for};
use procyard_core::{Pid, ProcStat};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_procyard-asyncjob");
pub const TAG_VAR: &str = "PROCYARD_ASYNCJOB_TEST_TAG";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// How long a scenario may run before the watchdog ends the test process, naming it.
const SCENARIO_LIMIT: Duration = Duration::from_secs(180);

pub struct Sandbox {
    pub dir: testkit::Sandbox,
    pub tag: String,
}

pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("unparsable JSON {:?}: {e}", self.stdout))
    }
}

impl From<Output> for Ran {
    fn from(out: Output) -> Ran {
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Sandbox {
    /// A sandbox for the scenario `name`.
    pub fn new(name: &str) -> Sandbox {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Sandbox {
            dir: testkit::Sandbox::new(name, SCENARIO_LIMIT),
            tag: format!(
                "{}-{n}-{}",
                std::process::id(),
                std::time::UNIX_EPOCH.elapsed().map(|d| d.as_nanos()).unwrap_or(0)
            ),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn state(&self) -> String {
        self.path("job.state").to_string_lossy().into_owned()
    }

    /// The binary, run in the sandbox directory with the tag in its environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(self.dir.path()).env(TAG_VAR, &self.tag).env_remove("RUST_LOG");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Ran {
        self.command().args(args).output().expect("run procyard-asyncjob").into()
    }

    /// `--state <sandbox>/job.state` followed by `args`.
    pub fn job(&self, args: &[&str]) -> Ran {
        let state = self.state();
        let mut all = vec!["--state", state.as_str()];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Runs `program args` in the sandbox (tagged, stdin from /dev/null), giving up after
    /// `limit`: a command that would hang is SIGKILLed and the test fails instead of hanging.
    pub fn run_with_deadline(&self, program: &str, args: &[&str], limit: Duration) -> Ran {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let (out, err) = (self.path(&format!("run-{n}.out")), self.path(&format!("run-{n}.err")));
        let mut cmd = procyard_core::Command::new(program);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env(TAG_VAR, &self.tag)
            .env_remove("RUST_LOG")
            .stdin(procyard_core::Stdio::Null)
            .stdout(procyard_core::Stdio::Truncate(out.clone()))
            .stderr(procyard_core::Stdio::Truncate(err.clone()));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {program}: {e}"));
        let Some(exit) = child.wait_timeout(limit).expect("wait for the command") else {
            let _ = child.kill_and_reap();
            panic!("{program} {args:?} still running after {limit:?}: it hangs");
        };
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        let ran = Ran {
            code: exit.code().map(i32::from).unwrap_or(-1),
            stdout: read(&out).trim().to_owned(),
            stderr: read(&err),
        };
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_file(err);
        ran
    }

    /// [`Sandbox::job`] with a deadline (see [`Sandbox::run_with_deadline`]).
    pub fn job_with_deadline(&self, state: &Path, args: &[&str], limit: Duration) -> Ran {
        let state = state.to_string_lossy();
        let mut all = vec!["--state", state.as_ref()];
        all.extend_from_slice(args);
        self.run_with_deadline(BIN, &all, limit)
    }

    pub fn check(&self) -> Value {
        let ran = self.job(&["check"]);
        assert_eq!(ran.code, 0, "check failed: {}", ran.stderr);
        ran.json()
    }

    pub fn wait(&self) -> Value {
        let ran = self.job(&["wait", "--timeout", "30s"]);
        assert_eq!(ran.code, 0, "wait failed: {}", ran.stderr);
        ran.json()
    }

    /// Every live process carrying this sandbox's tag (monitors and jobs).
    pub fn tagged_pids(&self) -> Vec<i32> {
        let needle = format!("{TAG_VAR}={}", self.tag);
        let tagged = |pid: i32| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
        };
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| tagged(*pid) && is_alive(*pid))
            .collect()
    }

    /// Waits (with a deadline) until no tagged process is left; panics otherwise.
    pub fn assert_no_strays(&self) {
        assert!(
            try_wait_for(Duration::from_secs(20), || self.tagged_pids().is_empty()),
            "stray processes left: {:?}",
            self.tagged_pids()
        );
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for pid in self.tagged_pids() {
            if let Some(pid) = procyard_core::Pid::from_raw(pid) {
                let _ = procyard_core::kill_process(pid, procyard_core::Signal::KILL);
            }
        }
    }
}

/// The process's `/proc` stat line, if it exists.
fn stat(pid: i32) -> Option<ProcStat> {
    ProcStat::read(Pid::from_raw(pid)?).ok().flatten()
}

/// Whether a process exists (and is not a zombie).
pub fn is_alive(pid: i32) -> bool {
    stat(pid).is_some_and(|stat| !stat.is_zombie())
}

/// The live members of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|stat| stat.pgid == pgid && !stat.is_zombie()))
        .collect()
}

pub fn make_fifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
}
