//! `procyard-bgtask`: spawn background tasks under their own supervisors, then list, read,
//! write, signal, pause, restart and delete them from any process.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use procyard_bgtask::protocol::MAX_READ;
use procyard_bgtask::{
    Error, Filter, Meta, SpawnOptions, StreamName, TaskChannel, TaskPool, TaskRecord, error_chain,
    parse_meta_arg,
};
use procyard_core::Signal;

/// Background tasks with their own supervisors, reachable over Unix sockets.
#[derive(Parser, Debug)]
#[command(
    name = "procyard-bgtask",
    version,
    after_help = "Example:\n  procyard-bgtask spawn --meta name=demo -- sh -c 'echo hi; sleep 60'\n  procyard-bgtask list --status running"
)]
struct Cli {
    /// Task pool directory (default: $PROCYARD_POOL, /run/procyard/bgtask for root,
    /// $XDG_RUNTIME_DIR/procyard/bgtask or /tmp/procyard-$UID/bgtask).
    #[arg(long, global = true, value_name = "DIR")]
    pool: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a task under a detached supervisor; prints its id.
    #[command(
        after_help = "Example:\n  procyard-bgtask spawn --meta name=demo --env DEBUG=1 --retain 65536 -- ./job.sh -n"
    )]
    Spawn {
        /// Metadata KEY=VALUE (VALUE is JSON if it parses, else a string).
        #[arg(long = "meta", value_name = "K=V")]
        meta: Vec<String>,
        /// Environment variable KEY=VALUE for the task.
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Working directory of the task (default: the current one).
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Bytes of output retained per stream (oldest dropped beyond it).
        #[arg(long, value_name = "BYTES", default_value_t = procyard_bgtask::DEFAULT_RETAIN)]
        retain: u64,
        /// Also log output to <id>.stdout.log / <id>.stderr.log in the pool.
        #[arg(long)]
        log: bool,
        /// Make the task wait (backpressure) instead of dropping unconsumed output.
        #[arg(long)]
        block_when_full: bool,
        /// Print {"id": ...} as JSON.
        #[arg(long)]
        json: bool,
        /// The command and its arguments.
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// List tasks from their state files (no connection needed).
    #[command(
        after_help = "Example:\n  procyard-bgtask list --status running --meta name='\"Hello World\"' --json"
    )]
    List {
        /// Only tasks in this status (running, paused, exited, signaled, lost); repeatable.
        #[arg(long = "status")]
        status: Vec<String>,
        /// Only tasks whose metadata has KEY equal to VALUE (JSON or string); repeatable.
        #[arg(long = "meta", value_name = "K=V")]
        meta: Vec<String>,
        /// JSON output (an array of state records).
        #[arg(long)]
        json: bool,
    },
    /// Show a task (from its supervisor, or its state file if the supervisor is gone).
    #[command(
        after_help = "Example:\n  procyard-bgtask info 0193f3c2a1b27d10a5c4e2f0b1d2c3e4 --json"
    )]
    Info {
        /// Task id.
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Write a stream's retained bytes to stdout.
    ///
    /// If some of the bytes asked for were already dropped (beyond the retain cap), what is
    /// retained is still written, a note on stderr says how many bytes are missing and where
    /// output resumes, and the exit status is 3.
    #[command(
        after_help = "Example:\n  procyard-bgtask read ID --stream stderr --offset 12 --count 23\n\nExit status: 0, 1 on error, 3 when bytes asked for had been dropped (a gap)."
    )]
    Read {
        /// Task id.
        id: String,
        /// stdout or stderr.
        #[arg(long, default_value = "stdout")]
        stream: StreamName,
        /// Absolute offset to read from (without it: from the consumed mark, consuming).
        #[arg(long)]
        offset: Option<u64>,
        /// At most this many bytes (default: all retained).
        #[arg(long)]
        count: Option<u64>,
        /// Do not mark the bytes consumed.
        #[arg(long)]
        peek: bool,
    },
    /// Print retained output; with -f, follow it until the task ends.
    ///
    /// Output dropped while following (a task faster than the reader, beyond the retain cap)
    /// is noted on stderr and makes the exit status 3.
    #[command(after_help = "Example:\n  procyard-bgtask tail -f ID")]
    Tail {
        /// Task id.
        id: String,
        /// Follow new output until the stream ends or the task exits.
        #[arg(short = 'f', long)]
        follow: bool,
        /// stdout or stderr.
        #[arg(long, default_value = "stdout")]
        stream: StreamName,
        /// Start at most this many bytes before the end.
        #[arg(long, value_name = "N")]
        bytes: Option<u64>,
    },
    /// Write DATA (or stdin with `-`) to the task's stdin.
    #[command(
        after_help = "Example:\n  procyard-bgtask write ID 'one line without newline'\n  printf 'hello\\n' | procyard-bgtask write ID -"
    )]
    Write {
        /// Task id.
        id: String,
        /// The bytes, or `-` for this program's stdin (the default).
        data: Option<String>,
    },
    /// Close the task's stdin.
    #[command(name = "close-stdin", after_help = "Example:\n  procyard-bgtask close-stdin ID")]
    CloseStdin {
        /// Task id.
        id: String,
    },
    /// Send a signal to the task's process group (refused once it exited).
    #[command(after_help = "Example:\n  procyard-bgtask kill ID --signal HUP")]
    Kill {
        /// Task id.
        id: String,
        /// Signal name or number.
        #[arg(long, short = 's', default_value = "TERM")]
        signal: Signal,
    },
    /// SIGSTOP the task's process group.
    #[command(after_help = "Example:\n  procyard-bgtask pause ID")]
    Pause {
        /// Task id.
        id: String,
    },
    /// SIGCONT the task's process group.
    #[command(after_help = "Example:\n  procyard-bgtask resume ID")]
    Resume {
        /// Task id.
        id: String,
    },
    /// Run a finished task again, keeping its output and offsets.
    #[command(after_help = "Example:\n  procyard-bgtask restart ID")]
    Restart {
        /// Task id.
        id: String,
    },
    /// Kill the task (INT, TERM, KILL with grace) and remove all its files.
    #[command(after_help = "Example:\n  procyard-bgtask delete ID")]
    Delete {
        /// Task id.
        id: String,
    },
    /// Merge metadata KEY=VALUE pairs (VALUE JSON or string; null removes the key).
    #[command(after_help = "Example:\n  procyard-bgtask meta ID owner=alice tags='[\"a\",\"b\"]'")]
    Meta {
        /// Task id.
        id: String,
        /// KEY=VALUE pairs.
        #[arg(required = true, value_name = "K=V")]
        pairs: Vec<String>,
    },
    /// Print the datagrams the task sent on its data channel, as JSON lines.
    #[command(after_help = "Example:\n  procyard-bgtask data ID --peek")]
    Data {
        /// Task id.
        id: String,
        /// Leave them in the supervisor.
        #[arg(long)]
        peek: bool,
    },
    /// From inside a task: merge KEY=VALUE pairs into the task's own metadata.
    #[command(
        name = "task-meta",
        after_help = "Example (in a task's script):\n  procyard-bgtask task-meta progress=50"
    )]
    TaskMeta {
        /// KEY=VALUE pairs.
        #[arg(required = true, value_name = "K=V")]
        pairs: Vec<String>,
    },
    /// From inside a task: send a message (JSON, or a string) on the data channel.
    #[command(
        name = "task-send",
        after_help = "Example (in a task's script):\n  procyard-bgtask task-send '{\"step\": 3}'"
    )]
    TaskSend {
        /// The message.
        message: String,
    },
    /// Internal: supervisor start-up for multi-threaded library callers.
    #[command(name = "__supervise", hide = true)]
    Supervise,
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "__supervise") {
        return ExitCode::from(procyard_bgtask::supervise_from_stdio() as u8);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if matches!(cli.command, Cmd::Supervise) {
        return ExitCode::from(procyard_bgtask::supervise_from_stdio() as u8);
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
            let mut msg = format!("{e}");
            for cause in e.chain().skip(1) {
                msg.push_str(&format!(": {cause}"));
            }
            eprintln!("procyard-bgtask: {msg}");
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
    anyhow!(error_chain(&e))
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
                let chunk = match task.stream(stream).read_request(
                    at,
                    remaining.min(MAX_READ),
                    consume,
                    false,
                ) {
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
            let info = task.stream(stream).info().map_err(lib)?;
            let mut at = match bytes {
                Some(n) => info.limit.saturating_sub(n).max(info.start),
                None => info.start,
            };
            let mut gap = Gap::new(&id, stream);
            loop {
                let chunk = task
                    .stream(stream)
                    .read_request(Some(at), MAX_READ, false, follow)
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
        Cmd::Kill { id, signal } => pool.task(&id).map_err(lib)?.kill(signal).map_err(lib)?,
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

/// Exit status of `read` and `tail` when bytes asked for had been dropped.
const EXIT_GAP: u8 = 3;

/// Bytes a reader asked for that were dropped before it could read them: the bytes written to
/// stdout are not contiguous with what was asked for.
#[derive(Debug)]
struct Gap {
    id: String,
    stream: StreamName,
    dropped: u64,
    /// Where output resumed after the first gap.
    resumed_at: u64,
}

impl Gap {
    fn new(id: &str, stream: StreamName) -> Gap {
        Gap { id: id.to_owned(), stream, dropped: 0, resumed_at: 0 }
    }

    fn note(&mut self, chunk: &procyard_bgtask::Chunk) {
        if chunk.dropped > 0 {
            if self.dropped == 0 {
                self.resumed_at = chunk.offset;
            }
            self.dropped += chunk.dropped;
        }
    }

    /// Fails with the gap, if there was one.
    fn check(self) -> Result<()> {
        if self.dropped == 0 { Ok(()) } else { Err(self.into()) }
    }
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "task {} {}: {} bytes asked for were dropped (beyond the retain cap) before they \
             could be read; the output written resumes at offset {}",
            self.id,
            self.stream.as_str(),
            self.dropped,
            self.resumed_at
        )
    }
}

impl std::error::Error for Gap {}

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
    let path = pool.dir().join(format!("{id}.{}.log", stream.as_str()));
    let mut file =
        std::fs::File::open(&path).with_context(|| format!("unable to open {}", path.display()))?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))?;
    std::io::copy(&mut file.take(count), out)?;
    Ok(())
}

/// Standard output, whose "broken pipe" errors say that it was stdout that closed (and not,
/// say, a supervisor's socket), so `main` can end quietly.
struct Stdout(std::io::StdoutLock<'static>);

/// The payload of a stdout write error meaning the reader is gone.
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

fn is_stdout_closed(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<StdoutClosed>())
}

fn mark_closed(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(mark_closed)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf).map_err(mark_closed)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(mark_closed)
    }
}

fn print_table(out: &mut dyn Write, records: &[TaskRecord]) -> std::io::Result<()> {
    writeln!(out, "{:<32}  {:<18}  {:>7}  {:<30}  META", "ID", "STATUS", "PID", "COMMAND")?;
    for r in records {
        let mut cmd = r.command.join(" ");
        if cmd.chars().count() > 30 {
            cmd = cmd.chars().take(27).collect::<String>() + "...";
        }
        writeln!(
            out,
            "{:<32}  {:<18}  {:>7}  {:<30}  {}",
            r.id,
            r.status.to_string(),
            r.pid.map_or("-".into(), |p| p.to_string()),
            cmd,
            serde_json::Value::Object(r.meta.clone())
        )?;
    }
    Ok(())
}
