//! Trusting a state file before believing it: the file, its lock file and their directory must
//! be ours (owned by the caller's effective uid or by root, not writable by others) and the
//! files regular files. A forged state would otherwise make `kill` signal a process of the
//! forger's choosing, and a FIFO at the path would make every command hang.

use std::io::ErrorKind;
use std::path::Path;

use procyard_core::owner;

use crate::{Error, Result};

/// Maps a core error to ours: a refusal to trust a file (wrong type, foreign owner, loose
/// mode) is [`Error::UnsafeStateFile`], anything else a system error while doing `action`.
pub(crate) fn sys<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(procyard_core::Error) -> Error + 'a {
    move |source| match source {
        procyard_core::Error::WrongFileType { .. }
        | procyard_core::Error::NotOwned { .. }
        | procyard_core::Error::InsecurePermissions { .. } => {
            Error::UnsafeStateFile { path: path.to_owned(), source }
        }
        source => Error::Sys { action, path: path.to_owned(), source },
    }
}

/// Refuses a state directory that another user owns or could rewrite (group- or
/// world-writable without the sticky bit, which lets others replace our files). A missing
/// directory passes: the operation that needs it then fails (or reads "absent") on its own.
pub(crate) fn check_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(meta) => owner::check_owned(dir, &meta).map_err(sys("trust the state directory", path)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(sys("inspect the state directory", path)(procyard_core::Error::Path {
            action: "inspect",
            path: dir.to_owned(),
            source: e,
        })),
    }
}

/// Whether `file` exists (`false` when absent); refuses anything there but a regular file of
/// ours, looked at without following a symbolic link. Errors name the state file `path`.
///
/// The open that follows checks again through its descriptor; this first look gives a clear
/// refusal for what cannot even be opened (a socket) or must not be (a FIFO, a device).
pub(crate) fn check_regular(file: &Path, path: &Path) -> Result<bool> {
    let meta = match std::fs::symlink_metadata(file) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(sys("inspect the state", path)(procyard_core::Error::Path {
                action: "inspect",
                path: file.to_owned(),
                source,
            }));
        }
    };
    if !meta.is_file() {
        return Err(Error::UnsafeStateFile {
            path: path.to_owned(),
            source: procyard_core::Error::WrongFileType {
                path: file.to_owned(),
                expected: "regular file",
                found: owner::file_type_name(&meta),
            },
        });
    }
    owner::check_owned(file, &meta).map_err(sys("trust the state", path))?;
    Ok(true)
}
