//! The routes and the JSON API's handlers. Bodies are the crate's serde types (the ones the
//! command line prints with `--json`); errors are [`ApiError`]s.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::metrics::{ProcessFacts, render, to_classic};
use super::view::{VIEW_EVERY, full_status, queue_view};
use super::{App, auth, events, page};
use crate::Error;
use crate::client::{Cancelled, Published};
use crate::control::{self, Request, Response as ControlResponse};
use crate::queue::{JobFilter, JobState, Purge, Requeue, ScheduleStatus, check_job_id};
use crate::status::Status;

/// The most jobs one page of `/api/jobs` reaches (`offset + limit`).
const MAX_REACH: usize = 10_000;

/// An error as the API answers it: `{"error": {"kind": …, "message": …}}` with a status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        kind: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError { status, kind, message: message.into() }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let (status, kind) = match &e {
            Error::InvalidJobId { .. } | Error::InvalidArgument { .. } => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            Error::InvalidRoutingKey { .. } | Error::InvalidPayload { .. } => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            Error::UnknownJob { .. } | Error::NoSuchJob { .. } => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            Error::JobFinished { .. } => (StatusCode::CONFLICT, "finished"),
            Error::Unroutable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unroutable"),
            Error::Refused { .. } => (StatusCode::CONFLICT, "refused"),
            Error::NotRunning { .. } => (StatusCode::SERVICE_UNAVAILABLE, "not_running"),
            Error::Unsupported { .. } => (StatusCode::NOT_IMPLEMENTED, "unsupported"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, kind, e.chain().to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        ApiError::new(r.status(), "bad_request", r.body_text())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    kind: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { kind: self.kind, message: &self.message } };
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("ascii"));
        }
        r
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Every route, behind [`auth::guard`].
pub(super) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/style.css", get(page::style))
        .route("/login", get(page::login))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/events", get(events::stream))
        .route("/api/jobs", get(jobs).post(publish))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/logs", get(logs))
        .route("/api/jobs/{id}/payload", get(payload))
        .route("/api/jobs/{id}/live", get(live))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/dead", get(dead))
        .route("/api/dead/requeue", post(requeue))
        .route("/api/dead/purge", post(purge))
        .route("/api/schedules", get(schedules))
        .route("/api/tasks/{name}/pause", post(pause))
        .route("/api/tasks/{name}/resume", post(resume))
        .route("/api/tasks/{name}/scale", post(scale))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth::guard))
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// The latest snapshot with the queue's depths and the oldest dead letters, read now.
async fn status(State(app): State<Arc<App>>) -> ApiResult<Status> {
    Ok(Json(full_status(&app, Duration::ZERO).await?))
}

/// The config's `[[schedule]]`s with their state: what `schedules --json` prints (an empty
/// list without any, whatever the backend).
async fn schedules(State(app): State<Arc<App>>) -> ApiResult<Vec<ScheduleStatus>> {
    let list = app
        .records
        .call(|c| if c.config().schedules.is_empty() { Ok(Vec::new()) } else { c.schedules() })
        .await?;
    Ok(Json(list))
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the classic text format.
async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let status = app.snapshots.borrow().clone();
    let view = queue_view(&app, VIEW_EVERY).await?;
    let body = render(&app.live, &status, &view.depths, ProcessFacts::read());
    let accept = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).unwrap_or("");
    if accept.contains("application/openmetrics-text") {
        let ctype = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        Ok(([(header::CONTENT_TYPE, ctype)], body).into_response())
    } else {
        let ctype = "text/plain; version=0.0.4; charset=utf-8";
        Ok(([(header::CONTENT_TYPE, ctype)], to_classic(&body)).into_response())
    }
}

#[derive(Deserialize)]
struct JobsQuery {
    task: Option<String>,
    /// Comma-separated states.
    state: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
    /// Only jobs published within this long (`10m`).
    since: Option<String>,
}

/// One page of `/api/jobs`.
#[derive(Serialize, Deserialize)]
pub struct JobsPage {
    /// The records (without attempts), newest first: what `jobs --json` prints per line.
    pub jobs: Vec<crate::queue::JobRecord>,
    /// Where this page starts.
    pub offset: usize,
    /// Whether more records follow.
    pub more: bool,
}

async fn jobs(
    State(app): State<Arc<App>>,
    q: Result<Query<JobsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<JobsPage> {
    let Query(q) = q.map_err(|e| ApiError::bad(e.body_text()))?;
    let states = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => Vec::new(),
        Some(s) => s
            .split(',')
            .map(|s| s.trim().parse::<JobState>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::from)?,
    };
    let since = match q.since.as_deref() {
        None | Some("") => None,
        Some(s) => Some(procyard_core::parse_duration(s).map_err(|_| {
            ApiError::bad(format!("since: {s:?} is not a duration (e.g. 10m, 2h)"))
        })?),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let offset = q.offset.unwrap_or(0);
    if offset + limit > MAX_REACH {
        return Err(ApiError::bad(format!("offset + limit must be at most {MAX_REACH}")));
    }
    let filter = JobFilter {
        task: q.task.filter(|t| !t.is_empty()),
        states,
        since,
        limit: offset + limit + 1,
    };
    let mut all = app.records.call(move |c| c.jobs(&filter)).await?;
    let more = all.len() > offset + limit;
    all.truncate(offset + limit);
    let jobs = all.into_iter().skip(offset).collect();
    Ok(Json(JobsPage { jobs, offset, more }))
}

async fn job(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> ApiResult<crate::queue::JobRecord> {
    Ok(Json(app.records.call(move |c| c.job(&id)).await?))
}

#[derive(Deserialize)]
struct LogsQuery {
    attempt: Option<u32>,
    stream: Option<String>,
}

/// An attempt's output as text (the last attempt's stdout by default).
async fn logs(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad(e.body_text()))?;
    let stderr = match q.stream.as_deref() {
        None | Some("stdout") => false,
        Some("stderr") => true,
        Some(other) => {
            return Err(ApiError::bad(format!("stream: {other:?} is not stdout or stderr")));
        }
    };
    let record = app.records.call(move |c| c.job(&id)).await?;
    let attempt = match q.attempt {
        None => record.attempts.last(),
        Some(n) => record.attempts.iter().find(|a| a.number == n),
    };
    let Some(attempt) = attempt else {
        let msg = match q.attempt {
            Some(n) => format!("job {} has no attempt {n}", record.id),
            None => format!("job {} has not run yet", record.id),
        };
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", msg));
    };
    let out = if stderr { &attempt.stderr } else { &attempt.stdout };
    let bytes = out.as_ref().map(|c| c.bytes.clone()).unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}

/// A running job's output so far: asking starts following it (the loop copies its output
/// with each snapshot while it is asked for), so the first answer may be empty.
async fn live(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<super::LiveOutput> {
    check_job_id(&id)?;
    let now = std::time::Instant::now();
    let (answer, new) = {
        let mut followed = app.followed.lock().unwrap_or_else(|p| p.into_inner());
        let new = !followed.contains_key(&id);
        let entry = followed.entry(id).or_insert_with(|| (now, super::LiveOutput::default()));
        entry.0 = now;
        (entry.1.clone(), new)
    };
    if new {
        // Wake the loop, so it copies the output at its next turn even if the job is silent.
        app.records
            .call(|c| {
                let _ = control::poke(&c.config().daemon.control_socket);
                Ok(())
            })
            .await?;
    }
    Ok(Json(answer))
}

/// A job's payload as sent, only when `[http] show_payloads = true`.
async fn payload(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !app.show_payloads {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "payloads_hidden",
            "payloads are not shown: set [http] show_payloads = true",
        ));
    }
    let job = id.clone();
    let bytes = app.records.call(move |c| c.queue_mut()?.payload(&job)).await?;
    let bytes = bytes.ok_or(Error::UnknownJob { id })?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[derive(Deserialize)]
struct DeadQuery {
    task: Option<String>,
}

async fn dead(
    State(app): State<Arc<App>>,
    Query(q): Query<DeadQuery>,
) -> ApiResult<Vec<crate::queue::DeadLetter>> {
    let task = q.task.filter(|t| !t.is_empty());
    Ok(Json(app.records.call(move |c| c.queue_mut()?.dead_letters(task.as_deref(), 1000)).await?))
}

/// What `POST /api/jobs` takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    routing_key: String,
    #[serde(default)]
    payload: String,
}

async fn publish(
    State(app): State<Arc<App>>,
    body: Result<Json<PublishBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let Json(b) = body?;
    let key = b.routing_key.clone();
    let jobs = app.records.call(move |c| c.publish(&b.routing_key, b.payload.as_bytes())).await?;
    Ok((
        StatusCode::CREATED,
        Json(Published { routing_key: key, jobs, duplicate: false, existing: Vec::new() }),
    ))
}

/// What a cancel did.
#[derive(Serialize, Deserialize)]
pub struct CancelAnswer {
    /// The job.
    pub id: String,
    /// `waiting` (it never runs), `stopping` (its process is being stopped) or `requested`
    /// (on RabbitMQ: every daemon was asked to cancel it).
    pub cancelled: String,
}

async fn cancel(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<CancelAnswer> {
    check_job_id(&id)?;
    let job = id.clone();
    let how = app.records.call(move |c| c.cancel(&job)).await?;
    let cancelled = match how {
        Cancelled::Waiting => "waiting",
        Cancelled::Stopping => "stopping",
        Cancelled::Requested => "requested",
    };
    Ok(Json(CancelAnswer { id, cancelled: cancelled.into() }))
}

/// What `POST /api/dead/requeue` takes: ids, or `all` (of `task`, or of every task).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequeueBody {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
    task: Option<String>,
}

/// How many jobs an action moved.
#[derive(Serialize, Deserialize)]
pub struct Count {
    /// How many.
    pub count: u64,
}

async fn requeue(
    State(app): State<Arc<App>>,
    body: Result<Json<RequeueBody>, JsonRejection>,
) -> ApiResult<Count> {
    let Json(b) = body?;
    let which = match (b.all, b.ids.is_empty()) {
        (true, true) => Requeue::All,
        (false, false) => {
            for id in &b.ids {
                check_job_id(id)?;
            }
            Requeue::Ids(b.ids)
        }
        (true, false) => return Err(ApiError::bad("give ids or all, not both")),
        (false, true) => return Err(ApiError::bad("give the ids to requeue, or \"all\": true")),
    };
    let count = app
        .records
        .call(move |c| {
            let n = c.queue_mut()?.requeue_dead(b.task.as_deref(), &which)?;
            let _ = control::poke(&c.config().daemon.control_socket);
            Ok(n)
        })
        .await?;
    Ok(Json(Count { count }))
}

async fn purge(State(app): State<Arc<App>>) -> ApiResult<Count> {
    let what = Purge { dead: true, done: false, older_than: None };
    Ok(Json(Count { count: app.records.call(move |c| c.purge(&what)).await? }))
}

/// The daemon's answer to a pause, resume or scale.
#[derive(Serialize, Deserialize)]
pub struct Applied {
    /// What it did.
    pub message: String,
}

async fn ask(app: &App, request: Request) -> ApiResult<Applied> {
    let answer = app
        .records
        .call(move |c| {
            control::ask(&c.config().daemon.control_socket, &request, Duration::from_secs(10))
        })
        .await?;
    match answer {
        Some(ControlResponse::Applied { message }) => Ok(Json(Applied { message })),
        Some(ControlResponse::Error { message }) if message.starts_with("no task") => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", message))
        }
        Some(ControlResponse::Error { message }) => Err(ApiError::bad(message)),
        _ => Err(ApiError::new(StatusCode::BAD_GATEWAY, "no_answer", "the daemon did not answer")),
    }
}

async fn pause(State(app): State<Arc<App>>, Path(task): Path<String>) -> ApiResult<Applied> {
    ask(&app, Request::Pause { task }).await
}

async fn resume(State(app): State<Arc<App>>, Path(task): Path<String>) -> ApiResult<Applied> {
    ask(&app, Request::Resume { task }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    max_workers: usize,
}

async fn scale(
    State(app): State<Arc<App>>,
    Path(task): Path<String>,
    body: Result<Json<ScaleBody>, JsonRejection>,
) -> ApiResult<Applied> {
    let Json(b) = body?;
    ask(&app, Request::Scale { task, max_workers: b.max_workers }).await
}
