//! The safety boundary (issue 13): a state file is believed only when it is ours and a
//! regular file, pid 1 is never signalled, escapees of a job are stopped with it, and a real
//! serf agent relays every answer of the example handler.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{BIN, Sandbox, is_alive, make_fifo, wait_for};
use serde_json::Value;

/// How long any single command may take before the test calls it a hang.
const PROMPT: Duration = Duration::from_secs(15);

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("{test}: skipped: needs root (pid namespaces, setpriv to another uid, mknod)");
    true
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The start time of `pid` (clock ticks since boot), for forging an identity.
fn start_time(pid: i32) -> u64 {
    procyard_core::ProcStat::read(procyard_core::Pid::from_raw(pid).unwrap())
        .unwrap()
        .unwrap()
        .start_time
}

#[test]
fn asyncjob_hardening_pid1_never_signalled() {
    if skip_unless_root("asyncjob_hardening_pid1_never_signalled") {
        return;
    }
    let sb = Sandbox::new("asyncjob_hardening_pid1_never_signalled");
    // Pid 1 of a new pid namespace (leading its own session, so its own group) forges a
    // running state naming itself, holds the lock as a monitor would, and runs `kill`. A
    // group kill of "its group" would be kill(-1): every other process of the namespace.
    let script = sb.path("pid1.sh");
    std::fs::write(
        &script,
        r#"set -u
dir=$1; bin=$2; state="$dir/job.state"
setsid sleep 300 &
victim=$!
ticks=$(cut -d' ' -f22 /proc/1/stat)
boot=$(cat /proc/sys/kernel/random/boot_id)
printf '{"status":"running","pid":1,"ppid":1,"time":1,"job_start_time":%s,"monitor_start_time":%s,"boot_id":"%s"}\n' \
    "$ticks" "$ticks" "$boot" > "$state"
exec 9>"$state.lock"
flock -x 9
"$bin" --state "$state" check > "$dir/check.out" 9>&-
"$bin" --state "$state" kill --signal TERM > "$dir/kill.out" 2> "$dir/kill.err" 9>&-
echo $? > "$dir/kill.code"
# A killed victim is a zombie of ours until reaped: read its state, not kill -0.
if [ "$(sed 's/.*) //' /proc/$victim/stat 2>/dev/null | cut -c1)" = S ]; then
    echo alive > "$dir/victim"
else
    echo gone > "$dir/victim"
fi
kill -KILL "$victim" 2>/dev/null
exit 0
"#,
    )
    .unwrap();
    let dir = sb.dir.path().to_string_lossy().into_owned();
    let ran = sb.run_with_deadline(
        "unshare",
        &["--pid", "--fork", "--mount-proc", "setsid", "sh", script.to_str().unwrap(), &dir, BIN],
        Duration::from_secs(60),
    );
    assert_eq!(ran.code, 0, "the namespace script failed: {}", ran.stderr);
    let read = |name: &str| std::fs::read_to_string(sb.path(name)).unwrap_or_default();
    // The forged state is believable: a running job whose identity matches pid 1.
    let checked: Value = serde_json::from_str(read("check.out").trim()).unwrap();
    assert_eq!(checked["status"], "running", "the forged state must read as running");
    assert_eq!(read("victim").trim(), "alive", "a process of the namespace was signalled");
    assert_eq!(read("kill.out").trim(), "failed");
    assert_eq!(read("kill.code").trim(), "1");
    let reason = read("kill.err");
    assert!(reason.contains("names process 1, which is never signalled"), "{reason}");
    sb.assert_no_strays();
}

/// Runs `setpriv` as nobody (uid and gid 65534, no groups).
fn as_nobody(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).args(args);
    cmd
}

#[test]
fn asyncjob_hardening_foreign_state_file_refused() {
    if skip_unless_root("asyncjob_hardening_foreign_state_file_refused") {
        return;
    }
    let sb = Sandbox::new("asyncjob_hardening_foreign_state_file_refused");
    chmod(sb.dir.path(), 0o755);
    // A shared directory like /tmp: world-writable and sticky.
    let shared = sb.path("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let state = shared.join("job.state");
    // A process of root's, leading its own group, as a job would.
    let mut victim = std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .env(common::TAG_VAR, &sb.tag)
        .spawn()
        .unwrap();
    let victim_pid = victim.id() as i32;
    // Nobody forges a running state naming it, exact identity included, and holds the lock.
    let forged = serde_json::json!({
        "status": "running", "pid": victim_pid, "ppid": victim_pid, "time": 1,
        "job_start_time": start_time(victim_pid), "boot_id": procyard_core::boot_id(),
    });
    let wrote = as_nobody(&["sh", "-c", "printf %s \"$1\" > \"$2\"", "sh"])
        .args([forged.to_string(), state.to_string_lossy().into_owned()])
        .status()
        .unwrap();
    assert!(wrote.success(), "nobody could not write the state");
    let lock = format!("{}.lock", state.display());
    let mut holder = as_nobody(&["flock", "-x", &lock, "-c", "echo locked; exec cat"])
        .env(common::TAG_VAR, &sb.tag)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");

    let refused = |ran: &common::Ran, what: &str| {
        assert_eq!(ran.code, 1, "{what} must fail: {} / {}", ran.stdout, ran.stderr);
        assert!(ran.stderr.contains("unsafe state file"), "{what}: {}", ran.stderr);
        assert!(ran.stderr.contains("belongs to uid 65534"), "{what}: {}", ran.stderr);
    };
    let ran = sb.job_with_deadline(&state, &["kill", "--signal", "TERM"], PROMPT);
    refused(&ran, "kill");
    assert_eq!(ran.stdout, "failed");
    let ran = sb.job_with_deadline(&state, &["check"], PROMPT);
    refused(&ran, "check");
    assert_eq!(ran.stdout, "", "check prints no state it does not trust");
    refused(&sb.job_with_deadline(&state, &["wait", "--timeout", "1s"], PROMPT), "wait");
    let ran = sb.job_with_deadline(&state, &["reap"], PROMPT);
    refused(&ran, "reap");
    assert_eq!(ran.stdout, "failed");
    let ran = sb.job_with_deadline(&state, &["start", "--", "true"], PROMPT);
    assert_eq!((ran.code, ran.stdout.as_str()), (1, "failed"), "{}", ran.stderr);
    assert!(state.exists(), "another user's file was removed");
    assert_eq!(victim.try_wait().unwrap(), None, "root's process was signalled");

    // Our own state is refused as well where others could have rewritten it: a
    // group-writable file, or a world-writable directory without the sticky bit.
    let own = shared.join("own.state");
    std::fs::write(&own, r#"{"status":"finished","pid":5,"ppid":4,"time":1}"#).unwrap();
    chmod(&own, 0o620);
    let ran = sb.job_with_deadline(&own, &["check"], PROMPT);
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("is writable by group"), "{}", ran.stderr);
    chmod(&own, 0o600);
    assert_eq!(sb.job_with_deadline(&own, &["check"], PROMPT).code, 0, "a private file is fine");
    chmod(&shared, 0o777);
    let ran = sb.job_with_deadline(&own, &["check"], PROMPT);
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("is writable by others"), "{}", ran.stderr);
    chmod(&shared, 0o1777);
    assert_eq!(sb.job_with_deadline(&own, &["reap"], PROMPT).stdout, "success");

    drop(holder.stdin.take());
    holder.wait().unwrap();
    victim.kill().unwrap();
    victim.wait().unwrap();
    sb.assert_no_strays();
}

/// A special file at `path` and what the errors call it.
fn make_special(sb: &Sandbox, path: &Path, kind: &str) -> &'static str {
    match kind {
        "fifo" => {
            make_fifo(path);
            "FIFO"
        }
        "socket" => {
            std::os::unix::net::UnixListener::bind(path).unwrap();
            "socket"
        }
        "device" => {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                path,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o600),
                rustix::fs::makedev(1, 5), // /dev/zero: reads never end
            )
            .expect("mknod");
            "character device"
        }
        "symlink" => {
            let name = path.file_name().unwrap().to_string_lossy();
            let target = sb.path(&format!("{name}.target"));
            make_fifo(&target);
            std::os::unix::fs::symlink(&target, path).unwrap();
            "symbolic link"
        }
        _ => unreachable!("{kind}"),
    }
}

#[test]
fn asyncjob_hardening_fifo_state_path_refused() {
    let sb = Sandbox::new("asyncjob_hardening_fifo_state_path_refused");
    let mut kinds = vec!["fifo", "socket", "symlink"];
    if is_root() {
        kinds.push("device");
    } else {
        eprintln!("asyncjob_hardening_fifo_state_path_refused: no device case (mknod needs root)");
    }
    let refused = |ran: &common::Ran, what: &str, found: &str| {
        assert_ne!(ran.code, 0, "{what} must fail: {}", ran.stdout);
        assert!(ran.stderr.contains("unsafe state file"), "{what}: {}", ran.stderr);
        assert!(ran.stderr.contains(&format!("is a {found}")), "{what}: {}", ran.stderr);
    };
    for kind in kinds {
        // At the state path: every verb answers at once, and the file stays.
        let state = sb.path(&format!("{kind}.state"));
        let found = make_special(&sb, &state, kind);
        for args in [
            &["check"][..],
            &["kill", "--signal", "TERM"],
            &["reap"],
            &["wait", "--timeout", "1s"],
            &["start", "--", "true"],
        ] {
            let ran = sb.job_with_deadline(&state, args, PROMPT);
            refused(&ran, &format!("{kind} state, {args:?}"), found);
            if ["kill", "reap", "start"].contains(&args[0]) {
                assert_eq!(ran.stdout, "failed", "{kind} state, {args:?}");
            }
        }
        assert!(std::fs::symlink_metadata(&state).is_ok(), "the {kind} was removed");

        // At the lock path, beside a live-looking state of ours: the same.
        let state = sb.path(&format!("{kind}-lock.state"));
        let lock = PathBuf::from(format!("{}.lock", state.display()));
        let found = make_special(&sb, &lock, kind);
        let ran = sb.job_with_deadline(&state, &["start", "--", "true"], PROMPT);
        refused(&ran, &format!("{kind} lock, start"), found);
        assert_eq!(ran.stdout, "failed");
        let running =
            serde_json::json!({"status": "running", "pid": 999_999, "ppid": 999_998, "time": 1});
        std::fs::write(&state, running.to_string()).unwrap();
        for args in [&["check"][..], &["kill"], &["reap"], &["wait", "--timeout", "1s"]] {
            let ran = sb.job_with_deadline(&state, args, PROMPT);
            refused(&ran, &format!("{kind} lock, {args:?}"), found);
        }
        assert!(std::fs::symlink_metadata(&lock).is_ok(), "the {kind} lock was removed");
    }
    sb.assert_no_strays();
}

#[test]
fn asyncjob_hardening_setsid_grandchild_stopped_by_kill() {
    let sb = Sandbox::new("asyncjob_hardening_setsid_grandchild_stopped_by_kill");
    let pid_file = sb.path("escapee.pid");
    let script = format!("setsid sleep 300 & echo $! > '{}'; wait", pid_file.display());
    let ran = sb.job(&["start", "--shell", &script]);
    assert_eq!(ran.stdout, "success", "{}", ran.stderr);
    // Wait until the grandchild runs `sleep` in a session of its own: out of the job's group.
    let escapee = || -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()?;
        let stat = procyard_core::ProcStat::read(procyard_core::Pid::from_raw(pid)?).ok()??;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (stat.pgid == pid && comm.trim() == "sleep").then_some(pid)
    };
    wait_for("the setsid'd sleep", Duration::from_secs(20), || escapee().is_some());
    let escapee = escapee().unwrap();
    let job = sb.check()["pid"].as_i64().unwrap() as i32;
    assert_ne!(
        procyard_core::ProcStat::read(procyard_core::Pid::from_raw(job).unwrap())
            .unwrap()
            .unwrap()
            .pgid,
        escapee,
        "the grandchild must have left the job's group"
    );

    let ran = sb.job_with_deadline(Path::new(&sb.state()), &["kill", "--signal", "TERM"], PROMPT);
    assert_eq!(ran.stdout, "success", "{}", ran.stderr);
    // The monitor stops the escapees before it records the end, so `kill` returning with the
    // job finished means they are gone (reaped, not even a zombie).
    assert!(!is_alive(escapee), "the setsid'd grandchild survived the kill");
    assert!(!Path::new(&format!("/proc/{escapee}")).exists(), "the escapee was not reaped");
    let state = sb.check();
    assert_eq!(state["status"], "finished");
    assert_eq!(state["signal"], "SIGTERM");
    assert_eq!(sb.job(&["reap"]).stdout, "success");
    sb.assert_no_strays();
}
