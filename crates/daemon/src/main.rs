//! `procyard-daemon`: run the supervisor, publish jobs, show status, check a config, list and
//! requeue dead letters.

#![forbid(unsafe_code)]

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use procyard_core::{SignalFd, report};
use procyard_daemon::config::LogFormat;
use procyard_daemon::queue::{self, OpenMode, PartialPublish, Requeue};
use procyard_daemon::{Config, DAEMON_SIGNALS, RunOptions, control};

/// A supervisor daemon: groups of worker processes fed by a job queue.
#[derive(Parser, Debug)]
#[command(
    name = "procyard-daemon",
    version,
    about,
    after_help = "Examples:\n  procyard-daemon check-config --config procyard.toml\n  procyard-daemon run --config procyard.toml\n  procyard-daemon publish --config procyard.toml hello.world 'some payload'\n  procyard-daemon status --config procyard.toml --json"
)]
struct Cli {
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
        /// The TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Write "ready\n" to this inherited descriptor once serving.
        #[arg(long)]
        ready_fd: Option<i32>,
    },
    /// Publish a job: a copy goes to every task bound to ROUTING_KEY.
    #[command(
        after_help = "Examples:\n  procyard-daemon publish --config procyard.toml hello.world 'some payload'\n  echo data | procyard-daemon publish --config procyard.toml hello.world -\n  seq 100 | procyard-daemon publish --config procyard.toml --lines hello.world"
    )]
    Publish {
        /// The TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Publish one job per line of stdin, as one batch: with the SQLite queue all of them
        /// are queued or, on an error, none; ids of jobs queued are printed before any error.
        #[arg(long)]
        lines: bool,
        /// Print the job ids as JSON.
        #[arg(long)]
        json: bool,
        /// The routing key (dot-separated words).
        routing_key: String,
        /// The payload, or `-` for stdin (default: empty).
        payload: Option<String>,
    },
    /// Show the running daemon's groups, workers, queues and dead letters.
    #[command(after_help = "Example:\n  procyard-daemon status --config procyard.toml --json")]
    Status {
        /// The TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a config; errors name the file, the line and the field.
    #[command(after_help = "Example:\n  procyard-daemon check-config --config procyard.toml")]
    CheckConfig {
        /// The TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// List dead-lettered jobs (works with the daemon down).
    #[command(
        after_help = "Example:\n  procyard-daemon dead --config procyard.toml --task thumbnail --json"
    )]
    Dead {
        /// The TOML config.
        #[arg(long)]
        config: PathBuf,
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
        /// The TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Only this task.
        #[arg(long)]
        task: Option<String>,
        /// Every dead letter (of --task, or of all tasks).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Job ids.
        ids: Vec<String>,
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
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let result = match cli.command {
        Cmd::Run { config, ready_fd } => {
            init_logs(&config);
            procyard_daemon::run(&config, signals, RunOptions { ready_fd, subreaper: true })
                .map_err(|e| unable("run", &e))
        }
        other => {
            drop(signals);
            client(other)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("procyard-daemon: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(config: &Path) {
    let format = Config::load(config).map(|c| c.daemon.log_format).unwrap_or_default();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into a log file or journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// `unable to ACTION: what went wrong` (every cause once, by core's [`report`]).
fn unable(action: &str, e: &(dyn std::error::Error + 'static)) -> String {
    format!("unable to {action}: {}", report(e))
}

/// Reads stdin whole, refusing more than the queue would take before reading it all.
fn read_payload() -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(queue::MAX_PAYLOAD as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("unable to read stdin: {e}"))?;
    queue::check_payload(&buf).map_err(|e| unable("read the payload", &e))?;
    Ok(buf)
}

fn load(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|e| unable("load config", &e))
}

fn client(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Run { .. } => Ok(()),
        Cmd::CheckConfig { config } => {
            let c = Config::load_runnable(&config).map_err(|e| unable("load config", &e))?;
            println!(
                "{}: ok ({} tasks, {} queue)",
                c.path.display(),
                c.tasks.len(),
                c.queue.backend.name()
            );
            Ok(())
        }
        Cmd::Publish { config, lines, json, routing_key, payload } => {
            let c = load(&config)?;
            let mut q =
                queue::open(&c.queue, OpenMode::Client).map_err(|e| unable("open queue", &e))?;
            q.bind(&c.bindings()).map_err(|e| unable("bind tasks", &e))?;
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
                    Some("-") => read_payload()?,
                    Some(p) => p.as_bytes().to_vec(),
                    None => Vec::new(),
                });
            }
            // One batch: the SQLite queue commits all of it or none; a backend that cannot
            // reports the jobs it queued before the error, and those are printed too.
            let (ids, failure) = match q.publish_batch(&routing_key, &payloads) {
                Ok(ids) => (ids, None),
                Err(partial) => {
                    let PartialPublish { committed, error } = *partial;
                    (committed, Some(error))
                }
            };
            if !ids.is_empty()
                && let Err(e) = control::poke(&c.daemon.control_socket)
            {
                tracing::debug!(error = %e, "could not poke the daemon");
            }
            if json {
                println!("{}", serde_json::json!({ "routing_key": routing_key, "jobs": ids }));
            } else {
                for id in &ids {
                    println!("{id}");
                }
            }
            match failure {
                None => Ok(()),
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
        Cmd::Status { config, json } => {
            let c = load(&config)?;
            let status =
                control::status(&c.daemon.control_socket).map_err(|e| unable("read status", &e))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?);
            } else {
                print!("{}", status.render());
            }
            Ok(())
        }
        Cmd::Dead { config, task, json } => {
            let c = load(&config)?;
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
            Ok(())
        }
        Cmd::Requeue { config, task, all, ids } => {
            if !all && ids.is_empty() {
                return Err("requeue needs job ids or --all".into());
            }
            let c = load(&config)?;
            let mut q =
                queue::open(&c.queue, OpenMode::Client).map_err(|e| unable("open queue", &e))?;
            q.bind(&c.bindings()).map_err(|e| unable("bind tasks", &e))?;
            // `--all` with ids requeues those ids, as it always did.
            let which = if ids.is_empty() { Requeue::All } else { Requeue::Ids(ids) };
            let n = q.requeue_dead(task.as_deref(), &which).map_err(|e| unable("requeue", &e))?;
            let _ = control::poke(&c.daemon.control_socket);
            println!("requeued {n} job(s)");
            Ok(())
        }
    }
}
