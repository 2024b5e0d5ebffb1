//! [`Task`]: what a child process runs, and the [`Endpoint`] a task talks to its parent through.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// What one child process runs.
///
/// - [`Task::command`]: a program, through `procyard_core::Command` (always safe; the fast
///   spawn path). Its outcome is its exit status.
/// - [`Task::function`]: a function registered in a [`Registry`](crate::Registry), run by
///   re-executing the current binary in worker mode (safe from any thread; the program must call
///   [`init`](crate::init) first thing in `main`).
/// - [`Task::closure`]: a closure forked in place. Only sound in a single-threaded process, so
///   the manager checks the thread count at each fork and returns
///   [`Error::NotSingleThreaded`] otherwise.
pub struct Task {
    pub(crate) kind: TaskKind,
}

pub(crate) type ClosureFn = Box<dyn FnOnce(&mut Endpoint) -> Result<Value, String> + Send>;

pub(crate) enum TaskKind {
    Command(Box<procyard_core::Command>),
    Function { name: String, args: String },
    Closure(ClosureFn),
}

/// The longest serialized arguments of a function task (one `argv` string holds 128 KiB).
pub const MAX_FUNCTION_ARGS: usize = 120 * 1024;

impl Task {
    /// A task that runs `command`. The child is put in a process group of its own unless the
    /// command says otherwise; it inherits no descriptor of the manager.
    pub fn command(command: procyard_core::Command) -> Task {
        Task { kind: TaskKind::Command(Box::new(command)) }
    }

    /// A task that runs the function registered as `name` with `args`, in a fresh process
    /// of the current binary (see [`init`](crate::init)).
    pub fn function<A: Serialize + ?Sized>(name: &str, args: &A) -> Result<Task> {
        let args = serde_json::to_string(args)
            .map_err(|source| Error::Encode { what: "function arguments", source })?;
        if args.len() > MAX_FUNCTION_ARGS {
            return Err(Error::ArgumentsTooLarge {
                name: name.to_owned(),
                len: args.len(),
                max: MAX_FUNCTION_ARGS,
            });
        }
        Ok(Task { kind: TaskKind::Function { name: name.to_owned(), args } })
    }

    /// A task that runs `f` in a forked copy of this process. `f` may send messages through
    /// the endpoint; its `Ok` value or `Err` message is the task's outcome, and a panic becomes
    /// a [`Outcome::TaskError`](crate::Outcome::TaskError).
    ///
    /// The child ends with `_exit` right after `f` returns (no destructors, no atexit), after
    /// flushing stdout (stderr is unbuffered).
    pub fn closure<F, T, E>(f: F) -> Task
    where
        F: FnOnce(&mut Endpoint) -> std::result::Result<T, E> + Send + 'static,
        T: Serialize,
        E: fmt::Display,
    {
        Task {
            kind: TaskKind::Closure(Box::new(move |endpoint| match f(endpoint) {
                Ok(value) => serde_json::to_value(value)
                    .map_err(|e| format!("unable to serialize the task's value: {e}")),
                Err(e) => Err(e.to_string()),
            })),
        }
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            TaskKind::Command(c) => format!("command {}", c.get_program().to_string_lossy()),
            TaskKind::Function { name, .. } => format!("function {name}"),
            TaskKind::Closure(_) => "closure".to_owned(),
        }
    }
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task").field("kind", &self.describe()).finish()
    }
}

/// One frame on a task's pipe, child to parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Wire {
    Message(Value),
    Value(Value),
    Error(String),
}

/// A task's end of the pipe to its parent: messages sent here reach the task's message
/// handler in order, before its completion handler runs.
#[derive(Debug)]
pub struct Endpoint {
    file: File,
}

impl Endpoint {
    pub(crate) fn new(fd: OwnedFd) -> Endpoint {
        Endpoint { file: File::from(fd) }
    }

    /// Sends one message to the parent (blocks while the pipe is full).
    pub fn send<T: Serialize + ?Sized>(&mut self, message: &T) -> Result<()> {
        let value = serde_json::to_value(message)
            .map_err(|source| Error::Encode { what: "a message", source })?;
        self.write(&Wire::Message(value))
    }

    pub(crate) fn write(&mut self, wire: &Wire) -> Result<()> {
        let frame = procyard_core::frame::encode_frame(wire).map_err(|e| Error::Send {
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        self.file.write_all(&frame).map_err(|source| Error::Send { source })
    }

    pub(crate) fn finish(&mut self, result: Result<Value, String>) -> Result<()> {
        match result {
            Ok(v) => self.write(&Wire::Value(v)),
            Err(m) => self.write(&Wire::Error(m)),
        }
    }
}

/// The raw pipe. Anything but whole frames written here makes the task's outcome
/// [`Outcome::DiedMidMessage`](crate::Outcome::DiedMidMessage) or
/// [`Outcome::Lost`](crate::Outcome::Lost).
impl AsFd for Endpoint {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_arguments_are_checked() {
        let big = "x".repeat(MAX_FUNCTION_ARGS + 1);
        assert!(matches!(Task::function("f", &big), Err(Error::ArgumentsTooLarge { .. })));
        let t = Task::function("f", &[1, 2]).unwrap();
        assert_eq!(t.describe(), "function f");
    }

    #[test]
    fn wire_shape() {
        let frame = serde_json::to_string(&Wire::Error("boom".into())).unwrap();
        assert_eq!(frame, r#"{"error":"boom"}"#);
    }
}
