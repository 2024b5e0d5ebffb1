//! The schedule verbs: `schedules [--json]` and `schedule trigger|pause|resume NAME`, over
//! [`procyard_daemon::Client`]. Each returns the exit status.

use procyard_daemon::Client;

use crate::unable;

pub const LIST_HELP: &str = "Examples:\n  procyard-daemon schedules\n  procyard-daemon schedules --json\n\nTimes are UTC. NEXT is the next due time (in the past when no daemon has fired it yet: one does, as its `missed` policy says); a paused schedule has none.";

pub const ACT_HELP: &str = "Examples:\n  procyard-daemon schedule trigger nightly-report\n  procyard-daemon schedule pause nightly-report\n  procyard-daemon schedule resume nightly-report\n\ntrigger publishes one job now (its due times are unchanged) and prints its id; pause and resume are kept in the queue (the SQLite file or PostgreSQL; on RabbitMQ, the state in <exchange>.scheduler, applied by the daemon that fires the schedules), across restarts. A resumed schedule counts from the resume: the due times it passed while paused are skipped.";

/// What `schedule` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Publish one job of the schedule now.
    Trigger,
    /// Fire nothing until resumed.
    Pause,
    /// Fire again from now on.
    Resume,
}

fn time(ms: Option<i64>) -> String {
    ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.round(jiff::Unit::Second).map_or_else(|_| t.to_string(), |t| t.to_string()))
        .unwrap_or_else(|| "-".into())
}

pub fn list(client: &mut Client, json: bool) -> Result<u8, String> {
    let list = client.schedules().map_err(|e| unable("list the schedules", &e))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?);
        return Ok(0);
    }
    println!("{:<20} {:<22} {:<22} {:<38} CADENCE", "NAME", "NEXT", "LAST RUN", "LAST JOB");
    for s in list {
        let next = if s.paused { "paused".to_owned() } else { time(s.next_ms) };
        println!(
            "{:<20} {:<22} {:<22} {:<38} {}",
            s.name,
            next,
            time(s.last_run_ms),
            s.last_job.as_deref().unwrap_or("-"),
            s.spec
        );
    }
    Ok(0)
}

pub fn act(client: &mut Client, action: Action, name: &str) -> Result<u8, String> {
    match action {
        Action::Trigger => {
            let ids = client.trigger_schedule(name).map_err(|e| unable("trigger", &e))?;
            for id in ids {
                println!("{id}");
            }
        }
        Action::Pause => {
            client.pause_schedule(name, true).map_err(|e| unable("pause", &e))?;
            println!("paused {name}");
        }
        Action::Resume => {
            client.pause_schedule(name, false).map_err(|e| unable("resume", &e))?;
            println!("resumed {name}");
        }
    }
    Ok(0)
}
