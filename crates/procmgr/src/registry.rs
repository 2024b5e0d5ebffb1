//! Registered functions and the worker mode that runs them ([`register`], [`init`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::task::{Function, panic_message};
use crate::{Endpoint, Error, Result};

/// The first argument that puts a re-executed binary in worker mode.
pub(crate) const WORKER_FLAG: &str = "--procyard-procmgr-worker";

/// The exit code of a process started for a function task whose `main` did not call
/// [`init`] first and reached a [`ProcessManager`](crate::ProcessManager) (`EX_CONFIG`).
pub(crate) const EXIT_INIT_NOT_CALLED: i32 = 78;

/// Set once [`init`] runs a function in worker mode: a manager made from there (by the
/// function itself) is one the program asked for.
static INIT_RUNS_FUNCTION: AtomicBool = AtomicBool::new(false);

/// Whether this process was started for a function task (its first argument is the flag).
fn started_for_a_function() -> bool {
    static STARTED: OnceLock<bool> = OnceLock::new();
    *STARTED.get_or_init(|| std::env::args_os().nth(1).as_deref() == Some(OsStr::new(WORKER_FLAG)))
}

/// In a process started for a function task whose `main` did not call [`init`] first and now
/// makes a manager (which would start the next copy of the binary, and so on): tells the
/// parent through the task's endpoint (its outcome becomes
/// [`Outcome::InitNotCalled`](crate::Outcome::InitNotCalled)), says why on stderr and exits
/// at once with [`EXIT_INIT_NOT_CALLED`]. Returns in every other process.
pub(crate) fn refuse_if_init_skipped() {
    if INIT_RUNS_FUNCTION.load(Ordering::Relaxed) || !started_for_a_function() {
        return;
    }
    let program = std::env::current_exe()
        .map_or_else(|_| "this program".to_owned(), |p| p.display().to_string());
    // The endpoint is the process's stdin until `init` takes it.
    if let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned() {
        let _ = Endpoint::new(fd).refuse_init_not_called(&program);
    }
    let _ = writeln!(
        std::io::stderr(),
        "procyard-procmgr: {program}: main does not call procyard_procmgr::init() first; this \
         process was started for a function task and exits instead of starting another"
    );
    procyard_core::exit_immediately(EXIT_INIT_NOT_CALLED)
}

type Entry = Arc<dyn Fn(Value, &mut Endpoint) -> Result<Value, String> + Send + Sync>;

fn registry() -> &'static Mutex<HashMap<String, Entry>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Entry>>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

fn lookup(name: &str) -> Option<Entry> {
    registry().lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
}

/// Registers `function` as `name` (replacing an earlier one) so that
/// [`Task::function`](crate::Task::function) can name it; returns its typed name for
/// [`Task::call`](crate::Task::call).
///
/// Register every function **before** calling [`init`] — the same shape as
/// procyard-resultworker's `register` and `init`: a process started for a function task is
/// this program run again, and it knows the functions registered by the time `main` reaches
/// `init`. Its arguments arrive deserialized from JSON; its value or error message becomes the
/// task's [`Outcome`](crate::Outcome), and so does a panic (as a task error).
pub fn register<A, R, E, F>(name: &str, function: F) -> Function<A, R>
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
    E: fmt::Display + 'static,
    F: Fn(A, &mut Endpoint) -> std::result::Result<R, E> + Send + Sync + 'static,
{
    let entry: Entry = Arc::new(move |args, endpoint| {
        let args: A = serde_json::from_value(args)
            .map_err(|e| format!("invalid arguments for this function: {e}"))?;
        match function(args, endpoint) {
            Ok(v) => serde_json::to_value(v)
                .map_err(|e| format!("unable to serialize the function's value: {e}")),
            Err(e) => Err(e.to_string()),
        }
    });
    registry().lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), entry);
    Function::new(name)
}

/// Whether a function is registered as `name`.
pub fn is_registered(name: &str) -> bool {
    lookup(name).is_some()
}

/// Why a registered function did not give a value.
#[derive(Debug, PartialEq)]
enum RunError {
    /// No function is registered under the name.
    Unknown,
    /// The function's own error (or bad arguments, or a panic).
    Failed(String),
}

fn run(name: &str, args: &str, endpoint: &mut Endpoint) -> Result<Value, RunError> {
    let entry = lookup(name).ok_or(RunError::Unknown)?;
    let args: Value = serde_json::from_str(args)
        .map_err(|e| RunError::Failed(format!("invalid JSON arguments: {e}")))?;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry(args, endpoint))) {
        Ok(result) => result.map_err(RunError::Failed),
        Err(payload) => Err(RunError::Failed(panic_message(payload.as_ref()))),
    }
}

/// Call first thing in `main`, after [`register`]ing the functions. In a normal run it
/// returns at once. In a process that a manager started for a
/// [`Task::function`](crate::Task::function), it runs that function, reports its outcome to
/// the parent and exits without returning.
///
/// A program that forgets it gets [`Outcome::InitNotCalled`](crate::Outcome::InitNotCalled)
/// as the outcome of its function tasks: the process started for the task runs `main` again,
/// and when it makes a [`ProcessManager`](crate::ProcessManager) (a scheduler or a server makes
/// one too) it exits at once, saying why on stderr, instead of starting another copy.
pub fn init() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new(WORKER_FLAG)) {
        return;
    }
    INIT_RUNS_FUNCTION.store(true, Ordering::Relaxed);
    let name = args.next().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let fn_args = args.next().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let code = match run_worker(&name, &fn_args) {
        Ok(()) => 0,
        Err(e) => {
            let e = procyard_core::Report(&e);
            let _ = writeln!(std::io::stderr(), "procyard-procmgr: worker for {name}: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// The worker's endpoint arrives as its stdin (a pipe's write end); stdin becomes
/// `/dev/null` again before the function runs.
fn run_worker(name: &str, args: &str) -> Result<()> {
    let endpoint_fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::os("take the endpoint from stdin", e))?;
    let null =
        std::fs::File::open("/dev/null").map_err(|e| Error::os("open /dev/null for stdin", e))?;
    rustix::stdio::dup2_stdin(&null).map_err(|e| Error::os("reset stdin", e))?;
    drop(null);
    let mut endpoint = Endpoint::new(endpoint_fd);
    match run(name, args, &mut endpoint) {
        Ok(value) => endpoint.finish(Ok(value)),
        Err(RunError::Failed(message)) => endpoint.finish(Err(message)),
        Err(RunError::Unknown) => endpoint.refuse_unknown_function(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u64, _: &mut Endpoint) -> std::result::Result<u64, String> {
        Ok(x * 2)
    }

    #[test]
    fn registered_functions_run_and_report() {
        let f = register("double", double);
        assert_eq!(f.name(), "double");
        assert!(is_registered("double"));
        let (_read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let mut ep = Endpoint::new(write);
        assert_eq!(run("double", "21", &mut ep), Ok(Value::from(42)));
        let failed = |r| matches!(r, Err(RunError::Failed(m)) if m.contains("invalid"));
        assert!(failed(run("double", "\"x\"", &mut ep)));
        assert!(failed(run("double", "{", &mut ep)));
        assert_eq!(run("nope", "1", &mut ep), Err(RunError::Unknown));
    }
}
