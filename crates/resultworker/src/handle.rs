//! [`ResultWorker`]: the application's handle. It writes requests into the worker's pipe;
//! the listener thread (`listener.rs`) owns the worker process and completes the futures.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use procyard_core::Pid;
use procyard_core::mio::{Poll, Token, Waker};
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::future::{Key, ResultFuture, Slot, lock_map};
use crate::job::{ArgsFor, Function, Job};
use crate::listener::Listener;
use crate::shared::{Shared, lock};
use crate::wire::{self, Request};
use crate::{Error, Result};

const WAKE: Token = Token(0);

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        stop(&self.shared, Duration::ZERO);
    }
}

/// A background worker process and the futures of the jobs sent to it. Cheap to clone; the
/// worker stops when the last clone of an instance from [`new`](ResultWorker::new) is dropped
/// (the process's global one, from [`start`](ResultWorker::start), lives until
/// [`stop`](ResultWorker::stop) or the end of the process).
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

fn global_slot() -> &'static Mutex<Option<ResultWorker>> {
    static GLOBAL: Mutex<Option<ResultWorker>> = Mutex::new(None);
    &GLOBAL
}

impl ResultWorker {
    /// Starts the process's global worker with `config` (from any thread; concurrent callers
    /// wait for it). If it runs already with the same `config`, returns it; with a different
    /// one, [`Error::AlreadyRunning`] (stop it first, or take it as it is with
    /// [`global`](ResultWorker::global)). A forked child never shares its parent's worker:
    /// there, `start` starts one of its own. Like [`new`](ResultWorker::new), it never
    /// returns in a worker process whose `main` did not call [`init`](crate::init) first.
    pub fn start(config: Config) -> Result<ResultWorker> {
        let mut global = lock(global_slot());
        if let Some(worker) = global.as_ref().filter(|w| w.is_running()) {
            if worker.config() != &config {
                return Err(Error::AlreadyRunning);
            }
            return Ok(worker.clone());
        }
        let worker = ResultWorker::new(config)?;
        *global = Some(worker.clone());
        Ok(worker)
    }

    /// The process's global worker, while it runs (see [`start`](ResultWorker::start)).
    pub fn global() -> Option<ResultWorker> {
        lock(global_slot()).as_ref().filter(|w| w.is_running()).cloned()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.shared().config
    }

    /// A separate worker of its own, stopped when its last clone is dropped.
    ///
    /// In a worker process whose `main` did not call [`init`](crate::init) first, this does
    /// not return: the process tells the application (which gets [`Error::InitNotCalled`]),
    /// says why on stderr and exits, instead of starting a worker of its own.
    pub fn new(config: Config) -> Result<ResultWorker> {
        if crate::mode::worker_mode().is_some() {
            crate::mode::refuse_start_in_worker_mode();
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
        let _ = shared.thread.id.set(thread.thread().id());
        *lock(&shared.thread.handle) = Some(thread);
        match rx.recv() {
            Ok(Ok(())) => Ok(ResultWorker { handle: Arc::new(Handle { shared }) }),
            Ok(Err(e)) => {
                if let Some(t) = lock(&shared.thread.handle).take() {
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
        shared.is_owner() && shared.stop.get().is_none()
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
        let mut link = lock(&shared.link);
        if shared.stop.get().is_some() {
            drop(link);
            slot.set(Err(Error::Stopped));
            return future;
        }
        lock_map(&shared.keys).insert(key, Arc::downgrade(&slot));
        match &mut link.file {
            Some(file) => {
                if wire::write_frame(file, &payload).is_err() {
                    link.file = None;
                    drop(link);
                    shared.fail([key], &Error::WorkerLost);
                }
            }
            None => link.backlog.push((key, payload)),
        }
        future
    }

    /// Calls a registered function; shorthand for `submit(function.job(args))`. `args` is an
    /// `A` or a borrowed form of it ([`ArgsFor`]): `call(&f, "x")` for a `Function<String, _>`.
    pub fn call<A, R: DeserializeOwned, Q: ArgsFor<A> + ?Sized>(
        &self,
        function: &Function<A, R>,
        args: &Q,
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
        lock(&self.shared().status).worker_pid
    }

    /// How many times the worker was restarted after dying.
    pub fn restart_count(&self) -> u64 {
        lock(&self.shared().status).restarts
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
    let backlog: Vec<u64> = {
        let mut link = lock(&shared.link);
        if shared.stop.set(grace).is_err() {
            Vec::new()
        } else {
            if let Some(mut file) = link.file.take() {
                let grace_ms = grace.as_millis().min(u128::from(u64::MAX)) as u64;
                let payload = wire::encode_request(&Request::Stop { grace_ms }, &[]);
                let _ = wire::write_frame(&mut file, &payload);
            }
            link.backlog.drain(..).map(|(k, _)| k).collect()
        }
    };
    shared.fail(backlog, &Error::Stopped);
    let _ = shared.waker.wake();
    if shared.thread.id.get() == Some(&std::thread::current().id()) {
        return;
    }
    let thread = lock(&shared.thread.handle).take();
    if let Some(thread) = thread {
        let _ = thread.join();
    }
}
