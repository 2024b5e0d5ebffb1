//! Registered functions and the worker mode that runs them ([`Registry`], [`init`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::task::panic_message;
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

type Entry = Box<dyn Fn(Value, &mut Endpoint) -> Result<Value, String> + Send + Sync>;

/// Functions that [`Task::function`](crate::Task::function) can name, keyed by name.
///
/// Build the same registry in every run of the program (the parent names a function, a
/// re-executed copy of the binary looks it up) and hand it to [`init`].
#[derive(Default)]
pub struct Registry {
    functions: HashMap<String, Entry>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `function` as `name`. Its arguments arrive deserialized from JSON; its value
    /// or error message becomes the task's [`Outcome`](crate::Outcome).
    pub fn register<A, R, E>(
        &mut self,
        name: &str,
        function: fn(A, &mut Endpoint) -> std::result::Result<R, E>,
    ) -> &mut Registry
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        E: fmt::Display + 'static,
    {
        let entry: Entry = Box::new(move |args, endpoint| {
            let args: A = serde_json::from_value(args)
                .map_err(|e| format!("invalid arguments for this function: {e}"))?;
            match function(args, endpoint) {
                Ok(v) => serde_json::to_value(v)
                    .map_err(|e| format!("unable to serialize the function's value: {e}")),
                Err(e) => Err(e.to_string()),
            }
        });
        self.functions.insert(name.to_owned(), entry);
        self
    }

    /// Whether a function is registered as `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    fn run(&self, name: &str, args: &str, endpoint: &mut Endpoint) -> Result<Value, String> {
        let entry =
            self.functions.get(name).ok_or_else(|| format!("no function registered as {name}"))?;
        let args: Value =
            serde_json::from_str(args).map_err(|e| format!("invalid JSON arguments: {e}"))?;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry(args, endpoint))) {
            Ok(result) => result,
            Err(payload) => Err(panic_message(payload.as_ref())),
        }
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.functions.keys().collect();
        names.sort();
        f.debug_struct("Registry").field("functions", &names).finish()
    }
}

/// Call first thing in `main`. In a normal run it returns at once. In a process that a
/// manager started for a [`Task::function`](crate::Task::function), it runs that function,
/// reports its outcome to the parent and exits without returning.
///
/// A program that forgets it gets [`Outcome::InitNotCalled`](crate::Outcome::InitNotCalled)
/// as the outcome of its function tasks: the process started for the task runs `main` again,
/// and when it makes a [`ProcessManager`](crate::ProcessManager) (a scheduler or a server makes
/// one too) it exits at once, saying why on stderr, instead of starting another copy.
pub fn init(registry: &Registry) {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new(WORKER_FLAG)) {
        return;
    }
    INIT_RUNS_FUNCTION.store(true, Ordering::Relaxed);
    let name = args.next().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let fn_args = args.next().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let code = match run_worker(registry, &name, &fn_args) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "procyard-procmgr: worker for {name}: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// The worker's endpoint arrives as its stdin (a pipe's write end); stdin becomes
/// `/dev/null` again before the function runs.
fn run_worker(registry: &Registry, name: &str, args: &str) -> Result<()> {
    let endpoint_fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::os("take the endpoint from stdin", e))?;
    let null =
        std::fs::File::open("/dev/null").map_err(|e| Error::os("open /dev/null for stdin", e))?;
    rustix::stdio::dup2_stdin(&null).map_err(|e| Error::os("reset stdin", e))?;
    drop(null);
    let mut endpoint = Endpoint::new(endpoint_fd);
    let result = registry.run(name, args, &mut endpoint);
    endpoint.finish(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u64, _: &mut Endpoint) -> std::result::Result<u64, String> {
        Ok(x * 2)
    }

    #[test]
    fn registry_runs_and_reports() {
        let mut r = Registry::new();
        r.register("double", double);
        assert!(r.contains("double"));
        assert!(format!("{r:?}").contains("double"));
        let (_read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let mut ep = Endpoint::new(write);
        assert_eq!(r.run("double", "21", &mut ep), Ok(Value::from(42)));
        assert!(r.run("double", "\"x\"", &mut ep).unwrap_err().contains("invalid arguments"));
        assert!(r.run("nope", "1", &mut ep).unwrap_err().contains("no function registered"));
        assert!(r.run("double", "{", &mut ep).unwrap_err().contains("invalid JSON"));
    }
}
