//! Real `procyard-daemon` processes sharing one PostgreSQL schema (see `common/pg.rs`): every
//! job done exactly once by three daemons; a SIGKILLed daemon's jobs back in `ready` within a
//! second, nothing lost; a daemon whose connections are terminated reconnects, nothing lost;
//! `job` and `logs` from a daemon that did not run the job; a bad URL named at start.

#[path = "common/pg.rs"]
mod pg;
#[path = "common/ready.rs"]
mod ready;

#[path = "common/dirwatch.rs"]
mod dirwatch;
use dirwatch::DirWatch;

use std::collections::BTreeMap;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pg::Schema;
use procyard_daemon::queue::{self, OpenMode, TaskBinding};

const MAX_WORKERS: usize = 4;
/// The most jobs a daemon killed or cut off runs that run again elsewhere: those running, and
/// those its workers took from the jobs it held ahead in the loop turn that met the loss,
/// before its write failed (`queue/postgres/ahead.rs`).
const RERUNS: usize = 2 * MAX_WORKERS;
/// How long a test may wait for its jobs (seconds of work on a quiet machine; this holds on
/// one several times slower, and a real hang still fails).
const JOBS_DEADLINE: Duration = Duration::from_secs(300);

/// Daemons on one schema; daemon `i` runs the echo worker writing to `out-i/<job id>`.
struct Cluster {
    schema: Schema,
    dir: tempfile::TempDir,
    watch: DirWatch,
    daemons: Vec<Option<Child>>,
}

impl Cluster {
    fn start(schema: Schema, n: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let outs: Vec<PathBuf> = (0..n).map(|i| dir.path().join(format!("out-{i}"))).collect();
        for o in &outs {
            std::fs::create_dir(o).unwrap();
        }
        let watch = DirWatch::new(&outs);
        let mut cluster = Cluster { schema, dir, watch, daemons: Vec::new() };
        for i in 0..n {
            let config = cluster.write_config(i);
            let mut child = ready::daemon_command(&config)
                .env("RUST_LOG", "warn")
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn procyard-daemon");
            let line = ready::ready_line(&mut child, Duration::from_secs(60));
            cluster.daemons.push(Some(child));
            match line {
                Some(line) => assert!(line.starts_with("ready"), "daemon {i} not ready: {line:?}"),
                None => panic!("daemon {i} not ready within 60 s"),
            }
        }
        cluster
    }

    fn out(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("out-{i}"))
    }

    fn config(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("d{i}.toml"))
    }

    fn write_config(&self, i: usize) -> PathBuf {
        let worker = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/echo_worker.py");
        let text = format!(
            r#"[daemon]
grace_period = "5s"
control_socket = "{sock}"
{queue}
[[task]]
name = "work"
routing_keys = ["work.#"]
command = ["python3", "{worker}"]
work_model = "longlived"
min_workers = 1
max_workers = {MAX_WORKERS}
max_attempts = 3
backoff_initial = "50ms"
env = {{ ECHO_OUT_DIR = "{out}" }}
"#,
            sock = self.dir.path().join(format!("d{i}.sock")).display(),
            queue = self.schema.toml(),
            out = self.out(i).display(),
        );
        std::fs::write(self.config(i), text).expect("write config");
        self.config(i)
    }

    /// Publishes `n` jobs with `payload` in one batch; returns their ids.
    fn publish(&self, n: usize, payload: &str) -> Vec<String> {
        let mut client = queue::open(&self.schema.config(), OpenMode::Client).expect("client");
        let binding = TaskBinding {
            name: "work".into(),
            routing_keys: vec!["work.#".into()],
            max_attempts: 3,
        };
        client.bind(&[binding]).expect("bind");
        client.publish_batch("work.job", &vec![payload.as_bytes().to_vec(); n]).expect("publish")
    }

    /// Job id → how many times it ran, per daemon.
    fn runs(&self) -> Vec<BTreeMap<String, usize>> {
        (0..self.daemons.len())
            .map(|i| {
                let mut m = BTreeMap::new();
                for e in std::fs::read_dir(self.out(i)).unwrap().flatten() {
                    let n = std::fs::read(e.path()).map(|b| b.len()).unwrap_or(0);
                    m.insert(e.file_name().to_string_lossy().into_owned(), n);
                }
                m
            })
            .collect()
    }

    /// Waits until every job of `ids` ran at least once; returns the total runs per job.
    fn wait_all(&self, ids: &[String]) -> BTreeMap<String, usize> {
        let deadline = Instant::now() + JOBS_DEADLINE;
        loop {
            let mut total: BTreeMap<String, usize> = BTreeMap::new();
            for m in self.runs() {
                for (id, n) in m {
                    *total.entry(id).or_default() += n;
                }
            }
            if ids.iter().all(|id| total.get(id).is_some_and(|n| *n > 0)) {
                return total;
            }
            let ran = ids.iter().filter(|id| total.contains_key(*id)).count();
            assert!(Instant::now() < deadline, "only {ran} of {} jobs ran", ids.len());
            self.watch.wait(Duration::from_millis(500));
        }
    }

    fn cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_procyard-daemon"))
            .args(args)
            .arg("--config")
            .arg(self.config(i))
            .output()
            .expect("run procyard-daemon")
    }

    /// The database number and name of the daemon with OS pid `pid`.
    fn daemon_row(&self, pid: u32) -> (i64, String) {
        let row = self
            .schema
            .client()
            .query_one(
                &format!("SELECT no, name FROM {}.daemons WHERE os_pid = $1", self.schema.name),
                &[&(pid as i32)],
            )
            .expect("the daemon's row");
        (row.get(0), row.get(1))
    }

    fn stop_all(&mut self) {
        for child in self.daemons.iter_mut().filter_map(Option::take) {
            stop(child);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// SIGTERM, then wait (a graceful stop finishes quickly with idle workers).
fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

fn twice(total: &BTreeMap<String, usize>) -> Vec<(&String, &usize)> {
    total.iter().filter(|(_, n)| **n > 1).collect()
}

#[test]
fn pg_daemons_three_share_ten_thousand_jobs_each_once() {
    let Some(schema) = Schema::new("pg_daemons_three_share_ten_thousand_jobs_each_once") else {
        return;
    };
    let mut cluster = Cluster::start(schema, 3);
    let ids = cluster.publish(10_000, "x");
    let total = cluster.wait_all(&ids);
    cluster.stop_all();
    let per: Vec<usize> = cluster.runs().iter().map(BTreeMap::len).collect();
    eprintln!("per daemon: {per:?}");
    assert_eq!(total.len(), 10_000);
    assert!(twice(&total).is_empty(), "jobs run twice without any fault: {:?}", twice(&total));
    assert!(per.iter().filter(|n| **n > 0).count() >= 2, "the queue was not shared: {per:?}");
}

/// Waits for notifications on the schema's channel until `done` holds or `deadline` passes;
/// returns whether it held.
fn wait_notified(schema: &Schema, deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    let mut listener = schema.client();
    listener.batch_execute(&format!("LISTEN {}_jobs", schema.name)).unwrap();
    loop {
        if done() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut n = listener.notifications();
        let _ = postgres::fallible_iterator::FallibleIterator::next(&mut n.timeout_iter(left));
    }
}

#[test]
fn pg_daemons_sigkilled_daemon_jobs_back_within_a_second() {
    let Some(schema) = Schema::new("pg_daemons_sigkilled_daemon_jobs_back_within_a_second") else {
        return;
    };
    let mut cluster = Cluster::start(schema, 2);
    let ids = cluster.publish(400, "sleep 0.05");
    let deadline = Instant::now() + JOBS_DEADLINE;
    while cluster.runs()[0].len() < 20 {
        assert!(Instant::now() < deadline, "daemon 0 never ran 20 jobs");
        cluster.watch.wait(Duration::from_millis(500));
    }
    let victim = cluster.daemons[0].take().expect("daemon 0");
    let (no, _) = cluster.daemon_row(victim.id());
    let leased = format!(
        "SELECT id FROM {}.jobs WHERE state = 1 AND lease_owner = $1 AND worker_pid IS NOT NULL",
        cluster.schema.name
    );
    let mut db = cluster.schema.client();
    let mut victim = victim;
    // It runs 4 jobs of 50 ms at a time: it holds some at any moment (the others may put
    // them back as soon as it is killed, so they are counted before).
    let held: Vec<String> = db.query(&leased, &[&no]).unwrap().iter().map(|r| r.get(0)).collect();
    victim.kill().expect("SIGKILL");
    let killed = Instant::now();
    victim.wait().expect("reap");
    assert!(!held.is_empty(), "the daemon about to be killed held no job");
    let back = wait_notified(&cluster.schema, killed + Duration::from_secs(5), || {
        db.query(&leased, &[&no]).unwrap().is_empty()
    });
    let took = killed.elapsed();
    eprintln!("SIGKILL: {} jobs of the killed daemon back in {took:?}", held.len());
    assert!(back, "the killed daemon's jobs were not put back");
    assert!(took < Duration::from_secs(1), "put back after {took:?}");
    let lost: String = db
        .query_one(
            &format!(
                "SELECT j.id FROM {s}.attempts a JOIN {s}.jobs j ON j.seq = a.job_seq
                 WHERE a.outcome LIKE '%daemon_lost%' LIMIT 1",
                s = cluster.schema.name
            ),
            &[],
        )
        .expect("an attempt recorded daemon lost")
        .get(0);
    let record = cluster.cli(1, &["job", "--json", &lost]);
    let text = String::from_utf8_lossy(&record.stdout);
    assert!(text.contains("daemon_lost"), "{text}");
    let total = cluster.wait_all(&ids);
    cluster.stop_all();
    assert_eq!(total.len(), ids.len(), "jobs lost");
    assert!(twice(&total).len() <= RERUNS, "ran twice: {:?}", twice(&total));
}

#[test]
fn pg_daemons_terminated_session_reconnects_and_loses_nothing() {
    let Some(schema) = Schema::new("pg_daemons_terminated_session_reconnects_and_loses_nothing")
    else {
        return;
    };
    let mut cluster = Cluster::start(schema, 2);
    let ids = cluster.publish(400, "sleep 0.02");
    let deadline = Instant::now() + JOBS_DEADLINE;
    while cluster.runs()[0].len() < 20 {
        assert!(Instant::now() < deadline, "daemon 0 never ran 20 jobs");
        cluster.watch.wait(Duration::from_millis(500));
    }
    let pid = cluster.daemons[0].as_ref().unwrap().id();
    let (_, name) = cluster.daemon_row(pid);
    let ended: i64 = cluster
        .schema
        .client()
        .query_one(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name LIKE 'procyard-daemon ' || $1 || '%') t",
            &[&name],
        )
        .unwrap()
        .get(0);
    assert_eq!(ended, 2, "the daemon's work and session connections");
    let before = cluster.runs()[0].len();
    // It goes on running jobs after reconnecting.
    while cluster.runs()[0].len() < before + 20 {
        assert!(Instant::now() < deadline, "daemon 0 ran nothing after its sessions ended");
        cluster.watch.wait(Duration::from_millis(500));
    }
    let total = cluster.wait_all(&ids);
    let status = cluster.cli(0, &["status", "--json"]);
    assert!(status.status.success());
    cluster.stop_all();
    assert_eq!(total.len(), ids.len(), "jobs lost");
    assert!(twice(&total).len() <= RERUNS, "ran twice: {:?}", twice(&total));
}

#[test]
fn pg_daemons_job_and_logs_from_a_daemon_that_did_not_run_it() {
    let Some(schema) = Schema::new("pg_daemons_job_and_logs_from_a_daemon_that_did_not_run_it")
    else {
        return;
    };
    let mut cluster = Cluster::start(schema, 1);
    let ids = cluster.publish(1, "hello");
    cluster.wait_all(&ids);
    // Daemon 0 ran it; a second config (daemon 1's, never started) reads the same database.
    cluster.daemons.push(None);
    cluster.write_config(1);
    let wait = cluster.cli(1, &["wait", "--timeout", "30s", &ids[0]]);
    assert!(wait.status.success(), "{}", String::from_utf8_lossy(&wait.stderr));
    let job = cluster.cli(1, &["job", "--json", &ids[0]]);
    let rec: serde_json::Value = serde_json::from_slice(&job.stdout).expect("job --json");
    assert_eq!(rec["state"], "done", "{rec}");
    assert_eq!(rec["attempts"][0]["end"]["kind"], "replied", "{rec}");
    let logs = cluster.cli(1, &["logs", &ids[0], "--stream", "stderr"]);
    // `logs` writes a job's stderr to its own stderr.
    let text = String::from_utf8_lossy(&logs.stderr);
    assert!(logs.status.success(), "{text}");
    assert!(text.contains(&format!("echo worker: job {}", ids[0])), "{text} / {rec}");
    cluster.stop_all();
}

#[test]
fn pg_bad_url_is_named_by_check_config_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    let write = |queue: &str| {
        let text = format!(
            "{queue}\n[[task]]\nname = \"w\"\nrouting_keys = [\"w\"]\ncommand = [\"true\"]\n"
        );
        std::fs::write(&config, text).unwrap();
    };
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_procyard-daemon"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    write("[queue]\nbackend = \"postgres\"\nurl = \"mysql://x\"");
    let msg = run(&["check-config"]);
    assert!(msg.contains("queue.url") && msg.contains("postgres://"), "{msg}");
    write("[queue]\nbackend = \"postgres\"\nurl = \"postgres://u:pw@127.0.0.1:1/db\"");
    let msg = run(&["publish", "w", "x"]);
    assert!(
        msg.contains("unable to connect to the PostgreSQL queue postgres://u@127.0.0.1:1/db")
            && !msg.contains("pw"),
        "{msg}"
    );
}
