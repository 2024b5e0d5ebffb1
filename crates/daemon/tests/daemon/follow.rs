//! `logs ID -f` follows a running job's output live (issue 16): the bytes as the job writes
//! them, for a oneshot job (stdout) and for a longlived worker's job (its stderr lines), and
//! exits when the job ends with the status `wait` would.

use std::path::Path;
use std::time::Duration;

use procyard_core::{Child, Command, Stdio, testkit};

use crate::cancel::rust_worker_task;
use crate::sandbox::{BIN, Sandbox};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// `logs -f` of `id`, its stdout and stderr appended to files.
fn follow(sb: &Sandbox, id: &str, out: &Path, err: &Path) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(["logs", "-f", "--config"]).arg(&sb.config).arg(id);
    cmd.stdout(Stdio::Append(out.to_owned())).stderr(Stdio::Append(err.to_owned()));
    cmd.stdin(Stdio::Null).spawn().expect("logs -f")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Shows `first` before the job goes on (the file `go` is created only once `logs -f` has
/// printed it), then `second`, then exits 0 with the job.
fn first_then_second(sb: &Sandbox, id: &str, on_stderr: bool, first: &str, second: &str) {
    let (out, err) = (sb.path().join("f.out"), sb.path().join("f.err"));
    let (printed, other) = if on_stderr { (&err, &out) } else { (&out, &err) };
    let mut child = follow(sb, id, &out, &err);
    let seen = testkit::try_wait_for(SECS(30), || read(printed).contains(first));
    assert!(seen, "the first line, live: {:?} / {:?}\n{}", read(printed), read(other), sb.log());
    assert!(!read(printed).contains(second), "not yet");
    std::fs::write(sb.path().join("go"), b"").expect("go");
    let exit = child.wait_timeout(SECS(30)).expect("wait logs -f").expect("logs -f ended");
    assert!(exit.success(), "{exit}: {}", read(other));
    let all = read(printed);
    assert!(all.ends_with(&format!("{first}\n{second}\n")), "{all:?}");
}

#[test]
fn daemon_follow_oneshot_output_live() {
    let mut sb = Sandbox::new(
        "[[task]]\nname = \"lines\"\nrouting_keys = [\"lines.#\"]\ncommand = [\"sh\", \"-c\", \"echo first; while [ ! -e {dir}/go ]; do sleep 0.02; done; echo second; echo done >&2\"]\n",
    );
    sb.start();
    let id = sb.publish("lines.x", b"").remove(0);
    first_then_second(&sb, &id, false, "first", "second");
    let (out, err) = (sb.path().join("f.out"), sb.path().join("f.err"));
    assert_eq!(read(&out), "first\nsecond\n");
    assert_eq!(read(&err), "done\n", "stderr to stderr");
}

#[test]
fn daemon_follow_longlived_stderr_live() {
    let mut sb = Sandbox::new(&rust_worker_task("rw"));
    sb.start();
    let payload = format!("lines:{}", sb.path().display());
    let id = sb.publish("rw.x", payload.as_bytes()).remove(0);
    let first = format!("job {id} {payload}\nfirst line");
    first_then_second(&sb, &id, true, &first, "second line");
    let out = sb.path().join("f.out");
    assert_eq!(read(&out), "", "a longlived worker's stdout is the protocol");
}
