//! A shared file mapping that only the kernel reads and writes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

/// `len` bytes of a file mapped shared and writable. Rust code never forms a reference to
/// them: bytes land in the mapping by `read(2)` into it, and leave through the file (`pread`
/// by whoever holds a descriptor), so what other processes do to the file concurrently cannot
/// break Rust's aliasing rules; a file shrunk under it makes `read(2)` fail with `EFAULT`.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl Mapping {
    pub(crate) fn new(file: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: a fresh mapping at an address the kernel picks: no existing memory is
        // touched; the file descriptor is borrowed and stays open for the call.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Mapping { ptr, len })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// One `read(2)` from `from` into bytes `[at, at + max)` of the mapping (clamped to it).
    pub(crate) fn read_from(
        &mut self,
        from: BorrowedFd<'_>,
        at: usize,
        max: usize,
    ) -> io::Result<usize> {
        if at >= self.len {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let n = max.min(self.len - at);
        // SAFETY: `[at, at + n)` lies inside the mapping, which lives as long as `self`; the
        // kernel writes into it (or fails with EFAULT where the file no longer backs it), and
        // no Rust reference to these bytes exists.
        let ret = unsafe {
            libc::read(from.as_raw_fd(), self.ptr.as_ptr().cast::<u8>().add(at).cast(), n)
        };
        if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret as usize) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; nothing refers to it any more.
        unsafe {
            libc::munmap(self.ptr.as_ptr(), self.len);
        }
    }
}
