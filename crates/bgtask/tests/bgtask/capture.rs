//! Output capture: output that comes in spurts, with quiet spells between them, reaches a
//! reader waiting for it while the task runs; a stream the task closes ends while it runs.

use super::*;

/// Output that follows a quiet spell reaches a waiting reader while the task runs (a
/// supervisor that stopped watching a pipe for a while must watch it again).
#[test]
fn bgtask_capture_output_after_a_quiet_spell_arrives_while_the_task_runs() {
    let sb = Sandbox::new();
    let script = "echo early; sleep 0.05; echo middle; sleep 0.05; echo late; exec sleep 60";
    let mut task = sb.spawn(sh(script));
    task.set_timeout(Some(Duration::from_secs(20)));
    let mut got = Vec::new();
    while !got.ends_with(b"late\n") {
        let read = ReadOptions::new().consume(true).wait(true);
        let chunk = task.stream(StreamName::Stdout).read_with(read).unwrap();
        assert!(!chunk.exited, "read before the task's exit");
        got.extend_from_slice(&chunk.data);
    }
    assert_eq!(String::from_utf8_lossy(&got), "early\nmiddle\nlate\n");
    task.delete().unwrap();
}

/// A stream ends when the task closes it while it runs on, whether its last bytes and the
/// close come as one wake-up or two (a supervisor that stops reading at a short read must
/// still read on to the end once the pipe hangs up: no exit, no reap tells it).
#[test]
fn bgtask_capture_a_stream_closed_by_a_running_task_ends() {
    let sb = Sandbox::new();
    for script in [
        "echo early; printf late; exec >&-; exec sleep 60",
        "echo early; printf late; sleep 0.1; exec >&-; exec sleep 60",
    ] {
        let mut task = sb.spawn(sh(script));
        task.set_timeout(Some(Duration::from_secs(20)));
        let mut got = Vec::new();
        loop {
            // Waits for bytes or the end of the stream (the task runs on).
            let read = ReadOptions::new().consume(true).wait(true);
            let chunk = task.stream(StreamName::Stdout).read_with(read).unwrap();
            assert!(!chunk.exited, "{script}: the task runs on");
            got.extend_from_slice(&chunk.data);
            if chunk.info.eof {
                break;
            }
        }
        assert_eq!(String::from_utf8_lossy(&got), "early\nlate", "{script}");
        assert_eq!(task.info().unwrap().streams[&StreamName::Stdout].limit, 10, "{script}");
        task.delete().unwrap();
    }
}
