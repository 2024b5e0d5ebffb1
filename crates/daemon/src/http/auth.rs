//! Who may do what over HTTP.
//!
//! - With a token (`[http] token`/`token_file`; required off loopback), every request must
//!   carry it: `Authorization: Bearer <token>`, or the `procyard_token` cookie that
//!   `GET /login?token=…` sets (`HttpOnly`, `SameSite=Strict`) so that a browser can open the
//!   page. Anything else is 401.
//! - Without a token (loopback only), reads are open to local users, and the `Host` header
//!   must name a loopback host (`127.0.0.1`, `localhost`, `[::1]`), so a web page elsewhere
//!   cannot reach the API by rebinding its DNS name to 127.0.0.1 (403).
//! - Every request that changes something is a POST, refused (403) when it comes from
//!   another origin (its `Origin` does not match `Host`, or `Sec-Fetch-Site` says
//!   cross-site), and accepted only with the bearer token in the header or with the page's
//!   CSRF token in `X-CSRF-Token` (a random value made at start and written into the page;
//!   another origin cannot read it, and a cross-origin request cannot set the header without
//!   a CORS preflight, which is never granted).

use std::io::Read;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::App;
use super::api::ApiError;
use crate::{Error, Result};

/// The header the page sends its CSRF token in.
pub(super) const CSRF_HEADER: &str = "x-csrf-token";
/// The cookie `GET /login` sets.
pub(super) const COOKIE: &str = "procyard_token";

/// 32 hex digits from the kernel's random source.
pub(super) fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io("read", "/dev/urandom", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares without stopping at the first difference.
pub(super) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(str::trim)
}

pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        v.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
    })
}

fn host_of(value: &str) -> &str {
    // "[::1]:9464" -> "[::1]", "localhost:9464" -> "localhost".
    match value.rfind(':') {
        Some(i) if !value[i..].contains(']') => &value[..i],
        _ => value,
    }
}

/// What a request may do, decided from its method and headers.
pub(super) fn check(
    app: &App,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let with_bearer = match (&app.token, bearer(headers)) {
        (Some(t), Some(given)) => same(t, given),
        _ => false,
    };
    match &app.token {
        Some(token) => {
            let with_cookie = cookie(headers, COOKIE).is_some_and(|c| same(token, c));
            if !(with_bearer || with_cookie || path == "/login") {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this listener needs the token: send `Authorization: Bearer <token>` (or open /login?token=… in a browser)",
                ));
            }
        }
        None => {
            let h = host_of(host);
            if app.loopback && !matches!(h, "127.0.0.1" | "localhost" | "[::1]") {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "bad_host",
                    format!(
                        "Host {host:?} is not a loopback name; open the dashboard at 127.0.0.1 or localhost"
                    ),
                ));
            }
        }
    }
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if let Some(origin) = origin {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if origin_host != host {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_origin",
                format!("cross-origin request refused (Origin {origin:?}, Host {host:?})"),
            ));
        }
    }
    let site = headers.get("sec-fetch-site").and_then(|s| s.to_str().ok());
    if site.is_some_and(|s| s != "same-origin" && s != "none") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "cross-site request refused",
        ));
    }
    let csrf = headers.get(CSRF_HEADER).and_then(|c| c.to_str().ok());
    if with_bearer || csrf.is_some_and(|c| same(&app.csrf, c)) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "actions need the bearer token, or the page's CSRF token in X-CSRF-Token",
        ))
    }
}

/// The middleware in front of every route.
pub(super) async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    match check(&app, req.method(), req.uri().path(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_cookies() {
        assert_eq!(host_of("[::1]:9464"), "[::1]");
        assert_eq!(host_of("[::1]"), "[::1]");
        assert_eq!(host_of("localhost:1"), "localhost");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; procyard_token=xyz".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        assert_eq!(random_token().unwrap().len(), 32);
    }
}
