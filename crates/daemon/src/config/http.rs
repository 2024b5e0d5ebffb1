//! `[http]`: the daemon's HTTP face (dashboard, JSON API, `/metrics`), validated.
//!
//! ```toml
//! [http]
//! listen = "127.0.0.1:9464"     # off when [http] is absent
//! token_file = "/etc/procyard/http.token"  # or token = "…"; required off loopback
//! show_payloads = false         # the API and the page show payloads only when true
//! ```
//!
//! A listener on a loopback address serves without a token (the page's actions carry a
//! same-origin CSRF token); any other address needs `token` or `token_file`, and every
//! request to it must carry `Authorization: Bearer <token>`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::line_of;
use crate::{Error, Result};

/// `[http]` settings, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// The address to listen on (`127.0.0.1:9464`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Where the bearer token comes from, if any.
    pub token: Option<TokenSource>,
    /// Whether the API and the page show job payloads.
    pub show_payloads: bool,
}

/// Where the bearer token comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Written in the config.
    Inline(String),
    /// Read from this file (absolute) when the daemon starts; surrounding whitespace is
    /// trimmed.
    File(PathBuf),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            TokenSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl HttpSettings {
    /// Whether the listener is on a loopback address (no token needed).
    pub fn is_loopback(&self) -> bool {
        self.listen.ip().is_loopback()
    }

    /// The bearer token: the inline one, or the file's contents (trimmed). An empty or
    /// unreadable file is an error naming it.
    pub fn read_token(&self) -> Result<Option<String>> {
        match &self.token {
            None => Ok(None),
            Some(TokenSource::Inline(t)) => Ok(Some(t.clone())),
            Some(TokenSource::File(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io("read the http token file", path, e))?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(Error::Config {
                        path: path.clone(),
                        line: None,
                        field: Some("http.token_file".into()),
                        message: "the token file is empty".into(),
                    });
                }
                Ok(Some(token.to_owned()))
            }
        }
    }
}

/// `[http]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    listen: Spanned<String>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    show_payloads: bool,
}

/// Validates `[http]` of the config at `path` (its `text` for line numbers).
pub(super) fn validate(
    path: &std::path::Path,
    text: &str,
    raw: Option<&Spanned<RawHttp>>,
) -> Result<Option<HttpSettings>> {
    let Some(raw) = raw else { return Ok(None) };
    let err = |span: Option<std::ops::Range<usize>>, field: &str, message: String| Error::Config {
        path: path.to_owned(),
        line: span.map(|s| line_of(text, s.start)),
        field: Some(format!("http.{field}")),
        message,
    };
    let h = raw.get_ref();
    let listen: SocketAddr = h.listen.get_ref().parse().map_err(|e| {
        err(
            Some(h.listen.span()),
            "listen",
            format!("expected an address with a port such as 127.0.0.1:9464 ({e})"),
        )
    })?;
    let token = match (&h.token, &h.token_file) {
        (Some(_), Some(f)) => {
            return Err(err(
                Some(f.span()),
                "token_file",
                "give either token or token_file, not both".into(),
            ));
        }
        (Some(t), None) if t.get_ref().trim().is_empty() => {
            return Err(err(Some(t.span()), "token", "must not be empty".into()));
        }
        (Some(t), None) => Some(TokenSource::Inline(t.get_ref().trim().to_owned())),
        (None, Some(f)) if f.get_ref().as_os_str().is_empty() => {
            return Err(err(Some(f.span()), "token_file", "must not be empty".into()));
        }
        (None, Some(f)) => {
            let p = f.get_ref();
            let abs = if p.is_absolute() {
                p.clone()
            } else {
                path.parent().unwrap_or(std::path::Path::new("/")).join(p)
            };
            Some(TokenSource::File(abs))
        }
        (None, None) => None,
    };
    if token.is_none() && !listen.ip().is_loopback() {
        return Err(err(
            Some(h.listen.span()),
            "listen",
            format!(
                "{listen} is not a loopback address: set http.token or http.token_file, so \
                 that only holders of the token can reach the dashboard and the API"
            ),
        ));
    }
    Ok(Some(HttpSettings { listen, token, show_payloads: h.show_payloads }))
}

/// Guesses `section.key` (or `task[i].key`) for a byte span, from the text around it.
pub(super) fn field_at(text: &str, span: std::ops::Range<usize>) -> Option<String> {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[start..].find('\n').map(|i| start + i).unwrap_or(text.len());
    let line = &text[line_start..line_end];
    let key =
        line.split('=').next().map(str::trim).filter(|k| !k.is_empty() && !k.starts_with('['));
    let before = &text[..line_start];
    let section = before
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .map(|l| l.trim().trim_matches(|c| c == '[' || c == ']').to_owned());
    let section = match section.as_deref() {
        Some("task") => {
            let idx = before.matches("[[task]]").count().saturating_sub(1);
            Some(format!("task[{idx}]"))
        }
        other => other.map(str::to_owned),
    };
    match (section, key) {
        (Some(s), Some(k)) => Some(format!("{s}.{k}")),
        (None, Some(k)) => Some(k.to_owned()),
        (Some(s), None) => Some(s),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::Config;
    use crate::Error;

    const BASE: &str = "[queue]\npath = \"q.db\"\n[[task]]\nname = \"t\"\nrouting_keys = [\"t.#\"]\ncommand = [\"cat\"]\n";

    fn parse(http: &str) -> crate::Result<Config> {
        Config::parse(Path::new("/etc/p/x.toml"), &format!("{BASE}[http]\n{http}"))
    }

    fn field_of(http: &str) -> (Option<String>, String) {
        match parse(http) {
            Err(Error::Config { field, message, .. }) => (field, message),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn absent_is_off_and_loopback_needs_no_token() {
        let c = Config::parse(Path::new("/x.toml"), BASE).unwrap();
        assert_eq!(c.http, None);
        let c = parse("listen = \"127.0.0.1:9464\"").unwrap();
        let h = c.http.unwrap();
        assert!(h.is_loopback() && h.token.is_none() && !h.show_payloads);
        assert!(parse("listen = \"[::1]:0\"").unwrap().http.unwrap().is_loopback());
    }

    #[test]
    fn non_loopback_without_token_is_refused() {
        let (field, msg) = field_of("listen = \"0.0.0.0:9464\"");
        assert_eq!(field.as_deref(), Some("http.listen"));
        assert!(msg.contains("token"), "{msg}");
        let c = parse("listen = \"0.0.0.0:9464\"\ntoken = \"s3cret\"").unwrap();
        assert!(!c.http.unwrap().is_loopback());
        let c = parse("listen = \"0.0.0.0:9464\"\ntoken_file = \"tok\"").unwrap();
        assert_eq!(
            c.http.unwrap().token,
            Some(super::TokenSource::File("/etc/p/tok".into())),
            "relative to the config file"
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        assert_eq!(field_of("listen = \"localhost\"").0.as_deref(), Some("http.listen"));
        assert_eq!(
            field_of("listen = \"127.0.0.1:1\"\ntoken = \" \"").0.as_deref(),
            Some("http.token")
        );
        let both = "listen = \"127.0.0.1:1\"\ntoken = \"a\"\ntoken_file = \"b\"";
        assert_eq!(field_of(both).0.as_deref(), Some("http.token_file"));
        let (field, msg) = field_of("listen = \"127.0.0.1:1\"\nport = 3");
        assert_eq!(field.as_deref(), Some("http.port"));
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn token_file_is_read_trimmed_and_errors_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "  abc\n").unwrap();
        let c = parse(&format!("listen = \"0.0.0.0:1\"\ntoken_file = {:?}", f)).unwrap();
        assert_eq!(c.http.as_ref().unwrap().read_token().unwrap().as_deref(), Some("abc"));
        std::fs::write(&f, "\n").unwrap();
        assert!(c.http.as_ref().unwrap().read_token().is_err());
        std::fs::remove_file(&f).unwrap();
        let e = c.http.unwrap().read_token().unwrap_err();
        assert!(e.to_string().contains("tok"), "{e}");
    }
}
