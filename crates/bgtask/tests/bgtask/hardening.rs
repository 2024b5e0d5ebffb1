//! Issue 13, "the safety boundary": each test pins one way bgtask broke its promise to signal
//! only what it owns, destroy nothing that is not its own, and serve only its owner.

use super::*;

/// The processes of group `group` (identities), from /proc.
fn group_members(group: i32) -> Vec<ProcessIdentity> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Pid::from_raw)
        .filter(|pid| matches!(ProcStat::read(*pid), Ok(Some(st)) if st.pgid == group))
        .filter_map(|pid| ProcessIdentity::of(pid).ok().flatten())
        .collect()
}

/// Whether the process is gone for good: exited and reaped by someone (no zombie left).
fn reaped(ident: &ProcessIdentity) -> bool {
    ProcessIdentity::of(ident.pid).unwrap().is_none_or(|now| now.start_time != ident.start_time)
}

/// SIGKILLs the task's supervisor (identity checked) and waits until the task reads as lost.
fn kill_supervisor(sb: &Sandbox, task: &mut Task) {
    let sup = task.info().unwrap().supervisor_pid;
    let sup = ProcessIdentity::of(sup).unwrap().expect("supervisor");
    procyard_core::kill_process(sup.pid, Signal::KILL).unwrap();
    wait_for("the supervisor to die", WAIT, || !sup.is_running().unwrap());
    assert_eq!(sb.pool.record(task.id()).unwrap().status, Status::Lost);
    task.disconnect();
}

/// The task's leader and every process of its group, once `ready` was printed.
fn task_group(task: &mut Task, ready: &str) -> (ProcessIdentity, Vec<ProcessIdentity>) {
    wait_for_output(task, StreamName::Stdout, ready);
    let pid = task.info().unwrap().pid.unwrap();
    let leader = ProcessIdentity::of(pid).unwrap().expect("task alive");
    let members = group_members(pid.as_raw());
    assert!(members.len() >= 2, "the task's group: {members:?}");
    (leader, members)
}

#[test]
fn bgtask_hardening_lost_supervisor_delete_stops_group() {
    let sb = Sandbox::new();
    // A group that ignores TERM: only the KILL after the grace ends it.
    let mut task = sb.spawn(sh("trap '' TERM INT; sleep 300 & echo ready; wait"));
    let (leader, members) = task_group(&mut task, "ready");
    kill_supervisor(&sb, &mut task);
    assert!(members.iter().all(|m| m.is_running().unwrap()), "the group runs on unsupervised");
    // Before: exit 0, files removed, the group left running.
    sb.cli_ok(&["delete", task.id()]);
    for m in &members {
        assert!(!m.is_running().unwrap(), "process {} of the lost task survived delete", m.pid);
    }
    assert!(!leader.is_running().unwrap());
    assert!(sb.files().is_empty(), "left behind: {:?}", sb.files());
}

#[test]
fn bgtask_hardening_lost_supervisor_kill_signals_group() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(sh("sleep 300 & echo ready; wait"));
    let (leader, members) = task_group(&mut task, "ready");
    kill_supervisor(&sb, &mut task);
    // A record naming the same process with another start time (a recycled pid) is refused,
    // and nothing is signalled.
    let mut forged = sb.pool.record(task.id()).unwrap();
    forged.id = "forged".into();
    let process = forged.process.as_mut().expect("the record names the task's process");
    process.start_time += 1;
    let forged_path = sb.pool_dir.join("forged.json");
    std::fs::write(&forged_path, serde_json::to_vec(&forged).unwrap()).unwrap();
    std::fs::set_permissions(&forged_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = sb.cli(&["kill", "forged", "--signal", "KILL"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"), "{out:?}");
    assert!(members.iter().all(|m| m.is_running().unwrap()), "a forged record was acted on");
    sb.cli_ok(&["delete", "forged"]);
    assert!(members.iter().all(|m| m.is_running().unwrap()), "a forged record was acted on");
    // Before: "the supervisor is not running", nothing signalled. Now: TERM to the group.
    sb.cli_ok(&["kill", task.id(), "--signal", "TERM"]);
    for m in &members {
        wait_for("the lost task's group to end", WAIT, || !m.is_running().unwrap());
    }
    // Once it is gone, there is nothing left to signal.
    let out = sb.cli(&["kill", task.id()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!leader.is_running().unwrap());
    sb.cli_ok(&["delete", task.id()]);
    assert!(sb.files().is_empty(), "left behind: {:?}", sb.files());
}

#[test]
fn bgtask_hardening_setsid_grandchild_stopped() {
    let sb = Sandbox::new();
    let escapee_of = |task: &mut Task| -> ProcessIdentity {
        let out = wait_for_output(task, StreamName::Stdout, "\n");
        let pid: i32 = out.trim().strip_prefix("escapee ").unwrap().parse().unwrap();
        let pid = Pid::from_raw(pid).unwrap();
        // It really escaped: a session (and group) of its own.
        wait_for("the escapee's setsid", WAIT, || {
            ProcStat::read(pid).unwrap().is_some_and(|st| st.sid == pid.as_raw())
        });
        ProcessIdentity::of(pid).unwrap().expect("escapee alive")
    };
    // Killed: TERM to the task's group ends the shell; its setsid'd child is reparented to the
    // supervisor, which stops it and reaps it.
    let mut killed = sb.spawn(sh("setsid sleep 300 & echo \"escapee $!\"; wait"));
    let escapee = escapee_of(&mut killed);
    killed.signal(Signal::TERM).unwrap();
    wait_exit(&killed);
    wait_for("the escapee of a killed task to be stopped and reaped", WAIT, || reaped(&escapee));
    killed.delete().unwrap();

    // Ended on its own: what it left running is stopped with it.
    let mut ended = sb.spawn(sh("setsid sleep 300 & echo \"escapee $!\"; read line"));
    let escapee = escapee_of(&mut ended);
    ended.write(b"bye\n").unwrap();
    assert_eq!(wait_exit(&ended), Status::Exited { code: 0 });
    wait_for("the escapee of an ended task to be stopped and reaped", WAIT, || reaped(&escapee));
    ended.delete().unwrap();

    // Orphaned at once (its parent, a subshell, exits): paused and resumed with the task,
    // and gone — reaped — by the time delete returns.
    let mut deleted = sb.spawn(sh("(setsid sleep 300 & echo \"escapee $!\"); sleep 300"));
    let escapee = escapee_of(&mut deleted);
    let sup = deleted.info().unwrap().supervisor_pid;
    wait_for("the escapee to be adopted by the supervisor", WAIT, || {
        ProcStat::read(escapee.pid).unwrap().is_some_and(|st| st.ppid == sup.as_raw())
    });
    deleted.pause().unwrap();
    wait_for("the escapee to be paused", WAIT, || {
        ProcStat::read(escapee.pid).unwrap().is_some_and(|st| st.is_stopped())
    });
    deleted.resume().unwrap();
    wait_for("the escapee to be resumed", WAIT, || {
        ProcStat::read(escapee.pid).unwrap().is_some_and(|st| !st.is_stopped())
    });
    deleted.delete().unwrap();
    assert!(reaped(&escapee), "the escapee survived delete");
    assert!(sb.files().is_empty(), "left behind: {:?}", sb.files());
}

/// Writes a length-prefixed spawn request for the hidden supervisor entry point.
fn supervise_request(pool: &Path, id: &str, command: &[&str]) -> Vec<u8> {
    let request = json!({
        "pool": pool,
        "id": id,
        "options": {
            "command": command, "env": {}, "cwd": "/", "meta": {}, "retain": 1024,
            "log": false, "block_when_full": false,
        },
    });
    let body = serde_json::to_vec(&request).unwrap();
    let mut framed = (body.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&body);
    framed
}

/// Runs `procyard-bgtask-supervise __supervise` with `stdin` and returns its output.
fn run_supervise(stdin: &[u8]) -> Output {
    let mut child = Command::new(SUPERVISE_BIN)
        .arg("__supervise")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn bgtask_hardening_regular_file_at_socket_path_kept() {
    let sb = Sandbox::new();
    // A regular file where a new supervisor would bind: the spawn fails and the file stays.
    let precious = sb.pool_dir.join("victim.sock");
    std::fs::write(&precious, b"precious").unwrap();
    let out = run_supervise(&supervise_request(&sb.pool_dir, "victim", &["sleep", "300"]));
    assert!(!out.status.success(), "{out:?}");
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(reply.contains("regular file"), "{reply}");
    assert_eq!(std::fs::read(&precious).unwrap(), b"precious", "the file was destroyed");
    assert_eq!(sb.files(), ["victim.sock"]);

    // A file put where a running supervisor's socket was: its delete leaves it in place.
    let task = sb.spawn(sh("sleep 300"));
    let data_path = sb.pool_dir.join(format!("{}.data", task.id()));
    let planted = sb.root().join("planted");
    std::fs::write(&planted, b"precious too").unwrap();
    std::fs::rename(&planted, &data_path).unwrap();
    let id = task.id().to_owned();
    task.delete().unwrap();
    assert_eq!(std::fs::read(&data_path).unwrap(), b"precious too", "the file was destroyed");
    assert_eq!(sb.files(), [format!("{id}.data"), "victim.sock".into()]);

    // A lost task whose socket path now holds a file: delete refuses and keeps it.
    let mut lost = sb.spawn(sh("sleep 300"));
    kill_supervisor(&sb, &mut lost);
    let sock_path = lost.socket_path();
    let planted = sb.root().join("planted");
    std::fs::write(&planted, b"precious three").unwrap();
    std::fs::rename(&planted, &sock_path).unwrap();
    let out = sb.cli(&["delete", lost.id()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("regular file"), "{out:?}");
    assert_eq!(std::fs::read(&sock_path).unwrap(), b"precious three", "the file was destroyed");
    assert!(sb.pool.record(lost.id()).is_ok(), "delete went half-way");
    // The lost task's process is still ours to stop; clean up by hand.
    let pid = sb.pool.record(lost.id()).unwrap().process.unwrap();
    procyard_core::kill_process_group(pid.pid, Signal::KILL).unwrap();
}

#[test]
fn bgtask_hardening_datagram_from_other_uid_ignored() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(sh("echo up; sleep 300").meta("owner", json!("me")));
    wait_for_output(&mut task, StreamName::Stdout, "up");
    let data = sb.pool_dir.join(format!("{}.data", task.id()));
    assert_eq!(std::fs::metadata(&data).unwrap().mode() & 0o777, 0o600);
    let send = |as_nobody: bool, args: &[&str]| {
        let mut cmd = Command::new(if as_nobody { "setpriv" } else { BIN });
        if as_nobody {
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        }
        let out = cmd.args(args).env("PROCYARD_BGTASK_DATA", &data).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    if !rustix::process::geteuid().is_root() {
        eprintln!("bgtask_hardening_datagram_from_other_uid_ignored: not root, skipped");
        task.delete().unwrap();
        return;
    }
    // Loosened modes: another user can now reach the socket and send to it.
    for dir in [sb.root(), sb.pool_dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    send(true, &["task-meta", "owner=nobody"]);
    send(true, &["task-send", "from nobody"]);
    // The owner's datagram comes after: once it is applied, nobody's were handled.
    send(false, &["task-meta", "marker=1"]);
    wait_for("the owner's datagram", WAIT, || task.info().unwrap().meta.get("marker").is_some());
    let info = task.info().unwrap();
    assert_eq!(info.meta.get("owner"), Some(&json!("me")), "another uid rewrote the metadata");
    assert_eq!(info.datagrams, 0, "{:?}", task.read_data(false).unwrap());
    assert_eq!(sb.pool.record(task.id()).unwrap().meta.get("owner"), Some(&json!("me")));
    // The owner is still heard.
    send(false, &["task-send", "from me"]);
    wait_for("the owner's message", WAIT, || task.info().unwrap().datagrams == 1);
    assert_eq!(task.read_data(true).unwrap(), [json!("from me")]);
    task.delete().unwrap();
}

/// A connection that greeted the supervisor of `task` and then says nothing.
fn greeted(task: &Task) -> UnixStream {
    let mut s = raw_connect(task);
    raw_frame(
        &mut s,
        json!({"request": "hello", "version": PROTOCOL_VERSION, "task": task.id()})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(raw_response(&mut s)["response"], "hello");
    s
}

#[test]
fn bgtask_hardening_idle_connections_do_not_lock_out_owner() {
    let sb = Sandbox::new();
    let mut task = sb.spawn(sh("read line; echo \"got $line\"; sleep 300"));
    // A client that keeps its connection, and a subscriber, from before the flood.
    task.info().unwrap();
    let mut sub = task.subscribe().unwrap();
    // Idle connections, greeted and not, far beyond every cap (the owner's own uid).
    let mut idle = Vec::new();
    for i in 0..300 {
        idle.push(if i % 2 == 0 { greeted(&task) } else { raw_connect(&task) });
    }
    // Before: "supervisor busy" for everyone once 128 were open. Now the oldest idle
    // connection makes room for each newcomer.
    let info: serde_json::Value =
        serde_json::from_str(&sb.cli_ok(&["info", task.id(), "--json"])).unwrap();
    assert_eq!(info["status"]["state"], "running");
    let mut late = greeted(&task);
    raw_frame(&mut late, br#"{"request":"info"}"#);
    assert_eq!(raw_response(&mut late)["response"], "info");
    // The kept connection was closed to make room; the library reconnects on its own.
    assert_eq!(task.info().unwrap().status, Status::Running);
    task.write(b"hi\n").unwrap();
    // The subscription, busy or not, was spared: it hears the task's output.
    let deadline = Deadline::after(Duration::from_secs(20));
    loop {
        match sub.next(deadline).unwrap() {
            Some(Event::Output { stream: StreamName::Stdout, .. }) => break,
            Some(_) => {}
            None => panic!("the subscription was closed or heard nothing"),
        }
    }
    assert_eq!(wait_for_output(&mut task, StreamName::Stdout, "got hi"), "got hi\n");
    // Most of the idle connections were closed by the supervisor (end of file, no answer).
    let closed = idle
        .iter_mut()
        .map(|s| {
            s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            matches!(s.read(&mut [0u8; 1]), Ok(0))
        })
        .filter(|closed| *closed)
        .count();
    assert!(closed >= 300 - 96, "only {closed} of 300 idle connections were closed");
    drop(idle);
    task.delete().unwrap();
}

#[test]
fn bgtask_hardening_unknown_protocol_version_refused() {
    let sb = Sandbox::new();
    let task = sb.spawn(sh("sleep 300"));
    // Before: answered "hello v1" as if the version were fine.
    // Version 1 (stdin bytes as a JSON array of numbers) is refused like any other.
    for version in [0, 1, PROTOCOL_VERSION + 1, u32::MAX] {
        let mut s = raw_connect(&task);
        let hello = json!({"request": "hello", "version": version, "task": task.id()});
        raw_frame(&mut s, hello.to_string().as_bytes());
        let answer = raw_response(&mut s);
        assert_eq!(answer["response"], "error", "{answer}");
        assert_eq!(answer["kind"], "unsupported_version", "{answer}");
        assert!(answer["message"].as_str().unwrap().contains(&format!("version {version}")));
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the connection stays open after a refused hello");
    }
    // The right version for another task is refused too.
    let mut s = raw_connect(&task);
    raw_frame(
        &mut s,
        json!({"request": "hello", "version": PROTOCOL_VERSION, "task": "other"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(raw_response(&mut s)["kind"], "bad_request");
    // The client side: a supervisor speaking another version, or refusing ours, is a typed
    // error (not a hang, not a misread).
    let fake_sock = sb.pool_dir.join("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&fake_sock).unwrap();
    let server = std::thread::spawn(move || {
        let answers = [
            json!({"response": "hello", "version": PROTOCOL_VERSION + 1, "task": "fake"}),
            json!({"response": "error", "kind": "unsupported_version", "message": "not ours"}),
        ];
        for answer in answers {
            let (mut conn, _) = listener.accept().unwrap();
            let hello: serde_json::Value = raw_response(&mut conn);
            assert_eq!(hello["version"], PROTOCOL_VERSION);
            raw_frame(&mut conn, answer.to_string().as_bytes());
        }
    });
    let mut fake = sb.pool.task("fake").unwrap();
    fake.set_timeout(Some(Duration::from_secs(20)));
    let err = fake.info().unwrap_err();
    assert!(matches!(err, Error::Handshake { .. }), "{err}");
    let err = fake.info().unwrap_err();
    assert!(err.is_refusal(RefusalKind::UnsupportedVersion), "{err}");
    server.join().unwrap();
    task.delete().unwrap();
}

#[test]
fn bgtask_hardening_read_below_start_reports_gap() {
    let sb = Sandbox::new();
    // 3893 bytes written, the last 1000 retained.
    let mut task = sb.spawn(sh("seq 1 1000").retain(1000));
    wait_exit(&task);
    let all: Vec<u8> = (1..=1000).flat_map(|i| format!("{i}\n").into_bytes()).collect();
    let info = task.stream(StreamName::Stdout).info().unwrap();
    let start = all.len() as u64 - 1000;
    assert_eq!((info.start, info.limit), (start, all.len() as u64));
    // Before: bytes from `start`, offset raised, nothing to say that a gap was skipped.
    let chunk = task.stream(StreamName::Stdout).peek(10, 100).unwrap();
    assert_eq!((chunk.offset, chunk.dropped), (start, start - 10));
    assert_eq!(chunk.data, all[start as usize..start as usize + 100]);
    let chunk = task.stream(StreamName::Stdout).peek(start, 10).unwrap();
    assert_eq!(chunk.dropped, 0);
    // A consuming reader that never read: the bytes dropped before its mark are a gap too,
    // told once.
    let chunk = task.stream(StreamName::Stdout).read(100).unwrap();
    assert_eq!((chunk.offset, chunk.dropped), (start, start));
    let chunk = task.stream(StreamName::Stdout).read(100).unwrap();
    assert_eq!((chunk.offset, chunk.dropped), (start + 100, 0));
    // The CLI writes the retained bytes raw, notes the gap on stderr and exits 3.
    let out = sb.cli(&["read", task.id(), "--offset", "0"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(out.stdout, all[start as usize..]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{start} bytes")) && err.contains("dropped"), "{err}");
    assert!(err.contains(&format!("resumes at offset {start}")), "{err}");
    // Reading what is retained is no gap.
    let out = sb.cli(&["read", task.id(), "--offset", &start.to_string(), "--count", "4"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, all[start as usize..start as usize + 4]);
    task.delete().unwrap();
}

#[test]
fn bgtask_hardening_supervise_validates_input() {
    let sb = Sandbox::new();
    let escape = sb.root().join("escape");
    let mut nul_arg = supervise_request(&sb.pool_dir, "nularg", &["sleep", "3\u{0}00"]);
    let truncated = {
        let mut r = supervise_request(&sb.pool_dir, "short", &["sleep", "300"]);
        r.truncate(r.len() - 3);
        r
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("no request", Vec::new(), "no spawn request"),
        ("empty command", supervise_request(&sb.pool_dir, "empty", &[]), "empty command"),
        ("empty program", supervise_request(&sb.pool_dir, "blank", &[""]), "empty program"),
        (
            "path in the id",
            supervise_request(&sb.pool_dir, "../escape", &["sleep", "300"]),
            "invalid task id",
        ),
        (
            "id too long",
            supervise_request(&sb.pool_dir, &"x".repeat(65), &["sleep", "300"]),
            "invalid task id",
        ),
        ("NUL in an argument", std::mem::take(&mut nul_arg), "NUL"),
        ("truncated frame", truncated, "unreadable spawn request"),
        ("garbage", b"\x00\x00\x00\x05hello".to_vec(), "unreadable spawn request"),
        (
            "relative pool",
            supervise_request(Path::new("pool"), "rel", &["sleep", "300"]),
            "not an existing directory",
        ),
    ];
    for (what, stdin, expected) in cases {
        // Before: a panic (exit 101) on the empty command; the bad id was acted on.
        let out = run_supervise(&stdin);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {out:?}");
        assert!(err.starts_with("procyard-bgtask-supervise: "), "{what}: {err}");
        assert!(err.contains(expected), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        // The spawner still gets an answer naming the problem.
        let reply: serde_json::Value =
            procyard_core::frame::read_frame(&mut &out.stdout[..]).unwrap().unwrap();
        assert!(reply["error"].as_str().unwrap().contains(expected), "{what}: {reply}");
    }
    assert!(sb.files().is_empty(), "{:?}", sb.files());
    assert!(!escape.with_extension("sock").exists() && !escape.with_extension("json").exists());
    // The CLI's hidden mode is the same entry point.
    let mut child = Command::new(BIN)
        .arg("__supervise")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&supervise_request(&sb.pool_dir, "e", &[])).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty command"), "{out:?}");
    // A valid request still starts a task.
    let out = run_supervise(&supervise_request(&sb.pool_dir, "good", &["sleep", "300"]));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(sb.pool.record("good").unwrap().status, Status::Running);
    sb.pool.task("good").unwrap().delete().unwrap();
}

#[test]
fn bgtask_hardening_pool_files_are_private() {
    let sb = Sandbox::new();
    // Even under a permissive umask, what the pool creates is the owner's alone.
    let pool = sb.root().join("a/b/pool");
    let script = format!(
        "umask 000; exec {BIN} --pool '{}' spawn --log -- sh -c 'echo hi; echo ho >&2; sleep 300'",
        pool.display()
    );
    let out = Command::new("/bin/sh").arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let opened = TaskPool::open(&pool).unwrap();
    let mut task = opened.task(&id).unwrap();
    wait_for_output(&mut task, StreamName::Stderr, "ho");
    for dir in [sb.root().join("a"), sb.root().join("a/b"), pool.clone()] {
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
    }
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&pool).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().mode() & 0o777;
        let name = entry.file_name().to_string_lossy().into_owned();
        assert_eq!(mode, 0o600, "{name} is {mode:o}");
        seen.push(name.strip_prefix(&id).unwrap().to_owned());
    }
    seen.sort();
    assert_eq!(seen, [".data", ".json", ".sock", ".stderr.log", ".stdout.log"]);
    task.delete().unwrap();
}
