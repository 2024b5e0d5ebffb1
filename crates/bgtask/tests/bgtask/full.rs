//! `block_when_full`: a full buffer stops the supervisor reading the task's pipe, and what the
//! pipe still holds when the task exits is output all the same.

use super::*;

#[test]
fn bgtask_hardening_block_when_full_output_left_in_the_pipe_at_exit_is_read() {
    let sb = Sandbox::new();
    // 48,894 bytes into 4 KiB retained: all but the first 4 KiB wait in the pipe (64 KiB at
    // least) when the task exits.
    let all: Vec<u8> = (1..=10_000).flat_map(|i| format!("{i}\n").into_bytes()).collect();
    let options = sh("seq 1 10000").retain(4096).block_when_full(true);
    let mut task = sb.spawn(options);
    assert_eq!(wait_exit(&task), Status::Exited { code: 0 });
    task.set_timeout(Some(Duration::from_secs(20)));
    let deadline = Deadline::after(Duration::from_secs(20));
    let mut got = Vec::new();
    loop {
        assert!(!deadline.is_expired(), "not final after {} bytes", got.len());
        let read = ReadOptions::new().count(1 << 20).consume(true).wait(true);
        let chunk = task.stream(StreamName::Stdout).read_with(read).unwrap();
        assert_eq!((chunk.offset, chunk.dropped), (got.len() as u64, 0), "nothing dropped");
        got.extend_from_slice(&chunk.data);
        if chunk.is_final() {
            break;
        }
    }
    // Before: the first 4 KiB came with `exited`, final, and the rest was never read.
    assert_eq!(got.len(), all.len(), "every byte the task wrote is read");
    assert_eq!(got, all);
    // The stream ended where the task stopped writing.
    let info = task.stream(StreamName::Stdout).info().unwrap();
    assert_eq!((info.limit, info.eof), (all.len() as u64, true));
    task.delete().unwrap();
}

/// `ReadOptions::at_least`: a waiting read is answered only once that many bytes are there
/// (one answer for several task writes), and at the end of the stream with what there is.
#[test]
fn bgtask_read_at_least_waits_for_that_many_bytes() {
    let sb = Sandbox::new();
    let mut writer = sb.spawn(sh("cat"));
    let mut reader = sb.pool.task(writer.id()).unwrap();
    reader.set_timeout(Some(Duration::from_secs(20)));
    let read = ReadOptions::new().count(100).at_least(7).consume(true).wait(true);
    let waiting = std::thread::spawn(move || {
        let chunk = reader.stream(StreamName::Stdout).read_with(read).unwrap();
        (reader, chunk)
    });
    writer.write(b"abc").unwrap();
    // Wait until the supervisor holds the first write, so the read has seen too few bytes.
    let deadline = Deadline::after(Duration::from_secs(20));
    while writer.stream(StreamName::Stdout).info().unwrap().limit < 3 {
        assert!(!deadline.is_expired(), "the first write never arrived");
        let peek = ReadOptions::new().offset(0).count(3).wait(true);
        let _ = writer.stream(StreamName::Stdout).read_with(peek).unwrap();
    }
    assert!(!waiting.is_finished(), "answered with fewer bytes than asked for");
    writer.write(b"defg").unwrap();
    let (mut reader, chunk) = waiting.join().unwrap();
    assert_eq!((chunk.offset, chunk.data.as_slice()), (0, &b"abcdefg"[..]));
    // The end of the stream answers a read that waits for more.
    writer.write(b"h").unwrap();
    writer.close_stdin().unwrap();
    let chunk = reader.stream(StreamName::Stdout).read_with(read).unwrap();
    assert_eq!((chunk.offset, chunk.data.as_slice()), (7, &b"h"[..]));
    writer.delete().unwrap();
}
