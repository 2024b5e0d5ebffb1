//! A worker's readiness as events: its pidfd (an exit, after its last replies) and its
//! stdout (reply frames, or a protocol error).

use procyard_core::{Report, Signal, StreamState};

use super::event::{Event, WorkerId};
use super::live::{self, Captures};
use super::process::{KIND_STDERR, KIND_STDOUT};
use super::shell::Shell;
use crate::protocol::WorkerFrame;

impl Shell {
    pub(super) fn on_worker_exit(&mut self, id: WorkerId) {
        // The leader is a zombie until reaped, so its group id cannot be recycled yet: kill
        // whatever the worker left behind in its group before reaping it.
        let Some(p) = self.processes.get_mut(&id) else { return };
        if p.child.has_exited().unwrap_or(false) {
            let _ = p.child.signal_group(Signal::KILL);
        }
        let exit = match p.child.try_wait_usage() {
            Ok(None) => return,
            Ok(Some((exit, usage))) => {
                // A oneshot job's own process: what it cost is the attempt's.
                if p.output.is_some() {
                    self.usage.insert(id, usage.into());
                }
                exit
            }
            Err(e) => {
                tracing::error!(error = %Report(&e), "unable to reap a worker");
                return;
            }
        };
        // Read the last replies a longlived worker wrote before it exited, or the rest of a
        // oneshot job's output.
        self.read_replies(id);
        if let Some(mut p) = self.processes.remove(&id) {
            let registry = self.poll.registry();
            // Followers (`logs -f`) get the attempt's last bytes.
            let (followers, control) = (&mut self.followers, &mut self.control);
            if let Some(mut output) = p.output.take() {
                output.read(KIND_STDOUT, registry);
                output.read(KIND_STDERR, registry);
                let captures = Captures { out: Some(&output.out), err: Some(&output.err) };
                live::answer(followers, control, registry, id, &captures, true);
                self.outputs.insert(id, output.finish(registry));
            }
            if let Some(relay) = p.relay.as_mut() {
                relay.read(registry);
                if let Some(c) = relay.job.take() {
                    let captures = Captures { out: None, err: Some(&c) };
                    live::answer(followers, control, registry, id, &captures, true);
                    self.outputs.insert(id, (None, Some(c.finish())));
                }
            }
            p.deregister_all(registry);
        }
        self.feed(Event::Exited { worker: id, exit });
        // Used by the attempt's record, or not needed (the job went back to the queue).
        self.outputs.remove(&id);
        self.usage.remove(&id);
    }

    /// Reads what woke stream `kind` of worker `id`: a oneshot job's output, or a longlived
    /// worker's replies.
    pub(super) fn read_output(&mut self, id: WorkerId, kind: usize) {
        let registry = self.poll.registry();
        let Some(p) = self.processes.get_mut(&id) else { return };
        match (p.output.as_mut(), p.relay.as_mut()) {
            (Some(output), _) => {
                output.read(kind, registry);
                // Both streams at their end: a job's descriptors close as it exits, just
                // before it becomes a zombie. Take its exit in this turn if it is one (the
                // pidfd's wake-up then finds nothing), rather than a turn later: that turn
                // stood between a job's end and the claim of the next.
                if output.stdout.is_none()
                    && output.stderr.is_none()
                    && p.child.has_exited().unwrap_or(false)
                {
                    return crate::stamp::timed("reap", || self.on_worker_exit(id));
                }
            }
            (None, _) if kind == KIND_STDOUT => return self.read_replies(id),
            (None, Some(relay)) => relay.read(registry),
            (None, None) => {}
        }
        self.answer_followers(id);
    }

    /// Reads a longlived worker's replies and feeds them, one at a time.
    pub(super) fn read_replies(&mut self, id: WorkerId) {
        let Some(p) = self.processes.get_mut(&id) else { return };
        let Some(stdout) = p.stdout.as_mut() else { return };
        let state = p.decoder.read_from(stdout);
        let outer = self.stdin_later.replace(Vec::new());
        self.feed_replies(id);
        // The next replies may come from jobs that wrote on stderr after this batch's read.
        if let Some(r) = self.processes.get_mut(&id).and_then(|p| p.relay.as_mut()) {
            r.fresh = false;
        }
        self.write_stdin_later();
        self.stdin_later = outer;
        match state {
            Ok(StreamState::Open) => {}
            Ok(StreamState::Closed) => {
                if let Some(p) = self.processes.get_mut(&id) {
                    p.close_stdout(self.poll.registry());
                }
            }
            Err(e) => self.feed(Event::ProtocolError { worker: id, reason: e.to_string() }),
        }
    }

    /// Feeds the frames decoded from worker `id`'s stdout, one at a time.
    fn feed_replies(&mut self, id: WorkerId) {
        loop {
            let Some(p) = self.processes.get_mut(&id).filter(|p| p.stdout.is_some()) else {
                return;
            };
            let frame = match p.decoder.next_bytes() {
                Ok(None) => break,
                Ok(Some(bytes)) => WorkerFrame::parse(&bytes),
                Err(e) => Err(e.to_string()),
            };
            match frame {
                Ok(WorkerFrame::Reply(reply)) => self.feed(Event::Reply { worker: id, reply }),
                Ok(WorkerFrame::Hello(hello)) => self.feed(Event::Hello { worker: id, hello }),
                Err(reason) => return self.feed(Event::ProtocolError { worker: id, reason }),
            }
        }
    }
}
