//! Logging for procyard's binaries (feature `logs`): one setup for every `main`.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (else the binary's default level), coloured only
//! when stderr is a terminal — never escape codes in a log file or the journal — as text or as
//! one JSON object a line.

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// Installs the process's log subscriber: stderr, `RUST_LOG` or `default_filter` (e.g.
/// `"info"`), colour only on a terminal, in `format`. A second call changes nothing.
pub fn init_logs(default_filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
