//! Benchmark: the PostgreSQL backend against the embedded SQLite queue, in the same run.
//!
//! - Drain: 10,000 no-op jobs published first, then 2 daemons × 2 longlived workers on one
//!   PostgreSQL schema (vs 1 daemon × 4 workers on a SQLite file); jobs/s from the first to the
//!   last completion; median of 3 runs each.
//! - Publish: 2,000 single-job publishes in a loop from one client (vs the same into SQLite);
//!   and in bulk, 10,000 jobs in batches of 1,000 (`publish_batch`, what `publish --lines`
//!   does), one statement per batch.
//! - graphile-worker (npm, on Node, in its own schema of the same database) side by side: its
//!   drain at concurrency 4 (its other settings default), its `addJob` loop, and its bulk
//!   `add_jobs` SQL function (its 0.16 JavaScript API has no bulk call) with the same batches.
//!   Both loops commit durably once per job (an fsync each), so the loop ratio is mostly the
//!   two fsyncs' ratio; the bulk one is where the statements differ.
//! - Orphan recovery: a daemon SIGKILLed while it holds jobs; time until every one of them is
//!   back in `ready` (seen by `LISTEN` on the schema's channel); median of 3. graphile-worker's
//!   default for the same (its lock expiry) is 4 h; River's rescuer 1 h.
//!
//! Run: `cargo build --release -p procyard-daemon && cargo run --release -p procyard-daemon
//! --example bench_pg`. Needs PostgreSQL at `PROCYARD_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); each run uses a schema of its own, dropped after.
//! `PROCYARD_BENCH_ONLY=publish` runs the publish loops alone (plain, and with a unique key
//! each) interleaved with graphile-worker's `addJob` loop, `BENCH_PG_ROUNDS` rounds (5).
//! `BENCH_DAEMON=/path/to/procyard-daemon` names the daemon under test (default: the one
//! beside this example); `BENCH_PG_VS=/path/to/an/older/procyard-daemon` adds that daemon's
//! PostgreSQL drain to each run (interleaved: SQLite, ours, the older one) for a same-run A/B,
//! each in a schema of its own that it migrates; `BENCH_PG_RUNS` drain runs (3).

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use procyard_daemon::queue::{self, BackendKind, OpenMode, QueueConfig, TaskBinding};

const JOBS: usize = 10_000;
const PUBLISHES: usize = 2_000;
const BULK: usize = 10_000;
const BULK_BATCH: usize = 1_000;
const RUNS: usize = 3;
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// The longlived worker: appends `DONE_NS` per job to FILE; `slow` jobs take a second.
fn worker(file: &str, slow: bool) -> anyhow::Result<()> {
    let mut out = OpenOptions::new().create(true).append(true).open(file)?;
    procyard_daemon::worker::serve(|_job| {
        if slow {
            std::thread::sleep(Duration::from_secs(1));
        }
        let _ = out.write_all(format!("{}\n", now_ns()).as_bytes());
        procyard_daemon::worker::Outcome::Done
    })?;
    Ok(())
}

fn daemon_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("BENCH_DAEMON") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("procyard-daemon"))
        .ok_or_else(|| anyhow::anyhow!("cannot locate the target directory"))?;
    anyhow::ensure!(bin.exists(), "{} is missing: build it first", bin.display());
    Ok(bin)
}

fn binding() -> TaskBinding {
    TaskBinding { name: "noop".into(), routing_keys: vec!["noop".into()], max_attempts: 3 }
}

/// A daemon config: `queue` lines, `workers` workers running this example as the worker.
/// `BENCH_PG_PREFETCH=N` sets the task's `prefetch` (its capacity: `max_workers × N`; the
/// workers here take no jobs ahead): `1` turns the PostgreSQL claims ahead off, for a
/// same-binary comparison.
fn write_config(dir: &Path, name: &str, queue: &str, workers: usize, slow: bool) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mode = if slow { "slow" } else { "worker" };
    let prefetch = std::env::var("BENCH_PG_PREFETCH")
        .ok()
        .and_then(|p| p.parse::<usize>().ok())
        .map_or(String::new(), |p| format!("prefetch = {p}\n"));
    let text = format!(
        "[daemon]\ngrace_period = \"5s\"\ncontrol_socket = \"{sock}\"\n[queue]\n{queue}\n\
         [[task]]\nname = \"noop\"\nrouting_keys = [\"noop\"]\n\
         command = [\"{exe}\", \"{mode}\", \"{done}\"]\nwork_model = \"longlived\"\n\
         min_workers = {workers}\nmax_workers = {workers}\nmax_attempts = 3\n{prefetch}",
        sock = dir.join(format!("{name}.sock")).display(),
        exe = exe.display(),
        done = dir.join("done.log").display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

fn start_daemon(bin: &Path, config: &Path) -> anyhow::Result<Child> {
    let mut child = Command::new(bin)
        .args(["run", "--ready-fd", "1", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) if line.starts_with("ready") => Ok(child),
        outcome => {
            stop(child);
            anyhow::bail!("daemon did not become ready within 60 s: {outcome:?}")
        }
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

/// Waits until `file` has `n` lines; returns the first and last done times.
fn wait_done(file: &Path, n: usize) -> anyhow::Result<(u128, u128)> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let times: Vec<u128> = text.lines().filter_map(|l| l.parse().ok()).collect();
        if times.len() >= n {
            let (lo, hi) = (times.iter().min(), times.iter().max());
            return Ok((*lo.unwrap_or(&0), *hi.unwrap_or(&0)));
        }
        anyhow::ensure!(Instant::now() < deadline, "only {} of {n} jobs done", times.len());
        // A benchmark harness, not a test: a short wait between reads of the result file.
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pg_config(url: &str, schema: &str) -> QueueConfig {
    QueueConfig {
        backend: BackendKind::Postgres,
        path: PathBuf::new(),
        url: Some(url.to_owned()),
        exchange: "procyard".into(),
        queue_type: Default::default(),
        schema: schema.to_owned(),
        durability: Default::default(),
        events: true,
        priorities: false,
    }
}

fn sqlite_config(path: &Path) -> QueueConfig {
    QueueConfig {
        backend: BackendKind::Sqlite,
        path: path.to_owned(),
        url: None,
        exchange: "procyard".into(),
        queue_type: Default::default(),
        schema: "procyard".into(),
        durability: Default::default(),
        events: true,
        priorities: false,
    }
}

/// Publishes `n` jobs in batches of [`BULK_BATCH`].
fn prepublish(config: &QueueConfig, n: usize) -> anyhow::Result<()> {
    let mut client = queue::open(config, OpenMode::Client)?;
    client.bind(&[binding()])?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(BULK_BATCH) {
        let payloads: Vec<Vec<u8>> = chunk.iter().map(|i| i.to_string().into_bytes()).collect();
        client.publish_batch("noop", &payloads).map_err(|p| p.error)?;
    }
    Ok(())
}

/// Publishes `n` jobs in one batch with `bin publish --lines` and the config `config`.
fn prepublish_with(bin: &Path, config: &Path, n: usize) -> anyhow::Result<()> {
    let mut child = Command::new(bin)
        .args(["publish", "--lines", "--config"])
        .arg(config)
        .arg("noop")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let lines: String = (0..n).map(|i| format!("{i}\n")).collect();
    child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?.write_all(lines.as_bytes())?;
    anyhow::ensure!(child.wait()?.success(), "{} publish failed", bin.display());
    Ok(())
}

/// Jobs/s of single publishes in a loop.
fn publish_rate(config: &QueueConfig) -> anyhow::Result<f64> {
    let mut client = queue::open(config, OpenMode::Client)?;
    client.bind(&[binding()])?;
    let start = Instant::now();
    for i in 0..PUBLISHES {
        client.publish("noop", i.to_string().as_bytes())?;
    }
    Ok(PUBLISHES as f64 / start.elapsed().as_secs_f64())
}

/// Jobs/s of single publishes with a unique key each (`publish --unique`) in a loop.
fn publish_unique_rate(config: &QueueConfig) -> anyhow::Result<f64> {
    let mut client = queue::open(config, OpenMode::Client)?;
    client.bind(&[binding()])?;
    let start = Instant::now();
    for i in 0..PUBLISHES {
        let options = queue::PublishOptions::new().unique(format!("k{i}"));
        client
            .publish_with("noop", &[i.to_string().into_bytes()], &options)
            .map_err(|p| p.error)?;
    }
    Ok(PUBLISHES as f64 / start.elapsed().as_secs_f64())
}

/// Jobs/s of [`BULK`] jobs published in batches of [`BULK_BATCH`] (connecting not counted).
fn publish_bulk_rate(config: &QueueConfig) -> anyhow::Result<f64> {
    let mut client = queue::open(config, OpenMode::Client)?;
    client.bind(&[binding()])?;
    let start = Instant::now();
    for chunk in (0..BULK).collect::<Vec<_>>().chunks(BULK_BATCH) {
        let payloads: Vec<Vec<u8>> = chunk.iter().map(|i| i.to_string().into_bytes()).collect();
        client.publish_batch("noop", &payloads).map_err(|p| p.error)?;
    }
    Ok(BULK as f64 / start.elapsed().as_secs_f64())
}

fn drop_schema(url: &str, schema: &str) {
    if let Ok(mut c) = postgres::Client::connect(url, postgres::NoTls) {
        let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
    }
}

/// Drain rate with `daemons` daemons × `workers` workers; `pg` is the url (else SQLite).
fn drain(bin: &Path, root: &Path, pg: Option<&str>, run: usize) -> anyhow::Result<f64> {
    let dir = root.join(format!("{}-{run}", if pg.is_some() { "pg" } else { "sqlite" }));
    std::fs::create_dir_all(&dir)?;
    let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let (config, queue_lines, daemons, workers) = match pg {
        Some(url) => (
            pg_config(url, &schema),
            format!("backend = \"postgres\"\nurl = \"{url}\"\nschema = \"{schema}\""),
            2,
            2,
        ),
        None => {
            let db = dir.join("q.db");
            (sqlite_config(&db), format!("backend = \"sqlite\"\npath = \"{}\"", db.display()), 1, 4)
        }
    };
    let configs: Vec<PathBuf> = (0..daemons)
        .map(|i| write_config(&dir, &format!("d{i}"), &queue_lines, workers, false))
        .collect();
    if pg.is_some() {
        // Through the daemon under test, which creates (or migrates) the schema its way: an
        // older daemon refuses a schema that this build's library made newer.
        prepublish_with(bin, &configs[0], JOBS)?;
    } else {
        prepublish(&config, JOBS)?;
    }
    let mut children = Vec::new();
    let mut result = Ok(());
    for c in &configs {
        match start_daemon(bin, c) {
            Ok(child) => children.push(child),
            Err(e) => result = Err(e),
        }
    }
    let before = match (pg, &result) {
        (Some(url), Ok(())) => ServerUse::read(url, &schema, &[]).ok(),
        _ => None,
    };
    let done = result.and_then(|()| wait_done(&dir.join("done.log"), JOBS));
    let cpu = pg.filter(|_| done.is_ok()).map(|url| ServerUse::cpu(url, &schema));
    let own: u64 = children.iter().map(|c| ticks(c.id() as i32)).sum();
    eprintln!("daemons' own CPU per job: {:.3} ms", own as f64 * 10.0 / JOBS as f64);
    for c in children {
        stop(c);
    }
    if let (Some(url), Some(before), Some(Ok((pids, cpu)))) = (pg, before, cpu) {
        match ServerUse::read(url, &schema, &pids) {
            Ok(after) => ServerUse { cpu_ticks: cpu, ..after }.since(&before).show(JOBS),
            Err(e) => eprintln!("server use not read: {e}"),
        }
    }
    if let Some(url) = pg {
        drop_schema(url, &schema);
    }
    let (first, last) = done?;
    Ok(JOBS as f64 / (last.saturating_sub(first) as f64 / 1e9).max(1e-9))
}

/// The CPU time of process `pid` so far, in ticks of 10 ms (0 when it is gone).
fn ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields 14 and 15 (utime, stime) after the command's closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// What the database server spent on a drain: the CPU of the daemons' backends (from
/// `/proc`, so the server must be on this machine), the database's commits (every client of
/// it, so an upper bound on a shared server), and the row versions written to `jobs`.
#[derive(Default)]
struct ServerUse {
    cpu_ticks: u64,
    commits: i64,
    updated: i64,
    hot: i64,
}

impl ServerUse {
    /// The daemons' backends and their CPU ticks so far.
    fn cpu(url: &str, schema: &str) -> anyhow::Result<(Vec<i32>, u64)> {
        let mut c = postgres::Client::connect(url, postgres::NoTls)?;
        let pids: Vec<i32> = c
            .query(
                &format!(
                    "SELECT a.pid FROM pg_stat_activity a JOIN {schema}.daemons d
                     ON a.application_name LIKE 'procyard-daemon ' || d.name || '%'"
                ),
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let cpu_ticks = pids.iter().map(|p| ticks(*p)).sum();
        Ok((pids, cpu_ticks))
    }

    /// Reads the counters once the backends `gone` have exited (they write their statistics
    /// as they exit).
    fn read(url: &str, schema: &str, gone: &[i32]) -> anyhow::Result<ServerUse> {
        let mut c = postgres::Client::connect(url, postgres::NoTls)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let left = "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = ANY($1)";
        while c.query_one(left, &[&gone])?.get::<_, i64>(0) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let cpu_ticks = Self::cpu(url, schema)?.1;
        let row = c.query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )?;
        let commits = row.get(0);
        // The statistics of the other backends' transactions, as of now.
        c.batch_execute("SELECT pg_stat_clear_snapshot()")?;
        let row = c.query_one(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
             WHERE schemaname = $1 AND relname = 'jobs'",
            &[&schema],
        )?;
        Ok(ServerUse { cpu_ticks, commits, updated: row.get(0), hot: row.get(1) })
    }

    fn since(&self, before: &ServerUse) -> ServerUse {
        ServerUse {
            cpu_ticks: self.cpu_ticks.saturating_sub(before.cpu_ticks),
            commits: self.commits - before.commits,
            updated: self.updated - before.updated,
            hot: self.hot - before.hot,
        }
    }

    fn show(&self, jobs: usize) {
        let n = jobs as f64;
        eprintln!(
            "server per job: backends' CPU {:.3} ms, commits {:.2} (whole database), jobs rows updated {:.2} ({:.2} HOT)",
            self.cpu_ticks as f64 * 10.0 / n,
            self.commits as f64 / n,
            self.updated as f64 / n,
            self.hot as f64 / n,
        );
    }
}

/// Seconds from a SIGKILL of a daemon holding jobs until all of them are back in `ready`.
fn orphan_recovery(bin: &Path, root: &Path, url: &str, run: usize) -> anyhow::Result<f64> {
    let dir = root.join(format!("orphans-{run}"));
    std::fs::create_dir_all(&dir)?;
    let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let lines = format!("backend = \"postgres\"\nurl = \"{url}\"\nschema = \"{schema}\"");
    let result = (|| -> anyhow::Result<f64> {
        prepublish(&pg_config(url, &schema), 40)?;
        let survivor = start_daemon(bin, &write_config(&dir, "a", &lines, 2, true))?;
        let mut victim = start_daemon(bin, &write_config(&dir, "b", &lines, 2, true))?;
        let mut db = postgres::Client::connect(url, postgres::NoTls)?;
        let no: i64 = db
            .query_one(
                &format!("SELECT no FROM {schema}.daemons WHERE os_pid = $1"),
                &[&(victim.id() as i32)],
            )?
            .get(0);
        let held =
            format!("SELECT COUNT(*) FROM {schema}.jobs WHERE state = 1 AND lease_owner = $1");
        let mut listener = postgres::Client::connect(url, postgres::NoTls)?;
        listener.batch_execute(&format!("LISTEN {schema}_jobs"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while db.query_one(&held, &[&no])?.get::<_, i64>(0) == 0 {
            anyhow::ensure!(Instant::now() < deadline, "the victim never held a job");
            std::thread::sleep(Duration::from_millis(10));
        }
        victim.kill()?;
        let killed = Instant::now();
        victim.wait()?;
        while db.query_one(&held, &[&no])?.get::<_, i64>(0) > 0 {
            let left = (killed + Duration::from_secs(30)).saturating_duration_since(Instant::now());
            anyhow::ensure!(!left.is_zero(), "the jobs were never put back");
            let mut n = listener.notifications();
            let _ = postgres::fallible_iterator::FallibleIterator::next(&mut n.timeout_iter(left));
        }
        let took = killed.elapsed().as_secs_f64();
        stop(survivor);
        Ok(took)
    })();
    drop_schema(url, &schema);
    result
}

/// graphile-worker's side: a Node script driving `makeWorkerUtils` (`addJob` loop, or a
/// prepublish then `run` at concurrency 4 with its defaults otherwise), printing its rate.
const GRAPHILE_JS: &str = r#"
const { run, makeWorkerUtils } = require("graphile-worker");
const [mode, n] = [process.argv[2], parseInt(process.argv[3], 10)];
const connectionString = process.env.BENCH_PG_URL, schema = process.env.BENCH_SCHEMA;
(async () => {
  const utils = await makeWorkerUtils({ connectionString, schema });
  await utils.migrate();
  const t0 = process.hrtime.bigint();
  if (mode === "bulk") {
    const batch = parseInt(process.argv[4], 10), q = '"' + schema + '"';
    const sql = `select 1 from ${q}.add_jobs(array(select json_populate_recordset(null::${q}.job_spec, $1::json)))`;
    for (let s = 0; s < n; s += batch) {
      const specs = [];
      for (let i = s; i < Math.min(n, s + batch); i++) specs.push({ identifier: "noop", payload: { i } });
      await utils.withPgClient((c) => c.query(sql, [JSON.stringify(specs)]));
    }
    console.log("RATE " + n / (Number(process.hrtime.bigint() - t0) / 1e9));
    await utils.release();
    return;
  }
  for (let i = 0; i < n; i++) await utils.addJob("noop", { i });
  if (mode === "publish") {
    console.log("RATE " + n / (Number(process.hrtime.bigint() - t0) / 1e9));
    await utils.release();
    return;
  }
  let done = 0, first = null, runner;
  runner = await run({ connectionString, schema, concurrency: 4, noHandleSignals: true,
    taskList: { noop: async () => {
      const t = process.hrtime.bigint();
      if (first === null) first = t;
      if (++done === n) {
        console.log("RATE " + n / (Number(t - first) / 1e9));
        setImmediate(() => runner.stop());
      }
    } } });
  await runner.promise;
  await utils.release();
})().catch((e) => { console.error(e); process.exit(1); });
"#;

/// Installs graphile-worker with npm into `GRAPHILE_DIR` (default /tmp/procyard-graphile)
/// when missing; `None` (with a notice) when Node or npm cannot.
fn graphile_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(
        std::env::var("GRAPHILE_DIR").unwrap_or_else(|_| "/tmp/procyard-graphile".into()),
    );
    if !dir.join("node_modules/graphile-worker").exists() {
        std::fs::create_dir_all(&dir).ok()?;
        let ok = Command::new("sh")
            .arg("-c")
            .arg("(test -f package.json || npm init -y) >/dev/null && npm install --no-audit --no-fund graphile-worker@0.16 >/dev/null")
            .current_dir(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("graphile-worker could not be installed (npm): not measured");
            return None;
        }
    }
    std::fs::write(dir.join("bench.js"), GRAPHILE_JS).ok()?;
    Some(dir)
}

/// graphile-worker's rate in `mode` (`drain`, `publish` or `bulk`) for `n` jobs on its own
/// schema.
fn graphile(dir: &Path, url: &str, mode: &str, n: usize) -> anyhow::Result<f64> {
    let schema = format!("gw_{}", uuid::Uuid::now_v7().simple());
    let out = Command::new("node")
        .arg(dir.join("bench.js"))
        .args([mode, &n.to_string(), &BULK_BATCH.to_string()])
        .env("BENCH_PG_URL", url)
        .env("BENCH_SCHEMA", &schema)
        .current_dir(dir)
        .stderr(Stdio::inherit())
        .output();
    drop_schema(url, &schema);
    let text = String::from_utf8_lossy(&out?.stdout).into_owned();
    let rate = text.lines().find_map(|l| l.strip_prefix("RATE ")).and_then(|r| r.parse().ok());
    rate.ok_or_else(|| anyhow::anyhow!("graphile-worker printed no rate: {text}"))
}

/// `PROCYARD_BENCH_ONLY=publish`: the publish loop alone, interleaved with graphile-worker's
/// `addJob` loop (when installed) for `BENCH_PG_ROUNDS` rounds (default 5); each round's
/// rates on stderr, the medians and the ratio of medians on stdout.
fn publish_only(url: &str) -> anyhow::Result<()> {
    let rounds = std::env::var("BENCH_PG_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let dir = graphile_dir();
    let (mut ours, mut theirs, mut unique) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
        let rate = publish_rate(&pg_config(url, &schema));
        drop_schema(url, &schema);
        ours.push(rate?);
        let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
        let rate = publish_unique_rate(&pg_config(url, &schema));
        drop_schema(url, &schema);
        unique.push(rate?);
        if let Some(dir) = &dir {
            theirs.push(graphile(dir, url, "publish", PUBLISHES)?);
        }
        eprintln!(
            "round {round}: publish loop jobs/s {:.0}, unique {:.0}, addJob {:.0?}",
            ours[round],
            unique[round],
            theirs.last()
        );
    }
    eprintln!("publish loop jobs/s: ours {ours:.0?}, unique {unique:.0?}, addJob {theirs:.0?}");
    let pg_pub = median(ours);
    println!("BENCH\tpg_publish_unique_loop_jobs_per_s\t{:.0}\tjobs/s", median(unique));
    if theirs.is_empty() {
        println!("BENCH\tpg_publish_loop_jobs_per_s\t{pg_pub:.0}\tjobs/s");
        return Ok(());
    }
    let add_job = median(theirs);
    println!(
        "BENCH\tpg_publish_loop_jobs_per_s\t{pg_pub:.0}\tjobs/s\tgraphile_worker_addjob_loop\t{add_job:.0}\t{:.2}",
        pg_pub / add_job
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("worker") => return worker(args.get(2).map_or("/dev/null", String::as_str), false),
        Some("slow") => return worker(args.get(2).map_or("/dev/null", String::as_str), true),
        _ => {}
    }
    let url = std::env::var("PROCYARD_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    if std::env::var("PROCYARD_BENCH_ONLY").is_ok_and(|o| o == "publish") {
        return publish_only(&url);
    }
    let bin = daemon_bin()?;
    let root = tempfile::tempdir()?;
    let vs = std::env::var_os("BENCH_PG_VS").map(PathBuf::from);
    let runs = std::env::var("BENCH_PG_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(RUNS);
    let (mut pg, mut sqlite, mut old) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        sqlite.push(drain(&bin, root.path(), None, run)?);
        pg.push(drain(&bin, root.path(), Some(&url), run)?);
        if let Some(vs) = &vs {
            old.push(drain(vs, root.path(), Some(&url), run + runs)?);
        }
    }
    eprintln!("drain jobs/s: postgres {pg:.0?}, sqlite {sqlite:.0?}");
    if !old.is_empty() {
        let ratios: Vec<f64> = pg.iter().zip(&old).map(|(n, o)| n / o).collect();
        let ratios_sq: Vec<f64> = old.iter().zip(&sqlite).map(|(o, s)| o / s).collect();
        eprintln!(
            "drain jobs/s: older daemon {old:.0?}; ours/older {ratios:.2?}; older/sqlite {ratios_sq:.2?}"
        );
        let (p, o, s) = (median(pg.clone()), median(old), median(sqlite.clone()));
        println!(
            "BENCH\tpg_drain_2x2_jobs_per_s\t{p:.0}\tjobs/s\tolder_daemon_pg_drain\t{o:.0}\t{:.2}",
            p / o
        );
        println!(
            "BENCH\tolder_daemon_pg_drain_jobs_per_s\t{o:.0}\tjobs/s\tsqlite_1x4_drain\t{s:.0}\t{:.2}",
            o / s
        );
    }
    let (pg, sqlite) = (median(pg), median(sqlite));
    println!(
        "BENCH\tpg_drain_2x2_jobs_per_s\t{pg:.0}\tjobs/s\tsqlite_1x4_drain\t{sqlite:.0}\t{:.2}",
        pg / sqlite
    );
    if std::env::var_os("BENCH_PG_QUICK").is_some() {
        return Ok(());
    }
    let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let pg_pub = publish_rate(&pg_config(&url, &schema));
    drop_schema(&url, &schema);
    let sq_pub = publish_rate(&sqlite_config(&root.path().join("pub.db")))?;
    let pg_pub = pg_pub?;
    println!(
        "BENCH\tpg_publish_loop_jobs_per_s\t{pg_pub:.0}\tjobs/s\tsqlite_publish_loop\t{sq_pub:.0}\t{:.2}",
        pg_pub / sq_pub
    );
    let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let pg_bulk = publish_bulk_rate(&pg_config(&url, &schema));
    drop_schema(&url, &schema);
    let pg_bulk = pg_bulk?;
    if let Some(dir) = graphile_dir() {
        let drains: anyhow::Result<Vec<f64>> =
            (0..RUNS).map(|_| graphile(&dir, &url, "drain", JOBS)).collect();
        let publishes = |d| -> anyhow::Result<_> {
            let add_job = graphile(&dir, &url, "publish", PUBLISHES)?;
            Ok((d, add_job, graphile(&dir, &url, "bulk", BULK)?))
        };
        match drains.and_then(publishes) {
            Ok((d, add_job, add_jobs)) => {
                eprintln!("graphile-worker drain jobs/s: {d:.0?}");
                let gw = median(d);
                println!(
                    "BENCH\tpg_drain_2x2_jobs_per_s\t{pg:.0}\tjobs/s\tgraphile_worker_c4_drain\t{gw:.0}\t{:.2}",
                    pg / gw
                );
                println!(
                    "BENCH\tpg_publish_loop_jobs_per_s\t{pg_pub:.0}\tjobs/s\tgraphile_worker_addjob_loop\t{add_job:.0}\t{:.2}",
                    pg_pub / add_job
                );
                println!(
                    "BENCH\tpg_publish_bulk_jobs_per_s\t{pg_bulk:.0}\tjobs/s\tgraphile_worker_add_jobs_bulk\t{add_jobs:.0}\t{:.2}",
                    pg_bulk / add_jobs
                );
            }
            Err(e) => eprintln!("graphile-worker not measured: {e}"),
        }
    }
    let rec: Vec<f64> =
        (0..RUNS).map(|r| orphan_recovery(&bin, root.path(), &url, r)).collect::<Result<_, _>>()?;
    eprintln!("orphan recovery s: {rec:.3?}");
    let rec = median(rec);
    let graphile = 4.0 * 3600.0;
    println!(
        "BENCH\tpg_orphan_recovery_after_sigkill\t{:.3}\ts\tgraphile_worker_default_lock_expiry\t{graphile:.0}\t{:.6}",
        rec,
        rec / graphile
    );
    Ok(())
}
