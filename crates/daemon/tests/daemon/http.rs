//! The HTTP face end to end (issue 18): `/metrics` checked by Prometheus' own `promtool`, the
//! JSON API against a real daemon (the same JSON as the command line's `--json`), and its
//! security: a non-loopback listener without a token refuses to start, a missing token is
//! 401, a cross-origin or token-less POST is 403.

use std::io::{Read, Write};
use std::time::Duration;

use procyard_daemon::queue::JobState;

use crate::sandbox::Sandbox;
use crate::web::{self, Http};

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn tasks() -> String {
    r#"[[task]]
name = "ok"
routing_keys = ["ok.#"]
command = ["sh", "-c", "echo \"got $(cat)\"; echo note >&2"]
max_workers = 2

[[task]]
name = "bad"
routing_keys = ["bad.#"]
command = ["sh", "-c", "echo failing; test -e {dir}/fixed || exit 3"]
max_attempts = 1
"#
    .into()
}

fn job_state(http: &Http, id: &str) -> String {
    http.get(&format!("/api/jobs/{id}")).json()["state"].as_str().unwrap_or_default().to_owned()
}

/// Where promtool is: Debian's `prometheus` package (`cargo xtask test` installs it).
fn promtool() -> &'static str {
    let path = "/usr/bin/promtool";
    assert!(
        std::path::Path::new(path).exists(),
        "promtool is missing: `cargo xtask test` installs it (Debian's prometheus package)"
    );
    path
}

/// `/metrics` passes `promtool check metrics` and counts what the jobs did, per task; with
/// `Accept: application/openmetrics-text` it is OpenMetrics (ending in `# EOF`).
#[test]
fn daemon_http_metrics_pass_promtool_and_count_jobs() {
    let (mut sb, base) = web::sandbox(&tasks(), "");
    sb.start();
    let http = Http::new(&base);
    sb.publish("ok.a", b"1");
    sb.publish("ok.b", b"2");
    sb.publish("bad.c", b"3");
    // The queue's depths in /metrics are at most a second old (one read shared by scrapers).
    sb.wait_until("3 jobs ended", SECS(30), |_| {
        let m = http.get("/metrics").body;
        m.contains("procyard_jobs_done_total{task=\"ok\"} 2")
            && m.contains("procyard_jobs_dead_lettered_total{task=\"bad\"} 1")
            && m.contains("procyard_jobs_dead{task=\"bad\"} 1")
            && m.contains("procyard_jobs_ready{task=\"ok\"} 0")
    });
    let reply = http.get("/metrics");
    assert_eq!(reply.status, 200);
    assert!(reply.content_type.starts_with("text/plain; version=0.0.4"), "{}", reply.content_type);
    let m = reply.body;
    for line in [
        "procyard_jobs_claimed_total{task=\"ok\"} 2",
        "procyard_jobs_published_total{task=\"ok\"} 2",
        "procyard_jobs_published_total{task=\"bad\"} 1",
        "procyard_jobs_started_total{task=\"ok\"} 2",
        "procyard_jobs_failed_total{task=\"bad\"} 1",
        "procyard_job_duration_seconds_count{task=\"ok\"} 2",
        "procyard_job_start_latency_seconds_count{task=\"bad\"} 1",
        "procyard_jobs_ready{task=\"ok\"} 0",
        "procyard_jobs_dead{task=\"bad\"} 1",
        "procyard_queue_healthy{backend=\"sqlite\"} 1",
        "procyard_task_crash_loop{task=\"ok\"} 0",
        "procyard_reloads_total{result=\"failed\"} 0",
        "procyard_build_info{version=",
    ] {
        assert!(m.contains(line), "missing {line:?} in\n{m}");
    }
    let rss: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("procyard_resident_memory_bytes "))
        .and_then(|v| v.parse().ok())
        .expect("rss");
    assert!(rss > 1e6, "RSS {rss}");

    let mut check = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    check.stdin.take().expect("stdin").write_all(m.as_bytes()).expect("write");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{m}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let om =
        http.get_with("/metrics", &[("accept", "application/openmetrics-text; version=1.0.0")]);
    assert!(om.content_type.starts_with("application/openmetrics-text"), "{}", om.content_type);
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    assert!(om.body.contains("# TYPE procyard_jobs_done counter"));
}

/// The JSON API against a real daemon: publish, read the record (the same JSON as `job
/// --json`) and its output, list and page, dead letters and requeue, pause and resume, scale,
/// cancel; bad input gets typed errors with the fitting status.
#[test]
fn daemon_http_api_drives_jobs_and_tasks() {
    let (mut sb, base) = web::sandbox(&tasks(), "");
    sb.start();
    let http = Http::with_csrf(&base);

    let r = http.post("/api/jobs", r#"{"routing_key": "ok.web", "payload": "hello"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let published: procyard_daemon::client::Published =
        serde_json::from_str(&r.body).expect("shape");
    assert_eq!(published.routing_key, "ok.web");
    let id = published.jobs[0].clone();
    sb.wait_until("the job done", SECS(30), |_| job_state(&http, &id) == "done");
    let api: serde_json::Value = http.get(&format!("/api/jobs/{id}")).json();
    let cli = sb.cli(&["job", &id, "--json"]);
    let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("cli json");
    assert_eq!(api, cli, "the API and `job --json` print the same record");
    let logs = http.get(&format!("/api/jobs/{id}/logs"));
    assert_eq!((logs.status, logs.body.as_str()), (200, "got hello\n"));
    assert_eq!(http.get(&format!("/api/jobs/{id}/logs?stream=stderr")).body, "note\n");
    assert_eq!(http.get(&format!("/api/jobs/{id}/logs?attempt=7")).status, 404);

    // A dead letter, requeued once the cause is fixed.
    let r = http.post("/api/jobs", r#"{"routing_key": "bad.web", "payload": "x"}"#);
    let dead_id = r.json()["jobs"][0].as_str().expect("id").to_owned();
    sb.wait_until("dead-lettered", SECS(30), |_| job_state(&http, &dead_id) == "dead");
    let dead = http.get("/api/dead").json();
    assert_eq!(dead[0]["id"], dead_id.as_str());
    let listed = http.get("/api/jobs?state=dead,failed").json();
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1));
    std::fs::write(sb.path().join("fixed"), "").expect("fix");
    let r = http.post("/api/dead/requeue", &format!(r#"{{"ids": ["{dead_id}"]}}"#));
    assert_eq!((r.status, r.json()["count"].as_u64()), (200, Some(1)), "{}", r.body);
    sb.wait_until("requeued job done", SECS(30), |_| job_state(&http, &dead_id) == "done");

    // Paging, newest first.
    let page = http.get("/api/jobs?limit=1").json();
    assert_eq!(page["jobs"][0]["id"], dead_id.as_str());
    assert_eq!(page["more"], true);
    let page = http.get("/api/jobs?limit=1&offset=1").json();
    assert_eq!(
        (page["jobs"][0]["id"].as_str(), page["more"].as_bool()),
        (Some(id.as_str()), Some(false))
    );

    // Pause: a job waits; cancel it; resume and scale.
    let r = http.post("/api/tasks/ok/pause", "");
    assert_eq!(r.status, 200, "{}", r.body);
    sb.wait_until("paused in status", SECS(10), |_| {
        http.get("/api/status").json()["groups"][1]["paused"] == true
    });
    let waiting = http.post("/api/jobs", r#"{"routing_key": "ok.later"}"#).json()["jobs"][0]
        .as_str()
        .expect("id")
        .to_owned();
    let also = http.post("/api/jobs", r#"{"routing_key": "ok.later"}"#).json()["jobs"][0]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(job_state(&http, &waiting), "ready", "a paused task claims nothing");
    let r = http.post(&format!("/api/jobs/{waiting}/cancel"), "");
    assert_eq!((r.status, r.json()["cancelled"].as_str()), (200, Some("waiting")), "{}", r.body);
    assert_eq!(job_state(&http, &waiting), "cancelled");
    let r = http.post(&format!("/api/jobs/{waiting}/cancel"), "");
    assert_eq!((r.status, r.kind()), (409, "finished".into()));
    let r = http.post("/api/tasks/ok/scale", r#"{"max_workers": 5}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(http.post("/api/tasks/ok/resume", "").status == 200);
    sb.wait_until("the held job done", SECS(30), |_| job_state(&http, &also) == "done");
    let status = sb.status();
    let ok = status.groups.iter().find(|g| g.name == "ok").expect("ok");
    assert_eq!((ok.max_workers, ok.paused), (5, false));

    // Bad input: typed JSON errors.
    let r = http.get("/api/jobs/not-an-id");
    assert_eq!((r.status, r.kind()), (400, "bad_request".into()));
    assert!(r.json()["error"]["message"].as_str().unwrap_or_default().contains("not a job id"));
    let r = http.get("/api/jobs/01900000-0000-7000-8000-000000000000");
    assert_eq!((r.status, r.kind()), (404, "not_found".into()));
    assert_eq!(http.get("/api/jobs?state=sleepy").status, 400);
    assert_eq!(http.get("/api/jobs?limit=lots").status, 400);
    let r = http.post("/api/tasks/nope/pause", "");
    assert_eq!((r.status, r.kind()), (404, "not_found".into()));
    let r = http.post("/api/tasks/ok/scale", r#"{"max_workers": 0}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = http.post("/api/jobs", "{not json");
    assert_eq!((r.status, r.kind()), (400, "bad_request".into()));
    let r = http.post("/api/jobs", r#"{"routing_key": "nobody.home"}"#);
    assert_eq!((r.status, r.kind()), (422, "unroutable".into()));
    let r = http.post("/api/dead/requeue", r#"{}"#);
    assert_eq!(r.status, 400);
    assert_eq!(http.get("/api/nothing").status, 404);
    assert_eq!(sb.status().state, procyard_daemon::status::DaemonState::Running);
    let _ = JobState::Done;
}

/// `GET /api/schedules` is what `schedules --json` prints (the same struct), pauses included;
/// with no `[[schedule]]` it is an empty list.
#[test]
fn daemon_http_schedules_as_the_cli_lists_them() {
    let schedule = "[[schedule]]\nname = \"nightly\"\ncron = \"0 3 * * *\"\nrouting_key = \"ok.nightly\"\npayload = \"n\"\n";
    let (mut sb, base) = web::sandbox(&format!("{}\n{schedule}", tasks()), "");
    sb.start();
    let http = Http::new(&base);
    let cli = |sb: &Sandbox| -> serde_json::Value {
        let out = sb.cli(&["schedules", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("schedules --json")
    };
    let r = http.get("/api/schedules");
    assert_eq!(r.status, 200, "{}", r.body);
    let listed = r.json();
    assert_eq!(listed, cli(&sb));
    assert_eq!(listed[0]["name"], "nightly");
    assert_eq!(listed[0]["spec"], "cron 0 3 * * * in UTC");
    assert!(listed[0]["next_ms"].as_i64().is_some() && listed[0]["last_job"].is_null());

    // A trigger and a pause (through the command line) show up in the API.
    let out = sb.cli(&["schedule", "trigger", "nightly"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(sb.cli(&["schedule", "pause", "nightly"]).status.success());
    let listed = http.get("/api/schedules").json();
    assert_eq!(listed, cli(&sb));
    assert_eq!(
        (listed[0]["last_job"].as_str(), &listed[0]["paused"]),
        (Some(id.as_str()), &true.into())
    );
    assert!(listed[0]["next_ms"].is_null(), "a paused schedule has no next time");
    drop(sb);

    let (mut sb, base) = web::sandbox(&tasks(), "");
    sb.start();
    assert_eq!(Http::new(&base).get("/api/schedules").json(), serde_json::json!([]));
}

/// One event stream: an event at once, and another after a job ends (coalesced, pushed).
#[test]
fn daemon_http_events_push_status() {
    let (mut sb, base) = web::sandbox(&tasks(), "");
    sb.start();
    let addr = base.trim_start_matches("http://").to_owned();
    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(SECS(30))).expect("timeout");
    write!(s, "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
        .expect("request");
    let mut seen = String::new();
    let mut buf = [0u8; 65536];
    let mut read_until = |s: &mut std::net::TcpStream, seen: &mut String, what: &str| {
        while !seen.contains(what) {
            let n = s.read(&mut buf).expect("read events");
            assert!(n > 0, "stream closed: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    read_until(&mut s, &mut seen, "event: status");
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"));
    seen.clear();
    sb.publish("ok.sse", b"x");
    read_until(&mut s, &mut seen, "\"done\":1");
}

fn raw_request(addr: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(SECS(30))).expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Security: a listen address off loopback without a token does not start; with a token,
/// a request without it is 401 and with it 200; a cross-origin POST is 403 even with the
/// page's CSRF token; a POST without either token is 403; a foreign `Host` is 403.
#[test]
fn daemon_http_security_tokens_and_origins() {
    let sb = Sandbox::new(&tasks());
    let text = std::fs::read_to_string(&sb.config).expect("config");
    std::fs::write(&sb.config, format!("[http]\nlisten = \"0.0.0.0:9\"\n{text}")).expect("config");
    for verb in ["run", "check-config"] {
        let out = sb.cli(&[verb]);
        assert_eq!(out.status.code(), Some(1), "{verb} refuses");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("http.listen") && err.contains("token"), "{err}");
    }
    drop(sb);

    let (mut sb, base) = web::sandbox(&tasks(), "token = \"s3cret-token\"");
    sb.start();
    let anon = Http::new(&base);
    let r = anon.get("/api/status");
    assert_eq!((r.status, r.kind()), (401, "unauthorized".into()));
    assert_eq!(anon.get("/metrics").status, 401);
    assert_eq!(anon.get("/").status, 401);
    assert_eq!(anon.post("/api/tasks/ok/pause", "").status, 401);
    let mut authed = Http::new(&base);
    authed.headers.push(("Authorization".into(), "Bearer s3cret-token".into()));
    assert_eq!(authed.get("/api/status").status, 200);
    let mut wrong = Http::new(&base);
    wrong.headers.push(("Authorization".into(), "Bearer s3cret-tokeN".into()));
    assert_eq!(wrong.get("/api/status").status, 401);
    let r = authed.post("/api/tasks/ok/pause", "");
    assert_eq!(r.status, 200, "{}", r.body);
    drop(sb);

    let (mut sb, base) = web::sandbox(&tasks(), "");
    sb.start();
    let page = Http::with_csrf(&base);
    let r = page.post_with("/api/tasks/ok/pause", "", &[("Origin", "http://evil.example")]);
    assert_eq!((r.status, r.kind()), (403, "cross_origin".into()));
    let r = page.post_with("/api/tasks/ok/pause", "", &[("Sec-Fetch-Site", "cross-site")]);
    assert_eq!(r.status, 403);
    let r = Http::new(&base).post("/api/tasks/ok/pause", "");
    assert_eq!((r.status, r.kind()), (403, "csrf".into()));
    let same_origin = page.post_with("/api/tasks/ok/pause", "", &[("Origin", base.as_str())]);
    assert_eq!(same_origin.status, 200, "{}", same_origin.body);
    let addr = base.trim_start_matches("http://");
    let answer = raw_request(
        addr,
        "GET /api/status HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(sb.status().groups.iter().any(|g| g.paused), "only the same-origin pause applied");
}

/// Payloads stay hidden unless `show_payloads = true`; then the API and the page show them.
#[test]
fn daemon_http_payloads_hidden_unless_shown() {
    let (mut sb, base) = web::sandbox(&tasks(), "");
    sb.start();
    let http = Http::new(&base);
    let id = sb.publish("ok.p", b"secret stuff").remove(0);
    let r = http.get(&format!("/api/jobs/{id}/payload"));
    assert_eq!((r.status, r.kind()), (403, "payloads_hidden".into()));
    let record = http.get(&format!("/api/jobs/{id}")).json();
    assert!(record.get("payload").is_none() && record["payload_len"] == 12, "{record}");
    drop(sb);

    let (mut sb, base) = web::sandbox(&tasks(), "show_payloads = true");
    sb.start();
    let http = Http::new(&base);
    let id = sb.publish("ok.p", b"secret stuff").remove(0);
    let r = http.get(&format!("/api/jobs/{id}/payload"));
    assert_eq!((r.status, r.body.as_str()), (200, "secret stuff"));
    assert!(http.get("/").body.contains("name=\"payloads\" content=\"shown\""));
    let r = http.get("/api/jobs/01900000-0000-7000-8000-000000000000/payload");
    assert_eq!(r.status, 404);
}

/// A running job's output can be followed live: `/api/jobs/ID/live` shows what it printed
/// so far while it runs, and the record has all of it once it ends.
#[test]
fn daemon_http_live_output_of_a_running_job() {
    let tasks = r#"[[task]]
name = "slow"
routing_keys = ["slow.#"]
command = ["sh", "-c", "echo first; echo oops >&2; while [ ! -e {dir}/go ]; do sleep 0.05; done; echo second"]
"#;
    let (mut sb, base) = web::sandbox(tasks, "");
    sb.start();
    let http = Http::new(&base);
    let id = sb.publish("slow.x", b"").remove(0);
    sb.wait_until("its output so far", SECS(30), |_| {
        let live = http.get(&format!("/api/jobs/{id}/live")).json();
        live["running"] == true
            && live["stdout"]["bytes"] == "first\n"
            && live["stderr"]["bytes"] == "oops\n"
    });
    std::fs::write(sb.path().join("go"), "").expect("go");
    sb.wait_until("the job done", SECS(30), |_| job_state(&http, &id) == "done");
    assert_eq!(http.get(&format!("/api/jobs/{id}/logs")).body, "first\nsecond\n");
    sb.wait_until("no longer running", SECS(10), |_| {
        http.get(&format!("/api/jobs/{id}/live")).json()["running"] == false
    });
    assert_eq!(http.get("/api/jobs/nope/live").status, 400);
}

/// The same pause, resume and scale from the command line.
#[test]
fn daemon_cli_pause_resume_scale() {
    let mut sb = Sandbox::new(&tasks());
    sb.start();
    let out = sb.cli(&["pause", "ok"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "task ok paused\n");
    let id = sb.publish("ok.x", b"y").remove(0);
    let g = |sb: &Sandbox| sb.status().groups.into_iter().find(|g| g.name == "ok").expect("ok");
    assert!(g(&sb).paused);
    let out = sb.cli(&["scale", "ok", "6"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(g(&sb).max_workers, 6);
    let out = sb.cli(&["scale", "nope", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no task named \"nope\""));
    assert_eq!(sb.cli(&["scale", "ok", "many"]).status.code(), Some(64), "a usage error");
    let mut client = procyard_daemon::Client::new(sb.load_config());
    assert_eq!(client.job(&id).expect("job").state, JobState::Ready, "paused: not claimed");
    assert!(sb.cli(&["resume", "ok"]).status.success());
    sb.wait_until("the job done", SECS(30), |_| {
        client.job(&id).map(|j| j.state == JobState::Done).unwrap_or(false)
    });
}
