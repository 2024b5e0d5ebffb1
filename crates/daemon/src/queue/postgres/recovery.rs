//! Leases put back: those of daemons whose session is gone (at start, and whenever the
//! session thread saw one), recorded `daemon lost`; this daemon's own at shutdown, recorded
//! `daemon stopped`. Also the retry due time and the retention's pruning steps.

use std::time::{Duration, Instant};

use postgres::Transaction;

use super::session::DEAD_DAEMONS;
use super::{PgQueue, now_ms};
use crate::Result;
use crate::queue::{Abandoned, AttemptEnd, LeaseHolder, OpenMode, Receipt};

/// How often a daemon takes a pruning step (sooner while a step finds a full batch).
const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// How long the count-based pruning cutoff is reused.
const COUNT_EVERY: Duration = Duration::from_secs(30);

/// Records the open attempts of the leases of `owners` (all but `keep`) ended with `end`, and
/// puts those jobs back (the interrupted attempt not counted); returns the tasks of the jobs
/// put back.
fn release(
    tx: &mut Transaction<'_>,
    owners: &[i64],
    keep: &[i64],
    end: &AttemptEnd,
) -> std::result::Result<(u64, Vec<String>), postgres::Error> {
    tx.execute(
        "INSERT INTO attempts (job_seq, delivery, worker_pid, started_ms, ended_ms, outcome)
         SELECT j.seq, j.attempts, j.worker_pid, j.worker_started_ms, $3, $4
         FROM queue q JOIN jobs j ON j.seq = q.seq
         WHERE q.state = 1 AND q.lease_owner = ANY($1) AND j.worker_pid IS NOT NULL
           AND NOT (q.seq = ANY($2))",
        &[&owners, &keep, &now_ms(), &serde_json::to_string(end).unwrap_or_default()],
    )?;
    let rows = tx.query(
        "WITH q AS (UPDATE queue SET state = 0, lease_owner = NULL
             WHERE state = 1 AND lease_owner = ANY($1) AND NOT (seq = ANY($2)) RETURNING seq)
         UPDATE jobs SET state = 0, attempts = GREATEST(attempts - 1, 0), lease_owner = NULL
         WHERE seq = ANY(ARRAY(SELECT seq FROM q))
         RETURNING task",
        &[&owners, &keep],
    )?;
    let mut tasks: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    tasks.sort();
    tasks.dedup();
    Ok((rows.len() as u64, tasks))
}

fn holder(
    pid: Option<i32>,
    start: Option<i64>,
    pgid: Option<i32>,
    boot: Option<String>,
) -> Option<LeaseHolder> {
    Some(LeaseHolder {
        process: procyard_core::ProcessIdentity {
            pid: procyard_core::Pid::from_raw(pid?)?,
            start_time: u64::try_from(start?).ok()?,
            boot_id: boot?,
        },
        process_group: procyard_core::Pid::from_raw(pgid?)?,
    })
}

impl PgQueue {
    /// Leases of daemons whose session is gone, with the worker of each when it ran on this
    /// machine (same boot id): only those can be found and stopped here.
    pub(super) fn leases_of_the_dead(&mut self) -> Result<Vec<Abandoned>> {
        if self.mode != OpenMode::Daemon {
            return Ok(Vec::new());
        }
        let (space, me) = (self.target.lock_space(), self.owner());
        let boot = procyard_core::ProcessIdentity::current().map(|p| p.boot_id).ok();
        let rows = self.with("read the jobs of dead daemons in", |c| {
            c.query(
                &format!(
                    "SELECT j.seq, j.id, j.task, j.worker_pid, j.worker_start, j.worker_pgid,
                            j.worker_boot
                     FROM queue q JOIN jobs j ON j.seq = q.seq
                     WHERE q.state = 1 AND q.lease_owner <> $2
                       AND q.lease_owner IN ({DEAD_DAEMONS}) ORDER BY q.seq"
                ),
                &[&space, &me],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| {
                let h = holder(r.get(3), r.get(4), r.get(5), r.get(6));
                Abandoned {
                    receipt: Receipt(r.get::<_, i64>(0) as u64),
                    id: r.get(1),
                    task: r.get(2),
                    holder: h.filter(|h| boot.as_ref() == Some(&h.process.boot_id)),
                }
            })
            .collect())
    }

    /// Puts back the leases of every daemon whose session is gone (but `keep`), and forgets
    /// those daemons; returns how many jobs were put back.
    pub(super) fn recover_dead(&mut self, keep: &[Receipt]) -> Result<u64> {
        if self.mode != OpenMode::Daemon {
            return Ok(0);
        }
        let (space, me, channel) = (self.target.lock_space(), self.owner(), self.target.channel());
        let ended = self.target.ended_channel();
        let keep: Vec<i64> = keep.iter().map(|r| r.0 as i64).collect();
        let (n, dead) = self.with("recover the jobs of dead daemons in", |c| {
            let mut tx = c.transaction()?;
            // Lock their rows (a daemon coming back waits on its row, then registers anew) and
            // look again with a fresh statement: the lock table is not a snapshot.
            let locked: Vec<i64> = tx
                .query(
                    &format!("{DEAD_DAEMONS} AND d.no <> $2 FOR UPDATE OF d SKIP LOCKED"),
                    &[&space, &me],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if locked.is_empty() {
                return Ok((0, Vec::new()));
            }
            let dead: Vec<i64> = tx
                .query(&format!("{DEAD_DAEMONS} AND d.no = ANY($2)"), &[&space, &locked])?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let (n, tasks) = release(&mut tx, &dead, &keep, &AttemptEnd::DaemonLost)?;
            tx.execute(
                "DELETE FROM daemons d WHERE d.no = ANY($1)
                   AND NOT EXISTS (SELECT 1 FROM queue WHERE state = 1 AND lease_owner = d.no)",
                &[&dead],
            )?;
            tx.execute(
                "SELECT pg_notify($1, t) FROM unnest($2::text[]) AS t",
                &[&channel, &tasks],
            )?;
            tx.execute("SELECT pg_notify($1, '')", &[&ended])?;
            tx.commit()?;
            Ok((n, dead))
        })?;
        if !dead.is_empty() {
            tracing::warn!(daemons = ?dead, jobs = n, "postgres: put back the jobs of daemons whose session is gone");
            self.due_cache = None;
        }
        Ok(n)
    }

    /// Puts this daemon's leases back (`daemon stopped`) and removes its row: at shutdown.
    pub(super) fn release_own(&mut self) -> Result<u64> {
        let me = self.owner();
        let channel = self.target.channel();
        let n = self.with("return unfinished jobs to", |c| {
            let mut tx = c.transaction()?;
            let (n, tasks) = release(&mut tx, &[me], &[], &AttemptEnd::DaemonStopped)?;
            tx.execute(
                "SELECT pg_notify($1, t) FROM unnest($2::text[]) AS t",
                &[&channel, &tasks],
            )?;
            // The others read the due times again: this daemon no longer wakes for the
            // retries it wrote.
            tx.execute("SELECT pg_notify($1, '')", &[&channel])?;
            tx.execute("DELETE FROM daemons WHERE no = $1", &[&me])?;
            tx.commit()?;
            Ok(n)
        })?;
        self.leases.clear();
        Ok(n)
    }

    /// The next pruning step, if its time has come: one batch of finished jobs past the
    /// retention (by age, or beyond the newest `keep_done_max`), `SKIP LOCKED`.
    pub(super) fn prune_step(&mut self) {
        let now = Instant::now();
        if self.mode != OpenMode::Daemon || now < self.prune_at {
            return;
        }
        let keep_ms = super::claim::ms(self.retention.keep_done);
        let max = self.retention.keep_done_max.min(i64::MAX as u64) as i64;
        if self.prune_count.is_none_or(|(at, _)| now >= at + COUNT_EVERY) {
            let cutoff = self.with("read the retention cutoff of", |c| {
                let row = c.query_opt(
                    "SELECT finished_ms, seq FROM queue WHERE state IN (2, 4)
                     ORDER BY finished_ms DESC, seq DESC OFFSET $1 LIMIT 1",
                    &[&max],
                )?;
                Ok(row.map(|r| (r.get(0), r.get(1))))
            });
            match cutoff {
                Ok(c) => self.prune_count = Some((now, c)),
                Err(_) => {
                    self.prune_at = now + PRUNE_EVERY;
                    return;
                }
            }
        }
        let (cms, cseq) = self.prune_count.and_then(|c| c.1).unwrap_or((i64::MIN, 0));
        let n = self.with("prune", |c| {
            c.execute(
                "WITH q AS (DELETE FROM queue WHERE seq IN (
                     SELECT seq FROM queue WHERE state IN (2, 4)
                       AND (finished_ms <= now_ms() - $1 - 1 OR (finished_ms, seq) <= ($2, $3))
                     ORDER BY finished_ms, seq LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING seq)
                 DELETE FROM jobs WHERE seq = ANY(ARRAY(SELECT seq FROM q))",
                &[&keep_ms, &cms, &cseq, &super::records::BATCH],
            )
        });
        let full = matches!(n, Ok(n) if n as i64 >= super::records::BATCH);
        self.prune_at = now + if full { PRUNE_EVERY / 10 } else { PRUNE_EVERY };
    }
}
