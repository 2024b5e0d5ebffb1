//! Performing the transition's [`Action`]s, and the byte paths: output pipes into the
//! retained buffers, the stdin queue into the task's stdin.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use procyard_core::event::retry_interrupted;
use procyard_core::{Deadline, report};

use super::state::{Action, Event, stream_index};
use super::{OUT_MAX, PIPE_SIZE, Supervisor};
use crate::RefusalKind;
use crate::protocol::{Response, StreamName};

const STREAMS: [StreamName; 2] = [StreamName::Stdout, StreamName::Stderr];

impl Supervisor {
    pub(super) fn perform(&mut self, action: Action) {
        match action {
            Action::SignalTask { signal, reply } => {
                let sent = match self.child.as_ref().filter(|c| c.exit().is_none()) {
                    Some(child) => child.signal_group(signal).map_err(|e| report(&e)),
                    None => Err("the task is not running".to_owned()),
                };
                if sent.is_ok() {
                    // Escapees get what the task gets (they are stopped with it, paused with it).
                    self.signal_escapees(&self.escapees(), signal);
                }
                if let Some(client) = reply {
                    let response = match sent {
                        Ok(()) => Response::Ok,
                        Err(message) => Response::Error { kind: RefusalKind::Failed, message },
                    };
                    self.send(client, &response);
                }
            }
            Action::SignalGroup(signal) => {
                if let Some(child) = self.child.as_ref().filter(|c| c.exit().is_none()) {
                    let _ = child.signal_group(signal);
                }
            }
            Action::SignalEscapees(signal) => self.signal_escapees(&self.escapees(), signal),
            Action::SignalSome(pids, signal) => self.signal_escapees(&pids, signal),
            Action::Reap => self.reap(),
            Action::CheckEscapees => {
                procyard_core::subreaper::reap_adopted(&self.known_children());
                let escapees = self.escapees();
                self.emit(Event::Escapees(escapees));
            }
            Action::KillEscapees => self.kill_escapees(),
            Action::ReleasePipes => {
                // Whatever is left in the old pipes (held open by a grandchild) is collected.
                for (i, stream) in STREAMS.into_iter().enumerate() {
                    self.drain_output(i);
                    let pipe = &mut self.pipes[i];
                    if let Some(mut rx) = pipe.rx.take() {
                        let _ = self.poll.registry().deregister(&mut rx);
                    }
                    (pipe.throttled, pipe.more, pipe.hung_up) = (false, false, false);
                    if std::mem::take(&mut pipe.held) {
                        self.emit(Event::Output { stream, grew: false, eof: false, held: false });
                    }
                }
                self.child = None;
            }
            Action::Spawn => match self.spawn_child() {
                Ok(pid) => self.emit(Event::Spawned { pid }),
                Err(cause) => {
                    let message = format!("unable to spawn {}: {cause}", self.options.command[0]);
                    self.emit(Event::SpawnFailed { message });
                }
            },
            Action::FlushStdin => {
                let broken = self.flush_stdin();
                self.emit(Event::StdinFlushed { broken });
            }
            Action::CloseStdin => {
                if let Some(mut tx) = self.stdin.take() {
                    let _ = self.poll.registry().deregister(&mut tx);
                }
            }
            Action::Save => {
                if let Err(e) = self.write_record() {
                    tracing::warn!("cannot save the state of {}: {e}", self.state.task.id);
                }
            }
            Action::Send(client, response) => self.send(client, &response),
            Action::SendData { client, response, stream, at, len } => {
                let Some(c) = self.clients.get_mut(&client) else { return };
                c.send(&response);
                // The raw frame (for a reader without the memfd), copied from the ring.
                c.out.extend_from_slice(&(len as u32).to_be_bytes());
                let buf = &self.state.outputs[stream_index(stream)].buf;
                if let Err(e) = buf.read_into(at, len as usize, &mut c.out) {
                    tracing::warn!("cannot read retained output: {e}");
                    c.dead = true;
                }
                c.flush();
                c.last_active = Instant::now();
            }
            Action::SendOutputFile { client, stream } => {
                let buf = &mut self.state.outputs[stream_index(stream)].buf;
                let ring = buf.cap() as u64;
                let file = buf.file_or_create().and_then(read_only);
                let Some(c) = self.clients.get_mut(&client) else { return };
                match file {
                    Ok(file) => c.send_with_fd(&Response::OutputFile { stream, ring }, &file),
                    Err(e) => c.refuse(RefusalKind::Failed, format!("no output file: {e}")),
                }
                c.last_active = Instant::now();
            }
            Action::RemoveFiles => self.remove_files(),
            Action::Finish => {
                // Deliver the last answers (bounded: a few small frames per client).
                let deadline = Deadline::after(Duration::from_secs(1));
                for c in self.clients.values_mut() {
                    c.blocking_flush(deadline);
                }
            }
        }
    }

    fn send(&mut self, client: super::state::ClientId, response: &Response) {
        let subscribed = self.state.is_subscribed(client);
        let Some(c) = self.clients.get_mut(&client) else { return };
        c.send(response);
        c.last_active = Instant::now();
        if subscribed && matches!(response, Response::Event(_)) && c.pending() > OUT_MAX {
            tracing::warn!("dropping a subscriber that does not read its events");
            c.dead = true;
        }
    }

    /// Reaps the leader (its pidfd said it exited): collects what it wrote, then reports the
    /// exit.
    fn reap(&mut self) {
        let Some(child) = self.child.as_mut() else { return };
        let exit = match child.try_wait() {
            Ok(Some(exit)) => exit,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("cannot wait for the task: {e}");
                return;
            }
        };
        let _ = self.poll.registry().deregister(child);
        self.drain_output(0);
        self.drain_output(1);
        self.emit(Event::Reaped { exit });
    }

    /// Reads pipe `i` into its buffer (bounded per call so one chatty task cannot starve the
    /// clients) and reports what changed. Stops at a short read: a pipe answers with fewer
    /// bytes than asked only once it is empty, and whatever is written after that wakes the
    /// loop again (the pipe is watched edge-triggered, and the edge fires for every write or
    /// close after the event was taken), so the `WouldBlock` read that would confirm it is
    /// saved: one read per wake-up, not two.
    pub(super) fn read_output(&mut self, i: usize) {
        self.read_pipe(i, false);
    }

    /// Reads pipe `i` as [`Supervisor::read_output`] does, but on to its end or `WouldBlock`:
    /// for a pipe whose writers are gone or going (the task's leader exited, its hang-up
    /// came), so that the end is seen now.
    pub(super) fn drain_output(&mut self, i: usize) {
        self.read_pipe(i, true);
    }

    fn read_pipe(&mut self, i: usize, drain: bool) {
        let block = self.options.block_when_full;
        let pipe = &mut self.pipes[i];
        let Some(rx) = pipe.rx.as_mut() else { return };
        let buf = &mut self.state.outputs[i].buf;
        pipe.throttled = false;
        pipe.more = false;
        // A hang-up reported once must still end in an end of file, whenever the read is.
        let drain = drain || pipe.hung_up;
        let (mut grew, mut eof) = (false, false);
        let mut budget = 4 * PIPE_SIZE;
        loop {
            let want = if block { buf.room().min(budget) } else { budget }.min(buf.writable());
            if want == 0 {
                pipe.throttled = true;
                break;
            }
            let asked = buf.fill_size(want);
            let from = buf.limit();
            let result = retry_interrupted(|| buf.fill_from(rx.as_fd(), want));
            if let (Ok(n), Some(file)) = (&result, pipe.log.as_mut())
                && let Err(e) = log_output(buf, file, from, *n)
            {
                tracing::warn!("cannot log output: {e}");
                pipe.log = None;
            }
            match result {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    grew = true;
                    budget -= n.min(budget);
                    if budget == 0 {
                        // More may be waiting: come back after serving the clients.
                        pipe.more = true;
                        break;
                    }
                    if n < asked && !drain {
                        // Empty now: the next write (or the close) wakes us.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof && let Some(mut rx) = pipe.rx.take() {
            let _ = self.poll.registry().deregister(&mut rx);
        }
        let held = pipe.rx.is_some() && (pipe.throttled || pipe.more);
        let changed = held != std::mem::replace(&mut pipe.held, held);
        if grew || eof || changed {
            self.emit(Event::Output { stream: STREAMS[i], grew, eof, held });
        }
    }

    /// Writes the queued stdin bytes the pipe takes now; returns whether the task closed its
    /// stdin.
    pub(super) fn flush_stdin(&mut self) -> bool {
        let Some(tx) = self.stdin.as_mut() else { return false };
        let queue = &mut self.state.stdin.queue;
        while !queue.is_empty() {
            let (a, _) = queue.as_slices();
            match retry_interrupted(|| tx.write(a)) {
                Ok(n) => {
                    queue.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return true,
            }
        }
        false
    }
}

/// A read-only descriptor of `file` (a memfd), for a reader.
fn read_only(file: &File) -> io::Result<File> {
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
    std::fs::File::open(path)
}

/// Appends `[from, from + n)` of the ring to the log file (opened `O_APPEND`, which
/// `sendfile` refuses: through a buffer).
fn log_output(
    buf: &crate::buffer::OutputBuffer,
    log: &mut File,
    from: u64,
    n: usize,
) -> io::Result<()> {
    let mut bytes = Vec::new();
    buf.read_into(from, n, &mut bytes)?;
    log.write_all(&bytes)
}
