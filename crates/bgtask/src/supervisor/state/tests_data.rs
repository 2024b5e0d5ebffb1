//! The transition for the task's data, driven event by event: reads, stdin, datagrams,
//! subscribers.

use procyard_core::Exit;
use serde_json::json;

use super::tests::{C1, C2, ok, refused, request, running};
use super::{Action, Event};
use crate::RefusalKind;
use crate::protocol::{Event as Announce, Request, Response, StreamName};

#[test]
fn a_waiting_read_is_parked_until_output_arrives() {
    let (mut s, clock) = running();
    let read = Request::Read {
        stream: StreamName::Stdout,
        offset: Some(0),
        count: 10,
        consume: false,
        wait: true,
        at_least: 0,
        file: false,
    };
    assert!(request(&mut s, C1, read, clock.at(0.0)).is_empty());
    assert!(s.is_busy(C1));
    // Output on the other stream does not answer it.
    s.outputs[1].buf.push(b"err");
    assert!(
        s.step(
            Event::Output { stream: StreamName::Stderr, grew: true, eof: false, held: false },
            clock.at(0.1)
        )
        .is_empty()
    );
    s.outputs[0].buf.push(b"hi");
    let actions = s.step(
        Event::Output { stream: StreamName::Stdout, grew: true, eof: false, held: false },
        clock.at(0.2),
    );
    assert!(
        matches!(&actions[..], [Action::SendData { client: C1, at: 0, len: 2, .. }]),
        "{actions:?}"
    );
    assert!(!s.is_busy(C1));
}

#[test]
fn a_read_that_waits_for_at_least_n_bytes_stays_parked_below_n() {
    let (mut s, clock) = running();
    let read = Request::Read {
        stream: StreamName::Stdout,
        offset: None,
        count: 10,
        consume: true,
        wait: true,
        at_least: 5,
        file: false,
    };
    let grew = || Event::Output { stream: StreamName::Stdout, grew: true, eof: false, held: false };
    assert!(request(&mut s, C1, read.clone(), clock.at(0.0)).is_empty());
    s.outputs[0].buf.push(b"abc");
    assert!(s.step(grew(), clock.at(0.1)).is_empty(), "3 of 5 bytes: still parked");
    assert!(s.is_busy(C1));
    s.outputs[0].buf.push(b"defg");
    let actions = s.step(grew(), clock.at(0.2));
    assert!(
        matches!(&actions[..], [Action::SendData { client: C1, at: 0, len: 7, .. }]),
        "{actions:?}"
    );
    // The end of the stream answers it with what there is.
    request(&mut s, C1, read, clock.at(0.3));
    s.outputs[0].buf.push(b"h");
    let eof = Event::Output { stream: StreamName::Stdout, grew: true, eof: true, held: false };
    let actions = s.step(eof, clock.at(0.4));
    assert!(
        actions.iter().any(|a| matches!(a, Action::SendData { client: C1, at: 7, len: 1, .. })),
        "{actions:?}"
    );
}

#[test]
fn a_parked_read_is_answered_when_the_task_exits() {
    let (mut s, clock) = running();
    let read = Request::Read {
        stream: StreamName::Stdout,
        offset: None,
        count: 10,
        consume: true,
        wait: true,
        at_least: 0,
        file: false,
    };
    request(&mut s, C1, read, clock.at(0.0));
    let actions = s.step(Event::Reaped { exit: Exit::Code(0) }, clock.at(0.1));
    let answered = actions.iter().any(|a| {
        matches!(
            a,
            Action::SendData {
                client: C1,
                len: 0,
                response: Response::Data { exited: true, .. },
                ..
            }
        )
    });
    assert!(answered, "{actions:?}");
}

#[test]
fn no_reply_goes_to_a_client_that_gave_up() {
    // A read that timed out on the client's side (it closed the connection), then output.
    let (mut s, clock) = running();
    let read = Request::Read {
        stream: StreamName::Stdout,
        offset: Some(0),
        count: 10,
        consume: false,
        wait: true,
        at_least: 0,
        file: false,
    };
    request(&mut s, C1, read, clock.at(0.0));
    s.step(Event::ClientGone { client: C1 }, clock.at(5.0));
    s.outputs[0].buf.push(b"late");
    assert!(
        s.step(
            Event::Output { stream: StreamName::Stdout, grew: true, eof: false, held: false },
            clock.at(6.0)
        )
        .is_empty()
    );
    // A stdin write whose writer left before the queue drained.
    assert_eq!(
        s.step(Event::Write { client: C2, data: vec![1; 8] }, clock.at(7.0)),
        [Action::FlushStdin]
    );
    s.step(Event::ClientGone { client: C2 }, clock.at(8.0));
    assert!(s.step(Event::StdinFlushed { broken: false }, clock.at(9.0)).is_empty());
}

#[test]
fn stdin_writes_are_answered_once_queued_and_refused_once_closed() {
    let (mut s, clock) = running();
    assert_eq!(
        s.step(Event::Write { client: C1, data: b"abc".to_vec() }, clock.at(0.0)),
        [Action::FlushStdin]
    );
    assert!(s.is_busy(C1));
    s.stdin.queue.clear();
    assert_eq!(s.step(Event::StdinFlushed { broken: false }, clock.at(0.0)), [ok(C1)]);
    // The task closes its stdin under a write.
    s.step(Event::Write { client: C1, data: b"x".to_vec() }, clock.at(0.1));
    let broken = s.step(Event::StdinFlushed { broken: true }, clock.at(0.1));
    assert!(refused(&broken, RefusalKind::StdinClosed));
    assert_eq!(broken.last(), Some(&Action::CloseStdin));
    let again = s.step(Event::Write { client: C1, data: b"y".to_vec() }, clock.at(0.2));
    assert!(refused(&again, RefusalKind::StdinClosed));
    assert!(refused(
        &request(&mut s, C1, Request::CloseStdin, clock.at(0.2)),
        RefusalKind::StdinClosed
    ));
}

#[test]
fn close_stdin_closes_after_the_queue() {
    let (mut s, clock) = running();
    assert_eq!(
        request(&mut s, C1, Request::CloseStdin, clock.at(0.0)),
        [Action::FlushStdin, ok(C1)]
    );
    assert_eq!(s.step(Event::StdinFlushed { broken: false }, clock.at(0.0)), [Action::CloseStdin]);
    assert!(!s.info().stdin_open);
}

#[test]
fn datagrams_queue_or_update_the_metadata() {
    let (mut s, clock) = running();
    let actions = s.step(
        Event::Datagrams(vec![json!({"apply_meta": {"progress": 50}}), json!({"step": 3})]),
        clock.at(0.0),
    );
    assert_eq!(actions, [Action::Save]);
    assert_eq!(s.meta.get("progress"), Some(&json!(50)));
    let peek = request(&mut s, C1, Request::ReadData { consume: false }, clock.at(0.0));
    assert_eq!(
        peek,
        [Action::Send(C1, Response::Datagrams { messages: vec![json!({"step": 3})] })]
    );
    request(&mut s, C1, Request::ReadData { consume: true }, clock.at(0.0));
    assert_eq!(s.info().datagrams, 0);
}

#[test]
fn subscribers_get_coalesced_output_before_end_of_stream() {
    let (mut s, clock) = running();
    assert_eq!(request(&mut s, C1, Request::Subscribe, clock.at(0.0)), [ok(C1)]);
    s.outputs[0].buf.push(b"ab");
    assert!(
        s.step(
            Event::Output { stream: StreamName::Stdout, grew: true, eof: false, held: false },
            clock.at(0.0)
        )
        .is_empty()
    );
    s.outputs[0].buf.push(b"cd");
    s.step(
        Event::Output { stream: StreamName::Stdout, grew: true, eof: false, held: false },
        clock.at(0.0),
    );
    assert!(s.owes_events(C1));
    let output = Action::Send(
        C1,
        Response::Event(Announce::Output { stream: StreamName::Stdout, limit: 4 }),
    );
    assert_eq!(s.step(Event::ClientReady { client: C1 }, clock.at(0.0)), [output]);
    s.outputs[0].buf.push(b"e");
    let end = s.step(
        Event::Output { stream: StreamName::Stdout, grew: true, eof: true, held: false },
        clock.at(0.0),
    );
    let eos = Announce::EndOfStream { stream: StreamName::Stdout, limit: 5 };
    let owed = Action::Send(
        C1,
        Response::Event(Announce::Output { stream: StreamName::Stdout, limit: 5 }),
    );
    assert_eq!(end, [owed, Action::Send(C1, Response::Event(eos))]);
}

#[test]
fn output_held_in_the_pipe_after_the_exit_is_still_to_come() {
    let (mut s, clock) = running();
    let stdout = StreamName::Stdout;
    let read = Request::Read {
        stream: stdout,
        offset: None,
        count: 10,
        consume: true,
        wait: true,
        at_least: 0,
        file: false,
    };
    let data = |actions: &[Action]| match actions {
        [Action::SendData { client: C1, len, response: Response::Data { exited, .. }, .. }] => {
            Some((*len, *exited))
        }
        _ => None,
    };
    // The buffer is full of unconsumed bytes: the shell stops reading, the task exits.
    s.outputs[0].buf.push(b"full");
    s.step(Event::Output { stream: stdout, grew: true, eof: false, held: true }, clock.at(0.0));
    s.step(Event::Reaped { exit: Exit::Code(0) }, clock.at(0.1));
    // What is retained is not the last word, and a waiting read at its end parks.
    let actions = request(&mut s, C1, read.clone(), clock.at(0.2));
    assert_eq!(data(&actions), Some((4, false)), "{actions:?}");
    assert!(request(&mut s, C1, read.clone(), clock.at(0.3)).is_empty());
    s.outputs[0].buf.push(b"more");
    let actions =
        s.step(Event::Output { stream: stdout, grew: true, eof: false, held: true }, clock.at(0.4));
    assert_eq!(data(&actions), Some((4, false)), "{actions:?}");
    // The pipe gave all it had without ending (a grandchild holds it open): the exit is the
    // end now.
    assert!(request(&mut s, C1, read, clock.at(0.5)).is_empty());
    let actions = s.step(
        Event::Output { stream: stdout, grew: false, eof: false, held: false },
        clock.at(0.6),
    );
    assert_eq!(data(&actions), Some((0, true)), "{actions:?}");
}

#[test]
fn a_file_read_says_where_the_bytes_are_and_pins_them_until_released() {
    let (mut s, clock) = running();
    let stdout = StreamName::Stdout;
    assert_eq!(
        request(&mut s, C1, Request::OutputFile { stream: stdout }, clock.at(0.0)),
        [Action::SendOutputFile { client: C1, stream: stdout }]
    );
    s.outputs[0].buf.push(b"hello");
    let read = Request::Read {
        stream: stdout,
        offset: Some(1),
        count: 3,
        consume: true,
        wait: false,
        at_least: 0,
        file: true,
    };
    let actions = request(&mut s, C1, read, clock.at(0.1));
    let cap = s.outputs[0].buf.cap() as u64;
    assert!(
        matches!(
            &actions[..],
            [Action::Send(C1, Response::Data { offset: 1, len: 3, ring, .. })] if *ring == cap
        ),
        "{actions:?}"
    );
    // Pinned at the answer's first byte: the ring is not filled over it.
    assert_eq!(s.outputs[0].buf.writable(), cap as usize - 4);
    assert!(request(&mut s, C1, Request::Release { stream: stdout }, clock.at(0.2)).is_empty());
    assert_eq!(s.outputs[0].buf.writable(), usize::MAX);
    // A reader that goes away releases its pin too.
    let read = Request::Read {
        stream: stdout,
        offset: Some(0),
        count: 3,
        consume: false,
        wait: false,
        at_least: 0,
        file: true,
    };
    request(&mut s, C2, read, clock.at(0.3));
    assert!(s.outputs[0].buf.writable() < usize::MAX);
    s.step(Event::ClientGone { client: C2 }, clock.at(0.4));
    assert_eq!(s.outputs[0].buf.writable(), usize::MAX);
}
