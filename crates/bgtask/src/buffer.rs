//! [`OutputBuffer`]: one output stream's retained bytes, addressed by absolute offsets, in a
//! memfd ring that readers can be given.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd};

use procyard_core::FileMap;
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::pipe::SpliceFlags;

/// The bytes of one output stream that are still retained, with absolute offsets: offset 0 is
/// the first byte the task ever wrote (restarts keep counting), `start` the first byte still
/// held, `limit` the next byte to be written. When more than `cap` bytes are held, the oldest
/// are dropped; `consumed` marks how far readers have consumed.
///
/// The bytes live in a memfd used as a ring of `cap` bytes: offset `o` is at `o % cap`. The
/// task's pipe is read into its mapping ([`OutputBuffer::fill_from`]: one copy, in the kernel;
/// spliced into the file where it cannot be mapped), and
/// a reader holding the memfd ([`OutputBuffer::file`]) copies its bytes straight from it (from
/// a mapping of it: the memfd is sealed against shrinking and growing, so no page of a reader's
/// mapping can lose its backing; or with `pread`), so the supervisor copies nothing on their
/// way out either. While a reader copies a range, that
/// range is pinned ([`OutputBuffer::pin`]): the ring is not filled over it until the reader
/// says it is done (or goes away). Memory follows the output: the memfd is created at the
/// first byte (or the first reader asking for it), its pages as they are written.
#[derive(Debug)]
pub(crate) struct OutputBuffer {
    /// The memfd (created at the first byte).
    file: Option<File>,
    /// The memfd mapped, for the pipe to be read into (`None` where it cannot be mapped:
    /// then spliced into).
    map: Option<FileMap>,
    start: u64,
    limit: u64,
    consumed: u64,
    cap: usize,
    /// Ranges readers are copying: (reader, first offset).
    pins: Vec<(usize, u64)>,
}

impl OutputBuffer {
    pub(crate) fn new(cap: usize) -> OutputBuffer {
        OutputBuffer {
            file: None,
            map: None,
            start: 0,
            limit: 0,
            consumed: 0,
            cap: cap.max(1),
            pins: Vec::new(),
        }
    }

    /// The most bytes it retains (the ring's size).
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// First retained offset.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// Next offset to be written.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Offset up to which readers consumed (never below `start`).
    pub(crate) fn consumed(&self) -> u64 {
        self.consumed.max(self.start)
    }

    /// The consumed mark as readers left it: below `start` when bytes were dropped before
    /// anyone consumed them (the gap a consuming reader must be told about).
    pub(crate) fn consumed_mark(&self) -> u64 {
        self.consumed
    }

    /// Bytes held and not consumed yet.
    pub(crate) fn unconsumed(&self) -> usize {
        (self.limit - self.consumed()) as usize
    }

    /// Free room before unconsumed bytes would be dropped.
    pub(crate) fn room(&self) -> usize {
        self.cap.saturating_sub(self.unconsumed())
    }

    /// Bytes that may be written before a pinned range would be overwritten.
    pub(crate) fn writable(&self) -> usize {
        match self.pins.iter().map(|(_, at)| *at).min() {
            Some(floor) => self.cap.saturating_sub((self.limit - floor.min(self.limit)) as usize),
            None => usize::MAX,
        }
    }

    /// Pins `[at, ..)` for `reader` (one range per reader; a new pin replaces its old one).
    pub(crate) fn pin(&mut self, reader: usize, at: u64) {
        self.unpin(reader);
        self.pins.push((reader, at));
    }

    /// Releases `reader`'s pin; returns whether it had one.
    pub(crate) fn unpin(&mut self, reader: usize) -> bool {
        let before = self.pins.len();
        self.pins.retain(|(r, _)| *r != reader);
        self.pins.len() != before
    }

    /// The memfd (`None` before the first byte or [`OutputBuffer::file_or_create`]): byte `o`
    /// of `[start, limit)` is at `o % cap`.
    pub(crate) fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// The memfd, created if there is none yet.
    pub(crate) fn file_or_create(&mut self) -> io::Result<&File> {
        if self.file.is_none() {
            let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
            let fd = rustix::fs::memfd_create("procyard-bgtask-output", flags)?;
            let file = File::from(fd);
            // Sparse: pages come as bytes are written.
            file.set_len(self.cap as u64)?;
            // Its size is final: readers may map it (no page can lose its backing under them).
            rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW)?;
            self.map = FileMap::new(file.as_fd(), self.cap).ok();
            self.file = Some(file);
        }
        Ok(self.file.as_ref().expect("just created"))
    }

    /// Moves at most `max` bytes (and no more than [`OutputBuffer::writable`]) from the pipe
    /// `pipe` into the ring with one `splice`, dropping the oldest beyond the cap. Returns the
    /// count (0 at end of file; `WouldBlock` when the pipe is empty).
    pub(crate) fn fill_from(&mut self, pipe: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        let cap = self.cap as u64;
        let mut at = self.limit % cap;
        let max = self.fill_size(max);
        if max == 0 {
            return Ok(0);
        }
        self.file_or_create()?;
        let n = match (&mut self.map, &self.file) {
            // Straight into the file's pages, one copy.
            (Some(map), _) => map.read_from(pipe, at as usize, max)?,
            (None, Some(file)) => rustix::pipe::splice(
                pipe,
                None,
                file.as_fd(),
                Some(&mut at),
                max,
                SpliceFlags::NONBLOCK,
            )?,
            (None, None) => return Err(io::ErrorKind::NotFound.into()),
        };
        self.appended(n);
        Ok(n)
    }

    /// How many bytes [`OutputBuffer::fill_from`] asks the pipe for when allowed `max`: no
    /// more than fit before the ring's end or a pinned range. A fill that returns fewer found
    /// the pipe empty.
    pub(crate) fn fill_size(&self, max: usize) -> usize {
        let cap = self.cap as u64;
        max.min((cap - self.limit % cap) as usize).min(self.writable())
    }

    /// Accounts for `n` bytes written at `limit`.
    fn appended(&mut self, n: usize) {
        self.limit += n as u64;
        self.start = self.start.max(self.limit.saturating_sub(self.cap as u64));
    }

    /// Appends bytes, dropping the oldest beyond the cap.
    #[cfg(test)]
    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let cap = self.cap as u64;
        while !bytes.is_empty() {
            let at = self.limit % cap;
            let n = bytes.len().min((cap - at) as usize);
            self.file_or_create().expect("memfd").write_all_at(&bytes[..n], at).expect("write");
            self.appended(n);
            bytes = &bytes[n..];
        }
    }

    /// Copies up to `count` bytes from `offset` (raised to `start` if older bytes were dropped)
    /// into `out`; returns the offset actually served.
    pub(crate) fn read_into(
        &self,
        offset: u64,
        count: usize,
        out: &mut Vec<u8>,
    ) -> io::Result<u64> {
        let offset = offset.clamp(self.start, self.limit);
        let n = count.min((self.limit - offset) as usize);
        if let (Some(file), true) = (&self.file, n > 0) {
            // The supervisor's own description of its memfd: seeking it is ours to do.
            append_ring(file, self.cap as u64, offset, n, out)?;
        }
        Ok(offset)
    }

    /// Marks everything before `upto` consumed; the bytes stay retained (up to the cap) for
    /// peeking readers.
    pub(crate) fn consume(&mut self, upto: u64) {
        let upto = upto.clamp(self.start, self.limit);
        self.consumed = self.consumed.max(upto);
    }

    /// Marks everything before `upto` consumed and drops it.
    pub(crate) fn discard(&mut self, upto: u64) {
        let upto = upto.clamp(self.start, self.limit);
        self.consumed = self.consumed.max(upto);
        self.start = self.start.max(upto);
    }
}

/// Appends `len` bytes at absolute `offset` of a ring file of `ring` bytes to `out` (what a
/// reader holding the memfd does), reading into its spare capacity without zeroing it first.
/// Seeks `file`: its description must be the caller's own.
pub(crate) fn append_ring(
    mut file: &File,
    ring: u64,
    offset: u64,
    len: usize,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    append_ring_with(ring, offset, len, out, |pos, n, out| {
        file.seek(SeekFrom::Start(pos))?;
        match file.take(n as u64).read_to_end(out)? {
            got if got == n => Ok(()),
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    })
}

/// Appends `len` bytes at absolute `offset` of a ring of `ring` bytes to `out`, in at most
/// two pieces (before and after the ring's seam), each appended by `piece(at, n, out)` from
/// position `at` of the ring; on an error, `out` is left as it was.
pub(crate) fn append_ring_with(
    ring: u64,
    offset: u64,
    len: usize,
    out: &mut Vec<u8>,
    mut piece: impl FnMut(u64, usize, &mut Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    let before = out.len();
    out.reserve(len);
    let (mut at, mut left) = (offset, len);
    while left > 0 {
        let pos = at % ring;
        let n = left.min((ring - pos) as usize);
        if let Err(e) = piece(pos, n, out) {
            out.truncate(before);
            return Err(e);
        }
        at += n as u64;
        left -= n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(buf: &OutputBuffer, offset: u64, count: usize) -> (u64, Vec<u8>) {
        let mut out = Vec::new();
        let at = buf.read_into(offset, count, &mut out).expect("read");
        (at, out)
    }

    #[test]
    fn cap_drops_oldest_and_offsets_stay_absolute() {
        let mut buf = OutputBuffer::new(5);
        buf.push(b"abc");
        buf.push(b"defg");
        assert_eq!((buf.start(), buf.limit()), (2, 7));
        assert_eq!(read(&buf, 0, 100), (2, b"cdefg".to_vec()));
        assert_eq!(read(&buf, 4, 2), (4, b"ef".to_vec()));
        assert_eq!(read(&buf, 9, 2), (7, Vec::new()));
    }

    #[test]
    fn a_push_larger_than_the_cap_keeps_its_tail() {
        let mut buf = OutputBuffer::new(4);
        buf.push(b"ab");
        buf.push(b"cdefgh");
        assert_eq!((buf.start(), buf.limit()), (4, 8));
        assert_eq!(read(&buf, 0, 10), (4, b"efgh".to_vec()));
    }

    #[test]
    fn nothing_is_created_before_the_first_byte() {
        let mut buf = OutputBuffer::new(8 * 1024 * 1024);
        assert!(buf.file().is_none());
        assert_eq!(read(&buf, 0, 10), (0, Vec::new()));
        buf.push(b"hello");
        let file = buf.file().expect("memfd");
        // Pages follow the bytes written, not the ring's size.
        let blocks = rustix::fs::fstat(file.as_fd()).expect("fstat").st_blocks as u64 * 512;
        assert!(blocks <= 4096, "{blocks} bytes allocated");
        assert_eq!(read(&buf, 0, 10), (0, b"hello".to_vec()));
    }

    #[test]
    fn reads_across_the_ring_seam() {
        let mut buf = OutputBuffer::new(300_000);
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(10_007) {
            buf.push(chunk);
        }
        assert_eq!((buf.start(), buf.limit()), (400_000, 700_000));
        let (at, got) = read(&buf, 0, usize::MAX);
        assert_eq!(at, 400_000);
        assert_eq!(got, &data[400_000..]);
        let (_, got) = read(&buf, 555_555, 1000);
        assert_eq!(got, &data[555_555..556_555]);
        let mut seam = b"x".to_vec();
        append_ring(buf.file().expect("memfd"), 300_000, 599_990, 20, &mut seam).expect("read");
        assert_eq!(&seam[1..], &data[599_990..600_010]);
    }

    #[test]
    fn discard_consumes() {
        let mut buf = OutputBuffer::new(10);
        buf.push(b"hello world");
        assert_eq!(buf.start(), 1);
        assert_eq!(buf.unconsumed(), 10);
        buf.consume(3);
        assert_eq!((buf.start(), buf.consumed(), buf.unconsumed()), (1, 3, 8));
        buf.discard(6);
        assert_eq!((buf.start(), buf.consumed(), buf.unconsumed()), (6, 6, 5));
        assert_eq!(buf.room(), 5);
        buf.push(b"!!");
        assert_eq!(read(&buf, 6, 100), (6, b"world!!".to_vec()));
        buf.discard(100);
        assert_eq!((buf.start(), buf.limit()), (13, 13));
        buf.discard(0);
        assert_eq!(buf.start(), 13);
    }

    #[test]
    fn a_pinned_range_is_not_filled_over() {
        let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
        rustix::io::write(&tx, b"0123456789").expect("write");
        let mut buf = OutputBuffer::new(8);
        assert_eq!(buf.fill_from(rx.as_fd(), 3).expect("fill"), 3);
        assert_eq!(buf.limit(), 3);
        buf.pin(7, 1);
        assert_eq!(buf.writable(), 6);
        // Up to the ring's end, then up to the pin.
        assert_eq!(buf.fill_from(rx.as_fd(), 100).expect("fill"), 5);
        assert_eq!(buf.fill_from(rx.as_fd(), 100).expect("fill"), 1);
        assert_eq!(buf.fill_from(rx.as_fd(), 100).expect("fill"), 0, "pinned");
        assert_eq!(read(&buf, 1, 100), (1, b"12345678".to_vec()));
        assert!(buf.unpin(7));
        assert_eq!(buf.fill_from(rx.as_fd(), 100).expect("fill"), 1);
        assert_eq!((buf.start(), buf.limit()), (2, 10));
        assert_eq!(read(&buf, 0, 100), (2, b"23456789".to_vec()));
        drop(tx);
        assert_eq!(buf.fill_from(rx.as_fd(), 100).expect("fill"), 0);
    }
}
