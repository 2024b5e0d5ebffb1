//! Scenarios with command tasks, threads and servers (libtest harness: the process is
//! multi-threaded, so no closure is forked here; see `forked.rs` for those).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use procyard_core::testkit::{try_wait_for, wait_for};
use procyard_core::{Command, Deadline, Pid, ProcStat, Signal};
use procyard_procmgr::{
    Error, Outcome, ProcessManager, Scheduler, Server, ServerConfig, Strategy, Task, WorkerState,
};

#[path = "scenarios/waiting.rs"]
mod waiting;

fn sh(script: &str) -> Task {
    Task::command(Command::shell(script))
}

fn run_all(manager: &mut ProcessManager, timeout: Duration) {
    let deadline = Deadline::after(timeout);
    while manager.process_count() > 0 {
        assert!(!deadline.is_expired(), "{} children still running", manager.process_count());
        manager.step_timeout(Some(deadline.remaining())).unwrap();
    }
}

/// Whether any process is left in process group `pgid`.
fn group_alive(pgid: Pid) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    dir.flatten().any(|e| {
        e.file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
            .and_then(Pid::from_raw)
            .and_then(|p| ProcStat::read(p).ok().flatten())
            .is_some_and(|s| s.pgid == pgid.as_raw() && !s.is_zombie())
    })
}

/// Waits (polling: there is no event for the death of processes that are not our children)
/// until process group `pgid` is empty; whether it emptied within `within`. A SIGKILLed
/// process is not gone the moment the signal is sent: it still has to be scheduled to exit.
fn group_gone_within(pgid: Pid, within: Duration) -> bool {
    try_wait_for(within, || !group_alive(pgid))
}

#[test]
fn procmgr_p1_idle_manager_wakes_zero_times_in_1s() {
    let mut manager = ProcessManager::new().unwrap();
    manager.create_process(sh("exec sleep 30"), |_| {}).unwrap();
    let waker = manager.waker();
    let (tx, rx) = mpsc::channel();
    let stepper = std::thread::spawn(move || {
        let before = manager.wakeup_count();
        let handled = manager.step().unwrap();
        tx.send(()).unwrap();
        (manager, before, handled)
    });
    // Nothing may wake the manager for a whole second.
    assert_eq!(rx.recv_timeout(Duration::from_secs(1)), Err(mpsc::RecvTimeoutError::Timeout));
    waker.wakeup();
    rx.recv_timeout(Duration::from_secs(30)).expect("wakeup did not wake the manager");
    let (mut manager, before, handled) = stepper.join().unwrap();
    assert_eq!(manager.wakeup_count() - before, 1, "woke more than once");
    assert_eq!(handled, 1);
    assert_eq!(manager.process_count(), 1);
    manager.teardown(Duration::from_secs(2)).unwrap();
    assert_eq!(manager.process_count(), 0);
}

#[test]
fn procmgr_p2_host_command_child_is_not_reaped() {
    let mut hosts: Vec<std::process::Child> = (0..20)
        .map(|i| std::process::Command::new("sh").arg("-c").arg(format!("exit {i}")).spawn())
        .collect::<Result<_, _>>()
        .unwrap();
    let mut manager = ProcessManager::new().unwrap();
    let done = Arc::new(Mutex::new(0));
    for _ in 0..20 {
        let done = done.clone();
        manager
            .create_process(Task::command(Command::new("true")), move |o| {
                assert_eq!(o, Outcome::Exited { code: 0 });
                *done.lock().unwrap() += 1;
            })
            .unwrap();
    }
    run_all(&mut manager, Duration::from_secs(20));
    assert_eq!(*done.lock().unwrap(), 20);
    for (i, host) in hosts.iter_mut().enumerate() {
        let status = host.wait().expect("the host's child was stolen");
        assert_eq!(status.code(), Some(i as i32));
    }
}

#[test]
fn procmgr_p6_kill_processes_skips_exited_children() {
    let mut manager = ProcessManager::new().unwrap();
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    for script in ["exit 0", "exit 1", "exec sleep 30"] {
        let outcomes = outcomes.clone();
        manager.create_process(sh(script), move |o| outcomes.lock().unwrap().push(o)).unwrap();
    }
    let deadline = Deadline::after(Duration::from_secs(10));
    while outcomes.lock().unwrap().len() < 2 {
        assert!(!deadline.is_expired());
        manager.step_timeout(Some(deadline.remaining())).unwrap();
    }
    // Only the sleeping child is signalled; the reaped ones are never touched (no ESRCH).
    assert_eq!(manager.kill_processes(Signal::TERM).unwrap(), 1);
    run_all(&mut manager, Duration::from_secs(10));
    assert!(outcomes.lock().unwrap().contains(&Outcome::Killed { signal: Signal::TERM }));
    assert_eq!(manager.kill_processes(Signal::TERM).unwrap(), 0);
}

#[test]
fn procmgr_p7_crash_loop_backs_off_then_gives_up() {
    let config = ServerConfig::default()
        .workers(1)
        .backoff(Duration::from_millis(20), Duration::from_secs(1))
        .crash_limit(5, Duration::from_secs(60));
    let started = Instant::now();
    let server = Server::start(config, |_| Task::command(Command::new("false"))).unwrap();
    assert!(
        server.wait_until(Duration::from_secs(20), |s| s.workers == [WorkerState::Failed]),
        "{:?}",
        server.status()
    );
    let elapsed = started.elapsed();
    // 6 runs with waits of 20 + 40 + 80 + 160 + 320 ms between them.
    assert_eq!(server.status().starts, 6);
    assert!(elapsed >= Duration::from_millis(600), "restarted too fast: {elapsed:?}");
    server.stop(Duration::from_millis(200)).unwrap();
}

#[test]
fn procmgr_p7_stop_kills_workers_that_ignore_term() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::default().workers(2);
    let d = dir.path().display().to_string();
    let server = Server::start(config, move |_| {
        sh(&format!("trap '' TERM; touch '{d}/ready.'$$; while :; do sleep 1; done"))
    })
    .unwrap();
    assert!(server.wait_until(Duration::from_secs(10), |s| s.pids().len() == 2));
    // Wait (on a condition, with a deadline) until both shells ignore TERM.
    wait_for("both workers to ignore TERM", Duration::from_secs(10), || {
        std::fs::read_dir(dir.path()).unwrap().count() >= 2
    });
    let pids = server.status().pids();
    let started = Instant::now();
    server.stop(Duration::from_millis(300)).unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "KILL came before the grace: {elapsed:?}");
    // Not waiting forever for workers that ignore TERM (a generous bound: the machine may be
    // loaded).
    assert!(elapsed < Duration::from_secs(30), "stop took {elapsed:?}");
    // The shells were reaped by `stop`; their `sleep` children got the group's KILL too, but
    // may still be on their way out.
    for pid in pids {
        assert!(group_gone_within(pid, Duration::from_secs(30)), "group {pid} survived");
    }
}

#[test]
fn procmgr_p9_two_schedulers_in_one_process() {
    let run = |code: u8| {
        std::thread::spawn(move || {
            let scheduler = Scheduler::new(Strategy::Throttled(3)).unwrap();
            let handles: Vec<_> =
                (0..15).map(|_| scheduler.schedule(sh(&format!("exit {code}"))).unwrap()).collect();
            for h in handles {
                assert_eq!(h.wait(), Outcome::Exited { code });
            }
            scheduler.shutdown();
        })
    };
    let a = run(3);
    let b = run(4);
    let mut host = std::process::Command::new("sh").arg("-c").arg("exit 5").spawn().unwrap();
    a.join().unwrap();
    b.join().unwrap();
    assert_eq!(host.wait().unwrap().code(), Some(5));
    // No process-wide SIGCHLD handler was installed, and SIGCHLD is not ignored.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mask = |field: &str| {
        let hex = status.lines().find_map(|l| l.strip_prefix(field)).unwrap().trim();
        u64::from_str_radix(hex, 16).unwrap()
    };
    let chld = 1u64 << (Signal::CHLD.as_raw() - 1);
    assert_eq!(mask("SigCgt:") & chld, 0, "a SIGCHLD handler was installed");
    assert_eq!(mask("SigIgn:") & chld, 0, "SIGCHLD is ignored");
}

#[test]
fn procmgr_p11_join_accepts_concurrent_schedule() {
    let scheduler = Scheduler::new(Strategy::Throttled(4)).unwrap();
    let first = scheduler.schedule(sh("exit 0")).unwrap();
    let producer = {
        let scheduler = scheduler.clone();
        std::thread::spawn(move || {
            (0..40).map(|_| scheduler.schedule(sh("exit 0")).unwrap()).collect::<Vec<_>>()
        })
    };
    scheduler.join();
    let handles = producer.join().unwrap();
    scheduler.join();
    assert_eq!(first.wait(), Outcome::Exited { code: 0 });
    for h in handles {
        assert_eq!(h.try_result(), Some(Outcome::Exited { code: 0 }));
    }
    assert_eq!(scheduler.running(), 0);
    assert_eq!(scheduler.queued(), 0);
}

#[test]
fn procmgr_p12_wakeup_never_blocks() {
    let mut manager = ProcessManager::new().unwrap();
    let waker = manager.waker();
    let (tx, rx) = mpsc::channel();
    let waking = std::thread::spawn(move || {
        for _ in 0..1_000_000 {
            waker.wakeup();
        }
        tx.send(()).unwrap();
    });
    // Nobody consumes the wake-ups meanwhile: a wakeup that could block would never return.
    rx.recv_timeout(Duration::from_secs(60)).expect("wakeup blocked its caller");
    waking.join().unwrap();
    // A million unconsumed wake-ups are one pending event, and the manager still steps.
    assert_eq!(manager.step_timeout(Some(Duration::from_secs(5))).unwrap(), 1);
    assert_eq!(manager.step_timeout(Some(Duration::ZERO)).unwrap(), 0);
}

#[test]
fn procmgr_throttled_4_runs_at_most_4_of_8() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = Scheduler::new(Strategy::Throttled(4)).unwrap();
    let d = dir.path().display().to_string();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            // The first two tasks start together under `Throttled(4)`: once inside, each
            // leaves a mark and waits (up to 30 s) for the other's before counting, so the
            // first of them to count sees both inside however late a loaded machine runs
            // them. A scheduler that ran them one after the other would have each count 1.
            let rendezvous = match i {
                0 | 1 => format!(
                    "touch '{d}/in.{i}' && n=0 && while [ ! -e '{d}/in.{other}' ] \
                     && [ $n -lt 3000 ]; do sleep 0.01; n=$((n+1)); done && ",
                    other = 1 - i
                ),
                _ => String::new(),
            };
            let script = format!(
                "mkdir '{d}/run.{i}' && {rendezvous}ls '{d}' | grep -c '^run' > '{d}/count.{i}' \
                 && sleep 0.3 && rmdir '{d}/run.{i}'"
            );
            scheduler.schedule(sh(&script)).unwrap()
        })
        .collect();
    assert!(scheduler.running() <= 4);
    for h in handles {
        assert_eq!(h.wait(), Outcome::Exited { code: 0 });
    }
    let counts: Vec<usize> = (0..8)
        .map(|i| {
            std::fs::read_to_string(dir.path().join(format!("count.{i}")))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    let max = counts.iter().copied().max().unwrap();
    assert!(max <= 4, "{max} tasks ran at once: {counts:?}");
    assert!(max >= 2, "no parallelism at all: {counts:?}");
}

#[test]
fn procmgr_server_of_5_keeps_5_pids_and_replaces_killed() {
    let config = ServerConfig::default()
        .workers(5)
        .backoff(Duration::from_millis(10), Duration::from_secs(10));
    let server = Server::start(config, |_| sh("exec sleep 1000")).unwrap();
    assert!(server.wait_until(Duration::from_secs(10), |s| s.pids().len() == 5));
    let first: BTreeSet<Pid> = server.status().pids().into_iter().collect();
    assert_eq!(first.len(), 5, "pids not distinct");
    let victims: Vec<Pid> = first.iter().copied().take(2).collect();
    for &pid in &victims {
        procyard_core::kill_process(pid, Signal::KILL).unwrap();
    }
    let replaced = server.wait_until(Duration::from_secs(10), |s| {
        let pids: BTreeSet<Pid> = s.pids().into_iter().collect();
        pids.len() == 5 && victims.iter().all(|v| !pids.contains(v))
    });
    assert!(replaced, "{:?}", server.status());
    let now: BTreeSet<Pid> = server.status().pids().into_iter().collect();
    assert_eq!(now.intersection(&first).count(), 3);
    server.stop(Duration::from_millis(500)).unwrap();
}

#[test]
fn procmgr_stop_cancels_queued_and_stops_running() {
    let scheduler = Scheduler::new(Strategy::Throttled(2)).unwrap();
    let handles: Vec<_> =
        (0..5).map(|_| scheduler.schedule(sh("exec sleep 30")).unwrap()).collect();
    assert_eq!(scheduler.running(), 2);
    // A grace long enough for TERM to take effect on a loaded machine: the children die of
    // TERM, and `stop` returns as soon as they are reaped, not after the grace.
    let grace = Duration::from_secs(30);
    let started = Instant::now();
    scheduler.stop(grace).unwrap();
    assert!(started.elapsed() < grace, "stop waited for the grace");
    let outcomes: Vec<Outcome> = handles.into_iter().map(|h| h.wait()).collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == Outcome::Killed { signal: Signal::TERM }).count(),
        2
    );
    assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Cancelled).count(), 3);
    assert!(matches!(scheduler.schedule(sh("true")), Err(Error::ShutDown)));
}

#[test]
fn procmgr_handle_wait_timeout_and_try_result() {
    let scheduler = Scheduler::new(Strategy::default()).unwrap();
    let slow = scheduler.schedule(sh("exec sleep 30")).unwrap();
    assert_eq!(slow.try_result(), None);
    let started = Instant::now();
    assert_eq!(slow.wait_timeout(Duration::from_millis(100)), None);
    assert!(started.elapsed() >= Duration::from_millis(100));
    // TERM ends `sleep`; the grace only has to outlast a loaded machine's scheduling delay.
    scheduler.stop(Duration::from_secs(30)).unwrap();
    assert_eq!(slow.try_result(), Some(Outcome::Killed { signal: Signal::TERM }));
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    let deadline = Deadline::after(Duration::from_secs(20));
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(!deadline.is_expired(), "future never completed");
        std::thread::park_timeout(deadline.remaining());
    }
}

#[test]
fn procmgr_handle_is_a_future() {
    let scheduler = Scheduler::new(Strategy::Simple).unwrap();
    let a = scheduler.schedule(sh("sleep 0.1; exit 2")).unwrap();
    let b = scheduler.schedule(sh("exit 3")).unwrap();
    assert_eq!(block_on(a), Outcome::Exited { code: 2 });
    assert_eq!(block_on(b), Outcome::Exited { code: 3 });
}

#[test]
fn procmgr_command_missing_program_is_an_error() {
    let mut manager = ProcessManager::new().unwrap();
    let err = manager
        .create_process(Task::command(Command::new("/nonexistent/procyard-x")), |_| {})
        .unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/procyard-x"), "{err}");
    assert_eq!(manager.process_count(), 0);
}

#[test]
fn procmgr_scheduler_many_waiting_threads() {
    let scheduler = Scheduler::new(Strategy::Throttled(4)).unwrap();
    let workers: Vec<_> = (0..4u8)
        .map(|t| {
            let scheduler = scheduler.clone();
            std::thread::spawn(move || {
                for i in 0..15u8 {
                    let code = (t * 15 + i) % 100;
                    let h = scheduler.schedule(sh(&format!("exit {code}"))).unwrap();
                    assert_eq!(h.wait(), Outcome::Exited { code });
                }
            })
        })
        .collect();
    scheduler.join();
    for w in workers {
        w.join().unwrap();
    }
    scheduler.join();
    assert_eq!(scheduler.running(), 0);
    assert_eq!(scheduler.queued(), 0);
}
