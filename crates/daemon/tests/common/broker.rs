//! The broker the AMQP tests talk to, shared by the `amqp*.rs` test binaries.

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

/// Waits until `queue` has at least `n` consumers on the broker (polling a passive declare:
/// the broker offers no event for it), so a test publishes only once every consumer it started
/// can receive: one that subscribed late would otherwise find the queue already drained.
/// Panics after `timeout`.
pub fn wait_consumers(url: &str, queue: &str, n: u32, timeout: Duration) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        use lapin::options::QueueDeclareOptions;
        let conn =
            lapin::Connection::connect(url, Default::default()).await.expect("connect to broker");
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = 0;
        while seen < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "queue {queue}: {seen} of {n} consumers after {timeout:?}"
            );
            // A passive declare of a queue not declared yet closes the channel: use a new one.
            let ch = conn.create_channel().await.expect("channel");
            let passive = QueueDeclareOptions { passive: true, ..Default::default() };
            seen = match ch.queue_declare(queue.into(), passive, Default::default()).await {
                Ok(q) => q.consumer_count(),
                Err(_) => 0,
            };
            let _ = ch.close(200, "".into()).await;
            if seen < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = conn.close(200, "".into()).await;
    });
}

/// Deletes a test's queues and its exchanges (`EXCHANGE` and `EXCHANGE.dead`) from the broker
/// when dropped; with `ladder`, also the delay ladder's queues and exchanges.
pub struct Cleanup {
    pub url: String,
    pub exchange: String,
    pub queues: Vec<String>,
    pub ladder: bool,
}

impl Cleanup {
    /// The topology of one task: its queue, its dead-letter queue and a retry queue per delay
    /// in `retry_ms`.
    #[allow(dead_code)] // amqp.rs, which includes this file too, lists its queues itself
    pub fn task(url: &str, exchange: &str, task: &str, retry_ms: &[u64]) -> Cleanup {
        let mut queues = vec![format!("{exchange}.{task}"), format!("{exchange}.{task}.dead")];
        queues.extend(retry_ms.iter().map(|ms| format!("{exchange}.{task}.retry.{ms}ms")));
        Cleanup { url: url.to_owned(), exchange: exchange.to_owned(), queues, ladder: false }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        let (url, exchange) = (self.url.clone(), self.exchange.clone());
        let mut queues = std::mem::take(&mut self.queues);
        let mut exchanges =
            vec![exchange.clone(), format!("{exchange}.dead"), format!("{exchange}.events")];
        if self.ladder {
            // The delay ladder: level k holds d·64^k ms, d = 1..63 (see the backend's
            // topology); its queues are declared on first use, and deleting one that is not
            // there is no error.
            for level in 0..6u32 {
                for digit in 1..64u64 {
                    queues
                        .push(format!("{exchange}.delay.level{level}.{}ms", digit << (6 * level)));
                }
                exchanges.push(format!("{exchange}.delay.level{level}"));
            }
        }
        rt.block_on(async move {
            use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
            let Ok(conn) = lapin::Connection::connect(&url, Default::default()).await else {
                return;
            };
            for q in queues {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch.queue_delete(q.into(), QueueDeleteOptions::default()).await;
                }
            }
            for x in exchanges {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch.exchange_delete(x.into(), ExchangeDeleteOptions::default()).await;
                }
            }
            let _ = conn.close(200, "test cleanup".into()).await;
        });
    }
}

/// Declares the task `work` (routing key `work.#`, 3 attempts) on quorum queues of `exchange`,
/// as a client does, and publishes `job0` … `job<n-1>` to `work.job` through the library's
/// client.
#[allow(dead_code)] // not every test binary that shares this file publishes this way
pub fn publish_work(url: &str, exchange: &str, n: usize) {
    use procyard_daemon::queue::{
        self, AmqpQueueType, BackendKind, OpenMode, QueueConfig, TaskBinding,
    };
    let config = QueueConfig {
        backend: BackendKind::Amqp,
        path: std::path::PathBuf::new(),
        url: Some(url.to_owned()),
        exchange: exchange.to_owned(),
        queue_type: AmqpQueueType::Quorum,
        events: true,
        priorities: false,
        schema: "procyard".into(),
        durability: Default::default(),
    };
    let mut client = queue::open(&config, OpenMode::Client).expect("client");
    let binding =
        TaskBinding { name: "work".into(), routing_keys: vec!["work.#".into()], max_attempts: 3 };
    client.bind(&[binding]).expect("bind");
    for i in 0..n {
        client.publish("work.job", format!("job{i}").as_bytes()).expect("publish");
    }
    client.shutdown().expect("shutdown");
}
