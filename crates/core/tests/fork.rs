//! `fork` and `daemonize` need a single-threaded process, so this test binary has its own
//! `main` (libtest would run each test on a thread of its own).

use std::time::Duration;

use procyard_core::fork::{
    DaemonConfig, Daemonized, ForkConfig, Forked, ForkedSibling, daemonize, exit_immediately, fork,
    fork_sibling, thread_count,
};
use procyard_core::{Child, Deadline, Error, Exit, Pid, ProcStat, ProcessIdentity, Signal};

fn fork_reports_exit_and_group() {
    match fork(ForkConfig { new_process_group: true, parent_death_signal: Some(Signal::KILL) })
        .unwrap()
    {
        Forked::Child => exit_immediately(9),
        Forked::Parent(mut child) => {
            assert_eq!(child.process_group(), Some(child.id()));
            assert_eq!(child.wait().unwrap(), Exit::Code(9));
        }
    }
}

/// A zygote forks a sibling: the sibling is this process's child, which adopts it by pid and
/// waits for it; in it, std (threads included) works as after a fork.
fn fork_sibling_makes_a_child_of_the_parent() {
    let me = Pid::current();
    let (read_end, write_end) = std::io::pipe().unwrap();
    let config = ForkConfig { new_process_group: true, parent_death_signal: Some(Signal::KILL) };
    match fork(ForkConfig::default()).unwrap() {
        Forked::Child => {
            drop(read_end);
            let code = match fork_sibling(config) {
                Ok(ForkedSibling::Child) => {
                    let grouped = ProcStat::read(Pid::current()).ok().flatten().map(|s| s.pgid);
                    let ok = Pid::parent() == Some(me)
                        && grouped == Some(Pid::current().as_raw())
                        && std::thread::spawn(|| 5).join().ok() == Some(5);
                    exit_immediately(if ok { 7 } else { 1 })
                }
                Ok(ForkedSibling::Forker(pid)) => {
                    use std::io::Write;
                    let mut write_end = write_end;
                    write_end.write_all(&pid.as_raw().to_be_bytes()).map_or(2, |()| 0)
                }
                Err(_) => 3,
            };
            exit_immediately(code)
        }
        Forked::Parent(mut zygote) => {
            drop(write_end);
            assert_eq!(zygote.wait().unwrap(), Exit::Code(0));
            let mut raw = [0u8; 4];
            std::io::Read::read_exact(&mut { read_end }, &mut raw).unwrap();
            let pid = Pid::from_raw(i32::from_be_bytes(raw)).unwrap();
            let mut sibling = Child::adopt(pid, true).unwrap();
            assert_eq!(sibling.process_group(), Some(pid));
            assert_eq!(sibling.wait().unwrap(), Exit::Code(7));
            // Reaped, it is nobody's child any more; nor was this process ever its own.
            assert!(Child::adopt(pid, false).is_err());
            assert!(Child::adopt(me, false).is_err());
        }
    }
}

fn thread_count_follows_threads() {
    let stat_threads = || ProcStat::read(Pid::current()).unwrap().unwrap().num_threads as usize;
    assert_eq!(thread_count().unwrap(), 1);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let rx = rx.clone();
            std::thread::spawn(move || {
                let _ = rx.lock().unwrap().recv();
            })
        })
        .collect();
    assert_eq!(thread_count().unwrap(), 4);
    assert_eq!(stat_threads(), 4, "the same count as /proc/self/stat");
    drop(tx);
    for t in threads {
        t.join().unwrap();
    }
    // A joined thread leaves the thread group a moment after it wakes its joiner.
    let deadline = Deadline::after(Duration::from_secs(30));
    while thread_count().unwrap() != 1 {
        assert!(!deadline.is_expired(), "threads still counted: {}", thread_count().unwrap());
        std::thread::yield_now();
    }
}

fn fork_refuses_in_a_threaded_process() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let _ = rx.recv();
    });
    let err = fork(ForkConfig::default()).unwrap_err();
    assert!(matches!(err, Error::NotSingleThreaded { threads: 2, .. }), "{err:?}");
    let err = daemonize(&DaemonConfig::default()).unwrap_err();
    assert!(matches!(err, Error::NotSingleThreaded { .. }), "{err:?}");
    let err = fork_sibling(ForkConfig::default()).unwrap_err();
    assert!(matches!(err, Error::NotSingleThreaded { .. }), "{err:?}");
    drop(tx);
    thread.join().unwrap();
}

fn daemonize_reports_the_daemon_pid() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("daemon-ran");
    match daemonize(&DaemonConfig::default()).unwrap() {
        Daemonized::Daemon(status) => {
            // In the daemon: not a session leader, adopted away from the caller, cwd is /.
            let me = procyard_core::ProcStat::read(procyard_core::Pid::current()).unwrap().unwrap();
            let ok = me.sid != procyard_core::Pid::current().as_raw()
                && std::env::current_dir().unwrap() == std::path::Path::new("/");
            std::fs::write(&marker, if ok { "ok" } else { "bad" }).unwrap();
            status.ready().unwrap();
            // Stay alive until the test has checked our identity, then leave.
            let deadline = Deadline::after(Duration::from_secs(20));
            while marker.exists() && !deadline.is_expired() {
                std::thread::yield_now();
            }
            exit_immediately(0);
        }
        Daemonized::Parent(pid) => {
            assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ok");
            let ident = ProcessIdentity::of(pid).unwrap().expect("daemon is running");
            let stat = procyard_core::ProcStat::read(pid).unwrap().unwrap();
            assert_ne!(
                stat.ppid,
                procyard_core::Pid::current().as_raw(),
                "daemon must not be our child"
            );
            std::fs::remove_file(&marker).unwrap();
            let deadline = Deadline::after(Duration::from_secs(20));
            while ident.is_running().unwrap() {
                assert!(!deadline.is_expired(), "daemon did not leave");
                std::thread::yield_now();
            }
        }
    }
}

fn daemonize_failure_is_an_error() {
    match daemonize(&DaemonConfig::default()) {
        Ok(Daemonized::Daemon(status)) => {
            status.fail("cannot open /nonexistent/queue.db").unwrap();
            exit_immediately(1);
        }
        Ok(Daemonized::Parent(pid)) => panic!("daemon {pid} should have failed"),
        Err(Error::DetachFailed { message }) => {
            assert!(message.contains("/nonexistent/queue.db"), "{message}")
        }
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

fn daemon_dying_silently_is_an_error() {
    match daemonize(&DaemonConfig::default()) {
        Ok(Daemonized::Daemon(status)) => {
            drop(status);
            exit_immediately(3);
        }
        Ok(Daemonized::Parent(pid)) => panic!("daemon {pid} never reported"),
        Err(Error::DetachFailed { message }) => {
            assert!(message.contains("before reporting"), "{message}")
        }
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

fn main() {
    let tests: &[(&str, fn())] = &[
        ("fork_reports_exit_and_group", fork_reports_exit_and_group),
        ("fork_sibling_makes_a_child_of_the_parent", fork_sibling_makes_a_child_of_the_parent),
        ("daemonize_reports_the_daemon_pid", daemonize_reports_the_daemon_pid),
        ("daemonize_failure_is_an_error", daemonize_failure_is_an_error),
        ("daemon_dying_silently_is_an_error", daemon_dying_silently_is_an_error),
        // Last: they start threads.
        ("thread_count_follows_threads", thread_count_follows_threads),
        ("fork_refuses_in_a_threaded_process", fork_refuses_in_a_threaded_process),
    ];
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let mut passed = 0;
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        test();
        println!("test {name} ... ok");
        passed += 1;
    }
    println!("{passed} passed, 0 failed");
}
