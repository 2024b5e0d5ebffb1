//! The job verbs: `job`, `jobs`, `logs`, `wait`, `cancel`, `purge`, and the waiting half of
//! `publish --wait`, over [`procyard_daemon::Client`]. Each returns the exit status.

use std::io::Write;
use std::time::Duration;

use procyard_daemon::follow::Stream as FollowStream;
use procyard_daemon::queue::{Attempt, JobFilter, JobRecord, JobState, Purge};
use procyard_daemon::{Cancelled, Client, Waited};

use super::render;
use crate::unable;

/// Which streams `logs` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stream {
    /// The job's stdout (to stdout).
    Stdout,
    /// The job's stderr (to stderr).
    Stderr,
}

fn err(action: &str) -> impl Fn(procyard_daemon::Error) -> String + '_ {
    move |e| unable(action, &e)
}

fn json_line(v: &impl serde::Serialize) -> Result<(), String> {
    println!("{}", serde_json::to_string(v).map_err(|e| e.to_string())?);
    Ok(())
}

/// On RabbitMQ, says on stderr where the records come from.
fn say_local(client: &Client) {
    let q = &client.config().queue;
    if q.backend == procyard_daemon::queue::BackendKind::Amqp {
        eprintln!(
            "procyard-daemon: from this daemon's history ({}): jobs run by other daemons are not here",
            q.path.display()
        );
    }
}

pub fn job(client: &mut Client, id: &str, json: bool) -> Result<u8, String> {
    say_local(client);
    let record = client.job(id).map_err(err("show the job"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?);
    } else {
        print!("{}", render::record(&record));
    }
    Ok(0)
}

pub fn jobs(client: &mut Client, filter: &JobFilter, json: bool) -> Result<u8, String> {
    say_local(client);
    for j in client.jobs(filter).map_err(err("list jobs"))? {
        if json {
            json_line(&j)?;
        } else {
            println!("{}", render::line(&j));
        }
    }
    Ok(0)
}

/// Writes attempt `a`'s output: stdout to stdout, stderr to stderr.
fn write_output(a: &Attempt, stream: Option<Stream>) -> Result<(), String> {
    let io = |e: std::io::Error| format!("unable to write the output: {e}");
    if stream != Some(Stream::Stderr)
        && let Some(out) = &a.stdout
    {
        let mut o = std::io::stdout().lock();
        o.write_all(&out.bytes).and_then(|()| o.flush()).map_err(io)?;
    }
    if stream != Some(Stream::Stdout)
        && let Some(err) = &a.stderr
    {
        std::io::stderr().lock().write_all(&err.bytes).map_err(io)?;
    }
    Ok(())
}

pub fn logs(
    client: &mut Client,
    id: &str,
    attempt: Option<u32>,
    stream: Option<Stream>,
    follow: bool,
) -> Result<u8, String> {
    let record = client.job(id).map_err(err("read the job"))?;
    if let Some(n) = attempt {
        let a = find_attempt(&record, n)?;
        write_output(&a, stream)?;
        return Ok(0);
    }
    if !follow {
        if let Some(a) = record.attempts.iter().rev().find(|a| a.end.is_some()) {
            write_output(a, stream)?;
        }
        return Ok(0);
    }
    // Follow: the bytes as the job writes them, every attempt in turn, until the job ends;
    // the exit status mirrors the job, as `wait`'s.
    drop(record);
    let record = client
        .follow_logs(id, |s, bytes| {
            let io = |e: std::io::Error| procyard_daemon::Error::Os {
                action: "write the output",
                source: e,
            };
            match s {
                FollowStream::Stdout if stream != Some(Stream::Stderr) && !bytes.is_empty() => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(bytes).and_then(|()| o.flush()).map_err(io)
                }
                FollowStream::Stderr if stream != Some(Stream::Stdout) && !bytes.is_empty() => {
                    std::io::stderr().lock().write_all(bytes).map_err(io)
                }
                _ => Ok(()),
            }
        })
        .map_err(err("follow the job"))?;
    Ok(record.state.exit_code().unwrap_or(0))
}

fn find_attempt(record: &JobRecord, n: u32) -> Result<Attempt, String> {
    record.attempts.iter().find(|a| a.number == n).cloned().ok_or_else(|| {
        format!("job {} has no attempt {n} (it has {})", record.id, record.attempts.len())
    })
}

/// Prints how the jobs ended and returns the exit status they mirror.
pub fn report(waited: &Waited, json: bool) -> Result<u8, String> {
    for j in &waited.jobs {
        if json {
            json_line(j)?;
        } else {
            let last = j.attempts.iter().rev().find_map(|a| a.end.as_ref());
            let how = last.map(|e| format!(" ({e})")).unwrap_or_default();
            println!("{}\t{}{how}", j.id, j.state);
        }
    }
    if waited.timed_out {
        eprintln!("procyard-daemon: timed out waiting for the jobs to end");
    }
    Ok(waited.exit_code())
}

pub fn wait(
    client: &mut Client,
    ids: &[String],
    timeout: Option<Duration>,
    json: bool,
) -> Result<u8, String> {
    let waited = client.wait(ids, timeout).map_err(err("wait for the jobs"))?;
    report(&waited, json)
}

pub fn cancel(client: &mut Client, ids: &[String]) -> Result<u8, String> {
    let mut failed = None;
    for id in ids {
        match client.cancel(id) {
            Ok(Cancelled::Waiting) => println!("{id}\tcancelled"),
            Ok(Cancelled::Stopping) => println!("{id}\tcancelling (stopping its process)"),
            Ok(Cancelled::Requested) => println!(
                "{id}\tcancel requested (the daemon running it stops it; one that receives it later drops it)"
            ),
            Err(e) => {
                let msg = unable(&format!("cancel job {id}"), &e);
                eprintln!("procyard-daemon: {msg}");
                failed = Some(msg);
            }
        }
    }
    match failed {
        None => Ok(0),
        Some(_) if ids.len() == 1 => Err(String::new()),
        Some(_) => Err("some jobs could not be cancelled".into()),
    }
}

pub fn purge(client: &mut Client, what: &Purge) -> Result<u8, String> {
    if !what.dead && !what.done {
        return Err("purge needs --dead, --done or both".into());
    }
    let n = client.purge(what).map_err(err("purge"))?;
    println!("purged {n} job(s)");
    Ok(0)
}

/// `--state` values.
pub fn parse_state(s: &str) -> Result<JobState, String> {
    s.parse().map_err(|e: procyard_daemon::Error| e.to_string())
}

/// `--timeout`, `--since`, `--older-than` values: core's duration grammar.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    procyard_core::parse_duration(s)
        .map_err(|_| "expected a duration such as 500ms, 30s, 5m, 2h or a number of seconds".into())
}

/// Pause, resume or scale a task of the running daemon; prints what it did.
pub fn steer(
    config: &std::path::Path,
    request: procyard_daemon::control::Request,
) -> Result<u8, String> {
    let c = crate::load(config)?;
    let message = procyard_daemon::control::steer(&c.daemon.control_socket, &request)
        .map_err(|e| unable("do that", &e))?;
    println!("{message}");
    Ok(0)
}
