//! The scheduling controls on the PostgreSQL backend, through its API on a real database
//! (see `common/pg.rs`): delays and priorities in claim order, a publish waking a daemon to
//! read the next due time, unique keys under 50 concurrent publishers on separate
//! connections, rate limits and per-key concurrency shared by two daemons; quick jobs
//! claimed ahead, and put back untouched.

#[path = "common/pg.rs"]
mod pg;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use pg::Schema;
use procyard_daemon::limits::{ConcurrencyKey, RateLimit, TaskLimits};
use procyard_daemon::queue::{
    self, Job, JobFilter, JobState, OpenMode, Outcome, PublishOptions, QueueBackend, TaskBinding,
};

fn bindings() -> Vec<TaskBinding> {
    vec![TaskBinding { name: "work".into(), routing_keys: vec!["work.#".into()], max_attempts: 3 }]
}

fn open(s: &Schema, mode: OpenMode) -> Box<dyn QueueBackend> {
    let mut q = queue::open(&s.config(), mode).expect("open the postgres queue");
    q.bind(&bindings()).unwrap();
    q
}

fn publish(q: &mut dyn QueueBackend, payload: &str, opts: &PublishOptions) -> (String, bool) {
    let p = q.publish_with("work.a", &[payload.as_bytes().to_vec()], opts).expect("publish");
    (p.ids[0].clone(), p.is_duplicate())
}

fn payloads(jobs: &[Job]) -> Vec<String> {
    jobs.iter().map(|j| String::from_utf8_lossy(&j.payload).into_owned()).collect()
}

/// Waits on the daemon's own poll (its session wakes it) until `done`, or fails at `deadline`.
fn wait_woken(
    daemon: &mut dyn QueueBackend,
    poll: &mut mio::Poll,
    deadline: Instant,
    mut done: impl FnMut(&mut dyn QueueBackend) -> bool,
) {
    let mut events = mio::Events::with_capacity(8);
    loop {
        daemon.on_wake().unwrap();
        if done(daemon) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "not woken before the deadline");
        let until = daemon.next_due().unwrap().map(|d| d.saturating_duration_since(Instant::now()));
        poll.poll(&mut events, Some(until.unwrap_or(left).min(left))).unwrap();
    }
}

/// Higher priority first, FIFO within one; a delayed job waits as `delayed`, out of the claim
/// order, and is claimable at its due time, which the daemon learns from the publish's
/// notification (no polling); `--at` in the past runs now.
#[test]
fn pg_delays_and_priorities_in_claim_order() {
    let Some(s) = Schema::new("pg_delays_and_priorities_in_claim_order") else { return };
    let mut client = open(&s, OpenMode::Client);
    let mut daemon = open(&s, OpenMode::Daemon);
    let mut poll = mio::Poll::new().unwrap();
    daemon.attach(poll.registry(), mio::Token(3)).unwrap();
    // A pruning step now: the next one is a second away, later than the delayed job below.
    daemon.flush().unwrap();

    let p = |n| PublishOptions::new().priority(n);
    publish(&mut *client, "low", &p(1));
    publish(&mut *client, "default-1", &PublishOptions::new());
    publish(&mut *client, "high", &p(9));
    publish(&mut *client, "default-2", &p(5));
    let past = PublishOptions::new().at(SystemTime::now() - Duration::from_secs(3600));
    publish(&mut *client, "past", &past);
    let published = Instant::now();
    let in_400ms = PublishOptions::new().delay(Duration::from_millis(400));
    let (delayed, _) = publish(&mut *client, "delayed", &in_400ms);
    assert_eq!(client.job(&delayed).unwrap().state, JobState::Delayed);
    assert_eq!(client.depths().unwrap()["work"].delayed, Some(1));

    // The publish's notification makes the daemon read the due time again.
    let mut due = None;
    wait_woken(&mut *daemon, &mut poll, Instant::now() + Duration::from_secs(10), |d| {
        let window = published + Duration::from_millis(300)..published + Duration::from_millis(450);
        due = d.next_due().unwrap().filter(|t| window.contains(t));
        due.is_some()
    });
    let jobs = daemon.claim("work", 10).unwrap();
    assert_eq!(payloads(&jobs), ["high", "default-1", "default-2", "past", "low"]);
    assert!(daemon.claim("work", 10).unwrap().is_empty(), "the delayed job waits");

    // At its due time (a deadline the daemon reported), it is claimable.
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = daemon.claim("work", 10).unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(Instant::now() < deadline, "the delayed job never came");
        let at = daemon.next_due().unwrap().unwrap_or(deadline);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
    };
    assert!(published.elapsed() >= Duration::from_millis(390), "{:?}", published.elapsed());
    assert_eq!(payloads(&got), ["delayed"]);
    // A retry with a backoff waits as delayed, too.
    let retry = Outcome::Retry { delay: Duration::from_secs(30), reason: "later".into() };
    daemon.complete(&got[0], retry).unwrap();
    daemon.flush().unwrap();
    assert_eq!(client.job(&delayed).unwrap().state, JobState::Delayed);
    assert!(client.cancel_waiting(&delayed).unwrap(), "a delayed job can be cancelled");
    daemon.shutdown().unwrap();
}

/// 50 publishes of one unique key at once, from three "machines" of clients (each publish on
/// its own connection), queue one job; every publish answers with its id, all but one as a
/// duplicate. The key is held while the job waits and runs; a done job lets it go, unless
/// `--unique-for` holds it longer.
#[test]
fn pg_unique_keys_hold_under_fifty_concurrent_publishers() {
    let Some(s) = Schema::new("pg_unique_keys_hold_under_fifty_concurrent_publishers") else {
        return;
    };
    let config = s.config();
    let barrier = Arc::new(Barrier::new(50));
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let (config, barrier) = (config.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut q = queue::open(&config, OpenMode::Client).expect("open");
                q.bind(&bindings()).unwrap();
                let opts = PublishOptions::new()
                    .unique("report-42")
                    .header("machine", (i % 3).to_string());
                barrier.wait();
                publish(&mut *q, "x", &opts)
            })
        })
        .collect();
    let answers: Vec<(String, bool)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let first = &answers[0].0;
    assert!(answers.iter().all(|(id, _)| id == first), "{answers:?}");
    assert_eq!(answers.iter().filter(|(_, dup)| !dup).count(), 1, "{answers:?}");
    let mut client = open(&s, OpenMode::Client);
    assert_eq!(client.depths().unwrap()["work"].ready, 1);

    let opts = PublishOptions::new().unique("report-42");
    let mut daemon = open(&s, OpenMode::Daemon);
    let job = daemon.claim("work", 1).unwrap().remove(0);
    assert_eq!(publish(&mut *client, "x", &opts), (first.clone(), true), "held while running");
    daemon.complete(&job, Outcome::Done).unwrap();
    daemon.flush().unwrap();
    let (second, dup) = publish(&mut *client, "x", &opts);
    assert!(!dup && &second != first, "a done job lets its key go");

    let windowed = PublishOptions::new().unique("w").unique_for(Duration::from_secs(3600));
    let (w, _) = publish(&mut *client, "x", &windowed);
    assert!(client.cancel_waiting(&w).unwrap());
    assert_eq!(publish(&mut *client, "x", &windowed), (w, true), "held within the window");
    let short = PublishOptions::new().unique("s").unique_for(Duration::ZERO);
    let (gone, _) = publish(&mut *client, "x", &short);
    assert!(client.cancel_waiting(&gone).unwrap());
    assert!(!publish(&mut *client, "x", &short).1, "a window that is over lets the key go");
    daemon.shutdown().unwrap();
}

/// A rate limit is one bucket for the cluster: with `4/m` (no token comes back during the
/// test), two daemons together start 4 of 10 jobs; the second daemon sees the task
/// rate-limited, and the rest wait `ready`.
#[test]
fn pg_rate_limit_is_shared_by_two_daemons() {
    let Some(s) = Schema::new("pg_rate_limit_is_shared_by_two_daemons") else { return };
    let mut client = open(&s, OpenMode::Client);
    client.publish_batch("work.a", &vec![b"x".to_vec(); 10]).unwrap();
    let limits = [TaskLimits {
        task: "work".into(),
        rate: Some(RateLimit::parse("4/m").unwrap()),
        key: None,
        max_per_key: 1,
    }];
    let mut a = open(&s, OpenMode::Daemon);
    let mut b = open(&s, OpenMode::Daemon);
    a.set_limits(&limits).unwrap();
    b.set_limits(&limits).unwrap();
    assert_eq!(a.claim("work", 3).unwrap().len(), 3);
    assert_eq!(b.claim("work", 10).unwrap().len(), 1, "one token left for the cluster");
    assert!(a.claim("work", 10).unwrap().is_empty(), "the bucket is empty for every daemon");
    let d = &b.depths().unwrap()["work"];
    assert!(d.rate_limited && d.ready == 6 && d.in_flight == 4, "{d:?}");
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// `max_per_key = 1` holds across daemons: while a job of key `a` runs on one daemon, no
/// daemon starts another; the jobs of a key start in publish order; jobs without the key
/// are not limited by it.
#[test]
fn pg_per_key_concurrency_holds_across_daemons() {
    let Some(s) = Schema::new("pg_per_key_concurrency_holds_across_daemons") else { return };
    let mut client = open(&s, OpenMode::Client);
    let tenant = |t: &str| PublishOptions::new().header("tenant", t);
    for (payload, opts) in [
        ("a1", tenant("a")),
        ("a2", tenant("a")),
        ("b1", tenant("b")),
        ("a3", tenant("a")),
        ("free", PublishOptions::new().priority(4)),
    ] {
        publish(&mut *client, payload, &opts);
    }
    let limits = [TaskLimits {
        task: "work".into(),
        rate: None,
        key: Some(ConcurrencyKey::parse("header:tenant").unwrap()),
        max_per_key: 1,
    }];
    let mut a = open(&s, OpenMode::Daemon);
    let mut b = open(&s, OpenMode::Daemon);
    a.set_limits(&limits).unwrap();
    b.set_limits(&limits).unwrap();
    let first = a.claim("work", 1).unwrap();
    assert_eq!(payloads(&first), ["a1"]);
    assert_eq!(payloads(&b.claim("work", 10).unwrap()), ["b1", "free"], "a is running on a");
    assert!(a.claim("work", 10).unwrap().is_empty(), "every key is full");
    a.complete(&first[0], Outcome::Done).unwrap();
    a.flush().unwrap();
    assert_eq!(payloads(&b.claim("work", 10).unwrap()), ["a2"], "publish order within a key");
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// A daemon whose workers finish quickly claims more than it is asked for (within its
/// capacity) and answers the next claims from what it holds, with no write (the outcomes wait
/// for the flush); one whose jobs finished nothing lately claims what it is asked for (no
/// daemon keeps slow jobs another could run); a cancel of a job held ahead completes it; at a
/// stop (capacity 0) the jobs it held go back as if never claimed. A caller that never set a capacity claims what it asks for.
#[test]
fn pg_quick_jobs_are_claimed_ahead_and_put_back_untouched() {
    let Some(s) = Schema::new("pg_quick_jobs_are_claimed_ahead_and_put_back_untouched") else {
        return;
    };
    let mut client = open(&s, OpenMode::Client);
    client.publish_batch("work.a", &vec![b"x".to_vec(); 40]).unwrap();
    let mut count = |state: JobState| {
        let filter = JobFilter { states: vec![state], ..JobFilter::default() };
        client.jobs(&filter).unwrap().len()
    };
    let mut daemon = open(&s, OpenMode::Daemon);
    let first = daemon.claim("work", 2).unwrap();
    assert_eq!(count(JobState::Running), 2, "no capacity set: what was asked");
    daemon.set_capacity("work", 8).unwrap();
    let slow = daemon.claim("work", 1).unwrap();
    assert_eq!(count(JobState::Running), 3, "nothing finished lately: what was asked");
    for job in first.iter().chain(&slow) {
        daemon.complete(job, Outcome::Done).unwrap();
    }
    // Three jobs finished just now: the claim takes three more to hold ahead.
    let next = daemon.claim("work", 2).unwrap();
    for job in &next {
        daemon.complete(job, Outcome::Done).unwrap();
    }
    let third = daemon.claim("work", 2).unwrap();
    assert_eq!((next.len(), third.len()), (2, 2));
    assert_eq!(count(JobState::Done), 3, "the third claim wrote nothing");
    assert_eq!(count(JobState::Running), 5, "the second claim took five");
    // A cancel of the job held ahead (never started) completes it as cancelled.
    let mut reader = open(&s, OpenMode::Client);
    let filter = JobFilter { states: vec![JobState::Running], ..JobFilter::default() };
    let handed: Vec<&str> = next.iter().chain(&third).map(|j| j.id.as_str()).collect();
    let held = reader.jobs(&filter).unwrap().into_iter().find(|r| !handed.contains(&r.id.as_str()));
    let held = held.expect("a job held ahead").id;
    assert!(reader.cancel_everywhere(&held).unwrap());
    let mut poll = mio::Poll::new().unwrap();
    daemon.attach(poll.registry(), mio::Token(3)).unwrap();
    wait_woken(&mut *daemon, &mut poll, Instant::now() + Duration::from_secs(10), |d| {
        assert_eq!(d.take_cancels(), Vec::<String>::new(), "not the loop's to cancel");
        d.flush().unwrap();
        reader.job(&held).unwrap().state == JobState::Cancelled
    });
    assert_eq!(count(JobState::Done), 5);
    daemon.set_capacity("work", 0).unwrap();
    assert_eq!(count(JobState::Running), 2, "only the jobs handed out stay leased");
    let mut other = open(&s, OpenMode::Daemon);
    let rest = other.claim("work", 100).unwrap();
    assert_eq!(rest.len(), 32);
    assert!(rest.iter().all(|j| j.attempt == 1), "a job put back was never attempted");
}
