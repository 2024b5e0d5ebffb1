//! State files: atomic replacement (unique temp file, write, fsync, rename, fsync the
//! directory) and reads that tell "absent" from "corrupt".

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Atomically replaces `path` with `bytes` (mode 0600: state is private to its owner). A reader sees
/// either the old content or the new one, never a mix, and the new content survives a crash
/// once this returns.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

/// [`write_atomic`] with an explicit file mode.
pub fn write_atomic_mode(path: impl AsRef<Path>, bytes: &[u8], mode: u32) -> Result<()> {
    replace(path.as_ref(), bytes, mode, true)
}

/// Atomic for readers but not durable: unique temp file, write, rename — no fsync. For state
/// that means nothing after a crash (a live process's progress, which then reads as lost), where
/// the two fsyncs would cost milliseconds on every update.
pub fn write_atomic_volatile(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    replace(path.as_ref(), bytes, 0o600, false)
}

fn replace(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> Result<()> {
    let dir = parent_dir(path);
    let name = path.file_name().ok_or_else(|| {
        Error::path(
            "write",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| Error::path("create", &tmp, e))?;
        file.write_all(bytes).map_err(|e| Error::path("write", &tmp, e))?;
        if durable {
            file.sync_all().map_err(|e| Error::path("sync", &tmp, e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| Error::path("rename into place", path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    if durable { sync_dir(&dir) } else { Ok(()) }
}

/// Serializes `value` as pretty JSON and writes it with [`write_atomic`].
pub fn write_json_atomic<T: Serialize + ?Sized>(path: impl AsRef<Path>, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::Encode { source })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Reads a JSON state file: `Ok(None)` when the file does not exist,
/// [`Error::CorruptState`] when it exists but does not parse.
pub fn read_json<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<Option<T>> {
    let path = path.as_ref();
    let mut file = match open_regular(path, OpenOptions::new().read(true)) {
        Ok(f) => f,
        Err(Error::Path { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| Error::path("read", path, e))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| Error::CorruptState { path: path.to_owned(), source })
}

/// Opens `path` with `options` as a regular file only: never follows a final symbolic link
/// (`O_NOFOLLOW`), never blocks on a FIFO or device (`O_NONBLOCK` at open, cleared after), and
/// refuses anything that is not a regular file with [`Error::WrongFileType`] before reading
/// from it. A missing file is `Error::Path` with a `NotFound` source.
pub fn open_regular(path: impl AsRef<Path>, options: &mut OpenOptions) -> Result<File> {
    let path = path.as_ref();
    let file = options
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // O_NOFOLLOW on a symbolic link.
            Some(libc::ELOOP) => Error::WrongFileType {
                path: path.to_owned(),
                expected: "regular file",
                found: "symbolic link",
            },
            // A socket cannot be opened at all (ENXIO): say what is there instead.
            Some(libc::ENXIO) => match std::fs::symlink_metadata(path) {
                Ok(meta) if !meta.is_file() => Error::WrongFileType {
                    path: path.to_owned(),
                    expected: "regular file",
                    found: crate::owner::file_type_name(&meta),
                },
                _ => Error::path("open", path, e),
            },
            _ => Error::path("open", path, e),
        })?;
    let meta = file.metadata().map_err(|e| Error::path("inspect", path, e))?;
    if !meta.is_file() {
        return Err(Error::WrongFileType {
            path: path.to_owned(),
            expected: "regular file",
            found: crate::owner::file_type_name(&meta),
        });
    }
    let flags = rustix::fs::fcntl_getfl(&file).map_err(|e| Error::path("inspect", path, e))?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)
        .map_err(|e| Error::path("configure", path, e))?;
    Ok(file)
}

/// Removes a file; absent is fine. The directory is synced so the removal survives a crash.
pub fn remove(path: impl AsRef<Path>) -> Result<bool> {
    let path = path.as_ref();
    match std::fs::remove_file(path) {
        Ok(()) => {
            sync_dir(&parent_dir(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::path("remove", path, e)),
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| Error::path("open directory", dir, e))?;
    d.sync_all().map_err(|e| Error::path("sync directory", dir, e))
}

/// An exclusive `flock` on a file, held until dropped (or until the process dies, which the
/// kernel notices for us: a free lock with a non-terminal state means its holder is gone).
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    fn open(path: &Path) -> Result<File> {
        open_regular(
            path,
            OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600),
        )
    }

    /// Takes the lock, or `Ok(None)` if another holder has it. Creates the file if missing.
    pub fn try_exclusive(path: impl AsRef<Path>) -> Result<Option<FileLock>> {
        let path = path.as_ref();
        let file = FileLock::open(path)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(FileLock { file, path: path.to_owned() })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(Error::path("lock", path, e)),
        }
    }

    /// Takes the lock, waiting for the current holder to release it.
    pub fn exclusive(path: impl AsRef<Path>) -> Result<FileLock> {
        let path = path.as_ref();
        let file = FileLock::open(path)?;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
                Ok(()) => return Ok(FileLock { file, path: path.to_owned() }),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(Error::path("lock", path, e)),
            }
        }
    }

    /// Whether some holder has the lock right now (probes without keeping it). A missing
    /// file is unlocked.
    pub fn is_locked(path: impl AsRef<Path>) -> Result<bool> {
        let path = path.as_ref();
        let file = match open_regular(path, OpenOptions::new().read(true)) {
            Ok(f) => f,
            Err(Error::Path { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Ok(()) => Ok(false),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(true),
            Err(e) => Err(Error::path("probe lock", path, e)),
        }
    }

    /// The locked file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open lock file (its descriptor is close-on-exec).
    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn fifo_and_symlink_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("state");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o600))
            .unwrap();
        // With no writer, a blocking open of a FIFO would hang forever here.
        let err = read_json::<serde_json::Value>(&fifo).unwrap_err();
        assert!(matches!(err, Error::WrongFileType { found: "FIFO", .. }), "{err}");
        let err = FileLock::try_exclusive(&fifo).unwrap_err();
        assert!(matches!(err, Error::WrongFileType { found: "FIFO", .. }), "{err}");
        assert!(FileLock::is_locked(&fifo).is_err());

        let socket = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let err = read_json::<serde_json::Value>(&socket).unwrap_err();
        assert!(matches!(err, Error::WrongFileType { found: "socket", .. }), "{err}");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        let err = read_json::<serde_json::Value>(&link).unwrap_err();
        assert!(matches!(err, Error::WrongFileType { found: "symbolic link", .. }), "{err}");
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct S {
        n: u32,
    }

    #[test]
    fn absent_corrupt_and_present() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        assert_eq!(read_json::<S>(&p).unwrap(), None);
        std::fs::write(&p, b"{\"n\": ").unwrap();
        assert!(matches!(read_json::<S>(&p), Err(Error::CorruptState { .. })));
        write_json_atomic(&p, &S { n: 3 }).unwrap();
        assert_eq!(read_json::<S>(&p).unwrap(), Some(S { n: 3 }));
        write_atomic_volatile(&p, b"{\"n\": 4}").unwrap();
        assert_eq!(read_json::<S>(&p).unwrap(), Some(S { n: 4 }));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
        assert!(remove(&p).unwrap());
        assert!(!remove(&p).unwrap());
    }

    #[test]
    fn missing_directory_is_a_path_error() {
        let err = write_atomic("/nonexistent-procyard-dir/state", b"x").unwrap_err();
        assert!(matches!(err, Error::Path { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent-procyard-dir"), "{err}");
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        assert!(!FileLock::is_locked(&p).unwrap());
        let held = FileLock::try_exclusive(&p).unwrap().expect("free");
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
        assert!(FileLock::is_locked(&p).unwrap());
        drop(held);
        assert!(!FileLock::is_locked(&p).unwrap());
        assert!(FileLock::try_exclusive(&p).unwrap().is_some());
    }
}
