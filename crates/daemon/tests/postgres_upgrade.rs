//! A PostgreSQL schema made by an older build upgraded in place (see `common/pg.rs` for the
//! database): a version 5 schema holding ready, delayed, due, leased, done and dead jobs is
//! migrated to version 6 by the first daemon that opens it, and every job is still found,
//! claimed, recovered, requeued, cancelled or purged as its state says.

#[path = "common/pg.rs"]
mod pg;

use std::collections::HashSet;

use pg::Schema;
use procyard_daemon::queue::{
    self, AttemptEnd, JobState, OpenMode, Outcome, Purge, QueueBackend, Requeue, TaskBinding,
};

fn open(s: &Schema, mode: OpenMode) -> Box<dyn QueueBackend> {
    let mut q = queue::open(&s.config(), mode).expect("open the postgres queue");
    let work =
        TaskBinding { name: "work".into(), routing_keys: vec!["work.#".into()], max_attempts: 3 };
    q.bind(&[work]).unwrap();
    q
}

/// A job row as version 5 wrote it: `state`, `attempts`, `not_before` relative to now (ms),
/// the daemon leasing it, `finished_ms` relative to now, `last_error`.
struct Row<'a> {
    id: String,
    state: i16,
    attempts: i32,
    not_before: i64,
    owner: Option<i64>,
    finished: Option<i64>,
    error: Option<&'a str>,
}

fn row<'a>(state: i16, attempts: i32, not_before: i64) -> Row<'a> {
    let id = uuid::Uuid::now_v7().to_string();
    Row { id, state, attempts, not_before, owner: None, finished: None, error: None }
}

#[test]
fn pg_v5_schema_upgrades_to_v6_with_its_jobs() {
    let Some(s) = Schema::new("pg_v5_schema_upgrades_to_v6_with_its_jobs") else { return };
    assert_eq!(queue::postgres::migrate_to(&s.config(), 5).unwrap(), [1, 2, 3, 4, 5]);
    let ready = row(0, 0, 0);
    let due = row(5, 0, -1_000);
    let delayed = row(5, 0, 3_600_000);
    let leased = Row { owner: Some(999), ..row(1, 1, 0) };
    let done = Row { finished: Some(-5_000), ..row(2, 1, 0) };
    let dead = Row { finished: Some(-4_000), error: Some("boom"), ..row(3, 3, 0) };
    let mut db = s.client();
    db.batch_execute(&format!(
        "SET search_path TO {};
         INSERT INTO daemons (no, name, host, os_pid, session_pid, started_ms)
         VALUES (999, 'gone', 'elsewhere', 1, 1, 0);",
        s.name
    ))
    .unwrap();
    for r in [&ready, &due, &delayed, &leased, &done, &dead] {
        let worker = (r.state == 1).then_some(4242i32);
        db.execute(
            "INSERT INTO jobs (id, task, routing_key, payload, state, attempts, not_before,
                 lease_owner, published_ms, finished_ms, last_error, worker_pid,
                 worker_started_ms)
             VALUES ($1, 'work', 'work.a', 'p', $2, $3, now_ms() + $4, $5, now_ms(),
                 now_ms() + $6, $7, $8::int, CASE WHEN $8::int IS NULL THEN NULL ELSE now_ms() END)",
            &[
                &r.id,
                &r.state,
                &r.attempts,
                &r.not_before,
                &r.owner,
                &r.finished,
                &r.error,
                &worker,
            ],
        )
        .unwrap();
    }
    db.execute(
        "INSERT INTO attempts (job_seq, delivery, started_ms, ended_ms, outcome)
         SELECT seq, 1, now_ms() - 6000, now_ms() - 5000, NULL FROM jobs WHERE id = $1",
        &[&done.id],
    )
    .unwrap();

    // The first daemon migrates; its own claims and the clients' reads see every job.
    let mut daemon = open(&s, OpenMode::Daemon);
    let versions: i64 = db.query_one("SELECT COUNT(*) FROM migrations", &[]).unwrap().get(0);
    assert_eq!(versions, 6);
    let mut client = open(&s, OpenMode::Client);
    let state = |c: &mut Box<dyn QueueBackend>, id: &str| c.job(id).unwrap().state;
    assert_eq!(state(&mut client, &ready.id), JobState::Ready);
    assert_eq!(state(&mut client, &due.id), JobState::Ready, "due: ready to run");
    assert_eq!(state(&mut client, &delayed.id), JobState::Delayed);
    assert_eq!(state(&mut client, &leased.id), JobState::Running);
    let record = client.job(&done.id).unwrap();
    assert_eq!((record.state, record.attempts.len()), (JobState::Done, 1));
    let depth = client.depths().unwrap()["work"].clone();
    assert_eq!((depth.ready, depth.delayed, depth.in_flight), (2, Some(1), 1));
    assert_eq!(depth.dead, Some(1));
    let letters = client.dead_letters(None, 10).unwrap();
    assert_eq!(letters.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), [dead.id.as_str()]);

    // The lease of the daemon that is gone comes back, its attempt recorded.
    assert_eq!(daemon.recover(&[]).unwrap(), 1);
    let back = client.job(&leased.id).unwrap();
    assert_eq!(back.state, JobState::Ready);
    assert_eq!(back.attempts[0].end, Some(AttemptEnd::DaemonLost));

    // The due job is made ready; the delayed one waits for its time.
    daemon.next_due().unwrap();
    let taken = daemon.claim("work", 10).unwrap();
    let ids: HashSet<&str> = taken.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, HashSet::from([ready.id.as_str(), due.id.as_str(), leased.id.as_str()]));
    for j in &taken {
        daemon.complete(j, Outcome::Done).unwrap();
    }
    daemon.flush().unwrap();
    for id in [&ready.id, &due.id, &leased.id] {
        assert_eq!(state(&mut client, id), JobState::Done);
    }

    // The dead letter is requeued and runs; the delayed job is cancelled.
    assert_eq!(client.requeue_dead(None, &Requeue::All).unwrap(), 1);
    let again = daemon.claim("work", 10).unwrap();
    assert_eq!(again.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), [dead.id.as_str()]);
    daemon.complete(&again[0], Outcome::Done).unwrap();
    daemon.flush().unwrap();
    assert!(client.cancel_waiting(&delayed.id).unwrap());
    assert_eq!(state(&mut client, &delayed.id), JobState::Cancelled);
    assert!(daemon.claim("work", 10).unwrap().is_empty());

    // Every job has ended: a purge of the done and cancelled ones leaves none.
    assert_eq!(client.purge(&Purge { done: true, ..Purge::default() }).unwrap(), 6);
    let left: i64 = db.query_one("SELECT COUNT(*) FROM jobs", &[]).unwrap().get(0);
    let queued: i64 = db.query_one("SELECT COUNT(*) FROM queue", &[]).unwrap().get(0);
    assert_eq!((left, queued), (0, 0));
    daemon.shutdown().unwrap();
}
