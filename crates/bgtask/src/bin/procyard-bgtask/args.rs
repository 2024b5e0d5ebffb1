//! The command line: every subcommand, its arguments and an example.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use procyard_bgtask::{StatusKind, StreamName};
use procyard_core::Signal;

/// Background tasks with their own supervisors, reachable over Unix sockets.
#[derive(Parser, Debug)]
#[command(
    name = "procyard-bgtask",
    version,
    after_help = "Example:\n  procyard-bgtask spawn --meta name=demo -- sh -c 'echo hi; sleep 60'\n  procyard-bgtask list --status running"
)]
pub(crate) struct Cli {
    /// Task pool directory (default: $PROCYARD_POOL, /run/procyard/bgtask for root,
    /// $XDG_RUNTIME_DIR/procyard/bgtask or /tmp/procyard-$UID/bgtask).
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) pool: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
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
        status: Vec<StatusKind>,
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
