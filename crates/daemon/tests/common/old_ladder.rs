//! The power-of-two delay ladder of earlier versions (before the base-64 ladder), declared and
//! fed the way that code did (commit 751666a, `topology.rs` and `broker/declare.rs`), so that a
//! test can leave a job in it and upgrade: for the jobs exchange `E` and level k in 0..36, a
//! durable headers exchange `E.delay.bit<k>`, a durable classic queue `E.delay.<2^k>ms` with
//! `x-message-ttl = 2^k` dead-lettering to level k-1 (level 0: `E`), bound for header
//! `procyard-delay-bit<k>` = "1", and `E.delay.bit<k>` bound to level k-1 for "0". A delayed
//! job was published to the top level with one such header per level.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

/// Levels of the old ladder: TTL queues of 1 ms … 2^35 ms.
const LEVELS: u32 = 36;

/// The old ladder's exchange of `level`.
fn exchange(e: &str, level: u32) -> String {
    format!("{e}.delay.bit{level}")
}

/// The old ladder's queue of `level` (2^level ms).
pub fn queue(e: &str, level: u32) -> String {
    format!("{e}.delay.{}ms", 1u64 << level)
}

/// Every queue of the old ladder (for cleanup).
pub fn queues(e: &str) -> Vec<String> {
    (0..LEVELS).map(|l| queue(e, l)).collect()
}

/// Where a message goes after `level`: one level down, or the jobs exchange.
fn below(e: &str, level: u32) -> String {
    match level {
        0 => e.to_owned(),
        l => exchange(e, l - 1),
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The old binding arguments: bit `level` = `set`.
fn binding(level: u32, set: bool) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-match".into(), long("all"));
    args.insert(format!("procyard-delay-bit{level}").into(), long(if set { "1" } else { "0" }));
    args
}

/// Runs `f` on a channel of a new connection to `url`.
fn with_channel<T>(url: &str, f: impl AsyncFnOnce(&Channel) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let conn = Connection::connect(url, Default::default()).await.expect("connect to broker");
        let ch = conn.create_channel().await.expect("channel");
        let result = f(&ch).await;
        let _ = conn.close(200, "".into()).await;
        result
    })
}

/// Declares the old ladder of jobs exchange `e` as the old code did (`E` must exist).
pub fn declare(url: &str, e: &str) {
    with_channel(url, async |ch| {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        let queue_opts = QueueDeclareOptions { durable: true, ..Default::default() };
        for level in 0..LEVELS {
            let x = exchange(e, level);
            let q = queue(e, level);
            ch.exchange_declare(x.clone().into(), ExchangeKind::Headers, durable, <_>::default())
                .await
                .expect("declare an old ladder exchange");
            let mut args = FieldTable::default();
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(1i64 << level));
            args.insert("x-dead-letter-exchange".into(), long(&below(e, level)));
            ch.queue_declare(q.clone().into(), queue_opts, args)
                .await
                .expect("declare an old ladder queue");
            let opts = QueueBindOptions::default();
            ch.queue_bind(q.into(), x.clone().into(), "".into(), opts, binding(level, true))
                .await
                .expect("bind an old ladder queue");
            let opts = ExchangeBindOptions::default();
            ch.exchange_bind(
                below(e, level).into(),
                x.into(),
                "".into(),
                opts,
                binding(level, false),
            )
            .await
            .expect("bind an old ladder exchange");
        }
    });
}

/// Publishes a job delayed by `delay_ms` as the old code did: the job headers, the bits of its
/// delay, to the top level of the old ladder, persistent, confirmed by the broker.
pub fn publish_delayed(url: &str, e: &str, routing_key: &str, payload: &[u8], delay_ms: u64) {
    with_channel(url, async |ch| {
        ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm mode");
        let mut headers = FieldTable::default();
        headers.insert("x-procyard-attempt".into(), AMQPValue::LongLongInt(1));
        headers.insert("x-procyard-routing-key".into(), long(routing_key));
        for level in 0..LEVELS {
            let bit = if delay_ms >> level & 1 == 1 { "1" } else { "0" };
            headers.insert(format!("procyard-delay-bit{level}").into(), long(bit));
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(uuid::Uuid::now_v7().to_string().into())
            .with_content_type("application/octet-stream".into())
            .with_headers(headers);
        let mandatory = BasicPublishOptions { mandatory: true, immediate: false };
        let top = exchange(e, LEVELS - 1);
        let confirm = ch
            .basic_publish(top.into(), routing_key.into(), mandatory, payload, props)
            .await
            .expect("publish into the old ladder")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker refused the job: {confirm:?}");
        assert!(confirm.take_message().is_none(), "the old ladder returned the job unrouted");
    });
}

/// Messages ready in `queue`.
pub fn depth(url: &str, queue: &str) -> u32 {
    with_channel(url, async |ch| {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let q = ch.queue_declare(queue.into(), passive, <_>::default()).await.expect("passive");
        q.message_count()
    })
}

/// Deletes the old ladder's exchanges (its queues go with the test's other queues).
pub fn delete_exchanges(url: &str, e: &str) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return;
    };
    rt.block_on(async {
        let Ok(conn) = Connection::connect(url, Default::default()).await else { return };
        for level in 0..LEVELS {
            if let Ok(ch) = conn.create_channel().await {
                let opts = ExchangeDeleteOptions::default();
                let _ = ch.exchange_delete(exchange(e, level).into(), opts).await;
            }
        }
        let _ = conn.close(200, "test cleanup".into()).await;
    });
}
