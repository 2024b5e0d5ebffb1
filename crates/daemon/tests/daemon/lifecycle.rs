//! The job lifecycle end to end (issue 16): every job can be found (`job`, `jobs`), followed
//! (`logs -f`), waited on (`wait`, `publish --wait`) and cancelled, with its attempts and
//! output recorded in the real SQLite queue, through the real binary.

use std::process::Output;
use std::time::Duration;

use procyard_core::{Command, Signal, Stdio};
use procyard_daemon::Client;
use procyard_daemon::queue::{AttemptEnd, JobFilter, JobState};

use crate::sandbox::{BIN, Sandbox};

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn client(sb: &Sandbox) -> Client {
    Client::new(sb.load_config())
}

fn state(sb: &Sandbox, id: &str) -> JobState {
    client(sb).job(id).expect("job").state
}

fn first_id(out: &Output) -> String {
    let line = text(&out.stdout).lines().next().expect("a line").to_owned();
    line.split_whitespace().next().expect("an id").to_owned()
}

fn task(name: &str, script: &str, extra: &str) -> String {
    let attempts = if extra.contains("max_attempts") { "" } else { "max_attempts = 3\n" };
    let backoff =
        if extra.contains("backoff_initial") { "" } else { "backoff_initial = \"50ms\"\n" };
    format!(
        "[[task]]\nname = \"{name}\"\nrouting_keys = [\"{name}.#\"]\ncommand = [\"sh\", \"-c\", {script:?}]\n{attempts}{backoff}{extra}\n"
    )
}

/// A job that prints on both streams and exits 3 is retried, then dead-lettered: `publish
/// --wait` exits 1, `job` shows every attempt with its exit code and output, `logs` prints
/// any attempt's streams, `jobs --state dead` lists it.
#[test]
fn daemon_lifecycle_failing_job_records_every_attempt() {
    let mut sb = Sandbox::new(&task(
        "flaky",
        "echo \"out $PROCYARD_ATTEMPT $(cat)\"; echo \"err $PROCYARD_ATTEMPT\" >&2; exit 3",
        "",
    ));
    sb.start();
    let out = sb.cli(&["publish", "--wait", "--timeout", "60s", "flaky.x", "payload"]);
    assert_eq!(out.status.code(), Some(1), "dead-lettered: {}", text(&out.stderr));
    let id = first_id(&out);
    assert!(text(&out.stdout).contains("dead"), "{}", text(&out.stdout));

    let out = sb.cli(&["job", &id, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let job: procyard_daemon::queue::JobRecord = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(job.state, JobState::Dead);
    assert_eq!(job.attempts.len(), 3);
    for (i, a) in job.attempts.iter().enumerate() {
        let n = i + 1;
        assert_eq!(a.end, Some(AttemptEnd::Exited { code: 3 }), "attempt {n}");
        assert!(a.worker_pid.is_some() && a.duration().is_some());
        let stdout = text(&a.stdout.as_ref().expect("stdout").bytes);
        assert_eq!(stdout, format!("out {n} payload\n"));
        assert_eq!(text(&a.stderr.as_ref().expect("stderr").bytes), format!("err {n}\n"));
    }
    let human = text(&sb.cli(&["job", &id]).stdout);
    assert!(human.contains("exit code 3") && human.contains("state       dead"), "{human}");

    let out = sb.cli(&["logs", &id, "--attempt", "2"]);
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("out 2 payload\n".into(), "err 2\n".into())
    );
    let out = sb.cli(&["logs", &id, "--stream", "stderr"]);
    assert_eq!((text(&out.stdout), text(&out.stderr)), (String::new(), "err 3\n".into()));
    let out = sb.cli(&["logs", &id, "--attempt", "9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("has no attempt 9"), "{}", text(&out.stderr));

    let out = sb.cli(&["jobs", "--state", "dead", "--json"]);
    let listed: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
}

/// A oneshot attempt records what its process cost, from the kernel: a job that fills a
/// 64 MiB buffer and then spins shows a max RSS of at least 50 MiB and some user CPU, in
/// `job ID --json` and in `job ID`.
#[test]
fn daemon_lifecycle_attempt_records_resource_use() {
    let script = "dd if=/dev/zero of=/dev/null bs=64M count=1 status=none; \
                  i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done";
    let mut sb = Sandbox::new(&task("hog", script, ""));
    sb.start();
    let out = sb.cli(&["publish", "--wait", "--timeout", "60s", "hog.x"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = first_id(&out);
    let out = sb.cli(&["job", &id, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let job: procyard_daemon::queue::JobRecord = serde_json::from_slice(&out.stdout).expect("json");
    let usage = job.attempts[0].usage.expect("resource use recorded");
    assert!(usage.max_rss_kib >= 50 * 1024, "{usage:?}");
    assert!(usage.user_cpu_us > 0, "{usage:?}");
    let human = text(&sb.cli(&["job", &id]).stdout);
    assert!(human.contains(&format!("max RSS {} KiB", usage.max_rss_kib)), "{human}");
}

/// `publish --wait` mirrors the job: 0 when done, 124 when the timeout passes first; `wait`
/// on several jobs too.
#[test]
fn daemon_lifecycle_publish_wait_exit_status() {
    let mut sb = Sandbox::new(&format!(
        "{}{}",
        task("ok", "cat", ""),
        task("slow", "while [ ! -e {dir}/go ]; do sleep 0.05; done", "")
    ));
    sb.start();
    let out = sb.cli(&["publish", "--wait", "ok.x", "hello"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = first_id(&out);
    let job = client(&sb).job(&id).expect("job");
    assert_eq!(text(&job.attempts[0].stdout.as_ref().expect("stdout").bytes), "hello");

    let out = sb.cli(&["publish", "--wait", "--timeout", "300ms", "slow.x"]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    let slow = first_id(&out);
    let out = sb.cli(&["wait", "--timeout", "200ms", &slow, &id]);
    assert_eq!(out.status.code(), Some(124));
    std::fs::write(sb.path().join("go"), b"").expect("go");
    let out = sb.cli(&["wait", "--timeout", "30s", &slow, &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(state(&sb, &slow), JobState::Done);
}

/// `logs -f` started while a job runs prints each attempt's output and exits when the job
/// ends.
#[test]
fn daemon_lifecycle_logs_follow_to_the_end() {
    let mut sb = Sandbox::new(&task(
        "follow",
        "echo attempt-$PROCYARD_ATTEMPT; if [ $PROCYARD_ATTEMPT = 1 ]; then while [ ! -e {dir}/go ]; do sleep 0.05; done; exit 3; fi; echo finished",
        "",
    ));
    sb.start();
    let id = sb.publish("follow.x", b"").remove(0);
    sb.wait_until("the first attempt running", SECS(20), |sb| {
        client(sb).job(&id).is_ok_and(|j| j.state == JobState::Running && !j.attempts.is_empty())
    });
    let mut follow = Command::new(BIN);
    follow.args(["logs", "-f", "--config"]).arg(&sb.config).arg(&id);
    let stdout = sb.path().join("follow.out");
    follow.stdout(Stdio::Append(stdout.clone())).stderr(Stdio::Null).stdin(Stdio::Null);
    let mut child = follow.spawn().expect("logs -f");
    std::fs::write(sb.path().join("go"), b"").expect("go");
    let exit = child.wait_timeout(SECS(30)).expect("wait logs -f").expect("logs -f ended");
    assert!(exit.success(), "{exit}");
    let printed = std::fs::read_to_string(&stdout).expect("output");
    assert_eq!(printed, "attempt-1\nattempt-2\nfinished\n");
    assert_eq!(state(&sb, &id), JobState::Done);
}

/// Cancel: a ready job never runs; a running oneshot job is stopped (TERM, then KILL) and
/// ends `cancelled`, never retried; `wait` exits 2; cancelling it again is refused.
#[test]
fn daemon_lifecycle_cancel_ready_and_running() {
    let mut sb = Sandbox::new(&task(
        "block",
        "echo $$ > {dir}/pid.tmp; mv {dir}/pid.tmp {dir}/pid; trap '' TERM; exec sleep 60",
        "max_workers = 1",
    ));
    sb.start();
    let running = sb.publish("block.a", b"").remove(0);
    let waiting = sb.publish("block.b", b"").remove(0);
    let pid_file = sb.path().join("pid");
    sb.wait_until("the first job running", SECS(20), |_| pid_file.exists());
    assert_eq!(state(&sb, &waiting), JobState::Ready);

    let out = sb.cli(&["cancel", &waiting]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("cancelled"));
    let out = sb.cli(&["cancel", &running]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("cancelling"));
    let out = sb.cli(&["wait", "--timeout", "30s", &running]);
    assert_eq!(out.status.code(), Some(2), "cancelled: {}", text(&out.stderr));

    let job = client(&sb).job(&running).expect("job");
    assert_eq!((job.state, job.attempts.len()), (JobState::Cancelled, 1));
    assert_eq!(job.attempts[0].end, Some(AttemptEnd::Cancelled));
    let never = client(&sb).job(&waiting).expect("job");
    assert_eq!((never.state, never.attempts.len()), (JobState::Cancelled, 0), "it never ran");

    let out = sb.cli(&["cancel", &running]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("already cancelled"), "{}", text(&out.stderr));
    // Nothing runs it again.
    let after = client(&sb).jobs(&JobFilter { task: Some("block".into()), ..JobFilter::default() });
    assert!(after.expect("jobs").iter().all(|j| j.state == JobState::Cancelled));
}

/// A daemon SIGKILLed during an attempt: after the restart the attempt shows `daemon lost`
/// and the job runs again to its end.
#[test]
fn daemon_lifecycle_sigkill_leaves_daemon_lost() {
    let mut sb = Sandbox::new(&task(
        "lost",
        "if [ ! -e {dir}/ran ]; then touch {dir}/ran; exec sleep 60; fi; echo second",
        "",
    ));
    sb.start();
    let id = sb.publish("lost.x", b"").remove(0);
    sb.wait_until("the attempt recorded", SECS(20), |sb| {
        client(sb).job(&id).is_ok_and(|j| j.attempts.len() == 1 && sb.path().join("ran").exists())
    });
    sb.signal(Signal::KILL);
    sb.wait_exit(SECS(10)).expect("the daemon died");
    sb.start();
    let out = sb.cli(&["wait", "--timeout", "30s", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let job = client(&sb).job(&id).expect("job");
    let ends: Vec<Option<AttemptEnd>> = job.attempts.iter().map(|a| a.end.clone()).collect();
    assert_eq!(ends, [Some(AttemptEnd::DaemonLost), Some(AttemptEnd::Exited { code: 0 })]);
    assert_eq!(text(&job.attempts[1].stdout.as_ref().expect("stdout").bytes), "second\n");
}

/// 64 MiB on stdout costs the output limit: the first and last halves kept, the count of
/// bytes dropped between them.
#[test]
fn daemon_lifecycle_flood_is_bounded() {
    let mut sb = Sandbox::new(&task(
        "flood",
        "head -c 67108864 /dev/zero | tr '\\000' x; echo; echo END",
        "output_limit = 4096",
    ));
    sb.start();
    let out = sb.cli(&["publish", "--wait", "--timeout", "120s", "flood.x"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let job = client(&sb).job(&first_id(&out)).expect("job");
    let c = job.attempts[0].stdout.clone().expect("stdout");
    assert_eq!(c.total, 64 * 1024 * 1024 + 5);
    assert_eq!(c.dropped, c.total - 4096);
    assert!(c.bytes.len() < 4096 + 64, "bounded: {} bytes", c.bytes.len());
    assert!(c.bytes.starts_with(b"xxxx") && c.bytes.ends_with(b"x\nEND\n"));
    assert!(text(&c.bytes).contains(&format!("[… {} bytes dropped …]", c.dropped)));
}

/// Done jobs beyond `keep_done_max` are pruned, then all of them after `keep_done`; dead
/// letters stay until purged.
#[test]
fn daemon_lifecycle_retention_prunes() {
    let mut sb = Sandbox::with(
        "grace_period = \"5s\"\nkill_timeout = \"2s\"\nkeep_done = \"3s\"\nkeep_done_max = 2",
        &format!("{}{}", task("quick", "true", ""), task("bad", "exit 1", "max_attempts = 1")),
    );
    sb.start();
    let ids: Vec<String> = (0..5).flat_map(|_| sb.publish("quick.x", b"")).collect();
    let dead = sb.publish("bad.x", b"").remove(0);
    let out = sb.cli(&["wait", "--timeout", "30s", &ids[4], &dead]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let done = |sb: &Sandbox| {
        let f = JobFilter { states: vec![JobState::Done], ..JobFilter::default() };
        client(sb).jobs(&f).expect("jobs").len()
    };
    sb.wait_until("keep_done_max", SECS(20), |sb| done(sb) == 2);
    sb.wait_until("keep_done", SECS(20), |sb| done(sb) == 0);
    let out = sb.cli(&["job", &ids[0]]);
    assert!(text(&out.stderr).contains("no job"), "{}", text(&out.stderr));
    assert_eq!(state(&sb, &dead), JobState::Dead, "dead letters stay");
    let out = sb.cli(&["purge", "--dead"]);
    assert!(text(&out.stdout).contains("purged 1 job"), "{}", text(&out.stdout));
    assert!(client(&sb).job(&dead).is_err());
}

/// Bad ids, unknown ids, garbage durations and states are clear errors; the config is found
/// without `--config` in the documented order, and the error lists where it looked.
#[test]
fn daemon_lifecycle_bad_input_and_config_discovery() {
    let sb = Sandbox::new(&task("any", "true", ""));
    let run = |args: &[&str], cwd: &std::path::Path, env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(BIN);
        c.args(args).current_dir(cwd).env_remove("PROCYARD_CONFIG");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run")
    };
    let unknown = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let out = sb.cli(&["job", "not-an-id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("\"not-an-id\" is not a job id"), "{}", text(&out.stderr));
    let out = sb.cli(&["job", unknown]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&format!("no job {unknown}")), "{}", text(&out.stderr));
    for args in [&["wait", "--timeout", "soon", unknown][..], &["jobs", "--since=-1s"]] {
        let out = sb.cli(args);
        assert_eq!(out.status.code(), Some(64), "usage error (EX_USAGE)");
        assert!(text(&out.stderr).contains("expected a duration"), "{}", text(&out.stderr));
    }
    let out = sb.cli(&["jobs", "--state", "finished"]);
    assert_eq!(out.status.code(), Some(64));
    // The table is in `--help`: 2 is a cancelled job, never a usage error.
    for verb in ["wait", "publish"] {
        let help = text(&sb.cli(&[verb, "--help"]).stdout);
        assert!(
            help.contains("2    a job was cancelled") && help.contains("64   a usage error"),
            "{help}"
        );
    }
    assert!(text(&out.stderr).contains("ready, delayed, running"), "{}", text(&out.stderr));
    let out = sb.cli(&["cancel", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is not a job id"));
    let out = sb.cli(&["purge"]);
    assert!(text(&out.stderr).contains("--dead, --done"), "{}", text(&out.stderr));

    // Discovery: ./procyard.toml, then $PROCYARD_CONFIG first, then nothing.
    let empty = sb.path().join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    let out = run(&["jobs"], sb.path(), &[]);
    assert!(out.status.success(), "./procyard.toml: {}", text(&out.stderr));
    let cfg = sb.config.to_str().expect("utf-8");
    let out = run(&["jobs"], &empty, &[("PROCYARD_CONFIG", cfg)]);
    assert!(out.status.success(), "$PROCYARD_CONFIG: {}", text(&out.stderr));
    let xdg = sb.path().join("xdg");
    std::fs::create_dir_all(xdg.join("procyard")).expect("dir");
    std::fs::copy(&sb.config, xdg.join("procyard/daemon.toml")).expect("copy");
    let xdg_s = xdg.to_str().expect("utf-8");
    let out = run(&["jobs"], &empty, &[("XDG_CONFIG_HOME", xdg_s)]);
    assert!(out.status.success(), "XDG: {}", text(&out.stderr));
    let none = empty.to_str().expect("utf-8");
    let out = run(&["jobs"], &empty, &[("XDG_CONFIG_HOME", none), ("HOME", none)]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("no config given")
            && err.contains("procyard.toml")
            && err.contains(&format!("{none}/procyard/daemon.toml"))
            && err.contains("/etc/procyard/daemon.toml"),
        "{err}"
    );
}

/// Cancel a delayed job (its retry never comes) and a job running in a longlived worker (the
/// worker gets the stop ladder, the job ends `cancelled`, a new worker takes the next job).
#[test]
fn daemon_lifecycle_cancel_delayed_and_longlived() {
    let mut sb = Sandbox::new(&format!(
        "{}[[task]]\nname = \"ll\"\nrouting_keys = [\"ll.#\"]\ncommand = [\"python3\", \"{{worker}}\"]\nwork_model = \"longlived\"\nmin_workers = 1\nmax_workers = 1\nenv = {{ ECHO_OUT_DIR = \"{{out}}\" }}\n",
        task("later", "exit 3", "backoff_initial = \"1h\"\nbackoff_max = \"2h\"")
    ));
    sb.start();
    let delayed = sb.publish("later.x", b"").remove(0);
    sb.wait_until("the retry delay", SECS(20), |sb| state(sb, &delayed) == JobState::Delayed);
    let out = sb.cli(&["cancel", &delayed]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let job = client(&sb).job(&delayed).expect("job");
    assert_eq!((job.state, job.attempts.len()), (JobState::Cancelled, 1), "never again");

    let long = sb.publish("ll.x", b"sleep 60").remove(0);
    sb.wait_until("the longlived job running", SECS(20), |sb| {
        client(sb).job(&long).is_ok_and(|j| j.state == JobState::Running && !j.attempts.is_empty())
    });
    let out = sb.cli(&["cancel", &long]);
    assert!(text(&out.stdout).contains("cancelling"), "{}", text(&out.stderr));
    let out = sb.cli(&["wait", "--timeout", "30s", &long]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let job = client(&sb).job(&long).expect("job");
    assert_eq!(job.attempts.last().and_then(|a| a.end.clone()), Some(AttemptEnd::Cancelled));
    let out = sb.cli(&["publish", "--wait", "--timeout", "30s", "ll.y", "after"]);
    assert_eq!(out.status.code(), Some(0), "a new worker serves: {}", text(&out.stderr));
}

/// A longlived worker's stderr during a job is kept with that job's attempt (and still reaches
/// the daemon's stderr); a failure reply's reason is recorded.
#[test]
fn daemon_lifecycle_longlived_stderr_attributed() {
    let mut sb = Sandbox::new(
        "[[task]]\nname = \"ll\"\nrouting_keys = [\"ll.#\"]\ncommand = [\"python3\", \"{worker}\"]\nwork_model = \"longlived\"\nmin_workers = 1\nmax_workers = 1\nmax_attempts = 1\n",
    );
    sb.start();
    let mut ids = Vec::new();
    for payload in ["first", "second"] {
        let out = sb.cli(&["publish", "--wait", "--timeout", "30s", "ll.x", payload]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        ids.push(first_id(&out));
    }
    for (id, payload) in ids.iter().zip(["first", "second"]) {
        let job = client(&sb).job(id).expect("job");
        let a = &job.attempts[0];
        assert_eq!(a.end, Some(AttemptEnd::Replied { outcome: "done".into() }));
        assert!(a.stdout.is_none(), "stdout is the protocol");
        let err = text(&a.stderr.as_ref().expect("stderr").bytes);
        assert_eq!(err.lines().count(), 1, "only its own lines: {err:?}");
        assert!(err.contains(&format!("job {id}")) && err.contains(payload), "{err:?}");
    }
    assert!(sb.log().contains(&format!("job {}", ids[1])), "relayed to the daemon's stderr");
    let out = sb.cli(&["publish", "--wait", "ll.x", "fail"]);
    assert_eq!(out.status.code(), Some(1));
    let job = client(&sb).job(&first_id(&out)).expect("job");
    assert_eq!(job.attempts[0].reason.as_deref(), Some("asked to fail"));
}
