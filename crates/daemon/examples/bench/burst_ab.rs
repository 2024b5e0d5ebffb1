//! The burst benchmark (`sched.rs`, part `burst`) as a same-run A/B of two daemon builds:
//! `PROCYARD_BENCH_BURST_AB=/path/to/old/procyard-daemon` runs, each round and in alternating
//! order, the old build and this one on the ready drain and on the burst, and prints for each
//! the took/goal ratio and the daemon's CPU µs per job while it drained (from `/proc`).

use std::path::Path;

use super::sched::{BURST, burst_due_s, burst_rate};
use super::{Run, cpu_us, median};

/// What the daemon spent per job over a measured span.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    /// CPU µs (user and system) per job.
    pub cpu_us: f64,
}

/// A span of the daemon's work: its CPU time and finished jobs at the start.
pub struct Meter {
    cpu_us: f64,
    done: u64,
}

impl Meter {
    pub fn start(run: &Run) -> anyhow::Result<Meter> {
        Ok(Meter { cpu_us: cpu_us(run.pid())?, done: run.done("echo")? })
    }

    pub fn stop(self, run: &Run) -> anyhow::Result<Cost> {
        let jobs = (run.done("echo")? - self.done).max(1) as f64;
        let cpu = (cpu_us(run.pid())? - self.cpu_us) / jobs;
        Ok(Cost { cpu_us: cpu })
    }
}

/// One build's figures of one round.
struct Figures {
    rate: f64,
    took: f64,
    drain: Cost,
    burst: Cost,
}

impl Figures {
    fn ratio(&self) -> f64 {
        self.took / (BURST as f64 / self.rate + 1.0)
    }
}

fn measure(bin: &Path, me: &Path) -> anyhow::Result<Figures> {
    let (rate, drain) = burst_rate(bin, me)?;
    let (took, burst) = burst_due_s(bin, me)?;
    Ok(Figures { rate, took, drain, burst })
}

fn show(name: &str, round: usize, f: &Figures) {
    eprintln!(
        "bench: burst A/B round {round} {name}: drain {:.0}/s ({:.1} CPU µs/job), burst {:.2} s \
         = {:.0}/s ({:.1} CPU µs/job), took/goal {:.2}x",
        f.rate,
        f.drain.cpu_us,
        f.took,
        BURST as f64 / f.took,
        f.burst.cpu_us,
        f.ratio()
    );
}

/// Runs the rounds, alternating which build goes first, and prints the medians.
pub fn run(old: &Path, new: &Path, me: &Path) -> anyhow::Result<()> {
    let rounds: usize =
        std::env::var("PROCYARD_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let (mut olds, mut news) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for is_old in order {
            let f = measure(if is_old { old } else { new }, me)?;
            show(if is_old { "old" } else { "new" }, round, &f);
            if is_old { olds.push(f) } else { news.push(f) }
        }
    }
    for (name, v) in [("old", &olds), ("new", &news)] {
        let med = |f: &dyn Fn(&Figures) -> f64| median(&mut v.iter().map(f).collect::<Vec<_>>());
        eprintln!(
            "bench: burst A/B {name} medians: took/goal {:.2}x, drain {:.0}/s, burst {:.0}/s \
             (burst/drain rate {:.2}), CPU µs/job drain {:.1} burst {:.1}",
            med(&|f| f.ratio()),
            med(&|f| f.rate),
            med(&|f| BURST as f64 / f.took),
            med(&|f| BURST as f64 / f.took / f.rate),
            med(&|f| f.drain.cpu_us),
            med(&|f| f.burst.cpu_us),
        );
    }
    Ok(())
}
