//! Length-prefixed framing: a big-endian `u32` length, then that many bytes (JSON for typed
//! frames). The length is checked against a maximum before anything is allocated.

use std::io::{self, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// The default largest frame payload: 64 MiB.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

const HEADER: usize = 4;

/// Serializes `value` as one frame (header included).
pub fn encode_frame<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; HEADER];
    serde_json::to_writer(&mut buf, value).map_err(|source| Error::Encode { source })?;
    let len = buf.len() - HEADER;
    if len > MAX_FRAME {
        return Err(Error::FrameTooLarge { len, max: MAX_FRAME });
    }
    buf[..HEADER].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Writes `value` as one frame and flushes.
pub fn write_frame<W: Write + ?Sized, T: Serialize + ?Sized>(
    w: &mut W,
    value: &T,
) -> io::Result<()> {
    let buf = encode_frame(value).map_err(io::Error::other)?;
    w.write_all(&buf)?;
    w.flush()
}

/// Writes raw bytes as one frame and flushes. Header and payload go out in one vectored write
/// where the writer takes it whole (a pipe below its capacity), so a reader never wakes up to a
/// header alone and a frame below `PIPE_BUF` is atomic.
pub fn write_frame_bytes<W: Write + ?Sized>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    if payload.len() > MAX_FRAME {
        return Err(io::Error::other(Error::FrameTooLarge { len: payload.len(), max: MAX_FRAME }));
    }
    let header = (payload.len() as u32).to_be_bytes();
    let mut written = 0;
    let total = HEADER + payload.len();
    while written < total {
        let result = if written < HEADER {
            w.write_vectored(&[io::IoSlice::new(&header[written..]), io::IoSlice::new(payload)])
        } else {
            w.write(&payload[written - HEADER..])
        };
        match result {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    w.flush()
}

/// The frame header for a payload of `len` bytes, for callers that assemble a frame in a
/// buffer of their own (checked against [`MAX_FRAME`]).
pub fn frame_header(len: usize) -> Result<[u8; HEADER]> {
    if len > MAX_FRAME {
        return Err(Error::FrameTooLarge { len, max: MAX_FRAME });
    }
    Ok((len as u32).to_be_bytes())
}

/// Reads one frame's raw payload from a blocking reader. `Ok(None)` at a clean end of stream
/// (between frames); a stream that ends inside a frame is [`Error::FrameTruncated`].
pub fn read_frame_bytes<R: Read + ?Sized>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER {
        return Err(Error::FrameTruncated { expected: HEADER, got });
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(Error::FrameTooLarge { len, max });
    }
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload)?;
    if got < len {
        return Err(Error::FrameTruncated { expected: HEADER + len, got: HEADER + got });
    }
    Ok(Some(payload))
}

/// Reads one typed frame from a blocking reader (see [`read_frame_bytes`]).
pub fn read_frame<R: Read + ?Sized, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>> {
    match read_frame_bytes(r, MAX_FRAME)? {
        None => Ok(None),
        Some(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|source| Error::FrameDecode { source })
        }
    }
}

fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::os("read a frame", e)),
        }
    }
    Ok(got)
}

/// What [`FrameDecoder::read_from`] found about the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// The reader would block; more may come.
    Open,
    /// The writer closed its end at a frame boundary.
    Closed,
}

/// An incremental decoder for non-blocking streams (mio loops): feed it bytes, take whole
/// frames out. Oversized lengths are refused as soon as the header arrives, and end of stream
/// inside a frame is an error, not a hang.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new()
    }
}

impl FrameDecoder {
    /// A decoder with the default [`MAX_FRAME`].
    pub fn new() -> FrameDecoder {
        FrameDecoder::with_max(MAX_FRAME)
    }

    /// A decoder refusing payloads longer than `max`.
    pub fn with_max(max: usize) -> FrameDecoder {
        FrameDecoder { buf: Vec::new(), start: 0, max }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Takes the next whole frame's payload, if one is buffered.
    pub fn next_bytes(&mut self) -> Result<Option<Vec<u8>>> {
        self.take_with(|payload| Ok(payload.to_vec()))
    }

    /// Takes and deserializes the next whole frame, if one is buffered.
    #[allow(
        clippy::should_implement_trait,
        reason = "fallible and generic over T, unlike Iterator::next"
    )]
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        // Deserialized in place; the frame is consumed whether or not it parses.
        self.take_with(|payload| {
            serde_json::from_slice(payload).map_err(|source| Error::FrameDecode { source })
        })
    }

    /// Hands the next whole frame's payload to `f` and consumes the frame.
    fn take_with<T>(&mut self, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<Option<T>> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > self.max {
            return Err(Error::FrameTooLarge { len, max: self.max });
        }
        if avail.len() < HEADER + len {
            return Ok(None);
        }
        let result = f(&avail[HEADER..HEADER + len]);
        self.start += HEADER + len;
        self.compact();
        result.map(Some)
    }

    fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Reads everything available from a non-blocking reader (until `WouldBlock` or end of
    /// stream). Returns [`StreamState::Closed`] at a clean end, [`Error::FrameTruncated`] when
    /// the stream ended inside a frame. Stops early once a frame is oversized.
    pub fn read_from<R: Read + ?Sized>(&mut self, r: &mut R) -> Result<StreamState> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match r.read(&mut chunk) {
                Ok(0) => return self.finish().map(|()| StreamState::Closed),
                Ok(n) => {
                    self.feed(&chunk[..n]);
                    self.check_header()?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(StreamState::Open),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::os("read a frame", e)),
            }
        }
    }

    /// Declares the end of the stream: an error if the buffered bytes end inside a frame.
    /// Whole frames still buffered are not an error, and stay available to
    /// [`FrameDecoder::next`] and [`FrameDecoder::next_bytes`] (also after an error).
    pub fn finish(&self) -> Result<()> {
        let mut rest = &self.buf[self.start..];
        loop {
            if rest.is_empty() {
                return Ok(());
            }
            if rest.len() < HEADER {
                return Err(Error::FrameTruncated { expected: HEADER, got: rest.len() });
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if rest.len() < HEADER + len {
                return Err(Error::FrameTruncated { expected: HEADER + len, got: rest.len() });
            }
            rest = &rest[HEADER + len..];
        }
    }

    fn check_header(&self) -> Result<()> {
        let avail = &self.buf[self.start..];
        if avail.len() >= HEADER {
            let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
            if len > self.max {
                return Err(Error::FrameTooLarge { len, max: self.max });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Msg {
        id: u64,
        text: String,
        items: Vec<String>,
    }

    #[test]
    fn round_trip_blocking() {
        let msg = Msg { id: 1, text: "a\nb\0c".into(), items: vec!["x".into(); 5] };
        let mut buf = Vec::new();
        write_frame(&mut buf, &msg).unwrap();
        write_frame(&mut buf, &msg).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame::<_, Msg>(&mut r).unwrap(), Some(msg.clone()));
        assert_eq!(read_frame::<_, Msg>(&mut r).unwrap(), Some(msg));
        assert_eq!(read_frame::<_, Msg>(&mut r).unwrap(), None);
    }

    #[test]
    fn truncated_and_oversized_are_typed() {
        let mut buf = Vec::new();
        write_frame_bytes(&mut buf, b"hello").unwrap();
        let mut r = &buf[..buf.len() - 1];
        assert!(matches!(read_frame_bytes(&mut r, MAX_FRAME), Err(Error::FrameTruncated { .. })));
        let mut r = &buf[..2];
        assert!(matches!(read_frame_bytes(&mut r, MAX_FRAME), Err(Error::FrameTruncated { .. })));
        let huge = u32::MAX.to_be_bytes();
        let mut r = &huge[..];
        assert!(matches!(read_frame_bytes(&mut r, MAX_FRAME), Err(Error::FrameTooLarge { .. })));
        let mut dec = FrameDecoder::with_max(10);
        dec.feed(&100u32.to_be_bytes());
        assert!(matches!(dec.next_bytes(), Err(Error::FrameTooLarge { len: 100, max: 10 })));
    }

    #[test]
    fn end_of_stream_after_whole_frames_is_clean() {
        let mut wire = Vec::new();
        write_frame_bytes(&mut wire, b"one").unwrap();
        write_frame_bytes(&mut wire, b"two").unwrap();
        let mut dec = FrameDecoder::new();
        let mut r = &wire[..];
        assert_eq!(dec.read_from(&mut r).unwrap(), StreamState::Closed);
        assert_eq!(dec.next_bytes().unwrap().unwrap(), b"one");
        assert_eq!(dec.next_bytes().unwrap().unwrap(), b"two");
        // A partial third frame: the error comes, and the whole ones stay readable.
        write_frame_bytes(&mut wire, b"three").unwrap();
        let mut dec = FrameDecoder::new();
        let mut r = &wire[..wire.len() - 2];
        assert!(matches!(dec.read_from(&mut r), Err(Error::FrameTruncated { .. })));
        assert_eq!(dec.next_bytes().unwrap().unwrap(), b"one");
        assert_eq!(dec.next_bytes().unwrap().unwrap(), b"two");
        assert_eq!(dec.next_bytes().unwrap(), None);
    }

    #[test]
    fn garbage_json_is_a_decode_error() {
        let mut buf = Vec::new();
        write_frame_bytes(&mut buf, b"{not json").unwrap();
        let mut r = &buf[..];
        assert!(matches!(read_frame::<_, Msg>(&mut r), Err(Error::FrameDecode { .. })));
    }

    proptest! {
        #[test]
        fn decoder_reassembles_any_split(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8), cut in 1usize..50) {
            let mut wire = Vec::new();
            for p in &payloads { write_frame_bytes(&mut wire, p).unwrap(); }
            let mut dec = FrameDecoder::new();
            let mut out = Vec::new();
            for chunk in wire.chunks(cut) {
                dec.feed(chunk);
                while let Some(f) = dec.next_bytes().unwrap() { out.push(f); }
            }
            prop_assert_eq!(out, payloads);
            prop_assert!(dec.finish().is_ok());
        }

        #[test]
        fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut dec = FrameDecoder::with_max(1024);
            dec.feed(&bytes);
            while let Ok(Some(_)) = dec.next_bytes() {}
            let _ = dec.finish();
            let mut r = &bytes[..];
            let _ = read_frame::<_, Msg>(&mut r);
        }

        #[test]
        fn truncation_anywhere_is_detected(payload in proptest::collection::vec(any::<u8>(), 1..500), cut_frac in 0.0f64..1.0) {
            let mut wire = Vec::new();
            write_frame_bytes(&mut wire, &payload).unwrap();
            let cut = 1 + ((wire.len() - 2) as f64 * cut_frac) as usize;
            let mut dec = FrameDecoder::new();
            let mut r = &wire[..cut];
            let res = dec.read_from(&mut r);
            let is_truncated = matches!(res, Err(Error::FrameTruncated { .. }));
            prop_assert!(is_truncated);
        }
    }
}
