//! [`OutputBuffer`]: one output stream's retained bytes, addressed by absolute offsets.

use std::io::{self, Read};

/// First reservation of a ring that grows. Large enough that the allocator maps it apart
/// from the heap (so growing it moves pages instead of copying them and leaves no freed
/// block behind); its pages cost memory only once written.
const FIRST_RING: usize = 256 * 1024;

/// Most bytes made ready (zeroed) ahead of the write position before the ring has been
/// filled once: reserved pages stay untouched, so memory follows the output.
const INIT_AHEAD: usize = 16 * 1024;

/// The bytes of one output stream that are still retained, with absolute offsets: offset 0 is
/// the first byte the task ever wrote (restarts keep counting), `start` the first byte still
/// held, `limit` the next byte to be written. When more than `cap` bytes are held, the oldest
/// are dropped; `consumed` marks how far readers have consumed.
///
/// It is a ring over one reservation that grows (by doubling) up to `cap`, and pipes are read
/// straight into it ([`OutputBuffer::fill_from`]), so output is copied once on its way in.
/// Memory follows the bytes written: nothing is reserved before the first byte, and the
/// reservation is initialised only just ahead of the write position.
#[derive(Debug)]
pub(crate) struct OutputBuffer {
    /// The reservation (capacity at least `size`); its length is the initialised prefix.
    ring: Vec<u8>,
    /// Ring size in use (0 until the first byte).
    size: usize,
    /// Physical index of `start`.
    head: usize,
    /// Bytes held.
    len: usize,
    start: u64,
    consumed: u64,
    cap: usize,
}

impl OutputBuffer {
    pub(crate) fn new(cap: usize) -> OutputBuffer {
        OutputBuffer {
            ring: Vec::new(),
            size: 0,
            head: 0,
            len: 0,
            start: 0,
            consumed: 0,
            cap: cap.max(1),
        }
    }

    /// The most bytes it retains.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// First retained offset.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// Next offset to be written.
    pub(crate) fn limit(&self) -> u64 {
        self.start + self.len as u64
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
        (self.limit() - self.consumed()) as usize
    }

    /// Free room before unconsumed bytes would be dropped.
    pub(crate) fn room(&self) -> usize {
        self.cap.saturating_sub(self.unconsumed())
    }

    /// Grows the ring (linearising it) when it is full and below the cap. Allocation failure
    /// just leaves it smaller: the oldest bytes are then dropped sooner.
    fn grow(&mut self) {
        let size = self.size;
        if self.len < size || size >= self.cap {
            return;
        }
        let new_size = (size * 2).clamp(FIRST_RING.min(self.cap), self.cap);
        // A full ring is wholly initialised: `ring.len() == size`.
        self.ring.rotate_left(self.head);
        self.head = 0;
        if self.ring.try_reserve_exact(new_size - self.ring.len()).is_ok() {
            self.size = new_size;
        }
    }

    /// Reads once from `r` into the ring (at most `max` bytes), dropping the oldest bytes if
    /// the ring is full at its cap. `on_bytes` sees the bytes read. Returns the count (0 at
    /// end of file).
    pub(crate) fn fill_from<R: Read + ?Sized>(
        &mut self,
        r: &mut R,
        max: usize,
        on_bytes: impl FnOnce(&[u8]),
    ) -> io::Result<usize> {
        self.grow();
        let size = self.size;
        if max == 0 {
            return Ok(0);
        }
        if size == 0 {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let full = self.len == size;
        let tail = (self.head + self.len) % size;
        // When full, the tail is the head: the read overwrites exactly the oldest bytes.
        let end = if full || tail >= self.head { size } else { self.head };
        // Bytes below `ring.len()` are initialised, and `tail` never lies beyond them.
        let slot_end =
            end.min(tail.saturating_add(max)).min(self.ring.len().max(tail + INIT_AHEAD));
        if slot_end > self.ring.len() {
            self.ring.resize(slot_end, 0);
        }
        let n = r.read(&mut self.ring[tail..slot_end])?;
        on_bytes(&self.ring[tail..tail + n]);
        if full {
            self.head = (self.head + n) % size;
            self.start += n as u64;
        } else {
            self.len += n;
        }
        Ok(n)
    }

    /// Appends bytes, dropping the oldest beyond the cap.
    #[cfg(test)]
    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = self.fill_from(&mut bytes, usize::MAX, |_| {}).unwrap_or(0);
            if n == 0 {
                break;
            }
        }
    }

    /// Copies up to `count` bytes from `offset` (raised to `start` if older bytes were dropped)
    /// into `out`; returns the offset actually served.
    #[cfg(test)]
    pub(crate) fn read_into(&self, offset: u64, count: usize, out: &mut Vec<u8>) -> u64 {
        let (a, b) = self.slices(offset, count);
        out.extend_from_slice(a);
        out.extend_from_slice(b);
        offset.clamp(self.start, self.limit())
    }

    /// The retained bytes `[offset, offset + count)` (clamped) as the ring's two slices.
    pub(crate) fn slices(&self, offset: u64, count: usize) -> (&[u8], &[u8]) {
        let offset = offset.clamp(self.start, self.limit());
        let skip = (offset - self.start) as usize;
        let n = count.min(self.len - skip);
        if n == 0 {
            return (&[], &[]);
        }
        let size = self.size;
        let from = (self.head + skip) % size;
        let first = n.min(size - from);
        (&self.ring[from..from + first], &self.ring[..n - first])
    }

    /// Marks everything before `upto` consumed; the bytes stay retained (up to the cap) for
    /// peeking readers.
    pub(crate) fn consume(&mut self, upto: u64) {
        let upto = upto.clamp(self.start, self.limit());
        self.consumed = self.consumed.max(upto);
    }

    /// Marks everything before `upto` consumed and drops it.
    pub(crate) fn discard(&mut self, upto: u64) {
        let upto = upto.clamp(self.start, self.limit());
        self.consumed = self.consumed.max(upto);
        let n = (upto - self.start) as usize;
        if n > 0 {
            self.head = (self.head + n) % self.size;
            self.len -= n;
            self.start = upto;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(buf: &OutputBuffer, offset: u64, count: usize) -> (u64, Vec<u8>) {
        let mut out = Vec::new();
        let at = buf.read_into(offset, count, &mut out);
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
        assert_eq!(buf.ring.len(), 4);
    }

    #[test]
    fn reads_across_the_ring_seam() {
        let mut buf = OutputBuffer::new(4);
        for chunk in [&b"ab"[..], b"cd", b"ef", b"gh", b"ij"] {
            buf.push(chunk);
        }
        assert_eq!(read(&buf, 0, 10), (6, b"ghij".to_vec()));
        assert_eq!(read(&buf, 7, 2), (7, b"hi".to_vec()));
    }

    #[test]
    fn memory_follows_the_output() {
        let mut buf = OutputBuffer::new(8 * 1024 * 1024);
        assert_eq!(buf.ring.capacity(), 0, "nothing reserved before the first byte");
        buf.push(b"hello");
        assert!(buf.ring.len() <= INIT_AHEAD, "initialised only just ahead");
        assert_eq!(buf.size, FIRST_RING);
        let data: Vec<u8> = (0..FIRST_RING as u32 + 10).map(|i| (i % 253) as u8).collect();
        buf.push(&data);
        assert_eq!(buf.size, 2 * FIRST_RING);
        assert!(buf.ring.len() <= FIRST_RING + 5 + 10 + INIT_AHEAD);
        let (at, got) = read(&buf, 5, usize::MAX);
        assert_eq!((at, got.as_slice()), (5, data.as_slice()));
    }

    #[test]
    fn grows_after_a_wrap_and_discard_keeps_order() {
        let mut buf = OutputBuffer::new(FIRST_RING + 100);
        let data: Vec<u8> = (0..FIRST_RING as u32).map(|i| (i % 241) as u8).collect();
        buf.push(&data);
        buf.discard(1000);
        buf.push(&data[..1000]);
        // Full again, with its head mid-ring: growing linearises it.
        buf.push(b"xyz");
        assert_eq!(buf.size, FIRST_RING + 100);
        let (at, got) = read(&buf, 0, usize::MAX);
        assert_eq!(at, 1000);
        let mut want = data[1000..].to_vec();
        want.extend_from_slice(&data[..1000]);
        want.extend_from_slice(b"xyz");
        assert_eq!(got, want);
    }

    #[test]
    fn grows_by_doubling_and_keeps_order() {
        let mut buf = OutputBuffer::new(300_000);
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(10_007) {
            buf.push(chunk);
        }
        assert_eq!((buf.start(), buf.limit()), (400_000, 700_000));
        assert_eq!(buf.ring.len(), 300_000);
        let (at, got) = read(&buf, 0, usize::MAX);
        assert_eq!(at, 400_000);
        assert_eq!(got, &data[400_000..]);
        let (_, got) = read(&buf, 555_555, 1000);
        assert_eq!(got, &data[555_555..556_555]);
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
    fn fill_respects_max_and_reports_bytes() {
        let mut buf = OutputBuffer::new(8);
        let mut src: &[u8] = b"0123456789";
        let mut seen = Vec::new();
        let n = buf.fill_from(&mut src, 3, |b| seen.extend_from_slice(b)).unwrap();
        assert_eq!((n, seen.as_slice()), (3, &b"012"[..]));
        assert_eq!(buf.limit(), 3);
    }
}
