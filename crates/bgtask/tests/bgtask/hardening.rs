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
    let sup = ProcessIdentity::of(Pid::from_raw(sup).unwrap()).unwrap().expect("supervisor");
    procyard_core::kill_process(sup.pid, Signal::KILL).unwrap();
    wait_until("the supervisor to die", || !sup.is_running().unwrap());
    assert_eq!(sb.pool.record(task.id()).unwrap().status, Status::Lost);
    task.disconnect();
}

/// The task's leader and every process of its group, once `ready` was printed.
fn task_group(task: &mut Task, ready: &str) -> (ProcessIdentity, Vec<ProcessIdentity>) {
    wait_for_output(task, StreamName::Stdout, ready);
    let pid = Pid::from_raw(task.info().unwrap().pid.unwrap()).unwrap();
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
        wait_until("the lost task's group to end", || !m.is_running().unwrap());
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
        wait_until("the escapee's setsid", || {
            ProcStat::read(pid).unwrap().is_some_and(|st| st.sid == pid.as_raw())
        });
        ProcessIdentity::of(pid).unwrap().expect("escapee alive")
    };
    // Killed: TERM to the task's group ends the shell; its setsid'd child is reparented to the
    // supervisor, which stops it and reaps it.
    let mut killed = sb.spawn(sh("setsid sleep 300 & echo \"escapee $!\"; wait"));
    let escapee = escapee_of(&mut killed);
    killed.kill(Signal::TERM).unwrap();
    wait_exit(&killed);
    wait_until("the escapee of a killed task to be stopped and reaped", || reaped(&escapee));
    killed.delete().unwrap();

    // Ended on its own: what it left running is stopped with it.
    let mut ended = sb.spawn(sh("setsid sleep 300 & echo \"escapee $!\"; read line"));
    let escapee = escapee_of(&mut ended);
    ended.write(b"bye\n").unwrap();
    assert_eq!(wait_exit(&ended), Status::Exited { code: 0 });
    wait_until("the escapee of an ended task to be stopped and reaped", || reaped(&escapee));
    ended.delete().unwrap();

    // Orphaned at once (its parent, a subshell, exits): paused and resumed with the task,
    // and gone — reaped — by the time delete returns.
    let mut deleted = sb.spawn(sh("(setsid sleep 300 & echo \"escapee $!\"); sleep 300"));
    let escapee = escapee_of(&mut deleted);
    let sup = deleted.info().unwrap().supervisor_pid;
    wait_until("the escapee to be adopted by the supervisor", || {
        ProcStat::read(escapee.pid).unwrap().is_some_and(|st| st.ppid == sup)
    });
    deleted.pause().unwrap();
    wait_until("the escapee to be paused", || {
        ProcStat::read(escapee.pid).unwrap().is_some_and(|st| st.is_stopped())
    });
    deleted.resume().unwrap();
    wait_until("the escapee to be resumed", || {
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
    wait_until("the owner's datagram", || task.info().unwrap().meta.get("marker").is_some());
    let info = task.info().unwrap();
    assert_eq!(info.meta.get("owner"), Some(&json!("me")), "another uid rewrote the metadata");
    assert_eq!(info.datagrams, 0, "{:?}", task.read_data(false).unwrap());
    assert_eq!(sb.pool.record(task.id()).unwrap().meta.get("owner"), Some(&json!("me")));
    // The owner is still heard.
    send(false, &["task-send", "from me"]);
    wait_until("the owner's message", || task.info().unwrap().datagrams == 1);
    assert_eq!(task.read_data(true).unwrap(), [json!("from me")]);
    task.delete().unwrap();
}
