//! Core primitives against real processes.

use std::io::Read;
use std::os::fd::AsFd;
use std::time::Duration;

use procyard_core::{Command, Error, Exit, Grouping, Signal, Stdio, fd};

#[test]
fn exit_code_is_reported_exactly() {
    let mut child = Command::shell("exit 7").spawn().unwrap();
    assert_eq!(child.wait().unwrap(), Exit::Code(7));
    assert_eq!(child.try_wait().unwrap(), Some(Exit::Code(7)));
}

#[test]
fn signal_death_is_reported_exactly() {
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    child.signal(Signal::TERM).unwrap();
    assert_eq!(child.wait().unwrap(), Exit::Signal { signal: Signal::TERM, core_dumped: false });
    assert!(matches!(child.signal(Signal::TERM), Err(Error::AlreadyReaped { .. })));
}

#[test]
fn stdout_pipe_and_env_and_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::shell("printf '%s %s' \"$GREETING\" \"$(pwd)\"")
        .env("GREETING", "hello")
        .current_dir(dir.path())
        .stdout(Stdio::Pipe)
        .spawn()
        .unwrap();
    let mut out = String::new();
    std::fs::File::from(child.take_stdout().unwrap()).read_to_string(&mut out).unwrap();
    assert_eq!(child.wait().unwrap(), Exit::Code(0));
    let canonical = dir.path().canonicalize().unwrap();
    assert_eq!(out, format!("hello {}", canonical.display()));
}

#[test]
fn env_remove_and_clear() {
    let mut child = Command::shell("test -z \"$HOME\" && test \"$ONLY\" = yes")
        .env_clear()
        .env("ONLY", "yes")
        .spawn()
        .unwrap();
    assert_eq!(child.wait().unwrap(), Exit::Code(0));
}

#[test]
fn spawn_errors_are_typed() {
    let err = Command::new("/nonexistent/program").spawn().unwrap_err();
    assert!(matches!(&err, Error::Spawn { .. }), "{err:?}");
    assert_eq!(err.raw_os_error(), Some(libc_enoent()));
    let err = Command::new("definitely-not-a-program-procyard").spawn().unwrap_err();
    assert!(matches!(&err, Error::Spawn { .. }), "{err:?}");
    let err = Command::new("true").current_dir("/nonexistent/dir").spawn().unwrap_err();
    assert!(matches!(&err, Error::SpawnCwd { .. }), "{err:?}");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("noexec.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let err = Command::new(&script).spawn().unwrap_err();
    assert!(matches!(&err, Error::Spawn { .. }), "{err:?}");
    assert_eq!(err.raw_os_error(), Some(13));
    let err = Command::new("true")
        .stdout(Stdio::Truncate("/nonexistent/dir/out".into()))
        .spawn()
        .unwrap_err();
    assert!(matches!(&err, Error::Path { .. }), "{err:?}");
}

fn libc_enoent() -> i32 {
    2
}

#[test]
fn wait_timeout_honours_its_deadline() {
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let start = std::time::Instant::now();
    assert_eq!(child.wait_timeout(Duration::from_millis(100)).unwrap(), None);
    assert!(start.elapsed() >= Duration::from_millis(100));
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(Signal::KILL));
}

#[test]
fn signal_group_reaches_grandchildren() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild");
    let mut child = Command::shell(format!("sleep 60 & echo $! > {}; wait", pidfile.display()))
        .spawn()
        .unwrap();
    let deadline = procyard_core::Deadline::after(Duration::from_secs(10));
    let grandchild = loop {
        if let Ok(s) = std::fs::read_to_string(&pidfile)
            && s.ends_with('\n')
        {
            break s.trim().parse::<i32>().unwrap();
        }
        assert!(!deadline.is_expired(), "grandchild never started");
        // The shell writes the file once; wait for it through the child's own progress.
        std::thread::yield_now();
    };
    let gpid = procyard_core::Pid::from_raw(grandchild).unwrap();
    let ident = procyard_core::ProcessIdentity::of(gpid).unwrap().unwrap();
    child.signal_group(Signal::KILL).unwrap();
    child.wait().unwrap();
    // The grandchild was reparented; it must be dead (gone, or a zombie of its reaper).
    let deadline = procyard_core::Deadline::after(Duration::from_secs(10));
    while ident.is_running().unwrap() {
        assert!(!deadline.is_expired(), "grandchild survived the group kill");
        std::thread::yield_now();
    }
}

#[test]
fn inherit_grouping_refuses_group_signals() {
    let mut child = Command::new("true").grouping(Grouping::Inherit).spawn().unwrap();
    assert!(matches!(child.signal_group(Signal::TERM), Err(Error::NoProcessGroup { .. })));
    child.wait().unwrap();
}

#[test]
fn new_session_child_leads_its_session() {
    let mut child = Command::new("sleep").arg("30").grouping(Grouping::NewSession).spawn().unwrap();
    let stat = procyard_core::ProcStat::read(child.id()).unwrap().unwrap();
    assert_eq!(stat.sid, child.id().as_raw());
    assert_eq!(stat.pgid, child.id().as_raw());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn parent_death_signal_path_works() {
    let mut child = Command::shell("exit 3").parent_death_signal(Signal::KILL).spawn().unwrap();
    assert_eq!(child.wait().unwrap(), Exit::Code(3));
    let err = Command::new("/nonexistent").parent_death_signal(Signal::KILL).spawn().unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
}

#[test]
fn child_sees_clean_signal_mask_and_dispositions() {
    // SigBlk and SigIgn of the child must be all zero even if this thread blocks USR1.
    let _sigfd = procyard_core::SignalFd::new(&[Signal::USR1]).unwrap();
    let mut child = Command::shell("grep -E '^Sig(Blk|Ign)' /proc/self/status")
        .stdout(Stdio::Pipe)
        .spawn()
        .unwrap();
    let mut out = String::new();
    std::fs::File::from(child.take_stdout().unwrap()).read_to_string(&mut out).unwrap();
    child.wait().unwrap();
    for line in out.lines() {
        let mask = line.split_whitespace().nth(1).unwrap();
        assert!(mask.chars().all(|c| c == '0'), "{line}");
    }
}

#[test]
fn fds_handed_out_are_close_on_exec() {
    let mut child = Command::new("cat")
        .stdin(Stdio::Pipe)
        .stdout(Stdio::Pipe)
        .stderr(Stdio::Pipe)
        .spawn()
        .unwrap();
    assert!(fd::is_close_on_exec(child.pidfd()).unwrap());
    let stdin = child.take_stdin().unwrap();
    let stdout = child.take_stdout().unwrap();
    let stderr = child.take_stderr().unwrap();
    for f in [&stdin, &stdout, &stderr] {
        assert!(fd::is_close_on_exec(f.as_fd()).unwrap());
    }
    let (r, w) = procyard_core::ready_pipe().unwrap();
    assert!(fd::is_close_on_exec(r.as_fd()).unwrap());
    let w = w.into_fd();
    assert!(fd::is_close_on_exec(w.as_fd()).unwrap());
    drop(stdin);
    child.wait().unwrap();
}

#[test]
fn child_inherits_only_its_stdio_and_passed_fds() {
    let (_r, w) = procyard_core::ready_pipe().unwrap();
    let mut child = Command::shell("ls /proc/self/fd | sort -n | tr '\\n' ' '")
        .stdout(Stdio::Pipe)
        .stderr(Stdio::Null)
        .pass_fd(w.into_fd(), 5)
        .spawn()
        .unwrap();
    let mut out = String::new();
    std::fs::File::from(child.take_stdout().unwrap()).read_to_string(&mut out).unwrap();
    child.wait().unwrap();
    // ls itself opens one directory fd (3); everything else must be 0,1,2 and the passed 5.
    let fds: Vec<i32> = out.split_whitespace().map(|s| s.parse().unwrap()).collect();
    let unexpected: Vec<_> = fds.iter().filter(|f| ![0, 1, 2, 3, 5].contains(f)).collect();
    assert!(unexpected.is_empty(), "leaked fds {unexpected:?} in {fds:?}");
    assert!(fds.contains(&5));
}

#[test]
fn ready_pipe_reports_ready_closed_and_timeout() {
    use procyard_core::{Deadline, Readiness};
    let (mut r, w) = procyard_core::ready_pipe().unwrap();
    let mut child = Command::shell("echo up >&4").pass_fd(w.into_fd(), 4).spawn().unwrap();
    assert_eq!(
        r.wait(Deadline::after(Duration::from_secs(10))).unwrap(),
        Readiness::Ready("up".into())
    );
    child.wait().unwrap();

    let (mut r, w) = procyard_core::ready_pipe().unwrap();
    let mut child = Command::new("true").pass_fd(w.into_fd(), 4).spawn().unwrap();
    assert_eq!(r.wait(Deadline::after(Duration::from_secs(10))).unwrap(), Readiness::Closed);
    child.wait().unwrap();

    let (mut r, w) = procyard_core::ready_pipe().unwrap();
    let mut child = Command::new("sleep").arg("30").pass_fd(w.into_fd(), 4).spawn().unwrap();
    assert_eq!(r.wait(Deadline::after(Duration::from_millis(50))).unwrap(), Readiness::TimedOut);
    child.kill_and_reap().unwrap();
}

#[test]
fn pidfd_wakes_a_mio_loop_on_exit() {
    use procyard_core::mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().unwrap();
    let mut child = Command::new("true").spawn().unwrap();
    poll.registry().register(&mut child, Token(7), Interest::READABLE).unwrap();
    let mut events = Events::with_capacity(4);
    let deadline = procyard_core::Deadline::after(Duration::from_secs(10));
    loop {
        poll.poll(&mut events, Some(deadline.remaining())).unwrap();
        if events.iter().any(|e| e.token() == Token(7)) {
            break;
        }
        assert!(!deadline.is_expired(), "no exit event");
    }
    assert_eq!(child.try_wait().unwrap(), Some(Exit::Code(0)));
}

/// `has_exited` says whether the child ended without reaping it: the exit code is still
/// there for `try_wait` afterwards, and a running child is not "exited".
#[test]
fn has_exited_tells_without_reaping() {
    use procyard_core::mio::{Events, Interest, Poll, Token};
    let mut running = Command::new("sleep").arg("30").spawn().unwrap();
    assert!(!running.has_exited().unwrap());
    let mut poll = Poll::new().unwrap();
    let mut child = Command::shell("exit 3").spawn().unwrap();
    poll.registry().register(&mut child, Token(7), Interest::READABLE).unwrap();
    let mut events = Events::with_capacity(4);
    let deadline = procyard_core::Deadline::after(Duration::from_secs(10));
    while !events.iter().any(|e| e.token() == Token(7)) {
        assert!(!deadline.is_expired(), "no exit event");
        poll.poll(&mut events, Some(deadline.remaining())).unwrap();
    }
    assert!(child.has_exited().unwrap());
    assert!(child.has_exited().unwrap(), "asking again reaps nothing either");
    assert_eq!(child.try_wait().unwrap(), Some(Exit::Code(3)));
    assert!(child.has_exited().unwrap(), "and a reaped child has exited");
    assert!(!running.has_exited().unwrap());
    running.kill_and_reap().unwrap();
}

#[test]
fn drop_kills_and_reaps_the_group() {
    let child = Command::new("sleep").arg("30").spawn().unwrap();
    let ident = procyard_core::ProcessIdentity::of(child.id()).unwrap().unwrap();
    drop(child);
    assert!(!ident.is_same_process().unwrap(), "dropped child must be killed and reaped");
}

#[test]
fn detach_leaves_the_process_alone() {
    // The shell waits on its stdin; detaching closes our end, so it leaves by itself.
    let mut child = Command::shell("read line; exit 0").stdin(Stdio::Pipe).spawn().unwrap();
    let stdin = child.take_stdin().unwrap();
    let ident = procyard_core::ProcessIdentity::of(child.id()).unwrap().unwrap();
    let pid = child.detach();
    assert!(ident.is_running().unwrap(), "detached process {pid} must live on");
    drop(stdin);
    let deadline = procyard_core::Deadline::after(Duration::from_secs(10));
    while ident.is_running().unwrap() {
        assert!(!deadline.is_expired(), "detached shell did not see end of file");
        std::thread::yield_now();
    }
}

#[test]
fn recycled_pid_identity_is_refused() {
    // A state that names a live, unrelated process with another start time.
    let mut unrelated = Command::new("sleep").arg("30").spawn().unwrap();
    let real = procyard_core::ProcessIdentity::of(unrelated.id()).unwrap().unwrap();
    let stale = procyard_core::ProcessIdentity { start_time: real.start_time - 1, ..real.clone() };
    assert!(real.is_same_process().unwrap());
    assert!(!stale.is_same_process().unwrap());
    assert!(!stale.is_running().unwrap());
    unrelated.kill_and_reap().unwrap();
    assert!(!real.is_same_process().unwrap(), "a reaped process is gone");
}

#[test]
fn signal_source_wakes_a_mio_loop() {
    use procyard_core::SignalSource;
    use procyard_core::mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().unwrap();
    let mut source = SignalSource::new(&[Signal::USR2]).unwrap();
    poll.registry().register(&mut source, Token(1), Interest::READABLE).unwrap();
    let me = procyard_core::Pid::current().to_string();
    let mut kill = Command::new("kill").args(["-USR2", &me]).spawn().unwrap();
    assert!(kill.wait().unwrap().success());
    let mut events = Events::with_capacity(4);
    let deadline = procyard_core::Deadline::after(Duration::from_secs(10));
    loop {
        match poll.poll(&mut events, Some(deadline.remaining())) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("{e}"),
        }
        if source.pending().contains(&Signal::USR2) {
            break;
        }
        assert!(!deadline.is_expired(), "signal never arrived");
    }
}
