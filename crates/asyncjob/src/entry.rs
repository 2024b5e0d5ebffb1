//! The monitor host embedded in a user's own program, as [`AsyncJob::start`] sees it: whether
//! `main` called [`run_if_monitor`] (then a multi-threaded `start` may execute the program
//! itself to host the monitor when no `procyard-asyncjob` is installed), whether this process
//! was started to host one, and its refusal.
//!
//! A process started in that mode hosts the monitor and exits; one whose `main` did not call
//! [`run_if_monitor`] first and reached `start` refuses at once (it must never start another
//! monitor host: that would chain copies of the program without end), and its parent's error
//! says what `main` must do.
//!
//! [`AsyncJob::start`]: crate::AsyncJob::start
//! [`run_if_monitor`]: crate::run_if_monitor

use procyard_core::companion::EmbeddedEntry;

use crate::StartFailure;
use crate::monitor::StartReport;

/// The argument that makes a program host a monitor for a threaded caller of
/// [`AsyncJob::start`](crate::AsyncJob::start) (`PROGRAM __monitor-host SPEC`, the report pipe
/// on descriptor 3, the state lock on descriptor 4): the `procyard-asyncjob` binary, or a
/// program whose `main` calls [`run_if_monitor`](crate::run_if_monitor).
#[doc(hidden)]
pub const MONITOR_HOST_ARG: &str = "__monitor-host";

/// Whether `main` called [`run_if_monitor`](crate::run_if_monitor), and the refusal.
static ENTRY: EmbeddedEntry = EmbeddedEntry::new();

/// Notes that `main` called [`run_if_monitor`](crate::run_if_monitor) in a normal run.
pub(crate) fn mark_present() {
    ENTRY.mark_present();
}

/// Whether `main` called [`run_if_monitor`](crate::run_if_monitor) (so this program can host
/// monitors).
pub(crate) fn entry_present() -> bool {
    ENTRY.is_present()
}

/// The job spec, when this process was started to host a monitor.
pub(crate) fn monitor_mode_spec() -> Option<String> {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next(), args.next()) {
        (Some(mode), Some(spec), None) if mode == MONITOR_HOST_ARG => {
            Some(spec.to_string_lossy().into_owned())
        }
        _ => None,
    }
}

/// In a monitor-host process that reached `start`: refuses with the reason below.
pub(crate) fn refuse_nested_start() -> ! {
    refuse(
        "this program was started to host a procyard-asyncjob monitor, but its main did not \
         call procyard_asyncjob::run_if_monitor() first and reached AsyncJob::start",
    )
}

/// Says `message` on stderr and in the report its parent waits for (descriptor 3), and ends
/// the process.
pub(crate) fn refuse(message: &str) -> ! {
    ENTRY.refuse(message, |message| report_failure(StartFailure::Detach, message.to_owned()))
}

/// Reports a failure to start on descriptor 3, where the caller waits for the host's report.
pub(crate) fn report_failure(kind: StartFailure, message: String) {
    let text = serde_json::to_string(&StartReport { kind, message }).unwrap_or_default();
    report(&format!("err {text}"));
}

/// Writes the host's report line on descriptor 3.
pub(crate) fn report(line: &str) {
    if let Ok(writer) = procyard_core::ReadyWriter::inherited(3) {
        let _ = writer.notify(line);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_test_process_is_not_a_monitor_host() {
        assert_eq!(super::monitor_mode_spec(), None);
    }
}
