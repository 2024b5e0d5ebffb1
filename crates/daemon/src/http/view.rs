//! The queue as the HTTP face shows it: depths per task and the oldest dead letters, read by
//! the records thread and shared by every handler for [`VIEW_EVERY`].
//!
//! `/metrics` scraped every 100 ms and an event stream per open page would otherwise each
//! count the queue (a scan of the waiting jobs) several times a second, on the cores the job
//! loop and its workers need. With the view shared, the queue is read at most once per
//! `VIEW_EVERY` however many scrapers and pages there are, and a reader that comes while a
//! read is under way waits for that one rather than starting another. `GET /api/status`
//! reads afresh (and refreshes the view): it answers a person or a script that just acted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::App;
use super::api::ApiError;
use crate::queue::{DeadLetter, QueueDepth};
use crate::status::Status;

/// The oldest queue view `/metrics` and the event streams show.
pub const VIEW_EVERY: Duration = Duration::from_secs(1);

/// The most dead letters a status carries.
const DEAD_SHOWN: usize = 100;

/// One read of the queue.
#[derive(Clone)]
pub(super) struct QueueView {
    at: Instant,
    pub depths: Arc<BTreeMap<String, QueueDepth>>,
    pub dead: Arc<Vec<DeadLetter>>,
}

/// The latest view, behind an async lock (held across a read, so reads are never doubled).
pub(super) type ViewCache = tokio::sync::Mutex<Option<QueueView>>;

/// The queue view, read afresh when the one held is `max_age` old or older.
pub(super) async fn queue_view(app: &App, max_age: Duration) -> Result<QueueView, ApiError> {
    let mut held = app.view.lock().await;
    if let Some(v) = held.as_ref()
        && v.at.elapsed() < max_age
    {
        return Ok(v.clone());
    }
    let (depths, dead) = app
        .records
        .call(|c| {
            let q = c.queue_mut()?;
            Ok((q.depths()?, q.dead_letters(None, DEAD_SHOWN)?))
        })
        .await?;
    let view = QueueView { at: Instant::now(), depths: Arc::new(depths), dead: Arc::new(dead) };
    *held = Some(view.clone());
    Ok(view)
}

/// The latest snapshot with a queue view at most `max_age` old.
pub(super) async fn full_status(app: &App, max_age: Duration) -> Result<Status, ApiError> {
    let mut status = Status::clone(&app.snapshots.borrow());
    let view = queue_view(app, max_age).await?;
    for g in &mut status.groups {
        g.queue = view.depths.get(&g.name).cloned();
    }
    status.dead_letters = Vec::clone(&view.dead);
    Ok(status)
}
