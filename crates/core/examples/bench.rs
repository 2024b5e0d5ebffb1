//! procyard-core benchmarks (`cargo xtask bench`): spawn + wait rates, child-exit notification
//! latency and frame throughput, each beside a baseline measured in the same run, and what one
//! spawn costs with and without a parent-death signal (part `spawn`, `bench/spawn.rs`).
//!
//! `PROCYARD_BENCH_ONLY=spawn` (a comma-separated list of `rates`, `latency`, `frames`,
//! `spawn`) runs only those parts.

#[path = "bench/spawn.rs"]
mod spawn;

use std::io::Write;
use std::time::Instant;

use procyard_core::mio::{Events, Interest, Poll, Token};
use procyard_core::{Command, FrameDecoder, Stdio, frame};
use serde::{Deserialize, Serialize};

const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn row(metric: &str, value: f64, unit: &str, baseline: &str, base: f64, higher_is_better: bool) {
    let ratio = if higher_is_better { value / base } else { base / value };
    println!("BENCH\t{metric}\t{value:.1}\t{unit}\t{baseline}\t{base:.1}\t{ratio:.2}x");
}

fn serial_procyard(n: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        let mut c = Command::new("/bin/true").spawn().unwrap();
        c.wait().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn serial_std(n: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        std::process::Command::new("/bin/true").status().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn parallel_procyard(n: usize, in_flight: usize) -> f64 {
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(64);
    let mut slots: Vec<Option<procyard_core::Child>> = (0..in_flight).map(|_| None).collect();
    let start = Instant::now();
    let (mut started, mut done) = (0, 0);
    for (i, slot) in slots.iter_mut().enumerate() {
        let mut c = Command::new("/bin/true").spawn().unwrap();
        poll.registry().register(&mut c, Token(i), Interest::READABLE).unwrap();
        *slot = Some(c);
        started += 1;
    }
    while done < n {
        poll.poll(&mut events, None).unwrap();
        for ev in events.iter() {
            let i = ev.token().0;
            let mut c = slots[i].take().unwrap();
            c.try_wait().unwrap().expect("readable pidfd means exited");
            poll.registry().deregister(&mut c).unwrap();
            done += 1;
            if started < n {
                let mut c = Command::new("/bin/true").spawn().unwrap();
                poll.registry().register(&mut c, Token(i), Interest::READABLE).unwrap();
                slots[i] = Some(c);
                started += 1;
            }
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn parallel_std(n: usize, in_flight: usize) -> f64 {
    let start = Instant::now();
    let mut queue: std::collections::VecDeque<std::process::Child> =
        (0..in_flight).map(|_| std::process::Command::new("/bin/true").spawn().unwrap()).collect();
    let mut started = in_flight;
    let mut done = 0;
    while let Some(mut c) = queue.pop_front() {
        c.wait().unwrap();
        done += 1;
        if started < n {
            queue.push_back(std::process::Command::new("/bin/true").spawn().unwrap());
            started += 1;
        }
    }
    assert_eq!(done, n);
    n as f64 / start.elapsed().as_secs_f64()
}

/// Latency from releasing a blocked child (one byte on its stdin) to the parent learning
/// of its exit: procyard's mio loop on a pidfd.
fn latency_procyard(n: usize) -> Vec<f64> {
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(4);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = Command::new("head")
            .args(["-c", "1"])
            .stdin(Stdio::Pipe)
            .stdout(Stdio::Null)
            .spawn()
            .unwrap();
        poll.registry().register(&mut c, Token(0), Interest::READABLE).unwrap();
        let mut stdin = std::fs::File::from(c.take_stdin().unwrap());
        let t0 = Instant::now();
        stdin.write_all(b"x").unwrap();
        loop {
            poll.poll(&mut events, None).unwrap();
            if !events.is_empty() {
                break;
            }
        }
        c.try_wait().unwrap().expect("exited");
        out.push(t0.elapsed().as_secs_f64() * 1e6);
        poll.registry().deregister(&mut c).unwrap();
    }
    out
}

/// The same with a bare blocking `waitpid` (std's `Child::wait`).
fn latency_waitpid(n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = std::process::Command::new("head")
            .args(["-c", "1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = c.stdin.take().unwrap();
        let t0 = Instant::now();
        stdin.write_all(b"x").unwrap();
        c.wait().unwrap();
        out.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    out
}

#[derive(Serialize, Deserialize)]
struct Msg {
    id: u64,
    kind: String,
    routing_key: String,
    payload: String,
    attempt: u32,
}

fn frames_per_sec(n: usize, framed: bool) -> f64 {
    let msg = Msg {
        id: 42,
        kind: "result".into(),
        routing_key: "billing.invoice.created".into(),
        payload: "x".repeat(110),
        attempt: 1,
    };
    let mut dec = FrameDecoder::new();
    let start = Instant::now();
    for _ in 0..n {
        if framed {
            let bytes = frame::encode_frame(&msg).unwrap();
            dec.feed(&bytes);
            let back: Msg = dec.next().unwrap().unwrap();
            std::hint::black_box(back);
        } else {
            let bytes = serde_json::to_vec(&msg).unwrap();
            let back: Msg = serde_json::from_slice(&bytes).unwrap();
            std::hint::black_box(back);
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let size = serde_json::to_vec(&Msg {
        id: 42,
        kind: "result".into(),
        routing_key: "billing.invoice.created".into(),
        payload: "x".repeat(110),
        attempt: 1,
    })
    .unwrap()
    .len();
    let only = std::env::var("PROCYARD_BENCH_ONLY").ok();
    let part = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|p| p == name));
    if part("rates") {
        rates();
    }
    if part("latency") {
        latency();
    }
    if part("frames") {
        println!("frame message size: {size} bytes");
        frames();
    }
    if part("spawn") {
        spawn::run();
    }
}

fn rates() {
    let (mut sp, mut ss, mut pp, mut ps) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        sp.push(serial_procyard(400));
        ss.push(serial_std(400));
        pp.push(parallel_procyard(800, 16));
        ps.push(parallel_std(800, 16));
    }
    row(
        "spawn+wait /bin/true, serial",
        median(sp),
        "spawns/s",
        "std::process::Command",
        median(ss),
        true,
    );
    row(
        "spawn+wait /bin/true, 16 in flight",
        median(pp),
        "spawns/s",
        "std::process::Command",
        median(ps),
        true,
    );
}

fn latency() {
    let mut lp = latency_procyard(1000);
    let mut lw = latency_waitpid(1000);
    lp.sort_by(|a, b| a.total_cmp(b));
    lw.sort_by(|a, b| a.total_cmp(b));
    row(
        "child-exit notification p50 (mio+pidfd)",
        percentile(&lp, 0.5),
        "us",
        "blocking waitpid",
        percentile(&lw, 0.5),
        false,
    );
    row(
        "child-exit notification p99 (mio+pidfd)",
        percentile(&lp, 0.99),
        "us",
        "blocking waitpid",
        percentile(&lw, 0.99),
        false,
    );
}

fn frames() {
    let (mut f, mut j) = (vec![], vec![]);
    for _ in 0..ROUNDS {
        f.push(frames_per_sec(200_000, true));
        j.push(frames_per_sec(200_000, false));
    }
    row(
        "frame encode+decode, 200-byte JSON",
        median(f),
        "msgs/s",
        "serde_json without framing",
        median(j),
        true,
    );
}
