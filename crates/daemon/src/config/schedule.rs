//! The scheduling parts of a config: `[daemon] timezone` (the zone of local `--at` times),
//! `[[schedule]]` tables (periodic jobs) and each task's limits (`rate_limit`,
//! `concurrency_key`, `max_per_key`), validated with errors naming the field.
//!
//! ```toml
//! [[schedule]]
//! name = "nightly-report"
//! cron = "0 3 * * *"          # 5 fields, or 6 with seconds first; or: every = "30s"
//! timezone = "Europe/Berlin"  # IANA name; default UTC
//! routing_key = "reports.nightly"
//! payload = "full"
//! missed = "skip"             # or "once" or "all"
//! ```

use serde::Deserialize;
use toml::Spanned;

use super::validate::Validator;
use super::{DurationValue, RawTask, TaskConfig};
use crate::Result;
use crate::limits::{ConcurrencyKey, RateLimit, TaskLimits};
use crate::schedule::{Cadence, Missed, ScheduleConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    name: Spanned<String>,
    cron: Option<Spanned<String>>,
    every: Option<Spanned<DurationValue>>,
    timezone: Option<Spanned<String>>,
    routing_key: Spanned<String>,
    #[serde(default)]
    payload: String,
    missed: Option<Spanned<String>>,
}

impl Validator<'_> {
    /// `[queue] priorities`: for the amqp backend with classic queues only (quorum queues on
    /// RabbitMQ 3.10 have no priorities: refused here rather than ignored).
    pub(super) fn priorities(&self, q: &super::RawQueue) -> Result<bool> {
        let Some(p) = &q.priorities else { return Ok(false) };
        if !*p.get_ref() {
            return Ok(false);
        }
        if q.backend != crate::queue::BackendKind::Amqp {
            let why =
                "is for the amqp backend (the sqlite and postgres queues always order by priority)";
            return Err(self.err(Some(p.span()), "queue.priorities", why));
        }
        if q.queue_type != crate::queue::AmqpQueueType::Classic {
            let why =
                "needs queue_type = \"classic\": quorum queues on RabbitMQ 3.10 have no priorities";
            return Err(self.err(Some(p.span()), "queue.priorities", why));
        }
        Ok(true)
    }

    /// A time zone name (default UTC), refused with the field named when no zone has it.
    pub(super) fn timezone(&self, v: &Option<Spanned<String>>, field: &str) -> Result<String> {
        let Some(v) = v else { return Ok("UTC".to_owned()) };
        match crate::schedule::zone(v.get_ref()) {
            Ok(_) => Ok(v.get_ref().clone()),
            Err(message) => Err(self.err(Some(v.span()), field, message)),
        }
    }

    /// Task `i`'s limits: a rate of at least 1, a key source, `max_per_key` only with a key.
    pub(super) fn task_limits(&self, t: &RawTask, i: usize, name: &str) -> Result<TaskLimits> {
        let f = |field: &str| format!("task[{i}].{field}");
        let rate = match &t.rate_limit {
            None => None,
            Some(r) => Some(
                RateLimit::parse(r.get_ref())
                    .map_err(|m| self.err(Some(r.span()), f("rate_limit"), m))?,
            ),
        };
        let key = match &t.concurrency_key {
            None => None,
            Some(k) => Some(
                ConcurrencyKey::parse(k.get_ref())
                    .map_err(|m| self.err(Some(k.span()), f("concurrency_key"), m))?,
            ),
        };
        let max_per_key = match (&t.max_per_key, &key) {
            (Some(m), None) => {
                return Err(self.err(
                    Some(m.span()),
                    f("max_per_key"),
                    "needs concurrency_key = \"header:NAME\" or \"payload-json:/pointer\"",
                ));
            }
            (m, _) => self.count(m, f("max_per_key"), 1, 1, 1_000_000)? as usize,
        };
        Ok(TaskLimits { task: name.to_owned(), rate, key, max_per_key })
    }

    /// The `[[schedule]]` tables: names unique, one of `cron`/`every`, a known zone, a key
    /// some task is bound to.
    pub(super) fn schedules(
        &self,
        raw: &[Spanned<RawSchedule>],
        tasks: &[TaskConfig],
    ) -> Result<Vec<ScheduleConfig>> {
        let mut out: Vec<ScheduleConfig> = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let span = s.span();
            let s = s.get_ref();
            let f = |name: &str| format!("schedule[{i}].{name}");
            let name = s.name.get_ref().clone();
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(self.err(
                    Some(s.name.span()),
                    f("name"),
                    "must be a non-empty name without spaces",
                ));
            }
            if out.iter().any(|o| o.name == name) {
                return Err(self.err(
                    Some(s.name.span()),
                    f("name"),
                    format!("{name:?} names two schedules"),
                ));
            }
            let timezone = self.timezone(&s.timezone, &f("timezone"))?;
            let (cadence, written) = match (&s.cron, &s.every) {
                (Some(c), None) => match Cadence::cron(c.get_ref()) {
                    Ok(cadence) => (cadence, format!("cron {}", c.get_ref().trim())),
                    Err(message) => return Err(self.err(Some(c.span()), f("cron"), message)),
                },
                (None, Some(e)) => {
                    let d = self.duration(&Some(e.clone()), f("every"), Default::default())?;
                    match Cadence::every(d) {
                        Ok(cadence) => (cadence, format!("every {}ms", d.as_millis())),
                        Err(message) => return Err(self.err(Some(e.span()), f("every"), message)),
                    }
                }
                _ => {
                    return Err(self.err(
                        Some(span),
                        f("cron"),
                        "give exactly one of cron = \"…\" or every = \"…\"",
                    ));
                }
            };
            let key = s.routing_key.get_ref();
            if let Err(e) = crate::routing::validate_key(key) {
                return Err(self.err(Some(s.routing_key.span()), f("routing_key"), e.to_string()));
            }
            if !tasks.iter().any(|t| t.routing_keys.iter().any(|p| crate::routing::matches(p, key)))
            {
                return Err(self.err(
                    Some(s.routing_key.span()),
                    f("routing_key"),
                    format!("no [[task]] is bound to {key:?}: its jobs would go nowhere"),
                ));
            }
            let missed = match &s.missed {
                None => Missed::default(),
                Some(m) => m
                    .get_ref()
                    .parse()
                    .map_err(|message: String| self.err(Some(m.span()), f("missed"), message))?,
            };
            out.push(ScheduleConfig {
                name,
                cadence,
                spec: format!("{written} in {timezone}"),
                timezone,
                routing_key: key.clone(),
                payload: s.payload.clone(),
                missed,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::Config;

    const TASK: &str = "[queue]\npath = \"q.db\"\n[[task]]\nname = \"r\"\nrouting_keys = [\"reports.#\"]\ncommand = [\"true\"]\n";

    fn parse(schedule: &str) -> crate::Result<Config> {
        Config::parse(Path::new("/etc/procyard.toml"), &format!("{TASK}\n[[schedule]]\n{schedule}"))
    }

    #[test]
    fn a_schedule_is_read_with_its_defaults() {
        let c =
            parse("name = \"n\"\ncron = \"0 3 * * *\"\nrouting_key = \"reports.nightly\"").unwrap();
        let s = &c.schedules[0];
        assert_eq!((s.name.as_str(), s.timezone.as_str()), ("n", "UTC"));
        assert_eq!(s.missed, crate::schedule::Missed::Skip);
        assert_eq!(s.spec, "cron 0 3 * * * in UTC");
        let e =
            parse("name = \"e\"\nevery = \"30s\"\nrouting_key = \"reports.x\"\nmissed = \"all\"")
                .unwrap();
        assert_eq!(e.schedules[0].spec, "every 30000ms in UTC");
    }

    /// Bad input is a config error naming the field (and the line).
    #[test]
    fn bad_schedules_name_the_field() {
        let cases = [
            (
                "name = \"n\"\ncron = \"61 * * * *\"\nrouting_key = \"reports.x\"",
                "schedule[0].cron",
            ),
            ("name = \"n\"\ncron = \"* *\"\nrouting_key = \"reports.x\"", "schedule[0].cron"),
            (
                "name = \"n\"\ncron = \"0 3 * * *\"\ntimezone = \"Mars/Base\"\nrouting_key = \"reports.x\"",
                "schedule[0].timezone",
            ),
            ("name = \"n\"\nrouting_key = \"reports.x\"", "schedule[0].cron"),
            ("name = \"n\"\nevery = \"10ms\"\nrouting_key = \"reports.x\"", "schedule[0].every"),
            ("name = \"n\"\nevery = \"1s\"\nrouting_key = \"other.x\"", "schedule[0].routing_key"),
            (
                "name = \"n\"\nevery = \"1s\"\nrouting_key = \"reports.x\"\nmissed = \"never\"",
                "schedule[0].missed",
            ),
        ];
        for (text, field) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text:?}: {e}");
            assert!(e.contains("/etc/procyard.toml:"), "{e}");
        }
        let twice = format!(
            "{TASK}\n[[schedule]]\nname = \"n\"\nevery = \"1s\"\nrouting_key = \"reports.x\"\n\
             [[schedule]]\nname = \"n\"\nevery = \"2s\"\nrouting_key = \"reports.x\"\n"
        );
        let e = Config::parse(Path::new("/c.toml"), &twice).unwrap_err().to_string();
        assert!(e.contains("schedule[1].name"), "{e}");
    }
}
