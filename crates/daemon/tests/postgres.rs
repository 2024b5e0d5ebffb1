//! The PostgreSQL backend through its API, on a real database (see `common/pg.rs`): job
//! records, retries, dead letters, cancel and purge from another connection; migrations run
//! once by daemons starting together; a dead daemon's leases come back; bad URLs are named.

#[path = "common/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use pg::Schema;
use procyard_daemon::Error;
use procyard_daemon::queue::{
    self, AttemptEnd, AttemptReport, Captured, JobFilter, JobState, LeaseHolder, OpenMode, Outcome,
    Purge, QueueBackend, Requeue, TaskBinding,
};

fn bindings() -> Vec<TaskBinding> {
    vec![TaskBinding { name: "work".into(), routing_keys: vec!["work.#".into()], max_attempts: 3 }]
}

fn open(s: &Schema, mode: OpenMode) -> Box<dyn QueueBackend> {
    let mut q = queue::open(&s.config(), mode).expect("open the postgres queue");
    q.bind(&bindings()).unwrap();
    q
}

/// The error opening `config` gives, with its causes.
fn open_err(config: &queue::QueueConfig) -> String {
    match queue::open(config, OpenMode::Client) {
        Ok(_) => panic!("opened {config:?}"),
        Err(e) => e.chain().to_string(),
    }
}

fn holder() -> LeaseHolder {
    let me = procyard_core::ProcessIdentity::current().unwrap();
    LeaseHolder { process_group: me.pid, process: me }
}

fn report(end: AttemptEnd, out: &str) -> AttemptReport {
    AttemptReport {
        worker_pid: None,
        end,
        reason: None,
        stdout: Some(Captured { bytes: out.into(), total: out.len() as u64, dropped: 0 }),
        stderr: None,
        usage: None,
    }
}

/// A job's whole life, seen from a client that never ran it: attempts with output, a retry,
/// a dead letter, requeue, cancel, purge.
#[test]
fn pg_job_records_retries_dead_letters_cancel_and_purge() {
    let Some(s) = Schema::new("pg_job_records_retries_dead_letters_cancel_and_purge") else {
        return;
    };
    let mut client = open(&s, OpenMode::Client);
    let mut daemon = open(&s, OpenMode::Daemon);
    let ids = client.publish_batch("work.a", &[b"one".to_vec(), b"two".to_vec()]).unwrap();
    assert!(matches!(client.publish("other", b""), Err(Error::Unroutable { .. })));
    assert_eq!(client.job(&ids[0]).unwrap().state, JobState::Ready);

    let jobs = daemon.claim("work", 10).unwrap();
    assert_eq!(jobs.iter().map(|j| j.payload.clone()).collect::<Vec<_>>(), [b"one", b"two"]);
    for j in &jobs {
        daemon.record_holder(j, &holder()).unwrap();
    }
    daemon.flush().unwrap();
    let running = client.job(&ids[0]).unwrap();
    assert_eq!((running.state, running.attempts.len()), (JobState::Running, 1));
    assert_eq!(running.attempts[0].worker_pid, Some(std::process::id() as i32));

    daemon.record_attempt(&jobs[0], report(AttemptEnd::Exited { code: 3 }, "first"));
    let retry = Outcome::Retry { delay: Duration::from_millis(200), reason: "exit code 3".into() };
    daemon.complete(&jobs[0], retry).unwrap();
    daemon.record_attempt(&jobs[1], report(AttemptEnd::Exited { code: 1 }, "bad"));
    daemon.complete(&jobs[1], Outcome::DeadLetter { reason: "bad input".into() }).unwrap();
    assert!(daemon.claim("work", 10).unwrap().is_empty(), "the retry waits its delay");
    assert_eq!(client.job(&ids[0]).unwrap().state, JobState::Delayed);
    let due = daemon.next_due().unwrap().expect("a retry time");
    assert!(due <= Instant::now() + Duration::from_millis(300));
    let dead = client.dead_letters(None, 10).unwrap();
    assert_eq!((dead.len(), dead[0].reason.as_str(), dead[0].payload_len), (1, "bad input", 3));

    // The retry comes back at its due time: wait for that instant, then claim.
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        let got = daemon.claim("work", 10).unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(Instant::now() < deadline, "the retry never came back");
        let due = daemon.next_due().unwrap().unwrap_or(deadline);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    };
    assert_eq!((again[0].id.as_str(), again[0].attempt), (ids[0].as_str(), 2));
    daemon.record_holder(&again[0], &holder()).unwrap();
    daemon.record_attempt(&again[0], report(AttemptEnd::Exited { code: 0 }, "second"));
    daemon.complete(&again[0], Outcome::Done).unwrap();
    daemon.flush().unwrap();

    let done = client.job(&ids[0]).unwrap();
    assert_eq!(done.state, JobState::Done);
    let outs: Vec<(u32, Option<AttemptEnd>, Vec<u8>)> = done
        .attempts
        .iter()
        .map(|a| (a.number, a.end.clone(), a.stdout.clone().unwrap().bytes))
        .collect();
    assert_eq!(
        outs,
        [
            (1, Some(AttemptEnd::Exited { code: 3 }), b"first".to_vec()),
            (2, Some(AttemptEnd::Exited { code: 0 }), b"second".to_vec()),
        ]
    );
    let d = &client.depths().unwrap()["work"];
    assert_eq!((d.ready, d.in_flight, d.dead, d.done_total), (0, 0, Some(1), Some(1)));

    // Requeue by id: an unknown id puts back nothing.
    let unknown = uuid::Uuid::now_v7().to_string();
    let both = Requeue::Ids(vec![ids[1].clone(), unknown]);
    assert!(matches!(client.requeue_dead(None, &both), Err(Error::NoSuchJob { .. })));
    assert_eq!(client.requeue_dead(None, &Requeue::Ids(vec![ids[1].clone()])).unwrap(), 1);
    assert!(client.cancel_waiting(&ids[1]).unwrap());
    assert!(!client.cancel_waiting(&ids[1]).unwrap(), "already cancelled");
    assert!(daemon.claim("work", 10).unwrap().is_empty(), "a cancelled job never runs");
    let listed = client.jobs(&JobFilter::default()).unwrap();
    assert_eq!(
        listed.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        [ids[1].clone(), ids[0].clone()]
    );
    let purged = client.purge(&Purge { done: true, ..Purge::default() }).unwrap();
    assert_eq!(purged, 2);
    assert!(matches!(client.job(&ids[0]), Err(Error::UnknownJob { .. })));
    assert!(matches!(client.job("nope"), Err(Error::InvalidJobId { .. })));
    daemon.shutdown().unwrap();
}

/// Daemons starting together migrate once; a second migration applies nothing.
#[test]
fn pg_daemons_starting_together_migrate_once() {
    let Some(s) = Schema::new("pg_daemons_starting_together_migrate_once") else { return };
    let config = s.config();
    let opened: Vec<_> = (0..3)
        .map(|_| {
            let c = config.clone();
            std::thread::spawn(move || queue::open(&c, OpenMode::Daemon).map(|_| ()))
        })
        .collect();
    for t in opened {
        t.join().unwrap().expect("open");
    }
    let n: i64 = s
        .client()
        .query_one(&format!("SELECT COUNT(*) FROM {}.migrations", s.name), &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 6, "each version applied once (six versions)");
    assert!(queue::postgres::migrate(&config).unwrap().is_empty());
}

/// A bad URL, an unreachable server and a bad schema are errors that name them.
#[test]
fn pg_bad_url_is_a_clear_error() {
    let Some(s) = Schema::new("pg_bad_url_is_a_clear_error") else { return };
    let mut config = s.config();
    config.url = Some("postgres://postgres:secret@127.0.0.1:notaport/test".into());
    let msg = open_err(&config);
    assert!(msg.contains("127.0.0.1:notaport") && !msg.contains("secret"), "{msg}");
    config.url = Some("postgres://postgres@127.0.0.1:1/test".into());
    let msg = open_err(&config);
    assert!(
        msg.contains(
            "unable to connect to the PostgreSQL queue postgres://postgres@127.0.0.1:1/test"
        ),
        "{msg}"
    );
    let mut bad = s.config();
    bad.schema = "Robert'); DROP".into();
    let msg = open_err(&bad);
    assert!(msg.contains("lower-case letters"), "{msg}");
}

/// A daemon whose session ends (its process gone): another daemon puts its jobs back within
/// a second, the interrupted attempt recorded `daemon lost`.
#[test]
fn pg_dead_daemons_leases_come_back_within_a_second() {
    let Some(s) = Schema::new("pg_dead_daemons_leases_come_back_within_a_second") else {
        return;
    };
    let mut client = open(&s, OpenMode::Client);
    let ids = client.publish_batch("work.a", &vec![b"x".to_vec(); 3]).unwrap();
    let mut survivor = open(&s, OpenMode::Daemon);
    let mut poll = mio::Poll::new().unwrap();
    survivor.attach(poll.registry(), mio::Token(7)).unwrap();
    let mut events = mio::Events::with_capacity(8);
    let mut victim = open(&s, OpenMode::Daemon);
    let taken = victim.claim("work", 2).unwrap();
    victim.record_holder(&taken[0], &holder()).unwrap();
    victim.flush().unwrap();
    assert_eq!(client.depths().unwrap()["work"].in_flight, 2);
    drop(victim); // its session closes, as when the process dies
    let gone = Instant::now();
    let deadline = gone + Duration::from_secs(5);
    // The survivor's loop is woken by its session when it sees the dead daemon.
    let back = loop {
        survivor.on_wake().unwrap();
        if client.depths().unwrap()["work"].in_flight == 0 {
            break gone.elapsed();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the dead daemon's jobs never came back");
        poll.poll(&mut events, Some(left)).unwrap();
    };
    eprintln!("leases of a dead daemon back in {back:?}");
    assert!(back < Duration::from_secs(1), "{back:?}");
    let rec = client.job(&taken[0].id).unwrap();
    assert_eq!(rec.state, JobState::Ready);
    assert_eq!(rec.attempts[0].end, Some(AttemptEnd::DaemonLost));
    let all = survivor.claim("work", 10).unwrap();
    assert_eq!(all.len(), ids.len());
    assert!(all.iter().all(|j| j.attempt == 1), "the interrupted attempt is not counted");
}

/// Done jobs past `keep_done` are pruned by the daemon's own pruning steps (deadlines it
/// reports through `next_due`); dead letters stay.
#[test]
fn pg_retention_prunes_done_jobs_and_keeps_dead_letters() {
    let Some(s) = Schema::new("pg_retention_prunes_done_jobs_and_keeps_dead_letters") else {
        return;
    };
    let mut client = open(&s, OpenMode::Client);
    let mut daemon = open(&s, OpenMode::Daemon);
    daemon
        .set_retention(queue::Retention { keep_done: Duration::from_millis(1), keep_done_max: 10 });
    client.publish_batch("work.a", &vec![b"x".to_vec(); 4]).unwrap();
    let jobs = daemon.claim("work", 10).unwrap();
    daemon.complete(&jobs[0], Outcome::DeadLetter { reason: "bad".into() }).unwrap();
    for j in &jobs[1..] {
        daemon.complete(j, Outcome::Done).unwrap();
    }
    daemon.flush().unwrap();
    let all = JobFilter { limit: 100, ..JobFilter::default() };
    assert_eq!(client.jobs(&all).unwrap().len(), 4);
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.jobs(&all).unwrap().len() > 1 {
        assert!(Instant::now() < deadline, "done jobs were never pruned");
        let step = daemon.next_due().unwrap().unwrap_or(deadline);
        std::thread::sleep(step.saturating_duration_since(Instant::now()));
        daemon.flush().unwrap();
    }
    let left = client.jobs(&all).unwrap();
    assert_eq!(left[0].state, JobState::Dead, "dead letters stay");
    assert_eq!(client.depths().unwrap()["work"].done_total, Some(3), "counted before pruning");
}

/// TLS as the URL asks, with libpq's meanings: `sslmode=disable` connects plainly; `require`
/// connects encrypted when the server offers TLS (its daemon's two connections are in
/// `pg_stat_ssl`), and against a server without TLS fails saying so; `verify-full` refuses a
/// certificate no trusted authority signed; an unreadable `sslrootcert` is named.
#[test]
fn pg_tls_when_the_url_asks() {
    let Some(s) = Schema::new("pg_tls_when_the_url_asks") else { return };
    let with = |query: &str| {
        let mut c = s.config();
        let sep = if s.url.contains('?') { '&' } else { '?' };
        c.url = Some(format!("{}{sep}{query}", s.url));
        c
    };
    let mut plain = queue::open(&with("sslmode=disable"), OpenMode::Client).expect("disable");
    plain.bind(&bindings()).unwrap();
    plain.publish("work.a", b"x").unwrap();

    let server_tls: String = s.client().query_one("SHOW ssl", &[]).unwrap().get(0);
    if server_tls == "on" {
        let daemon = queue::open(&with("sslmode=require"), OpenMode::Daemon).expect("require");
        let row = s
            .client()
            .query_one(
                &format!(
                    "SELECT COUNT(*), COALESCE(bool_and(t.ssl), false)
                     FROM pg_stat_ssl t JOIN pg_stat_activity a USING (pid)
                     WHERE a.application_name LIKE 'procyard-daemon ' || (SELECT name FROM {}.daemons) || '%'",
                    s.name
                ),
                &[],
            )
            .unwrap();
        assert_eq!((row.get::<_, i64>(0), row.get::<_, bool>(1)), (2, true), "both encrypted");
        drop(daemon);
        let msg = open_err(&with("sslmode=verify-full"));
        assert!(msg.contains("connect with TLS to") && msg.contains("certificate"), "{msg}");
    } else {
        let msg = open_err(&with("sslmode=require"));
        assert!(msg.contains("connect with TLS to") && msg.contains("TLS"), "{msg}");
    }
    let msg = open_err(&with("sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem"));
    assert!(msg.contains("sslrootcert") && msg.contains("/nonexistent/ca.pem"), "{msg}");
}

/// The certificate checks of `verify-ca` and `verify-full` against the server's own
/// certificate given as `sslrootcert`: Debian's self-signed `ssl-cert-snakeoil`, which names
/// `localhost` (a DNS name, no IP address). `verify-ca` connects to 127.0.0.1, `verify-full`
/// connects to `localhost` and refuses 127.0.0.1, saying the certificate is not valid for
/// that name. Runs where the server has TLS with that certificate, readable here.
#[test]
fn pg_tls_verifies_against_sslrootcert() {
    let Some(s) = Schema::new("pg_tls_verifies_against_sslrootcert") else { return };
    let show = |what: &str| -> String {
        s.client().query_one(&format!("SHOW {what}"), &[]).unwrap().get(0)
    };
    let cert = std::path::Path::new(&show("data_directory")).join(show("ssl_cert_file"));
    let snakeoil = cert.to_string_lossy().contains("snakeoil");
    if show("ssl") != "on" || !snakeoil || std::fs::File::open(&cert).is_err() {
        eprintln!("SKIP: the server has no TLS with a readable snakeoil certificate ({cert:?})");
        return;
    }
    let with = |host: &str, mode: &str| {
        let url = s.url.replace("localhost", "127.0.0.1").replace("127.0.0.1", host);
        let mut c = s.config();
        let sep = if url.contains('?') { '&' } else { '?' };
        c.url = Some(format!("{url}{sep}sslrootcert={}&sslmode={mode}", cert.display()));
        c
    };
    let mut q = queue::open(&with("127.0.0.1", "verify-ca"), OpenMode::Client).expect("ca");
    q.bind(&bindings()).unwrap();
    q.publish("work.a", b"x").unwrap();
    queue::open(&with("localhost", "verify-full"), OpenMode::Client).expect("full, by name");
    let msg = open_err(&with("127.0.0.1", "verify-full"));
    assert!(msg.contains("connect with TLS to") && msg.contains("not valid for"), "{msg}");
}

/// A worker holder not yet flushed rides with the daemon's next write (here a claim), and an
/// outcome written in the same write as its job's holder gets the holder's pid and start
/// (pinned for any rewrite of the write path that merges its statements).
#[test]
fn pg_holders_ride_with_the_next_write() {
    let Some(s) = Schema::new("pg_holders_ride_with_the_next_write") else {
        return;
    };
    let mut client = open(&s, OpenMode::Client);
    let ids = client.publish_batch("work.a", &vec![b"x".to_vec(); 2]).unwrap();
    let mut daemon = open(&s, OpenMode::Daemon);
    let first = daemon.claim("work", 1).unwrap();
    daemon.record_holder(&first[0], &holder()).unwrap();
    let second = daemon.claim("work", 1).unwrap();
    assert_eq!(second.len(), 1);
    let rec = client.job(&ids[0]).unwrap();
    assert_eq!(rec.state, JobState::Running);
    assert_eq!(rec.attempts[0].worker_pid, Some(std::process::id() as i32));
    // An outcome in the same write as its job's holder: one write, the attempt has the holder.
    daemon.record_holder(&second[0], &holder()).unwrap();
    daemon.record_attempt(&second[0], report(AttemptEnd::Exited { code: 0 }, "done"));
    daemon.complete(&second[0], Outcome::Done).unwrap();
    daemon.flush().unwrap();
    let rec = client.job(&ids[1]).unwrap();
    assert_eq!(rec.state, JobState::Done);
    assert_eq!(rec.attempts[0].worker_pid, Some(std::process::id() as i32));
    assert!(rec.attempts[0].started_ms.is_some(), "{rec:?}");
}

/// A job done cleanly by a longlived worker (its answer `done`, no output, no resource use)
/// keeps no attempt row: its done row holds the worker, the start and the end, and its record
/// shows that attempt; a job whose attempt said more keeps its row.
#[test]
fn pg_a_clean_longlived_done_is_read_from_the_job_row() {
    let Some(s) = Schema::new("pg_a_clean_longlived_done_is_read_from_the_job_row") else {
        return;
    };
    let mut client = open(&s, OpenMode::Client);
    let ids = client.publish_batch("work.a", &vec![b"x".to_vec(); 2]).unwrap();
    let mut daemon = open(&s, OpenMode::Daemon);
    let jobs = daemon.claim("work", 2).unwrap();
    let done = AttemptEnd::Replied { outcome: "done".into() };
    let clean = AttemptReport { stdout: None, ..report(done.clone(), "") };
    for (job, report) in jobs.iter().zip([clean, report(done.clone(), "said something")]) {
        daemon.record_holder(job, &holder()).unwrap();
        daemon.record_attempt(job, report);
        daemon.complete(job, Outcome::Done).unwrap();
    }
    daemon.flush().unwrap();
    let rows: i64 = s
        .client()
        .query_one(&format!("SELECT COUNT(*) FROM {}.attempts", s.name), &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "only the attempt with output has a row");
    for id in &ids {
        let rec = client.job(id).unwrap();
        assert_eq!((rec.state, rec.attempts.len()), (JobState::Done, 1), "{rec:?}");
        let a = &rec.attempts[0];
        assert_eq!((a.number, a.delivery, a.end.as_ref()), (1, 1, Some(&done)));
        assert_eq!(a.worker_pid, Some(std::process::id() as i32));
        assert!(a.started_ms.is_some() && a.ended_ms.is_some(), "{a:?}");
    }
}

/// The usual turn (an attempt, a done outcome and the next claim, in one write) records all
/// of it; its end is notified on `<schema>_ended` only while a client waits for ends (a
/// notification wakes every listening session, so a daemon sends none for nobody).
#[test]
fn pg_ends_are_notified_only_while_a_client_waits() {
    let Some(s) = Schema::new("pg_ends_are_notified_only_while_a_client_waits") else {
        return;
    };
    let mut client = open(&s, OpenMode::Client);
    let ids = client.publish_batch("work.a", &vec![b"x".to_vec(); 2]).unwrap();
    let mut daemon = open(&s, OpenMode::Daemon);
    let mut listener = s.client();
    listener.batch_execute(&format!("LISTEN {}_ended", s.name)).unwrap();
    // Notifications committed before a statement of the listener arrive before its answer.
    let mut heard = move || {
        listener.batch_execute("SELECT 1").unwrap();
        let mut n = listener.notifications();
        postgres::fallible_iterator::FallibleIterator::count(n.iter()).unwrap()
    };
    let first = daemon.claim("work", 1).unwrap();
    daemon.record_attempt(&first[0], report(AttemptEnd::Exited { code: 0 }, "one"));
    daemon.complete(&first[0], Outcome::Done).unwrap();
    let second = daemon.claim("work", 1).unwrap();
    assert_eq!(second.len(), 1, "the claim rode with the outcome");
    let rec = client.job(&ids[0]).unwrap();
    assert_eq!(rec.state, JobState::Done);
    assert_eq!(rec.attempts.len(), 1, "{rec:?}");
    assert_eq!(rec.attempts[0].stdout.as_ref().map(|c| &c.bytes[..]), Some(&b"one"[..]));
    assert_eq!(client.job(&ids[1]).unwrap().state, JobState::Running);
    assert_eq!(heard(), 0, "nobody waits: no notification");
    // A client starts waiting (its first call listens and takes the waiters' lock).
    assert_eq!(client.wait_ends(Duration::ZERO).unwrap(), Some(()));
    daemon.record_attempt(&second[0], report(AttemptEnd::Exited { code: 0 }, "two"));
    daemon.complete(&second[0], Outcome::Done).unwrap();
    daemon.flush().unwrap();
    assert_eq!(heard(), 1, "a client waits: notified");
    assert_eq!(client.job(&ids[1]).unwrap().state, JobState::Done);
}
