//! `/metrics`: the Prometheus / OpenMetrics exposition, encoded by `prometheus-client`.
//!
//! Two sources: what the job loop counts as it goes ([`LoopMetrics`]: jobs claimed by this
//! daemon for their first attempt, started and cancelled, and the duration and publish→start
//! histograms — atomics and short locks, never a wait), and the latest status snapshot with
//! the queue's depths and publish counts (per-task counters of `status`, gauges, workers,
//! daemon facts), read at scrape time; the depths are at most
//! [`VIEW_EVERY`](super::view::VIEW_EVERY) old.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::queue::QueueDepth;
use crate::status::Status;

/// The `task` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TaskLabel {
    task: String,
}

impl TaskLabel {
    fn of(task: &str) -> TaskLabel {
        TaskLabel { task: task.to_owned() }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    task: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

type Histograms = Family<TaskLabel, Histogram, fn() -> Histogram>;

fn duration_buckets() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics exposition, for scrapers
/// that do not ask for OpenMetrics (and for `promtool check metrics`): a counter's family is
/// named with its `_total`, and the `# UNIT` and `# EOF` lines go.
pub(crate) fn to_classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find(|p| line.starts_with(p));
        match meta {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// What the job loop counts as it goes (shared with the HTTP thread; cheap to update).
#[derive(Debug)]
pub(crate) struct LoopMetrics {
    claimed: Family<TaskLabel, Counter>,
    started: Family<TaskLabel, Counter>,
    cancelled: Family<TaskLabel, Counter>,
    duration: Histograms,
    latency: Histograms,
}

impl Default for LoopMetrics {
    fn default() -> LoopMetrics {
        LoopMetrics {
            claimed: Family::default(),
            started: Family::default(),
            cancelled: Family::default(),
            duration: Family::new_with_constructor(duration_buckets),
            latency: Family::new_with_constructor(duration_buckets),
        }
    }
}

impl LoopMetrics {
    /// The metrics of `task`, as handles the loop keeps: updating one is an atomic add or a
    /// short uncontended lock, with no label built and no family looked up per job.
    pub(crate) fn task(&self, task: &str) -> TaskMetrics {
        let label = TaskLabel::of(task);
        TaskMetrics {
            claimed: self.claimed.get_or_create(&label).clone(),
            started: self.started.get_or_create(&label).clone(),
            cancelled: self.cancelled.get_or_create(&label).clone(),
            duration: self.duration.get_or_create(&label).clone(),
            latency: self.latency.get_or_create(&label).clone(),
        }
    }
}

/// One task's share of [`LoopMetrics`] (handles to the same counters and histograms).
#[derive(Clone, Debug)]
pub(crate) struct TaskMetrics {
    claimed: Counter,
    started: Counter,
    cancelled: Counter,
    duration: Histogram,
    latency: Histogram,
}

impl TaskMetrics {
    /// `n` jobs came to this daemon for their first attempt.
    pub(crate) fn claimed(&self, n: u64) {
        self.claimed.inc_by(n);
    }

    /// A job started, `latency` seconds after it was published (first attempts).
    pub(crate) fn started(&self, latency: Option<f64>) {
        self.started.inc();
        if let Some(l) = latency {
            self.latency.observe(l.max(0.0));
        }
    }

    /// An attempt ended after `seconds`.
    pub(crate) fn ran(&self, seconds: f64) {
        self.duration.observe(seconds);
    }

    /// A job was cancelled.
    pub(crate) fn cancelled(&self) {
        self.cancelled.inc();
    }
}

/// What the process itself costs, read from `/proc/self` at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ProcessFacts {
    pub rss_bytes: u64,
    pub open_fds: u64,
}

impl ProcessFacts {
    /// Reads them (zero where `/proc` cannot say).
    pub(crate) fn read() -> ProcessFacts {
        let rss_kib = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()))
            })
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        let open_fds =
            std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or_default();
        ProcessFacts { rss_bytes: rss_kib * 1024, open_fds }
    }
}

fn counter(reg: &mut Registry, name: &str, help: &str, values: &[(&str, u64)]) {
    let f = Family::<TaskLabel, Counter>::default();
    for (task, v) in values {
        f.get_or_create(&TaskLabel::of(task)).inc_by(*v);
    }
    reg.register(name, help, f);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, values: &[(&str, i64)]) {
    let f = Family::<TaskLabel, Gauge>::default();
    for (task, v) in values {
        f.get_or_create(&TaskLabel::of(task)).set(*v);
    }
    reg.register(name, help, f);
}

/// The exposition (OpenMetrics text) of `live` and the snapshot `status` with `depths`.
pub(crate) fn render(
    live: &LoopMetrics,
    status: &Status,
    depths: &BTreeMap<String, QueueDepth>,
    process: ProcessFacts,
) -> String {
    let mut reg = Registry::with_prefix("procyard");
    // Jobs go straight into the queue from any process (the command line, other programs,
    // other daemons): the loop sees a job first when it claims it; the published count below
    // comes from the store.
    reg.register(
        "jobs_claimed",
        "Jobs this daemon took from the queue for their first attempt",
        live.claimed.clone(),
    );
    reg.register("jobs_started", "Job attempts started", live.started.clone());
    let per = |f: fn(&crate::status::GroupStatus) -> u64| -> Vec<(&str, u64)> {
        status.groups.iter().map(|g| (g.name.as_str(), f(g))).collect()
    };
    // Published by any process: counted by the store in the publish's own transaction (the
    // embedded queue does; where a backend does not count them, the family is left out).
    let published: Vec<(&str, u64)> = status
        .groups
        .iter()
        .filter_map(|g| Some((g.name.as_str(), depths.get(&g.name)?.published_total?)))
        .collect();
    if !published.is_empty() {
        counter(&mut reg, "jobs_published", "Jobs published to the queue", &published);
    }
    counter(&mut reg, "jobs_done", "Jobs done", &per(|g| g.done));
    counter(&mut reg, "jobs_failed", "Failed job attempts", &per(|g| g.failed));
    counter(&mut reg, "jobs_retried", "Jobs scheduled for a retry", &per(|g| g.retried));
    counter(&mut reg, "jobs_dead_lettered", "Jobs dead-lettered", &per(|g| g.dead_lettered));
    counter(
        &mut reg,
        "jobs_timed_out",
        "Jobs killed for running past their timeout",
        &per(|g| g.timeouts),
    );
    reg.register("jobs_cancelled", "Jobs cancelled", live.cancelled.clone());
    counter(
        &mut reg,
        "worker_restarts",
        "Workers that died unexpectedly or could not start",
        &per(|g| g.crashes),
    );

    let depth = |f: fn(&QueueDepth) -> u64| -> Vec<(&str, i64)> {
        status
            .groups
            .iter()
            .map(|g| (g.name.as_str(), depths.get(&g.name).map_or(0, f) as i64))
            .collect()
    };
    gauge(&mut reg, "jobs_ready", "Jobs waiting in the queue", &depth(|d| d.ready));
    gauge(&mut reg, "jobs_delayed", "Jobs waiting for a retry", &depth(|d| d.delayed.unwrap_or(0)));
    gauge(&mut reg, "jobs_dead", "Dead letters kept", &depth(|d| d.dead.unwrap_or(0)));
    let in_flight: Vec<(&str, i64)> =
        status.groups.iter().map(|g| (g.name.as_str(), g.in_flight as i64)).collect();
    gauge(&mut reg, "jobs_in_flight", "Jobs running now", &in_flight);
    let flags = |f: fn(&crate::status::GroupStatus) -> bool| -> Vec<(&str, i64)> {
        status.groups.iter().map(|g| (g.name.as_str(), i64::from(f(g)))).collect()
    };
    gauge(
        &mut reg,
        "task_crash_loop",
        "1 while restarts are delayed by crash-loop backoff",
        &flags(|g| g.crash_loop),
    );
    gauge(&mut reg, "task_paused", "1 while the task is paused", &flags(|g| g.paused));
    let max: Vec<(&str, i64)> =
        status.groups.iter().map(|g| (g.name.as_str(), g.max_workers as i64)).collect();
    gauge(&mut reg, "task_max_workers", "The most jobs of the task run at once", &max);

    let workers = Family::<WorkerLabel, Gauge>::default();
    for g in &status.groups {
        for state in ["busy", "idle"] {
            let _ =
                workers.get_or_create(&WorkerLabel { task: g.name.clone(), state: state.into() });
        }
        for w in &g.workers {
            let label = WorkerLabel { task: g.name.clone(), state: w.state.as_str().into() };
            workers.get_or_create(&label).inc();
        }
    }
    reg.register("workers", "Worker processes by state", workers);

    reg.register_with_unit(
        "job_duration",
        "How long job attempts ran",
        Unit::Seconds,
        live.duration.clone(),
    );
    reg.register_with_unit(
        "job_start_latency",
        "From publish to the start of the first attempt",
        Unit::Seconds,
        live.latency.clone(),
    );

    let uptime = Gauge::<f64, AtomicU64>::default();
    uptime.set(status.uptime_secs);
    reg.register_with_unit("uptime", "Seconds since the daemon started", Unit::Seconds, uptime);
    let reloads = Family::<ResultLabel, Counter>::default();
    reloads.get_or_create(&ResultLabel { result: "ok".into() }).inc_by(status.reloads);
    reloads.get_or_create(&ResultLabel { result: "failed".into() }).inc_by(status.failed_reloads);
    reg.register("reloads", "Config reloads (SIGHUP) by result", reloads);
    let rss = Gauge::<i64>::default();
    rss.set(process.rss_bytes as i64);
    reg.register_with_unit("resident_memory", "The daemon's resident set size", Unit::Bytes, rss);
    let fds = Gauge::<i64>::default();
    fds.set(process.open_fds as i64);
    reg.register("open_fds", "Descriptors the daemon has open", fds);
    let health = Family::<BackendLabel, Gauge>::default();
    health
        .get_or_create(&BackendLabel { backend: status.queue.backend.name().into() })
        .set(i64::from(status.queue.ok));
    reg.register("queue_healthy", "1 while the queue backend can move jobs", health);
    // An info metric the Prometheus way (a gauge of 1), which every parser takes.
    let build = Family::<VersionLabel, Gauge>::default();
    build.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION").into() }).set(1);
    reg.register("build_info", "The daemon's build (always 1)", build);

    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn classic_text_names_counters_with_total() {
        let om = "# HELP x_jobs Jobs.\n# TYPE x_jobs counter\nx_jobs_total{task=\"a\"} 1\n# HELP x_up Up.\n# TYPE x_up gauge\n# UNIT x_up seconds\nx_up 2\n# EOF\n";
        let classic = super::to_classic(om);
        assert_eq!(
            classic,
            "# HELP x_jobs_total Jobs.\n# TYPE x_jobs_total counter\nx_jobs_total{task=\"a\"} 1\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 2\n"
        );
    }
}
