//! End-to-end scenarios for procyard-daemon: the real binary, real worker processes, a real
//! SQLite queue file, real signals.

#[path = "../common/broker.rs"]
mod broker;
mod browser;
mod cancel;
mod example_client;
mod follow;
mod hardening;
mod hardening_orphans;
mod http;
mod lifecycle;
mod periodic;
mod prefetch;
mod sandbox;
mod scheduling;
mod web;

use std::time::{Duration, Instant};

use procyard_core::Signal;
use procyard_daemon::status::{DaemonState, WorkerState};
use sandbox::{Sandbox, is_alive};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// A oneshot task that appends one byte to out/<payload> (the side effect we count).
fn counting_task(max_workers: usize) -> String {
    format!(
        r#"[[task]]
name = "count"
routing_keys = ["count.#"]
command = ["sh", "-c", "printf x >> {{out}}/$(cat)"]
max_workers = {max_workers}
max_attempts = 3
backoff_initial = "50ms"
"#
    )
}

fn longlived_task(name: &str, keys: &str, min: usize, max: usize, extra: &str) -> String {
    format!(
        r#"[[task]]
name = "{name}"
routing_keys = [{keys}]
command = ["python3", "{{worker}}"]
work_model = "longlived"
min_workers = {min}
max_workers = {max}
backoff_initial = "50ms"
env = {{ ECHO_OUT_DIR = "{{out}}" }}
{extra}
"#
    )
}

fn group<'a>(
    status: &'a procyard_daemon::status::Status,
    name: &str,
) -> &'a procyard_daemon::status::GroupStatus {
    status.groups.iter().find(|g| g.name == name).expect("group in status")
}

#[test]
fn daemon_thousand_jobs_each_done_exactly_once() {
    let mut sb = Sandbox::new(&counting_task(8));
    sb.start();
    let payloads: Vec<Vec<u8>> = (0..1000).map(|i| format!("job{i}").into_bytes()).collect();
    let ids = sb.publish_many("count.it", payloads);
    assert_eq!(ids.len(), 1000);
    sb.wait_until("1000 jobs done", SECS(90), |sb| group(&sb.status(), "count").done == 1000);
    let effects = sb.side_effects();
    assert_eq!(effects.len(), 1000, "every job ran");
    assert!(effects.iter().all(|(_, n)| *n == 1), "no job ran twice");
    let status = sb.status();
    let g = group(&status, "count");
    assert_eq!((g.failed, g.dead_lettered), (0, 0));
    let q = g.queue.clone().expect("depth");
    assert_eq!((q.ready, q.in_flight, q.done_total), (0, 0, Some(1000)));
}

#[test]
fn daemon_longlived_jobs_done_exactly_once_and_publish_cli() {
    let mut sb = Sandbox::new(&longlived_task("echo", "\"echo.*\"", 1, 3, ""));
    sb.start();
    let ids = sb.publish_many("echo.x", (0..200).map(|i| format!("p{i}").into_bytes()));
    let out = sb.cli(&["publish", "--json", "echo.cli", "from the cli"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["jobs"].as_array().map(Vec::len), Some(1));
    sb.wait_until("201 jobs done", SECS(60), |sb| group(&sb.status(), "echo").done == 201);
    let effects = sb.side_effects();
    assert_eq!(effects.len(), ids.len() + 1);
    assert!(effects.iter().all(|(_, n)| *n == 1));
    let human = sb.cli(&["status"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("echo"), "human status lists the task");
}

#[test]
fn daemon_publish_while_down_runs_on_start_and_unbound_key_is_an_error() {
    let mut sb = Sandbox::new(&counting_task(2));
    let out = sb.cli(&["publish", "count.early", "early"]);
    assert!(
        out.status.success(),
        "publish works with the daemon down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sb.cli(&["publish", "nobody.listens", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no task is bound to routing key \"nobody.listens\""), "{err}");
    let out = sb.cli(&["publish", "count..bad", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty word"));
    sb.start();
    sb.wait_until("the early job", SECS(20), |sb| sb.side_effects().len() == 1);
}

#[test]
fn daemon_worker_sigkill_mid_job_runs_again() {
    let mut sb = Sandbox::new(
        r#"[[task]]
name = "victim"
routing_keys = ["victim"]
command = ["sh", "-c", "if [ $PROCYARD_ATTEMPT = 1 ]; then echo $$ > {dir}/pid.tmp; mv {dir}/pid.tmp {dir}/pid; exec sleep 30; fi; printf x >> {out}/done"]
max_attempts = 3
backoff_initial = "50ms"
"#,
    );
    sb.start();
    sb.publish("victim", b"");
    let pid_file = sb.path().join("pid");
    sb.wait_until("the first attempt", SECS(20), |_| pid_file.exists());
    let pid: i32 =
        std::fs::read_to_string(&pid_file).expect("pid").trim().parse().expect("pid number");
    procyard_core::kill_process(procyard_core::Pid::from_raw(pid).expect("pid"), Signal::KILL)
        .expect("kill worker");
    sb.wait_until("the second attempt", SECS(20), |sb| {
        sb.side_effects() == vec![("done".to_owned(), 1)]
    });
    // The side effect is written before the worker exits; the daemon records the outcome after.
    sb.wait_until("the outcome recorded", SECS(20), |sb| group(&sb.status(), "victim").done == 1);
    let status = sb.status();
    let g = group(&status, "victim");
    assert_eq!((g.done, g.failed, g.retried), (1, 1, 1));
}

#[test]
fn daemon_sigkill_and_restart_completes_every_job() {
    let mut sb = Sandbox::new(
        r#"[[task]]
name = "slow"
routing_keys = ["slow"]
command = ["sh", "-c", "p=$(cat); sleep 0.05; printf x >> {out}/$p"]
max_workers = 4
max_attempts = 5
backoff_initial = "50ms"
"#,
    );
    sb.start();
    sb.publish_many("slow", (0..60).map(|i| format!("j{i}").into_bytes()));
    sb.wait_until("some jobs done", SECS(30), |sb| sb.side_effects().len() >= 10);
    sb.signal(Signal::KILL);
    sb.wait_exit(SECS(10)).expect("daemon died");
    // Its orphaned workers finish their current job on their own (at most 4, 50 ms each).
    sb.start();
    sb.wait_until("every job done", SECS(60), |sb| sb.side_effects().len() == 60);
    let effects = sb.side_effects();
    let duplicates = effects.iter().filter(|(_, n)| *n > 1).count();
    assert!(duplicates <= 4, "only jobs in flight at the kill may run twice, got {duplicates}");
    sb.wait_until("queue drained", SECS(20), |sb| {
        let s = sb.status();
        let q = group(&s, "slow").queue.clone().unwrap_or_default();
        q.ready == 0 && q.in_flight == 0
    });
}

#[test]
fn daemon_dead_letter_after_max_attempts_then_requeue() {
    let mut sb = Sandbox::new(
        r#"[[task]]
name = "flaky"
routing_keys = ["flaky"]
command = ["sh", "-c", "printf x >> {out}/attempts; test -e {dir}/fixed"]
max_attempts = 3
backoff_initial = "20ms"
"#,
    );
    sb.start();
    let id = sb.publish("flaky", b"payload").remove(0);
    sb.wait_until("dead-lettered", SECS(20), |sb| group(&sb.status(), "flaky").dead_lettered == 1);
    let status = sb.status();
    assert_eq!(status.dead_letters.len(), 1);
    assert_eq!(status.dead_letters[0].id, id);
    assert_eq!(status.dead_letters[0].attempts, 3);
    assert_eq!(sb.side_effects(), vec![("attempts".to_owned(), 3)], "exactly max_attempts runs");
    let listed = sb.cli(&["dead", "--json"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&id));
    std::fs::write(sb.path().join("fixed"), "").expect("fix");
    let out = sb.cli(&["requeue", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    sb.wait_until("done after requeue", SECS(20), |sb| group(&sb.status(), "flaky").done == 1);
    assert!(sb.status().dead_letters.is_empty());
    let out = sb.cli(&["requeue", "no-such-id"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn daemon_s8_timeout_kills_the_group_and_dead_letters() {
    let mut sb = Sandbox::new(
        r#"[[task]]
name = "hang"
routing_keys = ["hang"]
command = ["sh", "-c", "sleep 30 & echo $! > {out}/grandchild.$PROCYARD_ATTEMPT; wait"]
timeout = "2s"
max_attempts = 2
backoff_initial = "20ms"
"#,
    );
    sb.start();
    sb.publish("hang", b"");
    sb.wait_until("dead-lettered after 2 timeouts", SECS(40), |sb| {
        group(&sb.status(), "hang").dead_lettered == 1
    });
    let status = sb.status();
    let g = group(&status, "hang");
    assert_eq!(
        (g.timeouts, g.retried),
        (2, 1),
        "a timed-out job is retried only up to max_attempts"
    );
    assert!(status.dead_letters[0].reason.contains("timed out"));
    for attempt in 1..=2 {
        let pid: i32 = std::fs::read_to_string(sb.out_dir().join(format!("grandchild.{attempt}")))
            .expect("grandchild pid")
            .trim()
            .parse()
            .expect("number");
        sb.wait_until("grandchild gone", SECS(20), |_| !is_alive(pid));
    }
}

#[test]
fn daemon_s1_graceful_stop_with_idle_workers_is_fast() {
    // Long grace and kill timeouts: a stop that waited for either would take a minute.
    let mut sb = Sandbox::with(
        "grace_period = \"60s\"\nkill_timeout = \"60s\"",
        &longlived_task("idle", "\"idle\"", 10, 10, ""),
    );
    sb.start();
    sb.wait_until("10 workers", SECS(20), |sb| sb.worker_pids("idle").len() == 10);
    let pids = sb.worker_pids("idle");
    let t0 = Instant::now();
    sb.signal(Signal::TERM);
    let exit = sb.wait_exit(SECS(30)).expect("daemon exits before its grace period is over");
    let took = t0.elapsed();
    assert!(exit.success(), "{exit}");
    assert!(
        took < SECS(30),
        "graceful stop took {took:?}: it waited for the grace period (Symphony did)"
    );
    for pid in pids {
        assert!(!is_alive(pid), "worker {pid} left behind");
    }
}

#[test]
fn daemon_s1_second_signal_forces_the_stop() {
    let mut sb = Sandbox::with(
        "grace_period = \"60s\"\nkill_timeout = \"60s\"",
        r#"[[task]]
name = "stubborn"
routing_keys = ["stubborn"]
command = ["sh", "-c", "trap '' TERM; echo $$ > {out}/pid; sleep 60"]
"#,
    );
    sb.start();
    sb.publish("stubborn", b"");
    let pid_file = sb.out_dir().join("pid");
    sb.wait_until("job running", SECS(20), |_| {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid: i32 = std::fs::read_to_string(&pid_file).expect("pid").trim().parse().expect("number");
    sb.signal(Signal::TERM);
    assert!(
        sb.wait_exit(Duration::from_millis(300)).is_none(),
        "graceful stop waits for the in-flight job"
    );
    sb.wait_until("stopping reported", SECS(10), |sb| sb.status().state == DaemonState::Stopping);
    let t0 = Instant::now();
    sb.signal(Signal::TERM);
    let exit = sb.wait_exit(SECS(30)).expect("forced stop, without waiting for kill_timeout");
    // kill_timeout is 60 s: a forced stop does not wait for it.
    assert!(t0.elapsed() < SECS(30), "forced stop took {:?}", t0.elapsed());
    assert!(exit.success());
    assert!(!is_alive(pid), "the stubborn worker was killed");
    // The interrupted job is back in the queue, its attempt not counted.
    let config = sb.load_config();
    let mut q =
        procyard_daemon::queue::open(&config.queue, procyard_daemon::queue::OpenMode::Client)
            .expect("queue");
    q.bind(&config.bindings()).expect("bind");
    let depth = q.depths().expect("depths");
    assert_eq!(depth["stubborn"].ready, 1);
}

#[test]
fn daemon_s7_hup_with_unchanged_config_keeps_every_pid() {
    let mut sb = Sandbox::new(&longlived_task("steady", "\"steady\"", 3, 3, ""));
    sb.start();
    sb.wait_until("3 workers", SECS(20), |sb| sb.worker_pids("steady").len() == 3);
    let before = sb.worker_pids("steady");
    std::fs::write(&sb.config, std::fs::read(&sb.config).expect("read")).expect("rewrite");
    sb.signal(Signal::HUP);
    sb.wait_until("reloaded", SECS(10), |sb| sb.status().reloads == 1);
    assert_eq!(sb.worker_pids("steady"), before, "an unchanged group keeps its workers");
    sb.publish("steady", b"still works");
    sb.wait_until("job done", SECS(20), |sb| group(&sb.status(), "steady").done == 1);
    assert_eq!(sb.worker_pids("steady"), before);
}

#[test]
fn daemon_hup_changed_max_workers_adjusts_and_changed_command_replaces() {
    let mut sb = Sandbox::new(&longlived_task("elastic", "\"elastic\"", 1, 1, ""));
    sb.start();
    sb.wait_until("1 worker", SECS(20), |sb| sb.worker_pids("elastic").len() == 1);
    let first = sb.worker_pids("elastic")[0];
    sb.write_config(
        "grace_period = \"5s\"\nkill_timeout = \"2s\"",
        &longlived_task("elastic", "\"elastic\"", 3, 3, ""),
    );
    sb.signal(Signal::HUP);
    sb.wait_until("3 workers", SECS(20), |sb| sb.worker_pids("elastic").len() == 3);
    assert!(sb.worker_pids("elastic").contains(&first), "a size change keeps the running workers");
    let g = sb.status();
    assert_eq!(group(&g, "elastic").max_workers, 3);

    // A changed environment restarts the group; a removed task drains; a new one starts.
    let changed = longlived_task("elastic", "\"elastic\"", 1, 1, "")
        .replace("ECHO_OUT_DIR", "OTHER = \"1\", ECHO_OUT_DIR");
    let tasks = format!("{changed}\n{}", longlived_task("fresh", "\"fresh\"", 1, 1, ""));
    sb.write_config("grace_period = \"5s\"\nkill_timeout = \"2s\"", &tasks);
    sb.signal(Signal::HUP);
    sb.wait_until("replaced", SECS(20), |sb| {
        let pids = sb.worker_pids("elastic");
        pids.len() == 1 && !pids.contains(&first) && sb.worker_pids("fresh").len() == 1
    });
    assert!(!is_alive(first));
}

#[test]
fn daemon_s7_hup_with_broken_config_keeps_running() {
    let mut sb = Sandbox::new(&longlived_task("keep", "\"keep\"", 1, 1, ""));
    sb.start();
    sb.wait_until("worker", SECS(20), |sb| sb.worker_pids("keep").len() == 1);
    let before = sb.worker_pids("keep");
    let good = sb.load_config();
    sb.write_raw_config(
        "[queue]\npath = \"{dir}/q.db\"\n[[task]]\nname = \"keep\"\nmax_workers = \"many\"\n",
    );
    sb.signal(Signal::HUP);
    sb.wait_until("failed reload reported", SECS(10), |sb| sb.status().failed_reloads == 1);
    let status = sb.status();
    let err = status.last_reload_error.clone().expect("error kept");
    assert!(err.contains("procyard.toml:"), "{err}");
    assert_eq!(sb.worker_pids("keep"), before);
    let mut q = procyard_daemon::queue::open(&good.queue, procyard_daemon::queue::OpenMode::Client)
        .expect("queue");
    q.bind(&good.bindings()).expect("bind");
    q.publish("keep", b"x").expect("publish");
    let _ = procyard_daemon::control::poke(&sb.socket());
    sb.wait_until("job still runs", SECS(20), |sb| group(&sb.status(), "keep").done == 1);
}

#[test]
fn daemon_s7_hup_before_ready_does_not_crash() {
    let mut sb = Sandbox::new(&counting_task(1));
    // The daemon's first act is to block its signals (signalfd), so a HUP that arrives while
    // it loads its config and opens its queue waits for the loop instead of killing it.
    let reader = sb.spawn_daemon(None);
    let pid = sb.daemon.as_ref().expect("daemon").id().as_raw();
    let hup_blocked = || {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|mask| mask & 1 == 1)
    };
    sb.wait_until("signals blocked", SECS(10), |_| hup_blocked());
    sb.signal(Signal::HUP);
    sb.wait_ready(reader);
    sb.wait_until("the early HUP handled", SECS(10), |sb| sb.status().reloads == 1);
    sb.publish("count.x", b"after-hup");
    sb.wait_until("job done", SECS(20), |sb| sb.side_effects().len() == 1);
}

#[test]
fn daemon_s2_unknown_child_pid_does_not_crash() {
    let mut sb = Sandbox::new(&counting_task(1));
    sb.start_with(Some("(exit 3) & echo $! > {out}/stranger; sleep 0.05"));
    let pid: i32 = std::fs::read_to_string(sb.out_dir().join("stranger"))
        .expect("pid")
        .trim()
        .parse()
        .expect("n");
    std::fs::remove_file(sb.out_dir().join("stranger")).expect("rm");
    sb.wait_until("stranger reaped", SECS(10), |_| {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    sb.publish("count.x", b"still-alive");
    sb.wait_until("job done", SECS(20), |sb| sb.side_effects().len() == 1);
}

/// A child that exited before the daemon's signalfd existed sent its SIGCHLD to the process
/// that exec'd the daemon, where it was ignored: no SIGCHLD will ever come for it. The daemon
/// still reaps it (at start), instead of leaving a zombie until some other child exits.
#[test]
fn daemon_s2_child_exited_before_exec_is_reaped() {
    const WRAPPER: &str = r#"
import os, sys
pid = os.fork()
if pid == 0:
    os._exit(3)
# Not reaped here (default SIGCHLD: ignored, no wait): a zombie when the daemon starts.
while True:
    with open(f"/proc/{pid}/stat") as f:
        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
            break
with open(sys.argv[1], "w") as f:
    f.write(str(pid))
os.execv(sys.argv[2], sys.argv[2:])
"#;
    let mut sb = Sandbox::new(&counting_task(1));
    sb.start_wrapped(&["python3", "-c", WRAPPER, "{out}/zombie"]);
    let pid: i32 = std::fs::read_to_string(sb.out_dir().join("zombie"))
        .expect("pid")
        .trim()
        .parse()
        .expect("n");
    std::fs::remove_file(sb.out_dir().join("zombie")).expect("rm");
    sb.wait_until("the zombie reaped", SECS(10), |_| {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    sb.publish("count.x", b"still-alive");
    sb.wait_until("job done", SECS(20), |sb| sb.side_effects().len() == 1);
}

#[test]
fn daemon_s4_foreign_children_are_neither_reaped_nor_signalled() {
    let mut sb = Sandbox::new(&counting_task(1));
    sb.start_with(Some("sleep 30 & echo $! > {dir}/foreign"));
    let pid: i32 =
        std::fs::read_to_string(sb.path().join("foreign")).expect("pid").trim().parse().expect("n");
    sb.publish("count.x", b"one");
    sb.wait_until("job done", SECS(20), |sb| sb.side_effects().len() == 1);
    assert!(is_alive(pid), "a running child the daemon did not start is left alone");
    sb.signal(Signal::TERM);
    sb.wait_exit(SECS(10)).expect("stopped");
    assert!(is_alive(pid), "stop signals only the daemon's own worker groups");
    let _ =
        procyard_core::kill_process(procyard_core::Pid::from_raw(pid).expect("pid"), Signal::KILL);
}

#[test]
fn daemon_s3_stopped_worker_is_not_replaced() {
    let mut sb = Sandbox::new(&longlived_task("frozen", "\"frozen\"", 1, 1, ""));
    sb.start();
    sb.wait_until("worker", SECS(20), |sb| sb.worker_pids("frozen").len() == 1);
    let pid = sb.worker_pids("frozen")[0];
    let rpid = procyard_core::Pid::from_raw(pid).expect("pid");
    procyard_core::kill_process(rpid, Signal::STOP).expect("stop");
    sb.wait_until("seen as stopped", SECS(10), |sb| {
        let s = sb.status();
        group(&s, "frozen").workers.iter().any(|w| w.pid == pid && w.state == WorkerState::Stopped)
    });
    sb.publish("frozen", b"waits for the worker");
    sb.pause(Duration::from_millis(300));
    assert_eq!(sb.worker_pids("frozen"), vec![pid], "a stopped worker is not taken for dead");
    assert_eq!(group(&sb.status(), "frozen").crashes, 0);
    procyard_core::kill_process(rpid, Signal::CONT).expect("cont");
    sb.wait_until("job done", SECS(20), |sb| group(&sb.status(), "frozen").done == 1);
    assert_eq!(sb.worker_pids("frozen"), vec![pid]);
}

#[test]
fn daemon_s5_catch_all_hash_receives_every_key() {
    let tasks = format!(
        "{}\n{}",
        r##"[[task]]
name = "all"
routing_keys = ["#"]
command = ["sh", "-c", "printf x >> {out}/all.$PROCYARD_ROUTING_KEY"]
max_workers = 2
"##,
        r#"[[task]]
name = "star"
routing_keys = ["a.*"]
command = ["sh", "-c", "printf x >> {out}/star.$PROCYARD_ROUTING_KEY"]
"#
    );
    let mut sb = Sandbox::new(&tasks);
    sb.start();
    for key in ["a", "a.b", "x.y.z"] {
        sb.publish(key, b"");
    }
    sb.wait_until("all routed", SECS(20), |sb| sb.side_effects().len() == 4);
    let names: Vec<String> = sb.side_effects().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        vec!["all.a", "all.a.b", "all.x.y.z", "star.a.b"],
        "`#` gets every key, `a.*` never matches `a`"
    );
}

#[test]
fn daemon_s6_scales_up_at_once_and_down_after_idle_timeout() {
    let mut sb =
        Sandbox::new(&longlived_task("burst", "\"burst\"", 0, 4, "idle_timeout = \"300ms\""));
    sb.start();
    assert!(sb.worker_pids("burst").is_empty(), "min_workers = 0: nothing runs without work");
    // Jobs long enough that the four workers surely live at the same time while we look.
    sb.publish_many("burst", (0..8).map(|_| b"sleep 1".to_vec()));
    sb.wait_until("4 workers at once", SECS(20), |sb| sb.worker_pids("burst").len() == 4);
    sb.wait_until("8 jobs done", SECS(40), |sb| group(&sb.status(), "burst").done == 8);
    sb.wait_until("scaled down to min", SECS(20), |sb| sb.worker_pids("burst").is_empty());
    assert_eq!(group(&sb.status(), "burst").crashes, 0, "scale-down is not a crash");
}

#[test]
fn daemon_s6_crash_loop_is_throttled() {
    let mut sb = Sandbox::new(
        r#"[[task]]
name = "crashy"
routing_keys = ["crashy"]
command = ["sh", "-c", "printf x >> {out}/starts; exit 1"]
work_model = "longlived"
min_workers = 1
max_workers = 1
"#,
    );
    let t0 = Instant::now();
    sb.start();
    let starts = |sb: &Sandbox| sb.side_effects().first().map(|(_, n)| *n).unwrap_or(0);
    sb.wait_until("a restart", SECS(20), |sb| starts(sb) >= 2);
    sb.wait_until("the crash loop reported", SECS(20), |sb| {
        group(&sb.status(), "crashy").crash_loop
    });
    sb.pause(Duration::from_millis(1500));
    let (n, elapsed) = (starts(&sb), t0.elapsed());
    // 100 ms doubling: the k-th restart comes at least 100 ms * (2^k - 1) after the start, so
    // a slow machine only means fewer starts (Symphony: ~1,000 in 1.5 s).
    let ceiling = 2 + (elapsed.as_millis() / 100 + 1).ilog2() as usize;
    assert!(n <= ceiling, "{n} starts in {elapsed:?}: restarts are not throttled");
}

#[test]
fn daemon_s9_job_outcome_comes_from_the_reply_not_the_exit_code() {
    let mut sb = Sandbox::new(&longlived_task("honest", "\"honest\"", 1, 1, "max_attempts = 2"));
    sb.start();
    sb.wait_until("worker", SECS(20), |sb| sb.worker_pids("honest").len() == 1);
    let pid = sb.worker_pids("honest")[0];
    sb.publish("honest", b"fail");
    sb.wait_until("dead-lettered", SECS(20), |sb| group(&sb.status(), "honest").dead_lettered == 1);
    let status = sb.status();
    let g = group(&status, "honest");
    assert_eq!((g.crashes, g.failed), (0, 2), "failed jobs are not worker crashes");
    assert_eq!(sb.worker_pids("honest"), vec![pid], "a worker reporting failures is not restarted");
    assert_eq!(status.dead_letters[0].reason, "asked to fail");

    sb.publish("honest", b"done-then-exit");
    sb.wait_until("worker replaced", SECS(20), |sb| {
        let s = sb.status();
        let g = group(&s, "honest");
        g.crashes == 1 && g.workers.len() == 1 && g.workers[0].pid != pid
    });
    let status = sb.status();
    let g = group(&status, "honest");
    assert_eq!(
        (g.done, g.dead_lettered, g.retried),
        (1, 1, 1),
        "the job it reported done stays done"
    );
}

#[test]
fn daemon_malformed_worker_reply_fails_the_job_and_replaces_the_worker() {
    let mut sb = Sandbox::new(&longlived_task("garbled", "\"garbled\"", 1, 1, "max_attempts = 1"));
    sb.start();
    sb.publish("garbled", b"garbage");
    sb.wait_until("dead-lettered", SECS(20), |sb| {
        group(&sb.status(), "garbled").dead_lettered == 1
    });
    sb.publish("garbled", b"fine");
    sb.wait_until("next job done", SECS(20), |sb| group(&sb.status(), "garbled").done == 1);
}

#[test]
fn daemon_malformed_config_errors_name_file_line_and_field() {
    let sb = Sandbox::new(&counting_task(1));
    sb.write_raw_config(
        "[queue]\npath = \"{dir}/q.db\"\n\n[[task]]\nname = \"a\"\nrouting_keys = [\"a\"]\ncommand = [\"true\"]\nmax_workers = -1\n",
    );
    let out = sb.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("procyard.toml:8: task[0].max_workers"), "{err}");

    sb.write_raw_config(
        "[queue]\npath = \"{dir}/q.db\"\n[[task]]\nname = \"a\"\nroutng_keys = [\"a\"]\n",
    );
    let err = String::from_utf8_lossy(&sb.cli(&["check-config"]).stderr).into_owned();
    assert!(err.contains(":5: task[0].routng_keys") && err.contains("unknown field"), "{err}");

    sb.write_raw_config("[queue\n");
    let out = sb.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("procyard.toml:1"));

    let out = std::process::Command::new(sandbox::BIN)
        .args(["check-config", "--config", "/nonexistent/p.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unable to read config /nonexistent/p.toml")
    );

    let out = std::process::Command::new(sandbox::BIN).args(["publish"]).output().expect("run");
    assert_eq!(out.status.code(), Some(64), "usage errors exit 64 (EX_USAGE)");

    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/procyard.toml");
    let out = std::process::Command::new(sandbox::BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&example)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "the example config is valid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn daemon_control_socket_is_owner_only_and_survives_garbage() {
    use std::io::{Read, Write};
    let mut sb = Sandbox::new(&counting_task(1));
    sb.start();
    let socket = sb.path().join("q.db.sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&socket).expect("socket").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let mut s = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    s.write_all(b"\x00\x00\x00\x05hello").expect("write");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("read");
    assert!(String::from_utf8_lossy(&answer).contains("bad request"));
    let mut s = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    s.write_all(&u32::MAX.to_be_bytes()).expect("write");
    let _ = s.read_to_end(&mut answer);
    assert_eq!(sb.status().state, DaemonState::Running);
}

#[test]
fn daemon_notify_socket_gets_ready() {
    let sb = Sandbox::new(&counting_task(1));
    let notify = sb.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).expect("bind");
    listener.set_read_timeout(Some(SECS(30))).expect("timeout");
    let mut child = procyard_core::Command::new(sandbox::BIN)
        .arg("run")
        .arg("--config")
        .arg(&sb.config)
        .env("NOTIFY_SOCKET", &notify)
        .stdout(procyard_core::Stdio::Null)
        .stderr(procyard_core::Stdio::Null)
        .spawn()
        .expect("spawn");
    let mut buf = [0u8; 64];
    let n = listener.recv(&mut buf).expect("notification");
    assert_eq!(&buf[..n], b"READY=1");
    child.signal(Signal::TERM).expect("term");
    assert!(child.wait_timeout(SECS(10)).expect("wait").is_some_and(|e| e.success()));
    let n = listener.recv(&mut buf).expect("stopping");
    assert_eq!(&buf[..n], b"STOPPING=1");
}
