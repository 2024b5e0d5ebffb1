//! Companion programs: the small binaries a library runs for its users (a task supervisor, a
//! job monitor), found by one rule.
//!
//! A library cannot always do its work inside the caller's process (forking a multi-threaded
//! program is unsound), so it executes a companion program instead. [`find_companion`] looks, in
//! order: the environment variable that names it (which must then point at a file), the
//! directory of the running executable, the directory above it (cargo puts tests and examples
//! in `target/*/deps` and `target/*/examples`), then each directory of `PATH`. Within a directory
//! the names are tried in the order given (the smallest program first). A project that depends
//! on the crate gets the companion with `cargo install` (the error says the exact command).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

/// A companion program as a library describes it.
#[derive(Debug, Clone, Copy)]
pub struct Companion {
    /// File names to look for, in order of preference within one directory.
    pub names: &'static [&'static str],
    /// The environment variable that names the program's path.
    pub env_var: &'static str,
    /// The command that installs it, for the error message (e.g. `cargo install --path
    /// crates/bgtask` run in procyard's source tree).
    pub install: &'static str,
}

/// Finds `companion` by the rule in the module docs, or [`Error::CompanionNotFound`], whose
/// message names the variable to set and the command that installs it.
pub fn find_companion(companion: &Companion) -> Result<PathBuf> {
    let not_found = || Error::CompanionNotFound {
        program: companion.names.first().copied().unwrap_or_default(),
        env_var: companion.env_var,
        install: companion.install,
    };
    if let Some(named) = std::env::var_os(companion.env_var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(named);
        return if is_executable_file(&path) {
            Ok(path)
        } else {
            Err(Error::CompanionMissing { env_var: companion.env_var, path })
        };
    }
    let exe = std::env::current_exe().ok();
    let near = exe.iter().flat_map(|exe| exe.ancestors().skip(1).take(2).map(Path::to_owned));
    let path = std::env::var_os("PATH").unwrap_or_default();
    near.chain(std::env::split_paths(&path))
        .flat_map(|dir| companion.names.iter().map(move |name| dir.join(name)))
        .find(|candidate| is_executable_file(candidate))
        .ok_or_else(not_found)
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether the running executable is one of `names` (a companion running itself).
pub fn current_exe_is(names: &[&str]) -> bool {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_name().map(OsStr::to_owned))
        .is_some_and(|name| names.iter().any(|n| name == OsStr::new(n)))
}

/// The companion entry embedded in a user's own program (`run_if_supervisor()`-style): whether
/// `main` entered it, and the refusal of a process started in companion mode whose `main` did
/// not — such a process must never start another companion (that would chain copies of the
/// program without end), so it says why and exits at once.
#[derive(Debug)]
pub struct EmbeddedEntry {
    present: AtomicBool,
    refusing: AtomicBool,
}

/// Exit code of a companion-mode process that refused (see [`EmbeddedEntry::refuse`]).
pub const EXIT_REFUSED: i32 = 3;

impl EmbeddedEntry {
    /// An entry nobody has entered yet (for a `static`).
    pub const fn new() -> EmbeddedEntry {
        EmbeddedEntry { present: AtomicBool::new(false), refusing: AtomicBool::new(false) }
    }

    /// Notes that `main` called the entry in a normal run.
    pub fn mark_present(&self) {
        self.present.store(true, Ordering::Relaxed);
    }

    /// Whether `main` called the entry (so the program can serve as its own companion).
    pub fn is_present(&self) -> bool {
        self.present.load(Ordering::Relaxed)
    }

    /// Ends a companion-mode process that must not go on: says `message` on stderr (after the
    /// program's name), lets `tell_parent` deliver it where the parent waits, and exits with
    /// [`EXIT_REFUSED`] without running exit handlers (other threads of a program never meant
    /// to run here may be anywhere). The first thread to get here does it; any other waits.
    pub fn refuse(&self, message: &str, tell_parent: impl FnOnce(&str)) -> ! {
        if self.refusing.swap(true, Ordering::SeqCst) {
            loop {
                std::thread::park();
            }
        }
        let program = std::env::current_exe().ok();
        let program = program.as_deref().and_then(Path::file_name).unwrap_or_default();
        let line = format!("{}: {message}\n", program.to_string_lossy());
        // One write, so a parent that kills this process once told cannot cut the line short.
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
        tell_parent(message);
        crate::exit_immediately(EXIT_REFUSED)
    }
}

impl Default for EmbeddedEntry {
    fn default() -> Self {
        EmbeddedEntry::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_says_what_to_set_and_install() {
        let companion = Companion {
            names: &["procyard-no-such-companion"],
            env_var: "PROCYARD_NO_SUCH_COMPANION_BIN",
            install: "cargo install procyard-nothing",
        };
        let err = find_companion(&companion).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("procyard-no-such-companion"), "{text}");
        assert!(text.contains("PROCYARD_NO_SUCH_COMPANION_BIN"), "{text}");
        assert!(text.contains("cargo install procyard-nothing"), "{text}");
    }

    #[test]
    fn finds_a_program_on_path() {
        let companion = Companion { names: &["sh"], env_var: "PROCYARD_TEST_SH_BIN", install: "x" };
        let found = find_companion(&companion).unwrap();
        assert!(found.ends_with("sh"), "{}", found.display());
    }
}
