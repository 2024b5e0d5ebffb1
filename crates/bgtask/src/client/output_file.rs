//! Reading output straight from the supervisor's memfd: asking for its descriptor (sent with
//! the answer, `SCM_RIGHTS`), copying a `file` read's bytes from it, releasing them.

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use procyard_core::frame;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use super::{Task, closed_before_answer};
use crate::buffer::append_ring;
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
            Some((file, size)) if *size == ring => {
                append_ring(file, ring, meta.offset, meta.len as usize, buf)
                    .map_err(|e| Error::path("read the output of", self.socket_path(), e))
            }
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

    fn receive_file(
        &self,
        sock: &mut UnixStream,
        stream: StreamName,
    ) -> Result<Option<(File, u64)>> {
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
                Ok(Some((File::from(fd), ring)))
            }
            // Refused (an older supervisor does not know the request, or it could not make
            // the file): the socket it is.
            (Response::Error { .. }, _) => Ok(None),
            (other, _) => Err(self.unexpected(&other)),
        }
    }
}

pub(super) fn stream_slot(stream: StreamName) -> usize {
    match stream {
        StreamName::Stdout => 0,
        StreamName::Stderr => 1,
    }
}
