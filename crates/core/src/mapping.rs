//! [`FileMap`]: a shared mapping of a file that data is read into straight from another
//! descriptor, for a ring other processes read from the file; [`FileView`]: their side, a
//! read-only mapping of such a file (sealed against shrinking) that bytes are copied out of.

use std::io;
use std::os::fd::BorrowedFd;

use rustix::fs::SealFlags;

use crate::sys::map::{Mapping, View};

/// The first `len` bytes of a file, mapped shared and writable, filled only by `read(2)`
/// from another descriptor ([`FileMap::read_from`]: a pipe's bytes land in the file's pages
/// with one copy and no page-cache lookups). Its bytes are never exposed as Rust memory:
/// they are read back through the file (`pread`), by this process or any other that holds a
/// descriptor of it, so concurrent readers (or writers) of the file are harmless. Unmapped on
/// drop. The file should be at least `len` bytes long (`ftruncate`); where it is not, reads
/// into the missing part fail.
#[derive(Debug)]
pub struct FileMap(Mapping);

impl FileMap {
    /// Maps the first `len` bytes of `file` (open read-write), shared.
    pub fn new(file: BorrowedFd<'_>, len: usize) -> io::Result<FileMap> {
        Mapping::new(file, len).map(FileMap)
    }

    /// The mapping's length.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the mapping is empty (never: `new` refuses a zero length).
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// One `read(2)` from `from` into the file's bytes `[at, at + max)` (clamped to the
    /// mapping); returns the count, 0 at end of file. `at` must lie inside the mapping.
    pub fn read_from(&mut self, from: BorrowedFd<'_>, at: usize, max: usize) -> io::Result<usize> {
        self.0.read_from(from, at, max)
    }
}

/// The first `len` bytes of a file, mapped shared and read-only, that bytes are copied out of
/// ([`FileView::copy_to`]: one copy in user space, no system call, no page-cache lookup per
/// page as a `pread` makes). Made only of a file sealed against shrinking (`F_SEAL_SHRINK`,
/// as a memfd made with `MFD_ALLOW_SEALING` can be) and at least `len` bytes long, so no
/// page of the mapping can lose its backing: a `SIGBUS` cannot happen. The bytes are only
/// ever copied, never lent as Rust memory: whoever else writes the file can make a copy
/// stale (the writer and the reader agree on which ranges are stable, as a ring's pins do),
/// never break Rust's aliasing rules. Unmapped on drop.
#[derive(Debug)]
pub struct FileView(View);

impl FileView {
    /// Maps the first `len` bytes of `file` (open at least for reading); refused
    /// (`InvalidInput`) unless the file is sealed against shrinking and holds `len` bytes.
    pub fn new(file: BorrowedFd<'_>, len: usize) -> io::Result<FileView> {
        let seals = rustix::fs::fcntl_get_seals(file)?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the file is not sealed against shrinking",
            ));
        }
        let size = rustix::fs::fstat(file)?.st_size;
        if u64::try_from(size).unwrap_or(0) < len as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the file is too short"));
        }
        View::new_sealed(file, len).map(FileView)
    }

    /// The mapping's length.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the mapping is empty (never: `new` refuses a zero length).
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// Appends the file's bytes `[at, at + n)` to `out`; `InvalidInput` (and `out`
    /// unchanged) where the range leaves the mapping.
    pub fn copy_to(&self, at: usize, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
        self.0.copy_to(at, n, out).ok_or_else(|| io::ErrorKind::InvalidInput.into())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    use super::*;

    #[test]
    fn bytes_read_into_the_map_are_in_the_file() {
        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let file = std::fs::File::from(fd);
        file.set_len(16).unwrap();
        let mut map = FileMap::new(file.as_fd(), 16).unwrap();
        let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        rustix::io::write(&tx, b"hello world").unwrap();
        assert_eq!(map.read_from(rx.as_fd(), 12, 100).unwrap(), 4, "clamped to the map");
        assert_eq!(map.read_from(rx.as_fd(), 0, 100).unwrap(), 7);
        let mut got = [0u8; 16];
        file.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got, b"o world\0\0\0\0\0hell");
        assert!(map.read_from(rx.as_fd(), 16, 1).is_err(), "outside the map");
        // A file shrunk under the map: the read fails, nothing else happens.
        file.set_len(0).unwrap();
        rustix::io::write(&tx, b"x").unwrap();
        assert!(map.read_from(rx.as_fd(), 0, 1).is_err());
    }

    #[test]
    fn a_view_needs_a_file_that_cannot_shrink() {
        use rustix::fs::{MemfdFlags, SealFlags};
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        let file = std::fs::File::from(rustix::fs::memfd_create("t", flags).unwrap());
        file.set_len(16).unwrap();
        file.write_all_at(b"hello world", 3).unwrap();
        assert!(FileView::new(file.as_fd(), 16).is_err(), "not sealed yet");
        rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        assert!(FileView::new(file.as_fd(), 17).is_err(), "longer than the file");
        let view = FileView::new(file.as_fd(), 16).unwrap();
        let mut out = b">".to_vec();
        view.copy_to(3, 5, &mut out).unwrap();
        assert_eq!(out, b">hello");
        // Later writes show through the shared mapping.
        file.write_all_at(b"J", 3).unwrap();
        view.copy_to(3, 1, &mut out).unwrap();
        assert_eq!(out, b">helloJ");
        assert!(view.copy_to(10, 7, &mut out).is_err(), "past the end");
        assert!(view.copy_to(usize::MAX, 2, &mut out).is_err(), "overflow");
        assert_eq!(out, b">helloJ");
        assert!(file.set_len(8).is_err(), "the seal holds");
    }
}
