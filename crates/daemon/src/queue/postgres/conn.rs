//! Connections to the database: the URL read (and shown without its password), the schema
//! checked as a plain identifier, TLS when the URL asks for it, the TCP settings that make a
//! dead peer noticed on both sides, errors that name the database, and the backoff after a
//! failure.

use std::time::Duration;

use postgres::{Client, NoTls};
use procyard_core::Backoff;

use crate::{Error, Result};

/// How long a connection attempt may take before it fails.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Reconnect and retry delays: 100 ms, doubling, at most 5 s, with jitter so that daemons
/// cut off together do not come back in step.
pub(super) const BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).with_jitter();

/// The server-side settings of a daemon's session connection, so that the server notices a
/// cut-off machine within seconds and drops its session (and with it the daemon's lock):
/// keepalive probes after 1 s idle, every 1 s, 3 lost ones end the session; unacknowledged
/// data ends it after 3 s.
const SESSION_OPTIONS: &str = "-c tcp_keepalives_idle=1 -c tcp_keepalives_interval=1 \
     -c tcp_keepalives_count=3 -c tcp_user_timeout=3000";

/// The daemon's work connection (claims, outcomes, attempts) commits without waiting for the
/// server's WAL flush, as the SQLite queue runs with `synchronous = NORMAL`: a commit costs a
/// round trip, not an fsync. Only a crash of the database server itself can lose the last
/// fraction of a second of them, and then a job recorded done runs again (at least once); no
/// job is lost, and publishes (client connections) stay durable at commit.
const WORK_OPTIONS: &str = "-c synchronous_commit=off";

/// Which connection, for `application_name` and its settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// The daemon's session: holds its lock, listens for jobs.
    Session,
    /// The daemon's work connection: claims and outcomes.
    Work,
    /// A command-line client.
    Client,
}

/// A database and schema: how to connect, and how to name them in messages.
#[derive(Clone, Debug)]
pub(super) struct Target {
    config: postgres::Config,
    /// The URL without its password.
    pub(super) shown: String,
    /// The schema (a checked identifier: safe to write into SQL).
    pub(super) schema: String,
    /// TLS, when the URL asks for it.
    tls: Option<super::tls::Tls>,
}

impl Target {
    /// Reads `url` and checks `schema`.
    pub(super) fn new(url: &str, schema: &str) -> Result<Target> {
        let shown = redact_url(url);
        let bad = |e: BoxError| Error::Postgres {
            action: "read the url of",
            target: format!("{shown} (schema {schema})"),
            source: e,
        };
        check_schema(schema).map_err(|m| bad(m.into()))?;
        let (driver_url, tls) = super::tls::split_url(url);
        let config: postgres::Config =
            driver_url.parse().map_err(|e: postgres::Error| bad(e.into()))?;
        Ok(Target { config, shown, schema: schema.to_owned(), tls })
    }

    /// An error while doing `action` on this database.
    pub(super) fn err(&self, action: &'static str, source: impl Into<BoxError>) -> Error {
        Error::Postgres {
            action,
            target: format!("{} (schema {})", self.shown, self.schema),
            source: source.into(),
        }
    }

    /// A new connection with the schema first on its search path.
    pub(super) fn connect(&self, role: Role, daemon: &str) -> Result<Client> {
        let mut config = self.config.clone();
        let mut options = config.get_options().map(str::to_owned).unwrap_or_default();
        options.push_str(&format!(" -c search_path={}", self.schema));
        match role {
            Role::Session => {
                options.push(' ');
                options.push_str(SESSION_OPTIONS);
            }
            // Claims and outcomes: see WORK_OPTIONS.
            Role::Work => {
                options.push(' ');
                options.push_str(WORK_OPTIONS);
            }
            Role::Client => {}
        }
        let name = match role {
            Role::Session => format!("procyard-daemon {daemon} session"),
            Role::Work => format!("procyard-daemon {daemon}"),
            Role::Client => "procyard-daemon client".to_owned(),
        };
        config
            .options(options.trim())
            .application_name(&name)
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(1))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(5));
        // TLS when the URL asks for it (`tls.rs`); otherwise plain TCP.
        if let Some(tls) = &self.tls {
            let connector = tls.connector().map_err(|e| self.err("set up TLS for", e))?;
            return config.connect(connector).map_err(|e| self.err("connect with TLS to", e));
        }
        config.connect(NoTls).map_err(|e| self.err("connect to", e))
    }

    /// The key space of this schema's advisory locks (the first of their two keys).
    pub(super) fn lock_space(&self) -> i32 {
        lock_space(&self.schema)
    }

    /// The channel publishes notify on.
    pub(super) fn channel(&self) -> String {
        format!("{}_jobs", self.schema)
    }

    /// The channel `cancel` asks every daemon on (payload: the job id).
    pub(super) fn cancel_channel(&self) -> String {
        format!("{}_cancel", self.schema)
    }

    /// The channel told when a schedule's row changed (trigger, pause, resume, a new cadence):
    /// every daemon reads the schedules again.
    pub(super) fn schedules_channel(&self) -> String {
        format!("{}_schedules", self.schema)
    }

    /// The channel daemons notify when jobs or attempts end (`wait`, `logs -f`).
    pub(super) fn ended_channel(&self) -> String {
        format!("{}_ended", self.schema)
    }
}

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A stable key for `schema`'s advisory locks (FNV-1a), positive so it reads the same in
/// `pg_locks.classid`.
pub(super) fn lock_space(schema: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in "procyard:".bytes().chain(schema.bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (h & 0x7fff_ffff) as i32
}

/// A schema name must be a plain lower-case identifier (it is written into SQL unquoted).
pub(super) fn check_schema(schema: &str) -> std::result::Result<(), String> {
    let mut chars = schema.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && schema.len() <= 63 && !schema.starts_with("pg_") {
        Ok(())
    } else {
        Err(format!(
            "schema {schema:?} must be 1 to 63 lower-case letters, digits and underscores, \
             not starting with a digit or pg_"
        ))
    }
}

/// `url` without the password.
pub(super) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    match rest.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_plain_identifiers() {
        for good in ["procyard", "_x", "cluster_2"] {
            assert!(check_schema(good).is_ok(), "{good}");
        }
        for bad in ["", "2x", "Upper", "a-b", "x; DROP", "pg_catalog", &"x".repeat(64)] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_shown_without_passwords_and_bad_ones_are_named() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u@h:5432/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        let e = Target::new("postgres://u:pw@h:notaport/db", "procyard").unwrap_err();
        let msg = e.chain().to_string();
        assert!(msg.contains("postgres://u@h:notaport/db") && !msg.contains("pw"), "{msg}");
        assert!(Target::new("postgres://h/db", "Bad").is_err());
    }

    #[test]
    fn lock_spaces_differ_per_schema_and_are_positive() {
        assert_ne!(lock_space("a"), lock_space("b"));
        assert!(lock_space("procyard") > 0 && lock_space("zzzz") > 0);
    }
}
