//! Readers copy retained output straight from the supervisor's memfd ring: the bytes they get
//! are the task's, at the offsets it wrote them, while the task keeps overwriting the ring.

use super::*;

/// The numbers 1..=n, one a line: every offset's byte is known.
fn numbers(n: u32) -> Vec<u8> {
    (1..=n).flat_map(|i| format!("{i}\n").into_bytes()).collect()
}

/// A consumer of a task that writes 30 times its retain cap gets every byte, in order, through
/// a ring that wraps again and again.
#[test]
fn bgtask_ring_a_consumer_reads_every_byte_through_the_wrapping_ring() {
    let sb = Sandbox::new();
    let all = numbers(300_000);
    let options = sh("seq 1 300000").retain(64 * 1024).block_when_full(true);
    let mut task = sb.spawn(options);
    task.set_timeout(Some(Duration::from_secs(30)));
    let deadline = Deadline::after(Duration::from_secs(60));
    let mut got = Vec::new();
    loop {
        assert!(!deadline.is_expired(), "not final after {} bytes", got.len());
        let read = ReadOptions::new().count(48 * 1024).consume(true).wait(true);
        let meta = task.stream(StreamName::Stdout).read_with_into(read, &mut got).unwrap();
        assert_eq!(meta.dropped, 0, "nothing dropped");
        if meta.is_final() {
            break;
        }
    }
    assert_eq!(got.len(), all.len());
    assert!(got == all, "the bytes read are the bytes written");
    task.delete().unwrap();
}

/// A follower of a task that drops what nobody keeps up with gets gaps it is told about, never
/// bytes other than those written at the offsets it is given.
#[test]
fn bgtask_ring_a_follower_of_a_dropping_task_never_sees_overwritten_bytes() {
    let sb = Sandbox::new();
    let all = numbers(400_000);
    let mut task = sb.spawn(sh("seq 1 400000").retain(16 * 1024));
    task.set_timeout(Some(Duration::from_secs(30)));
    let deadline = Deadline::after(Duration::from_secs(60));
    let (mut at, mut read_bytes) = (0u64, 0usize);
    let mut buf = Vec::new();
    loop {
        assert!(!deadline.is_expired(), "not final at offset {at}");
        buf.clear();
        let read = ReadOptions::new().offset(at).count(8 * 1024).wait(true);
        let meta = task.stream(StreamName::Stdout).read_with_into(read, &mut buf).unwrap();
        let from = meta.offset as usize;
        assert!(buf == all[from..from + buf.len()], "bytes at {from} differ from the task's");
        read_bytes += buf.len();
        at = meta.end();
        if meta.is_final() {
            break;
        }
    }
    assert_eq!(at, all.len() as u64, "followed to the end");
    assert!(read_bytes > 0);
    task.delete().unwrap();
}
