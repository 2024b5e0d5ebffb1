//! [`Task`]: what a child process runs, and the [`Endpoint`] a task talks to its parent through.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use procyard_core::Command;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// What [`Task::command`] accepts: a [`Command`], or the `&mut Command` that its builder
/// methods return (`Command::shell("…").stdout(…)`). From a `&mut Command` the task takes the
/// whole configuration, and leaves behind a `Command` of the same program with nothing else
/// set (a `Command` holds descriptors, so it is moved rather than copied).
pub trait IntoCommand {
    /// The command to run.
    fn into_command(self) -> Command;
}

impl IntoCommand for Command {
    fn into_command(self) -> Command {
        self
    }
}

impl IntoCommand for &mut Command {
    fn into_command(self) -> Command {
        let program = self.get_program().to_owned();
        std::mem::replace(self, Command::new(program))
    }
}

/// What one child process runs.
///
/// - [`Task::command`]: a program, through [`Command`] (always safe; the fast spawn path).
///   Its outcome is its exit status, or with [`Task::capture_output`] its status, stdout and
///   stderr ([`Outcome::Output`](crate::Outcome::Output)).
/// - [`Task::function`] / [`Task::call`]: a function [`register`](crate::register)ed before
///   [`init`](crate::init), run by re-executing the current binary in worker mode (safe from
///   any thread; the program must call `init` first thing in `main`).
/// - [`Task::closure`]: a closure forked in place. Only sound in a single-threaded process, so
///   the manager checks the thread count at each fork and returns
///   [`Error::NotSingleThreaded`] otherwise.
pub struct Task {
    pub(crate) kind: TaskKind,
}

/// A closure task: runs the user's closure (the first call; later calls do nothing) and sends
/// its final frame (value or error). `FnMut` rather than `FnOnce`, so the forked child can run
/// it without freeing its box: freeing writes the allocator's pages, each then copied from the
/// parent's (copy-on-write) just before `_exit`.
pub(crate) type ClosureFn = Box<dyn FnMut(&mut Endpoint) -> Result<()> + Send>;

pub(crate) enum TaskKind {
    Command { command: Box<Command>, capture: bool },
    Function { name: String, args: String },
    Closure(ClosureFn),
}

/// A registered function's typed name: arguments `A`, value `R` (from
/// [`register`](crate::register)).
pub struct Function<A, R> {
    name: String,
    _types: PhantomData<fn(A) -> R>,
}

impl<A, R> Clone for Function<A, R> {
    fn clone(&self) -> Self {
        Function { name: self.name.clone(), _types: PhantomData }
    }
}

impl<A, R> fmt::Debug for Function<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Function").field(&self.name).finish()
    }
}

impl<A, R> Function<A, R> {
    pub(crate) fn new(name: &str) -> Function<A, R> {
        Function { name: name.to_owned(), _types: PhantomData }
    }

    /// The registered name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The longest serialized arguments of a function task (one `argv` string holds 128 KiB).
pub const MAX_FUNCTION_ARGS: usize = 120 * 1024;

impl Task {
    /// A task that runs `command`: a [`Command`], or the `&mut Command` its builder methods
    /// return, so a command is built in place:
    ///
    /// ```
    /// use procyard_procmgr::{Command, Outcome, Scheduler, Stdio, Strategy, Task};
    ///
    /// let scheduler = Scheduler::new(Strategy::Simple)?;
    /// let task = Task::command(Command::shell("echo hidden; exit 2").stdout(Stdio::Null));
    /// assert_eq!(scheduler.schedule(task)?.wait(), Outcome::Exited { code: 2 });
    /// # Ok::<(), procyard_procmgr::Error>(())
    /// ```
    ///
    /// The child is put in a process group of its own unless the command says otherwise; it
    /// inherits no descriptor of the manager.
    pub fn command(command: impl IntoCommand) -> Task {
        let command = Box::new(command.into_command());
        Task { kind: TaskKind::Command { command, capture: false } }
    }

    /// For a command task: captures its stdout and stderr (whatever the command said about
    /// them), each up to [`OUTPUT_LIMIT`](crate::OUTPUT_LIMIT) bytes, and makes its outcome
    /// [`Outcome::Output`](crate::Outcome::Output) — on success and on failure alike. Other
    /// tasks are unchanged.
    ///
    /// ```
    /// use procyard_procmgr::{Command, Exit, Scheduler, Strategy, Task};
    ///
    /// let scheduler = Scheduler::new(Strategy::Simple)?;
    /// let task = Task::command(Command::shell("echo out; echo err >&2; exit 3")).capture_output();
    /// let output = scheduler.schedule(task)?.wait().output().cloned().expect("captured");
    /// assert_eq!(output.status, Exit::Code(3));
    /// assert_eq!((&output.stdout[..], &output.stderr[..]), (&b"out\n"[..], &b"err\n"[..]));
    /// # Ok::<(), procyard_procmgr::Error>(())
    /// ```
    pub fn capture_output(mut self) -> Task {
        if let TaskKind::Command { capture, .. } = &mut self.kind {
            *capture = true;
        }
        self
    }

    /// A task that calls a [`register`](crate::register)ed function with `args` (see
    /// [`Task::function`]).
    pub fn call<A: Serialize, R>(function: &Function<A, R>, args: &A) -> Result<Task> {
        Task::function(function.name(), args)
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
        let mut f = Some(f);
        Task {
            kind: TaskKind::Closure(Box::new(move |endpoint| {
                match f.take().map(|f| f(endpoint)) {
                    Some(Ok(value)) => endpoint.finish_value(&value),
                    Some(Err(e)) => endpoint.finish(Err(e.to_string())),
                    None => Ok(()),
                }
            })),
        }
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            TaskKind::Command { command, .. } => {
                format!("command {}", command.get_program().to_string_lossy())
            }
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
    /// Sent by a process started for a function task whose `main` did not call `init` first
    /// (`program`: its executable), instead of running the function.
    InitNotCalled {
        program: String,
    },
    /// Sent by a process started for a function that is not registered in it.
    UnknownFunction {
        name: String,
    },
}

/// The same frames as [`Wire`], serialized straight from the task's own types (no
/// intermediate `Value`).
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum WireRef<'a, T: Serialize + ?Sized> {
    Message(&'a T),
    Value(&'a T),
}

/// The length prefix of a frame (`procyard_core::frame`: a big-endian `u32`).
const FRAME_HEADER: usize = 4;
/// Frames up to this size (header included) are built on the stack.
const STACK_FRAME: usize = 64;

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
        self.write(&WireRef::Message(message), "a message")
    }

    /// Writes one frame with a single `write` (while it fits in the pipe). A small frame is
    /// built on the stack: in a forked child every heap page the allocator writes is copied
    /// from the parent's (copy-on-write), so the common case allocates nothing.
    fn write<T: Serialize + ?Sized>(&mut self, wire: &T, what: &'static str) -> Result<()> {
        let mut stack = [0u8; STACK_FRAME];
        let (header, mut payload) = stack.split_at_mut(FRAME_HEADER);
        let room = payload.len();
        // Fails when the frame does not fit (or does not serialize): the general path below
        // then serializes it again and reports the error, if any.
        if serde_json::to_writer(&mut payload, wire).is_ok() {
            let len = room - payload.len();
            header.copy_from_slice(&(len as u32).to_be_bytes());
            let frame = &stack[..FRAME_HEADER + len];
            return self.file.write_all(frame).map_err(|source| Error::Send { source });
        }
        let frame = procyard_core::frame::encode_frame(wire).map_err(|e| match e {
            procyard_core::Error::Encode { source } => Error::Encode { what, source },
            e => Error::Send { source: std::io::Error::new(std::io::ErrorKind::InvalidData, e) },
        })?;
        self.file.write_all(&frame).map_err(|source| Error::Send { source })
    }

    /// Sends a task's final frame: its value or its error message.
    pub(crate) fn finish(&mut self, result: Result<Value, String>) -> Result<()> {
        match result {
            Ok(v) => self.write(&Wire::Value(v), "the task's value"),
            Err(m) => self.write(&Wire::Error(m), "the task's error"),
        }
    }

    /// Sends the final frame of a process started for a function nobody registered.
    pub(crate) fn refuse_unknown_function(&mut self, name: &str) -> Result<()> {
        self.write(&Wire::UnknownFunction { name: name.to_owned() }, "the refusal")
    }

    /// Sends the final frame of a process started for a function task whose `main` did not
    /// call `init` first.
    pub(crate) fn refuse_init_not_called(&mut self, program: &str) -> Result<()> {
        let refusal = Wire::InitNotCalled { program: program.to_owned() };
        self.write(&refusal, "the refusal")
    }

    /// Sends a closure's value as its final frame, or, if it does not serialize, the reason
    /// as the task's error.
    pub(crate) fn finish_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        match self.write(&WireRef::Value(value), "the task's value") {
            Err(Error::Encode { source, .. }) => {
                self.finish(Err(format!("unable to serialize the task's value: {source}")))
            }
            sent => sent,
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

    /// The frames an endpoint writes, decoded as the manager decodes them.
    fn frames_of(send: impl FnOnce(&mut Endpoint)) -> Vec<Wire> {
        let (read, write) = rustix::pipe::pipe().unwrap();
        let mut endpoint = Endpoint::new(write);
        send(&mut endpoint);
        drop(endpoint);
        let mut decoder = procyard_core::FrameDecoder::new();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut File::from(read), &mut bytes).unwrap();
        decoder.feed(&bytes);
        decoder.finish().unwrap();
        std::iter::from_fn(|| decoder.next::<Wire>().unwrap()).collect()
    }

    #[test]
    fn small_and_large_frames_alike() {
        let large = "x".repeat(10 * STACK_FRAME);
        let frames = frames_of(|e| {
            e.send(&1).unwrap();
            e.send(&large).unwrap();
            e.send(&serde_json::json!({"b": [1, 2], "a": null})).unwrap();
            e.finish_value(&(7, "seven")).unwrap();
        });
        let shapes: Vec<String> =
            frames.iter().map(|w| serde_json::to_string(w).unwrap()).collect();
        assert_eq!(
            shapes,
            [
                r#"{"message":1}"#.to_owned(),
                format!(r#"{{"message":"{large}"}}"#),
                r#"{"message":{"a":null,"b":[1,2]}}"#.to_owned(),
                r#"{"value":[7,"seven"]}"#.to_owned(),
            ]
        );
    }

    #[test]
    fn unserializable_value_is_a_task_error() {
        let mut bad = std::collections::BTreeMap::new();
        bad.insert(vec![1u8], 1);
        let frames = frames_of(|e| {
            assert!(matches!(e.send(&bad), Err(Error::Encode { what: "a message", .. })));
            e.finish_value(&bad).unwrap();
        });
        assert!(
            matches!(&frames[..], [Wire::Error(m)] if m.starts_with("unable to serialize the task's value: ")),
            "{frames:?}"
        );
    }

    #[test]
    fn wire_shape() {
        let frame = serde_json::to_string(&Wire::Error("boom".into())).unwrap();
        assert_eq!(frame, r#"{"error":"boom"}"#);
        let frames = frames_of(|e| e.refuse_init_not_called("/bin/app").unwrap());
        assert!(
            matches!(&frames[..], [Wire::InitNotCalled { program }] if program == "/bin/app"),
            "{frames:?}"
        );
    }
}
