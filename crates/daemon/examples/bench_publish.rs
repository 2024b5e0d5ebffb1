//! Benchmark of `procyard-daemon publish --lines` on the embedded SQLite queue:
//! `cargo run --release -p procyard-daemon --example bench_publish`.
//!
//! Publishes 100,000 one-line payloads with the release CLI (a process start, the config,
//! the queue opened, every line read, one transaction, an id printed per job) and compares
//! its jobs/s with a bare rusqlite loop in the same run: the same rows (a UUIDv7 id made as the
//! queue makes it, and the same eleven columns the queue sets: task, routing key, payload,
//! state, time, not-before, priority, unique key, its window, headers) inserted into the same
//! table with the same indexes (a fresh queue file, made by the queue before the clock starts),
//! in one transaction with one prepared statement, every value bound for every row (a plain
//! `execute(params![..])`), and the per-task published count bumped once. Both with
//! `durability = "crash"` (`synchronous = NORMAL`) and `"power"` (`FULL`); medians of
//! interleaved rounds. The CLI's output goes to a pipe this program reads, as a script's would.
//!
//! For profiling: `PROCYARD_BENCH_ONLY=bare` runs the bare loop once and nothing else (run it
//! under `valgrind --tool=callgrind --toggle-collect='*bare_rate*'` for its instructions).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use procyard_daemon::queue::sqlite::SqliteQueue;
use procyard_daemon::queue::{Durability, OpenMode};

const JOBS: usize = 100_000;
const ROUNDS: usize = 3;

fn main() -> anyhow::Result<()> {
    if std::env::var("PROCYARD_BENCH_ONLY").is_ok_and(|o| o == "bare") {
        let rate = bare_rate(Durability::Crash)?;
        println!("bare rusqlite loop: {rate:.0} jobs/s");
        return Ok(());
    }
    let bin = build_daemon()?;
    let mut lines = Vec::with_capacity(JOBS * 7);
    for i in 0..JOBS {
        writeln!(lines, "{i}")?;
    }
    let mut crash_rate = f64::NAN;
    for durability in [Durability::Crash, Durability::Power] {
        let (mut bare, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            bare.push(bare_rate(durability)?);
            ours.push(publish_rate(&bin, &lines, durability)?);
        }
        let name = durability.name();
        let (bare, ours) = (median(&mut bare), median(&mut ours));
        println!(
            "BENCH\tpublish_lines_{name}_per_s\t{ours:.0}\tjobs/s\tbare_rusqlite_one_tx_{name}_per_s\t{bare:.0}\t{:.2}",
            ours / bare
        );
        if durability == Durability::Power {
            println!(
                "BENCH\tpublish_lines_power_vs_crash\t{ours:.0}\tjobs/s\tpublish_lines_crash_per_s\t{crash_rate:.0}\t{:.2}",
                ours / crash_rate
            );
        } else {
            crash_rate = ours;
        }
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The bare loop: `JOBS` rows in one transaction, one prepared statement, into a queue file
/// the queue made (its tables and indexes), with the columns a publish sets.
fn bare_rate(durability: Durability) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bare.db");
    drop(SqliteQueue::open_with(&path, OpenMode::Client, durability)?);
    let t0 = Instant::now();
    let mut conn = rusqlite::Connection::open(&path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = if durability == Durability::Power { "FULL" } else { "NORMAL" };
    conn.pragma_update(None, "synchronous", sync)?;
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO jobs (id, task, routing_key, payload, state, published_ms,
                 not_before, priority, unique_key, unique_until, headers)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        // Ids as the queue makes them: one random value per batch plus the row's index.
        let first = uuid::Uuid::now_v7();
        let mut tail = [0u8; 16];
        tail[6..].copy_from_slice(&first.as_bytes()[6..]);
        let base = u128::from_be_bytes(tail);
        let millis = first.get_timestamp().map_or(0, |t| t.to_unix().0 * 1000);
        let (none, no_time): (Option<&str>, Option<i64>) = (None, None);
        for i in 0..JOBS {
            let mut random = [0u8; 10];
            random.copy_from_slice(&base.wrapping_add(i as u128).to_be_bytes()[6..]);
            let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
            let id = id.to_string();
            let payload = i.to_string();
            stmt.execute(rusqlite::params![
                id,
                "t",
                "t",
                payload.as_bytes(),
                0,
                millis as i64,
                0,
                5,
                none,
                no_time,
                none
            ])?;
        }
        tx.execute(
            "INSERT INTO stats (task, published) VALUES (?1, ?2)
             ON CONFLICT(task) DO UPDATE SET published = published + excluded.published",
            rusqlite::params!["t", JOBS as i64],
        )?;
    }
    tx.commit()?;
    Ok(JOBS as f64 / t0.elapsed().as_secs_f64())
}

/// `procyard-daemon publish --lines t` of `lines` into a fresh queue: jobs per second, from
/// the command's start to its exit, its stdout read whole.
fn publish_rate(bin: &Path, lines: &[u8], durability: Durability) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[queue]\npath = \"{}/q.db\"\ndurability = \"{}\"\n\n[[task]]\nname = \"t\"\nrouting_keys = [\"t\"]\ncommand = [\"true\"]\n",
            dir.path().display(),
            durability.name()
        ),
    )?;
    let input = dir.path().join("lines");
    std::fs::write(&input, lines)?;
    let t0 = Instant::now();
    let mut child = Command::new(bin)
        .args(["publish", "--lines", "--config"])
        .arg(&config)
        .arg("t")
        .stdin(std::fs::File::open(&input)?)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut out = Vec::new();
    child.stdout.take().expect("stdout").read_to_end(&mut out)?;
    let status = child.wait()?;
    let elapsed = t0.elapsed();
    anyhow::ensure!(status.success(), "publish --lines failed: {status}");
    let ids = out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
    anyhow::ensure!(ids == lines.iter().filter(|b| **b == b'\n').count(), "{ids} ids printed");
    Ok(ids as f64 / elapsed.as_secs_f64())
}

/// The release daemon binary: `PROCYARD_DAEMON_BIN` if set, else built next to this example.
fn build_daemon() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("PROCYARD_DAEMON_BIN") {
        return Ok(bin.into());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "procyard-daemon",
            "--bin",
            "procyard-daemon",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()?;
    anyhow::ensure!(status.success(), "building the daemon failed");
    let exe = std::env::current_exe()?;
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join("procyard-daemon"));
    match bin {
        Some(b) if b.exists() => Ok(b),
        _ => anyhow::bail!("procyard-daemon binary not found next to {}", exe.display()),
    }
}
