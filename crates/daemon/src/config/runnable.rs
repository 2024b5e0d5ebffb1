//! Checks that a valid config can also run on this machine: its programs exist and can be
//! executed, its working directories exist, and its control socket path is free for a socket.
//! `check-config` and `run` make them (not `publish`, which may run where the workers do not).
//! Each returns what is wrong as a message; the validator adds the file, line and field.

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Where a task's program is found: a name without `/` in the daemon's `PATH` (the spawn looks
/// there), a relative path against the task's working directory (else the daemon's), an
/// absolute path as it is. It must be an executable regular file.
pub(super) fn find_program(program: &str, cwd: Option<&Path>) -> Result<PathBuf, String> {
    if program.contains('/') {
        let path = Path::new(program);
        let full = match (path.is_absolute(), cwd) {
            (true, _) => path.to_owned(),
            (false, Some(dir)) => dir.join(path),
            (false, None) => std::env::current_dir()
                .map(|d| d.join(path))
                .map_err(|e| format!("unable to resolve {program}: {e}"))?,
        };
        return executable(&full).map(|()| full);
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&search) {
        let candidate = dir.join(program);
        if executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "program {program:?} is not found in PATH ({}): install it or give its full path",
        Path::new(&search).display()
    ))
}

fn executable(path: &Path) -> Result<(), String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err(format!("{shown} is not a regular file")),
        Ok(_) => rustix::fs::access(path, rustix::fs::Access::EXEC_OK)
            .map_err(|e| format!("{shown} cannot be executed: {e}")),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(format!("{shown} does not exist")),
        Err(e) => Err(format!("{shown} cannot be inspected: {e}")),
    }
}

/// A working directory must exist and be a directory we can enter.
pub(super) fn check_dir(dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(format!("{shown} is not a directory")),
        Ok(_) => rustix::fs::access(dir, rustix::fs::Access::EXEC_OK)
            .map_err(|e| format!("{shown} cannot be entered: {e}")),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(format!("{shown} does not exist")),
        Err(e) => Err(format!("{shown} cannot be inspected: {e}")),
    }
}

/// The control socket's path must be free or a socket: a stale one is replaced when the
/// daemon starts, anything else (a regular file — perhaps the queue itself) is never touched.
pub(super) fn check_socket(path: &Path) -> Result<(), String> {
    match procyard_core::socket::check_socket_path(path) {
        Ok(()) => Ok(()),
        Err(procyard_core::Error::WrongFileType { found, .. }) => Err(format!(
            "{} is a {found}, not a socket: the daemon never replaces it; name another path",
            path.display()
        )),
        Err(e) => Err(procyard_core::Report(&e).to_string()),
    }
}

/// Whether a string holds a NUL byte (no program, argument or path can).
pub(super) fn has_nul(s: impl AsRef<OsStr>) -> bool {
    s.as_ref().as_encoded_bytes().contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_directories_and_sockets() {
        assert!(find_program("sh", None).is_ok());
        let err = find_program("procyard-no-such-program", None).unwrap_err();
        assert!(err.contains("not found in PATH"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = find_program("./app", Some(dir.path())).unwrap_err();
        assert!(err.contains("app does not exist"), "{err}");
        let err = check_dir(&dir.path().join("nope")).unwrap_err();
        assert!(err.ends_with("nope does not exist"), "{err}");
        let file = dir.path().join("q.db");
        std::fs::write(&file, b"data").unwrap();
        let err = check_socket(&file).unwrap_err();
        assert!(err.contains("is a regular file, not a socket"), "{err}");
        assert!(check_socket(&dir.path().join("absent.sock")).is_ok());
        assert!(has_nul("a\0b") && !has_nul("ab"));
    }
}
