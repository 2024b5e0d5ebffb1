//! Jobs: registered functions with serialized arguments, and commands.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::wire::{CommandSpec, Spec};

/// A registered function as the worker calls it: JSON arguments in, JSON value or message out.
pub(crate) type ErasedFn = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

fn registry() -> &'static Mutex<HashMap<String, ErasedFn>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, ErasedFn>>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

/// A copy of the registry (taken once by the worker, before it forks).
pub(crate) fn registered() -> HashMap<String, ErasedFn> {
    registry().lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// A typed name for a registered function: arguments `A`, value `R`.
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
    /// The registered name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<A, R> Function<A, R> {
    /// A job calling this function with `args`: an `A`, or a borrowed form of it (see
    /// [`ArgsFor`]).
    pub fn job<Q: ArgsFor<A> + ?Sized>(&self, args: &Q) -> Job {
        Job::function(&self.name, args)
    }
}

/// Arguments that serialize as an `A`: `A` itself, and the borrowed forms a caller has at hand,
/// so `call(&f, "x")` and `call(&f, &"x")` work for a `Function<String, _>`:
/// `str` and `&str` for `String`, `[T]` and `&[T]` for `Vec<T>`, `Path` and `&Path`
/// for `PathBuf`.
///
/// ```
/// use procyard_resultworker::{ArgsFor, Function};
/// fn job_of<Q: ArgsFor<String> + ?Sized>(f: &Function<String, usize>, q: &Q) {
///     let _ = f.job(q);
/// }
/// let len = procyard_resultworker::register("len", |s: String| Ok::<_, String>(s.len()));
/// job_of(&len, "x");
/// job_of(&len, &"x");
/// job_of(&len, &String::from("x"));
/// ```
pub trait ArgsFor<A>: Serialize {}

impl<A: Serialize> ArgsFor<A> for A {}
impl ArgsFor<String> for str {}
impl ArgsFor<String> for &str {}
impl<T: Serialize> ArgsFor<Vec<T>> for [T] {}
impl<T: Serialize> ArgsFor<Vec<T>> for &[T] {}
impl ArgsFor<std::path::PathBuf> for Path {}
impl ArgsFor<std::path::PathBuf> for &Path {}

/// Registers `f` under `name` (replacing an earlier one) so the worker can run it.
///
/// Register every function **before** calling [`init`](crate::init): the worker process is
/// this same program started again, and it knows the functions registered by then. The
/// function runs in a child process forked from the single-threaded worker, its arguments and
/// value travel as JSON; an `Err` becomes [`Error::Failed`] with its text, and so does a panic.
pub fn register<A, R, E, F>(name: &str, f: F) -> Function<A, R>
where
    A: DeserializeOwned,
    R: Serialize,
    E: fmt::Display,
    F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
{
    let erased: ErasedFn = Arc::new(move |bytes: &[u8]| {
        let args: A = serde_json::from_slice(bytes).map_err(|e| format!("bad arguments: {e}"))?;
        let value = f(args).map_err(|e| e.to_string())?;
        serde_json::to_vec(&value).map_err(|e| format!("unable to serialize the value: {e}"))
    });
    registry().lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), erased);
    Function { name: name.to_owned(), _types: PhantomData }
}

/// A unit of work for the worker: a registered function with arguments, or a command.
#[derive(Clone, Debug)]
pub struct Job {
    pub(crate) spec: Spec,
    pub(crate) body: Vec<u8>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) encode_error: Option<Arc<serde_json::Error>>,
}

impl Job {
    /// Calls the function registered as `name` with `args` (serialized to JSON now).
    pub fn function<A: Serialize + ?Sized>(name: &str, args: &A) -> Job {
        let (body, encode_error) = match serde_json::to_vec(args) {
            Ok(body) => (body, None),
            Err(e) => (Vec::new(), Some(Arc::new(e))),
        };
        Job { spec: Spec::Function { name: name.to_owned() }, body, timeout: None, encode_error }
    }

    /// Runs `program` (looked up in `PATH`) with `args`; its value is a
    /// [`CommandOutput`](crate::CommandOutput)
    /// (stdout and stderr captured), or [`Error::CommandFailed`] with the same output when it
    /// does not exit with status 0. stdin is `/dev/null`.
    pub fn command<I, S>(program: &str, args: I) -> Job
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let spec = CommandSpec {
            program: program.to_owned(),
            args: args.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            cwd: None,
        };
        Job { spec: Spec::Command(spec), body: Vec::new(), timeout: None, encode_error: None }
    }

    /// Sets an environment variable of a command job (ignored for functions).
    pub fn env(mut self, key: &str, value: &str) -> Job {
        if let Spec::Command(c) = &mut self.spec {
            c.env.insert(key.to_owned(), value.to_owned());
        }
        self
    }

    /// Sets the working directory of a command job (ignored for functions).
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Job {
        if let Spec::Command(c) = &mut self.spec {
            c.cwd = Some(dir.as_ref().to_string_lossy().into_owned());
        }
        self
    }

    /// Kills the job (its whole process group) if it runs longer than `timeout`; its outcome
    /// is then [`Error::TimedOut`].
    pub fn timeout(mut self, timeout: Duration) -> Job {
        self.timeout = Some(timeout);
        self
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        match &self.encode_error {
            Some(source) => Err(Error::Encode { source: Arc::clone(source) }),
            None => Ok(()),
        }
    }
}
