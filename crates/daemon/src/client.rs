//! [`Client`]: what the command-line verbs do, for programs that would rather not shell out —
//! publish (and poke the daemon), look at job records, wait for jobs, cancel them, purge.
//!
//! Records are read from the queue itself (the SQLite file: no daemon needed to read them;
//! on RabbitMQ, the local history of the daemon that uses the same config: only the jobs it
//! ran);
//! waiting and cancelling a running job talk to the daemon over its control socket. A wait is
//! an event: the daemon answers the held connection when the jobs end. With no daemon to ask,
//! a wait looks at the queue every [`POLL_WITHOUT_DAEMON`] instead (nothing would end the
//! jobs anyway until one starts).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::control::{self, Request, Response};
use crate::queue::{
    self, JobFilter, JobRecord, JobState, OpenMode, PartialPublish, Publication, PublishOptions,
    Purge, QueueBackend, ScheduleStatus, check_job_id,
};
use crate::{Config, Error, Result};

/// How often a wait looks at the queue when no daemon answers on the control socket.
pub const POLL_WITHOUT_DAEMON: Duration = Duration::from_millis(250);
/// The longest a single wait request holds a connection when the caller gave no timeout (it
/// is then made again).
const LONGEST_REQUEST: Duration = Duration::from_secs(3600);

/// The config files looked for when none is given, in order: `$PROCYARD_CONFIG`,
/// `./procyard.toml`, `$XDG_CONFIG_HOME/procyard/daemon.toml` (or
/// `~/.config/procyard/daemon.toml`), `/etc/procyard/daemon.toml`.
pub fn config_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("PROCYARD_CONFIG").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    out.push(PathBuf::from("procyard.toml"));
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(dir) = xdg {
        out.push(dir.join("procyard").join("daemon.toml"));
    }
    out.push(PathBuf::from("/etc/procyard/daemon.toml"));
    out
}

/// The config to use: `explicit` when given, else the first of [`config_candidates`] that
/// exists ([`Error::NoConfig`] naming every path tried when none does). A set
/// `$PROCYARD_CONFIG` that names no file is an error of its own, not skipped.
pub fn find_config(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let tried = config_candidates();
    if let Some(env) = std::env::var_os("PROCYARD_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(env));
    }
    tried.iter().find(|p| p.is_file()).cloned().ok_or(Error::NoConfig { tried })
}

/// How jobs ended, as [`Client::wait`] returns them.
#[derive(Clone, Debug)]
pub struct Waited {
    /// The records, in the order asked.
    pub jobs: Vec<JobRecord>,
    /// The timeout passed before every job ended.
    pub timed_out: bool,
}

impl Waited {
    /// The exit status `wait` mirrors: 124 on a timeout; else 1 if a job failed or was
    /// dead-lettered, 2 if one was cancelled, 0 when every one is done.
    pub fn exit_code(&self) -> u8 {
        if self.timed_out {
            return 124;
        }
        let codes = self.jobs.iter().filter_map(|j| j.state.exit_code());
        codes.fold(0, |worst, c| match (worst, c) {
            (1, _) | (_, 1) => 1,
            (2, _) | (_, 2) => 2,
            _ => 0,
        })
    }
}

/// What `publish --json` prints and `POST /api/jobs` answers: the ids of the jobs queued.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Published {
    /// The routing key published to.
    pub routing_key: String,
    /// One id per task bound to it (an existing job's id where a unique key matched).
    pub jobs: Vec<String>,
    /// Whether a unique key matched a job that already existed (`publish --unique`).
    #[serde(default)]
    pub duplicate: bool,
    /// The ids (of `jobs`) of jobs that existed before this publish.
    #[serde(default)]
    pub existing: Vec<String>,
}

/// What [`Client::cancel`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// The job was waiting: it is cancelled and never runs.
    Waiting,
    /// The job is running: its process gets the stop ladder, and it ends `cancelled`.
    Stopping,
    /// On RabbitMQ: every running daemon was asked to cancel it — the one running it stops it
    /// (it ends `cancelled`), and one that receives it later drops it (for 24 hours).
    Requested,
}

/// A client of one daemon's queue and control socket.
pub struct Client {
    config: Config,
    queue: Option<Box<dyn QueueBackend>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("config", &self.config.path).finish()
    }
}

impl Client {
    /// A client for `config` (the queue is opened at the first call that needs it).
    pub fn new(config: Config) -> Client {
        Client { config, queue: None }
    }

    /// A client for the config at `path`, or found as [`find_config`] says.
    pub fn open(path: Option<&Path>) -> Result<Client> {
        Ok(Client::new(Config::load(&find_config(path)?)?))
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn queue(&mut self) -> Result<&mut dyn QueueBackend> {
        if self.queue.is_none() {
            let mut q = queue::open(&self.config.queue, OpenMode::Client)?;
            q.bind(&self.config.bindings())?;
            self.queue = Some(q);
        }
        Ok(self.queue.as_deref_mut().expect("opened"))
    }

    /// The queue, opened at the first call (for the HTTP face's reads).
    pub(crate) fn queue_mut(&mut self) -> Result<&mut dyn QueueBackend> {
        self.queue()
    }

    fn poke(&self) {
        if let Err(e) = control::poke(&self.config.daemon.control_socket) {
            tracing::debug!(error = %e.chain(), "could not poke the daemon");
        }
    }

    /// Publishes one job to every task bound to `routing_key` and tells the daemon; returns
    /// the new ids.
    pub fn publish(&mut self, routing_key: &str, payload: &[u8]) -> Result<Vec<String>> {
        let ids = self.queue()?.publish(routing_key, payload)?;
        self.poke();
        Ok(ids)
    }

    /// Publishes one job per payload (see
    /// [`QueueBackend::publish_batch`]) and tells the daemon.
    pub fn publish_batch(
        &mut self,
        routing_key: &str,
        payloads: &[Vec<u8>],
    ) -> Result<Vec<String>, Box<PartialPublish>> {
        let q =
            self.queue().map_err(|error| Box::new(PartialPublish { committed: vec![], error }))?;
        let result = q.publish_batch(routing_key, payloads);
        let any = match &result {
            Ok(ids) => !ids.is_empty(),
            Err(p) => !p.committed.is_empty(),
        };
        if any {
            self.poke();
        }
        result
    }

    /// Makes the jobs published after this call report their end to this client where the
    /// backend can (AMQP: a reply queue), for a [`Client::wait`] that follows.
    pub fn expect_replies(&mut self) -> Result<()> {
        self.queue()?.expect_replies()
    }

    /// Publishes one job with publish-time controls (a delay or time, a priority, a unique
    /// key, headers: [`PublishOptions`]) and tells the daemon. A held unique key answers the
    /// existing job's id, listed in [`Publication::existing`].
    ///
    /// ```no_run
    /// # use procyard_daemon::{Client, queue::PublishOptions};
    /// # use std::time::Duration;
    /// # let mut client = Client::open(None)?;
    /// let opts = PublishOptions::new().delay(Duration::from_secs(30)).priority(8).unique("r-42");
    /// let published = client.publish_with("reports.build", b"42", &opts)?;
    /// println!("{:?} (duplicate: {})", published.ids, published.is_duplicate());
    /// # Ok::<(), procyard_daemon::Error>(())
    /// ```
    pub fn publish_with(
        &mut self,
        routing_key: &str,
        payload: &[u8],
        options: &PublishOptions,
    ) -> Result<Publication> {
        self.publish_batch_with(routing_key, &[payload.to_vec()], options).map_err(|p| p.error)
    }

    /// Publishes one job per payload with publish-time controls (see
    /// [`QueueBackend::publish_with`]) and tells the daemon.
    pub fn publish_batch_with(
        &mut self,
        routing_key: &str,
        payloads: &[Vec<u8>],
        options: &PublishOptions,
    ) -> Result<Publication, Box<PartialPublish>> {
        let q =
            self.queue().map_err(|error| Box::new(PartialPublish { committed: vec![], error }))?;
        let result = q.publish_with(routing_key, payloads, options);
        let any = match &result {
            Ok(p) => p.ids.len() > p.existing.len(),
            Err(p) => !p.committed.is_empty(),
        };
        if any {
            self.poke();
        }
        result
    }

    /// Publishes and waits for the jobs to end (or `timeout` to pass).
    pub fn publish_and_wait(
        &mut self,
        routing_key: &str,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Waited> {
        self.expect_replies()?;
        let ids = self.publish(routing_key, payload)?;
        self.wait(&ids, timeout)
    }

    /// The record of job `id`, with its attempts and their output.
    pub fn job(&mut self, id: &str) -> Result<JobRecord> {
        check_job_id(id)?;
        self.queue()?.job(id)
    }

    /// Job records (without attempts), newest first.
    pub fn jobs(&mut self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        self.queue()?.jobs(filter)
    }

    /// Waits until every job of `ids` has ended, or `timeout` has passed.
    pub fn wait(&mut self, ids: &[String], timeout: Option<Duration>) -> Result<Waited> {
        for id in ids {
            check_job_id(id)?;
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        // On RabbitMQ the client hears the ends itself (replies, the events exchange).
        if let Some(jobs) = self.queue()?.wait_heard(ids, false, deadline)? {
            let timed_out = jobs.iter().any(|j| !j.state.is_final());
            return Ok(Waited { jobs, timed_out });
        }
        loop {
            let jobs = ids.iter().map(|id| self.job(id)).collect::<Result<Vec<_>>>()?;
            let pending: Vec<String> =
                jobs.iter().filter(|j| !j.state.is_final()).map(|j| j.id.clone()).collect();
            if pending.is_empty() {
                return Ok(Waited { jobs, timed_out: false });
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(Waited { jobs, timed_out: true });
            }
            self.wait_event(pending, false, left)?;
        }
    }

    /// Waits until an attempt of job `id` ends (or the job ends), or `timeout` passes:
    /// what `logs -f` follows.
    pub fn wait_attempt(&mut self, id: &str, timeout: Option<Duration>) -> Result<()> {
        check_job_id(id)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        if self.queue()?.wait_heard(&[id.to_owned()], true, deadline)?.is_some() {
            return Ok(());
        }
        self.wait_event(vec![id.to_owned()], true, timeout)
    }

    /// One wait request to the daemon, held until it answers or `left` passes; without a
    /// daemon, a short pause instead.
    fn wait_event(
        &mut self,
        ids: Vec<String>,
        any_attempt: bool,
        left: Option<Duration>,
    ) -> Result<()> {
        let hold = left.unwrap_or(LONGEST_REQUEST).min(LONGEST_REQUEST);
        // A queue shared by many daemons (PostgreSQL) tells of ends wherever the job ran.
        if self.queue()?.wait_ends(hold)?.is_some() {
            return Ok(());
        }
        let timeout_ms = hold.as_millis().min(u64::MAX as u128) as u64;
        let request = Request::Wait { ids, any_attempt, timeout_ms };
        let socket = self.config.daemon.control_socket.clone();
        // The read waits a little longer than the daemon holds the connection.
        match control::ask(&socket, &request, hold + Duration::from_millis(500)) {
            Ok(Some(Response::Ended)) => Ok(()),
            Ok(Some(Response::Error { message })) => Err(Error::Refused { message }),
            // The daemon let go (it stops, or too many waited): look again shortly.
            Ok(_) => {
                pause(POLL_WITHOUT_DAEMON.min(hold));
                Ok(())
            }
            Err(Error::NotRunning { .. }) => {
                pause(POLL_WITHOUT_DAEMON.min(hold));
                Ok(())
            }
            Err(e) if control::is_timeout(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Cancels job `id`: a waiting job at once (it never runs), a running one by the daemon
    /// (the stop ladder; never retried). A job that has ended is
    /// [`Error::JobFinished`]; an unknown one [`Error::UnknownJob`].
    pub fn cancel(&mut self, id: &str) -> Result<Cancelled> {
        check_job_id(id)?;
        // On RabbitMQ: a cancel request every daemon hears.
        if self.queue()?.cancel_everywhere(id)? {
            return Ok(Cancelled::Requested);
        }
        for _ in 0..3 {
            let job = self.job(id)?;
            match job.state {
                s if s.is_final() => {
                    return Err(Error::JobFinished { id: id.to_owned(), state: s });
                }
                JobState::Ready | JobState::Delayed => {
                    if self.queue()?.cancel_waiting(id)? {
                        return Ok(Cancelled::Waiting);
                    }
                }
                _ => {
                    let socket = self.config.daemon.control_socket.clone();
                    let request = Request::Cancel { ids: vec![id.to_owned()] };
                    match control::ask(&socket, &request, Duration::from_secs(10))? {
                        Some(Response::Cancelling { found }) if found.iter().any(|f| f == id) => {
                            return Ok(Cancelled::Stopping);
                        }
                        Some(Response::Error { message }) => {
                            return Err(Error::Refused { message });
                        }
                        _ => {}
                    }
                }
            }
            // It moved between the look and the cancel (claimed, ended): look again.
        }
        Err(Error::Refused { message: format!("job {id} kept changing state; try again") })
    }

    /// The config's `[[schedule]]`s with their stored state (next and last run, last job).
    pub fn schedules(&mut self) -> Result<Vec<ScheduleStatus>> {
        let schedules = self.config.schedules.clone();
        self.queue()?.schedules(&schedules)
    }

    /// Publishes a job of schedule `name` now; returns its ids.
    pub fn trigger_schedule(&mut self, name: &str) -> Result<Vec<String>> {
        let s = self.schedule(name)?;
        let ids = self.queue()?.trigger_schedule(&s)?;
        self.poke();
        Ok(ids)
    }

    /// Pauses (`true`) or resumes schedule `name`, persisted; the daemon is told.
    pub fn pause_schedule(&mut self, name: &str, paused: bool) -> Result<()> {
        let s = self.schedule(name)?;
        self.queue()?.pause_schedule(&s, paused)?;
        self.poke();
        Ok(())
    }

    fn schedule(&self, name: &str) -> Result<crate::schedule::ScheduleConfig> {
        self.config.schedules.iter().find(|s| s.name == name).cloned().ok_or_else(|| {
            Error::InvalidArgument {
                what: "schedule",
                value: name.to_owned(),
                expected: "the name of a [[schedule]] in the config (see `schedules`)",
            }
        })
    }

    /// Deletes ended jobs' records as `what` says; returns how many.
    pub fn purge(&mut self, what: &Purge) -> Result<u64> {
        self.queue()?.purge(what)
    }
}

/// Blocks the calling thread for `d` (the fallback when no daemon can say when jobs end).
fn pause(d: Duration) {
    std::thread::sleep(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waited(states: &[JobState], timed_out: bool) -> Waited {
        let job = |state| JobRecord {
            id: String::new(),
            task: String::new(),
            routing_key: String::new(),
            payload_len: 0,
            state,
            published_ms: 0,
            finished_ms: None,
            deliveries: 0,
            reason: None,
            attempts: Vec::new(),
        };
        Waited { jobs: states.iter().copied().map(job).collect(), timed_out }
    }

    #[test]
    fn exit_codes_mirror_the_jobs() {
        use JobState::*;
        assert_eq!(waited(&[Done, Done], false).exit_code(), 0);
        assert_eq!(waited(&[Done, Dead], false).exit_code(), 1);
        assert_eq!(waited(&[Cancelled, Done], false).exit_code(), 2);
        assert_eq!(waited(&[Cancelled, Dead], false).exit_code(), 1);
        assert_eq!(waited(&[Done, Running], true).exit_code(), 124);
    }

    #[test]
    fn config_candidates_in_order() {
        let c = config_candidates();
        assert!(c.iter().any(|p| p == Path::new("procyard.toml")));
        assert_eq!(c.last().map(PathBuf::as_path), Some(Path::new("/etc/procyard/daemon.toml")));
    }
}
