//! A shared file mapping that only the kernel reads and writes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

/// `len` bytes of a file mapped shared and writable. Rust code never forms a reference to
/// them: bytes land in the mapping by `read(2)` into it, and leave through the file (`pread`
/// by whoever holds a descriptor), so what other processes do to the file concurrently cannot
/// break Rust's aliasing rules; a file shrunk under it makes `read(2)` fail with `EFAULT`.
#[derive(Debug)]
pub(crate) struct Mapping(Shared);

/// `len` bytes of a file mapped shared, where the kernel chose; unmapped on drop.
#[derive(Debug)]
struct Shared {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl Shared {
    /// Maps the first `len` bytes of `file` with protection `prot`.
    fn new(file: BorrowedFd<'_>, len: usize, prot: libc::c_int) -> io::Result<Shared> {
        if len == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: a fresh mapping at an address the kernel picks: no existing memory is
        // touched; the file descriptor is borrowed and stays open for the call.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, file.as_raw_fd(), 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Shared { ptr, len })
    }

    /// The address of byte `at` (not checked against the length).
    fn byte(&self, at: usize) -> *mut u8 {
        self.ptr.as_ptr().cast::<u8>().wrapping_add(at)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Shared::new`, unmapped once; nothing refers to it any
        // more (its owners form no references into it).
        unsafe {
            libc::munmap(self.ptr.as_ptr(), self.len);
        }
    }
}

impl Mapping {
    pub(crate) fn new(file: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        Shared::new(file, len, libc::PROT_READ | libc::PROT_WRITE).map(Mapping)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len
    }

    /// One `read(2)` from `from` into bytes `[at, at + max)` of the mapping (clamped to it).
    pub(crate) fn read_from(
        &mut self,
        from: BorrowedFd<'_>,
        at: usize,
        max: usize,
    ) -> io::Result<usize> {
        if at >= self.0.len {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let n = max.min(self.0.len - at);
        // SAFETY: `[at, at + n)` lies inside the mapping, which lives as long as `self`; the
        // kernel writes into it (or fails with EFAULT where the file no longer backs it), and
        // no Rust reference to these bytes exists.
        let ret = unsafe { libc::read(from.as_raw_fd(), self.0.byte(at).cast(), n) };
        if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret as usize) }
    }
}

/// `len` bytes of a file mapped shared and read-only, copied out by [`View::copy_to`]. Made
/// only of a file sealed against shrinking and at least `len` bytes long, so no page of the
/// mapping can lose its backing (the `SIGBUS` of a truncated file cannot happen).
#[derive(Debug)]
pub(crate) struct View(Shared);

// SAFETY: the mapping is read-only memory owned by the `View`; nothing in it is tied to the
// thread that made it.
unsafe impl Send for View {}
// SAFETY: `&View` only allows copying bytes out of read-only memory.
unsafe impl Sync for View {}

impl View {
    /// Maps the first `len` bytes of `file`, which the caller checked is sealed against
    /// shrinking and at least `len` bytes long.
    pub(crate) fn new_sealed(file: BorrowedFd<'_>, len: usize) -> io::Result<View> {
        Shared::new(file, len, libc::PROT_READ).map(View)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len
    }

    /// Appends bytes `[at, at + n)` of the mapping to `out`; `None` (and `out` unchanged)
    /// where the range leaves the mapping.
    pub(crate) fn copy_to(&self, at: usize, n: usize, out: &mut Vec<u8>) -> Option<()> {
        if at.checked_add(n)? > self.0.len {
            return None;
        }
        out.reserve(n);
        let before = out.len();
        // SAFETY: `[at, at + n)` lies inside the mapping, which stays mapped while `self`
        // lives and whose pages keep their backing (the file cannot shrink: `new_sealed`);
        // `out` has room for `n` more bytes after its `before` initialized ones, and the two
        // regions cannot overlap (the mapping is not part of any allocation). No reference
        // to the mapped bytes is formed: they are copied as raw bytes (any value is a valid
        // `u8`; a process writing the same range meanwhile can only make them stale), then
        // the copied bytes become part of `out`.
        unsafe {
            std::ptr::copy_nonoverlapping(self.0.byte(at), out.as_mut_ptr().add(before), n);
            out.set_len(before + n);
        }
        Some(())
    }
}
