//! procyard-daemon from a program: publish a job to a running daemon with [`Client`], wait for
//! it, and read what it printed — no shelling out.
//!
//! ```text
//! cargo run -p procyard-daemon -- run --config crates/daemon/examples/procyard.toml &
//! cargo run -p procyard-daemon --example client -- crates/daemon/examples/procyard.toml
//! ```
//!
//! The config names the queue and the tasks; this program publishes `hello.world` (the
//! example config's `hello` task echoes its payload) and prints the job's output.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use procyard_daemon::{Client, Config};

/// Publishes `hello.world` with `payload`, waits for the job (at most `timeout`) and returns
/// what it wrote on stdout.
pub fn hello(config: &Path, payload: &str, timeout: Duration) -> procyard_daemon::Result<String> {
    let mut client = Client::new(Config::load(config)?);
    // `publish` also pokes the daemon, so the job starts at once.
    let waited = client.publish_and_wait("hello.world", payload.as_bytes(), Some(timeout))?;
    let job = &waited.jobs[0];
    if waited.timed_out {
        return Ok(format!("job {} still {:?} after {timeout:?}", job.id, job.state));
    }
    let stdout = job.attempts.last().and_then(|a| a.stdout.as_ref());
    Ok(stdout.map(|c| String::from_utf8_lossy(&c.bytes).into_owned()).unwrap_or_default())
}

/// Publishes to the daemon serving the config named by the first argument and prints the output.
pub fn main() -> ExitCode {
    let Some(config) = std::env::args_os().nth(1) else {
        eprintln!("usage: client CONFIG");
        return ExitCode::from(2);
    };
    match hello(Path::new(&config), "world", Duration::from_secs(30)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("client: {}", procyard_core::report(&e));
            ExitCode::FAILURE
        }
    }
}
