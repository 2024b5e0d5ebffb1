//! A bounded capture of one output stream: the first half of the limit kept as it came, the
//! last half in a ring, the bytes between counted and dropped. Never holds more than the
//! limit, however much is written. Pure.

use std::collections::VecDeque;

use crate::queue::Captured;

/// One stream being captured.
#[derive(Debug)]
pub(crate) struct Capture {
    head_max: usize,
    tail_max: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl Capture {
    /// A capture that keeps at most `limit` bytes (half head, half tail).
    pub(crate) fn new(limit: usize) -> Capture {
        let head_max = limit / 2;
        Capture {
            head_max,
            tail_max: limit - head_max,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    /// Takes `bytes` written by the job.
    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.head_max - self.head.len();
        if room > 0 {
            let n = room.min(bytes.len());
            self.head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        if self.tail_max == 0 || bytes.is_empty() {
            return;
        }
        if bytes.len() >= self.tail_max {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.tail_max..]);
            return;
        }
        let over = (self.tail.len() + bytes.len()).saturating_sub(self.tail_max);
        self.tail.drain(..over);
        self.tail.extend(bytes);
    }

    /// What is kept so far, as [`Capture::finish`] would store it (for a job followed live).
    pub(crate) fn peek(&self) -> Captured {
        Capture {
            head_max: self.head_max,
            tail_max: self.tail_max,
            head: self.head.clone(),
            tail: self.tail.clone(),
            total: self.total,
        }
        .finish()
    }

    /// Bytes written so far.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// What is kept of the bytes written after the first `from` (a marker line for those
    /// dropped), for `logs -f`.
    pub(crate) fn since(&self, from: u64) -> Vec<u8> {
        let mut out = Vec::new();
        if from >= self.total {
            return out;
        }
        let head_len = self.head.len() as u64;
        let tail_start = self.total - self.tail.len() as u64;
        let mut at = from;
        if at < head_len {
            out.extend_from_slice(&self.head[at as usize..]);
            at = head_len;
        }
        if at < tail_start {
            if out.last().is_some_and(|b| *b != b'\n') {
                out.push(b'\n');
            }
            out.extend_from_slice(format!("[… {} bytes dropped …]\n", tail_start - at).as_bytes());
            at = tail_start;
        }
        out.extend(self.tail.iter().skip((at - tail_start) as usize));
        out
    }

    /// What is kept, as stored: head, a marker line with the count dropped, tail.
    pub(crate) fn finish(self) -> Captured {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let dropped = self.total - kept;
        let mut bytes = self.head;
        if dropped > 0 {
            if bytes.last().is_some_and(|b| *b != b'\n') {
                bytes.push(b'\n');
            }
            bytes.extend_from_slice(format!("[… {dropped} bytes dropped …]\n").as_bytes());
        }
        bytes.extend(self.tail);
        Captured { bytes, total: self.total, dropped }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_output_is_kept_whole() {
        let mut c = Capture::new(16);
        c.push(b"hello ");
        c.push(b"world");
        let out = c.finish();
        assert_eq!((out.bytes.as_slice(), out.total, out.dropped), (&b"hello world"[..], 11, 0));
    }

    #[test]
    fn a_flood_keeps_head_and_tail_and_counts_the_rest() {
        let mut c = Capture::new(8);
        for chunk in (0u8..100).collect::<Vec<_>>().chunks(7) {
            c.push(chunk);
            assert!(c.head.len() + c.tail.len() <= 8, "never more than the limit");
        }
        let out = c.finish();
        assert_eq!((out.total, out.dropped), (100, 92));
        assert_eq!(&out.bytes[..4], &[0, 1, 2, 3]);
        assert_eq!(&out.bytes[out.bytes.len() - 4..], &[96, 97, 98, 99]);
        let text = String::from_utf8_lossy(&out.bytes);
        assert!(text.contains("[… 92 bytes dropped …]"), "{text:?}");
    }

    #[test]
    fn peek_shows_what_finish_will() {
        let mut c = Capture::new(8);
        c.push(b"0123456789");
        let peeked = c.peek();
        c.push(b"ab");
        assert_eq!(peeked.total, 10);
        assert_eq!(c.finish().total, 12);
    }

    #[test]
    fn since_an_offset() {
        let mut c = Capture::new(8);
        c.push(b"abc");
        assert_eq!(
            (c.since(0), c.since(1), c.since(3), c.total()),
            (b"abc".to_vec(), b"bc".to_vec(), vec![], 3)
        );
        c.push(b"defghijklmn");
        // Head "abcd", tail "klmn", 6 dropped.
        assert_eq!(c.since(2), b"cd\n[\xe2\x80\xa6 6 bytes dropped \xe2\x80\xa6]\nklmn".to_vec());
        assert_eq!(c.since(12), b"mn".to_vec());
        assert!(c.since(6).starts_with("[… 4 bytes".as_bytes()));
    }

    #[test]
    fn one_huge_write_and_a_zero_limit() {
        let mut c = Capture::new(10);
        c.push(&vec![b'x'; 1 << 20]);
        c.push(b"END");
        let out = c.finish();
        assert!(out.bytes.ends_with(b"xxEND"));
        assert_eq!(out.dropped, (1 << 20) + 3 - 10);
        let mut none = Capture::new(0);
        none.push(b"abc");
        assert_eq!(none.finish().dropped, 3);
    }
}
