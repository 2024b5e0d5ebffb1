//! The supervisor entry embedded in a user's own program, as [`TaskPool::spawn`] sees it:
//! whether `main` called [`run_if_supervisor`] (then `spawn` may execute the program itself to
//! run a supervisor when no `procyard-bgtask-supervise` is installed), whether this process
//! was started to run one, and its refusal.
//!
//! A process started in that mode runs the supervisor and exits; one whose `main` did not call
//! [`run_if_supervisor`] first and reached `spawn` refuses at once (it must never start another
//! supervisor: that would chain copies of the program without end), and its parent's error
//! says what `main` must do.
//!
//! [`TaskPool::spawn`]: crate::TaskPool::spawn
//! [`run_if_supervisor`]: crate::run_if_supervisor

use std::io::Write;

use procyard_core::companion::EmbeddedEntry;
use procyard_core::frame;

use crate::handoff::{SuperviseReply, SuperviseRequest};

/// The argument with which [`TaskPool::spawn`](crate::TaskPool::spawn) executes the user's
/// own program to run a supervisor (see [`run_if_supervisor`](crate::run_if_supervisor)).
pub const SUPERVISOR_ENTRY_ARG: &str = "__procyard-bgtask-supervise";

/// Whether `main` called [`run_if_supervisor`](crate::run_if_supervisor), and the refusal.
static ENTRY: EmbeddedEntry = EmbeddedEntry::new();

/// Notes that `main` called [`run_if_supervisor`](crate::run_if_supervisor) in a normal run.
pub(crate) fn mark_present() {
    ENTRY.mark_present();
}

/// Whether `main` called [`run_if_supervisor`](crate::run_if_supervisor) (so this program can
/// run supervisors).
pub(crate) fn entry_present() -> bool {
    ENTRY.is_present()
}

/// Whether this process was started to run a supervisor.
pub(crate) fn in_supervisor_mode() -> bool {
    std::env::args_os().nth(1).is_some_and(|a| a == SUPERVISOR_ENTRY_ARG)
}

/// In a supervisor-mode process that reached `spawn`: refuses the request it was started
/// for and exits.
pub(crate) fn refuse_nested_spawn() -> ! {
    refuse(
        "this program was started to run a procyard-bgtask supervisor, but its main did not \
         call procyard_bgtask::run_if_supervisor() first and reached TaskPool::spawn",
    )
}

/// Reads the spawn request (so the parent's write does not fail first), says `message` on
/// stderr and in the answer, and ends the process.
pub(crate) fn refuse(message: &str) -> ! {
    let _ = frame::read_frame::<_, SuperviseRequest>(&mut std::io::stdin().lock());
    ENTRY.refuse(message, |message| {
        let reply = SuperviseReply { error: Some(message.to_owned()) };
        let mut stdout = std::io::stdout().lock();
        let _ = frame::write_frame(&mut stdout, &reply).and_then(|()| stdout.flush());
    })
}
