//! Builders for the state machine's unit tests: configs, tasks and jobs without files.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, DaemonSettings, LogFormat, TaskConfig, WorkModel};
use crate::queue::{AmqpQueueType, BackendKind, Job, QueueConfig, Receipt};

/// A task: at most 2 workers (min 1 when longlived), 3 attempts, backoff 1 s to 60 s,
/// timeout 30 s, idle timeout 60 s.
pub(crate) fn task(name: &str, model: WorkModel) -> TaskConfig {
    TaskConfig {
        name: name.into(),
        routing_keys: vec![format!("{name}.#")],
        command: vec!["worker".into()],
        work_model: model,
        min_workers: usize::from(model == WorkModel::Longlived),
        max_workers: 2,
        prefetch: 1,
        timeout: Some(Duration::from_secs(30)),
        max_attempts: 3,
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        env: BTreeMap::new(),
        cwd: None,
        output_limit: 64 * 1024,
        limits: Default::default(),
    }
}

/// A config of `tasks`: grace 10 s, kill timeout 5 s.
pub(crate) fn config(tasks: Vec<TaskConfig>) -> Config {
    Config {
        path: PathBuf::from("/etc/procyard/daemon.toml"),
        daemon: DaemonSettings {
            grace_period: Duration::from_secs(10),
            kill_timeout: Duration::from_secs(5),
            control_socket: PathBuf::from("/run/procyard/q.sock"),
            log_format: LogFormat::Text,
            retention: crate::queue::Retention::default(),
            timezone: "UTC".into(),
        },
        queue: QueueConfig {
            backend: BackendKind::Sqlite,
            path: PathBuf::from("/var/lib/procyard/q.db"),
            url: None,
            exchange: "procyard".into(),
            queue_type: AmqpQueueType::Quorum,
            events: true,
            priorities: false,
            schema: "procyard".into(),
            durability: Default::default(),
        },
        tasks,
        schedules: Vec::new(),
        http: None,
    }
}

/// A job `id` of task `t`, at attempt `attempt`.
pub(crate) fn job(id: &str, attempt: u32) -> Job {
    Job {
        id: id.into(),
        task: "t".into(),
        routing_key: "t.x".into(),
        payload: id.as_bytes().to_vec(),
        attempt,
        receipt: Receipt(0),
    }
}
