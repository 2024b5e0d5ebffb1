//! Helpers for the HTTP face's scenarios: a daemon with `[http]` on a free loopback port, and
//! a small blocking HTTP client (ureq) that returns status and body without treating 4xx as
//! an error.

use std::net::TcpListener;
use std::time::Duration;

use crate::sandbox::Sandbox;

/// A free port on 127.0.0.1 (bound and released; the daemon binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A sandbox whose config serves `[http]` on a free port (`extra` lines added to `[http]`).
pub fn sandbox(tasks: &str, extra: &str) -> (Sandbox, String) {
    let port = free_port();
    let sb = Sandbox::new(tasks);
    let text = std::fs::read_to_string(&sb.config).expect("config");
    let text = format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n\n{text}");
    std::fs::write(&sb.config, text).expect("config");
    (sb, format!("http://127.0.0.1:{port}"))
}

pub struct Http {
    agent: ureq::Agent,
    pub base: String,
    /// Headers sent with every request.
    pub headers: Vec<(String, String)>,
}

pub struct Reply {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `error.kind` of a JSON error body.
    pub fn kind(&self) -> String {
        self.json()["error"]["kind"].as_str().unwrap_or_default().to_owned()
    }
}

impl Http {
    pub fn new(base: &str) -> Http {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Http { agent, base: base.to_owned(), headers: Vec::new() }
    }

    /// A client that sends the page's CSRF token, read from the page as a browser would.
    pub fn with_csrf(base: &str) -> Http {
        let mut http = Http::new(base);
        let page = http.get("/").body;
        let csrf = page
            .split("name=\"csrf\" content=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("the page carries a CSRF token")
            .to_owned();
        http.headers.push(("X-CSRF-Token".into(), csrf));
        http
    }

    fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut r = r.expect("http request");
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().expect("body");
        Reply { status, body, content_type }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.get_with(path, &[])
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Http::reply(req.call())
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.post_with(path, body, &[])
    }

    pub fn post_with(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Http::reply(req.send(body))
    }
}
