//! The PostgreSQL database the postgres tests use: `PROCYARD_PG_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`; each test gets a schema of its own, dropped at
//! the end. With no database the tests print a skip notice and return, except under
//! `CI=true`, where they fail.

#![allow(dead_code)]

use procyard_daemon::queue::{BackendKind, QueueConfig};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A schema of one test's own, dropped (with everything in it) when this goes.
pub struct Schema {
    pub url: String,
    pub name: String,
}

impl Schema {
    /// A fresh schema name on the test database, or `None` (after a notice) when no database
    /// answers and CI is not set.
    pub fn new(test: &str) -> Option<Schema> {
        let url = std::env::var("PROCYARD_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        match postgres::Client::connect(&url, postgres::NoTls) {
            Ok(_) => {}
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("{test}: no PostgreSQL at {url} and CI=true: it is required ({e})")
            }
            Err(e) => {
                eprintln!("SKIP {test}: no PostgreSQL at {url} ({e}); set PROCYARD_PG_URL");
                return None;
            }
        }
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        Some(Schema { url, name })
    }

    /// The `[queue]` section for this schema.
    pub fn config(&self) -> QueueConfig {
        QueueConfig {
            backend: BackendKind::Postgres,
            path: Default::default(),
            url: Some(self.url.clone()),
            exchange: "procyard".into(),
            queue_type: Default::default(),
            schema: self.name.clone(),
            durability: Default::default(),
            events: true,
            priorities: false,
        }
    }

    /// A plain connection to the test database.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect")
    }

    /// The TOML `[queue]` lines for this schema.
    pub fn toml(&self) -> String {
        format!(
            "[queue]\nbackend = \"postgres\"\nurl = \"{}\"\nschema = \"{}\"\n",
            self.url, self.name
        )
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.url, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}
