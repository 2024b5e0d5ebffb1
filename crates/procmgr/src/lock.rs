//! [`NamedLock`]: an inter-process lock (`flock`) for tasks that must not run at once.

use std::path::{Path, PathBuf};

use procyard_core::FileLock;

use crate::{Error, Result};

/// A lock named by a file in a directory shared by the processes that contend for it. The
/// kernel releases it when its holder dies, so a crashed task never leaves it stuck.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// use procyard_procmgr::NamedLock;
/// let lock = NamedLock::new(dir.path(), "reindex")?;
/// let guard = lock.lock()?;
/// assert!(lock.try_lock()?.is_none()); // a second holder (even in this process) waits
/// drop(guard);
/// assert!(lock.try_lock()?.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct NamedLock {
    path: PathBuf,
}

/// A held [`NamedLock`]; dropping it releases the lock.
#[derive(Debug)]
pub struct LockGuard {
    _lock: FileLock,
}

impl NamedLock {
    /// The lock `name` (no `/`, not empty) kept as `DIR/NAME.lock`.
    pub fn new(dir: impl AsRef<Path>, name: &str) -> Result<NamedLock> {
        if name.is_empty() || name.contains('/') || name.contains('\0') || name == ".." {
            return Err(Error::InvalidLockName { name: name.to_owned() });
        }
        Ok(NamedLock { path: dir.as_ref().join(format!("{name}.lock")) })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock, waiting for its holder to release it.
    pub fn lock(&self) -> Result<LockGuard> {
        FileLock::exclusive(&self.path)
            .map(|lock| LockGuard { _lock: lock })
            .map_err(|source| Error::Lock { path: self.path.clone(), source })
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Result<Option<LockGuard>> {
        FileLock::try_exclusive(&self.path)
            .map(|lock| lock.map(|lock| LockGuard { _lock: lock }))
            .map_err(|source| Error::Lock { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", "a/b", "..", "a\0b"] {
            assert!(matches!(NamedLock::new("/tmp", bad), Err(Error::InvalidLockName { .. })));
        }
        let lock = NamedLock::new("/tmp", "x").unwrap();
        assert_eq!(lock.path(), Path::new("/tmp/x.lock"));
    }
}
