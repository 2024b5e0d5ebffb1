//! The queue's files on disk: created private whatever the umask, and the identity of the
//! file a daemon serves, so a file deleted or replaced under it is noticed.
//!
//! SQLite gives the `-wal` and `-shm` files it creates the mode of the database file, so
//! creating the database 0600 ourselves, before SQLite opens it, makes every file of the queue
//! 0600. Files of an existing queue that other users can read (made by an older version, or
//! by hand) are tightened when they are ours.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::queue::FileChange;
use crate::{Error, Result};

/// How often, at most, a daemon compares the file at the queue's path with the one it serves.
const IDENTITY_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The files that belong to the queue at `path`: the database, its WAL and shared-memory
/// files, and the daemon's lock.
pub(super) fn queue_files(path: &Path) -> [PathBuf; 4] {
    let with = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    [path.to_owned(), with("-wal"), with("-shm"), with(".lock")]
}

/// Creates the queue's directory (and any missing parent) 0700; warns when an existing one
/// lets the group or others in.
pub(super) fn prepare_dir(path: &Path) -> Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else { return Ok(()) };
    match std::fs::metadata(dir) {
        Ok(meta) => {
            if meta.is_dir() && meta.mode() & 0o077 != 0 {
                tracing::warn!(
                    directory = %dir.display(),
                    mode = format!("{:04o}", meta.mode() & 0o7777),
                    "the queue's directory is open to other users: they can see its files (make it 0700)"
                );
            }
            return Ok(());
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("inspect directory", dir, e)),
    }
    let missing: Vec<&Path> =
        dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).collect();
    for d in missing.into_iter().rev() {
        match DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => std::fs::set_permissions(d, Permissions::from_mode(0o700))
                .map_err(|e| Error::io("set the mode of directory", d, e))?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create directory", d, e)),
        }
    }
    Ok(())
}

/// Creates the database file 0600 if it does not exist yet (an empty file is an empty SQLite
/// database), so SQLite never creates it, or its companions, with the umask's mode.
pub(super) fn create_private(path: &Path) -> Result<()> {
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path);
    match created {
        Ok(file) => file
            .set_permissions(Permissions::from_mode(0o600))
            .map_err(|e| Error::io("set the mode of", path, e)),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("create", path, e)),
    }
}

/// Makes this user's files of the queue 0600 where other users could read or write them.
pub(super) fn tighten(path: &Path) {
    let me = rustix::process::geteuid().as_raw();
    for file in queue_files(path) {
        let Ok(meta) = std::fs::symlink_metadata(&file) else { continue };
        if !meta.is_file() || meta.uid() != me || meta.mode() & 0o077 == 0 {
            continue;
        }
        match std::fs::set_permissions(&file, Permissions::from_mode(0o600)) {
            Ok(()) => tracing::warn!(
                file = %file.display(),
                was = format!("{:04o}", meta.mode() & 0o7777),
                "a queue file was readable by other users: made it 0600"
            ),
            Err(e) => tracing::warn!(
                file = %file.display(),
                error = %e,
                "a queue file is readable by other users and its mode cannot be changed"
            ),
        }
    }
}

/// Runs `PRAGMA quick_check` (every page and index structure, not the content of indexes):
/// a file with damaged pages behind a valid header is refused with [`Error::QueueCorrupt`]
/// instead of failing every claim later. The check reads every page of the file, so it runs
/// on a connection of its own, closed after it: on the daemon's connection it filled the
/// page cache (up to its 2 MiB) with pages the daemon never needs, and a history of a
/// million jobs cost the daemon that much memory for as long as it ran.
pub(super) fn quick_check(conn: &rusqlite::Connection, path: &Path) -> Result<()> {
    let corrupt = |report: String| Error::QueueCorrupt { path: path.to_owned(), report };
    let rows: rusqlite::Result<Vec<String>> = conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect());
    match rows {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => Ok(()),
        Ok(rows) => Err(corrupt(format!("quick_check: {}", rows.join("; ")))),
        Err(e)
            if matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            ) =>
        {
            Err(corrupt(e.to_string()))
        }
        Err(e) => Err(Error::queue("check the integrity of", path, e)),
    }
}

/// The file a daemon serves (device and inode), compared with whatever the path names now.
#[derive(Debug)]
pub(super) struct FileIdentity {
    dev: u64,
    ino: u64,
    next_check: Instant,
}

impl FileIdentity {
    /// The identity of the file at `path` now.
    pub(super) fn of(path: &Path) -> Result<FileIdentity> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io("inspect", path, e))?;
        Ok(FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            next_check: Instant::now() + IDENTITY_CHECK_EVERY,
        })
    }

    /// Whether `path` still names the file: `Err(change)` when it was deleted or replaced.
    /// Looks at most once per second unless `now_please`. A path that cannot be inspected
    /// for another reason (a permission change) is given the benefit of the doubt.
    pub(super) fn check(&mut self, path: &Path, now_please: bool) -> Result<(), FileChange> {
        let now = Instant::now();
        if !now_please && now < self.next_check {
            return Ok(());
        }
        self.next_check = now + IDENTITY_CHECK_EVERY;
        match std::fs::metadata(path) {
            Ok(meta) if (meta.dev(), meta.ino()) == (self.dev, self.ino) => Ok(()),
            Ok(_) => Err(FileChange::Replaced),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(FileChange::Deleted),
            Err(e) => {
                tracing::debug!(queue = %path.display(), error = %e, "unable to inspect the queue file");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_whatever_the_umask_and_replacement_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/q.db");
        prepare_dir(&path).unwrap();
        create_private(&path).unwrap();
        for p in [dir.path().join("a"), dir.path().join("a/b")] {
            assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o700, "{}", p.display());
        }
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let mut id = FileIdentity::of(&path).unwrap();
        assert_eq!(id.check(&path, true), Ok(()));
        let other = dir.path().join("a/b/other");
        std::fs::write(&other, b"").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert_eq!(id.check(&path, true), Err(FileChange::Replaced));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(id.check(&path, true), Err(FileChange::Deleted));
    }
}
