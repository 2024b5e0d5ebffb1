//! [`TaskPool`]: the directory holding every task's socket and state file; spawning
//! supervisors and listing tasks.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use procyard_core::{DaemonConfig, Daemonized};

use crate::handoff::SuperviseRequest;
use crate::launch::{self, Launch, Situation, Start};
use crate::layout::{POOL_ENV, valid_id};
use crate::options::{SpawnOptions, check_options};
use crate::record::{Filter, Liveness, TaskRecord};
use crate::{Error, Result, Task, supervisor};

/// A directory of tasks. Every task has `<id>.sock` (its supervisor), `<id>.json` (its state,
/// readable without connecting) and, if asked, log files; the directory is mode 0700.
#[derive(Clone, Debug)]
pub struct TaskPool {
    dir: PathBuf,
    owner: u32,
    supervisor_binary: Option<PathBuf>,
    launch: Launch,
}

/// The default pool directory: `$PROCYARD_POOL`, else `bgtask` in the runtime directory
/// ([`procyard_core::runtime_dir`]: `/run/procyard` for root, else
/// `$XDG_RUNTIME_DIR/procyard`, else `/tmp/procyard-$EUID`).
pub fn default_pool_dir() -> PathBuf {
    match std::env::var_os(POOL_ENV).filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => procyard_core::runtime_dir().join("bgtask"),
    }
}

impl TaskPool {
    /// Opens the default pool ([`default_pool_dir`]).
    pub fn open_default() -> Result<TaskPool> {
        TaskPool::open(default_pool_dir())
    }

    /// Opens (creating it, mode 0700, if missing) the pool at `dir`. A pool writable by group
    /// or others is refused.
    pub fn open(dir: impl AsRef<Path>) -> Result<TaskPool> {
        let dir = dir.as_ref();
        let dir = if dir.is_absolute() {
            dir.to_owned()
        } else {
            std::env::current_dir().map_err(|e| Error::path("resolve", dir, e))?.join(dir)
        };
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| Error::path("create pool directory", &dir, e))?;
            // The umask may have cut bits; make the final directory exactly 0700.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::path("set permissions of", &dir, e))?;
        }
        let md =
            std::fs::metadata(&dir).map_err(|e| Error::path("open pool directory", &dir, e))?;
        if !md.is_dir() {
            return Err(Error::InsecurePool { path: dir, reason: "not a directory" });
        }
        if md.mode() & 0o022 != 0 {
            return Err(Error::InsecurePool { path: dir, reason: "writable by group or others" });
        }
        // Another user's pool is refused (even for root): its supervisors would serve that
        // user, and its files are that user's to forge.
        procyard_core::owner::check_owned(&dir, &md)?;
        Ok(TaskPool { dir, owner: md.uid(), supervisor_binary: None, launch: Launch::Auto })
    }

    /// The pool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The uid owning the pool (the only user, with root, its supervisors serve).
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// Sets the program executed to start supervisors: `procyard-bgtask-supervise` or the
    /// `procyard-bgtask` CLI. Without it, [`BIN_ENV`](crate::BIN_ENV) names it, else it is
    /// looked for next to the current executable (and one directory up), then on `PATH`, the
    /// small program first in each directory (core's
    /// [`find_companion`](procyard_core::companion::find_companion) rule).
    pub fn supervisor_binary(mut self, path: impl Into<PathBuf>) -> TaskPool {
        self.supervisor_binary = Some(path.into());
        self
    }

    /// Chooses how supervisors are started (see [`Launch`]).
    pub fn launch(mut self, launch: Launch) -> TaskPool {
        self.launch = launch;
        self
    }

    /// An interface to task `id` (cheap: nothing is connected yet).
    pub fn task(&self, id: &str) -> Result<Task> {
        if !valid_id(id) {
            return Err(Error::InvalidId { id: id.to_owned() });
        }
        Ok(Task::new(self.dir.clone(), id.to_owned()))
    }

    /// Starts a task under a new, fully detached supervisor and returns once the task runs.
    ///
    /// The supervisor is started by executing a supervisor program in its hidden mode, or
    /// forked from this process (daemonized; only when it is single-threaded, checked);
    /// [`Launch`] chooses. The program is the one set with [`TaskPool::supervisor_binary`],
    /// else the one [`BIN_ENV`](crate::BIN_ENV) names, else `procyard-bgtask-supervise` or
    /// `procyard-bgtask` beside this program, in the directory above it, or on `PATH`, else
    /// this program itself when its `main` called [`run_if_supervisor`](crate::run_if_supervisor)
    /// first. A multi-threaded program with none of these gets [`Error::NoSupervisorBinary`],
    /// whose message says what to set, what to install and what to call.
    ///
    /// In a process started to run a supervisor whose `main` did not call
    /// [`run_if_supervisor`](crate::run_if_supervisor) first, this never returns: the process
    /// refuses at once and exits (a supervisor process never starts another), and the program
    /// that started it gets [`Error::Spawn`] saying so.
    pub fn spawn(&self, options: &SpawnOptions) -> Result<Task> {
        if crate::entry::in_supervisor_mode() {
            crate::entry::refuse_nested_spawn();
        }
        let mut options = options.clone();
        check_options(&options)?;
        let cwd = match options.cwd.take() {
            Some(d) if d.is_absolute() => d,
            Some(d) => std::env::current_dir().map_err(|e| Error::path("resolve", &d, e))?.join(d),
            None => std::env::current_dir().map_err(|e| Error::path("resolve", ".", e))?,
        };
        options.cwd = Some(cwd);
        let id = uuid::Uuid::now_v7().simple().to_string();
        let situation = Situation::look(self.supervisor_binary.as_deref())?;
        match launch::choose(self.launch, situation)? {
            Start::Exec { program, arg } => {
                let request = SuperviseRequest { pool: self.dir.clone(), id: id.clone(), options };
                launch::exec_supervisor(&program, arg, &request)?;
            }
            Start::Fork => self.spawn_forked(&id, &options)?,
        }
        self.task(&id)
    }

    pub(crate) fn spawn_forked(&self, id: &str, options: &SpawnOptions) -> Result<()> {
        let program = options.command[0].clone();
        match procyard_core::daemonize(&DaemonConfig::default()) {
            Ok(Daemonized::Parent(_)) => Ok(()),
            Ok(Daemonized::Daemon(status)) => {
                let code = supervisor::run(&self.dir, self.owner, id, options, status);
                procyard_core::exit_immediately(code)
            }
            Err(procyard_core::Error::DetachFailed { message }) => {
                Err(Error::Spawn { program, message })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads every task's `<id>.json` (without connecting) and returns those `filter`
    /// accepts, oldest first. Files owned by other users are skipped, never touched; a task
    /// whose supervisor is no longer running is reported `lost`.
    pub fn list(&self, filter: &Filter) -> Result<Vec<TaskRecord>> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| Error::path("read", &self.dir, e))?;
        let me = rustix::process::geteuid().as_raw();
        let mut liveness = Liveness::default();
        let mut out = Vec::new();
        let mut buf = Vec::with_capacity(4096);
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(id) = name.strip_suffix(".json") else { continue };
            if !valid_id(id) {
                continue;
            }
            // No symlinks followed, no FIFO waited on; ownership checked on the open file.
            let path = entry.path();
            let Ok(mut file) = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(
                    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32
                )
                .open(&path)
            else {
                continue;
            };
            let Ok(md) = file.metadata() else { continue };
            if !md.is_file() || (md.uid() != me && md.uid() != self.owner) {
                continue;
            }
            buf.clear();
            if file.read_to_end(&mut buf).is_err() {
                continue;
            }
            let record = match serde_json::from_slice::<TaskRecord>(&buf) {
                Ok(r) if r.id == id => r,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!("skipping {}: {e}", path.display());
                    continue;
                }
            };
            let record = liveness.apply(record);
            if filter.matches(&record.status, &record.meta) {
                out.push(record);
            }
        }
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    /// Alias of [`TaskPool::list`], the seed's name.
    pub fn search(&self, filter: &Filter) -> Result<Vec<TaskRecord>> {
        self.list(filter)
    }

    /// The state file of one task, with `lost` computed.
    pub fn record(&self, id: &str) -> Result<TaskRecord> {
        crate::record::read_record(&self.dir, id)
    }
}
