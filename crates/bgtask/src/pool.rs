//! [`TaskPool`]: the directory holding every task's socket and state file; spawning
//! supervisors and listing tasks.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use procyard_core::{Command, DaemonConfig, Daemonized, ProcStat, Stdio, frame};
use serde::{Deserialize, Serialize};

use crate::protocol::Meta;
use crate::record::{Filter, Status, TaskRecord};
use crate::{Error, Result, Task, supervisor};

/// The retain cap used when none is given: 1 MiB per stream.
pub const DEFAULT_RETAIN: u64 = 1024 * 1024;

/// Environment variable naming the pool directory.
pub const POOL_ENV: &str = "PROCYARD_POOL";

/// Environment variable naming the program that runs supervisors: `procyard-bgtask-supervise`
/// or the `procyard-bgtask` CLI (which has the same hidden mode).
pub const BIN_ENV: &str = "PROCYARD_BGTASK_BIN";

/// The small program that runs one supervisor (it links only the supervisor's code, so each
/// supervisor keeps fewer pages resident than the CLI would).
pub const SUPERVISOR_BIN: &str = "procyard-bgtask-supervise";

/// The CLI, which can also run a supervisor (hidden `__supervise` mode).
const CLI_BIN: &str = "procyard-bgtask";

/// What to run and how; built with [`SpawnOptions::new`] and its setters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpawnOptions {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the caller's).
    pub cwd: Option<PathBuf>,
    /// Initial metadata.
    pub meta: Meta,
    /// Bytes retained per output stream (oldest dropped beyond it).
    pub retain: u64,
    /// Also append output to `<id>.stdout.log` / `<id>.stderr.log` in the pool.
    pub log: bool,
    /// Instead of dropping unconsumed output beyond `retain`, stop reading the task's pipe
    /// (the task then blocks on its writes until a client consumes).
    pub block_when_full: bool,
}

impl SpawnOptions {
    /// Runs `program` with `args`.
    pub fn new<I, S>(command: I) -> SpawnOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SpawnOptions {
            command: command.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            cwd: None,
            meta: Meta::new(),
            retain: DEFAULT_RETAIN,
            log: false,
            block_when_full: false,
        }
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> SpawnOptions {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets a metadata key.
    pub fn meta(mut self, key: impl Into<String>, value: serde_json::Value) -> SpawnOptions {
        self.meta.insert(key.into(), value);
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> SpawnOptions {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets the retain cap per stream.
    pub fn retain(mut self, bytes: u64) -> SpawnOptions {
        self.retain = bytes;
        self
    }

    /// Logs output to files in the pool.
    pub fn log(mut self, log: bool) -> SpawnOptions {
        self.log = log;
        self
    }

    /// Applies backpressure instead of dropping output (see the field).
    pub fn block_when_full(mut self, block: bool) -> SpawnOptions {
        self.block_when_full = block;
        self
    }
}

/// A directory of tasks. Every task has `<id>.sock` (its supervisor), `<id>.json` (its state,
/// readable without connecting) and, if asked, log files; the directory is mode 0700.
#[derive(Clone, Debug)]
pub struct TaskPool {
    dir: PathBuf,
    owner: u32,
    supervisor_binary: Option<PathBuf>,
    launch: Launch,
}

/// How [`TaskPool::spawn`] starts a supervisor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Launch {
    /// Execute `procyard-bgtask-supervise` when it is found (the smallest supervisor);
    /// otherwise fork when this program is the `procyard-bgtask` CLI (single-threaded),
    /// execute the `procyard-bgtask` binary if one is found (a supervisor forked from a large
    /// program would carry its memory), and fork if single-threaded.
    #[default]
    Auto,
    /// Always fork (daemonize) this process; refused if it has several threads.
    Fork,
    /// Always execute the supervisor program (see [`TaskPool::supervisor_binary`]).
    Exec,
}

/// The default pool directory: `$PROCYARD_POOL`, else `/run/procyard/bgtask` for root, else
/// `$XDG_RUNTIME_DIR/procyard/bgtask`, else `/tmp/procyard-$UID/bgtask`.
pub fn default_pool_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(POOL_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/procyard/bgtask");
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join("procyard/bgtask");
    }
    PathBuf::from(format!("/tmp/procyard-{}/bgtask", uid.as_raw()))
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a `__supervise` process answers on its stdout.
#[derive(Serialize, Deserialize)]
pub(crate) struct SuperviseReply {
    pub(crate) error: Option<String>,
}

/// What a `__supervise` process reads on its stdin.
#[derive(Serialize, Deserialize)]
pub(crate) struct SuperviseRequest {
    pub(crate) pool: PathBuf,
    pub(crate) id: String,
    pub(crate) options: SpawnOptions,
}

/// Refuses options no task can be started with: an empty command or program name, a NUL
/// byte in an argument, an environment variable, or the working directory, an environment
/// name with `=`, a zero retain cap.
pub(crate) fn check_options(options: &SpawnOptions) -> Result<()> {
    let invalid = |reason: String| Err(Error::InvalidSpawn { reason });
    match options.command.first() {
        None => return invalid("empty command".into()),
        Some(program) if program.is_empty() => return invalid("empty program name".into()),
        Some(_) => {}
    }
    if let Some(arg) = options.command.iter().find(|a| a.contains('\0')) {
        return invalid(format!("NUL byte in command argument {arg:?}"));
    }
    for (k, v) in &options.env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return invalid(format!("invalid environment variable {k:?}"));
        }
    }
    if let Some(cwd) = &options.cwd
        && cwd.as_os_str().as_encoded_bytes().contains(&0)
    {
        return invalid(format!("NUL byte in working directory {}", cwd.display()));
    }
    if options.retain == 0 {
        return invalid("retain must be at least 1 byte".into());
    }
    Ok(())
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
    /// `procyard-bgtask` CLI. Without it, [`BIN_ENV`] names it, else it is looked for next to
    /// the current executable (and one directory up), then on `PATH`, the small program first
    /// in each directory.
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
    /// The supervisor is either forked from this process (daemonized; only when it is
    /// single-threaded, checked) or started by executing the `procyard-bgtask` binary in its
    /// hidden supervisor mode (see [`TaskPool::supervisor_binary`], `PROCYARD_BGTASK_BIN`);
    /// [`Launch`] chooses. A multi-threaded program without the binary gets
    /// [`Error::NoSupervisorBinary`].
    pub fn spawn(&self, options: &SpawnOptions) -> Result<Task> {
        let mut options = options.clone();
        check_options(&options)?;
        let cwd = match options.cwd.take() {
            Some(d) if d.is_absolute() => d,
            Some(d) => std::env::current_dir().map_err(|e| Error::path("resolve", &d, e))?.join(d),
            None => std::env::current_dir().map_err(|e| Error::path("resolve", ".", e))?,
        };
        options.cwd = Some(cwd);
        let id = uuid::Uuid::now_v7().simple().to_string();
        let single_threaded = procyard_core::fork::thread_count()? == 1;
        let exec = match self.launch {
            Launch::Fork => None,
            Launch::Exec => Some(self.find_binary()?),
            Launch::Auto => match self.find_binary() {
                Ok(bin) if bin.file_name() == Some(OsStr::new(SUPERVISOR_BIN)) => Some(bin),
                Ok(bin) => {
                    let is_cli = std::env::current_exe()
                        .is_ok_and(|exe| exe.file_name() == Some(OsStr::new(CLI_BIN)));
                    (!single_threaded || !is_cli).then_some(bin)
                }
                Err(_) => None,
            },
        };
        match exec {
            Some(bin) => self.spawn_exec(&bin, &id, &options)?,
            None => self.spawn_forked(&id, &options)?,
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

    /// The supervisor program: the one set on the pool, else [`BIN_ENV`], else the first
    /// directory holding `procyard-bgtask-supervise` or `procyard-bgtask` (the small one
    /// first): the current executable's, the one above it (cargo puts tests in
    /// `target/*/deps`), then those on `PATH`.
    fn find_binary(&self) -> Result<PathBuf> {
        if let Some(bin) = &self.supervisor_binary {
            return Ok(bin.clone());
        }
        if let Some(bin) = std::env::var_os(BIN_ENV).filter(|b| !b.is_empty()) {
            return Ok(PathBuf::from(bin));
        }
        let exe = std::env::current_exe().ok();
        let near = exe.iter().flat_map(|exe| exe.ancestors().skip(1).take(2).map(Path::to_owned));
        let path = std::env::var_os("PATH").unwrap_or_default();
        // Directory by directory, so a program finds its own build's supervisor before an
        // older one installed on PATH.
        near.chain(std::env::split_paths(&path))
            .flat_map(|dir| [dir.join(SUPERVISOR_BIN), dir.join(CLI_BIN)])
            .find(|candidate| candidate.is_file())
            .ok_or(Error::NoSupervisorBinary)
    }

    fn spawn_exec(&self, bin: &Path, id: &str, options: &SpawnOptions) -> Result<()> {
        let mut child = Command::new(bin)
            .arg("__supervise")
            .stdin(Stdio::Pipe)
            .stdout(Stdio::Pipe)
            .stderr(Stdio::Inherit)
            .spawn()?;
        let request = SuperviseRequest {
            pool: self.dir.clone(),
            id: id.to_owned(),
            options: options.clone(),
        };
        let mut stdin = std::fs::File::from(child.take_stdin().ok_or(Error::NoSupervisorBinary)?);
        let mut stdout = std::fs::File::from(child.take_stdout().ok_or(Error::NoSupervisorBinary)?);
        let sent = frame::write_frame(&mut stdin, &request).and_then(|()| stdin.flush());
        drop(stdin);
        let reply = frame::read_frame::<_, SuperviseReply>(&mut stdout);
        let _ = child.wait();
        let program = options.command[0].clone();
        if let Err(e) = sent {
            return Err(Error::Spawn {
                program,
                message: format!("supervisor not reachable: {e}"),
            });
        }
        match reply {
            Ok(Some(SuperviseReply { error: None })) => Ok(()),
            Ok(Some(SuperviseReply { error: Some(message) })) => {
                Err(Error::Spawn { program, message })
            }
            Ok(None) => Err(Error::Spawn {
                program,
                message: "the supervisor process exited without answering".into(),
            }),
            Err(e) => Err(Error::Spawn { program, message: e.to_string() }),
        }
    }

    /// Reads every task's `<id>.json` (without connecting) and returns those `filter`
    /// accepts, oldest first. Files owned by other users are skipped, never touched; a task
    /// whose supervisor is no longer running is reported `lost`.
    pub fn list(&self, filter: &Filter) -> Result<Vec<TaskRecord>> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| Error::path("read", &self.dir, e))?;
        let me = rustix::process::geteuid().as_raw();
        let mut alive: HashMap<(i32, u64), bool> = HashMap::new();
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
            let record = self.check_lost(record, &mut alive);
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
        if !valid_id(id) {
            return Err(Error::InvalidId { id: id.to_owned() });
        }
        let path = self.dir.join(format!("{id}.json"));
        match crate::record::read_owned_record(&path)? {
            Some(r) if r.id == id => Ok(self.check_lost(r, &mut HashMap::new())),
            _ => Err(Error::NoSuchTask { id: id.to_owned() }),
        }
    }

    fn check_lost(
        &self,
        mut record: TaskRecord,
        cache: &mut HashMap<(i32, u64), bool>,
    ) -> TaskRecord {
        let sup = &record.supervisor;
        let key = (sup.pid.as_raw(), sup.start_time);
        let running = *cache.entry(key).or_insert_with(|| {
            sup.boot_id == procyard_core::boot_id()
                && matches!(ProcStat::read(sup.pid), Ok(Some(st))
                    if st.start_time == sup.start_time && !st.is_zombie())
        });
        if !running {
            record.status = Status::Lost;
            record.pid = None;
        }
        record
    }
}
