//! Unix socket paths: bind without destroying anything, remove only what we bound.
//!
//! Binding a Unix socket needs its path to be free. The only thing ever unlinked to make room
//! is a *stale* socket: a socket that nothing answers on (a connection attempt is refused).
//! Anything else at the path — a regular file (perhaps a database), a directory, a FIFO — is an
//! error, and a socket that answers belongs to a live process: [`Error::SocketInUse`]
//! (invariant 12). This module is the one place in the workspace that unlinks socket paths.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::owner::file_type_name;
use crate::{Error, Result};

/// The path of a socket this process bound, with the identity (device, inode) of the socket
/// file it created, so [`SocketPath::remove`] never unlinks a file somebody else put there since.
#[derive(Debug)]
pub struct SocketPath {
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// The change time: an inode number can be reused by the next file created.
    ctime: (i64, i64),
}

impl SocketPath {
    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unlinks the socket file if the path still names the one we bound; leaves anything
    /// else in place. Returns whether it unlinked.
    pub fn remove(self) -> Result<bool> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if identity(&meta) == (self.dev, self.ino, self.ctime) => {
                match std::fs::remove_file(&self.path) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(Error::path("remove socket", &self.path, e)),
                }
            }
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::path("inspect socket", &self.path, e)),
        }
    }
}

/// Binds a stream listener at `path` (close-on-exec, blocking, mode 0600), unlinking a stale
/// socket first if there is one.
pub fn bind_unix_listener(path: &Path) -> Result<(UnixListener, SocketPath)> {
    bind_with(path, |p| UnixListener::bind(p))
}

/// Binds a datagram socket at `path` (close-on-exec, blocking, mode 0600), unlinking a stale
/// socket first if there is one.
pub fn bind_unix_datagram(path: &Path) -> Result<(UnixDatagram, SocketPath)> {
    bind_with(path, |p| UnixDatagram::bind(p))
}

/// Unlinks the socket at `path` if it is stale (nothing answers on it): for cleaning up after a
/// process that died without removing its socket. Returns whether it unlinked; a live socket
/// is [`Error::SocketInUse`], anything that is not a socket is [`Error::WrongFileType`], and
/// both are left in place. An absent path is `Ok(false)`.
pub fn remove_stale(path: &Path) -> Result<bool> {
    let existed = std::fs::symlink_metadata(path).is_ok();
    clear_stale(path)?;
    Ok(existed)
}

/// Checks that `path` could be bound: absent, or a socket (live or stale). Anything else is
/// [`Error::WrongFileType`]. For configuration checks; binding checks again.
pub fn check_socket_path(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(()),
        Ok(meta) => Err(Error::WrongFileType {
            path: path.to_owned(),
            expected: "socket",
            found: file_type_name(&meta),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::path("inspect", path, e)),
    }
}

fn bind_with<S>(path: &Path, bind: impl Fn(&Path) -> io::Result<S>) -> Result<(S, SocketPath)> {
    if path.as_os_str().is_empty() {
        return Err(Error::path("bind socket", path, io::Error::from(io::ErrorKind::InvalidInput)));
    }
    clear_stale(path)?;
    let socket = bind(path).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => Error::SocketInUse { path: path.to_owned() },
        _ => Error::path("bind socket", path, e),
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::path("set the mode of socket", path, e))?;
    let meta =
        std::fs::symlink_metadata(path).map_err(|e| Error::path("inspect socket", path, e))?;
    let (dev, ino, ctime) = identity(&meta);
    Ok((socket, SocketPath { path: path.to_owned(), dev, ino, ctime }))
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64, (i64, i64)) {
    (meta.dev(), meta.ino(), (meta.ctime(), meta.ctime_nsec()))
}

/// Makes room at `path`: nothing there is fine; a stale socket is unlinked; a live socket or
/// anything that is not a socket is an error and stays untouched.
fn clear_stale(path: &Path) -> Result<()> {
    check_socket_path(path)?;
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    if answers(path) {
        return Err(Error::SocketInUse { path: path.to_owned() });
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::path("remove stale socket", path, e)),
    }
}

/// Whether something answers on the socket at `path` (stream or datagram). Only a refused
/// connection (or a vanished path) counts as "nothing answers"; any other failure, such as a
/// permission error, is treated as a live socket so it is never unlinked.
fn answers(path: &Path) -> bool {
    let refused =
        |e: &io::Error| matches!(e.raw_os_error(), Some(libc::ECONNREFUSED) | Some(libc::ENOENT));
    match UnixStream::connect(path) {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => match UnixDatagram::unbound() {
            Ok(probe) => match probe.connect(path) {
                Ok(()) => true,
                Err(e) => !refused(&e),
            },
            Err(_) => true,
        },
        Err(e) => !refused(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_file_at_the_path_is_kept_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        std::fs::write(&path, b"precious").unwrap();
        let err = bind_unix_listener(&path).unwrap_err();
        assert!(matches!(err, Error::WrongFileType { found: "regular file", .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        assert!(check_socket_path(&path).is_err());
    }

    #[test]
    fn stale_socket_is_replaced_live_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let (listener, bound) = bind_unix_listener(&path).unwrap();
        let err = bind_unix_listener(&path).unwrap_err();
        assert!(matches!(err, Error::SocketInUse { .. }), "{err}");
        drop(listener); // now stale: the file stays, nothing answers
        let (_again, bound_again) = bind_unix_listener(&path).unwrap();
        // The old SocketPath names an inode that is gone: it must not unlink the new socket.
        assert!(!bound.remove().unwrap());
        assert!(path.exists());
        assert!(bound_again.remove().unwrap());
        assert!(!path.exists());
    }

    #[test]
    fn live_datagram_socket_is_refused_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let (sock, _bound) = bind_unix_datagram(&path).unwrap();
        assert!(matches!(bind_unix_datagram(&path).unwrap_err(), Error::SocketInUse { .. }));
        drop(sock);
        bind_unix_datagram(&path).unwrap();
    }

    #[test]
    fn remove_stale_leaves_live_sockets_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        assert!(!remove_stale(&path).unwrap());
        let (listener, _bound) = bind_unix_listener(&path).unwrap();
        assert!(matches!(remove_stale(&path).unwrap_err(), Error::SocketInUse { .. }));
        drop(listener);
        assert!(remove_stale(&path).unwrap());
        assert!(!path.exists());
        std::fs::write(&path, b"data").unwrap();
        assert!(remove_stale(&path).is_err());
        assert!(path.exists());
    }
}
