//! `examples/client.rs` against a running daemon: a program publishes with `Client`, waits for
//! the job and reads what it printed (the example's own code, included by path).

use std::time::Duration;

use crate::sandbox::Sandbox;

#[path = "../../examples/client.rs"]
#[allow(dead_code, reason = "the example's `main` is for `cargo run --example client`")]
mod example;

#[test]
fn daemon_example_client_publishes_waits_and_reads_the_output() {
    let mut sb = Sandbox::new(
        r#"[[task]]
name = "hello"
routing_keys = ["hello.#"]
command = ["sh", "-c", "echo \"hello $(cat)\""]
"#,
    );
    sb.start();
    let config = sb.path().join("procyard.toml");
    let out = example::hello(&config, "world", Duration::from_secs(30)).expect("the client");
    assert_eq!(out, "hello world\n");
}
