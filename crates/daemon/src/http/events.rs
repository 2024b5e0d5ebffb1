//! `GET /api/events`: server-sent events. Each stream sends a `status` event (the same JSON
//! as `/api/status`) when it opens and then whenever the loop has published a new snapshot,
//! at most once per [`EVENT_EVERY`]: however many jobs end in between, a browser gets one
//! event, so neither it nor the daemon falls behind. Its queue depths are the shared view
//! ([`super::view`]), at most a second old.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;

use super::App;
use super::view::{VIEW_EVERY, full_status};

/// The most often a stream sends an event.
pub const EVENT_EVERY: Duration = Duration::from_millis(500);

pub(super) async fn stream(
    State(app): State<Arc<App>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = app.snapshots.clone();
    let events = futures_util::stream::unfold((app, rx, true), |(app, mut rx, first)| async move {
        if !first {
            tokio::time::sleep(EVENT_EVERY).await;
            // The sender lives as long as the daemon's loop: an error means it stops.
            rx.changed().await.ok()?;
        }
        rx.mark_unchanged();
        let event = match full_status(&app, VIEW_EVERY).await {
            Ok(status) => match serde_json::to_string(&status) {
                Ok(json) => Event::default().event("status").data(json),
                Err(e) => Event::default().event("problem").data(e.to_string()),
            },
            Err(e) => Event::default().event("problem").data(format!("{e:?}")),
        };
        Some((Ok(event), (app, rx, false)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
