//! How [`TaskPool::spawn`](crate::TaskPool::spawn) starts a supervisor: which program it
//! executes (found by core's one companion rule), or whether it forks; and the execution
//! itself (a spawn request on the program's stdin, its answer on stdout, within a time limit).

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use procyard_core::companion::{Companion, find_companion};
use procyard_core::{Command, Deadline, Stdio, frame};

use crate::entry::SUPERVISOR_ENTRY_ARG;
use crate::handoff::{SuperviseReply, SuperviseRequest};
use crate::layout::{BIN_ENV, CLI_BIN, SUPERVISOR_BIN};
use crate::{Error, Result};

/// The supervisor programs as core's companion lookup knows them: the small one first, then
/// the CLI (which has the same hidden mode). The install command is run in procyard's source
/// tree.
pub(crate) const SUPERVISOR: Companion = Companion {
    names: &[SUPERVISOR_BIN, CLI_BIN],
    env_var: BIN_ENV,
    install: "cargo install --locked --path crates/bgtask",
};

/// How long `spawn` waits for the executed supervisor program to answer (it answers once the
/// task runs, or with the reason it cannot).
const REPLY_LIMIT: Duration = Duration::from_secs(30);

/// How [`TaskPool::spawn`](crate::TaskPool::spawn) starts a supervisor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Launch {
    /// Execute `procyard-bgtask-supervise` when it is found (the smallest supervisor);
    /// otherwise fork when this program is the `procyard-bgtask` CLI (single-threaded),
    /// execute the `procyard-bgtask` binary if one is found (a supervisor forked from a large
    /// program would carry its memory), execute this program if its `main` called
    /// [`run_if_supervisor`](crate::run_if_supervisor), and fork if single-threaded. A
    /// multi-threaded program with none of these gets [`Error::NoSupervisorBinary`].
    #[default]
    Auto,
    /// Always fork (daemonize) this process; refused if it has several threads.
    Fork,
    /// Always execute a supervisor program: the one found as for `Auto`, else this program
    /// if its `main` called [`run_if_supervisor`](crate::run_if_supervisor).
    Exec,
}

/// What to do to start a supervisor.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// Execute `program` with `arg` (its supervisor mode).
    Exec { program: PathBuf, arg: &'static str },
    /// Fork (daemonize) this process.
    Fork,
}

/// What the lookup found, and the facts about this process the choice depends on.
#[derive(Debug)]
pub(crate) struct Situation {
    /// The program set on the pool, or found by [`SUPERVISOR`]'s rule.
    pub(crate) found: std::result::Result<PathBuf, procyard_core::Error>,
    /// Whether [`BIN_ENV`] names a program (then a missing one is an error, never replaced).
    pub(crate) env_named: bool,
    /// This program, when its `main` called `run_if_supervisor` (it can run supervisors).
    pub(crate) embedded: Option<PathBuf>,
    pub(crate) single_threaded: bool,
    /// Whether this program is the `procyard-bgtask` CLI.
    pub(crate) is_cli: bool,
}

impl Situation {
    /// Looks everything up: `configured` (set on the pool) wins over the companion rule.
    pub(crate) fn look(configured: Option<&Path>) -> Result<Situation> {
        let found = match configured {
            Some(program) => Ok(program.to_owned()),
            None => find_companion(&SUPERVISOR),
        };
        let embedded = crate::entry::entry_present()
            .then(std::env::current_exe)
            .and_then(std::result::Result::ok);
        Ok(Situation {
            found,
            env_named: std::env::var_os(BIN_ENV).is_some_and(|v| !v.is_empty()),
            embedded,
            single_threaded: procyard_core::fork::thread_count()? == 1,
            is_cli: procyard_core::companion::current_exe_is(&[CLI_BIN]),
        })
    }
}

/// The choice [`Launch`] describes, made on what [`Situation::look`] found (pure).
pub(crate) fn choose(launch: Launch, situation: Situation) -> Result<Start> {
    let Situation { found, env_named, embedded, single_threaded, is_cli } = situation;
    let exec = |program| Start::Exec { program, arg: "__supervise" };
    match (launch, found) {
        (Launch::Fork, _) => Ok(Start::Fork),
        (Launch::Exec, Ok(program)) => Ok(exec(program)),
        (Launch::Auto, Ok(program)) => {
            let small = program.file_name().is_some_and(|n| n == SUPERVISOR_BIN);
            Ok(if small || !(single_threaded && is_cli) { exec(program) } else { Start::Fork })
        }
        // A program named by the variable and missing is an error to fix, never replaced.
        (_, Err(source)) if env_named => Err(Error::NoSupervisorBinary { source }),
        (_, Err(source)) => match embedded {
            Some(program) => Ok(Start::Exec { program, arg: SUPERVISOR_ENTRY_ARG }),
            None if launch == Launch::Auto && single_threaded => Ok(Start::Fork),
            None => Err(Error::NoSupervisorBinary { source }),
        },
    }
}

/// Executes `program arg`, sends it the spawn request and returns once it answered that the
/// task runs; its refusal, or its silence for [`REPLY_LIMIT`], is [`Error::Spawn`].
pub(crate) fn exec_supervisor(program: &Path, arg: &str, request: &SuperviseRequest) -> Result<()> {
    let command = request.options.command[0].clone();
    let failed = |message: String| Error::Spawn { program: command.clone(), message };
    let mut child = Command::new(program)
        .arg(arg)
        .stdin(Stdio::Pipe)
        .stdout(Stdio::Pipe)
        .stderr(Stdio::Inherit)
        .spawn()?;
    let (Some(stdin), Some(stdout)) = (child.take_stdin(), child.take_stdout()) else {
        let _ = child.kill_and_reap();
        return Err(failed("the supervisor program's pipes are missing".into()));
    };
    let mut stdin = std::fs::File::from(stdin);
    let sent = frame::write_frame(&mut stdin, request).and_then(|()| stdin.flush());
    drop(stdin);
    let deadline = Deadline::after(REPLY_LIMIT);
    let reply = read_reply(stdout, deadline);
    if !matches!(reply, Ok(Some(_))) {
        // Silent (or unreadable): it is not going to answer; it must not linger either.
        let _ = child.kill_and_reap();
    } else {
        let _ = child.wait();
    }
    match (reply, sent) {
        (Ok(Some(SuperviseReply { error: None })), _) => Ok(()),
        // Its own words first: a refusal can arrive before the request was written.
        (Ok(Some(SuperviseReply { error: Some(message) })), _) => Err(failed(message)),
        (_, Err(e)) => {
            Err(failed(format!("supervisor not reachable: {}", procyard_core::report(&e))))
        }
        (Ok(None), Ok(())) if deadline.is_expired() => {
            Err(failed(format!("{} did not answer within {REPLY_LIMIT:?}", program.display())))
        }
        (Ok(None), Ok(())) => {
            Err(failed(format!("{} exited without answering", program.display())))
        }
        (Err(e), Ok(())) => Err(failed(procyard_core::report(&e))),
    }
}

/// The answer on `stdout`: `Ok(None)` when none came before `deadline` (or before the end of
/// the pipe).
fn read_reply(
    stdout: OwnedFd,
    deadline: Deadline,
) -> std::result::Result<Option<SuperviseReply>, procyard_core::Error> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    loop {
        let remaining = deadline.remaining();
        if remaining.is_zero() {
            return Ok(None);
        }
        let ts = Timespec {
            tv_sec: remaining.as_secs().min(86_400) as i64,
            tv_nsec: i64::from(remaining.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&stdout, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(procyard_core::Error::Os { action: "poll", source: e.into() }),
        }
    }
    // Readable: the answer (one small frame, written whole) or the end of the pipe.
    frame::read_frame(&mut std::fs::File::from(stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing() -> procyard_core::Error {
        procyard_core::Error::CompanionNotFound {
            program: SUPERVISOR.names[0],
            env_var: SUPERVISOR.env_var,
            install: SUPERVISOR.install,
        }
    }

    fn situation(found: Option<&str>) -> Situation {
        Situation {
            found: found.map(PathBuf::from).ok_or_else(missing),
            env_named: false,
            embedded: None,
            single_threaded: false,
            is_cli: false,
        }
    }

    fn exec(program: &str) -> Start {
        Start::Exec { program: program.into(), arg: "__supervise" }
    }

    #[test]
    fn a_found_program_is_executed() {
        let small = "/bin/procyard-bgtask-supervise";
        assert_eq!(choose(Launch::Auto, situation(Some(small))).unwrap(), exec(small));
        assert_eq!(choose(Launch::Exec, situation(Some(small))).unwrap(), exec(small));
        assert_eq!(choose(Launch::Fork, situation(Some(small))).unwrap(), Start::Fork);
        // The single-threaded CLI forks rather than execute itself.
        let cli = "/bin/procyard-bgtask";
        let at_cli = Situation { single_threaded: true, is_cli: true, ..situation(Some(cli)) };
        assert_eq!(choose(Launch::Auto, at_cli).unwrap(), Start::Fork);
        assert_eq!(choose(Launch::Auto, situation(Some(cli))).unwrap(), exec(cli));
    }

    #[test]
    fn threads_without_a_program_get_the_companion_error() {
        for launch in [Launch::Auto, Launch::Exec] {
            match choose(launch, situation(None)) {
                Err(Error::NoSupervisorBinary {
                    source: procyard_core::Error::CompanionNotFound { env_var, .. },
                }) => assert_eq!(env_var, BIN_ENV),
                other => panic!("{launch:?}: {other:?}"),
            }
        }
        let single = Situation { single_threaded: true, ..situation(None) };
        assert_eq!(choose(Launch::Auto, single).unwrap(), Start::Fork);
    }

    #[test]
    fn the_embedded_entry_replaces_a_missing_program() {
        let me = Situation { embedded: Some("/app/me".into()), ..situation(None) };
        let expected = Start::Exec { program: "/app/me".into(), arg: SUPERVISOR_ENTRY_ARG };
        assert_eq!(choose(Launch::Auto, me).unwrap(), expected);
        let single = Situation {
            embedded: Some("/app/me".into()),
            single_threaded: true,
            ..situation(None)
        };
        assert_eq!(choose(Launch::Exec, single).unwrap(), expected);
        // Never when the variable names a program that is not there.
        let named =
            Situation { embedded: Some("/app/me".into()), env_named: true, ..situation(None) };
        assert!(matches!(choose(Launch::Auto, named), Err(Error::NoSupervisorBinary { .. })));
    }

    #[test]
    fn the_missing_program_error_says_what_to_do_once() {
        let err = Error::NoSupervisorBinary { source: missing() };
        let text = procyard_core::report(&err);
        for needed in [BIN_ENV, SUPERVISOR.install, "run_if_supervisor()"] {
            assert!(text.contains(needed), "{needed} missing from {text}");
        }
        assert_eq!(text.matches(BIN_ENV).count(), 1, "{text}");
    }
}
