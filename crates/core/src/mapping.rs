//! [`FileMap`]: a shared mapping of a file that data is read into straight from another
//! descriptor, for a ring other processes `pread` from the file.

use std::io;
use std::os::fd::BorrowedFd;

use crate::sys::map::Mapping;

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
}
