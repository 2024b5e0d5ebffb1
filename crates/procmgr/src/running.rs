//! One child of a [`ProcessManager`](crate::ProcessManager) as the manager holds it: its pipe,
//! the frames read from it, its exit, its handlers, and the outcome they make.

use std::io::Read;

use procyard_core::event::retry_interrupted;
use procyard_core::mio::unix::pipe::Receiver;
use procyard_core::{Child, Exit, FrameDecoder};
use serde_json::Value;

use crate::Outcome;
use crate::output::Capture;
use crate::task::Wire;

pub(crate) type MessageHandler = Box<dyn FnMut(Value) + Send>;
pub(crate) type CompletionHandler = Box<dyn FnOnce(Outcome) + Send>;

pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) pipe: Option<Receiver>,
    pub(crate) decoder: FrameDecoder,
    /// The outcome the child's final frame gave.
    pub(crate) result: Option<Outcome>,
    pub(crate) truncated: Option<(usize, usize)>,
    pub(crate) broken: Option<String>,
    pub(crate) exit: Option<std::result::Result<Exit, String>>,
    pub(crate) on_message: Option<MessageHandler>,
    pub(crate) on_complete: CompletionHandler,
    /// A captured command's stdout and stderr.
    /// Boxed: an idle child without one costs a pointer, not the whole capture.
    pub(crate) capture: Option<Box<Capture>>,
}

impl Running {
    /// Reads everything available (until `WouldBlock` or end of stream), delivering whole
    /// frames as they complete. `buf` belongs to the manager: a buffer on the stack would be
    /// zeroed, and so copied page by page after each fork (copy-on-write).
    pub(crate) fn drain_pipe(&mut self, buf: &mut [u8]) {
        let mut closed = false;
        loop {
            let Some(pipe) = self.pipe.as_mut() else { return };
            match retry_interrupted(|| pipe.read(buf)) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    self.decoder.feed(&buf[..n]);
                    self.take_frames();
                    if self.broken.is_some() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.broken.get_or_insert_with(|| format!("unable to read from the task: {e}"));
                    break;
                }
            }
        }
        if closed
            && self.broken.is_none()
            && let Err(procyard_core::Error::FrameTruncated { expected, got }) =
                self.decoder.finish()
        {
            self.truncated = Some((got, expected));
        }
        if closed || self.broken.is_some() {
            // Closing the pipe takes it out of the `epoll` set (see `on_exit`).
            self.pipe = None;
        }
    }

    /// Delivers the whole frames buffered, each decoded in place (no copy of its payload).
    fn take_frames(&mut self) {
        loop {
            match self.decoder.next::<Wire>() {
                Ok(Some(Wire::Message(v))) => {
                    if let Some(handler) = self.on_message.as_mut() {
                        handler(v);
                    }
                }
                Ok(Some(Wire::Value(v))) => self.result = Some(Outcome::Value(v)),
                Ok(Some(Wire::Error(message))) => {
                    self.result = Some(Outcome::TaskError { message });
                }
                Ok(Some(Wire::UnknownFunction { name })) => {
                    self.result = Some(Outcome::UnknownFunction { name });
                }
                Ok(Some(Wire::InitNotCalled { program })) => {
                    self.result = Some(Outcome::InitNotCalled { program: program.into() });
                }
                Ok(None) => break,
                // A whole frame that is no `Wire`: consumed; the frames after it still count.
                Err(procyard_core::Error::FrameDecode { source }) => {
                    self.broken.get_or_insert_with(|| {
                        format!("undecodable frame from the task: {source}")
                    });
                }
                Err(e) => {
                    self.broken.get_or_insert_with(|| format!("bad frame from the task: {e}"));
                    break;
                }
            }
        }
    }

    pub(crate) fn outcome(&mut self) -> Outcome {
        if let Some(reason) = self.broken.take() {
            return Outcome::Lost { reason };
        }
        if let Some(outcome) = self.result.take() {
            return outcome;
        }
        match self.exit.take() {
            Some(Ok(exit)) if self.capture.is_some() => {
                let capture = *self.capture.take().unwrap_or_default();
                Outcome::Output(capture.into_output(exit))
            }
            Some(Ok(exit)) => match self.truncated {
                Some((received, expected)) => Outcome::DiedMidMessage { exit, received, expected },
                None => Outcome::from_exit(exit),
            },
            Some(Err(reason)) => Outcome::Lost { reason },
            None => Outcome::Lost { reason: "the child was not reaped".to_owned() },
        }
    }
}
