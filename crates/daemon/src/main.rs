//! `procyard-daemon`: run the supervisor, publish jobs, show status, check a config, list and
//! requeue dead letters, and find, follow, wait on, cancel and purge jobs.

#![forbid(unsafe_code)]

#[path = "cli/jobs.rs"]
mod jobs;
#[path = "cli/publish.rs"]
mod publish;
#[path = "cli/render.rs"]
mod render;
#[path = "cli/schedules.rs"]
mod schedules;
#[path = "cli/tasks.rs"]
mod tasks;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use procyard_core::{SignalFd, report};
use procyard_daemon::config::LogFormat;
use procyard_daemon::queue::{self, JobFilter, JobState, OpenMode, PartialPublish, Purge, Requeue};
use procyard_daemon::{Client, Config, DAEMON_SIGNALS, RunOptions, control};

/// The exit status table, shown by `--help` of the verbs that wait (and of the program).
const EXIT_CODES: &str = "Exit status:\n  0    every job done (or the command succeeded)\n  1    a job failed or was dead-lettered, or an error\n  2    a job was cancelled\n  64   a usage error (unknown flag, bad value; EX_USAGE)\n  124  the timeout passed";

/// The exit status of a command-line usage error (`EX_USAGE` of `sysexits.h`): apart from 2,
/// which `wait` uses for a cancelled job.
const EX_USAGE: u8 = 64;

/// A supervisor daemon: groups of worker processes fed by a job queue.
#[derive(Parser, Debug)]
#[command(
    name = "procyard-daemon",
    version,
    about,
    after_help = "Examples:\n  procyard-daemon check-config --config procyard.toml\n  procyard-daemon run --config procyard.toml\n  procyard-daemon publish --config procyard.toml hello.world 'some payload'\n  procyard-daemon status --config procyard.toml --json\n  procyard-daemon jobs --state dead\n  procyard-daemon wait --timeout 1m 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\n\nWithout --config: $PROCYARD_CONFIG, ./procyard.toml, $XDG_CONFIG_HOME/procyard/daemon.toml, /etc/procyard/daemon.toml.\n\nExit status:\n  0    every job done (or the command succeeded)\n  1    a job failed or was dead-lettered, or an error\n  2    a job was cancelled (wait, publish --wait)\n  64   a usage error (unknown flag, bad value; EX_USAGE)\n  124  the timeout passed (wait, publish --wait)"
)]
struct Cli {
    /// The TOML config. Default: $PROCYARD_CONFIG, ./procyard.toml,
    /// $XDG_CONFIG_HOME/procyard/daemon.toml, /etc/procyard/daemon.toml (the first found).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon in the foreground (logs on stderr; RUST_LOG sets the level).
    #[command(
        after_help = "Example:\n  procyard-daemon run --config crates/daemon/examples/procyard.toml"
    )]
    Run {
        /// Write "ready\n" to this inherited descriptor once serving.
        #[arg(long)]
        ready_fd: Option<i32>,
    },
    /// Publish a job: a copy goes to every task bound to ROUTING_KEY.
    #[command(
        after_help = "Examples:\n  procyard-daemon publish --config procyard.toml hello.world 'some payload'\n  echo data | procyard-daemon publish --config procyard.toml hello.world -\n  seq 100 | procyard-daemon publish --config procyard.toml --lines hello.world\n  procyard-daemon publish --wait --timeout 30s hello.world 'some payload'\n  procyard-daemon publish --delay 10m --priority 8 reports.build 42\n  procyard-daemon publish --at 2026-12-05T03:00:00Z reports.nightly\n  procyard-daemon publish --unique report-42 --unique-for 1h --json reports.build 42\n\nA job with --delay or --at waits as `delayed` and starts when due; a time in the past runs now (and says so). --priority 0..9 (default 5): higher first within a task, publish order within one priority. --unique KEY: while a job of the task with that key is ready, delayed or running (or, with --unique-for, published within that window) the existing job's id is printed instead (--json: \"duplicate\": true).\n\nWith --wait, exit status:\n  0    every job done\n  1    a job failed or was dead-lettered, or an error\n  2    a job was cancelled\n  64   a usage error (EX_USAGE)\n  124  the timeout passed"
    )]
    Publish {
        /// Wait for the jobs to end and exit with their status (see below).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (exit 124).
        #[arg(long, requires = "wait", value_parser = jobs::parse_duration)]
        timeout: Option<Duration>,
        /// Publish one job per line of stdin, as one batch: with the SQLite queue all of them
        /// are queued or, on an error, none; ids of jobs queued are printed before any error.
        #[arg(long)]
        lines: bool,
        /// Print the job ids as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        when: publish::When,
        /// The routing key (dot-separated words).
        routing_key: String,
        /// The payload, or `-` for stdin (default: empty).
        payload: Option<String>,
    },
    /// List the [[schedule]]s: name, cadence, next and last run, last job (works with the
    /// daemon down).
    #[command(after_help = schedules::LIST_HELP)]
    Schedules {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fire a schedule now, or pause or resume it (persisted in the queue).
    #[command(after_help = schedules::ACT_HELP)]
    Schedule {
        /// What to do.
        action: schedules::Action,
        /// The schedule's name.
        name: String,
    },
    /// Show the running daemon's groups, workers, queues and dead letters.
    #[command(after_help = "Example:\n  procyard-daemon status --config procyard.toml --json")]
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a config; errors name the file, the line and the field.
    #[command(after_help = "Example:\n  procyard-daemon check-config --config procyard.toml")]
    CheckConfig,
    /// List dead-lettered jobs (works with the daemon down).
    #[command(
        after_help = "Example:\n  procyard-daemon dead --config procyard.toml --task thumbnail --json"
    )]
    Dead {
        /// Only this task.
        #[arg(long)]
        task: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put dead-lettered jobs back in the queue with a fresh attempt count.
    #[command(
        after_help = "Examples:\n  procyard-daemon requeue --config procyard.toml 0190a1b2-...\n  procyard-daemon requeue --config procyard.toml --all --task thumbnail"
    )]
    Requeue {
        /// Only this task.
        #[arg(long)]
        task: Option<String>,
        /// Every dead letter (of --task, or of all tasks).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Job ids.
        ids: Vec<String>,
    },
    /// Show a job's record: state, every attempt (pid, times, how it ended), output sizes.
    #[command(
        after_help = "Example:\n  procyard-daemon job 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b --json"
    )]
    Job {
        /// The job id (as publish printed it).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first.
    #[command(
        after_help = "Example:\n  procyard-daemon jobs --task thumbnail --state dead --state failed --since 1h --limit 20"
    )]
    Jobs {
        /// Only this task.
        #[arg(long)]
        task: Option<String>,
        /// Only jobs in this state (ready, delayed, running, done, failed, dead, cancelled);
        /// repeat for several.
        #[arg(long = "state", value_parser = jobs::parse_state)]
        states: Vec<JobState>,
        /// Only jobs published within this long (e.g. 10m, 2h).
        #[arg(long, value_parser = jobs::parse_duration)]
        since: Option<Duration>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print a job's output: stdout to stdout, stderr to stderr (the last attempt's, or
    /// --attempt N's); with -f, live until the job ends.
    #[command(
        after_help = "Example:\n  procyard-daemon logs 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b --stream stderr -f\n\nWith -f, exit status as wait's: 0 done, 1 failed or dead (or an error), 2 cancelled, 64 a usage error."
    )]
    Logs {
        /// The job id.
        id: String,
        /// This attempt (1 for the first).
        #[arg(long)]
        attempt: Option<u32>,
        /// Only this stream.
        #[arg(long, value_enum)]
        stream: Option<jobs::Stream>,
        /// Follow the job to its end: its output as it is written, every attempt in turn.
        #[arg(short = 'f', long = "follow", conflicts_with = "attempt")]
        follow: bool,
    },
    /// Wait until the jobs end; print how each ended.
    #[command(after_help = EXIT_CODES)]
    Wait {
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Give up after this long (exit 124).
        #[arg(long, value_parser = jobs::parse_duration)]
        timeout: Option<Duration>,
        /// Print each job's record as JSON (one per line).
        #[arg(long)]
        json: bool,
    },
    /// Cancel jobs: a waiting one never runs; a running oneshot job's process group gets
    /// TERM, then KILL after kill_timeout; a longlived worker that understands cancel frames
    /// is asked to stop the job (the ladder if it does not answer within kill_timeout). A
    /// cancelled job is never retried.
    #[command(
        after_help = "Example:\n  procyard-daemon cancel 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    )]
    Cancel {
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Create or upgrade the PostgreSQL queue's schema (backend "postgres"); daemons also do
    /// it at start.
    #[command(
        after_help = "Example:\n  procyard-daemon migrate --config procyard.toml\n\nPrints the versions applied (nothing when the schema was up to date)."
    )]
    Migrate,
    /// Stop a task taking new jobs (its running jobs finish) until `resume` or a restart.
    #[command(
        after_help = "Example:\n  procyard-daemon pause thumbnail\n  procyard-daemon resume thumbnail"
    )]
    Pause { task: String },
    /// Let a paused task take jobs again.
    #[command(after_help = "Example:\n  procyard-daemon resume thumbnail")]
    Resume { task: String },
    /// Run at most MAX_WORKERS jobs of a task at once, until the next reload.
    #[command(after_help = "Example:\n  procyard-daemon scale thumbnail 8")]
    Scale {
        task: String,
        /// The new limit (at least 1).
        max_workers: usize,
    },
    /// Delete the records of ended jobs (done and cancelled with --done, dead letters with
    /// --dead).
    #[command(after_help = "Example:\n  procyard-daemon purge --done --dead --older-than 7d")]
    Purge {
        /// Dead letters.
        #[arg(long)]
        dead: bool,
        /// Done and cancelled jobs.
        #[arg(long)]
        done: bool,
        /// Only those that ended longer ago than this.
        #[arg(long, value_parser = jobs::parse_duration)]
        older_than: Option<Duration>,
    },
}

fn main() -> ExitCode {
    // Block the daemon's signals before any thread exists (the AMQP backend starts one).
    let signals = match SignalFd::new(DAEMON_SIGNALS) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("procyard-daemon: unable to set up signal handling: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EX_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    let config = match procyard_daemon::client::find_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("procyard-daemon: {}", report(&e));
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Cmd::Run { ready_fd } => {
            init_logs(&config);
            procyard_daemon::run(&config, signals, RunOptions { ready_fd, subreaper: true })
                .map(|()| 0)
                .map_err(|e| unable("run", &e))
        }
        other => {
            drop(signals);
            client(&config, other)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("procyard-daemon: {msg}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logs(config: &Path) {
    let format = Config::load(config).map(|c| c.daemon.log_format).unwrap_or_default();
    let format = match format {
        LogFormat::Json => procyard_core::logs::LogFormat::Json,
        LogFormat::Text => procyard_core::logs::LogFormat::Text,
    };
    procyard_core::logs::init_logs("info", format);
}

/// `unable to ACTION: what went wrong` (every cause once, by core's [`report`]).
pub(crate) fn unable(action: &str, e: &(dyn std::error::Error + 'static)) -> String {
    format!("unable to {action}: {}", report(e))
}

fn load(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|e| unable("load config", &e))
}

fn client(config: &Path, cmd: Cmd) -> Result<u8, String> {
    match cmd {
        Cmd::Run { .. } => Ok(0),
        Cmd::CheckConfig => {
            let c = Config::load_runnable(config).map_err(|e| unable("load config", &e))?;
            println!(
                "{}: ok ({} tasks, {} queue)",
                c.path.display(),
                c.tasks.len(),
                c.queue.backend.name()
            );
            Ok(0)
        }
        Cmd::Publish { wait, timeout, lines, json, when, routing_key, payload } => {
            let mut c = Client::new(load(config)?);
            let options = when.options(c.config())?;
            let mut payloads: Vec<Vec<u8>> = Vec::new();
            if lines {
                for line in std::io::stdin().lock().split(b'\n') {
                    let mut line = line.map_err(|e| format!("unable to read stdin: {e}"))?;
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    payloads.push(line);
                }
            } else {
                payloads.push(match payload.as_deref() {
                    Some("-") => publish::read_payload()?,
                    Some(p) => p.as_bytes().to_vec(),
                    None => Vec::new(),
                });
            }
            // One batch: the SQLite queue commits all of it or none; a backend that cannot
            // reports the jobs it queued before the error, and those are printed too.
            // The client pokes the daemon when anything was queued.
            if wait {
                // Where the backend has one (AMQP), the jobs carry a reply address.
                c.expect_replies().map_err(|e| unable("prepare to wait for the jobs", &e))?;
            }
            let (ids, existing, failure) =
                match c.publish_batch_with(&routing_key, &payloads, &options) {
                    Ok(p) => (p.ids, p.existing, None),
                    Err(partial) => {
                        let PartialPublish { committed, error } = *partial;
                        (committed, Vec::new(), Some(error))
                    }
                };
            publish::tell_existing(&existing, json);
            if wait && failure.is_none() {
                let waited = c.wait(&ids, timeout).map_err(|e| unable("wait for the jobs", &e))?;
                return jobs::report(&waited, json);
            }
            if json {
                let published = procyard_daemon::client::Published {
                    routing_key: routing_key.clone(),
                    duplicate: !existing.is_empty(),
                    jobs: ids.clone(),
                    existing,
                };
                println!("{}", serde_json::to_string(&published).map_err(|e| e.to_string())?);
            } else {
                // One write for all of them, not one per line (stdout is line-buffered).
                let mut out = String::with_capacity(ids.len() * 37);
                for id in &ids {
                    out.push_str(id);
                    out.push('\n');
                }
                let printed = std::io::stdout().lock().write_all(out.as_bytes());
                if let Err(e) = printed.and_then(|()| std::io::stdout().flush()) {
                    return Err(format!(
                        "{} job(s) were queued, but their ids could not be printed: {e}",
                        ids.len()
                    ));
                }
            }
            match failure {
                None => Ok(0),
                Some(e) => {
                    let what = format!("publish to {routing_key:?}");
                    let mut msg = unable(&what, &e);
                    if !ids.is_empty() {
                        msg.push_str(&format!(
                            " ({} job(s) were queued before the error; their ids are printed)",
                            ids.len()
                        ));
                    }
                    Err(msg)
                }
            }
        }
        Cmd::Schedules { json } => schedules::list(&mut Client::new(load(config)?), json),
        Cmd::Schedule { action, name } => {
            schedules::act(&mut Client::new(load(config)?), action, &name)
        }
        Cmd::Status { json } => {
            let c = load(config)?;
            let status =
                control::status(&c.daemon.control_socket).map_err(|e| unable("read status", &e))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?);
            } else {
                print!("{}", status.render());
            }
            Ok(0)
        }
        Cmd::Dead { task, json } => {
            let c = load(config)?;
            let mut q =
                queue::open(&c.queue, OpenMode::Client).map_err(|e| unable("open queue", &e))?;
            q.bind(&c.bindings()).map_err(|e| unable("bind tasks", &e))?;
            let dead = q
                .dead_letters(task.as_deref(), usize::MAX)
                .map_err(|e| unable("list dead letters", &e))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&dead).map_err(|e| e.to_string())?);
            } else {
                for d in dead {
                    println!(
                        "{}\t{}\t{}\t{} attempts\t{}",
                        d.id, d.task, d.routing_key, d.attempts, d.reason
                    );
                }
            }
            Ok(0)
        }
        Cmd::Requeue { task, all, ids } => {
            if !all && ids.is_empty() {
                return Err("requeue needs job ids or --all".into());
            }
            let c = load(config)?;
            let mut q =
                queue::open(&c.queue, OpenMode::Client).map_err(|e| unable("open queue", &e))?;
            q.bind(&c.bindings()).map_err(|e| unable("bind tasks", &e))?;
            // `--all` with ids requeues those ids, as it always did.
            let which = if ids.is_empty() { Requeue::All } else { Requeue::Ids(ids) };
            let n = q.requeue_dead(task.as_deref(), &which).map_err(|e| unable("requeue", &e))?;
            let _ = control::poke(&c.daemon.control_socket);
            println!("requeued {n} job(s)");
            Ok(0)
        }
        Cmd::Job { id, json } => jobs::job(&mut Client::new(load(config)?), &id, json),
        Cmd::Jobs { task, states, since, limit, json } => {
            let filter = JobFilter { task, states, since, limit };
            jobs::jobs(&mut Client::new(load(config)?), &filter, json)
        }
        Cmd::Logs { id, attempt, stream, follow } => {
            jobs::logs(&mut Client::new(load(config)?), &id, attempt, stream, follow)
        }
        Cmd::Wait { ids, timeout, json } => {
            jobs::wait(&mut Client::new(load(config)?), &ids, timeout, json)
        }
        Cmd::Cancel { ids } => jobs::cancel(&mut Client::new(load(config)?), &ids),
        Cmd::Migrate => {
            let c = load(config)?;
            let applied = queue::postgres::migrate(&c.queue).map_err(|e| unable("migrate", &e))?;
            if applied.is_empty() {
                println!("schema {} is up to date", c.queue.schema);
            } else {
                println!("schema {}: applied versions {applied:?}", c.queue.schema);
            }
            Ok(0)
        }
        Cmd::Purge { dead, done, older_than } => {
            jobs::purge(&mut Client::new(load(config)?), &Purge { dead, done, older_than })
        }
        Cmd::Pause { task } => tasks::steer(config, control::Request::Pause { task }),
        Cmd::Resume { task } => tasks::steer(config, control::Request::Resume { task }),
        Cmd::Scale { task, max_workers } => {
            tasks::steer(config, control::Request::Scale { task, max_workers })
        }
    }
}
