//! A `procyard-daemon` on PostgreSQL whose database goes away under it: every connection
//! runs through a TCP relay in the test, which is cut and brought back. While cut, `status`
//! says the database is unreachable and a job that was running finishes; once back, the
//! daemon reconnects and records that job's outcome (it is not run again).

#[path = "common/pg.rs"]
mod pg;
#[path = "common/ready.rs"]
mod ready;

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pg::Schema;

/// A TCP relay from a local port to the database.
struct Relay {
    port: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(port: u16, upstream: String) -> Relay {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the relay");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (s, c) = (Arc::clone(&stop), Arc::clone(&conns));
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let (Ok(client), Ok(server)) = (client, TcpStream::connect(&upstream)) else {
                    continue;
                };
                let mut kept = c.lock().unwrap();
                kept.push(client.try_clone().unwrap());
                kept.push(server.try_clone().unwrap());
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, stop, conns, accept: Some(accept) }
    }

    /// Stops accepting and cuts every relayed connection.
    fn cut(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            t.join().unwrap();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// host:port of the database in `url`.
fn upstream(url: &str) -> String {
    let c: postgres::Config = url.parse().expect("url");
    let host = match c.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    format!("{host}:{}", c.get_ports().first().copied().unwrap_or(5432))
}

fn start_daemon(config: &Path) -> Child {
    let mut child = ready::daemon_command(config)
        .env("RUST_LOG", "error")
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn procyard-daemon");
    let line = ready::ready_line(&mut child, Duration::from_secs(60)).unwrap_or_default();
    assert!(line.starts_with("ready"), "not ready: {line:?}");
    child
}

fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_procyard-daemon"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run procyard-daemon")
}

/// Blocks until `path` exists (inotify on its directory), or panics at `deadline`.
fn wait_file(path: &Path, deadline: Instant) {
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    let fd = inotify::init(CreateFlags::CLOEXEC).expect("inotify");
    inotify::add_watch(&fd, path.parent().unwrap(), WatchFlags::CREATE | WatchFlags::MODIFY)
        .expect("watch");
    while !path.exists() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{} never appeared", path.display());
        let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
        let t = rustix::event::Timespec { tv_sec: left.as_secs() as _, tv_nsec: 0 };
        let _ = rustix::event::poll(&mut fds, Some(&t));
        let mut buf = [0u8; 4096];
        let _ = rustix::io::read(&fd, &mut buf);
    }
}

#[test]
fn pg_outage_status_says_unreachable_and_outcomes_are_kept_until_it_is_back() {
    let Some(schema) =
        Schema::new("pg_outage_status_says_unreachable_and_outcomes_are_kept_until_it_is_back")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(0, upstream(&schema.url));
    let port = relay.port;
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let (started, finished) = (dir.path().join("started"), dir.path().join("finished"));
    let config = dir.path().join("d.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\ncontrol_socket = \"{sock}\"\n[queue]\nbackend = \"postgres\"\n\
             url = \"{url}\"\nschema = \"{schema}\"\n[[task]]\nname = \"work\"\n\
             routing_keys = [\"work\"]\n\
             command = [\"sh\", \"-c\", \"touch {started}; sleep 1; echo ran >> {finished}\"]\n",
            sock = dir.path().join("d.sock").display(),
            schema = schema.name,
            started = started.display(),
            finished = finished.display(),
        ),
    )
    .unwrap();
    let mut daemon = start_daemon(&config);
    let published = cli(&config, &["publish", "work", "x"]);
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
    let id = String::from_utf8_lossy(&published.stdout).trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    wait_file(&started, deadline);
    relay.cut();
    // The job finishes while the database is out of reach.
    wait_file(&finished, deadline);
    let status = cli(&config, &["status", "--json"]);
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    let json: serde_json::Value = serde_json::from_str(&text).expect("status --json");
    let health = &json["queue"];
    assert_eq!(health["ok"], false, "{text}");
    assert!(health["detail"].as_str().unwrap_or("").contains("database unreachable"), "{text}");
    // Back: the daemon reconnects and records the outcome it kept.
    let _relay = Relay::start(port, upstream(&schema.url));
    let waited = cli(&config, &["wait", "--timeout", "60s", &id]);
    assert!(waited.status.success(), "{}", String::from_utf8_lossy(&waited.stderr));
    let job = cli(&config, &["job", "--json", &id]);
    let rec: serde_json::Value = serde_json::from_slice(&job.stdout).expect("job --json");
    assert_eq!(rec["state"], "done", "{rec}");
    assert_eq!(rec["attempts"].as_array().map(Vec::len), Some(1), "{rec}");
    assert_eq!(std::fs::read_to_string(&finished).unwrap(), "ran\n", "run once");
    let _ = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status();
    let _ = daemon.wait();
}

/// `publish --wait` asks the daemon behind its control socket, which here runs another task:
/// the job runs on the other daemon, and the wait still ends when it does (the database
/// tells every client of job ends), with the job's exit status.
#[test]
fn pg_publish_wait_ends_when_another_daemon_runs_the_job() {
    let Some(schema) = Schema::new("pg_publish_wait_ends_when_another_daemon_runs_the_job") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str, socket: &str, task: &str, command: &str| {
        task_config(dir.path(), &schema, name, socket, task, command, 1)
    };
    // Daemon a serves only task `idle`; daemon b serves `work`.
    let a = config("a", "a.sock", "idle", "true");
    let b = config("b", "b.sock", "work", "cat >/dev/null; sleep 0.3");
    let mut daemons = [start_daemon(&a), start_daemon(&b)];
    // The client publishes `work` jobs and waits through daemon a's socket.
    let client = config("c", "a.sock", "work", "true");
    for _ in 0..2 {
        let started = Instant::now();
        let out = cli(&client, &["publish", "--wait", "--timeout", "120s", "work.x", "x"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        // Daemon a never hears of the job's end: asked alone, it holds the wait to its
        // timeout. The end must be seen when it happens (a 0.3 s job), not then.
        let took = started.elapsed();
        eprintln!("publish --wait through another daemon: {took:?}");
        assert!(took < Duration::from_secs(30), "the wait ended only after {took:?}");
    }
    for d in &mut daemons {
        let _ = Command::new("kill").args(["-TERM", &d.id().to_string()]).status();
        let _ = d.wait();
    }
}

/// `cancel` of a job running on another daemon than the one behind the client's control
/// socket: every daemon hears the request, the one running it stops it; `wait` exits 2.
#[test]
fn pg_cancel_reaches_the_daemon_running_the_job() {
    let Some(schema) = Schema::new("pg_cancel_reaches_the_daemon_running_the_job") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let config = |name: &str, socket: &str, task: &str, command: &str| {
        task_config(dir.path(), &schema, name, socket, task, command, 3)
    };
    let a = config("a", "a.sock", "idle", "true");
    let b = config("b", "b.sock", "work", &format!("touch {}; sleep 60", started.display()));
    let mut daemons = [start_daemon(&a), start_daemon(&b)];
    let client = config("c", "a.sock", "work", "true");
    let out = cli(&client, &["publish", "work.x", "x"]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    wait_file(&started, Instant::now() + Duration::from_secs(60));
    let cancel = cli(&client, &["cancel", &id]);
    assert!(cancel.status.success(), "{}", String::from_utf8_lossy(&cancel.stderr));
    let waited = cli(&client, &["wait", "--timeout", "30s", &id]);
    assert_eq!(waited.status.code(), Some(2), "{}", String::from_utf8_lossy(&waited.stdout));
    let job = cli(&client, &["job", "--json", &id]);
    let rec: serde_json::Value = serde_json::from_slice(&job.stdout).expect("job --json");
    assert_eq!(rec["state"], "cancelled", "{rec}");
    assert_eq!(rec["attempts"].as_array().map(Vec::len), Some(1), "never retried: {rec}");
    for d in &mut daemons {
        let _ = Command::new("kill").args(["-TERM", &d.id().to_string()]).status();
        let _ = d.wait();
    }
}

/// Writes `<name>.toml` in `dir`: the control socket `socket`, the schema's queue, and one
/// oneshot task `task` running `sh -c command`, bound to `<task>.#`.
fn task_config(
    dir: &std::path::Path,
    schema: &Schema,
    name: &str,
    socket: &str,
    task: &str,
    command: &str,
    max_attempts: u32,
) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[daemon]\ncontrol_socket = \"{sock}\"\n{queue}[[task]]\nname = \"{task}\"\n\
             routing_keys = [\"{task}.#\"]\ncommand = [\"sh\", \"-c\", \"{command}\"]\n\
             max_attempts = {max_attempts}\n",
            sock = dir.join(socket).display(),
            queue = schema.toml(),
        ),
    )
    .unwrap();
    path
}
