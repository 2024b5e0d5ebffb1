//! The parent-death-signal spawn (`clone(CLONE_VM | CLONE_VFORK)` in core) against real
//! processes: the signal arrives when the spawning thread or the whole parent dies, and the
//! child is set up exactly as on the `posix_spawn` path (descriptors, groups, cwd, environment,
//! signal mask and dispositions, typed exec errors with the OS errno).

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use procyard_core::{
    Command, Deadline, Error, Exit, Grouping, Pid, ProcStat, ProcessIdentity, Signal, Stdio,
};

/// Set in the re-executed test binary that plays the parent to be SIGKILLed.
const PARENT_ROLE: &str = "PROCYARD_TEST_PARENT_DEATH_ROLE";

fn output_of(cmd: &mut Command) -> (String, Exit) {
    let mut child = cmd.stdout(Stdio::Pipe).spawn().unwrap();
    let mut out = String::new();
    std::fs::File::from(child.take_stdout().unwrap()).read_to_string(&mut out).unwrap();
    let exit = child.wait_timeout(Duration::from_secs(30)).unwrap().expect("child exits");
    (out, exit)
}

#[test]
fn child_gets_the_signal_when_its_spawning_thread_exits() {
    let mut child = std::thread::spawn(|| {
        Command::new("sleep").arg("60").parent_death_signal(Signal::TERM).spawn().unwrap()
    })
    .join()
    .unwrap();
    let exit = child.wait_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(exit, Some(Exit::Signal { signal: Signal::TERM, core_dumped: false }));
}

#[test]
fn child_of_a_sigkilled_parent_gets_its_signal() {
    if std::env::var_os(PARENT_ROLE).is_some() {
        // The parent's role: spawn a sleeper in a group of its own that must die with us, say
        // its pid, and wait to be killed.
        let child = Command::new("sleep")
            .arg("60")
            .stdout(Stdio::Null)
            .parent_death_signal(Signal::KILL)
            .spawn()
            .unwrap();
        println!("sleeper {}", child.detach());
        loop {
            std::thread::park();
        }
    }
    let me = std::env::current_exe().unwrap();
    let mut parent = Command::new(me)
        .args(["--exact", "child_of_a_sigkilled_parent_gets_its_signal", "--nocapture"])
        .env(PARENT_ROLE, "1")
        .stdout(Stdio::Pipe)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(std::fs::File::from(parent.take_stdout().unwrap())).lines();
    let sleeper = loop {
        let line = lines.next().expect("the parent said its sleeper's pid").unwrap();
        if let Some(pid) = line.strip_prefix("sleeper ") {
            break Pid::from_raw(pid.trim().parse().unwrap()).unwrap();
        }
    };
    let ident = ProcessIdentity::of(sleeper).unwrap().expect("sleeper alive");
    assert_ne!(ProcStat::read(sleeper).unwrap().unwrap().pgid, parent.id().as_raw());
    parent.kill().unwrap();
    assert_eq!(parent.wait().unwrap().signal(), Some(Signal::KILL));
    let deadline = Deadline::after(Duration::from_secs(20));
    while ident.is_running().unwrap() {
        assert!(!deadline.is_expired(), "the sleeper outlived its SIGKILLed parent");
        std::thread::yield_now();
    }
}

#[test]
fn descriptors_cwd_and_environment_reach_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ready, w) = procyard_core::ready_pipe().unwrap();
    let (out, exit) = output_of(
        Command::shell("echo up >&5; printf '%s %s|' \"$GREETING\" \"$(pwd)\"; ls /proc/self/fd")
            .env("GREETING", "hello")
            .current_dir(dir.path())
            .stderr(Stdio::Null)
            .pass_fd(w.into_fd(), 5)
            .parent_death_signal(Signal::KILL),
    );
    assert_eq!(exit, Exit::Code(0));
    assert_eq!(
        ready.wait(Deadline::after(Duration::from_secs(10))).unwrap(),
        procyard_core::Readiness::Ready("up".into())
    );
    let (head, fds) = out.split_once('|').unwrap();
    assert_eq!(head, format!("hello {}", dir.path().canonicalize().unwrap().display()));
    // ls opens one directory fd (3); everything else must be stdio and the passed 5.
    let fds: Vec<i32> = fds.split_whitespace().map(|s| s.parse().unwrap()).collect();
    let unexpected: Vec<_> = fds.iter().filter(|f| ![0, 1, 2, 3, 5].contains(f)).collect();
    assert!(unexpected.is_empty(), "leaked fds {unexpected:?} in {fds:?}");
}

#[test]
fn groups_and_sessions_are_set_before_spawn_returns() {
    let me = ProcStat::read(Pid::current()).unwrap().unwrap();
    for (grouping, own_group, own_session) in [
        (Grouping::NewProcessGroup, true, false),
        (Grouping::NewSession, true, true),
        (Grouping::Inherit, false, false),
    ] {
        let mut child = Command::new("sleep")
            .arg("30")
            .grouping(grouping)
            .parent_death_signal(Signal::KILL)
            .spawn()
            .unwrap();
        let stat = ProcStat::read(child.id()).unwrap().unwrap();
        let pid = child.id().as_raw();
        assert_eq!(stat.pgid, if own_group { pid } else { me.pgid }, "{grouping:?}");
        assert_eq!(stat.sid, if own_session { pid } else { me.sid }, "{grouping:?}");
        child.kill().unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(Signal::KILL));
    }
}

#[test]
fn child_sees_clean_signal_mask_and_dispositions() {
    // This thread blocks USR1 (a signalfd) and Rust ignores SIGPIPE: the child must see
    // neither, and nothing blocked (the spawn blocks every signal around the clone).
    let _sigfd = procyard_core::SignalFd::new(&[Signal::USR1]).unwrap();
    let (out, exit) = output_of(
        Command::shell("grep -E '^Sig(Blk|Ign)' /proc/self/status")
            .parent_death_signal(Signal::KILL),
    );
    assert_eq!(exit, Exit::Code(0));
    assert_eq!(out.lines().count(), 2, "{out}");
    for line in out.lines() {
        let mask = line.split_whitespace().nth(1).unwrap();
        assert!(mask.chars().all(|c| c == '0'), "{line}");
    }
    // And the parent thread's own mask is as it was: USR1 still blocked, nothing more.
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let blocked = status.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
    let mask = u64::from_str_radix(blocked.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(mask, 1 << (libc_sigusr1() - 1), "{blocked}");
}

fn libc_sigusr1() -> u32 {
    Signal::USR1.as_raw() as u32
}

#[test]
fn exec_failures_are_typed_with_the_os_errno() {
    let pdeath = |cmd: &mut Command| cmd.parent_death_signal(Signal::KILL).spawn().unwrap_err();
    let err = pdeath(&mut Command::new("/nonexistent/program"));
    assert!(matches!(&err, Error::Spawn { .. }), "{err:?}");
    assert_eq!(err.raw_os_error(), Some(2));
    let err = pdeath(&mut Command::new("definitely-not-a-program-procyard"));
    assert!(matches!(&err, Error::Spawn { .. }), "{err:?}");
    assert_eq!(err.raw_os_error(), Some(2));
    let err = pdeath(Command::new("true").current_dir("/nonexistent/dir"));
    assert!(matches!(&err, Error::SpawnCwd { .. }), "{err:?}");
    assert_eq!(err.raw_os_error(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("noexec.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let err = pdeath(&mut Command::new(&script));
    assert!(matches!(&err, Error::Spawn { .. }), "{err:?}");
    assert_eq!(err.raw_os_error(), Some(13));
}

#[test]
fn many_threads_spawn_at_once_with_long_argument_lists() {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..25 {
                    let n = 1 + (t * 25 + i) * 40;
                    let (out, exit) = output_of(
                        Command::new("sh")
                            .args(["-c", "echo $#", "sh"])
                            .args((0..n).map(|a| format!("argument-{a}")))
                            .parent_death_signal(Signal::KILL),
                    );
                    assert_eq!(exit, Exit::Code(0));
                    assert_eq!(out.trim(), n.to_string());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
