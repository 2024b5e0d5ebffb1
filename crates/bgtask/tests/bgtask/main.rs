//! End-to-end scenarios: real supervisors, real sockets, a temporary pool per test.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use procyard_bgtask::protocol::PROTOCOL_VERSION;
use procyard_bgtask::{
    DEFAULT_RETAIN, Error, Event, Filter, Launch, ReadOptions, RefusalKind, SpawnOptions, Status,
    StatusKind, StreamName, Task, TaskPool, TaskRecord,
};
use procyard_core::testkit::{self, wait_for};
use procyard_core::{Deadline, Pid, ProcStat, ProcessIdentity, Signal};
use serde_json::json;

mod capture;
mod dependency;
mod full;
mod hardening;
mod ring;

const BIN: &str = env!("CARGO_BIN_EXE_procyard-bgtask");
const SUPERVISE_BIN: &str = env!("CARGO_BIN_EXE_procyard-bgtask-supervise");

/// A temporary pool (in core's test sandbox, whose watchdog ends a hung test) whose tasks
/// are all deleted (and supervisors killed) on drop.
struct Sandbox {
    dir: testkit::Sandbox,
    pool_dir: PathBuf,
    pool: TaskPool,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = testkit::Sandbox::new("bgtask", Duration::from_secs(300));
        let pool_dir = dir.join("pool");
        let pool = TaskPool::open(&pool_dir).unwrap().supervisor_binary(BIN);
        Sandbox { dir, pool_dir, pool }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN).arg("--pool").arg(&self.pool_dir).args(args).output().unwrap()
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn spawn(&self, options: SpawnOptions) -> Task {
        self.pool.spawn(&options).unwrap()
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.pool_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.pool_dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else { continue };
            let Ok(record) = serde_json::from_slice::<TaskRecord>(
                &std::fs::read(entry.path()).unwrap_or_default(),
            ) else {
                continue;
            };
            if let Ok(task) = self.pool.task(id)
                && task.delete().is_ok()
            {
                continue;
            }
            // Last resort: kill the supervisor if it is still the process the record names.
            if record.supervisor.is_running().unwrap_or(false) {
                let _ = procyard_core::kill_process(record.supervisor.pid, Signal::KILL);
            }
        }
    }
}

fn sh(script: &str) -> SpawnOptions {
    SpawnOptions::new(["/bin/sh", "-c", script])
}

/// Reads the whole stream (peeking) until it is final (ended, or the task exited).
/// Reads (peeking, waiting) the next chunk from `at`, appends it to `out` and moves `at` on.
fn next_chunk(
    task: &mut Task,
    stream: StreamName,
    at: &mut u64,
    out: &mut Vec<u8>,
) -> procyard_bgtask::Chunk {
    let chunk = task
        .stream(stream)
        .read_with(ReadOptions::new().offset(*at).count(1 << 20).wait(true))
        .unwrap();
    out.extend_from_slice(&chunk.data);
    *at = chunk.end();
    chunk
}

fn read_until_final(task: &mut Task, stream: StreamName) -> Vec<u8> {
    let deadline = Deadline::after(Duration::from_secs(20));
    task.set_timeout(Some(Duration::from_secs(20)));
    let mut at = 0;
    let mut out = Vec::new();
    loop {
        assert!(!deadline.is_expired(), "{stream:?} not final after {} bytes", out.len());
        let chunk = next_chunk(task, stream, &mut at, &mut out);
        if chunk.is_final() {
            return out;
        }
    }
}

/// Reads (peeking, waiting) until `needle` shows up on the stream.
fn wait_for_output(task: &mut Task, stream: StreamName, needle: &str) -> String {
    let deadline = Deadline::after(Duration::from_secs(20));
    task.set_timeout(Some(Duration::from_secs(20)));
    let mut at = 0;
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(needle) {
        assert!(!deadline.is_expired(), "no {needle:?} in {:?}", String::from_utf8_lossy(&out));
        let chunk = next_chunk(task, stream, &mut at, &mut out);
        assert!(
            !(chunk.is_final()
                && chunk.data.is_empty()
                && !String::from_utf8_lossy(&out).contains(needle)),
            "stream ended without {needle:?}"
        );
    }
    String::from_utf8(out).unwrap()
}

fn wait_exit(task: &Task) -> Status {
    let mut sub = task.subscribe().unwrap();
    // The task may have exited before the subscription: ask after subscribing.
    let mut probe = Task::clone_of(task);
    let deadline = Deadline::after(Duration::from_secs(20));
    loop {
        let status = probe.info().unwrap().status;
        if status.is_finished() {
            return status;
        }
        match sub.next(deadline).unwrap() {
            Some(Event::Exit { status }) => return status,
            Some(_) => {}
            None => panic!("no exit event"),
        }
    }
}

trait CloneOf {
    fn clone_of(task: &Task) -> Task;
}

impl CloneOf for Task {
    fn clone_of(task: &Task) -> Task {
        let dir = task.socket_path().parent().unwrap().to_owned();
        TaskPool::open(dir).unwrap().task(task.id()).unwrap()
    }
}

/// How long a test waits for what it observes from outside (a process table, a file).
const WAIT: Duration = Duration::from_secs(20);

#[test]
fn bgtask_seed_example_end_to_end() {
    let sb = Sandbox::new();
    let script = format!(
        "{BIN} task-meta target=\"$1\" purpose='World Domination'; \
         {BIN} task-send '{{\"step\": 1}}'; \
         echo \"Hello World $DEBUG_STUFF\"; echo 'Hello World' >&2; cat"
    );
    let mut ids = Vec::new();
    for target in ["earth", "mars"] {
        let options = SpawnOptions::new(["/bin/sh", "-c", &script, "sh", target])
            .env("DEBUG_STUFF", "1")
            .meta("name", json!("Hello World"))
            .meta("myDataStruct", json!({"x": "y"}))
            .retain(1_000_000);
        let mut task = sb.spawn(options);
        wait_for_output(&mut task, StreamName::Stdout, "Hello World 1\n");
        // The stderr line comes after the stdout one: have it before the task is paused below
        // (a paused task writes nothing, and a waiting read would wait for good).
        wait_for_output(&mut task, StreamName::Stderr, "Hello World\n");
        wait_for("self-applied meta", WAIT, || {
            task.info().unwrap().meta.get("purpose") == Some(&json!("World Domination"))
        });
        ids.push(task.id().to_owned());
    }
    // An exited task with the same name is not "running".
    let mut done = sb.spawn(sh("true").meta("name", json!("Hello World")));
    wait_exit(&done);
    let running = sb
        .pool
        .search(&Filter::new().status(StatusKind::Running).meta("name", json!("Hello World")))
        .unwrap();
    let mut found: Vec<String> = running.iter().map(|r| r.id.clone()).collect();
    found.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(found, expected);
    let me = std::process::id().to_string();
    for record in &running {
        let mut task = sb.pool.task(&record.id).unwrap();
        task.pause().unwrap();
        let mut meta = procyard_bgtask::Meta::new();
        meta.insert("note".into(), json!(format!("Paused by {me}")));
        task.apply_meta(meta).unwrap();
    }
    let paused = sb.pool.list(&Filter::new().status(StatusKind::Paused)).unwrap();
    assert_eq!(paused.len(), 2);
    assert!(paused.iter().all(|r| r.meta["note"] == json!(format!("Paused by {me}"))));
    assert!(paused.iter().any(|r| r.meta["target"] == json!("mars")));
    for id in &ids {
        let mut task = sb.pool.task(id).unwrap();
        let out = task.stream(StreamName::Stdout).info().unwrap();
        assert_eq!((out.start, out.limit), (0, 14));
        let err = wait_for_output(&mut task, StreamName::Stderr, "Hello World\n");
        assert_eq!(err, "Hello World\n");
        let segment = task.stream(StreamName::Stdout).peek(6, 5).unwrap();
        assert_eq!((segment.offset, segment.data.as_slice()), (6, &b"World"[..]));
        assert_eq!(task.stream(StreamName::Stdout).read_all().unwrap(), b"Hello World 1\n");
        assert_eq!(task.read_data(true).unwrap(), vec![json!({"step": 1})]);
        // The CLI reads by offset too.
        assert_eq!(
            sb.cli_ok(&["read", id, "--offset", "0", "--count", "5", "--stream", "stderr"]),
            "Hello"
        );
        task.resume().unwrap();
        task.write(b"echoed\n").unwrap();
        wait_for_output(&mut task, StreamName::Stdout, "echoed\n");
        task.delete().unwrap();
    }
    done.info().unwrap();
    done.delete().unwrap();
    assert!(sb.files().is_empty(), "{:?}", sb.files());
}

#[test]
fn bgtask_retain_cap_and_offsets_across_restart() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(sh("printf '%0250d' 0").retain(100));
    read_until_final(&mut task, StreamName::Stdout);
    wait_exit(&task);
    let info = task.stream(StreamName::Stdout).info().unwrap();
    assert_eq!((info.start, info.limit), (150, 250));
    let chunk = task.stream(StreamName::Stdout).peek(0, 1000).unwrap();
    assert_eq!((chunk.offset, chunk.data.len()), (150, 100));
    // Past the limit: nothing, at the limit (not an error, not a wrap-around).
    let chunk = task.stream(StreamName::Stdout).peek(1 << 40, 1000).unwrap();
    assert_eq!((chunk.offset, chunk.data.len()), (250, 0));
    assert_eq!(sb.cli_ok(&["read", task.id(), "--offset", "999999"]), "");
    task.restart().unwrap();
    wait_exit(&task);
    read_until_final(&mut task, StreamName::Stdout);
    let info = task.info().unwrap();
    assert_eq!(info.restarts, 1);
    let out = info.streams[&StreamName::Stdout];
    assert_eq!((out.start, out.limit), (400, 500));
    let chunk = task.stream(StreamName::Stdout).peek(450, 1000).unwrap();
    assert_eq!((chunk.offset, chunk.data.len()), (450, 50));
    // Discard drops retained bytes.
    task.stream(StreamName::Stdout).discard(480).unwrap();
    assert_eq!(task.stream(StreamName::Stdout).start().unwrap(), 480);
    task.delete().unwrap();
}

#[test]
fn bgtask_b1_outlives_spawner() {
    let sb = Sandbox::new();
    let script =
        format!("{BIN} --pool '{}' spawn -- sleep 300 && exec sleep 300", sb.pool_dir.display());
    let mut shell = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(shell.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let id = line.trim().to_owned();
    // Kill the spawner's whole process group, as a closing terminal would.
    let group = Pid::from_raw(shell.id() as i32).unwrap();
    procyard_core::kill_process_group(group, Signal::KILL).unwrap();
    shell.wait().unwrap();
    let mut task = sb.pool.task(&id).unwrap();
    let info = task.info().unwrap();
    assert_eq!(info.status, Status::Running);
    let pid = info.pid.unwrap();
    let stat = ProcStat::read(pid).unwrap().expect("task alive");
    assert!(!stat.is_zombie());
    let sup = ProcStat::read(info.supervisor_pid).unwrap().unwrap();
    assert_ne!(sup.sid as u32, shell.id(), "the supervisor has a session of its own");
    assert_eq!(stat.pgid, pid.as_raw(), "the task leads its own process group");
    assert_eq!(sb.pool.record(&id).unwrap().status, Status::Running);
    task.delete().unwrap();
}

#[test]
fn bgtask_b2_delete_leaves_no_files() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(sh("echo out; echo err >&2; sleep 300").log(true));
    wait_for_output(&mut task, StreamName::Stdout, "out");
    let info = task.info().unwrap();
    let pid = info.pid.unwrap();
    let task_ident = ProcessIdentity::of(pid).unwrap().expect("task alive");
    let sup = ProcessIdentity::of(info.supervisor_pid).unwrap().unwrap();
    let id = task.id().to_owned();
    assert_eq!(
        sb.files(),
        [".data", ".json", ".sock", ".stderr.log", ".stdout.log"]
            .iter()
            .map(|s| format!("{id}{s}"))
            .collect::<Vec<_>>()
    );
    // A task that ignores INT is still deleted (TERM comes after the grace).
    let stubborn = sb.spawn(sh("trap '' INT; echo ready; sleep 300"));
    let mut stubborn = stubborn;
    wait_for_output(&mut stubborn, StreamName::Stdout, "ready");
    let stubborn_pid = stubborn.info().unwrap().pid.unwrap();
    let stubborn_ident = ProcessIdentity::of(stubborn_pid).unwrap().expect("task alive");
    task.delete().unwrap();
    stubborn.delete().unwrap();
    assert!(sb.files().is_empty(), "left behind: {:?}", sb.files());
    // By identity: once reaped, a pid may name another process.
    for ident in [task_ident, stubborn_ident] {
        assert!(!ident.is_running().unwrap(), "task {} survived", ident.pid);
    }
    wait_for("the supervisor to exit", WAIT, || !sup.is_running().unwrap());
}

fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", BIN])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bgtask_b3_other_uid_cannot_connect_or_read() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(sh("echo secret; sleep 300"));
    wait_for_output(&mut task, StreamName::Stdout, "secret");
    let sock = task.socket_path();
    let pool = sb.pool_dir.to_str().unwrap().to_owned();
    assert_eq!(std::fs::metadata(&sb.pool_dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
    if !rustix::process::geteuid().is_root() {
        // Becoming `nobody` needs root; the modes above are all that can be checked.
        eprintln!("bgtask_b3: not root, the cross-user part is skipped");
        task.delete().unwrap();
        return;
    }
    let out = as_nobody(&["--pool", &pool, "read", task.id(), "--offset", "0"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    // Even with the file permissions opened up, the supervisor checks SO_PEERCRED.
    for dir in [sb.root(), sb.pool_dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&["--pool", &pool, "read", task.id(), "--offset", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nobody read {:?}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"), "{out:?}");
    let out = as_nobody(&["--pool", &pool, "kill", task.id()]);
    assert_eq!(out.status.code(), Some(1));
    // The owner is still served, and the task was not signalled.
    assert_eq!(task.info().unwrap().status, Status::Running);
    assert_eq!(sb.cli_ok(&["read", task.id(), "--offset", "0"]), "secret\n");
    task.delete().unwrap();
}

#[test]
fn bgtask_b4_kill_and_pause_after_exit_refused() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(sh("exit 3"));
    assert_eq!(wait_exit(&task), Status::Exited { code: 3 });
    for result in [task.signal(procyard_core::Signal::TERM), task.pause(), task.resume()] {
        let err = result.unwrap_err();
        assert!(err.is_refusal(RefusalKind::NotRunning), "{err}");
    }
    let out = sb.cli(&["kill", task.id()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"), "{out:?}");
    assert_eq!(sb.cli(&["pause", task.id()]).status.code(), Some(1));
    assert_eq!(task.info().unwrap().status, Status::Exited { code: 3 });
    task.delete().unwrap();
}

#[test]
fn bgtask_b5_recycled_supervisor_pid_shows_lost() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(sh("sleep 300"));
    let mut record = sb.pool.record(task.id()).unwrap();
    assert_eq!(record.status, Status::Running);
    task.info().unwrap();
    // A stale record whose supervisor pid now names another process (this test process,
    // with another start time).
    let me = ProcessIdentity::current().unwrap();
    record.id = "stale".into();
    record.supervisor = ProcessIdentity { start_time: me.start_time + 1, ..me.clone() };
    // Its task's pid was recycled too (it names this process, started at another time).
    record.process = Some(ProcessIdentity { start_time: me.start_time + 1, ..me.clone() });
    std::fs::write(sb.pool_dir.join("stale.json"), serde_json::to_vec(&record).unwrap()).unwrap();
    assert_eq!(sb.pool.record("stale").unwrap().status, Status::Lost);
    let lost = sb.pool.list(&Filter::new().status(StatusKind::Lost)).unwrap();
    assert_eq!(lost.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["stale"]);
    let listed = sb.cli_ok(&["list", "--json"]);
    let listed: Vec<TaskRecord> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.len(), 2);
    // Talking to it fails cleanly and signals nobody (this process is alive to tell).
    let err = sb.pool.task("stale").unwrap().kill().unwrap_err();
    assert!(matches!(err, Error::SupervisorGone { .. }), "{err}");
    assert_eq!(sb.cli(&["pause", "stale"]).status.code(), Some(1));
    std::fs::remove_file(sb.pool_dir.join("stale.json")).unwrap();
    task.delete().unwrap();
}

#[test]
fn bgtask_b6_restart_keeps_unread_output() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(sh("echo run; echo err >&2"));
    wait_exit(&task);
    let restart = sb.cli(&["restart", task.id()]);
    assert!(restart.status.success(), "{restart:?}");
    wait_exit(&task);
    read_until_final(&mut task, StreamName::Stdout);
    assert_eq!(task.stream(StreamName::Stdout).read_all().unwrap(), b"run\nrun\n");
    assert_eq!(sb.cli_ok(&["read", task.id(), "--stream", "stderr"]), "err\nerr\n");
    // Consumed now; a consuming read returns nothing more, peeking still sees it all.
    assert_eq!(sb.cli_ok(&["read", task.id(), "--stream", "stderr"]), "");
    assert_eq!(sb.cli_ok(&["read", task.id(), "--stream", "stderr", "--offset", "4"]), "err\n");
    // Restarting a live task is refused.
    let mut live = sb.spawn(sh("sleep 300"));
    assert!(live.restart().unwrap_err().is_refusal(RefusalKind::StillRunning));
    live.delete().unwrap();
    task.delete().unwrap();
}

#[test]
fn bgtask_b7_meta_search_arrays() {
    let sb = Sandbox::new();
    let abc = sb.spawn(sh("sleep 300").meta("tags", json!(["a", "b", "c"])));
    let abd = sb.spawn(sh("sleep 300").meta("tags", json!(["a", "b", "d"])));
    let ids = |f: Filter| -> Vec<String> {
        sb.pool.search(&f).unwrap().into_iter().map(|r| r.id).collect()
    };
    assert_eq!(ids(Filter::new().meta("tags", json!(["a", "b", "c"]))), [abc.id()]);
    assert_eq!(ids(Filter::new().meta("tags", json!(["a", "b", "d"]))), [abd.id()]);
    assert!(ids(Filter::new().meta("tags", json!(["a", "b"]))).is_empty());
    assert!(ids(Filter::new().meta("tags", json!(["a", "b", "c", "d"]))).is_empty());
    let out =
        sb.cli_ok(&["list", "--meta", r#"tags=["a","b","d"]"#, "--status", "running", "--json"]);
    let listed: Vec<TaskRecord> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, abd.id());
    // Updating meta through the CLI is seen by search.
    sb.cli_ok(&["meta", abc.id(), r#"tags=["x"]"#]);
    assert_eq!(ids(Filter::new().meta("tags", json!(["x"]))), [abc.id()]);
    abc.delete().unwrap();
    abd.delete().unwrap();
}

#[test]
fn bgtask_b8_subscriber_sees_end_of_stream_and_exit() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(sh("cat; echo done; exit 4"));
    let mut sub = task.subscribe().unwrap();
    task.write(b"hello\n").unwrap();
    task.close_stdin().unwrap();
    let deadline = Deadline::after(Duration::from_secs(20));
    let mut events = Vec::new();
    while !events.iter().any(|e| matches!(e, Event::Exit { .. })) {
        match sub.next(deadline).unwrap() {
            Some(e) => events.push(e),
            None => panic!("events so far: {events:?}"),
        }
    }
    assert!(events.iter().any(|e| matches!(e, Event::Output { stream: StreamName::Stdout, .. })));
    assert!(
        events.contains(&Event::EndOfStream { stream: StreamName::Stdout, limit: 11 }),
        "{events:?}"
    );
    assert!(
        events.contains(&Event::EndOfStream { stream: StreamName::Stderr, limit: 0 }),
        "{events:?}"
    );
    assert!(events.contains(&Event::Exit { status: Status::Exited { code: 4 } }));
    assert_eq!(task.stream(StreamName::Stdout).read_all().unwrap(), b"hello\ndone\n");
    task.delete().unwrap();
    // The subscriber hears of the deletion, then the connection closes.
    while sub.next(Deadline::after(Duration::from_secs(10))).unwrap().is_some() {}
    assert!(sub.is_closed());

    // Default cap: 3 MiB written, the last 1 MiB retained.
    let mut big = sb.spawn(sh("head -c 3145728 /dev/zero"));
    wait_exit(&big);
    let info = big.info().unwrap();
    assert_eq!(info.retain, DEFAULT_RETAIN);
    let out = info.streams[&StreamName::Stdout];
    assert_eq!((out.start, out.limit), (3 * 1024 * 1024 - DEFAULT_RETAIN, 3 * 1024 * 1024));
    big.delete().unwrap();
}

fn raw_connect(task: &Task) -> UnixStream {
    let s = UnixStream::connect(task.socket_path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn raw_frame(stream: &mut UnixStream, payload: &[u8]) {
    stream.write_all(&(payload.len() as u32).to_be_bytes()).unwrap();
    stream.write_all(payload).unwrap();
}

fn raw_response(stream: &mut UnixStream) -> serde_json::Value {
    procyard_core::frame::read_frame(stream).unwrap().expect("a response")
}

#[test]
fn bgtask_garbage_and_oversized_frames_refused() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(sh("sleep 300"));
    let hello =
        json!({"request": "hello", "version": PROTOCOL_VERSION, "task": task.id()}).to_string();
    // A connection that never greets is closed after the hello timeout.
    let mut idle = raw_connect(&task);
    // Garbage before the handshake: refused, connection closed.
    let mut s = raw_connect(&task);
    raw_frame(&mut s, b"\x00\xffnot json");
    assert_eq!(raw_response(&mut s)["kind"], "bad_request");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // After the handshake: bad JSON and unknown requests are refused, the connection lives.
    let mut s = raw_connect(&task);
    raw_frame(&mut s, hello.as_bytes());
    assert_eq!(raw_response(&mut s)["response"], "hello");
    raw_frame(&mut s, b"{\"request\":");
    assert_eq!(raw_response(&mut s)["kind"], "bad_request");
    raw_frame(&mut s, br#"{"request":"rm_rf","path":"/"}"#);
    assert_eq!(raw_response(&mut s)["kind"], "bad_request");
    raw_frame(&mut s, br#"{"request":"info"}"#);
    assert_eq!(raw_response(&mut s)["response"], "info");
    // A wrong task id in the handshake is refused, then the connection is closed.
    let mut s2 = raw_connect(&task);
    raw_frame(
        &mut s2,
        json!({"request": "hello", "version": PROTOCOL_VERSION, "task": "other"})
            .to_string()
            .as_bytes(),
    );
    let refusal = raw_response(&mut s2);
    assert_eq!(refusal["kind"], "bad_request");
    assert!(refusal["message"].as_str().unwrap().contains(task.id()), "{refusal}");
    // Oversized: refused from the header alone, connection closed.
    let mut s3 = raw_connect(&task);
    raw_frame(&mut s3, hello.as_bytes());
    raw_response(&mut s3);
    s3.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert_eq!(raw_response(&mut s3)["kind"], "bad_request");
    let mut rest = Vec::new();
    let _ = s3.read_to_end(&mut rest);
    // A client that never reads: the supervisor keeps serving others.
    let mut hog = raw_connect(&task);
    raw_frame(&mut hog, hello.as_bytes());
    for _ in 0..2000 {
        raw_frame(&mut hog, br#"{"request":"info"}"#);
    }
    assert_eq!(task.info().unwrap().status, Status::Running);
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).expect("closed before the read timeout");
    assert!(rest.is_empty());
    drop((s, s2, s3, hog));
    assert_eq!(task.info().unwrap().status, Status::Running);
    task.delete().unwrap();
}

#[test]
fn bgtask_tail_follow_live_task() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(sh("echo one; read x; echo two $x"));
    wait_for_output(&mut task, StreamName::Stdout, "one");
    let mut tail = Command::new(BIN)
        .arg("--pool")
        .arg(&sb.pool_dir)
        .args(["tail", "-f", task.id()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(tail.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "one\n");
    sb.cli_ok(&["write", task.id(), "go\n"]);
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "two go\n");
    // tail -f ends by itself once the task exits.
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
    assert!(tail.wait().unwrap().success());
    task.delete().unwrap();
}

#[test]
fn bgtask_read_into_a_closed_pipe_ends_quietly() {
    let sb = Sandbox::new();
    // 1.3 MB of output: far more than a pipe holds, so the CLI meets the closed pipe.
    let mut task = sb.spawn(sh("seq 1 200000").retain(4 << 20));
    let all = read_until_final(&mut task, StreamName::Stdout);
    assert_eq!(all.len(), 1_288_895);
    let mut read = Command::new(BIN)
        .arg("--pool")
        .arg(&sb.pool_dir)
        .args(["read", task.id()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 2];
    read.stdout.take().unwrap().read_exact(&mut head).unwrap();
    assert_eq!(&head, b"1\n");
    // The reader is gone (as with `| head -1`): stdout was dropped above.
    let out = read.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no error for a reader that left");
    task.delete().unwrap();
}

#[test]
fn bgtask_spawn_errors_are_reported() {
    let sb = Sandbox::new();
    let out = sb.cli(&["spawn", "--", "/nonexistent/program"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("procyard-bgtask: unable to spawn /nonexistent/program"), "{err}");
    assert!(err.contains("No such file"), "{err}");
    let err = sb.pool.spawn(&SpawnOptions::new(["/nonexistent/program"])).unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
    let err = sb.pool.spawn(&sh("true").cwd("/nonexistent-dir")).unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
    assert!(sb.files().is_empty(), "{:?}", sb.files());
    // Forking a multi-threaded test process is refused, not attempted.
    let forking = TaskPool::open(&sb.pool_dir).unwrap().launch(Launch::Fork);
    let err = forking.spawn(&sh("true")).unwrap_err();
    assert!(matches!(err, Error::Core(procyard_core::Error::NotSingleThreaded { .. })), "{err}");
    assert_eq!(sb.cli(&["info", "nosuchtask"]).status.code(), Some(1));
    assert_eq!(sb.cli(&["info", "../etc"]).status.code(), Some(1));
    assert_eq!(sb.cli(&["spawn"]).status.code(), Some(2));
    // The CLI spawns (executing procyard-bgtask-supervise) and the id works.
    let id = sb.cli_ok(&["spawn", "--meta", "k=1", "--", "sleep", "300"]);
    let id = id.trim();
    let info: serde_json::Value =
        serde_json::from_str(&sb.cli_ok(&["info", id, "--json"])).unwrap();
    assert_eq!(info["meta"]["k"], 1);
    assert_eq!(info["status"]["state"], "running");
    sb.cli_ok(&["delete", id]);
    assert!(sb.files().is_empty());
}

#[test]
fn bgtask_b8_logged_output_survives_the_supervisor() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(sh("echo logged; echo also >&2").log(true));
    wait_exit(&task);
    let info = task.info().unwrap();
    let sup = ProcessIdentity::of(info.supervisor_pid).unwrap().unwrap();
    // The supervisor dies hard (this test started it, and checked its identity just now).
    procyard_core::kill_process(sup.pid, Signal::KILL).unwrap();
    wait_for("the supervisor to die", WAIT, || !sup.is_running().unwrap());
    assert_eq!(sb.pool.record(task.id()).unwrap().status, Status::Lost);
    let listed = sb.cli_ok(&["list", "--status", "lost"]);
    assert!(listed.contains(task.id()), "{listed}");
    // Output read from the log files, by offset.
    assert_eq!(sb.cli_ok(&["read", task.id(), "--offset", "0"]), "logged\n");
    assert_eq!(sb.cli_ok(&["read", task.id(), "--offset", "2", "--count", "3"]), "gge");
    assert_eq!(sb.cli_ok(&["read", task.id(), "--stream", "stderr", "--offset", "0"]), "also\n");
    // Deleting a lost task whose process is gone removes its files (and signals nothing).
    sb.cli_ok(&["delete", task.id()]);
    assert!(sb.files().is_empty(), "{:?}", sb.files());
}

#[test]
fn bgtask_supervisor_term_deletes_its_task() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(sh("echo up; sleep 300"));
    wait_for_output(&mut task, StreamName::Stdout, "up");
    let info = task.info().unwrap();
    let pid = info.pid.unwrap();
    let task_ident = ProcessIdentity::of(pid).unwrap().expect("task alive");
    let sup = ProcessIdentity::of(info.supervisor_pid).unwrap().unwrap();
    procyard_core::kill_process(sup.pid, Signal::TERM).unwrap();
    wait_for("the supervisor to exit", WAIT, || !sup.is_running().unwrap());
    assert!(sb.files().is_empty(), "{:?}", sb.files());
    // By identity: once reaped, a pid may name another process.
    assert!(!task_ident.is_running().unwrap(), "task {pid} survived");
}

#[test]
fn bgtask_stdin_streams_megabytes_in_order() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(sh("read go; exec cat").retain(8 << 20));
    let payload: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    task.write(b"go\n").unwrap();
    // More than the supervisor's stdin buffer: writes wait for the task to read.
    task.write(&payload).unwrap();
    task.close_stdin().unwrap();
    assert!(task.write(b"late").unwrap_err().is_refusal(RefusalKind::StdinClosed));
    assert_eq!(wait_exit(&task), Status::Exited { code: 0 });
    let out = read_until_final(&mut task, StreamName::Stdout);
    assert_eq!(out.len(), payload.len());
    assert!(out == payload, "output differs from what was written");
    task.delete().unwrap();
}

/// The program running task `id`'s supervisor, as the kernel names it.
fn supervisor_exe(pool: &TaskPool, id: &str) -> PathBuf {
    let pid = pool.task(id).unwrap().info().unwrap().supervisor_pid;
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

#[test]
fn bgtask_supervisors_run_the_small_program_wherever_it_is_found() {
    let sb = Sandbox::new();
    let small = Path::new(SUPERVISE_BIN).canonicalize().unwrap();
    // The CLI executes the small program beside it rather than forking itself.
    let id = sb.cli_ok(&["spawn", "--", "sleep", "300"]);
    assert_eq!(supervisor_exe(&sb.pool, id.trim()), small);
    // So does a library caller that names no program (found beside the test's executable).
    let auto = TaskPool::open(&sb.pool_dir).unwrap();
    let task = auto.spawn(&SpawnOptions::new(["sleep", "300"])).unwrap();
    assert_eq!(supervisor_exe(&sb.pool, task.id()), small);
    // A CLI installed alone (no small program beside it or on PATH) forks its supervisors.
    let alone = sb.root().join("alone");
    std::fs::create_dir(&alone).unwrap();
    let cli = alone.join("procyard-bgtask");
    if std::fs::hard_link(BIN, &cli).is_err() {
        std::fs::copy(BIN, &cli).unwrap();
    }
    let out = Command::new(&cli)
        .arg("--pool")
        .arg(&sb.pool_dir)
        .args(["spawn", "--", "sleep", "300"])
        .env("PATH", "/usr/bin:/bin")
        .env_remove("PROCYARD_BGTASK_BIN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8(out.stdout).unwrap();
    assert_eq!(supervisor_exe(&sb.pool, id.trim()), cli);
    assert_eq!(sb.pool.list(&Filter::new()).unwrap().len(), 3);
    // Run by hand, the small program says what it is for instead of waiting on stdin.
    let out = Command::new(SUPERVISE_BIN).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not meant to be run by hand"));
}

#[test]
fn bgtask_waiting_read_gives_up_at_the_timeout_and_the_task_stays_usable() {
    let sb = Sandbox::new();
    let task = sb.spawn(sh("read line; echo \"got $line\"; sleep 300"));
    let id = task.id().to_owned();
    let pool = sb.pool.clone();
    // A silent task: the waiting read must come back with TimedOut, not block. Run it on a
    // thread so a regression fails here instead of hanging the suite.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut task = pool.task(&id).unwrap();
        task.set_timeout(Some(Duration::from_millis(200)));
        let silent = task
            .stream(StreamName::Stdout)
            .read_with(ReadOptions::new().offset(0).count(10).wait(true));
        // The connection is dropped on timeout; the next calls reconnect and work.
        let info = task.info();
        let _ = tx.send((silent, info, task));
    });
    let (silent, info, mut task) = rx.recv_timeout(Duration::from_secs(20)).expect("read hung");
    match silent {
        Err(Error::TimedOut { id, after }) => {
            assert_eq!(id, task.id());
            assert_eq!(after, Duration::from_millis(200));
        }
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert_eq!(info.unwrap().status, Status::Running);
    // The task was left as it was: it still reads its stdin and answers.
    task.write(b"hello\n").unwrap();
    assert_eq!(wait_for_output(&mut task, StreamName::Stdout, "got hello"), "got hello\n");
    task.delete().unwrap();
}
