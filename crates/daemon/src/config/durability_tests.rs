//! Tests of `[queue] durability`: its default, its two values, and the errors a bad value or
//! a backend it does not apply to get.

use std::path::Path;

use super::Config;
use crate::Error;
use crate::queue::Durability;

const BASE: &str = "[queue]\npath = \"q.db\"\n\n[[task]]\nname = \"t\"\nrouting_keys = [\"t\"]\ncommand = [\"true\"]\n";

fn with(line: &str) -> String {
    BASE.replace("path = \"q.db\"", &format!("path = \"q.db\"\n{line}"))
}

fn error_of(text: &str) -> (Option<usize>, Option<String>, String) {
    match Config::parse(Path::new("/x.toml"), text) {
        Err(Error::Config { line, field, message, .. }) => (line, field, message),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn durability_defaults_to_crash_and_reads_power() {
    let c = Config::parse(Path::new("/x.toml"), BASE).unwrap();
    assert_eq!(c.queue.durability, Durability::Crash);
    let c = Config::parse(Path::new("/x.toml"), &with("durability = \"power\"")).unwrap();
    assert_eq!(c.queue.durability, Durability::Power);
    assert_eq!((Durability::Crash.name(), Durability::Power.name()), ("crash", "power"));
}

#[test]
fn a_bad_durability_names_the_field_and_the_choices() {
    let bad = with("durability = \"disk\"");
    let (line, field, message) = error_of(&bad);
    assert_eq!(line, Some(bad.lines().position(|l| l.contains("disk")).unwrap() + 1));
    assert_eq!(field.as_deref(), Some("queue.durability"));
    assert!(message.contains("crash") && message.contains("power"), "{message}");
}

#[test]
fn durability_is_refused_for_a_server_backend() {
    let amqp = with("durability = \"power\"\nbackend = \"amqp\"\nurl = \"amqp://127.0.0.1\"");
    let (_, field, message) = error_of(&amqp);
    assert_eq!(field.as_deref(), Some("queue.durability"));
    assert!(message.contains("sqlite"), "{message}");
}
