//! procyard-asyncjob from a library, written as a project that only depends on the crate
//! would write it: a library module (`nightly`) that starts a job, checks on it, waits for it
//! and reaps it, called from a worker thread of a program that has nothing installed. The
//! program is multi-threaded, so `start` cannot fork: the monitor is hosted by this program
//! itself, because `main` calls [`run_if_monitor`] first.
//!
//! ```text
//! cargo run -p procyard-asyncjob --example library
//! ```
//!
//! The state file and the job's log go in a new directory under the temporary directory
//! (`$TMPDIR`), removed at the end. The crate's test `tests/example_library.rs` runs this
//! program with no `procyard-asyncjob` anywhere.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use procyard_asyncjob::{Status, report, run_if_monitor};

/// The library: a nightly report run as a detached job, through the crate's API only.
pub mod nightly {
    use std::path::Path;
    use std::time::Duration;

    use procyard_asyncjob::{AsyncJob, JobState, Result, Status};

    /// The report job, tracked by `report.state` in a directory of the caller's.
    pub struct Report {
        job: AsyncJob,
    }

    impl Report {
        /// The job as configured; nothing runs yet.
        pub fn new(dir: &Path) -> Result<Report> {
            let job = AsyncJob::options()
                .state_file(dir.join("report.state"))
                .stdout(dir.join("report.log"))
                .shell("echo building the report; sleep 0.5; echo report done")
                .timeout(Duration::from_secs(60))
                .build()?;
            Ok(Report { job })
        }

        /// Starts it in the background; returns once it runs.
        pub fn start(&self) -> Result<JobState> {
            self.job.start()
        }

        /// Where it is (this could be asked from another process).
        pub fn status(&self) -> Result<Status> {
            Ok(self.job.check()?.status)
        }

        /// Waits for its end (at most `within`), then reaps its state; returns how it ended.
        pub fn finish(&self, within: Duration) -> Result<JobState> {
            let ended = self.job.wait(Some(within))?;
            self.job.reap()?;
            Ok(ended)
        }
    }
}

/// The program: the embedded monitor host first, then [`run`].
pub fn main() -> ExitCode {
    // First, before any thread: a copy of this program started to host a monitor does that
    // here and exits; otherwise this returns and lets `start` host monitors in this program
    // when no `procyard-asyncjob` is installed.
    run_if_monitor();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("library: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs the nightly report from a worker thread and prints what happened.
pub fn run() -> procyard_asyncjob::Result<()> {
    let dir =
        std::env::temp_dir().join(format!("procyard-asyncjob-example-{}", std::process::id()));
    std::fs::create_dir(&dir).expect("create the example's directory");
    let worker = {
        let dir = dir.clone();
        std::thread::spawn(move || {
            let report = nightly::Report::new(&dir)?;
            let started = report.start()?;
            println!("monitor runs {}", program_of(started.ppid).display());
            println!("status {}", report.status()?);
            report.finish(Duration::from_secs(30))
        })
    };
    let ended = worker.join().expect("the worker thread panicked");
    let log = std::fs::read_to_string(dir.join("report.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let ended = ended?;
    assert_eq!(ended.status, Status::Finished);
    assert_eq!(ended.exitstatus, Some(0));
    print!("ended with exit status 0; log:\n{log}");
    Ok(())
}

/// The executable of process `pid`.
fn program_of(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default()
}
