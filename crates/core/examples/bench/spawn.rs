//! Part `spawn` of `../bench.rs`: what one spawn costs the parent, for the three ways a
//! `/bin/true` child can be started with the options the daemon uses (new process group,
//! stdout and stderr piped): `posix_spawn` (no parent-death signal), core's
//! `clone(CLONE_VM | CLONE_VFORK)` spawn (with one), and fork + exec with one (the shape of
//! the path it replaced: fork, exec in the child, the parent waits for the exec on a
//! close-on-exec pipe). Each in a parent of a few MiB and again beside resident ballast
//! (`PROCYARD_BENCH_SPAWN_MIB`, default 12 — the daemon's RSS — and 512), in interleaved
//! rounds whose order rotates.
//!
//! Per spawn: the wall time until the spawn returned (p50, p99 over every round), and CPU
//! times, steadier on a loaded machine: the spawning thread's own (`CLOCK_THREAD_CPUTIME_ID`
//! over the spawn) and the child's until it was reaped (its rusage).

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use procyard_core::{
    Command, Deadline, ForkConfig, Forked, Grouping, Readiness, Signal, Stdio, exit_immediately,
};

const ROUNDS: usize = 6;
const SPAWNS_PER_ROUND: usize = 300;

#[derive(Clone, Copy, PartialEq)]
enum Method {
    PosixSpawn,
    CloneVfork,
    ForkExec,
}

impl Method {
    const ALL: [Method; 3] = [Method::PosixSpawn, Method::CloneVfork, Method::ForkExec];

    fn name(self) -> &'static str {
        match self {
            Method::PosixSpawn => "posix_spawn (no parent-death signal)",
            Method::CloneVfork => "clone(VM|VFORK) + parent-death signal",
            Method::ForkExec => "fork + exec + parent-death signal",
        }
    }
}

#[derive(Default)]
struct Samples {
    wall_us: Vec<f64>,
    thread_cpu_us: Vec<f64>,
    child_cpu_us: Vec<f64>,
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// One spawn + reap; returns (wall time of the spawn, thread CPU of the spawn, child CPU).
fn one(method: Method) -> (Duration, Duration, Duration) {
    let (t0, c0) = (Instant::now(), thread_cpu());
    let mut child = match method {
        Method::PosixSpawn | Method::CloneVfork => {
            let mut cmd = Command::new("/bin/true");
            cmd.grouping(Grouping::NewProcessGroup).stdout(Stdio::Pipe).stderr(Stdio::Pipe);
            if method == Method::CloneVfork {
                cmd.parent_death_signal(Signal::KILL);
            }
            cmd.spawn().unwrap()
        }
        Method::ForkExec => {
            let (mut exec_seen, exec_end) = procyard_core::ready_pipe().unwrap();
            let config =
                ForkConfig { new_process_group: true, parent_death_signal: Some(Signal::KILL) };
            match procyard_core::fork(config).unwrap() {
                Forked::Child => {
                    let _keep_until_exec = exec_end;
                    let _ = std::process::Command::new("/bin/true").exec();
                    exit_immediately(127)
                }
                Forked::Parent(child) => {
                    drop(exec_end);
                    let seen = exec_seen.wait(Deadline::after(Duration::from_secs(30))).unwrap();
                    assert_eq!(seen, Readiness::Closed);
                    child
                }
            }
        }
    };
    let (wall, cpu) = (t0.elapsed(), thread_cpu().saturating_sub(c0));
    let (exit, usage) = child.wait_usage().unwrap();
    assert!(exit.success());
    (wall, cpu, usage.user + usage.system)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn med(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    pct(&v, 0.5)
}

/// Resident ballast of `mib` MiB, every page written.
fn ballast(mib: usize) -> Vec<u8> {
    let mut v = vec![0u8; mib << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    v
}

pub(super) fn run() {
    let sizes: Vec<usize> = std::env::var("PROCYARD_BENCH_SPAWN_MIB")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![0, 12, 512]);
    for mib in sizes {
        let weight = ballast(mib);
        let mut samples: Vec<Samples> = Method::ALL.iter().map(|_| Samples::default()).collect();
        for round in 0..ROUNDS {
            for k in 0..Method::ALL.len() {
                let m = (round + k) % Method::ALL.len();
                for _ in 0..SPAWNS_PER_ROUND {
                    let (wall, cpu, child) = one(Method::ALL[m]);
                    samples[m].wall_us.push(wall.as_secs_f64() * 1e6);
                    samples[m].thread_cpu_us.push(cpu.as_secs_f64() * 1e6);
                    samples[m].child_cpu_us.push(child.as_secs_f64() * 1e6);
                }
            }
        }
        std::hint::black_box(&weight);
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load = load.split_whitespace().next().unwrap_or("?").to_owned();
        for s in &mut samples {
            s.wall_us.sort_by(|a, b| a.total_cmp(b));
        }
        let (base50, base99) = (pct(&samples[0].wall_us, 0.5), pct(&samples[0].wall_us, 0.99));
        for (m, s) in Method::ALL.iter().zip(&samples) {
            let (p50, p99) = (pct(&s.wall_us, 0.5), pct(&s.wall_us, 0.99));
            let what = format!("spawn /bin/true, {mib} MiB ballast: {}", m.name());
            println!(
                "BENCH\t{what}, p50\t{p50:.1}\tus\tposix_spawn\t{base50:.1}\t{:.2}x",
                base50 / p50
            );
            println!(
                "BENCH\t{what}, p99\t{p99:.1}\tus\tposix_spawn\t{base99:.1}\t{:.2}x",
                base99 / p99
            );
            println!(
                "  {what}: CPU per spawn (medians): spawning thread {:.1} us, child {:.1} us \
                 (load {load}, {ROUNDS} interleaved rounds of {SPAWNS_PER_ROUND})",
                med(&s.thread_cpu_us),
                med(&s.child_cpu_us),
            );
        }
    }
}
