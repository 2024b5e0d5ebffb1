//! Following a job's output live (`procyard-daemon logs ID -f`, [`Client::follow_logs`]):
//! the daemon keeps each running attempt's bounded capture in memory and answers a held
//! control connection ([`Request::Follow`]) with the bytes written since the offsets the
//! client has seen, as soon as there are some ([`LiveOutput`]), or when the attempt ends.
//! Attempts that ended before (or between) the requests are printed from the job's record,
//! from where the live part stopped. Nothing polls while a daemon runs: each request waits on
//! the socket for the daemon's answer.

use std::time::Duration;

use crate::client::{Client, POLL_WITHOUT_DAEMON};
pub use crate::control::LiveOutput;
use crate::control::{self, Request, Response};
use crate::queue::{Captured, JobRecord, check_job_id};
use crate::{Error, Result};

/// The longest one follow request holds a connection (it is then made again).
const LONGEST_REQUEST: Duration = Duration::from_secs(3600);

/// What one [`Client::follow_output`] request brought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Followed {
    /// New output (or the end of the run followed).
    Output(Box<LiveOutput>),
    /// Nothing runs the job here now, or the run followed is over: read the record.
    Ended,
    /// The timeout passed first.
    TimedOut,
}

/// The stream a chunk of output belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The job's stdout.
    Stdout,
    /// The job's stderr.
    Stderr,
}

/// What the client has shown of a run followed live.
#[derive(Clone, Copy, Debug)]
struct Live {
    run: u64,
    delivery: u32,
    worker_pid: Option<i32>,
    stdout_at: u64,
    stderr_at: u64,
    /// The daemon said the run is over before the record showed it ended.
    over: bool,
}

impl Client {
    /// One follow request: the output of job `id`'s running attempt after `from` (a run and
    /// the stdout and stderr offsets seen), or from the start of the attempt running now,
    /// waiting up to `timeout` (an hour at most per request) for some.
    pub fn follow_output(
        &mut self,
        id: &str,
        from: Option<(u64, u64, u64)>,
        timeout: Option<Duration>,
    ) -> Result<Followed> {
        check_job_id(id)?;
        let hold = timeout.unwrap_or(LONGEST_REQUEST).min(LONGEST_REQUEST);
        let (run, stdout_at, stderr_at) = match from {
            Some((run, o, e)) => (Some(run), o, e),
            None => (None, 0, 0),
        };
        let timeout_ms = hold.as_millis().min(u64::MAX as u128) as u64;
        let request = Request::Follow { id: id.to_owned(), run, stdout_at, stderr_at, timeout_ms };
        let socket = self.config().daemon.control_socket.clone();
        match control::ask(&socket, &request, hold + Duration::from_millis(500)) {
            Ok(Some(Response::Output(out))) => Ok(Followed::Output(out)),
            Ok(Some(Response::Error { message })) => Err(Error::Refused { message }),
            Ok(Some(Response::Ended)) => Ok(Followed::Ended),
            // No daemon (or it let go): nothing runs the job now; look again shortly.
            Ok(_) | Err(Error::NotRunning { .. }) => {
                std::thread::sleep(POLL_WITHOUT_DAEMON.min(hold));
                Ok(Followed::Ended)
            }
            Err(e) if control::is_timeout(&e) => Ok(Followed::TimedOut),
            Err(e) => Err(e),
        }
    }

    /// Writes job `id`'s output to `sink` as it is written, every attempt in turn, until the
    /// job ends; returns its final record. Attempts that ended before are written from the
    /// record.
    pub fn follow_logs(
        &mut self,
        id: &str,
        mut sink: impl FnMut(Stream, &[u8]) -> Result<()>,
    ) -> Result<JobRecord> {
        check_job_id(id)?;
        let mut seen = Seen::default();
        loop {
            let record = self.job(id)?;
            seen.write_ended(&record, None, &mut sink)?;
            if record.state.is_final() {
                return Ok(record);
            }
            loop {
                let from =
                    seen.partial.filter(|l| !l.over).map(|l| (l.run, l.stdout_at, l.stderr_at));
                match self.follow_output(id, from, None)? {
                    Followed::TimedOut => continue,
                    Followed::Ended => {
                        if let Some(l) = seen.partial.as_mut() {
                            l.over = true;
                        }
                        break;
                    }
                    Followed::Output(out) => {
                        if from.is_none() {
                            // A run shown from its start: attempts that ended while the
                            // request was on its way (the one before it, say) come first.
                            let record = self.job(id)?;
                            let run = Some((out.delivery, out.worker_pid));
                            seen.write_ended(&record, run, &mut sink)?;
                        }
                        sink(Stream::Stdout, &out.stdout)?;
                        sink(Stream::Stderr, &out.stderr)?;
                        if out.ended {
                            seen.done_live.push((out.delivery, out.worker_pid));
                            seen.partial = None;
                            break;
                        }
                        seen.partial = Some(Live {
                            run: out.run,
                            delivery: out.delivery,
                            worker_pid: out.worker_pid,
                            stdout_at: out.stdout_at,
                            stderr_at: out.stderr_at,
                            over: false,
                        });
                    }
                }
            }
        }
    }
}

/// What [`Client::follow_logs`] has written so far.
#[derive(Default)]
struct Seen {
    /// The attempts written (by number).
    shown: std::collections::BTreeSet<u32>,
    /// Runs written whole live, until the record shows them ended.
    done_live: Vec<(u32, Option<i32>)>,
    /// The run written in part live.
    partial: Option<Live>,
}

impl Seen {
    /// Writes the ended attempts of `record` not written yet, in order, but `run` (the run
    /// being followed live); an attempt written in part live goes on from where it stopped.
    fn write_ended(
        &mut self,
        record: &JobRecord,
        run: Option<(u32, Option<i32>)>,
        sink: &mut impl FnMut(Stream, &[u8]) -> Result<()>,
    ) -> Result<()> {
        for a in record.attempts.iter().filter(|a| a.end.is_some()) {
            let key = (a.delivery, a.worker_pid);
            if run == Some(key) || !self.shown.insert(a.number) {
                continue;
            }
            if let Some(at) = self.done_live.iter().position(|k| *k == key) {
                self.done_live.remove(at);
                continue;
            }
            let (o, e) = match self.partial.filter(|l| (l.delivery, l.worker_pid) == key) {
                Some(l) => {
                    self.partial = None;
                    (l.stdout_at, l.stderr_at)
                }
                None => (0, 0),
            };
            write_stored(sink, Stream::Stdout, a.stdout.as_ref(), o)?;
            write_stored(sink, Stream::Stderr, a.stderr.as_ref(), e)?;
        }
        Ok(())
    }
}

fn write_stored(
    sink: &mut impl FnMut(Stream, &[u8]) -> Result<()>,
    stream: Stream,
    captured: Option<&Captured>,
    from: u64,
) -> Result<()> {
    match captured.map(|c| stored_since(c, from)) {
        Some(bytes) if !bytes.is_empty() => sink(stream, bytes),
        _ => Ok(()),
    }
}

/// The part of a stored capture written after byte `from` (from the dropped-bytes marker on,
/// when `from` falls among the bytes dropped).
pub fn stored_since(c: &Captured, from: u64) -> &[u8] {
    if from == 0 {
        return &c.bytes;
    }
    if from >= c.total {
        return &[];
    }
    if c.dropped == 0 {
        return c.bytes.get(from as usize..).unwrap_or_default();
    }
    let marker = format!("[… {} bytes dropped …]\n", c.dropped);
    let Some(m) = c.bytes.windows(marker.len()).rposition(|w| w == marker.as_bytes()) else {
        return &c.bytes;
    };
    let tail = &c.bytes[m + marker.len()..];
    let tail_start = c.total - tail.len() as u64;
    let head_len = c.total.saturating_sub(c.dropped + tail.len() as u64);
    if from >= tail_start {
        &tail[(from - tail_start) as usize..]
    } else if from < head_len {
        &c.bytes[from as usize..]
    } else {
        &c.bytes[m..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_output_resumes_where_the_live_part_stopped() {
        let whole = Captured { bytes: b"hello world\n".to_vec(), total: 12, dropped: 0 };
        assert_eq!(stored_since(&whole, 0), b"hello world\n");
        assert_eq!(stored_since(&whole, 6), b"world\n");
        assert_eq!(stored_since(&whole, 12), b"");
        // Head "abcd", 10 dropped, tail "wxyz": 18 bytes written.
        let bytes = b"abcd\n[\xe2\x80\xa6 10 bytes dropped \xe2\x80\xa6]\nwxyz".to_vec();
        let cut = Captured { bytes, total: 18, dropped: 10 };
        assert_eq!(stored_since(&cut, 2), &cut.bytes[2..]);
        assert_eq!(stored_since(&cut, 15), b"xyz");
        let gap = stored_since(&cut, 8);
        assert!(gap.starts_with("[… 10".as_bytes()) && gap.ends_with(b"wxyz"));
    }
}
