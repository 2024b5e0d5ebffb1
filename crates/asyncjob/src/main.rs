//! `procyard-asyncjob`: start, check, kill, reap and wait on a detached job tracked by a state
//! file, from a shell or a serf handler.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use procyard_asyncjob::{AsyncJob, AsyncJobOptions, Error, JobState, Signal};
use procyard_core::report;

const AFTER_HELP: &str = "\
Example (a serf handler for queries; serf relays a handler's output only when it exits 0,
and relays its standard error too: keep the reasons out of the answer, always exit 0):
  state=/var/lib/serf/long_task
  case \"$(cat)\" in
    start) procyard-asyncjob --state $state --stdout /var/log/long_task.log \\
             start --shell 'for i in $(seq 1 300); do echo $i; sleep 1; done' ;;
    check) procyard-asyncjob --state $state check || echo failed ;;
    kill)  procyard-asyncjob --state $state kill ;;
    reap)  procyard-asyncjob --state $state reap ;;
    *)     echo failed ;;
  esac 2>>/var/log/long_task.err
  exit 0";

/// Run a long command in the background and track it through a state file.
#[derive(Debug, Parser)]
#[command(name = "procyard-asyncjob", version, after_help = AFTER_HELP)]
struct Cli {
    /// The state file (relative paths are resolved against the current directory). Without
    /// one, nothing is persisted: check says absent, kill and reap fail.
    #[arg(long, value_name = "FILE", global = true)]
    state: Option<PathBuf>,
    /// The job's standard output file (default /dev/null).
    #[arg(long, value_name = "FILE", global = true)]
    stdout: Option<PathBuf>,
    /// The job's standard error file (default /dev/null).
    #[arg(long, value_name = "FILE", global = true)]
    stderr: Option<PathBuf>,
    /// Append to the output files instead of truncating them.
    #[arg(long, global = true)]
    append: bool,
    /// The job's working directory (default: the current directory).
    #[arg(long, value_name = "DIR", global = true)]
    cwd: Option<PathBuf>,
    /// Set an environment variable for the job (repeatable).
    #[arg(long, value_name = "K=V", value_parser = parse_env, global = true)]
    env: Vec<(OsString, OsString)>,
    /// Remove an environment variable from the job's environment (repeatable).
    #[arg(long, value_name = "K", global = true)]
    unset_env: Vec<OsString>,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Start the job; prints `success` once it runs, or `failed` (reason on stderr).
    #[command(after_help = "Examples:\n  procyard-asyncjob --state /tmp/job start -- sleep 60\n  \
                            procyard-asyncjob --state /tmp/job --stdout out.log start --shell 'make test'")]
    Start {
        /// Run this string with /bin/sh -c instead of CMD.
        #[arg(long, value_name = "STRING", conflicts_with = "command")]
        shell: Option<OsString>,
        /// Stop the job after this long (TERM, then KILL after --grace): 30s, 500ms, 5m, 1h.
        #[arg(long, value_name = "DURATION", value_parser = procyard_core::parse_duration)]
        timeout: Option<Duration>,
        /// Time between TERM and KILL when the timeout fires (default 5s).
        #[arg(long, value_name = "DURATION", value_parser = procyard_core::parse_duration)]
        grace: Option<Duration>,
        /// Print the state as JSON instead of success/failed.
        #[arg(long)]
        json: bool,
        /// The command and its arguments.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Print the state as JSON (`{"status":"absent"}` when there is none).
    #[command(after_help = "Example:\n  procyard-asyncjob --state /tmp/job check")]
    Check,
    /// Signal the running job's process group (default KILL); prints success or failed.
    #[command(after_help = "Example:\n  procyard-asyncjob --state /tmp/job kill --signal TERM")]
    Kill {
        /// The signal: a name (TERM, SIGTERM) or a number.
        #[arg(long, value_name = "SIG", default_value = "KILL")]
        signal: String,
        /// Print the state as JSON instead of success/failed.
        #[arg(long)]
        json: bool,
    },
    /// Remove the state of a finished, failed or lost job; prints success or failed.
    #[command(after_help = "Example:\n  procyard-asyncjob --state /tmp/job reap")]
    Reap {
        /// Print the reaped state as JSON instead of success/failed.
        #[arg(long)]
        json: bool,
    },
    /// Block until the job is finished, failed or lost, then print its state as JSON.
    #[command(after_help = "Example:\n  procyard-asyncjob --state /tmp/job wait --timeout 10m")]
    Wait {
        /// Give up after this long (exit 1): 30s, 500ms, 5m, 1h.
        #[arg(long, value_name = "DURATION", value_parser = procyard_core::parse_duration)]
        timeout: Option<Duration>,
    },
}

fn parse_env(text: &str) -> Result<(OsString, OsString), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.into(), value.into())),
        _ => Err(format!("expected K=V, got {text:?}")),
    }
}

fn main() -> ExitCode {
    procyard_asyncjob::run_if_monitor();
    let cli = Cli::parse();
    procyard_core::logs::init_logs("error", procyard_core::logs::LogFormat::Text);
    run(cli)
}

fn options(cli: &Cli) -> AsyncJobOptions {
    let mut options = AsyncJob::options().append_output(cli.append);
    if let Some(state) = &cli.state {
        options = options.state_file(state);
    }
    if let Some(stdout) = &cli.stdout {
        options = options.stdout(stdout);
    }
    if let Some(stderr) = &cli.stderr {
        options = options.stderr(stderr);
    }
    if let Some(cwd) = &cli.cwd {
        options = options.cwd(cwd);
    }
    for (key, value) in &cli.env {
        options = options.env(key, value);
    }
    for key in &cli.unset_env {
        options = options.env_remove(key);
    }
    options
}

fn complain(action: &str, error: &Error) {
    tracing::debug!(action, "failed");
    eprintln!("procyard-asyncjob: {}", report(error));
}

/// Prints `success`/`failed` (or JSON) for start, kill and reap.
fn verdict(action: &str, json: bool, outcome: Result<JobState, Error>) -> ExitCode {
    match outcome {
        Ok(state) => {
            if json {
                println!(r#"{{"result":"success","state":{}}}"#, state.to_json());
            } else {
                println!("success");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            complain(action, &error);
            if json {
                let message = serde_json::Value::String(report(&error));
                println!(r#"{{"result":"failed","error":{message}}}"#);
            } else {
                println!("failed");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> ExitCode {
    let mut options = options(&cli);
    match cli.action {
        Action::Start { shell, timeout, grace, json, command } => {
            options = match shell {
                Some(script) => options.shell(script),
                None => options.command(command),
            };
            if let Some(timeout) = timeout {
                options = options.timeout(timeout);
            }
            if let Some(grace) = grace {
                options = options.grace(grace);
            }
            verdict("start the job", json, options.build().and_then(|job| job.start()))
        }
        Action::Check => match options.build().and_then(|job| job.state_info()) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                complain("check the job", &error);
                ExitCode::FAILURE
            }
        },
        Action::Kill { signal, json } => {
            let signal: Signal = match signal.parse() {
                Ok(signal) => signal,
                Err(e) => {
                    eprintln!("procyard-asyncjob: {e}");
                    println!("failed");
                    return ExitCode::from(2);
                }
            };
            let job = options.build();
            verdict("kill the job", json, job.and_then(|job| job.signal(signal)))
        }
        Action::Reap { json } => {
            verdict("reap the job", json, options.build().and_then(|j| j.reap()))
        }
        Action::Wait { timeout } => match options.build().and_then(|job| job.wait(timeout)) {
            Ok(state) => {
                println!("{}", state.to_json());
                ExitCode::SUCCESS
            }
            Err(error) => {
                complain("wait for the job", &error);
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_flags_use_the_shared_grammar() {
        let timeout = |text: &str| match Cli::try_parse_from([
            "procyard-asyncjob",
            "start",
            &format!("--timeout={text}"),
            "--",
            "true",
        ]) {
            Ok(Cli { action: Action::Start { timeout, .. }, .. }) => Ok(timeout),
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(timeout("250ms"), Ok(Some(Duration::from_millis(250))));
        assert_eq!(timeout("3d"), Ok(Some(Duration::from_secs(3 * 86400))));
        for bad in ["x", "5y", "-1s", "1e999"] {
            let err = timeout(bad).unwrap_err();
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn env_pairs() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("novalue").is_err());
        assert!(parse_env("=v").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
