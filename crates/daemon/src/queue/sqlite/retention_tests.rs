//! Tests of retention: pruning by count and by age, in batches, beside a publisher.

use super::*;
use crate::queue::sqlite::tests::bound;
use crate::queue::{JobFilter, OpenMode, Outcome, QueueBackend, Retention};

/// One pruning step that runs (one put off while the log catches up is tried again).
fn step(q: &mut SqliteQueue) {
    procyard_core::testkit::wait_for("the log to catch up", Duration::from_secs(30), || {
        q.prune_step()
    });
}

/// Every job of task `mail` (the test queue copies each to task `all` too).
fn mail() -> JobFilter {
    JobFilter { task: Some("mail".into()), limit: usize::MAX, ..JobFilter::default() }
}

/// Done jobs beyond `keep_done_max` go, the newest stay; dead letters are never pruned;
/// a big backlog goes in batches.
#[test]
fn prunes_by_count_in_batches_and_keeps_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
    q.set_retention(Retention { keep_done: Duration::from_secs(3600), keep_done_max: 10 });
    let n = 1200;
    let payloads: Vec<Vec<u8>> = (0..n).map(|i| format!("{i}").into_bytes()).collect();
    q.publish_batch("mail.a", &payloads).unwrap();
    let jobs = q.claim("mail", n).unwrap();
    for (i, j) in jobs.iter().enumerate() {
        let outcome =
            if i == 0 { Outcome::DeadLetter { reason: "x".into() } } else { Outcome::Done };
        q.complete(j, outcome).unwrap();
    }
    q.flush().unwrap();
    let mut steps = 0;
    loop {
        steps += 1;
        let before = q.jobs(&mail());
        q.prune.next = Instant::now();
        step(&mut q);
        let after = q.jobs(&mail());
        if before.unwrap().len() == after.unwrap().len() {
            break;
        }
    }
    assert!(steps >= 3, "in batches of {PRUNE_BATCH}: {steps} steps");
    let left = q.jobs(&mail()).unwrap();
    let dead = left.iter().filter(|j| j.state == crate::queue::JobState::Dead).count();
    assert_eq!(dead, 1, "dead letters stay");
    let done = left.len() - dead;
    assert_eq!(done, 10, "the newest keep_done_max remain");
}

/// A `keep_done_max` beyond one walk chunk is read over several steps (none walks more
/// than [`WALK_CHUNK`] entries), and then exactly that many of the newest stay.
#[test]
fn count_cutoff_is_walked_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
    let max = WALK_CHUNK + 1000;
    q.set_retention(Retention { keep_done: Duration::from_secs(3600), keep_done_max: max });
    let now = now_ms();
    let tx = q.conn.transaction().unwrap();
    for i in 0..max + 1200 {
        tx.execute(
            "INSERT INTO jobs (id, task, routing_key, payload, state, published_ms, finished_ms)
             VALUES (?1, 'mail', 'mail.a', x'', 2, ?2, ?2)",
            params![format!("j{i}"), now - 1000 + (i / 100) as i64],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let count = |q: &SqliteQueue| -> u64 {
        q.conn.query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get::<_, i64>(0)).unwrap() as u64
    };
    q.prune.next = Instant::now();
    step(&mut q);
    assert!(q.prune.walk.is_some(), "the walk goes on at the next step");
    assert_eq!(count(&q), max + 1200, "nothing deleted before the cutoff is known");
    // Each step deletes a whole batch (it waits for rows read ahead) until the cutoff.
    for _ in 0..=1200 / PRUNE_BATCH + 1 {
        q.prune.next = Instant::now();
        step(&mut q);
    }
    assert_eq!(count(&q), max, "the newest keep_done_max stay");
    let oldest: i64 = q.conn.query_row("SELECT MIN(seq) FROM jobs", [], |r| r.get(0)).unwrap();
    assert_eq!(oldest, 1201, "the oldest went");
}

/// A table whose row numbers span no more than `keep_done_max` is not walked: the count
/// cannot cut, and the walk's reads would only fill the daemon's page cache (its memory).
#[test]
fn no_count_walk_when_the_table_is_smaller_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
    // More rows than one walk chunk: a walk would still be under way after a step.
    let rows = WALK_CHUNK + 500;
    let limit = |max| Retention { keep_done: Duration::from_secs(3600), keep_done_max: max };
    q.set_retention(limit(3 * WALK_CHUNK));
    let now = now_ms();
    let tx = q.conn.transaction().unwrap();
    for i in 0..rows {
        tx.execute(
            "INSERT INTO jobs (id, task, routing_key, payload, state, published_ms, finished_ms)
             VALUES (?1, 'mail', 'mail.a', x'', 2, ?2, ?2)",
            params![format!("j{i}"), now - 1000],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    q.prune.next = Instant::now();
    step(&mut q);
    assert!(q.prune.walk.is_none(), "no walk: {:?}", q.prune);
    assert_eq!(q.jobs(&mail()).unwrap().len() as u64, rows, "all kept");
    // Under the row count, the walk runs (over more than one step) and cuts.
    q.set_retention(limit(rows - 10));
    q.prune.count_read = None;
    q.prune.next = Instant::now();
    step(&mut q);
    assert!(q.prune.walk.is_some(), "a walk under way: {:?}", q.prune);
    for _ in 0..60 {
        q.prune.next = Instant::now();
        step(&mut q);
    }
    assert_eq!(q.jobs(&mail()).unwrap().len() as u64, rows - 10, "the oldest went");
}

/// `n` done jobs of task `mail` that ended an hour ago, one ms apart.
fn expired_jobs(q: &mut SqliteQueue, n: i64) {
    let old = now_ms() - 3_600_000;
    let tx = q.conn.transaction().unwrap();
    for i in 0..n {
        tx.execute(
            "INSERT INTO jobs (id, task, routing_key, payload, state, published_ms, finished_ms)
             VALUES (?1, 'mail', 'mail.a', x'', 2, ?2, ?2)",
            params![format!("j{i}"), old + i],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// While jobs flow (the loop just claimed or ended one) a step deletes a short batch;
/// once they stop for a while, a full one.
#[test]
fn steps_are_short_while_jobs_flow() {
    use crate::queue::Outcome;
    let dir = tempfile::tempdir().unwrap();
    let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
    q.set_retention(Retention { keep_done: Duration::from_secs(1), keep_done_max: 1 << 40 });
    expired_jobs(&mut q, 3 * PRUNE_BATCH);
    let count = |q: &SqliteQueue| -> i64 {
        q.conn.query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0)).unwrap()
    };
    // A job ran: its claim and its end note the flow.
    q.publish("mail.a", b"x").unwrap();
    let jobs = q.claim("mail", 1).unwrap();
    q.complete(&jobs[0], Outcome::Done).unwrap();
    q.prune.next = Instant::now() + Duration::from_secs(3600);
    q.flush().unwrap();
    let before = count(&q);
    q.prune.next = Instant::now();
    step(&mut q);
    assert_eq!(before - count(&q), PRUNE_BATCH_BUSY, "a short step while jobs flow");
    // More jobs ended since the last step than a short step deletes: the step keeps up.
    let many = PRUNE_BATCH_BUSY + 20;
    q.publish_batch("mail.a", &vec![b"x".to_vec(); many as usize]).unwrap();
    for job in q.claim("mail", many as usize).unwrap() {
        q.complete(&job, Outcome::Done).unwrap();
    }
    q.prune.next = Instant::now() + Duration::from_secs(3600);
    q.flush().unwrap();
    let before = count(&q);
    q.prune.next = Instant::now();
    step(&mut q);
    assert_eq!(before - count(&q), many, "as many rows as jobs ended");
    // No job for a while: a full step.
    q.prune.busy_until = Instant::now();
    let before = count(&q);
    q.prune.next = Instant::now();
    step(&mut q);
    assert_eq!(before - count(&q), PRUNE_BATCH, "a full step once jobs stopped");
}

/// Each step deletes a full batch while a publisher commits all the time: a step that
/// read before taking the write lock failed ("database is locked") whenever a publish
/// landed in between, and pruning then crawled at one retry a second.
#[test]
fn prunes_while_a_publisher_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let mut q = bound(&path, OpenMode::Daemon);
    q.set_retention(Retention { keep_done: Duration::from_secs(1), keep_done_max: 1 << 40 });
    let steps = 20;
    expired_jobs(&mut q, steps * PRUNE_BATCH);
    let expired = |q: &SqliteQueue| -> i64 {
        q.conn.query_row("SELECT COUNT(*) FROM jobs WHERE state = 2", [], |r| r.get(0)).unwrap()
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let published = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publisher = std::thread::spawn({
        let (stop, published, path) = (stop.clone(), published.clone(), path.clone());
        move || {
            let mut client = bound(&path, OpenMode::Client);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client.publish("other.a", b"x").unwrap();
                published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let mut left = expired(&q);
    for n in 0..steps {
        // A step while the publisher is at work (it has committed since the last one).
        let seen = published.load(std::sync::atomic::Ordering::Relaxed);
        procyard_core::testkit::wait_for("a publish", Duration::from_secs(30), || {
            published.load(std::sync::atomic::Ordering::Relaxed) > seen
        });
        // A step put off while the log catches up deletes nothing; the one that runs,
        // a full batch.
        step(&mut q);
        let now = expired(&q);
        assert_eq!(left - now, PRUNE_BATCH, "step {n} deleted a full batch");
        left = now;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.join().unwrap();
}

/// Jobs older than `keep_done` go.
#[test]
fn prunes_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = bound(&dir.path().join("q.db"), OpenMode::Daemon);
    q.set_retention(Retention { keep_done: Duration::from_millis(1), keep_done_max: 1000 });
    q.publish("mail.a", b"1").unwrap();
    let job = q.claim("mail", 1).unwrap().remove(0);
    q.complete(&job, Outcome::Done).unwrap();
    q.flush().unwrap();
    q.conn.execute("UPDATE jobs SET finished_ms = finished_ms - 10", []).unwrap();
    q.prune.next = Instant::now();
    step(&mut q);
    assert!(q.jobs(&mail()).unwrap().is_empty());
}
