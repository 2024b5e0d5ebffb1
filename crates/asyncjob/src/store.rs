//! The state file on disk: read only when it is ours, written atomically by the monitor, and
//! guarded by the `flock` of its sidecar lock file (held by the monitor for its whole life, so
//! a free lock with a live state means the monitor died).

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use procyard_core::{Deadline, FileLock, owner, state_file};

use crate::state::{JobState, Status};
use crate::trust::{check_dir, check_regular, sys};
use crate::{Error, Result};

/// The sidecar lock file of a state file: `<state>.lock`.
pub(crate) fn lock_path(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The most a state file may hold: a state is a few hundred bytes.
pub(crate) const MAX_STATE_BYTES: u64 = 1 << 20;

/// Reads the state file as written (no `lost` inference); `None` when absent.
///
/// Before anything in it is believed, the file and its directory must be ours (owned by the
/// caller's effective uid or by root, not writable by others): a forged state would otherwise
/// make `kill` signal a process of the forger's choosing. The file is opened without following
/// a symbolic link and without blocking (a FIFO or a device at the path is refused, never
/// waited on), and checked through the open descriptor, so what is checked is what is read.
pub(crate) fn read_raw(path: &Path) -> Result<Option<JobState>> {
    check_dir(path)?;
    if !check_regular(path, path)? {
        return Ok(None);
    }
    let file = match state_file::open_regular(path, OpenOptions::new().read(true)) {
        Ok(file) => file,
        Err(procyard_core::Error::Path { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(sys("open the state", path)(e)),
    };
    let meta = file.metadata().map_err(|source| {
        sys("inspect the state", path)(procyard_core::Error::Path {
            action: "inspect",
            path: path.to_owned(),
            source,
        })
    })?;
    owner::check_owned(path, &meta).map_err(sys("trust the state", path))?;
    if meta.len() > MAX_STATE_BYTES {
        return Err(Error::StateTooLarge { path: path.to_owned(), size: meta.len() });
    }
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1).read_to_end(&mut bytes).map_err(|source| {
        sys("read the state", path)(procyard_core::Error::Path {
            action: "read",
            path: path.to_owned(),
            source,
        })
    })?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(Error::StateTooLarge { path: path.to_owned(), size: bytes.len() as u64 });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| Error::CorruptState { path: path.to_owned(), source })
}

/// Whether a monitor holds the state's lock. The lock file must be ours too (a stranger's
/// lock could make a dead job look alive) and a regular file (a FIFO there would block).
fn is_locked(path: &Path) -> Result<bool> {
    let lock = lock_path(path);
    if !check_regular(&lock, path)? {
        return Ok(false);
    }
    FileLock::is_locked(&lock).map_err(sys("probe the lock", path))
}

/// Reads the state, telling a dead monitor (`lost`) from a live one.
///
/// A non-terminal state whose lock is free belongs to a monitor that died, unless the monitor
/// recorded the end between the two reads: the file is read again after the lock probe, and
/// the monitor always writes its last state before it lets go of the lock.
pub(crate) fn read(path: &Path) -> Result<JobState> {
    let Some(state) = read_raw(path)? else {
        return Ok(JobState::absent());
    };
    if state.status.is_terminal() {
        return Ok(state);
    }
    if is_locked(path)? {
        return Ok(state);
    }
    match read_raw(path)? {
        None => Ok(JobState::absent()),
        Some(again) if again.status.is_terminal() => Ok(again),
        Some(mut again) => {
            again.status = Status::Lost;
            Ok(again)
        }
    }
}

/// Writes the state atomically (only the monitor calls this).
///
/// Readers always see a whole state (temp file + rename). Terminal states are also made
/// durable (fsync of the file and the directory, by `state_file::write_atomic`); `invoking`
/// and `running` are not, since they cannot outlive a crash anyway: after one, the monitor is
/// gone and the state reads as `lost` (or names another boot).
pub(crate) fn write(path: &Path, state: &JobState) -> Result<()> {
    let mut bytes = serde_json::to_vec(state)
        .map_err(|source| Error::CorruptState { path: path.to_owned(), source })?;
    bytes.push(b'\n');
    if state.status.is_terminal() {
        state_file::write_atomic(path, &bytes).map_err(sys("write the state", path))
    } else {
        state_file::write_atomic_volatile(path, &bytes).map_err(sys("write the state", path))
    }
}

/// How long [`try_lock`] keeps retrying while only readers' probes are in its way.
const PROBE_LIMIT: Duration = Duration::from_secs(5);

/// Takes the state file's lock without waiting; `Ok(None)` if another process holds it.
///
/// [`read`] probes the lock with a shared `flock` for a moment whenever it sees a live state,
/// and a probe makes the exclusive attempt fail as a holder would. So a failed attempt is
/// checked with a probe of our own: a shared lock is granted unless someone holds the lock
/// exclusively (a `start` or its monitor, a `reap`); if it is granted, only probes were in the
/// way and the attempt is repeated (for at most [`PROBE_LIMIT`]).
///
/// A `reap` removes the lock file while holding the lock, so after locking, the path must
/// still name the file that was locked; otherwise the lock is on an orphaned inode and the
/// attempt is repeated.
///
/// The directory and the lock file must be ours (see [`read_raw`]); a lock path that is not a
/// regular file is refused without blocking.
pub(crate) fn try_lock(path: &Path) -> Result<Option<FileLock>> {
    check_dir(path)?;
    let lock = lock_path(path);
    check_regular(&lock, path)?;
    let probes_until = Deadline::after(PROBE_LIMIT);
    loop {
        let Some(held) = FileLock::try_exclusive(&lock).map_err(sys("lock the state", path))?
        else {
            let held_exclusively = is_locked(path)?;
            if held_exclusively || probes_until.is_expired() {
                return Ok(None);
            }
            std::thread::yield_now();
            continue;
        };
        if let Ok(meta) = held.file().metadata() {
            owner::check_owned(&lock, &meta).map_err(sys("trust the lock file", path))?;
        }
        let ours = held.file().metadata().map(|m| (m.dev(), m.ino())).ok();
        let current = std::fs::metadata(&lock).map(|m| (m.dev(), m.ino())).ok();
        if ours.is_some() && ours == current {
            return Ok(Some(held));
        }
    }
}

/// Removes the state and its lock file; the caller holds the lock.
pub(crate) fn remove(path: &Path, _lock: &FileLock) -> Result<()> {
    state_file::remove(path).map_err(sys("remove the state", path))?;
    state_file::remove(lock_path(path)).map_err(sys("remove the lock file", path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_probing_the_lock_do_not_make_it_look_taken() {
        // `read` probes the lock (a shared flock, for a moment) whenever it sees a live
        // state; a `start` or `reap` meeting such a probe must not take it for a holder.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job");
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        /// Stops the prober however the attempts end (a failed assertion included).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stop = AtomicBool::new(false);
        let probes = AtomicU64::new(0);
        std::thread::scope(|scope| {
            let _stop = Stop(&stop);
            for _ in 0..2 {
                scope.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        FileLock::is_locked(lock_path(&path)).unwrap();
                        probes.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            // Attempts overlap many probes (the probers may start late).
            let deadline = procyard_core::Deadline::after(std::time::Duration::from_secs(60));
            let mut attempt = 0;
            while attempt < 2000 || probes.load(Ordering::Relaxed) < 20_000 {
                assert!(!deadline.is_expired(), "the probers never ran");
                let held = try_lock(&path).unwrap();
                assert!(held.is_some(), "attempt {attempt}: a probe was taken for a holder");
                attempt += 1;
            }
        });
        // A real holder still makes it busy.
        let held = try_lock(&path).unwrap().unwrap();
        assert!(try_lock(&path).unwrap().is_none());
        drop(held);
    }

    #[test]
    fn running_without_lock_holder_is_lost_and_lock_path_is_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job");
        assert_eq!(lock_path(&path), dir.path().join("job.lock"));
        let mut state = JobState::absent();
        state.status = Status::Running;
        state.pid = 1;
        write(&path, &state).unwrap();
        assert_eq!(read(&path).unwrap().status, Status::Lost);
        let held = try_lock(&path).unwrap().unwrap();
        assert_eq!(read(&path).unwrap().status, Status::Running);
        assert!(try_lock(&path).unwrap().is_none());
        remove(&path, &held).unwrap();
        assert_eq!(read(&path).unwrap().status, Status::Absent);
    }

    #[test]
    fn special_files_and_loose_modes_are_typed_refusals() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job");
        rustix::fs::mkfifoat(rustix::fs::CWD, &path, rustix::fs::Mode::from_raw_mode(0o600))
            .unwrap();
        // A FIFO with no writer: refused at once, never opened for a blocking read.
        let err = read(&path).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::UnsafeStateFile {
                    source: procyard_core::Error::WrongFileType { found: "FIFO", .. },
                    ..
                }
            ),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
        let mut state = JobState::absent();
        state.status = Status::Finished;
        write(&path, &state).unwrap();
        assert_eq!(read(&path).unwrap().status, Status::Finished);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = read(&path).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::UnsafeStateFile {
                    source: procyard_core::Error::InsecurePermissions { who: "others", .. },
                    ..
                }
            ),
            "{err}"
        );
        // The lock file is held to the same rules.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let lock = lock_path(&path);
        rustix::fs::mkfifoat(rustix::fs::CWD, &lock, rustix::fs::Mode::from_raw_mode(0o600))
            .unwrap();
        assert!(matches!(try_lock(&path), Err(Error::UnsafeStateFile { .. })));
    }
}
