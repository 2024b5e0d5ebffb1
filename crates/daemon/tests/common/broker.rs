//! The broker the AMQP tests talk to, shared by `amqp.rs` and `amqp_daemon.rs`.

use std::time::Duration;

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker URL, or `None` (after a notice) when no broker answers and CI is not set.
pub fn broker_url(test: &str) -> Option<String> {
    let url = std::env::var("PROCYARD_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let hostport = url
        .split_once("://")
        .map(|(_, rest)| rest.rsplit_once('@').map_or(rest, |(_, h)| h))
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5672")
        .to_owned();
    let hostport = if hostport.contains(':') { hostport } else { format!("{hostport}:5672") };
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
        });
    if reachable {
        return Some(url);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: no AMQP broker answers at {hostport} and CI=true: RabbitMQ is required");
    }
    eprintln!("SKIP {test}: no AMQP broker answers at {hostport} (set PROCYARD_AMQP_URL)");
    None
}
