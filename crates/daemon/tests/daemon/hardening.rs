//! Issue 13, the daemon's share of the safety boundary: files it never destroys, data other
//! users cannot read, full disks and damaged or vanished queue files met with a clear error
//! and nothing half-done, control connections that cannot starve it, one payload limit for
//! every backend, errors that keep their cause, configs that cannot work refused up front.
//!
//! Tests that need root (another uid through `setpriv`, a tmpfs in a private mount
//! namespace) print a skip notice and return when not run as root.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use procyard_daemon::queue::{self, MAX_PAYLOAD, OpenMode};
use procyard_daemon::{Config, Error};

use crate::sandbox::{BIN, Sandbox};

use crate::broker;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// A oneshot task that appends one byte to out/<payload>.
const COUNT_TASK: &str = r#"[[task]]
name = "count"
routing_keys = ["count.#"]
command = ["sh", "-c", "printf x >> {out}/$(cat)"]
max_workers = 2
max_attempts = 2
backoff_initial = "50ms"
"#;

fn is_root(test: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("SKIP {test}: needs root (another uid through setpriv, or a private tmpfs)");
    }
    root
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).mode() & 0o7777
}

/// The ready jobs of the queue that `config` names, per task.
fn ready_jobs(config: &Config, task: &str) -> u64 {
    let mut q = queue::open(&config.queue, OpenMode::Client).expect("open queue");
    q.bind(&config.bindings()).expect("bind");
    q.depths().expect("depths")[task].ready
}

/// Runs the daemon expecting it to refuse to start: returns what it printed.
fn run_refused(sb: &mut Sandbox) -> String {
    let log = sb.path().join("daemon.log");
    let _ = std::fs::remove_file(&log);
    let _reader = sb.spawn_daemon(None);
    let exit = sb.wait_exit(SECS(30));
    let printed = sb.log();
    assert!(
        exit.as_ref().is_some_and(|e| e.code() == Some(1)),
        "the daemon must exit 1, got {exit:?}:\n{printed}"
    );
    printed
}

#[test]
fn daemon_hardening_control_socket_on_regular_file_refused() {
    for (socket, field_error) in [
        ("{dir}/q.db", "is a file of the queue"),
        ("{dir}/notes.txt", "is a regular file, not a socket"),
    ] {
        let mut sb = Sandbox::new(COUNT_TASK);
        let notes = sb.path().join("notes.txt");
        std::fs::write(&notes, b"precious notes\n").expect("write notes");
        for i in 0..3 {
            let out = sb.cli(&["publish", "count.job", &format!("j{i}")]);
            assert!(out.status.success(), "publish: {}", text(&out.stderr));
        }
        let good = sb.load_config();
        sb.write_config(&format!("control_socket = \"{socket}\""), COUNT_TASK);
        let queue_file = sb.path().join("q.db");
        let before = std::fs::read(&queue_file).expect("read queue");

        let out = sb.cli(&["check-config"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "check-config must refuse: {err}");
        assert!(err.contains("daemon.control_socket") && err.contains(field_error), "{err}");

        let printed = run_refused(&mut sb);
        assert!(
            printed.contains("daemon.control_socket") && printed.contains(field_error),
            "{printed}"
        );

        assert_eq!(std::fs::read(&queue_file).expect("read queue"), before, "queue file intact");
        assert_eq!(std::fs::read(&notes).expect("notes"), b"precious notes\n", "file intact");
        assert_eq!(ready_jobs(&good, "count"), 3, "every job still queued");
    }
}

#[test]
fn daemon_hardening_queue_files_private() {
    if !is_root("daemon_hardening_queue_files_private") {
        return;
    }
    // The queue's directory is created by the daemon (0700), or exists already and is open
    // to others (a warning); either way, with umask 000, every file of the queue is 0600.
    for fresh_dir in [true, false] {
        let mut sb = Sandbox::new(COUNT_TASK);
        std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o755))
            .expect("open the sandbox to others");
        let dir = if fresh_dir { sb.path().join("data") } else { sb.path().to_owned() };
        sb.write_raw_config(&format!(
            "[daemon]\ncontrol_socket = \"{{dir}}/q.sock\"\n[queue]\npath = \"{}/q.db\"\n\n{COUNT_TASK}",
            dir.display()
        ));
        sb.start_with(Some("umask 000"));
        let out = sb.cli(&["publish", "count.job", "first"]);
        assert!(out.status.success(), "publish: {}", text(&out.stderr));
        sb.wait_until("the job", SECS(20), |sb| sb.side_effects().len() == 1);

        let db = dir.join("q.db");
        if fresh_dir {
            assert_eq!(mode(&dir), 0o700, "a directory the daemon creates is 0700");
        } else {
            let log = sb.log();
            assert!(log.contains("open to other users"), "warned about the 0755 directory:\n{log}");
        }
        for suffix in ["", "-wal", "-shm", ".lock"] {
            let file = PathBuf::from(format!("{}{suffix}", db.display()));
            assert_eq!(mode(&file), 0o600, "{} is private", file.display());
        }
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(&db)
            .output()
            .expect("run setpriv");
        assert!(!out.status.success(), "uid 65534 read the queue");
        assert!(out.stdout.is_empty());
        assert!(text(&out.stderr).contains("Permission denied"), "{}", text(&out.stderr));
    }
}

/// A tmpfs mounted over `dir` in a private mount namespace, held by a process that lives
/// until this is dropped; commands run inside it through `nsenter`, and its files are
/// reachable from outside through `/proc/PID/root`.
struct PrivateTmpfs {
    holder: std::process::Child,
    pid: u32,
}

impl PrivateTmpfs {
    fn mount(dir: &Path, size: &str) -> PrivateTmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o "size=$1,mode=0700" procyard-test "$2" && echo mounted && exec cat"#)
            .arg("sh")
            .arg(size)
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn unshare");
        let mut line = String::new();
        let stdout = holder.stdout.take().expect("stdout");
        BufReader::new(stdout).read_line(&mut line).expect("read from unshare");
        assert_eq!(line, "mounted\n", "the tmpfs could not be mounted");
        let pid = holder.id();
        PrivateTmpfs { holder, pid }
    }

    /// `path` as seen inside the namespace.
    fn inside(&self, path: &Path) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.pid)).join(path.strip_prefix("/").expect("abs"))
    }

    /// `program` run inside the namespace.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t").arg(self.pid.to_string()).arg("-m").arg("--").arg(program);
        cmd
    }

    /// The daemon's CLI inside the namespace.
    fn cli(&self, sb: &Sandbox, args: &[&str], stdin: Option<&Path>) -> Output {
        let mut cmd = self.command(BIN);
        cmd.arg(args[0]).arg("--config").arg(&sb.config).args(&args[1..]);
        if let Some(input) = stdin {
            cmd.stdin(std::fs::File::open(input).expect("stdin file"));
        }
        cmd.output().expect("run the cli inside the namespace")
    }

    /// The ready jobs of the sandbox's queue (on the tmpfs, no process using it), read from a
    /// copy: SQLite resolves `/proc/PID/root` as a symbolic link to `/`, outside the namespace.
    fn ready_jobs(&self, sb: &Sandbox, task: &str) -> u64 {
        let mut config = sb.load_config();
        let copy = sb.path().join("copy");
        let _ = std::fs::remove_dir_all(&copy);
        std::fs::create_dir(&copy).expect("copy dir");
        for suffix in ["", "-wal"] {
            let from = PathBuf::from(format!("{}{suffix}", config.queue.path.display()));
            let _ = std::fs::copy(self.inside(&from), copy.join(format!("q.db{suffix}")));
        }
        config.queue.path = copy.join("q.db");
        ready_jobs(&config, task)
    }

    /// Writes `file` (a path inside the namespace) until the tmpfs is full.
    fn fill(&self, file: &Path) -> std::fs::File {
        let mut f = std::fs::File::create(self.inside(file)).expect("create filler");
        let chunk = vec![0x5a_u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                    break;
                }
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        f
    }
}

impl Drop for PrivateTmpfs {
    fn drop(&mut self) {
        drop(self.holder.stdin.take());
        let _ = self.holder.wait();
    }
}

fn tmpfs_config(sb: &Sandbox, tasks: &str) {
    sb.write_raw_config(&format!(
        "[daemon]\ncontrol_socket = \"{{dir}}/q.db.sock\"\ngrace_period = \"2s\"\n\n[queue]\npath = \"{{dir}}/tmpfs/q.db\"\n\n{tasks}"
    ));
}

#[test]
fn daemon_hardening_publish_batch_all_or_nothing() {
    if !is_root("daemon_hardening_publish_batch_all_or_nothing") {
        return;
    }
    let sb = Sandbox::new(COUNT_TASK);
    tmpfs_config(&sb, COUNT_TASK);
    let mount = sb.path().join("tmpfs");
    let fs = PrivateTmpfs::mount(&mount, "8m");
    let out = fs.cli(&sb, &["publish", "count.job", "first"], None);
    assert!(out.status.success(), "publish on the tmpfs: {}", text(&out.stderr));

    // 100 jobs of 2 KB each, with 128 KiB free: some would fit one by one, the batch does
    // not.
    let lines = sb.path().join("lines");
    let body: String = (0..100).map(|i| format!("{i:03}{}\n", "p".repeat(2000))).collect();
    std::fs::write(&lines, body).expect("write lines");
    let filler = mount.join("fill");
    let f = fs.fill(&filler);
    let len = f.metadata().expect("filler").len();
    f.set_len(len.saturating_sub(128 * 1024)).expect("free 128 KiB");
    drop(f);

    let out = fs.cli(&sb, &["publish", "--lines", "count.batch"], Some(&lines));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the batch fails on a full disk: {err}");
    assert!(err.contains("database or disk is full"), "the cause is named: {err}");
    assert!(out.stdout.is_empty(), "no job was queued, so no id: {}", text(&out.stdout));

    std::fs::remove_file(fs.inside(&filler)).expect("free the space");
    assert_eq!(fs.ready_jobs(&sb, "count"), 1, "none of the failed batch was committed");

    let out = fs.cli(&sb, &["publish", "--lines", "count.batch"], Some(&lines));
    assert!(out.status.success(), "with space the batch goes in: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 100, "every id printed");
    assert_eq!(fs.ready_jobs(&sb, "count"), 101);
}

#[test]
fn daemon_hardening_full_disk_recovers() {
    if !is_root("daemon_hardening_full_disk_recovers") {
        return;
    }
    let gate_task = r#"[[task]]
name = "gated"
routing_keys = ["gated"]
command = ["sh", "-c", "p=$(cat); if [ \"$p\" = A ]; then : > {dir}/A.started; read x < {dir}/gate; fi; printf x >> {out}/$p"]
max_workers = 1
max_attempts = 5
backoff_initial = "50ms"
"#;
    let mut sb = Sandbox::new(gate_task);
    tmpfs_config(&sb, gate_task);
    let gate = sb.path().join("gate");
    let status = Command::new("mkfifo").arg(&gate).status().expect("mkfifo");
    assert!(status.success());
    let mount = sb.path().join("tmpfs");
    let fs = PrivateTmpfs::mount(&mount, "8m");
    let pid = fs.pid.to_string();
    sb.start_wrapped(&["nsenter", "-t", &pid, "-m", "--"]);

    // A holds the only worker; B..E wait in the queue.
    let input = sb.path().join("jobs");
    std::fs::write(&input, "A\nB\nC\nD\nE\n").expect("write jobs");
    let out = fs.cli(&sb, &["publish", "--lines", "gated"], Some(&input));
    assert!(out.status.success(), "publish: {}", text(&out.stderr));
    let started = sb.path().join("A.started");
    sb.wait_until("job A running", SECS(20), |_| started.exists());

    // Fill the disk, then let A finish: recording it and claiming B needs space.
    let filler = mount.join("fill");
    drop(fs.fill(&filler));
    let mut gate_writer = None;
    sb.wait_until("job A reading its gate", SECS(20), |_| {
        gate_writer = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&gate)
            .ok();
        gate_writer.is_some()
    });
    gate_writer.expect("gate").write_all(b"go\n").expect("open the gate");
    sb.wait_until("the queue reported unhealthy", SECS(30), |sb| {
        let health = sb.status().queue;
        !health.ok && health.detail.contains("database or disk is full")
    });
    let human = text(&sb.cli(&["status"]).stdout);
    assert!(human.contains("UNHEALTHY") && human.contains("database or disk is full"), "{human}");
    let json: serde_json::Value =
        serde_json::from_slice(&sb.cli(&["status", "--json"]).stdout).expect("status json");
    assert_eq!(json["queue"]["ok"], serde_json::Value::Bool(false), "{json}");
    let log = sb.log();
    assert!(log.contains("database or disk is full"), "the log names the cause:\n{log}");
    assert_eq!(sb.side_effects(), vec![("A".to_owned(), 1)], "nothing ran on the full disk");

    // Space comes back: the ready jobs run without another publish.
    std::fs::remove_file(fs.inside(&filler)).expect("free the space");
    sb.wait_until("B..E run after the space came back", SECS(30), |sb| {
        sb.side_effects().len() == 5
    });
    assert!(sb.side_effects().iter().all(|(_, n)| *n == 1), "each job ran once");
    sb.wait_until("the queue healthy again", SECS(20), |sb| sb.status().queue.ok);
}

#[test]
fn daemon_hardening_queue_file_replaced_detected() {
    for replace in [true, false] {
        let mut sb = Sandbox::new(COUNT_TASK);
        sb.start();
        sb.publish("count.job", b"first");
        sb.wait_until("the first job", SECS(20), |sb| sb.side_effects().len() == 1);
        let db = sb.path().join("q.db");
        if replace {
            let other = sb.path().join("other.db");
            std::fs::write(&other, b"").expect("write");
            std::fs::rename(&other, &db).expect("replace the queue file");
        } else {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
        }
        let exit = sb.wait_exit(SECS(30));
        let log = sb.log();
        assert!(
            exit.as_ref().is_some_and(|e| e.code() == Some(1)),
            "the daemon stops with an error, got {exit:?}:\n{log}"
        );
        let change = if replace { "was replaced by another file" } else { "was deleted" };
        assert!(
            log.contains(&format!("queue {} {change}", db.display())),
            "the error names the path and the change:\n{log}"
        );
    }
}

#[test]
fn daemon_hardening_corrupt_queue_refused() {
    let mut sb = Sandbox::new(COUNT_TASK);
    let payload = vec![b'c'; 600];
    sb.publish_many("count.job", (0..200).map(|_| payload.clone()));
    // The publisher's connection was the last one: everything is in the main file now.
    let db = sb.path().join("q.db");
    let mut bytes = std::fs::read(&db).expect("read queue");
    let pages = bytes.len() / 4096;
    assert!(pages > 10, "a queue of {pages} pages");
    let page = pages / 2;
    for b in &mut bytes[page * 4096..page * 4096 + 4096] {
        *b = 0xa5;
    }
    std::fs::write(&db, &bytes).expect("corrupt a page");

    let printed = run_refused(&mut sb);
    assert!(
        printed.contains(&format!("queue {} is corrupt", db.display())),
        "a clear refusal naming the file:\n{printed}"
    );
    assert_eq!(std::fs::read(&db).expect("read queue"), bytes, "the file is left as it was");
}

#[test]
fn daemon_hardening_idle_control_connections() {
    let mut sb = Sandbox::new(COUNT_TASK);
    sb.start_wrapped(&["prlimit", "--nofile=64:64", "--"]);
    let idle: Vec<std::os::unix::net::UnixStream> = (0..80)
        .map(|_| std::os::unix::net::UnixStream::connect(sb.socket()).expect("connect"))
        .collect();

    let out = sb.cli(&["status"]);
    assert!(out.status.success(), "status with 80 idle connections: {}", text(&out.stderr));
    let out = sb.cli(&["publish", "count.job", "after"]);
    assert!(out.status.success(), "publish: {}", text(&out.stderr));
    sb.wait_until("the job published after the idle ones", SECS(20), |sb| {
        sb.side_effects() == vec![("after".to_owned(), 1)]
    });
    // A wake-up that never arrives (a publish whose poke was lost) is recovered by the
    // daemon's periodic look at the queue, within seconds.
    sb.publish_quiet("count.job", b"unpoked");
    sb.wait_until("the job whose poke was lost", SECS(20), |sb| {
        sb.side_effects().iter().any(|(name, n)| name == "unpoked" && *n == 1)
    });
    let open = sb.status().control_connections;
    assert!(open <= procyard_daemon::control::MAX_PER_UID, "{open} connections held");

    // The newest idle connection is closed by the idle timeout.
    let mut last = idle.into_iter().last().expect("a connection");
    last.set_read_timeout(Some(procyard_daemon::control::IDLE_TIMEOUT + SECS(20)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    assert_eq!(last.read(&mut buf).expect("closed, not timed out"), 0, "the daemon closed it");
}

#[test]
fn daemon_hardening_payload_limit_same_for_amqp() {
    // The embedded queue: the limit itself goes in, one byte more is refused.
    let sb = Sandbox::new(COUNT_TASK);
    let config = sb.load_config();
    let mut sqlite = queue::open(&config.queue, OpenMode::Client).expect("open");
    sqlite.bind(&config.bindings()).expect("bind");
    let at_limit = vec![b'x'; MAX_PAYLOAD];
    let over = vec![b'x'; MAX_PAYLOAD + 1];
    assert_eq!(sqlite.publish("count.big", &at_limit).expect("16 MiB").len(), 1);
    let sqlite_error = match sqlite.publish("count.big", &over) {
        Err(e @ Error::InvalidPayload { .. }) => e.to_string(),
        other => panic!("the sqlite queue must refuse 16 MiB + 1: {other:?}"),
    };

    let Some(url) = broker::broker_url("daemon_hardening_payload_limit_same_for_amqp") else {
        return;
    };
    let exchange = format!("procyard-test-{}", uuid::Uuid::now_v7().simple());
    let mut amqp_config = config.queue.clone();
    amqp_config.backend = queue::BackendKind::Amqp;
    amqp_config.url = Some(url.clone());
    amqp_config.exchange = exchange.clone();
    let _cleanup = broker::Cleanup::task(&url, &exchange, "count", &[50]);
    let mut amqp = queue::open(&amqp_config, OpenMode::Client).expect("open amqp");
    amqp.bind(&config.bindings()).expect("bind amqp");
    match amqp.publish("count.big", &over) {
        Err(e @ Error::InvalidPayload { .. }) => assert_eq!(e.to_string(), sqlite_error),
        other => panic!("the AMQP backend must refuse 16 MiB + 1 before publishing: {other:?}"),
    }
    assert_eq!(amqp.publish("count.big", &at_limit).expect("16 MiB").len(), 1);
    let depth = &amqp.depths().expect("depths")["count"];
    assert_eq!(depth.ready, 1, "only the payload at the limit reached the broker");
}

#[test]
fn daemon_hardening_spawn_error_names_cause() {
    let mut sb = Sandbox::new(
        r#"[[task]]
name = "app"
routing_keys = ["app"]
command = ["{dir}/app"]
max_attempts = 1
"#,
    );
    let app = sb.path().join("app");
    std::fs::write(&app, "#!/bin/sh\nexit 0\n").expect("write app");
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    sb.start();
    std::fs::remove_file(&app).expect("remove app");
    sb.publish("app", b"");
    sb.wait_until("the job dead-lettered", SECS(20), |sb| !sb.status().dead_letters.is_empty());
    let reason = sb.status().dead_letters[0].reason.clone();
    let app = app.display().to_string();
    for (what, text) in [("dead-letter reason", reason), ("log", sb.log())] {
        assert!(
            text.contains(&format!("unable to spawn {app}"))
                && text.contains("No such file or directory"),
            "the {what} names the program and the OS error:\n{text}"
        );
    }
    let dead = sb.cli(&["dead"]);
    assert!(text(&dead.stdout).contains("No such file or directory"), "{}", text(&dead.stdout));
}

#[test]
fn daemon_hardening_config_rejects_unworkable() {
    let task = |command: &str, extra: &str| {
        format!("[[task]]\nname = \"t\"\nrouting_keys = [\"t\"]\ncommand = {command}\n{extra}\n")
    };
    let cases = [
        (
            "empty queue path",
            "[queue]\npath = \"\"\n".to_owned() + &task("[\"true\"]", ""),
            "queue.path",
            "must not be empty",
        ),
        (
            "missing program",
            "[queue]\npath = \"{dir}/q.db\"\n".to_owned() + &task("[\"{dir}/no-such-app\"]", ""),
            "task[0].command",
            "no-such-app does not exist",
        ),
        (
            "program not on PATH",
            "[queue]\npath = \"{dir}/q.db\"\n".to_owned()
                + &task("[\"procyard-no-such-program\"]", ""),
            "task[0].command",
            "is not found in PATH",
        ),
        (
            "missing cwd",
            "[queue]\npath = \"{dir}/q.db\"\n".to_owned()
                + &task("[\"true\"]", "cwd = \"{dir}/nope\""),
            "task[0].cwd",
            "nope does not exist",
        ),
        (
            "NUL in the command",
            "[queue]\npath = \"{dir}/q.db\"\n".to_owned()
                + &task("[\"sh\", \"-c\", \"echo a\\u0000b\"]", ""),
            "task[0].command",
            "NUL byte",
        ),
    ];
    for (case, config, field, message) in cases {
        let mut sb = Sandbox::new(COUNT_TASK);
        sb.write_raw_config(&config);
        let out = sb.cli(&["check-config"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: check-config must refuse: {err}");
        assert!(err.contains(&format!("{field}: ")) && err.contains(message), "{case}: {err}");
        let printed = run_refused(&mut sb);
        assert!(
            printed.contains(&format!("{field}: ")) && printed.contains(message),
            "{case}: {printed}"
        );
    }
}
