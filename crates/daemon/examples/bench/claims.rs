//! The claim-cost loop shared by the SQLite and PostgreSQL scheduling benches: claim one job,
//! completing the one before, in rounds of 1,000.

use std::time::Instant;

use procyard_daemon::queue::{Outcome, QueueBackend};

/// The µs of one claim (with the previous job's outcome), per round of 1,000, over `ready`
/// jobs of task `t`. The last job is completed; the caller flushes or shuts down.
pub fn per_claim_us(daemon: &mut dyn QueueBackend, ready: usize) -> anyhow::Result<Vec<f64>> {
    let mut per_claim = Vec::new();
    let mut last = None;
    for _ in 0..ready / 1000 {
        let t0 = Instant::now();
        for _ in 0..1000 {
            if let Some(job) = last.take() {
                daemon.complete(&job, Outcome::Done)?;
            }
            let mut jobs = daemon.claim("t", 1)?;
            anyhow::ensure!(jobs.len() == 1, "a ready job to claim");
            last = jobs.pop();
        }
        per_claim.push(t0.elapsed().as_secs_f64() * 1e6 / 1000.0);
    }
    if let Some(job) = last {
        daemon.complete(&job, Outcome::Done)?;
    }
    Ok(per_claim)
}
