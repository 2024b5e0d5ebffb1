//! Cancelling a job that runs in a longlived worker (issue 16): a worker that understands
//! cancel frames (a real Rust worker built on `procyard_daemon::worker::serve_cancellable`)
//! stops the job, which ends `cancelled`, and stays alive for the next job; one that does not
//! answer within the kill timeout gets the stop ladder. (An older worker, with no hello, is
//! `lifecycle::daemon_lifecycle_cancel_delayed_and_longlived`.)

use std::io::{BufReader, BufWriter};
use std::time::Duration;

use procyard_daemon::Client;
use procyard_daemon::queue::{AttemptEnd, JobRecord, JobState};
use procyard_daemon::worker::{Outcome, serve_cancellable_on};

use crate::sandbox::Sandbox;

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// Set in the worker's environment: this test binary then serves as the Rust worker.
const WORKER_ENV: &str = "PROCYARD_TEST_RUST_WORKER";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn job(sb: &Sandbox, id: &str) -> JobRecord {
    Client::new(sb.load_config()).job(id).expect("job")
}

/// The config of a longlived task `name` served by the Rust worker (this test binary).
pub fn rust_worker_task(name: &str) -> String {
    let exe = std::env::current_exe().expect("test executable");
    let exe = exe.to_str().expect("utf-8 path");
    let script =
        "exec \"$0\" --exact cancel::rust_worker_entry --nocapture --test-threads=1 3>&1 1>&2";
    format!(
        "[[task]]\nname = \"{name}\"\nrouting_keys = [\"{name}.#\"]\ncommand = [\"sh\", \"-c\", {script:?}, {exe:?}]\nwork_model = \"longlived\"\nmin_workers = 1\nmax_workers = 1\nmax_attempts = 3\nenv = {{ {WORKER_ENV} = \"1\" }}\n"
    )
}

/// Not a test: the Rust worker, when this binary is started with [`WORKER_ENV`] set (libtest
/// prints on stdout, so the worker's command moves stdout to descriptor 3 and the protocol
/// goes there). Payload `wait-cancel` waits for the cancel and answers it; `ignore-cancel`
/// ignores it; anything else is done at once.
#[test]
fn rust_worker_entry() {
    if std::env::var_os(WORKER_ENV).is_none() {
        return;
    }
    let protocol = std::fs::OpenOptions::new().write(true).open("/proc/self/fd/3").expect("fd 3");
    let announce = std::env::var_os(procyard_daemon::protocol::PROTOCOL_ENV).is_some();
    let stdin = BufReader::new(std::io::stdin());
    let result = serve_cancellable_on(stdin, BufWriter::new(protocol), announce, |job, cancel| {
        let payload = text(&job.payload);
        // One write: `eprintln!` writes its pieces one by one, and the daemon's own log lines
        // (which the test reads this line among) could land between them.
        let line = format!("rust worker {}: job {} {payload}\n", std::process::id(), job.id);
        std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes()).expect("stderr");
        match payload.as_str() {
            "wait-cancel" if cancel.wait_timeout(SECS(120)) => {
                eprintln!("rust worker: stopped job {} on its cancel", job.id);
                Outcome::Cancelled
            }
            "wait-cancel" => Outcome::Fail("never cancelled".into()),
            // For `logs -f`: a line, then (once the file `go` appears) another.
            p if p.starts_with("lines:") => {
                let go = std::path::Path::new(&p["lines:".len()..]).join("go");
                eprintln!("first line");
                while !go.exists() && !cancel.wait_timeout(Duration::from_millis(20)) {}
                eprintln!("second line");
                Outcome::Done
            }
            // For the prefetch tests: a side effect per run, and a first attempt that blocks
            // (until the worker is killed).
            p if p.starts_with("mark:") => {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p["mark:".len()..])
                    .expect("mark file");
                f.write_all(b"x").expect("mark");
                Outcome::Done
            }
            "hold-first" if job.attempt == 1 => {
                let (_keep, never) = std::sync::mpsc::channel::<()>();
                let _ = never.recv_timeout(SECS(120));
                Outcome::Done
            }
            "ignore-cancel" => {
                let (_keep, never) = std::sync::mpsc::channel::<()>();
                let _ = never.recv_timeout(SECS(120));
                Outcome::Done
            }
            _ => Outcome::Done,
        }
    });
    if let Err(e) = result {
        eprintln!("rust worker: {e}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

/// The worker answers a cancel frame: the job ends `cancelled` with one attempt, the same
/// worker process runs the next job. A worker that ignores the frame is stopped after the
/// kill timeout (2 s here) and its job still ends `cancelled`, never retried.
#[test]
fn daemon_cancel_frame_rust_worker() {
    let mut sb = Sandbox::new(&rust_worker_task("rw"));
    sb.start();
    // The worker said hello before it took a job: once its line about the job is relayed,
    // the daemon has read the hello too (it was written first, on the other pipe).
    let running = |sb: &Sandbox, id: &str| {
        sb.wait_until("the worker runs the job", SECS(30), |sb| {
            sb.log().contains(&format!("job {id}"))
        })
    };

    let first = sb.publish("rw.a", b"wait-cancel").remove(0);
    running(&sb, &first);
    let out = sb.cli(&["cancel", &first]);
    assert!(text(&out.stdout).contains("cancelling"), "{}", text(&out.stderr));
    let out = sb.cli(&["wait", "--timeout", "30s", &first]);
    assert_eq!(out.status.code(), Some(2), "cancelled: {}", text(&out.stderr));
    let j = job(&sb, &first);
    assert_eq!((j.state, j.attempts.len()), (JobState::Cancelled, 1));
    let a = &j.attempts[0];
    assert_eq!(a.end, Some(AttemptEnd::Cancelled));
    let err = text(&a.stderr.as_ref().expect("stderr kept").bytes);
    assert!(err.contains(&format!("stopped job {first} on its cancel")), "answered: {err:?}");
    let pid = a.worker_pid.expect("pid");

    let out = sb.cli(&["publish", "--wait", "--timeout", "30s", "rw.b", "quick"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let next = text(&out.stdout).split_whitespace().next().expect("id").to_owned();
    assert_eq!(job(&sb, &next).attempts[0].worker_pid, Some(pid), "the same worker serves on");

    let stubborn = sb.publish("rw.c", b"ignore-cancel").remove(0);
    running(&sb, &stubborn);
    let out = sb.cli(&["cancel", &stubborn]);
    assert!(text(&out.stdout).contains("cancelling"), "{}", text(&out.stderr));
    let out = sb.cli(&["wait", "--timeout", "30s", &stubborn]);
    assert_eq!(out.status.code(), Some(2), "cancelled: {}", text(&out.stderr));
    let j = job(&sb, &stubborn);
    assert_eq!((j.state, j.attempts.len()), (JobState::Cancelled, 1), "never retried");
    assert_eq!(j.attempts[0].end, Some(AttemptEnd::Cancelled));
    assert!(sb.log().contains("did not answer the cancel"), "{}", sb.log());

    let out = sb.cli(&["publish", "--wait", "--timeout", "30s", "rw.d", "quick"]);
    assert_eq!(out.status.code(), Some(0), "a new worker serves: {}", text(&out.stderr));
    let last = text(&out.stdout).split_whitespace().next().expect("id").to_owned();
    assert_ne!(job(&sb, &last).attempts[0].worker_pid, Some(pid), "the stubborn one was replaced");
}
