//! The hidden supervisor entry point (`procyard-bgtask-supervise __supervise`, the CLI's
//! `__supervise` mode, and a user's program through [`run_if_supervisor`]): a spawn request
//! read from stdin, checked before anything acts on it, and the answer written to stdout.

use std::io::Write;
use std::path::Path;

use procyard_core::frame;

use crate::entry;
use crate::handoff::{SuperviseReply, SuperviseRequest};
use crate::layout::{SUPERVISOR_BIN, valid_id};
use crate::options::check_options;
use crate::pool::TaskPool;
use crate::{Error, Result};

/// Checks a request read by the hidden supervisor entry point before anything acts on it:
/// the id is one [`TaskPool::task`] would accept (no path tricks), the pool an absolute path
/// to an existing directory, the options startable.
fn check_request(req: &SuperviseRequest) -> Result<()> {
    if !valid_id(&req.id) {
        return Err(Error::InvalidId { id: req.id.clone() });
    }
    if !req.pool.is_absolute() || !req.pool.is_dir() {
        return Err(Error::InvalidSpawn {
            reason: format!("the pool {} is not an existing directory", req.pool.display()),
        });
    }
    check_options(&req.options)?;
    if req.options.cwd.as_ref().is_none_or(|d| !d.is_absolute()) {
        return Err(Error::InvalidSpawn {
            reason: "the working directory must be absolute".into(),
        });
    }
    Ok(())
}

/// Exit status of the hidden supervisor entry point for a request it refuses to act on.
const EXIT_INVALID_REQUEST: i32 = 2;

/// The hidden supervisor mode of the `procyard-bgtask` binary: reads a spawn request frame
/// on stdin, starts the supervisor (daemonized) and answers on stdout. Returns the exit code:
/// 0 once the task runs, 1 if it could not be started, 2 for a request that is missing,
/// malformed or invalid (said on stderr as well as in the answer). Must be called from a
/// single-threaded program (the binary's `main`).
pub fn supervise_from_stdio() -> i32 {
    let mut stdin = std::io::stdin().lock();
    let request = match frame::read_frame::<_, SuperviseRequest>(&mut stdin) {
        Ok(Some(req)) => check_request(&req).map(|()| req),
        Ok(None) => Err(Error::InvalidSpawn { reason: "no spawn request on stdin".into() }),
        Err(e) => Err(Error::InvalidSpawn { reason: format!("unreadable spawn request: {e}") }),
    };
    let (reply, code) = match request {
        Ok(req) => {
            let started =
                TaskPool::open(&req.pool).and_then(|p| p.spawn_forked(&req.id, &req.options));
            match started {
                Ok(()) => (SuperviseReply { error: None }, 0),
                Err(Error::Spawn { message, .. }) => (SuperviseReply { error: Some(message) }, 1),
                Err(e) => (SuperviseReply { error: Some(procyard_core::report(&e)) }, 1),
            }
        }
        Err(e) => {
            let message = procyard_core::report(&e);
            let program = std::env::args().next().unwrap_or_default();
            let program = Path::new(&program)
                .file_name()
                .map_or(SUPERVISOR_BIN.into(), |n| n.to_string_lossy());
            let _ = writeln!(std::io::stderr(), "{program}: {message}");
            (SuperviseReply { error: Some(message) }, EXIT_INVALID_REQUEST)
        }
    };
    let mut stdout = std::io::stdout().lock();
    match frame::write_frame(&mut stdout, &reply) {
        Ok(()) => code,
        Err(_) => code.max(1),
    }
}

/// Call this first in `main`: if the process was started to run a task's supervisor, it runs
/// it and exits (it never returns then); otherwise it returns at once and lets
/// [`TaskPool::spawn`](crate::TaskPool::spawn) start supervisors by executing this program
/// when no `procyard-bgtask-supervise` program is found ([`BIN_ENV`](crate::BIN_ENV), beside
/// the program, on `PATH`), so a project that only depends on the crate needs nothing
/// installed.
///
/// Call it before any thread starts: the supervisor detaches by forking, which a
/// multi-threaded process cannot do safely. Under `#[tokio::main]` the runtime's threads exist
/// before the body of `main` runs, so write a plain `fn main` that calls this and then builds
/// the runtime.
///
/// ```no_run
/// fn main() {
///     procyard_bgtask::run_if_supervisor();
///     // ... the program, threads and all; TaskPool::spawn works without any companion.
/// }
/// ```
pub fn run_if_supervisor() {
    if !entry::in_supervisor_mode() {
        entry::mark_present();
        return;
    }
    if procyard_core::fork::thread_count().is_ok_and(|n| n == 1) {
        let code = supervise_from_stdio();
        let _ = std::io::stdout().flush();
        std::process::exit(code)
    }
    entry::refuse(
        "procyard_bgtask::run_if_supervisor() ran after threads had started; call it first in \
         a plain `fn main`, before any thread or async runtime starts",
    )
}
