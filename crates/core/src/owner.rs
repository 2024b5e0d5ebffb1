//! Ownership checks: act only on what the caller owns.
//!
//! A state file, a socket or a pool directory that another user could have written is refused
//! before anything in it is acted on (invariant 11): a forged state file in a shared directory
//! must not make root signal a process of the forger's choosing.

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::{Error, Result};

/// The sticky bit: in such a directory only a file's owner may rename or remove it.
const STICKY: u32 = 0o1000;

/// Refuses `path` unless it is owned by the caller's effective uid (or by root) and cannot be
/// written by group or others.
///
/// For a directory, being writable by others is fine when the sticky bit is set (as on `/tmp`):
/// other users can then add files but cannot replace ours. A group-writable directory is refused
/// unless it is sticky too.
pub fn check_owned(path: &Path, meta: &Metadata) -> Result<()> {
    let caller = rustix::process::geteuid().as_raw();
    let owner = meta.uid();
    if owner != caller && owner != 0 {
        return Err(Error::NotOwned { path: path.to_owned(), owner, caller });
    }
    let mode = meta.mode() & 0o7777;
    let sticky_dir = meta.is_dir() && mode & STICKY != 0;
    if !sticky_dir {
        if mode & 0o002 != 0 {
            return Err(Error::InsecurePermissions { path: path.to_owned(), mode, who: "others" });
        }
        if mode & 0o020 != 0 {
            return Err(Error::InsecurePermissions { path: path.to_owned(), mode, who: "group" });
        }
    }
    Ok(())
}

/// [`check_owned`] for `path` (not following a final symbolic link) and for the directory that
/// holds it. A missing `path` is fine as long as its directory passes.
pub fn check_owned_path(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir_meta = std::fs::metadata(dir).map_err(|e| Error::path("inspect directory", dir, e))?;
    check_owned(dir, &dir_meta)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) => check_owned(path, &meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::path("inspect", path, e)),
    }
}

/// A short name for the type of file `meta` describes, for error messages.
pub fn file_type_name(meta: &Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_file() {
        "regular file"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn own_private_file_passes_and_loose_modes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state");
        std::fs::write(&file, b"{}").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_owned_path(&file).unwrap();

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o622)).unwrap();
        let err = check_owned_path(&file).unwrap_err();
        assert!(matches!(err, Error::InsecurePermissions { who: "others", .. }), "{err}");

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o620)).unwrap();
        let err = check_owned_path(&file).unwrap_err();
        assert!(matches!(err, Error::InsecurePermissions { who: "group", .. }), "{err}");
    }

    #[test]
    fn world_writable_dir_needs_the_sticky_bit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_owned_path(&file).is_err());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_owned_path(&file).unwrap();
    }
}
