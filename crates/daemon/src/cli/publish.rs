//! `publish`'s scheduling options (`--delay`, `--at`, `--priority`, `--unique`,
//! `--unique-for`, `--header`), turned into [`PublishOptions`].

use std::io::Read;
use std::time::{Duration, SystemTime};

use procyard_daemon::Config;
use procyard_daemon::queue::{self, PublishOptions};
use procyard_daemon::schedule;

use super::jobs::parse_duration;
use crate::unable;

/// When and how a published job runs.
#[derive(clap::Args, Debug, Default)]
pub struct When {
    /// Start the job no sooner than this long from now (e.g. 30s, 10m, 2h).
    #[arg(long, value_parser = parse_duration, conflicts_with = "at")]
    delay: Option<Duration>,
    /// Start the job at this time: RFC 3339 (2026-12-05T03:00:00Z) or a local time
    /// (2026-12-05 03:00) in the config's `[daemon] timezone` (default UTC).
    #[arg(long)]
    at: Option<String>,
    /// 0 (lowest) to 9 (highest), default 5: higher first within a task (amqp: needs
    /// `[queue] priorities = true`, classic queues).
    #[arg(long)]
    priority: Option<u8>,
    /// A unique key: while a job of the task with this key waits or runs, print its id
    /// instead of queueing another (sqlite, postgres; refused on amqp).
    #[arg(long)]
    unique: Option<String>,
    /// With --unique: also hold the key this long after publish.
    #[arg(long, requires = "unique", value_parser = parse_duration)]
    unique_for: Option<Duration>,
    /// A header NAME=VALUE stored with the job (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
}

impl When {
    /// The options these flags ask for, checked; `--at` in the past is said on stderr.
    pub fn options(&self, config: &Config) -> Result<PublishOptions, String> {
        let mut o = PublishOptions::new();
        if let Some(d) = self.delay {
            o = o.delay(d);
        }
        if let Some(at) = &self.at {
            let tz = schedule::zone(&config.daemon.timezone)
                .map_err(|m| format!("{}: daemon.timezone: {m}", config.path.display()))?;
            let t = schedule::parse_at(at, &tz).map_err(|e| unable("read --at", &e))?;
            if t <= SystemTime::now() {
                eprintln!("procyard-daemon: --at {at} is in the past: the job runs now");
            }
            o = o.at(t);
        }
        if let Some(p) = self.priority {
            o = o.priority(p);
        }
        if let Some(k) = &self.unique {
            o = o.unique(k.clone());
        }
        if let Some(d) = self.unique_for {
            o = o.unique_for(d);
        }
        for h in &self.headers {
            let (name, value) = h.split_once('=').unwrap_or((h.as_str(), ""));
            if !h.contains('=') {
                return Err(format!("invalid --header {h:?}: expected NAME=VALUE"));
            }
            o = o.header(name, value);
        }
        o.check().map_err(|e| unable("publish", &e))?;
        Ok(o)
    }
}

/// Says which ids name jobs that already existed (a held unique key), on stderr for people;
/// `--json` says it in its own output.
pub fn tell_existing(existing: &[String], json: bool) {
    if !json {
        for id in existing {
            eprintln!("procyard-daemon: duplicate: job {id} already holds this unique key");
        }
    }
}

/// Reads stdin whole, refusing more than the queue would take before reading it all.
pub(crate) fn read_payload() -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(queue::MAX_PAYLOAD as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("unable to read stdin: {e}"))?;
    queue::check_payload(&buf).map_err(|e| unable("read the payload", &e))?;
    Ok(buf)
}
