//! End-to-end scenarios against the real `procyard-asyncjob` binary: the lifecycle, the
//! options, and one regression test per defect of the seed (B1–B9).

mod common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::{Sandbox, group_members, is_alive, make_fifo, try_wait_for, wait_for};
use serde_json::Value;

fn pid_of(state: &Value, key: &str) -> i32 {
    state[key].as_i64().unwrap_or_else(|| panic!("no {key} in {state}")) as i32
}

/// Waits until the monitor named by `state` has exited.
fn wait_monitor_gone(state: &Value) {
    let monitor = pid_of(state, "ppid");
    wait_for(&format!("monitor {monitor} to exit"), Duration::from_secs(20), || !is_alive(monitor));
}

#[test]
fn lifecycle_start_running_finished_reap_absent_start_again() {
    let sb = Sandbox::new("lifecycle_start_running_finished_reap_absent_start_again");
    let fifo = sb.path("go");
    make_fifo(&fifo);
    assert_eq!(sb.check(), serde_json::json!({"status": "absent"}));
    let script = format!("read line < '{}'; exit 3", fifo.display());
    let started = sb.job(&["start", "--shell", &script]);
    assert_eq!((started.code, started.stdout.as_str()), (0, "success"), "{}", started.stderr);
    let running = sb.check();
    assert_eq!(running["status"], "running");
    assert!(pid_of(&running, "pid") > 0 && pid_of(&running, "ppid") > 0);
    assert!(running["time"].as_i64().unwrap() > 0);
    assert!(is_alive(pid_of(&running, "pid")));
    // A running job cannot be reaped nor started again.
    assert_eq!(sb.job(&["reap"]).stdout, "failed");
    assert_eq!(sb.job(&["start", "--", "true"]).stdout, "failed");
    // Let the job finish.
    std::fs::OpenOptions::new().write(true).open(&fifo).unwrap().write_all(b"x\n").unwrap();
    let finished = sb.wait();
    assert_eq!(finished["status"], "finished");
    assert_eq!(finished["exitstatus"], 3);
    assert_eq!(finished["signal"], Value::Null);
    assert_eq!(sb.job(&["reap"]).stdout, "success");
    assert_eq!(sb.check(), serde_json::json!({"status": "absent"}));
    assert!(!sb.path("job.state.lock").exists(), "reap leaves no lock file");
    // And a new job can use the state file again.
    assert_eq!(sb.job(&["start", "--", "true"]).stdout, "success");
    assert_eq!(sb.wait()["exitstatus"], 0);
    assert_eq!(sb.job(&["reap"]).stdout, "success");
    sb.assert_no_strays();
}

#[test]
fn exit_status_7_is_recorded() {
    let sb = Sandbox::new("exit_status_7_is_recorded");
    assert_eq!(sb.job(&["start", "--", "sh", "-c", "exit 7"]).stdout, "success");
    let state = sb.wait();
    assert_eq!(state["status"], "finished");
    assert_eq!(state["exitstatus"], 7);
    assert_eq!(state["signal"], Value::Null);
    sb.assert_no_strays();
}

#[test]
fn env_cwd_stdout_and_stderr_are_applied() {
    let sb = Sandbox::new("env_cwd_stdout_and_stderr_are_applied");
    std::fs::create_dir(sb.path("work")).unwrap();
    let out = sb.path("out.txt");
    let err = sb.path("err.txt");
    let ran = sb.job(&[
        "--env",
        "GREETING=hello world",
        "--env",
        "DOOMED=1",
        "--unset-env",
        "DOOMED",
        "--cwd",
        sb.path("work").to_str().unwrap(),
        "--stdout",
        out.to_str().unwrap(),
        "--stderr",
        err.to_str().unwrap(),
        "start",
        "--shell",
        "echo \"$GREETING\" \"$(pwd)\"${DOOMED:-}; echo oops >&2",
    ]);
    assert_eq!(ran.stdout, "success", "{}", ran.stderr);
    assert_eq!(sb.wait()["exitstatus"], 0);
    let work = sb.path("work").canonicalize().unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), format!("hello world {}\n", work.display()));
    assert_eq!(std::fs::read_to_string(&err).unwrap(), "oops\n");
    // Truncate by default, append on request.
    assert_eq!(sb.job(&["reap"]).stdout, "success");
    let out_s = out.to_str().unwrap();
    assert_eq!(
        sb.job(&["--stdout", out_s, "--append", "start", "--", "echo", "more"]).stdout,
        "success"
    );
    sb.wait();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("hello world {}\nmore\n", work.display())
    );
    sb.assert_no_strays();
}

#[test]
fn asyncjob_b1_concurrent_starts_yield_one_job() {
    let sb = Sandbox::new("asyncjob_b1_concurrent_starts_yield_one_job");
    let state = sb.state();
    let mut children = Vec::new();
    for _ in 0..50 {
        let child = sb
            .command()
            .args(["--state", &state, "start", "--", "sleep", "30"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        children.push(child);
    }
    let outputs: Vec<String> = children
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).trim().to_owned())
        .collect();
    let successes = outputs.iter().filter(|o| *o == "success").count();
    assert_eq!(successes, 1, "{outputs:?}");
    assert_eq!(outputs.iter().filter(|o| *o == "failed").count(), 49);
    let running = sb.check();
    assert_eq!(running["status"], "running");
    let is_sleep = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default() == b"sleep\x0030\x00"
    };
    // `start` returns once the job's exec is committed; the new program image (its command
    // line and tagged environment) may still be on its way in.
    let job = pid_of(&running, "pid");
    wait_for(&format!("job {job} to be sleep 30"), Duration::from_secs(20), || is_sleep(job));
    let sleeps: Vec<i32> = sb.tagged_pids().into_iter().filter(|pid| is_sleep(*pid)).collect();
    assert_eq!(sleeps, vec![job]);
    assert_eq!(sb.job(&["kill"]).stdout, "success");
    assert_eq!(sb.job(&["reap"]).stdout, "success");
    sb.assert_no_strays();
}

#[test]
fn asyncjob_b1_state_is_running_when_start_returns() {
    let sb = Sandbox::new("asyncjob_b1_state_is_running_when_start_returns");
    for _ in 0..5 {
        assert_eq!(sb.job(&["start", "--", "sleep", "30"]).stdout, "success");
        // Read the file itself, at once: it exists and says running.
        let raw: Value =
            serde_json::from_slice(&std::fs::read(sb.state()).expect("state exists")).unwrap();
        assert_eq!(raw["status"], "running");
        assert!(is_alive(pid_of(&raw, "pid")));
        assert_eq!(sb.job(&["kill"]).stdout, "success");
        assert_eq!(sb.job(&["reap"]).stdout, "success");
    }
    sb.assert_no_strays();
}

#[test]
fn asyncjob_b2_kill_does_not_resurrect() {
    let sb = Sandbox::new("asyncjob_b2_kill_does_not_resurrect");
    assert_eq!(sb.job(&["start", "--", "sleep", "30"]).stdout, "success");
    let running = sb.check();
    let killed = sb.job(&["kill"]);
    assert_eq!(killed.stdout, "success", "{}", killed.stderr);
    // kill returns once the monitor recorded the end: the state is terminal at once.
    let after = sb.check();
    assert_eq!(after["status"], "finished");
    assert_eq!(after["signal"], "SIGKILL");
    assert_eq!(after["exitstatus"], Value::Null);
    wait_monitor_gone(&running);
    // Neither deleted behind the monitor's back nor rewritten later.
    assert_eq!(sb.check(), after);
    assert_eq!(sb.job(&["kill"]).stdout, "failed", "a finished job cannot be killed");
    assert_eq!(sb.check(), after);
    assert_eq!(sb.job(&["reap"]).stdout, "success");
    assert_eq!(sb.check()["status"], "absent");
    sb.assert_no_strays();
}

#[test]
fn asyncjob_b3_failed_jobs_can_be_reaped() {
    let sb = Sandbox::new("asyncjob_b3_failed_jobs_can_be_reaped");
    let missing_cwd = sb.path("nowhere");
    let cases: [&[&str]; 2] = [
        &["start", "--", "procyard-no-such-program"],
        &["--cwd", missing_cwd.to_str().unwrap(), "start", "--", "true"],
    ];
    for (args, kind) in cases.iter().zip(["spawn", "cwd"]) {
        let ran = sb.job(args);
        assert_eq!((ran.code, ran.stdout.as_str()), (1, "failed"));
        assert!(ran.stderr.starts_with("procyard-asyncjob: "), "{}", ran.stderr);
        let failed = sb.check();
        assert_eq!(failed["status"], "failed", "{failed}");
        assert_eq!(failed["error_kind"], kind);
        assert!(failed["error"].as_str().unwrap().contains("No such file"), "{failed}");
        assert_eq!(sb.job(&["kill"]).stdout, "failed");
        assert_eq!(sb.job(&["start", "--", "true"]).stdout, "failed", "reap first");
        assert_eq!(sb.job(&["reap"]).stdout, "success");
        assert_eq!(sb.check()["status"], "absent");
    }
    sb.assert_no_strays();
}

#[test]
fn asyncjob_b3_lost_monitor_is_reapable() {
    let sb = Sandbox::new("asyncjob_b3_lost_monitor_is_reapable");
    assert_eq!(sb.job(&["start", "--", "sleep", "30"]).stdout, "success");
    let running = sb.check();
    let monitor = pid_of(&running, "ppid");
    let job = pid_of(&running, "pid");
    procyard_core::kill_process(
        procyard_core::Pid::from_raw(monitor).unwrap(),
        procyard_core::Signal::KILL,
    )
    .unwrap();
    // wait returns as soon as the monitor is gone, with `lost`.
    let lost = sb.wait();
    assert_eq!(lost["status"], "lost");
    assert_eq!(sb.check()["status"], "lost");
    assert_eq!(sb.job(&["kill"]).stdout, "failed", "a lost job is not signalled");
    assert_eq!(sb.job(&["reap"]).stdout, "success");
    assert_eq!(sb.check()["status"], "absent");
    // The orphaned job is ours to clean up.
    assert!(is_alive(job));
    procyard_core::kill_process_group(
        procyard_core::Pid::from_raw(job).unwrap(),
        procyard_core::Signal::KILL,
    )
    .unwrap();
    sb.assert_no_strays();
}

#[test]
fn asyncjob_b4_stale_pid_not_signalled() {
    let sb = Sandbox::new("asyncjob_b4_stale_pid_not_signalled");
    // The victim leads its own process group, as a job would: only the identity check
    // stands between it and a group kill.
    let mut victim = std::process::Command::new("sleep")
        .arg("30")
        .process_group(0)
        .env(common::TAG_VAR, &sb.tag)
        .spawn()
        .unwrap();
    let victim_pid = victim.id() as i32;
    let stat = procyard_core::ProcStat::read(procyard_core::Pid::from_raw(victim_pid).unwrap())
        .unwrap()
        .unwrap();
    // A live monitor (this test holds the lock) whose state names a recycled pid: same pid,
    // another start time.
    let _lock = procyard_core::FileLock::try_exclusive(sb.path("job.state.lock")).unwrap().unwrap();
    let me = procyard_core::ProcessIdentity::current().unwrap();
    let stale = serde_json::json!({
        "status": "running", "pid": victim_pid, "ppid": std::process::id(), "time": 1,
        "job_start_time": stat.start_time + 1, "monitor_start_time": me.start_time,
        "boot_id": procyard_core::boot_id(),
    });
    std::fs::write(sb.state(), stale.to_string()).unwrap();
    assert_eq!(sb.check()["status"], "running");
    let ran = sb.job(&["kill"]);
    assert_eq!(ran.stdout, "failed");
    assert!(ran.stderr.contains("no longer the job"), "{}", ran.stderr);
    // Another boot is refused as well.
    let other_boot = serde_json::json!({
        "status": "running", "pid": victim_pid, "ppid": std::process::id(), "time": 1,
        "job_start_time": stat.start_time, "boot_id": "another-boot",
    });
    std::fs::write(sb.state(), other_boot.to_string()).unwrap();
    assert_eq!(sb.job(&["kill"]).stdout, "failed");
    assert_eq!(victim.try_wait().unwrap(), None, "the unrelated process was signalled");
    victim.kill().unwrap();
    victim.wait().unwrap();
    sb.assert_no_strays();
}

#[test]
fn asyncjob_b5_kill_reaches_grandchildren() {
    let sb = Sandbox::new("asyncjob_b5_kill_reaches_grandchildren");
    let ran = sb.job(&["start", "--shell", "sleep 31 & sleep 32; wait"]);
    assert_eq!(ran.stdout, "success");
    let job = pid_of(&sb.check(), "pid");
    assert!(
        try_wait_for(Duration::from_secs(10), || group_members(job).len() >= 3),
        "sh and two sleeps expected in group {job}: {:?}",
        group_members(job)
    );
    assert_eq!(sb.job(&["kill", "--signal", "TERM"]).stdout, "success");
    assert!(
        try_wait_for(Duration::from_secs(10), || group_members(job).is_empty()),
        "grandchildren leaked: {:?}",
        group_members(job)
    );
    let state = sb.check();
    assert_eq!(state["status"], "finished");
    assert_eq!(state["signal"], "SIGTERM");
    sb.assert_no_strays();
}

#[test]
fn asyncjob_b6_relative_paths_resolve_against_caller() {
    let sb = Sandbox::new("asyncjob_b6_relative_paths_resolve_against_caller");
    std::fs::create_dir(sb.path("rel")).unwrap();
    let ran = sb.run(&[
        "--state",
        "rel/st",
        "--stdout",
        "rel/out.txt",
        "--cwd",
        "rel",
        "start",
        "--shell",
        "pwd",
    ]);
    assert_eq!(ran.stdout, "success", "{}", ran.stderr);
    let waited = sb.run(&["--state", "rel/st", "wait", "--timeout", "30s"]);
    assert_eq!(waited.json()["exitstatus"], 0);
    let rel = sb.path("rel").canonicalize().unwrap();
    assert!(sb.path("rel/st").exists());
    assert_eq!(
        std::fs::read_to_string(sb.path("rel/out.txt")).unwrap(),
        format!("{}\n", rel.display())
    );
    assert_eq!(sb.run(&["--state", "rel/st", "reap"]).stdout, "success");
    sb.assert_no_strays();
}

#[test]
fn asyncjob_b7_start_errors_reach_the_caller() {
    let sb = Sandbox::new("asyncjob_b7_start_errors_reach_the_caller");
    let marker = sb.path("marker");
    let touch = format!("touch '{}'", marker.display());
    // Missing state directory: failed, and nothing ran.
    let missing = sb.path("no/such/dir/state");
    let ran = sb.run(&["--state", missing.to_str().unwrap(), "start", "--shell", &touch]);
    assert_eq!((ran.code, ran.stdout.as_str()), (1, "failed"));
    assert!(ran.stderr.contains("no/such/dir"), "{}", ran.stderr);
    assert!(!marker.exists(), "the job ran although start failed");
    // Unwritable stdout (a directory): failed with the reason, recorded as failed, not
    // `invoking` forever.
    let dir = sb.path("adir");
    std::fs::create_dir(&dir).unwrap();
    let ran = sb.job(&["--stdout", dir.to_str().unwrap(), "start", "--shell", &touch]);
    assert_eq!((ran.code, ran.stdout.as_str()), (1, "failed"));
    assert!(ran.stderr.contains("adir"), "{}", ran.stderr);
    let state = sb.check();
    assert_eq!(state["status"], "failed");
    assert_eq!(state["error_kind"], "output");
    assert!(!marker.exists());
    assert_eq!(sb.job(&["reap"]).stdout, "success");
    // An unwritable state directory (only meaningful without root's override).
    if !rustix::process::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        let ro = sb.path("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let ran = sb.run(&["--state", ro.join("st").to_str().unwrap(), "start", "--shell", &touch]);
        assert_eq!((ran.code, ran.stdout.as_str()), (1, "failed"));
        assert!(!marker.exists());
    }
    sb.assert_no_strays();
}

#[test]
fn asyncjob_b8_concurrent_checks_always_parse() {
    let sb = Sandbox::new("asyncjob_b8_concurrent_checks_always_parse");
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    // What the checker has done so far, so the jobs go on until it has overlapped them.
    let progress = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let (state, bin, tag) = (sb.state(), common::BIN, sb.tag.clone());
    let hammer = {
        let stop = stop.clone();
        let progress = progress.clone();
        let state = state.clone();
        std::thread::spawn(move || {
            let (mut cli_reads, mut file_reads) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new(bin)
                    .args(["--state", &state, "check"])
                    .env(common::TAG_VAR, &tag)
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                let value: Value = serde_json::from_str(text.trim())
                    .unwrap_or_else(|e| panic!("check printed unparsable {text:?}: {e}"));
                assert!(value["status"].is_string());
                cli_reads += 1;
                for _ in 0..20 {
                    match std::fs::read(&state) {
                        Ok(bytes) => {
                            serde_json::from_slice::<Value>(&bytes).unwrap_or_else(|e| {
                                panic!("torn read {:?}: {e}", String::from_utf8_lossy(&bytes))
                            });
                            file_reads += 1;
                        }
                        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
                    }
                }
                progress[0].store(cli_reads, Ordering::Relaxed);
                progress[1].store(file_reads, Ordering::Relaxed);
            }
            (cli_reads, file_reads)
        })
    };
    // At least 15 jobs, and more until the checker has read a live state file at least once
    // (on a loaded machine its thread may get little time while the jobs come and go).
    let deadline = procyard_core::Deadline::after(Duration::from_secs(60));
    let mut i = 0;
    // (A checker that panicked has finished: its join below reports why.)
    while (i < 15 || progress.iter().any(|p| p.load(Ordering::Relaxed) == 0))
        && !hammer.is_finished()
    {
        assert!(!deadline.is_expired(), "the checker never overlapped a job: {progress:?}");
        let code = i % 100;
        let ran = sb.job(&["start", "--shell", &format!("exit {code}")]);
        assert_eq!(ran.stdout, "success", "{}", ran.stderr);
        assert_eq!(sb.wait()["exitstatus"], code);
        assert_eq!(sb.job(&["reap"]).stdout, "success");
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let (cli_reads, file_reads) = hammer.join().expect("a check returned unparsable JSON");
    assert!(cli_reads > 0 && file_reads > 0, "{cli_reads} {file_reads}");
    sb.assert_no_strays();
}

#[test]
fn asyncjob_b9_end_time_signal_and_timeout() {
    let sb = Sandbox::new("asyncjob_b9_end_time_signal_and_timeout");
    // A job that obeys TERM: stopped at the timeout with SIGTERM.
    let ran = sb.job(&["start", "--timeout", "300ms", "--", "sleep", "30"]);
    assert_eq!(ran.stdout, "success");
    let state = sb.wait();
    assert_eq!(state["status"], "finished");
    assert_eq!(state["signal"], "SIGTERM");
    assert_eq!(state["timed_out"], true);
    let (start, end) = (state["started_at"].as_f64().unwrap(), state["ended_at"].as_f64().unwrap());
    assert!(end - start >= 0.25 && end - start < 20.0, "{start} {end}");
    assert_eq!(sb.job(&["reap"]).stdout, "success");
    // A job that ends by itself records its end time and no signal.
    assert_eq!(sb.job(&["start", "--", "true"]).stdout, "success");
    let state = sb.wait();
    assert_eq!(state["timed_out"], false);
    assert!(state["ended_at"].as_f64().unwrap() >= state["started_at"].as_f64().unwrap());
    assert_eq!(sb.job(&["reap"]).stdout, "success");
    sb.assert_no_strays();
}

#[test]
fn asyncjob_b9_timeout_kills_a_job_that_ignores_term() {
    let sb = Sandbox::new("asyncjob_b9_timeout_kills_a_job_that_ignores_term");
    // KILLed after the grace period. The shell must have set its trap before the timeout
    // sends TERM (it is spawned with default dispositions), and nothing tells the monitor
    // when that happened: the timeout is generous, so a loaded machine still gets there.
    let ran = sb.job(&[
        "start",
        "--timeout",
        "10s",
        "--grace",
        "300ms",
        "--shell",
        "trap '' TERM; sleep 60",
    ]);
    assert_eq!(ran.stdout, "success");
    let state = sb.job(&["wait", "--timeout", "60s"]);
    assert_eq!(state.code, 0, "wait failed: {}", state.stderr);
    let state = state.json();
    assert_eq!(state["signal"], "SIGKILL", "{state}");
    assert_eq!(state["timed_out"], true);
    let (start, end) = (state["started_at"].as_f64().unwrap(), state["ended_at"].as_f64().unwrap());
    assert!(end - start >= 10.25, "{start} {end}");
    assert_eq!(sb.job(&["reap"]).stdout, "success");
    sb.assert_no_strays();
}

#[test]
fn no_state_file_means_nothing_persisted() {
    let sb = Sandbox::new("no_state_file_means_nothing_persisted");
    assert_eq!(sb.run(&["check"]).stdout, r#"{"status":"absent"}"#);
    assert_eq!(sb.run(&["kill"]).stdout, "failed");
    assert_eq!(sb.run(&["reap"]).stdout, "failed");
    assert_eq!(sb.run(&["start", "--", "true"]).stdout, "success");
    assert_eq!(std::fs::read_dir(sb.dir.path()).unwrap().count(), 0);
    sb.assert_no_strays();
}

#[test]
fn usage_errors_and_help() {
    let sb = Sandbox::new("usage_errors_and_help");
    assert_eq!(sb.job(&["kill", "--signal", "NOPE"]).code, 2);
    assert_eq!(sb.run(&["--env", "novalue", "check"]).code, 2);
    assert_eq!(sb.job(&["frobnicate"]).code, 2);
    let help = sb.run(&["--help"]);
    assert!(help.stdout.contains("serf handler"), "{}", help.stdout);
    for sub in ["start", "check", "kill", "reap", "wait"] {
        let help = sb.run(&[sub, "--help"]);
        assert!(help.stdout.contains("Example"), "{sub}: {}", help.stdout);
    }
    // --json for scripts; wait on a running job with a short timeout fails with exit 1.
    let started = sb.job(&["start", "--json", "--", "sleep", "30"]);
    assert_eq!(started.json()["result"], "success");
    assert_eq!(started.json()["state"]["status"], "running");
    let refused = sb.job(&["start", "--json", "--", "sleep", "30"]);
    assert_eq!(refused.code, 1);
    assert_eq!(refused.json()["result"], "failed");
    assert!(refused.json()["error"].as_str().unwrap().contains("already holds"));
    let waited = sb.job(&["wait", "--timeout", "100ms"]);
    assert_eq!(waited.code, 1, "{}", waited.stderr);
    assert_eq!(sb.job(&["kill"]).stdout, "success");
    assert_eq!(sb.job(&["reap"]).stdout, "success");
    sb.assert_no_strays();
}

#[test]
fn corrupt_state_is_an_error_not_a_panic() {
    let sb = Sandbox::new("corrupt_state_is_an_error_not_a_panic");
    std::fs::write(sb.state(), b"{\"status\": ").unwrap();
    let ran = sb.job(&["check"]);
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("corrupt state file"), "{}", ran.stderr);
    assert!(!ran.stderr.contains("panicked"));
    assert_eq!(sb.job(&["start", "--", "true"]).stdout, "failed");
    // Nothing can ever fix it, so it can be reaped, and the state file used again.
    assert_eq!(sb.job(&["reap"]).stdout, "success");
    assert_eq!(sb.check()["status"], "absent");
    assert_eq!(sb.job(&["start", "--", "true"]).stdout, "success");
    assert_eq!(sb.wait()["exitstatus"], 0);
    assert_eq!(sb.job(&["reap"]).stdout, "success");
    sb.assert_no_strays();
}

#[test]
fn serf_handler_example_drives_the_binary() {
    let sb = Sandbox::new("serf_handler_example_drives_the_binary");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/serf-handler.sh");
    let query = |payload: &str| -> String {
        let mut child = std::process::Command::new("/bin/sh")
            .arg(script)
            .env("ASYNCJOB", common::BIN)
            .env("ASYNCJOB_STATE", sb.state())
            .env("SERF_EVENT", "query")
            .env("SERF_QUERY_NAME", "bash_test")
            .env(common::TAG_VAR, &sb.tag)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(payload.as_bytes()).unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap().trim().to_owned()
    };
    assert_eq!(query("start"), "success");
    let checked: Value = serde_json::from_str(&query("check")).unwrap();
    assert_eq!(checked["status"], "running");
    assert_eq!(query("start"), "failed");
    assert_eq!(query("reap"), "failed");
    assert_eq!(query("kill"), "success");
    let checked: Value = serde_json::from_str(&query("check")).unwrap();
    assert_eq!(checked["status"], "finished");
    assert_eq!(query("reap"), "success");
    assert_eq!(query("check"), r#"{"status":"absent"}"#);
    assert_eq!(query("bogus"), "failed");
    sb.assert_no_strays();
}
