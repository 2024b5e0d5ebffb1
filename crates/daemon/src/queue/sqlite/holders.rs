//! The worker recorded with each lease (step 5 of the queue contract): five columns on the
//! job's row (the fifth, when it was handed over, is also the start of the job's attempt), added to a queue file made before they existed, written with the daemon's next
//! write transaction after the hand-off, and read back by the next daemon to stop the workers
//! of a dead one before their jobs are put back.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use procyard_core::boot_id;

use super::schema::{STATE_LEASED, add_columns};
use crate::queue::{Abandoned, LeaseHolder, Receipt};

/// The columns, in the order [`write`] and [`abandoned`] use them.
const COLUMNS: [(&str, &str); 5] = [
    ("worker_pid", "INTEGER"),
    ("worker_start", "INTEGER"),
    ("worker_pgid", "INTEGER"),
    ("worker_boot", "TEXT"),
    ("worker_started_ms", "INTEGER"),
];

/// Adds the holder columns to a `jobs` table that lacks them (a queue file made by an older
/// version). The check and the change run in one immediate transaction, so two processes
/// opening an old file at once cannot both add a column.
pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    add_columns(conn, "jobs", &COLUMNS)
}

/// A holder to record: the job's row, the worker, and when it was handed the job (ms).
pub(crate) type Held = (i64, LeaseHolder, i64);

/// A holder's columns as bound (all `NULL` for none).
pub(super) struct Columns<'a> {
    pub(super) pid: Option<i32>,
    pub(super) start: Option<i64>,
    pub(super) pgid: Option<i32>,
    pub(super) boot: Option<&'a str>,
}

impl<'a> Columns<'a> {
    pub(super) fn of(holder: Option<&'a LeaseHolder>) -> Columns<'a> {
        Columns {
            pid: holder.map(|h| h.process.pid.as_raw()),
            start: holder.map(|h| i64::try_from(h.process.start_time).unwrap_or(i64::MAX)),
            pgid: holder.map(|h| h.process_group.as_raw()),
            // This machine's boot is the one its lease owner registered ([`register_owner`]).
            boot: holder.map(|h| h.process.boot_id.as_str()).filter(|b| *b != boot_id()),
        }
    }
}

/// Registers `owner`, the daemon about to take leases, with this machine's boot, and forgets
/// the owners that no leased row names. A lease it takes records its worker's boot as `NULL`
/// when it is this one ([`Columns::of`]) and [`abandoned`] reads it from here: a leased row
/// grows 36 bytes less, and a row that grows past its page's free space splits the page (more
/// log frames for the claim that took it).
pub(super) fn register_owner(conn: &Connection, owner: &str) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM owners WHERE owner NOT IN
             (SELECT lease_owner FROM jobs WHERE state = 1 AND lease_owner IS NOT NULL)",
        [],
    )?;
    conn.execute(
        "INSERT OR REPLACE INTO owners (owner, boot) VALUES (?1, ?2)",
        params![owner, boot_id()],
    )?;
    Ok(())
}

/// The holders a claim wrote with its leases (the workers the daemon said it would hand the
/// jobs to), by row, until the daemon reports handing each job over: the same worker needs
/// no write; another one, or none by the end of the loop's turn, does.
#[derive(Debug, Default)]
pub(crate) struct Planned {
    rows: std::collections::HashMap<i64, (i32, u64, i32)>,
}

impl Planned {
    pub(super) fn insert(&mut self, seq: i64, holder: &LeaseHolder) {
        let key = (holder.process.pid.as_raw(), holder.process.start_time);
        self.rows.insert(seq, (key.0, key.1, holder.process_group.as_raw()));
    }

    /// Whether row `seq` was leased with `holder` already (forgotten either way).
    pub(super) fn written(&mut self, seq: i64, holder: &LeaseHolder) -> bool {
        let was = self.rows.remove(&seq);
        was == Some((
            holder.process.pid.as_raw(),
            holder.process.start_time,
            holder.process_group.as_raw(),
        ))
    }

    /// The rows leased with a holder that was never handed the job (a plan that did not
    /// hold): their holder columns must be cleared. Forgets them.
    pub(super) fn unheld(&mut self) -> Vec<i64> {
        self.rows.drain().map(|(seq, _)| seq).collect()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Clears the holder of leased rows `seqs` (recorded with a lease, not handed the job).
pub(crate) fn clear(tx: &Transaction<'_>, seqs: &[i64]) -> rusqlite::Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(
        "UPDATE jobs SET worker_pid = NULL, worker_start = NULL, worker_pgid = NULL,
             worker_boot = NULL, worker_started_ms = NULL
         WHERE seq = ?1 AND state = ?2",
    )?;
    for seq in seqs {
        stmt.execute(params![seq, STATE_LEASED])?;
    }
    Ok(())
}

/// Records the holders of leased rows (a row no longer leased — its outcome came first — is
/// left alone).
pub(crate) fn write(tx: &Transaction<'_>, holders: &[Held]) -> rusqlite::Result<()> {
    if holders.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(
        "UPDATE jobs SET worker_pid = ?1, worker_start = ?2, worker_pgid = ?3, worker_boot = ?4,
             worker_started_ms = ?7
         WHERE seq = ?5 AND state = ?6",
    )?;
    for (seq, h, started_ms) in holders {
        stmt.execute(params![
            h.process.pid.as_raw(),
            i64::try_from(h.process.start_time).unwrap_or(i64::MAX),
            h.process_group.as_raw(),
            h.process.boot_id,
            seq,
            STATE_LEASED,
            started_ms,
        ])?;
    }
    Ok(())
}

/// Every leased row, with its holder when one was recorded (and is well-formed: a pid or
/// group that is not a positive number is no holder at all). A holder whose boot is not on
/// the row has its lease owner's ([`register_owner`]).
pub(super) fn abandoned(conn: &Connection) -> rusqlite::Result<Vec<Abandoned>> {
    let mut stmt = conn.prepare(
        "SELECT seq, id, task, worker_pid, worker_start, worker_pgid, worker_boot
         FROM jobs WHERE state = 1 ORDER BY seq",
    )?;
    type Row = (i64, String, String, Option<i64>, Option<i64>, Option<i64>, Option<String>);
    let rows = stmt.query_map([], |r| -> rusqlite::Result<Row> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, id, task, pid, start, pgid, mut boot) = row?;
        if boot.is_none() && pid.is_some() && start.is_some() && pgid.is_some() {
            boot = conn
                .query_row(
                    "SELECT o.boot FROM jobs j JOIN owners o ON o.owner = j.lease_owner
                     WHERE j.seq = ?1",
                    [seq],
                    |r| r.get(0),
                )
                .optional()?;
        }
        let holder = holder(pid, start, pgid, boot);
        out.push(Abandoned { receipt: Receipt(seq as u64), id, task, holder });
    }
    Ok(out)
}

fn holder(
    pid: Option<i64>,
    start: Option<i64>,
    pgid: Option<i64>,
    boot: Option<String>,
) -> Option<LeaseHolder> {
    let as_pid = |v: i64| i32::try_from(v).ok().and_then(procyard_core::Pid::from_raw);
    Some(LeaseHolder {
        process: procyard_core::ProcessIdentity {
            pid: as_pid(pid?)?,
            start_time: u64::try_from(start?).ok()?,
            boot_id: boot?,
        },
        process_group: as_pid(pgid?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::sqlite::SqliteQueue;
    use crate::queue::{OpenMode, QueueBackend, TaskBinding};

    /// A daemon's queue in a directory of its own (kept alive by the first value), task `t`
    /// bound to every key, two jobs published.
    fn daemon_with_two_jobs()
    -> (tempfile::TempDir, std::path::PathBuf, [TaskBinding; 1], SqliteQueue) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let bind =
            [TaskBinding { name: "t".into(), routing_keys: vec!["#".into()], max_attempts: 3 }];
        let mut daemon = SqliteQueue::open(&path, OpenMode::Daemon).unwrap();
        daemon.bind(&bind).unwrap();
        daemon.publish("a", b"1").unwrap();
        daemon.publish("a", b"2").unwrap();
        (dir, path, bind, daemon)
    }

    /// A queue file from before the holder columns gains them, keeps its jobs, and a second
    /// migration changes nothing.
    #[test]
    fn old_queue_file_gains_the_columns() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("old.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE jobs (seq INTEGER PRIMARY KEY, id TEXT, task TEXT, state INTEGER);
             INSERT INTO jobs VALUES (1, 'a', 't', 1);",
        )
        .unwrap();
        let missing = |c: &Connection| super::super::schema::missing_columns(c, "jobs", &COLUMNS);
        assert_eq!(missing(&conn).unwrap().len(), 5);
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        assert!(missing(&conn).unwrap().is_empty());
        let found = abandoned(&conn).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].id.as_str(), found[0].holder.clone()), ("a", None));
    }

    /// The holder recorded at hand-off is what the next daemon finds; a kept job stays leased
    /// through recovery and through that daemon's own shutdown.
    #[test]
    fn holders_survive_the_daemon_and_kept_jobs_stay_leased() {
        let (_dir, path, bind, mut daemon) = daemon_with_two_jobs();
        let jobs = daemon.claim("t", 2).unwrap();
        let me = procyard_core::ProcessIdentity::current().unwrap();
        let holder = LeaseHolder { process_group: me.pid, process: me };
        daemon.record_holder(&jobs[0], &holder).unwrap();
        daemon.flush().unwrap();
        drop(daemon); // as if killed

        let mut again = SqliteQueue::open(&path, OpenMode::Daemon).unwrap();
        again.bind(&bind).unwrap();
        assert!(again.claim("t", 5).unwrap().is_empty(), "nothing put back before recover");
        let found = again.abandoned().unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].holder.as_ref(), Some(&holder));
        assert_eq!(found[1].holder, None);
        assert_eq!(again.recover(&[found[0].receipt]).unwrap(), 1);
        let rerun = again.claim("t", 5).unwrap();
        assert_eq!((rerun.len(), rerun[0].attempt), (1, 1));
        assert_eq!(rerun[0].id, jobs[1].id);
        again.shutdown().unwrap();
        drop(again);

        let mut third = SqliteQueue::open(&path, OpenMode::Daemon).unwrap();
        let left = third.abandoned().unwrap();
        assert_eq!(left.len(), 1, "the kept job is still leased");
        assert_eq!(
            (left[0].id.as_str(), left[0].holder.as_ref()),
            (jobs[0].id.as_str(), Some(&holder))
        );
        assert_eq!(third.recover(&[]).unwrap(), 1);
    }

    /// A holder written with the lease leaves this machine's boot off the row (the row grows
    /// less); the next daemon still finds the worker with its boot, after the daemon that
    /// leased it is gone and while a third one starts. A worker of another boot keeps its own.
    #[test]
    fn holders_written_with_the_lease_keep_their_boot() {
        let (_dir, path, _, mut daemon) = daemon_with_two_jobs();
        let me = procyard_core::ProcessIdentity::current().unwrap();
        let here = LeaseHolder { process_group: me.pid, process: me.clone() };
        let mut there = here.clone();
        there.process.boot_id = "another-boot".into();
        let jobs = daemon.claim_for("t", 2, &[Some(&here), Some(&there)]).unwrap();
        assert_eq!(jobs.len(), 2);
        let boots: Vec<Option<String>> = daemon
            .conn
            .prepare("SELECT worker_boot FROM jobs ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(boots, [None, Some("another-boot".to_owned())], "this boot left off");
        drop(daemon); // as if killed: no hand-off written, the planned holders stand

        for _ in 0..2 {
            // The second time, a daemon that recovered nothing has come and gone.
            let mut again = SqliteQueue::open(&path, OpenMode::Daemon).unwrap();
            let found = again.abandoned().unwrap();
            let holders: Vec<_> = found.iter().map(|a| a.holder.clone()).collect();
            assert_eq!(holders, [Some(here.clone()), Some(there.clone())]);
            drop(again);
        }
        let mut last = SqliteQueue::open(&path, OpenMode::Daemon).unwrap();
        assert_eq!(last.recover(&[]).unwrap(), 2);
        drop(last);
        let next = SqliteQueue::open(&path, OpenMode::Daemon).unwrap();
        let owners: i64 =
            next.conn.query_row("SELECT COUNT(*) FROM owners", [], |r| r.get(0)).unwrap();
        assert_eq!(owners, 1, "only the daemon now serving: no lease names the others");
    }

    #[test]
    fn malformed_holders_are_none() {
        let boot = || Some("b".to_owned());
        assert!(holder(Some(0), Some(1), Some(5), boot()).is_none());
        assert!(holder(Some(5), Some(-1), Some(5), boot()).is_none());
        assert!(holder(Some(5), Some(1), Some(-3), boot()).is_none());
        assert!(holder(Some(1 << 40), Some(1), Some(5), boot()).is_none());
        assert!(holder(Some(5), Some(1), Some(5), None).is_none());
        let h = holder(Some(5), Some(7), Some(5), boot()).unwrap();
        assert_eq!((h.process.pid.as_raw(), h.process.start_time), (5, 7));
    }
}
