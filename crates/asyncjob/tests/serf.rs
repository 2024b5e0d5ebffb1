//! Interop with a real serf agent (Debian's `serf`, installed by `cargo xtask test` when
//! missing): the example handler's answers, `failed` included, reach the querier.

mod common;

use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, Sandbox, try_wait_for};
use serde_json::Value;

const HANDLER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/serf-handler.sh");
/// The query the example handler answers.
const QUERY: &str = "bash_test";

/// Whether `serf` runs; under `CI=true` its absence is a failure, elsewhere a skip.
fn serf_available(test: &str) -> bool {
    let found = Command::new("serf").arg("version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "{test}: serf is needed under CI=true (cargo xtask test installs it)"
        );
        eprintln!("{test}: skipped: no serf on PATH (apt-get install serf, or cargo xtask test)");
    }
    found
}

/// A loopback port free for both TCP and UDP (serf gossips on both).
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        let port = tcp.local_addr().expect("local address").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A serf agent on loopback, killed when dropped (a failed assertion included).
struct Agent {
    child: Child,
    node: String,
    rpc: String,
    log: std::path::PathBuf,
}

impl Agent {
    fn start(sb: &Sandbox) -> Agent {
        let node = format!("procyard-{}", sb.tag);
        let rpc = format!("127.0.0.1:{}", free_port());
        let log = sb.path("agent.log");
        let child = Command::new("serf")
            .args(["agent", "-node", &node, "-log-level=debug"])
            .arg(format!("-bind=127.0.0.1:{}", free_port()))
            .arg(format!("-rpc-addr={rpc}"))
            .arg(format!("-event-handler=query:{QUERY}=/bin/sh {HANDLER}"))
            // The handler's environment: the built binary, the sandbox's state file, and a
            // file for the reasons the handler keeps out of its answers.
            .env("ASYNCJOB", BIN)
            .env("ASYNCJOB_STATE", sb.state())
            .env("ASYNCJOB_ERRORS", sb.path("handler.err"))
            .env(common::TAG_VAR, &sb.tag)
            .current_dir(sb.dir.path())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("agent log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("run serf agent");
        let mut agent = Agent { child, node, rpc, log };
        let answers = try_wait_for(Duration::from_secs(30), || {
            if let Ok(Some(exit)) = agent.child.try_wait() {
                panic!("serf agent exited ({exit}):\n{}", agent.log());
            }
            Command::new("serf")
                .args(["members", &format!("-rpc-addr={}", agent.rpc)])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(answers, "serf agent not answering on {}:\n{}", agent.rpc, agent.log());
        agent
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `serf query` with `payload`: this node's answer, or `None` when serf relayed none.
    fn query(&self, sb: &Sandbox, payload: &str) -> Option<String> {
        let rpc = format!("-rpc-addr={}", self.rpc);
        let args = ["query", &rpc, "-format=json", "-timeout=3s", QUERY, payload];
        let ran = sb.run_with_deadline("serf", &args, Duration::from_secs(60));
        assert_eq!(ran.code, 0, "serf query {payload}: {}", ran.stderr);
        let reply: Value = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("serf query {payload}: {e}: {}", ran.stdout));
        reply["Responses"][&self.node].as_str().map(|answer| answer.trim().to_owned())
    }

    /// [`Agent::query`] that must be answered.
    fn answer(&self, sb: &Sandbox, payload: &str) -> String {
        self.query(sb, payload).unwrap_or_else(|| {
            panic!(
                "no answer to {payload} relayed by serf\nagent log:\n{}\nhandler errors:\n{}",
                self.log(),
                std::fs::read_to_string(sb.path("handler.err")).unwrap_or_default()
            )
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn asyncjob_hardening_serf_query_delivers_failed() {
    if !serf_available("asyncjob_hardening_serf_query_delivers_failed") {
        return;
    }
    let sb = Sandbox::new("asyncjob_hardening_serf_query_delivers_failed");
    let agent = Agent::start(&sb);
    assert_eq!(agent.answer(&sb, "start"), "success");
    let checked: Value = serde_json::from_str(&agent.answer(&sb, "check")).unwrap();
    assert_eq!(checked["status"], "running", "{checked}");
    // A second start fails: serf must relay the `failed`, not swallow it.
    assert_eq!(agent.answer(&sb, "start"), "failed");
    let reasons = std::fs::read_to_string(sb.path("handler.err")).unwrap_or_default();
    assert!(reasons.contains("already holds"), "the reason is kept aside: {reasons}");
    assert_eq!(agent.answer(&sb, "kill"), "success");
    assert_eq!(agent.answer(&sb, "reap"), "success");
    assert_eq!(agent.answer(&sb, "check"), r#"{"status":"absent"}"#);
    assert!(
        !agent.log().contains("Error invoking script"),
        "a handler exited non-zero:\n{}",
        agent.log()
    );
    drop(agent);
    sb.assert_no_strays();
}
