//! [`ResultWorker`]: the application's handle, and the listener thread that owns the worker
//! process, reads its results, notices its death and restarts it.

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use procyard_core::Pid;
use procyard_core::mio::{Poll, Token, Waker};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::future::{Key, KeyMap, ResultFuture, Slot, lock_map};
use crate::job::{Function, Job};
use crate::listener::Listener;
use crate::wire::{self, Request};
use crate::{Error, Result};

pub(crate) const WAKE: Token = Token(0);

/// How a [`ResultWorker`] runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Jobs running at once (each in its own child process). Default: the number of CPUs.
    pub max_workers: usize,
    /// The first restart delay after the worker dies; it doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// The longest restart delay.
    pub backoff_max: Duration,
    /// The program to start as the worker; default: this program (`/proc/self/exe`). It must
    /// call [`init`](crate::init) first thing in `main`.
    pub program: Option<PathBuf>,
    /// Let a job's child process run further function jobs instead of exiting after one
    /// (default false). Much faster: no fork per job, and small jobs are written ahead into a
    /// busy child's pipe (up to 8, 16 KiB) so it never waits for the worker. But jobs then
    /// share a process one after another: state a function leaves behind (globals, leaked
    /// memory, a changed working directory) is seen by later jobs. A child that crashes or
    /// times out is replaced, and the jobs written ahead to it run elsewhere. Commands are
    /// unaffected.
    pub reuse_processes: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            program: None,
            reuse_processes: false,
        }
    }
}

impl Config {
    /// Sets [`Config::max_workers`] (at least 1).
    pub fn max_workers(mut self, n: usize) -> Config {
        self.max_workers = n.max(1);
        self
    }

    /// Sets the restart backoff range.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Config {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// Sets [`Config::reuse_processes`].
    pub fn reuse_processes(mut self, reuse: bool) -> Config {
        self.reuse_processes = reuse;
        self
    }

    /// Sets the worker program.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Config {
        self.program = Some(program.into());
        self
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
pub(crate) struct WriterState {
    pub(crate) file: Option<File>,
    pub(crate) backlog: Vec<(u64, Vec<u8>)>,
    pub(crate) stopping: bool,
}

pub(crate) struct Shared {
    pub(crate) owner: Pid,
    pub(crate) config: Config,
    pub(crate) keys: Arc<KeyMap>,
    pub(crate) next_key: AtomicU64,
    pub(crate) writer: Mutex<WriterState>,
    pub(crate) stop_grace: Mutex<Option<Duration>>,
    pub(crate) waker: Waker,
    pub(crate) thread: Mutex<Option<JoinHandle<()>>>,
    pub(crate) thread_id: OnceLock<ThreadId>,
    pub(crate) worker_pid: Mutex<Option<Pid>>,
    pub(crate) restarts: AtomicU64,
}

impl Shared {
    /// Fresh state for an instance owned by this process, nothing submitted yet.
    pub(crate) fn new(config: Config, waker: Waker) -> Shared {
        Shared {
            owner: Pid::current(),
            config,
            keys: Arc::default(),
            next_key: AtomicU64::new(1),
            writer: Mutex::default(),
            stop_grace: Mutex::new(None),
            waker,
            thread: Mutex::new(None),
            thread_id: OnceLock::new(),
            worker_pid: Mutex::new(None),
            restarts: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_owner(&self) -> bool {
        Pid::current() == self.owner
    }

    /// Removes `keys` from the map and fails their futures with `error` (outside the lock:
    /// callbacks may drop futures, which takes the lock).
    pub(crate) fn fail(&self, keys: impl IntoIterator<Item = u64>, error: &Error) {
        let slots: Vec<Arc<Slot>> = {
            let mut map = lock_map(&self.keys);
            keys.into_iter().filter_map(|k| map.remove(&k)).filter_map(|w| w.upgrade()).collect()
        };
        for slot in slots {
            slot.set(Err(error.clone()));
        }
    }

    /// The worker is gone: forgets its request pipe and fails, with `error`, every job that
    /// was sent to it, but not the backlog (those go to the next worker). The keys are taken
    /// under the writer lock, which `submit` holds while it adds a key, so a job submitted
    /// meanwhile is either failed here or goes to the backlog, never both (failed here, it
    /// would still run on the next worker, and its result be discarded).
    pub(crate) fn fail_sent(&self, error: &Error) {
        let keys: Vec<u64> = {
            let mut writer = lock(&self.writer);
            writer.file = None;
            let backlog: HashSet<u64> = writer.backlog.iter().map(|(k, _)| *k).collect();
            lock_map(&self.keys).keys().copied().filter(|k| !backlog.contains(k)).collect()
        };
        self.fail(keys, error);
    }

    pub(crate) fn fail_all_except(&self, keep: &HashSet<u64>, error: &Error) {
        let keys: Vec<u64> =
            lock_map(&self.keys).keys().copied().filter(|k| !keep.contains(k)).collect();
        self.fail(keys, error);
    }
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        stop(&self.shared, Duration::ZERO);
    }
}

/// A background worker process and the futures of the jobs sent to it. Cheap to clone; the
/// worker stops when the last clone of a separate instance is dropped (the global one from
/// [`ResultWorker::start`] lives until [`ResultWorker::stop`] or the end of the process).
#[derive(Clone)]
pub struct ResultWorker {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for ResultWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultWorker")
            .field("worker_pid", &self.worker_pid())
            .field("pending", &self.pending_count())
            .finish()
    }
}

fn global() -> &'static Mutex<Option<ResultWorker>> {
    static GLOBAL: Mutex<Option<ResultWorker>> = Mutex::new(None);
    &GLOBAL
}

impl ResultWorker {
    /// The process's global worker: started by the first call (from any thread; concurrent
    /// callers wait for it), returned as is afterwards. `config` is used only when it starts
    /// (again after a [`stop`](ResultWorker::stop), or in a forked child, which never shares
    /// its parent's worker). Like [`new`](ResultWorker::new), it never returns in a worker
    /// process whose `main` did not call [`init`](crate::init) first.
    pub fn start(config: Config) -> Result<ResultWorker> {
        let mut global = lock(global());
        if let Some(worker) = global.as_ref().filter(|w| w.is_running()) {
            return Ok(worker.clone());
        }
        let worker = ResultWorker::new(config)?;
        *global = Some(worker.clone());
        Ok(worker)
    }

    /// A separate worker of its own, stopped when its last clone is dropped.
    ///
    /// In a worker process whose `main` did not call [`init`](crate::init) first, this does
    /// not return: the process tells the application (which gets [`Error::InitNotCalled`]),
    /// says why on stderr and exits, instead of starting a worker of its own.
    pub fn new(config: Config) -> Result<ResultWorker> {
        if crate::worker::worker_mode().is_some() {
            crate::worker::refuse_start_in_worker_mode();
        }
        let poll = Poll::new().map_err(|e| Error::os("create a poll instance", e))?;
        let waker =
            Waker::new(poll.registry(), WAKE).map_err(|e| Error::os("create a waker", e))?;
        let shared = Arc::new(Shared::new(config, waker));
        let (tx, rx) = mpsc::channel();
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("procyard-resultworker".into())
            .spawn(move || Listener::run(for_thread, poll, tx))
            .map_err(|e| Error::os("start the listener thread", e))?;
        let _ = shared.thread_id.set(thread.thread().id());
        *lock(&shared.thread) = Some(thread);
        match rx.recv() {
            Ok(Ok(())) => Ok(ResultWorker { handle: Arc::new(Handle { shared }) }),
            Ok(Err(e)) => {
                if let Some(t) = lock(&shared.thread).take() {
                    let _ = t.join();
                }
                Err(e)
            }
            Err(_) => {
                Err(Error::os("start the listener thread", std::io::Error::other("it ended")))
            }
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Whether jobs can be submitted (not stopped, and this is the process that started it).
    pub fn is_running(&self) -> bool {
        let shared = self.shared();
        shared.is_owner() && !lock(&shared.writer).stopping
    }

    /// Sends `job` to the worker; the future receives its value as `T`. A job that cannot be
    /// sent gets its error at once (and its key is forgotten).
    pub fn submit<T: DeserializeOwned>(&self, job: Job) -> ResultFuture<T> {
        let shared = self.shared();
        let key = shared.next_key.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        let future = ResultFuture::new(Key(key), Arc::clone(&slot), Arc::clone(&shared.keys));
        if let Err(e) = job.check() {
            slot.set(Err(e));
            return future;
        }
        if !shared.is_owner() {
            slot.set(Err(Error::Stopped));
            return future;
        }
        let header = Request::Run {
            key,
            spec: job.spec,
            timeout_ms: job.timeout.map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64),
        };
        let payload = wire::encode_request(&header, &job.body);
        if payload.len() > procyard_core::MAX_FRAME {
            let reason = format!("request of {} bytes exceeds the frame limit", payload.len());
            slot.set(Err(Error::Malformed { reason }));
            return future;
        }
        let mut writer = lock(&shared.writer);
        if writer.stopping {
            drop(writer);
            slot.set(Err(Error::Stopped));
            return future;
        }
        lock_map(&shared.keys).insert(key, Arc::downgrade(&slot));
        match &mut writer.file {
            Some(file) => {
                if wire::write_frame(file, &payload).is_err() {
                    writer.file = None;
                    drop(writer);
                    shared.fail([key], &Error::WorkerLost);
                }
            }
            None => writer.backlog.push((key, payload)),
        }
        future
    }

    /// Calls a registered function; shorthand for `submit(function.job(args))`.
    pub fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        function: &Function<A, R>,
        args: &A,
    ) -> ResultFuture<R> {
        self.submit(function.job(args))
    }

    /// Another future for the job with `key`, while its result has not arrived yet (a key is
    /// forgotten once its future is set, or when its last future is dropped).
    pub fn get_result_future<T: DeserializeOwned>(&self, key: Key) -> Option<ResultFuture<T>> {
        let shared = self.shared();
        let map = lock_map(&shared.keys);
        let slot = map.get(&key.0).and_then(Weak::upgrade)?;
        drop(map);
        Some(ResultFuture::new(key, slot, Arc::clone(&shared.keys)))
    }

    /// Jobs whose futures still wait (the size of the key map).
    pub fn pending_count(&self) -> usize {
        lock_map(&self.shared().keys).len()
    }

    /// The worker process's pid, while one runs.
    pub fn worker_pid(&self) -> Option<Pid> {
        *lock(&self.shared().worker_pid)
    }

    /// How many times the worker was restarted after dying.
    pub fn restart_count(&self) -> u64 {
        self.shared().restarts.load(Ordering::Relaxed)
    }

    /// Stops: no new jobs; running jobs get `grace`, then TERM, then KILL; every pending
    /// future resolves (as [`Error::Stopped`] if its job did not finish). Returns once the
    /// worker is gone. Idempotent; a no-op in a forked child of the application.
    pub fn stop(&self, grace: Duration) {
        stop(self.shared(), grace);
    }
}

fn stop(shared: &Arc<Shared>, grace: Duration) {
    if !shared.is_owner() {
        return;
    }
    {
        let mut writer = lock(&shared.writer);
        if !writer.stopping {
            writer.stopping = true;
            let backlog: Vec<u64> = writer.backlog.drain(..).map(|(k, _)| k).collect();
            if let Some(mut file) = writer.file.take() {
                let grace_ms = grace.as_millis().min(u128::from(u64::MAX)) as u64;
                let payload = wire::encode_request(&Request::Stop { grace_ms }, &[]);
                let _ = wire::write_frame(&mut file, &payload);
            }
            drop(writer);
            shared.fail(backlog, &Error::Stopped);
        }
    }
    {
        let mut requested = lock(&shared.stop_grace);
        if requested.is_none() {
            *requested = Some(grace);
        }
    }
    let _ = shared.waker.wake();
    if shared.thread_id.get() == Some(&std::thread::current().id()) {
        return;
    }
    let thread = lock(&shared.thread).take();
    if let Some(thread) = thread {
        let _ = thread.join();
    }
}
