//! [`Stream`]: one output stream of a task, read by absolute offset, and what a read returns
//! ([`Chunk`], [`ReadMeta`]); [`ReadOptions`] says where and how to read.

use crate::protocol::{MAX_READ, Request, StreamInfo, StreamName};
use crate::{Error, Result, Task};

/// Bytes read from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Absolute offset of `data[0]` (above the requested offset if older bytes were dropped).
    pub offset: u64,
    /// How many bytes between the requested offset (or the consumed mark) and `offset` were
    /// dropped beyond the retain cap before they could be read: 0 when `data` follows on
    /// from what was asked for, otherwise a gap no reader should mistake for contiguous output.
    pub dropped: u64,
    /// The bytes read, starting at `offset`.
    pub data: Vec<u8>,
    /// The stream's offsets after the read.
    pub info: StreamInfo,
    /// Whether the task had ended (with all its output collected) at the time of the read.
    pub exited: bool,
}

impl Chunk {
    /// The offset just past the bytes read.
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }

    /// Whether nothing more can come for the current run: the stream ended, or the task
    /// ended and everything retained was read.
    pub fn is_final(&self) -> bool {
        self.end() >= self.info.limit && (self.info.eof || self.exited)
    }
}

/// What a read into a caller's buffer returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadMeta {
    /// Absolute offset of the first byte appended.
    pub offset: u64,
    /// How many bytes were appended.
    pub len: u64,
    /// Bytes dropped before `offset` that were asked for (see [`Chunk::dropped`]).
    pub dropped: u64,
    /// The stream's offsets after the read.
    pub info: StreamInfo,
    /// Whether the task had ended (with all its output collected).
    pub exited: bool,
}

impl ReadMeta {
    /// The offset just past the bytes read.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// Whether nothing more can come for the current run (see [`Chunk::is_final`]).
    pub fn is_final(&self) -> bool {
        self.end() >= self.info.limit && (self.info.eof || self.exited)
    }
}

/// Where and how [`Stream::read_with`] reads: from an absolute offset or from the consumed
/// mark, how many bytes at most, whether the bytes are marked consumed, and whether to wait
/// for bytes when none are there yet.
///
/// ```
/// use procyard_bgtask::ReadOptions;
/// // Follow a stream from offset 0 without consuming (what `tail -f` does):
/// let follow = ReadOptions::new().offset(0).wait(true);
/// // Take everything retained from the consumed mark:
/// let take = ReadOptions::new().consume(true);
/// # let _ = (follow, take);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    offset: Option<u64>,
    count: u64,
    consume: bool,
    wait: bool,
    at_least: u64,
}

impl Default for ReadOptions {
    fn default() -> ReadOptions {
        ReadOptions::new()
    }
}

impl ReadOptions {
    /// From the consumed mark, as many bytes as one read returns ([`MAX_READ`]), peeking,
    /// not waiting.
    pub fn new() -> ReadOptions {
        ReadOptions { offset: None, count: MAX_READ, consume: false, wait: false, at_least: 0 }
    }

    /// Reads from absolute offset `at` (raised to the stream's `start` if those bytes were
    /// dropped, and [`Chunk::dropped`] says by how much) instead of the consumed mark.
    pub fn offset(mut self, at: u64) -> ReadOptions {
        self.offset = Some(at);
        self
    }

    /// At most `count` bytes (capped at [`MAX_READ`]).
    pub fn count(mut self, count: u64) -> ReadOptions {
        self.count = count.min(MAX_READ);
        self
    }

    /// Marks the bytes read consumed (they stay retained up to the cap).
    pub fn consume(mut self, consume: bool) -> ReadOptions {
        self.consume = consume;
        self
    }

    /// When nothing is there yet, waits until bytes arrive, the stream ends, the task exits,
    /// or the time set with [`Task::set_timeout`] runs out ([`Error::TimedOut`];
    /// [`DEFAULT_TIMEOUT`](crate::DEFAULT_TIMEOUT) unless set: a follower of a stream that may
    /// stay quiet longer sets `None`).
    pub fn wait(mut self, wait: bool) -> ReadOptions {
        self.wait = wait;
        self
    }

    /// With [`ReadOptions::wait`]: waits until at least `n` bytes are there (at most the
    /// `count` and the task's retention), not just one, unless the stream ends, the task exits
    /// or the retention is full. For a reader that wants throughput more than the first byte
    /// at once: one answer carries many of the task's writes, so it costs one round trip
    /// instead of one per write.
    pub fn at_least(mut self, n: u64) -> ReadOptions {
        self.at_least = n;
        self
    }

    fn request(self, stream: StreamName) -> Request {
        Request::Read {
            stream,
            offset: self.offset,
            count: self.count,
            consume: self.consume,
            wait: self.wait,
            at_least: self.at_least,
            file: false,
        }
    }
}

/// One output stream of a task, read by absolute offset.
#[derive(Debug)]
pub struct Stream<'a> {
    pub(crate) task: &'a mut Task,
    pub(crate) name: StreamName,
}

impl Stream<'_> {
    /// `start` (first retained offset), `limit` (next offset) and the consumed mark.
    pub fn info(&mut self) -> Result<StreamInfo> {
        let info = self.task.info()?;
        info.streams.get(&self.name).copied().ok_or_else(|| Error::Protocol {
            id: self.task.id().to_owned(),
            what: format!("no stream {}", self.name),
        })
    }

    /// First retained offset.
    pub fn start(&mut self) -> Result<u64> {
        Ok(self.info()?.start)
    }

    /// Next offset to be written.
    pub fn limit(&mut self) -> Result<u64> {
        Ok(self.info()?.limit)
    }

    /// Reads (and consumes) up to `count` bytes from the consumed mark.
    pub fn read(&mut self, count: u64) -> Result<Chunk> {
        self.read_with(ReadOptions::new().count(count).consume(true))
    }

    /// Reads (and consumes) everything retained from the consumed mark.
    pub fn read_all(&mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let chunk = self.read(MAX_READ)?;
            if chunk.data.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&chunk.data);
        }
    }

    /// Reads `count` bytes at `offset` without consuming them (`offset` is raised to `start`
    /// if those bytes were dropped, and [`Chunk::dropped`] says by how much).
    pub fn peek(&mut self, offset: u64, count: u64) -> Result<Chunk> {
        self.read_with(ReadOptions::new().offset(offset).count(count))
    }

    /// The general read (see [`ReadOptions`]).
    pub fn read_with(&mut self, options: ReadOptions) -> Result<Chunk> {
        let mut data = Vec::new();
        let meta = self.read_with_into(options, &mut data)?;
        Ok(Chunk {
            offset: meta.offset,
            dropped: meta.dropped,
            data,
            info: meta.info,
            exited: meta.exited,
        })
    }

    /// [`Stream::read_with`] appending to `buf` instead of allocating (for high throughput
    /// readers).
    pub fn read_with_into(&mut self, options: ReadOptions, buf: &mut Vec<u8>) -> Result<ReadMeta> {
        self.task.read_into(options.request(self.name), buf)
    }

    /// Drops retained bytes before `upto`.
    pub fn discard(&mut self, upto: u64) -> Result<()> {
        self.task.expect_ok(&Request::Discard { stream: self.name, upto })
    }
}
