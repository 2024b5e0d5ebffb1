//! `procyard-bgtask`: spawn background tasks under their own supervisors, then list, read,
//! write, signal, pause, restart and delete them from any process.

#![forbid(unsafe_code)]

mod args;
mod output;

use args::{Cli, Cmd};
use output::{EXIT_GAP, Gap, Stdout, is_stdout_closed, print_table};

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use procyard_bgtask::protocol::MAX_READ;
use procyard_bgtask::{
    Error, Filter, Meta, ReadOptions, SpawnOptions, StreamName, TaskChannel, TaskPool,
};

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "__supervise") {
        return ExitCode::from(procyard_bgtask::__private::supervise_from_stdio() as u8);
    }
    procyard_core::logs::init_logs("error", procyard_core::logs::LogFormat::Text);
    let cli = Cli::parse();
    if matches!(cli.command, Cmd::Supervise) {
        return ExitCode::from(procyard_bgtask::__private::supervise_from_stdio() as u8);
    }
    let result = match cli.command {
        Cmd::TaskMeta { ref pairs } => {
            task_channel().and_then(|ch| ch.apply_meta(meta_pairs(pairs)?).map_err(lib))
        }
        Cmd::TaskSend { ref message } => task_channel().and_then(|ch| {
            let value = serde_json::from_str(message)
                .unwrap_or_else(|_| serde_json::Value::String(message.clone()));
            ch.send(&value).map_err(lib)
        }),
        _ => run(cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`… | head`): nothing left to say to anyone.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(is_stdout_closed) => {
            ExitCode::SUCCESS
        }
        Err(e) if e.downcast_ref::<Gap>().is_some() => {
            eprintln!("procyard-bgtask: {e}");
            ExitCode::from(EXIT_GAP)
        }
        Err(e) => {
            eprintln!("procyard-bgtask: {}", procyard_core::report(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

fn task_channel() -> Result<TaskChannel> {
    TaskChannel::from_env()
        .map_err(lib)?
        .ok_or_else(|| anyhow!("not inside a task ({} is not set)", procyard_bgtask::DATA_ENV))
}

fn meta_pairs(pairs: &[String]) -> Result<Meta> {
    let mut meta = Meta::new();
    for p in pairs {
        let (k, v) = parse_meta_arg(p)
            .ok_or_else(|| anyhow!("invalid metadata {p:?} (expected KEY=VALUE)"))?;
        meta.insert(k, v);
    }
    Ok(meta)
}

fn lib(e: Error) -> anyhow::Error {
    anyhow!(procyard_core::report(&e))
}

/// Parses a `K=V` metadata argument: `V` is taken as JSON when it parses, else as a string.
fn parse_meta_arg(arg: &str) -> Option<(String, serde_json::Value)> {
    let (k, v) = arg.split_once('=')?;
    if k.is_empty() {
        return None;
    }
    let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
    Some((k.to_owned(), value))
}

fn run(cli: Cli) -> Result<()> {
    let pool = match &cli.pool {
        Some(dir) => TaskPool::open(dir),
        None => TaskPool::open_default(),
    }
    .map_err(lib)?;
    let mut stdout = Stdout(std::io::stdout().lock());
    match cli.command {
        Cmd::Spawn { meta, env, cwd, retain, log, block_when_full, json, command } => {
            let mut options =
                SpawnOptions::new(command).retain(retain).log(log).block_when_full(block_when_full);
            options.meta = meta_pairs(&meta)?;
            for e in &env {
                let (k, v) = e
                    .split_once('=')
                    .ok_or_else(|| anyhow!("invalid --env {e:?} (expected KEY=VALUE)"))?;
                options = options.env(k, v);
            }
            if let Some(cwd) = cwd {
                options = options.cwd(cwd);
            }
            let task = pool.spawn(&options).map_err(lib)?;
            if json {
                writeln!(stdout, "{}", serde_json::json!({ "id": task.id() }))?;
            } else {
                writeln!(stdout, "{}", task.id())?;
            }
        }
        Cmd::List { status, meta, json } => {
            let filter = Filter { statuses: status, meta: meta_pairs(&meta)? };
            let records = pool.list(&filter).map_err(lib)?;
            if json {
                serde_json::to_writer_pretty(&mut stdout, &records)?;
                writeln!(stdout)?;
            } else {
                print_table(&mut stdout, &records)?;
            }
        }
        Cmd::Info { id, json } => {
            let mut task = pool.task(&id).map_err(lib)?;
            match task.info() {
                Ok(info) if json => {
                    serde_json::to_writer_pretty(&mut stdout, &info)?;
                    writeln!(stdout)?;
                }
                Ok(info) => {
                    writeln!(stdout, "id:         {}", info.id)?;
                    writeln!(stdout, "status:     {}", info.status)?;
                    writeln!(stdout, "command:    {}", info.command.join(" "))?;
                    writeln!(
                        stdout,
                        "pid:        {}",
                        info.pid.map_or("-".into(), |p| p.to_string())
                    )?;
                    writeln!(stdout, "supervisor: {}", info.supervisor_pid)?;
                    writeln!(stdout, "restarts:   {}", info.restarts)?;
                    for (name, s) in &info.streams {
                        writeln!(
                            stdout,
                            "{name}:{:<5} start {} limit {} consumed {}{}",
                            "",
                            s.start,
                            s.limit,
                            s.consumed,
                            if s.eof { " (ended)" } else { "" }
                        )?;
                    }
                    writeln!(stdout, "meta:       {}", serde_json::Value::Object(info.meta))?;
                }
                Err(Error::SupervisorGone { .. }) => {
                    let record = pool.record(&id).map_err(lib)?;
                    if json {
                        serde_json::to_writer_pretty(&mut stdout, &record)?;
                        writeln!(stdout)?;
                    } else {
                        print_table(&mut stdout, &[record])?;
                    }
                }
                Err(e) => return Err(lib(e)),
            }
        }
        Cmd::Read { id, stream, offset, count, peek } => {
            let mut task = pool.task(&id).map_err(lib)?;
            let mut remaining = count.unwrap_or(u64::MAX);
            let mut at = offset;
            let consume = !peek && offset.is_none();
            let mut gap = Gap::new(&id, stream);
            loop {
                if remaining == 0 {
                    break;
                }
                let mut options =
                    ReadOptions::new().count(remaining.min(MAX_READ)).consume(consume);
                if let Some(at) = at {
                    options = options.offset(at);
                }
                let chunk = match task.stream(stream).read_with(options) {
                    Ok(c) => c,
                    Err(Error::SupervisorGone { .. }) => {
                        return read_log(
                            &pool,
                            &id,
                            stream,
                            at.unwrap_or(0),
                            remaining,
                            &mut stdout,
                        );
                    }
                    Err(e) => return Err(lib(e)),
                };
                gap.note(&chunk);
                if chunk.data.is_empty() {
                    break;
                }
                stdout.write_all(&chunk.data)?;
                remaining -= chunk.data.len() as u64;
                if !consume {
                    at = Some(chunk.end());
                }
            }
            stdout.flush()?;
            gap.check()?;
        }
        Cmd::Tail { id, follow, stream, bytes } => {
            let mut task = pool.task(&id).map_err(lib)?;
            if follow {
                // Following waits for output as long as the task runs (Ctrl-C ends it).
                task.set_timeout(None);
            }
            let info = task.stream(stream).info().map_err(lib)?;
            let mut at = match bytes {
                Some(n) => info.limit.saturating_sub(n).max(info.start),
                None => info.start,
            };
            let mut gap = Gap::new(&id, stream);
            loop {
                let chunk = task
                    .stream(stream)
                    .read_with(ReadOptions::new().offset(at).wait(follow))
                    .map_err(lib)?;
                gap.note(&chunk);
                stdout.write_all(&chunk.data)?;
                stdout.flush()?;
                at = chunk.end();
                if chunk.data.is_empty() && (!follow || chunk.is_final()) {
                    break;
                }
            }
            gap.check()?;
        }
        Cmd::Write { id, data } => {
            let mut task = pool.task(&id).map_err(lib)?;
            let bytes = match data.as_deref() {
                None | Some("-") => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .lock()
                        .read_to_end(&mut buf)
                        .context("unable to read stdin")?;
                    buf
                }
                Some(text) => text.as_bytes().to_vec(),
            };
            task.write(&bytes).map_err(lib)?;
        }
        Cmd::CloseStdin { id } => pool.task(&id).map_err(lib)?.close_stdin().map_err(lib)?,
        Cmd::Kill { id, signal } => pool.task(&id).map_err(lib)?.signal(signal).map_err(lib)?,
        Cmd::Pause { id } => pool.task(&id).map_err(lib)?.pause().map_err(lib)?,
        Cmd::Resume { id } => pool.task(&id).map_err(lib)?.resume().map_err(lib)?,
        Cmd::Restart { id } => pool.task(&id).map_err(lib)?.restart().map_err(lib)?,
        Cmd::Delete { id } => pool.task(&id).map_err(lib)?.delete().map_err(lib)?,
        Cmd::Meta { id, pairs } => {
            let meta = meta_pairs(&pairs)?;
            pool.task(&id).map_err(lib)?.apply_meta(meta).map_err(lib)?;
        }
        Cmd::Data { id, peek } => {
            for m in pool.task(&id).map_err(lib)?.read_data(!peek).map_err(lib)? {
                writeln!(stdout, "{m}")?;
            }
        }
        Cmd::Supervise | Cmd::TaskMeta { .. } | Cmd::TaskSend { .. } => {
            bail!("this command is not available here")
        }
    }
    stdout.flush()?;
    Ok(())
}

fn read_log(
    pool: &TaskPool,
    id: &str,
    stream: StreamName,
    offset: u64,
    count: u64,
    out: &mut dyn Write,
) -> Result<()> {
    let record = pool.record(id).map_err(lib)?;
    if !record.log {
        bail!("the supervisor of task {id} is gone and its output was not logged");
    }
    let path = pool.task(id).map_err(lib)?.log_path(stream);
    let mut file =
        std::fs::File::open(&path).with_context(|| format!("unable to open {}", path.display()))?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))?;
    std::io::copy(&mut file.take(count), out)?;
    Ok(())
}
