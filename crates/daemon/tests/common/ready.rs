//! Starting a whole daemon under test and waiting for its readiness line, shared by the test
//! binaries that run daemons against a broker or a database.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `procyard-daemon run --ready-fd 1 --config CONFIG`, its stdout piped for [`ready_line`].
pub fn daemon_command(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_procyard-daemon"));
    cmd.args(["run", "--ready-fd", "1", "--config"]).arg(config).stdout(Stdio::piped());
    cmd
}

/// The first line `child` writes to its stdout (`ready …` once it serves), read on a thread
/// so that a daemon stuck at start (connecting to a broker, say) fails the test within
/// `limit` instead of hanging it: `None` when no line came in time.
pub fn ready_line(child: &mut Child, limit: Duration) -> Option<String> {
    let stdout = child.stdout.take().expect("the daemon's stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(limit).ok()
}
