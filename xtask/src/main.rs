//! `cargo xtask`: procyard's task runner (test, ci, tidy, bench).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

mod tidy;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test    run every unit, doc, integration and end-to-end test of the workspace
          (starts RabbitMQ first when it is not answering and can be started or installed)
  ci      cargo fmt --check, clippy -D warnings, cargo doc (warnings denied), tidy, then test
  tidy    check the architecture rules (crate graph, unsafe, file headers, raw signals,
          socket unlinks, module cycles, file size)
  bench   run every benchmark and print a table of ratios against same-run baselines

examples:
  cargo xtask test
  CI=true cargo xtask ci
  cargo xtask bench
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("ci") => ci(),
        Some("tidy") => run_tidy(),
        Some("bench") => bench(),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => {
            eprint!("xtask: unknown command {:?}\n\n{USAGE}", other.unwrap_or(""));
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run(what: &str, mut cmd: Command) -> Result<()> {
    eprintln!("xtask: {what}");
    let started = Instant::now();
    let status = cmd.status().with_context(|| format!("unable to run {what}"))?;
    eprintln!("xtask: {what}: {status} after {:.1}s", started.elapsed().as_secs_f64());
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn ci() -> Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run("cargo fmt --check", fmt)?;
    let mut clippy = cargo();
    clippy.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    run("cargo clippy", clippy)?;
    let mut doc = cargo();
    doc.args(["doc", "--workspace", "--no-deps"]).env("RUSTDOCFLAGS", "-D warnings");
    run("cargo doc", doc)?;
    run_tidy()?;
    test()
}

fn run_tidy() -> Result<()> {
    let problems = tidy::check(&root());
    if problems.is_empty() {
        eprintln!("xtask: tidy: ok");
        return Ok(());
    }
    for p in &problems {
        eprintln!("tidy: {p}");
    }
    bail!("tidy found {} problem(s)", problems.len())
}

/// How long the whole test run may take before it is called hung (CI stops at 90 minutes).
const TEST_TIMEOUT: Duration = Duration::from_secs(40 * 60);

fn test() -> Result<()> {
    ensure_rabbitmq()?;
    ensure_postgres()?;
    ensure_serf()?;
    ensure_debian_tool("promtool", "prometheus", "the /metrics test")?;
    ensure_debian_tool("chromedriver", "chromium chromium-driver", "the dashboard's browser test")?;
    let timeout = match std::env::var("PROCYARD_TEST_TIMEOUT_SECS") {
        Ok(v) => Duration::from_secs(
            v.parse()
                .with_context(|| format!("PROCYARD_TEST_TIMEOUT_SECS={v:?} is not seconds"))?,
        ),
        Err(_) => TEST_TIMEOUT,
    };
    let result = run_cargo_test(timeout);
    let strays = stray_processes();
    if !strays.is_empty() {
        for s in &strays {
            eprintln!("xtask: stray process left by the tests: {s}");
        }
    }
    result?;
    if !strays.is_empty() {
        bail!("{} stray process(es) or zombie(s) left behind by the tests", strays.len());
    }
    Ok(())
}

/// `cargo test --workspace --no-fail-fast`, stopped with the test binaries it runs if it is
/// still going after `timeout`: a hung test fails the run instead of stalling it.
fn run_cargo_test(timeout: Duration) -> Result<()> {
    let what = "cargo test --workspace";
    eprintln!("xtask: {what} (gives up after {} s)", timeout.as_secs());
    let started = Instant::now();
    // Same process group as xtask, so a terminal's Ctrl-C still reaches cargo and its tests.
    let mut child =
        procyard_core::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["test", "--workspace", "--no-fail-fast"])
            .current_dir(root())
            .grouping(procyard_core::Grouping::Inherit)
            .spawn()
            .with_context(|| format!("unable to run {what}"))?;
    let Some(exit) = child.wait_timeout(timeout).context("waiting for cargo test")? else {
        eprintln!("xtask: {what} still running after {} s; these were running:", timeout.as_secs());
        for s in stray_processes() {
            eprintln!("xtask:   {s}");
        }
        kill_descendants(child.id().as_raw() as u32);
        let _ = child.kill_and_reap();
        bail!("{what} timed out after {} s (a test hangs)", timeout.as_secs());
    };
    eprintln!("xtask: {what}: {exit} after {:.1}s", started.elapsed().as_secs_f64());
    if !exit.success() {
        bail!("{what} failed ({exit})");
    }
    Ok(())
}

/// SIGKILLs `root`'s descendants (test binaries and what they started), leaves first.
fn kill_descendants(root: u32) {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The fields after the parenthesised command name: state, then ppid.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if let Some(ppid) = ppid.and_then(|p| p.parse().ok()) {
            parents.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(pid, _)| *pid));
        i += 1;
    }
    for pid in tree.into_iter().skip(1).rev() {
        if let Some(pid) = i32::try_from(pid).ok().and_then(procyard_core::Pid::from_raw) {
            let _ = procyard_core::kill_process(pid, procyard_core::Signal::KILL);
        }
    }
}

/// Processes still running (or unreaped) from binaries built in this workspace's target dir,
/// described for a report.
fn stray_processes() -> Vec<String> {
    our_processes()
        .into_iter()
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            format!("pid {pid}: {}", if cmdline.is_empty() { stat.trim() } else { &cmdline })
        })
        .collect()
}

/// Pids of processes running (or unreaped) from binaries of this workspace's target dir.
fn our_processes() -> Vec<u32> {
    let target = root().join("target");
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let ours = exe.as_ref().is_some_and(|e| e.starts_with(&target) && !e.ends_with("xtask"));
        let zombie_of_ours = stat.contains(") Z ") && stat.contains("procyard");
        if ours || zombie_of_ours {
            out.push(pid);
        }
    }
    out
}

fn broker_answers() -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], 5672).into();
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// The AMQP tests need a broker: use `PROCYARD_AMQP_URL` or one on 127.0.0.1:5672; start or
/// install Debian's rabbitmq-server when none answers. Under CI a broker is mandatory.
fn ensure_rabbitmq() -> Result<()> {
    if std::env::var_os("PROCYARD_AMQP_URL").is_some() || broker_answers() {
        return Ok(());
    }
    eprintln!("xtask: no AMQP broker on 127.0.0.1:5672; trying to start rabbitmq-server");
    let have_server = Command::new("sh")
        .args(["-c", "command -v rabbitmq-server"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_server {
        eprintln!("xtask: installing rabbitmq-server from Debian's packages");
        let install = Command::new("sh")
            .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server"])
            .status();
        if !install.is_ok_and(|s| s.success()) && is_ci() {
            bail!("RabbitMQ is needed by the tests under CI=true and could not be installed");
        }
    }
    let _ = Command::new("sh").args(["-c", "rabbitmq-server -detached"]).status();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if broker_answers() {
            eprintln!("xtask: RabbitMQ is answering");
            return Ok(());
        }
        // Waiting for an external service to open its port: there is no event to wait on.
        std::thread::sleep(Duration::from_millis(500));
    }
    if is_ci() {
        bail!("RabbitMQ is needed by the tests under CI=true and did not start within 120 s");
    }
    eprintln!("xtask: RabbitMQ unavailable; the AMQP tests will say they were skipped");
    Ok(())
}

fn postgres_answers() -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], 5432).into();
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// The PostgreSQL tests need a database: `PROCYARD_PG_URL`, or the server on 127.0.0.1:5432
/// with database `test` reachable as `postgres` without a password. When none answers, start
/// Debian's cluster (installing `postgresql` when missing, then trusting local TCP logins and
/// creating `test`). Under CI a database is mandatory.
fn ensure_postgres() -> Result<()> {
    if std::env::var_os("PROCYARD_PG_URL").is_some() || postgres_answers() {
        return Ok(());
    }
    eprintln!("xtask: no PostgreSQL on 127.0.0.1:5432; trying to start it");
    let sh = |script: &str| Command::new("sh").args(["-c", script]).status();
    let have = || sh("command -v pg_ctlcluster >/dev/null").is_ok_and(|s| s.success());
    if !have() {
        eprintln!("xtask: installing postgresql from Debian's packages");
        let install = sh(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql",
        );
        if !install.is_ok_and(|s| s.success()) && is_ci() {
            bail!("PostgreSQL is needed by the tests under CI=true and could not be installed");
        }
    }
    // Every cluster Debian knows, started; local TCP logins trusted (a test machine's own
    // database, reached only from 127.0.0.1); database `test` created.
    let _ = sh("for hba in /etc/postgresql/*/main/pg_hba.conf; do \
          grep -q '^host all all 127.0.0.1/32 trust' \"$hba\" || \
          sed -i '1i host all all 127.0.0.1/32 trust' \"$hba\"; done; \
        pg_lsclusters -h 2>/dev/null | while read v c _; do pg_ctlcluster \"$v\" \"$c\" start; \
          pg_ctlcluster \"$v\" \"$c\" reload; done");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if postgres_answers() {
            let _ = sh(
                "su postgres -c \"psql -qAtc \\\"SELECT 1 FROM pg_database WHERE datname = 'test'\\\" | grep -q 1 || createdb test\"",
            );
            eprintln!("xtask: PostgreSQL is answering");
            return Ok(());
        }
        // Waiting for an external service to open its port: there is no event to wait on.
        std::thread::sleep(Duration::from_millis(500));
    }
    if is_ci() {
        bail!("PostgreSQL is needed by the tests under CI=true and did not start within 120 s");
    }
    eprintln!("xtask: PostgreSQL unavailable; the postgres tests will say they were skipped");
    Ok(())
}

/// The serf agent for asyncjob's interop test: installed from Debian's packages when missing.
/// Under `CI=true` a serf that cannot be installed is an error; elsewhere the test says it was
/// skipped.
fn ensure_serf() -> Result<()> {
    let have_serf = || {
        Command::new("sh")
            .args(["-c", "command -v serf"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have_serf() {
        return Ok(());
    }
    eprintln!("xtask: installing serf from Debian's packages");
    let install = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq serf",
        ])
        .status();
    if install.is_ok_and(|s| s.success()) && have_serf() {
        return Ok(());
    }
    if is_ci() {
        bail!("serf is needed by the tests under CI=true and could not be installed");
    }
    eprintln!("xtask: serf unavailable; the serf interop test will say it was skipped");
    Ok(())
}

/// A program a test needs, from Debian's packages when missing (promtool for the daemon's
/// `/metrics` test; chromium and chromedriver for its browser test). Those tests fail without
/// it, so a tool that cannot be installed is an error under `CI=true` and a warning elsewhere.
fn ensure_debian_tool(program: &str, packages: &str, needed_by: &str) -> Result<()> {
    let have = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have() {
        return Ok(());
    }
    eprintln!("xtask: installing {packages} from Debian's packages ({needed_by})");
    let install = Command::new("sh")
        .args([
            "-c",
            &format!("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {packages}"),
        ])
        .status();
    if install.is_ok_and(|s| s.success()) && have() {
        return Ok(());
    }
    if is_ci() {
        bail!("{program} is needed by {needed_by} under CI=true and could not be installed");
    }
    eprintln!("xtask: {program} unavailable; {needed_by} will fail");
    Ok(())
}

/// Each crate's benchmark example (name, file under the crate's `examples/`), in report order.
/// Example names are unique across the workspace so their binaries do not collide.
const BENCHES: &[(&str, &str, &str)] = &[
    ("procyard-core", "bench_core", "bench.rs"),
    ("procyard-asyncjob", "bench_asyncjob", "bench.rs"),
    ("procyard-procmgr", "bench_procmgr", "bench.rs"),
    ("procyard-daemon", "bench_daemon", "bench.rs"),
    ("procyard-daemon", "bench_amqp", "bench_amqp.rs"),
    ("procyard-daemon", "bench_amqp_sched", "bench_amqp_sched.rs"),
    ("procyard-daemon", "bench_pg", "bench_pg.rs"),
    ("procyard-daemon", "bench_pg_sched", "bench_pg_sched.rs"),
    ("procyard-daemon", "bench_publish", "bench_publish.rs"),
    ("procyard-bgtask", "bench_bgtask", "bench.rs"),
    ("procyard-resultworker", "bench_resultworker", "bench.rs"),
];

fn bench() -> Result<()> {
    ensure_rabbitmq()?;
    ensure_postgres()?;
    // The benchmarks drive the release binaries (daemons, supervisors): build them first.
    let mut build = cargo();
    build.args(["build", "--quiet", "--release", "--workspace", "--bins"]);
    run("cargo build --release (binaries)", build)?;
    let mut rows: Vec<[String; 7]> = Vec::new();
    let mut failures = Vec::new();
    for (package, example, file) in BENCHES {
        let file = root()
            .join("crates")
            .join(package.trim_start_matches("procyard-"))
            .join("examples")
            .join(file);
        if !file.exists() {
            continue;
        }
        eprintln!("xtask: bench {package} {example}");
        let output = cargo()
            .args(["run", "--quiet", "--release", "-p", package, "--example", example])
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("unable to run the {package} benchmark"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            if fields.first() == Some(&"BENCH") && fields.len() >= 7 {
                let mut row: [String; 7] = Default::default();
                row[0] = package.trim_start_matches("procyard-").to_owned();
                for (i, f) in fields[1..7].iter().enumerate() {
                    row[i + 1] = (*f).to_owned();
                }
                rows.push(row);
            } else if !line.is_empty() {
                eprintln!("  {line}");
            }
        }
        if !output.status.success() {
            failures.push(format!("{package} {example}: {}", output.status));
        }
    }
    let header = ["crate", "metric", "value", "unit", "baseline", "baseline value", "ratio"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let print_row = |cells: &[String]| {
        let line: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        println!("| {} |", line.join(" | "));
    };
    print_row(&header.map(str::to_owned));
    println!("|{}|", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
    for row in &rows {
        print_row(row);
    }
    if !failures.is_empty() {
        bail!("benchmarks failed: {}", failures.join("; "));
    }
    Ok(())
}
