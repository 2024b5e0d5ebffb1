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
