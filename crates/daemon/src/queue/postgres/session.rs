//! A daemon's session: one connection on a thread of its own that holds the daemon's
//! advisory lock for as long as the daemon lives, listens for published jobs, and looks every
//! [`CHECK_EVERY`] for daemons whose session is gone.
//!
//! - Registration: in one transaction the session inserts its row in `daemons` and takes the
//!   session-level advisory lock `(lock_space, no)`, so any daemon that sees the row also sees
//!   the lock. The kernel closes a killed daemon's socket, the server ends its session and the
//!   lock goes with it (for a machine cut off: keepalive and `tcp_user_timeout` on the session,
//!   see `conn.rs`).
//! - Wake-ups: `LISTEN <schema>_jobs`; each notification (and each reconnection, after which
//!   some may have been missed) sets a flag and wakes the daemon's loop through its
//!   [`mio::Waker`]. The loop never polls the table for new jobs.
//! - Dead daemons: every [`CHECK_EVERY`] (a deadline, not a spin) one query over `pg_locks`
//!   tells whether a registered daemon lost its lock; if so the loop is woken to put its
//!   leases back (in `recovery.rs`).
//! - Connection loss: reconnect with backoff and jitter; the same daemon number is taken back
//!   when its row is still there (no other daemon recovered its leases meanwhile), else the
//!   daemon registers anew and its earlier leases count as lost.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use postgres::Client;

use super::conn::{BACKOFF, Role, Target};
use crate::{Error, Result};

/// How often a daemon looks for daemons whose session is gone.
pub(super) const CHECK_EVERY: Duration = Duration::from_millis(200);

/// The registered daemons whose session no longer holds their lock (`$1`: the lock space).
pub(super) const DEAD_DAEMONS: &str = "
    SELECT d.no FROM daemons d WHERE NOT EXISTS (
        SELECT 1 FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid = $1::int4::oid AND l.objid = d.no::oid)";

/// What the session thread and the daemon's loop share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// This daemon's number (0 before the first registration).
    pub(super) owner: AtomicI64,
    /// A job was published (or may have been, unseen): claim.
    pub(super) jobs: AtomicBool,
    /// A schedule's row changed: read the schedules again.
    pub(super) schedules: AtomicBool,
    /// A daemon's session is gone: put its leases back.
    pub(super) dead: AtomicBool,
    /// The session is connected.
    pub(super) connected: AtomicBool,
    /// How many times the session was lost (its lock with it: its leases may have been put
    /// back by another daemon since).
    pub(super) losses: std::sync::atomic::AtomicU64,
    /// What went wrong last with the session.
    pub(super) problem: Mutex<Option<String>>,
    /// Jobs whose cancellation was asked on `<schema>_cancel`, not yet taken.
    pub(super) cancels: Mutex<Vec<String>>,
    /// The daemon's loop, once attached.
    pub(super) waker: OnceLock<mio::Waker>,
}

impl Shared {
    fn wake(&self) {
        if let Some(w) = self.waker.get()
            && let Err(e) = w.wake()
        {
            tracing::warn!(error = %e, "postgres: unable to wake the daemon's loop");
        }
    }

    fn set_problem(&self, p: Option<String>) {
        if let Ok(mut g) = self.problem.lock() {
            *g = p;
        }
    }
}

/// The session thread, as the daemon holds it.
pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Session {
    /// Connects, registers the daemon (named `name`) and starts the thread; fails when the
    /// first registration fails.
    pub(super) fn start(target: &Target, name: &str) -> Result<Session> {
        let shared = Arc::new(Shared::default());
        let mut client = target.connect(Role::Session, name)?;
        let me = Me { target: target.clone(), name: name.to_owned(), shared: Arc::clone(&shared) };
        me.register(&mut client, None)?;
        // Connected and registered from now (claims wait for it: `ahead.rs`).
        shared.connected.store(true, std::sync::atomic::Ordering::SeqCst);
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("procyard-pg-session".into())
            .spawn(move || me.run(client, stopped))
            .map_err(|source| Error::Os {
                action: "start the PostgreSQL session thread",
                source,
            })?;
        Ok(Session { shared, stop, thread: Some(thread) })
    }

    /// Ends the thread (its connection closes, and the lock goes with it).
    pub(super) fn stop(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("postgres: the session thread panicked");
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The thread's own state.
struct Me {
    target: Target,
    name: String,
    shared: Arc<Shared>,
}

impl Me {
    /// Registers as a new daemon, or takes back `again` when its row is still there.
    fn register(&self, client: &mut Client, again: Option<i64>) -> Result<i64> {
        let e = |err| self.target.err("register the daemon in", err);
        let space = self.target.lock_space();
        if let Some(no) = again {
            let locked: bool = client
                .query_one("SELECT pg_try_advisory_lock($1, $2::int8::int4)", &[&space, &no])
                .map_err(e)?
                .get(0);
            if locked {
                // Waits while another daemon is recovering this one (it holds the row).
                let n = client
                    .execute(
                        "UPDATE daemons SET session_pid = pg_backend_pid() WHERE no = $1",
                        &[&no],
                    )
                    .map_err(e)?;
                if n == 1 {
                    self.listen(client)?;
                    return Ok(no);
                }
                client
                    .execute("SELECT pg_advisory_unlock($1, $2::int8::int4)", &[&space, &no])
                    .map_err(e)?;
            }
            tracing::warn!(
                daemon = no,
                "postgres: this daemon's leases were recovered by another daemon while it was disconnected; registering anew"
            );
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let mut tx = client.transaction().map_err(e)?;
        let no: i64 = tx
            .query_one(
                "INSERT INTO daemons (name, host, os_pid, session_pid, started_ms)
                 VALUES ($1, $2, $3, pg_backend_pid(), now_ms()) RETURNING no",
                &[&self.name, &host.trim(), &(std::process::id() as i32)],
            )
            .map_err(e)?
            .get(0);
        tx.execute("SELECT pg_advisory_lock($1, $2::int8::int4)", &[&space, &no]).map_err(e)?;
        tx.commit().map_err(e)?;
        self.listen(client)?;
        self.shared.owner.store(no, Ordering::SeqCst);
        Ok(no)
    }

    fn listen(&self, client: &mut Client) -> Result<()> {
        client
            .batch_execute(&format!(
                "LISTEN {}; LISTEN {}; LISTEN {}",
                self.target.channel(),
                self.target.cancel_channel(),
                self.target.schedules_channel()
            ))
            .map_err(|e| self.target.err("listen for jobs on", e))
    }

    /// Serves the session until told to stop.
    fn run(self, client: Client, stop: Receiver<()>) {
        let mut client = Some(client);
        let mut failures = 0u32;
        self.connected(true);
        loop {
            if stop.try_recv().is_ok() {
                return;
            }
            let Some(c) = client.as_mut() else {
                // Reconnect after the backoff (or stop at once if told).
                if stop.recv_timeout(BACKOFF.delay(failures)).is_ok() {
                    return;
                }
                let owner = self.shared.owner.load(Ordering::SeqCst);
                match self
                    .target
                    .connect(Role::Session, &self.name)
                    .and_then(|mut c| self.register(&mut c, Some(owner)).map(|_| c))
                {
                    Ok(c) => {
                        failures = 0;
                        client = Some(c);
                        tracing::info!(db = %self.target.shown, "postgres: session reconnected");
                        self.connected(true);
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        self.shared.set_problem(Some(e.chain().to_string()));
                    }
                }
                continue;
            };
            match self.serve(c) {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "postgres: session lost; reconnecting");
                    self.shared.set_problem(Some(e.chain().to_string()));
                    self.connected(false);
                    client = None;
                    failures = 1;
                }
            }
        }
    }

    /// Waits for notifications until the next look for dead daemons, then looks.
    fn serve(&self, client: &mut Client) -> Result<()> {
        let until = Instant::now() + CHECK_EVERY;
        let e = |err| self.target.err("listen on", err);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut notes = client.notifications();
            let mut iter = notes.timeout_iter(left);
            // Each notification wakes the loop at once (a wake-up is cheap and coalesces).
            while let Some(n) =
                postgres::fallible_iterator::FallibleIterator::next(&mut iter).map_err(e)?
            {
                if n.channel() == self.target.cancel_channel() {
                    if let Ok(mut ids) = self.shared.cancels.lock() {
                        ids.push(n.payload().to_owned());
                    }
                } else if n.channel() == self.target.schedules_channel() {
                    self.shared.schedules.store(true, Ordering::SeqCst);
                } else {
                    self.shared.jobs.store(true, Ordering::SeqCst);
                }
                self.shared.wake();
                if Instant::now() >= until {
                    break;
                }
            }
        }
        let dead = client
            .query(&format!("{DEAD_DAEMONS} LIMIT 1"), &[&self.target.lock_space()])
            .map_err(|err| self.target.err("look for dead daemons in", err))?;
        if !dead.is_empty() {
            self.shared.dead.store(true, Ordering::SeqCst);
            self.shared.wake();
        }
        if client.is_closed() {
            return Err(self.target.err("listen on", "the connection closed"));
        }
        Ok(())
    }

    fn connected(&self, yes: bool) {
        if !yes && self.shared.connected.load(Ordering::SeqCst) {
            self.shared.losses.fetch_add(1, Ordering::SeqCst);
        }
        self.shared.connected.store(yes, Ordering::SeqCst);
        if yes {
            self.shared.set_problem(None);
            // Notifications may have been missed: look at the queue and the schedules.
            self.shared.jobs.store(true, Ordering::SeqCst);
            self.shared.schedules.store(true, Ordering::SeqCst);
        }
        self.shared.wake();
    }
}
