//! How late delayed jobs start when a worker is free (issue 17's goal: p50 < 5 ms and
//! p99 < 20 ms), part of the scheduling bench (`PROCYARD_BENCH_SCHED=lateness`), in
//! [`ROUNDS`] rounds that interleave three runs:
//!
//! - oneshot (the goal's measure): eight workers for a `true` command, [`LATE_JOBS`] jobs due
//!   [`SPACING`] apart (all published before the first is due); start = the daemon's stamp
//!   once the worker is spawned (the job record's attempt start), lateness = start − due;
//! - the baseline: the same jobs published for now, one at a time [`SPACING`] apart,
//!   lateness = start − publish;
//! - longlived: two echo workers; start = the worker received the job (its datagram to this
//!   bench, stamped on receipt), lateness = that − due.
//!
//! The delayed runs log the daemon's own stamps (`procyard_daemon::stamp`): how late the timer
//! woke the loop, how long each claim and each spawn took — where a late start's time went.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use procyard_daemon::queue::PublishOptions;
use procyard_daemon::{Client, Config};

use super::{Run, bench, longlived_task, median};

const LATE_JOBS: usize = 200;
const SPACING: Duration = Duration::from_millis(25);
const ROUNDS: usize = 3;
/// The time from the first publish to the first due time.
const MARGIN_MS: i64 = 2000;
const ONESHOT: &str =
    "[[task]]\nname = \"t\"\nrouting_keys = [\"t.#\"]\ncommand = [\"true\"]\nmax_workers = 8\n";
pub const STAMPS: &str = "warn,procyard_daemon::stamp=debug";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn at_ms(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(ms as u64)
}

/// p50, p99 and max of `v`.
fn spread(v: &mut [f64]) -> [f64; 3] {
    v.sort_by(|a, b| a.total_cmp(b));
    let p99 = v[(v.len() * 99 / 100).min(v.len() - 1)];
    [median(v), p99, v[v.len() - 1]]
}

/// The daemon's stamps in its log, in ms: p50/p99/max of the timer's lateness, the claims
/// and the spawns.
pub fn stamps(run: &Run) -> String {
    let log = std::fs::read_to_string(run.dir.path().join("daemon.log")).unwrap_or_default();
    let mut out = String::new();
    for what in [
        "woke",
        "claim",
        "flush",
        "spawn",
        "exec",
        "reap",
        "strays",
        "prune",
        "checkpoint",
        "restart",
    ] {
        let mut v: Vec<f64> = log
            .lines()
            .filter_map(|l| l.split_once("procyard_daemon::stamp: ").map(|(_, r)| r))
            .filter_map(|r| r.strip_prefix(what)?.trim().split_once('=')?.1.parse::<f64>().ok())
            .map(|us| us / 1e3)
            .collect();
        if v.is_empty() {
            continue;
        }
        let n = v.len();
        let [p50, p99, max] = spread(&mut v);
        let sum: f64 = v.iter().sum();
        out += &format!(" {what} (n={n}, total {sum:.0}) {p50:.2}/{p99:.2}/{max:.1}");
    }
    out
}

/// Oneshot lateness (ms) of delayed jobs, or publish→start of jobs for now: p50/p99/max, and
/// the daemon's stamps.
fn oneshot(bin: &Path, delayed: bool) -> anyhow::Result<([f64; 3], String)> {
    let mut run = Run::new(ONESHOT)?;
    run.start_logging(bin, if delayed { STAMPS } else { "warn" })?;
    let mut client = Client::new(Config::load(&run.config)?);
    let spacing = SPACING.as_millis() as i64;
    let first = now_ms() + MARGIN_MS;
    let mut due = Vec::with_capacity(LATE_JOBS);
    for i in 0..LATE_JOBS {
        if delayed {
            let at = first + i as i64 * spacing;
            let p = client.publish_with("t.x", b"", &PublishOptions::new().at(at_ms(at)))?;
            due.push((p.ids[0].clone(), at));
        } else {
            let at = now_ms();
            let p = client.publish_with("t.x", b"", &PublishOptions::new())?;
            due.push((p.ids[0].clone(), at));
            let next = Instant::now() + SPACING;
            while Instant::now() < next {
                run.pause();
            }
        }
    }
    anyhow::ensure!(!delayed || now_ms() < first, "publishing took longer than the margin");
    run.wait_done("t", LATE_JOBS as u64, Duration::from_secs(120))?;
    let mut late = Vec::with_capacity(LATE_JOBS);
    for (id, at) in &due {
        let job = client.job(id)?;
        let started = job.attempts.first().and_then(|a| a.started_ms);
        let started = started.ok_or_else(|| anyhow::anyhow!("job {id} has no start"))?;
        late.push((started - at).max(0) as f64);
    }
    run.stop()?;
    Ok((spread(&mut late), stamps(&run)))
}

/// Longlived lateness (ms): the worker's receipt of each delayed job − its due time.
fn longlived(bin: &Path, me: &Path) -> anyhow::Result<([f64; 3], String)> {
    let dir = tempfile::tempdir()?;
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify)?;
    let mut run = Run::new(&longlived_task(me, 2, 2, Some(&notify)))?;
    run.start_logging(bin, STAMPS)?;
    let mut client = Client::new(Config::load(&run.config)?);
    let first = now_ms() + MARGIN_MS;
    for i in 0..LATE_JOBS {
        let at = first + i as i64 * SPACING.as_millis() as i64;
        client.publish_with(
            "echo",
            at.to_string().as_bytes(),
            &PublishOptions::new().at(at_ms(at)),
        )?;
    }
    anyhow::ensure!(now_ms() < first, "publishing took longer than the margin");
    sock.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut late = Vec::with_capacity(LATE_JOBS);
    let mut buf = [0u8; 64];
    while late.len() < LATE_JOBS {
        let n = sock.recv(&mut buf)?;
        let got = now_ms();
        let due: i64 = std::str::from_utf8(&buf[..n])?.parse()?;
        late.push((got - due).max(0) as f64);
    }
    run.stop()?;
    Ok((spread(&mut late), stamps(&run)))
}

/// Runs the rounds and prints the medians of each run's p50 and p99.
pub fn run(bin: &Path, me: &Path) -> anyhow::Result<()> {
    let mut rows: [Vec<[f64; 3]>; 3] = Default::default();
    for round in 0..ROUNDS {
        let (now, _) = oneshot(bin, false)?;
        let (del, del_stamps) = oneshot(bin, true)?;
        let (ll, ll_stamps) = longlived(bin, me)?;
        let ms = |v: [f64; 3]| format!("{:.0}/{:.0}/{:.0}", v[0], v[1], v[2]);
        eprintln!(
            "bench: lateness round {round}, p50/p99/max ms: for now {}, delayed oneshot {}, \
             delayed longlived {}",
            ms(now),
            ms(del),
            ms(ll)
        );
        eprintln!("bench:   stamps p50/p99/max ms, oneshot:{del_stamps}");
        eprintln!("bench:   stamps p50/p99/max ms, longlived:{ll_stamps}");
        for (row, v) in rows.iter_mut().zip([now, del, ll]) {
            row.push(v);
        }
    }
    let med =
        |row: &[[f64; 3]], i: usize| median(&mut row.iter().map(|v| v[i]).collect::<Vec<_>>());
    let [now, del, ll] = &rows;
    bench("delayed_start_late_p50_ms", med(del, 0), "ms", "goal_ms", 5.0);
    bench("delayed_start_late_p99_ms", med(del, 1), "ms", "goal_ms", 20.0);
    bench(
        "delayed_start_late_p50_ms_vs_now",
        med(del, 0),
        "ms",
        "publish_start_p50_ms",
        med(now, 0),
    );
    bench(
        "delayed_start_late_p99_ms_vs_now",
        med(del, 1),
        "ms",
        "publish_start_p99_ms",
        med(now, 1),
    );
    bench("delayed_longlived_late_p50_ms", med(ll, 0), "ms", "goal_ms", 5.0);
    bench("delayed_longlived_late_p99_ms", med(ll, 1), "ms", "goal_ms", 20.0);
    Ok(())
}
