//! Reading output straight from the supervisor's memfd: asking for its descriptor (sent with
//! the answer, `SCM_RIGHTS`), copying a `file` read's bytes from it, releasing them.

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use procyard_core::{FileView, frame};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use super::{Task, closed_before_answer};
use crate::buffer::{append_ring, append_ring_with};
use crate::protocol::{Request, Response, StreamName};
use crate::stream::ReadMeta;
use crate::{Error, Result};

impl Task {
    /// Copies the bytes of a `file` read from the memfd, then releases them (a request
    /// without an answer).
    pub(super) fn read_from_file(
        &mut self,
        i: usize,
        ring: u64,
        meta: ReadMeta,
        buf: &mut Vec<u8>,
    ) -> Result<ReadMeta> {
        let stream = if i == 0 { StreamName::Stdout } else { StreamName::Stderr };
        let copied = match &self.files[i] {
            Some(file) if file.ring == ring => file
                .copy(meta.offset, meta.len as usize, buf)
                .map_err(|e| Error::path("read the output of", self.socket_path(), e)),
            _ => Err(Error::Protocol { id: self.id.clone(), what: "unknown ring".into() }),
        };
        let released = match (frame::encode_frame(&Request::Release { stream }), &mut self.conn) {
            (Ok(bytes), Some(sock)) => sock.write_all(&bytes).is_ok(),
            _ => false,
        };
        if !released {
            // Closing the connection releases the pin too.
            self.conn = None;
        }
        copied.map(|()| meta)
    }

    /// Asks for `stream`'s memfd; an older supervisor that does not know the request leaves
    /// reads on the socket. A kept connection the supervisor closed while it was idle is
    /// opened again once (as [`Task::call`] does).
    pub(super) fn fetch_file(&mut self, stream: StreamName) -> Result<()> {
        let reused = self.conn.is_some();
        let mut result = self.try_fetch_file(stream);
        if reused && result.as_ref().is_err_and(closed_before_answer) {
            result = self.try_fetch_file(stream);
        }
        result.map_err(|e| self.classify(e))
    }

    fn try_fetch_file(&mut self, stream: StreamName) -> Result<()> {
        self.connect()?;
        let Some(mut sock) = self.conn.take() else {
            return Err(Error::SupervisorGone { id: self.id.clone() });
        };
        // On an error the connection is dropped: its stream may be cut mid-frame.
        match self.receive_file(&mut sock, stream)? {
            Some(file) => self.files[stream_slot(stream)] = Some(file),
            None => self.no_files = true,
        }
        self.conn = Some(sock);
        Ok(())
    }

    fn receive_file(&self, sock: &mut UnixStream, stream: StreamName) -> Result<Option<RingFile>> {
        let bytes = frame::encode_frame(&Request::OutputFile { stream })
            .map_err(|source| Error::Connection { id: self.id.clone(), source })?;
        sock.write_all(&bytes).map_err(|e| self.io_err(e))?;
        // The descriptor comes with the answer's first bytes: receive them with `recvmsg`.
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut header = [0u8; 4];
        let got = loop {
            match rustix::net::recvmsg(
                &*sock,
                &mut [IoSliceMut::new(&mut header)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Err(rustix::io::Errno::INTR) => continue,
                other => break other.map_err(|e| self.io_err(e.into()))?.bytes,
            }
        };
        let mut fd: Option<OwnedFd> = None;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                for received in fds {
                    fd.get_or_insert(received);
                }
            }
        }
        if got == 0 {
            return Err(Error::Connection {
                id: self.id.clone(),
                source: procyard_core::Error::FrameTruncated { expected: 4, got: 0 },
            });
        }
        sock.read_exact(&mut header[got..]).map_err(|e| self.io_err(e))?;
        let len = u32::from_be_bytes(header) as usize;
        if len > procyard_core::frame::MAX_FRAME {
            return Err(Error::Protocol { id: self.id.clone(), what: format!("{len}-byte frame") });
        }
        let mut body = vec![0u8; len];
        sock.read_exact(&mut body).map_err(|e| self.io_err(e))?;
        let response: Response = serde_json::from_slice(&body).map_err(|e| Error::Protocol {
            id: self.id.clone(),
            what: format!("invalid response: {e}"),
        })?;
        match (response, fd) {
            (Response::OutputFile { stream: s, ring }, Some(fd)) if s == stream && ring > 0 => {
                Ok(Some(RingFile::new(File::from(fd), ring)))
            }
            // Refused (an older supervisor does not know the request, or it could not make
            // the file): the socket it is.
            (Response::Error { .. }, _) => Ok(None),
            (other, _) => Err(self.unexpected(&other)),
        }
    }
}

/// A supervisor's memfd of one stream's retained bytes (a ring of `ring` bytes: offset `o` at
/// `o % ring`), mapped where the supervisor sealed it against shrinking: a read's bytes are
/// then copied out of the mapping (no system call, no page lookup per page), else `pread`.
#[derive(Debug)]
pub(super) struct RingFile {
    file: File,
    ring: u64,
    view: Option<FileView>,
}

impl RingFile {
    fn new(file: File, ring: u64) -> RingFile {
        // An older supervisor's memfd is not sealed: then it is read with `pread`.
        let view = usize::try_from(ring).ok().and_then(|len| FileView::new(file.as_fd(), len).ok());
        RingFile { file, ring, view }
    }

    /// Appends `len` bytes at absolute `offset` to `out` (nothing on an error).
    fn copy(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
        let Some(view) = &self.view else {
            return append_ring(&self.file, self.ring, offset, len, out);
        };
        append_ring_with(self.ring, offset, len, out, |pos, n, out| {
            view.copy_to(pos as usize, n, out)
        })
    }
}

pub(super) fn stream_slot(stream: StreamName) -> usize {
    match stream {
        StreamName::Stdout => 0,
        StreamName::Stderr => 1,
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::buffer::OutputBuffer;

    /// The ring's bytes, read as a reader does: mapped (the supervisor's memfd is sealed) and
    /// with `pread` (an unsealed memfd, as an older supervisor's), across the ring's seam.
    #[test]
    fn a_reader_copies_the_same_bytes_mapped_or_not() {
        let mut buf = OutputBuffer::new(300_000);
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(10_007) {
            buf.push(chunk);
        }
        let path = format!("/proc/self/fd/{}", buf.file().expect("memfd").as_raw_fd());
        let mapped = RingFile::new(File::open(&path).expect("reopen"), 300_000);
        assert!(mapped.view.is_some(), "the supervisor's memfd can be mapped");
        let plain = std::fs::File::from(
            rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd"),
        );
        std::io::copy(&mut File::open(&path).expect("reopen"), &mut &plain).expect("copy");
        let unsealed = RingFile::new(plain, 300_000);
        assert!(unsealed.view.is_none(), "an unsealed memfd is not mapped");
        for file in [&mapped, &unsealed] {
            let mut out = b"x".to_vec();
            file.copy(599_990, 20, &mut out).expect("across the seam");
            assert_eq!(&out[1..], &data[599_990..600_010]);
            out.clear();
            file.copy(400_000, 300_000, &mut out).expect("the whole ring");
            assert_eq!(out, &data[400_000..]);
        }
        // A range the ring does not hold in one piece fails and leaves `out` as it was.
        let mut out = b"kept".to_vec();
        let short = RingFile { ring: 400_000, ..RingFile::new(File::open(&path).unwrap(), 1) };
        assert!(short.copy(0, 400_000, &mut out).is_err());
        assert_eq!(out, b"kept");
    }
}
