//! Unit tests of the config: parsing, resolution, and errors that name the line and field.

use super::*;

const GOOD: &str = r#"
[queue]
path = "q.db"

[[task]]
name = "echo"
routing_keys = ["echo.#"]
command = ["cat"]
max_workers = 2
timeout = "1.5s"

[[task]]
name = "ll"
routing_keys = ["ll.*"]
command = ["worker"]
work_model = "longlived"
min_workers = 1
max_workers = 3
env = { A = "b" }
"#;

#[test]
fn parses_and_resolves() {
    let c = Config::parse(Path::new("/etc/p/x.toml"), GOOD).unwrap();
    assert_eq!(c.queue.path, Path::new("/etc/p/q.db"));
    assert_eq!(c.daemon.control_socket, Path::new("/etc/p/q.db.sock"));
    assert_eq!(c.tasks[0].timeout, Some(Duration::from_millis(1500)));
    assert_eq!(c.tasks[1].work_model, WorkModel::Longlived);
    assert_eq!(c.tasks[1].backoff().delay(1), Duration::from_secs(1));
    assert_eq!(c.tasks[1].backoff().delay(3), Duration::from_secs(4));
}

fn error_of(text: &str) -> (Option<usize>, Option<String>, String) {
    match Config::parse(Path::new("/x.toml"), text) {
        Err(Error::Config { line, field, message, .. }) => (line, field, message),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn errors_name_line_and_field() {
    let bad = GOOD.replace("max_workers = 3", "max_workers = 0");
    let (line, field, _) = error_of(&bad);
    assert_eq!(field.as_deref(), Some("task[1].max_workers"));
    assert_eq!(line, Some(bad.lines().position(|l| l.contains("max_workers = 0")).unwrap() + 1));

    let bad = GOOD.replace("timeout = \"1.5s\"", "timeout = \"soon\"");
    let (line, field, _) = error_of(&bad);
    assert_eq!(field.as_deref(), Some("task[0].timeout"));
    assert_eq!(line, Some(bad.lines().position(|l| l.contains("soon")).unwrap() + 1));

    let bad = GOOD.replace("max_workers = 2", "max_wrkers = 2");
    let (line, field, msg) = error_of(&bad);
    assert_eq!(line, Some(bad.lines().position(|l| l.contains("max_wrkers")).unwrap() + 1));
    assert_eq!(field.as_deref(), Some("task[0].max_wrkers"));
    assert!(msg.contains("unknown field"), "{msg}");

    let bad = GOOD.replace("\"ll.*\"", "\"ll.\"");
    let (_, field, _) = error_of(&bad);
    assert_eq!(field.as_deref(), Some("task[1].routing_keys"));

    let (line, _, _) = error_of("[queue\npath = 1");
    assert_eq!(line, Some(1));
    let (_, field, _) = error_of("[queue]\npath = \"q\"\n");
    assert_eq!(field.as_deref(), Some("task"));
}

#[test]
fn amqp_history_defaults_beside_the_socket_and_is_amqp_only() {
    let amqp = GOOD.replace("path = \"q.db\"", "backend = \"amqp\"\nurl = \"amqp://h\"");
    let with_socket = format!("[daemon]\ncontrol_socket = \"/run/p/d1.sock\"\n{amqp}");
    let c = Config::parse(Path::new("/etc/p/x.toml"), &with_socket).unwrap();
    assert_eq!(c.queue.path, Path::new("/run/p/d1.history.db"));
    assert!(c.queue.events, "events are on by default");
    let named = amqp
        .replace("url = \"amqp://h\"", "url = \"amqp://h\"\nhistory = \"h.db\"\nevents = false");
    let c = Config::parse(Path::new("/etc/p/x.toml"), &named).unwrap();
    assert_eq!((c.queue.path.as_path(), c.queue.events), (Path::new("/etc/p/h.db"), false));
    let sqlite = GOOD.replace("path = \"q.db\"", "path = \"q.db\"\nhistory = \"h.db\"");
    let (_, field, msg) = error_of(&sqlite);
    assert_eq!(field.as_deref(), Some("queue.history"));
    assert!(msg.contains("amqp"), "{msg}");
}

#[test]
fn amqp_queue_type_defaults_to_quorum_and_names_bad_values() {
    let c = Config::parse(Path::new("/x.toml"), GOOD).unwrap();
    assert_eq!(c.queue.queue_type, AmqpQueueType::Quorum);
    let classic = GOOD.replace("path = \"q.db\"", "path = \"q.db\"\nqueue_type = \"classic\"");
    let c = Config::parse(Path::new("/x.toml"), &classic).unwrap();
    assert_eq!(c.queue.queue_type, AmqpQueueType::Classic);
    let bad = GOOD.replace("path = \"q.db\"", "path = \"q.db\"\nqueue_type = \"fast\"");
    let (line, field, msg) = error_of(&bad);
    assert_eq!(line, Some(bad.lines().position(|l| l.contains("fast")).unwrap() + 1));
    assert_eq!(field.as_deref(), Some("queue.queue_type"));
    assert!(msg.contains("quorum") && msg.contains("classic"), "{msg}");
}

/// `[queue] priorities` is for the amqp backend with classic queues: refused with quorum
/// queues (RabbitMQ 3.10 has no priorities there) and on other backends, naming the field.
#[test]
fn amqp_priorities_need_classic_queues() {
    let amqp = |extra: &str| {
        GOOD.replace("path = \"q.db\"", &format!("backend = \"amqp\"\nurl = \"amqp://h\"\n{extra}"))
    };
    let c = Config::parse(Path::new("/x.toml"), &amqp("")).unwrap();
    assert!(!c.queue.priorities);
    let ok = amqp("queue_type = \"classic\"\npriorities = true");
    assert!(Config::parse(Path::new("/x.toml"), &ok).unwrap().queue.priorities);
    let (_, field, msg) = error_of(&amqp("priorities = true"));
    assert_eq!(field.as_deref(), Some("queue.priorities"));
    assert!(msg.contains("classic") && msg.contains("quorum"), "{msg}");
    let sqlite = GOOD.replace("path = \"q.db\"", "path = \"q.db\"\npriorities = true");
    let (_, field, msg) = error_of(&sqlite);
    assert_eq!(field.as_deref(), Some("queue.priorities"));
    assert!(msg.contains("amqp"), "{msg}");
}

#[test]
fn durations_use_the_house_grammar() {
    let with = |v: &str| GOOD.replace("timeout = \"1.5s\"", &format!("timeout = {v}"));
    let t = |v: &str| Config::parse(Path::new("/x.toml"), &with(v)).map(|c| c.tasks[0].timeout);
    assert_eq!(t("\"250ms\"").unwrap(), Some(Duration::from_millis(250)));
    assert_eq!(t("\"2m\"").unwrap(), Some(Duration::from_secs(120)));
    assert_eq!(t("\"1d\"").unwrap(), Some(Duration::from_secs(86_400)));
    assert_eq!(t("3").unwrap(), Some(Duration::from_secs(3)));
    assert_eq!(t("0.5").unwrap(), Some(Duration::from_millis(500)));
    for bad in ["\"-1s\"", "\"1y\"", "\"NaN\"", "-2"] {
        assert!(t(bad).is_err(), "{bad} accepted");
    }
}

/// The backoff pair has the house names; the old names still work (deprecated).
#[test]
fn backoff_names_new_and_deprecated() {
    let new = GOOD.replace(
        "max_workers = 2",
        "max_workers = 2\nbackoff_initial = \"2s\"\nbackoff_max = \"8s\"",
    );
    let old = GOOD.replace(
        "max_workers = 2",
        "max_workers = 2\nretry_backoff = \"2s\"\nretry_backoff_max = \"8s\"",
    );
    for text in [new, old] {
        let c = Config::parse(Path::new("/x.toml"), &text).unwrap();
        assert_eq!(c.tasks[0].backoff_initial, Duration::from_secs(2));
        assert_eq!(c.tasks[0].backoff_max, Duration::from_secs(8));
        assert_eq!(c.tasks[0].backoff().delay(5), Duration::from_secs(8));
    }
    let both = GOOD.replace(
        "max_workers = 2",
        "max_workers = 2\nbackoff_initial = \"2s\"\nretry_backoff = \"2s\"",
    );
    assert!(Config::parse(Path::new("/x.toml"), &both).is_err(), "one name or the other");
}
