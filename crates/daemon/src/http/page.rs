//! The dashboard's assets, embedded in the binary (plain HTML, CSS and a small script; no
//! build step, nothing fetched at run time), and `GET /login` for token-protected listeners.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::App;
use super::api::ApiError;
use super::auth::{COOKIE, same};

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// Headers every page response carries: no framing, no sniffing, scripts only from here.
const PAGE_HEADERS: [(header::HeaderName, &str); 3] = [
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    ),
];

pub(super) async fn index(State(app): State<Arc<App>>) -> Response {
    let html = INDEX
        .replace("{{CSRF}}", &app.csrf)
        .replace("{{VERSION}}", env!("CARGO_PKG_VERSION"))
        .replace("{{PAYLOADS}}", if app.show_payloads { "shown" } else { "hidden" });
    (PAGE_HEADERS, Html(html)).into_response()
}

pub(super) async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response()
}

pub(super) async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// `GET /login?token=…`: with the right token, sets the cookie and goes to the page.
pub(super) async fn login(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let given = q.get("token").map(String::as_str).unwrap_or("");
    match &app.token {
        Some(t) if same(t, given) => {
            let cookie = format!("{COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/");
            Ok((
                StatusCode::SEE_OTHER,
                [(header::SET_COOKIE, cookie), (header::LOCATION, "/".into())],
            )
                .into_response())
        }
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong token")),
        None => Ok((StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response()),
    }
}
