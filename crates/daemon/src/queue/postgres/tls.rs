//! TLS when the URL asks for it, with libpq's meanings of `sslmode` (OpenSSL through
//! `native-tls`):
//!
//! - `disable`, or `prefer` (the default): plain TCP (no TLS is tried);
//! - `require`: encrypted, the server's certificate not checked (as libpq does without a
//!   root certificate);
//! - `verify-ca`: encrypted, the certificate signed by a trusted authority (the system's, or
//!   the one in `sslrootcert=PATH`), any host name;
//! - `verify-full`: as `verify-ca`, and the certificate names the host.
//!
//! The driver knows only `disable`, `prefer` and `require`, so the URL is read here first:
//! `verify-*` becomes `require` for it, `sslrootcert` is taken out. A TLS connection that
//! cannot be set up (the server has no TLS, a certificate is refused, the root certificate
//! cannot be read) is an error that says which.

use std::path::PathBuf;

use postgres_native_tls::MakeTlsConnector;

use super::conn::BoxError;

/// How the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verify {
    /// Not at all (`require`).
    Nothing,
    /// Its chain of trust (`verify-ca`).
    Authority,
    /// Its chain and the host name (`verify-full`).
    Full,
}

/// The TLS a URL asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Tls {
    pub(super) verify: Verify,
    /// `sslrootcert`: a PEM file of trusted authorities (besides the system's).
    pub(super) root: Option<PathBuf>,
}

/// Splits `url` into what the driver reads (`verify-*` as `require`, no `sslrootcert`) and
/// the TLS asked for (`None`: plain TCP). An unknown `sslmode` is left for the driver to
/// refuse.
pub(super) fn split_url(url: &str) -> (String, Option<Tls>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None) };
    let mut verify = None;
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslrootcert", path)) => root = Some(PathBuf::from(path)),
            Some(("sslmode", mode)) => {
                verify = match mode {
                    "require" => Some(Verify::Nothing),
                    "verify-ca" => Some(Verify::Authority),
                    "verify-full" => Some(Verify::Full),
                    _ => None,
                };
                kept.push(if verify.is_some() { "sslmode=require" } else { pair });
            }
            _ => kept.push(pair),
        }
    }
    let driver =
        if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    (driver, verify.map(|verify| Tls { verify, root }))
}

impl Tls {
    /// The connector for this TLS.
    pub(super) fn connector(&self) -> Result<MakeTlsConnector, BoxError> {
        let mut b = native_tls::TlsConnector::builder();
        match self.verify {
            Verify::Nothing => {
                b.danger_accept_invalid_certs(true).danger_accept_invalid_hostnames(true);
            }
            Verify::Authority => {
                b.danger_accept_invalid_hostnames(true);
            }
            Verify::Full => {}
        }
        if let Some(path) = &self.root {
            let pem = std::fs::read(path).map_err(|e| {
                format!("unable to read the root certificate (sslrootcert) {}: {e}", path.display())
            })?;
            let cert = native_tls::Certificate::from_pem(&pem).map_err(|e| {
                format!("the root certificate (sslrootcert) {} is not PEM: {e}", path.display())
            })?;
            b.add_root_certificate(cert);
        }
        Ok(MakeTlsConnector::new(b.build()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_say_which_tls() {
        assert_eq!(split_url("postgres://h/db"), ("postgres://h/db".into(), None));
        let (u, t) = split_url("postgres://h/db?sslmode=disable&connect_timeout=3");
        assert_eq!((u.as_str(), t), ("postgres://h/db?sslmode=disable&connect_timeout=3", None));
        let (u, t) = split_url("postgres://h/db?sslmode=require");
        assert_eq!(u, "postgres://h/db?sslmode=require");
        assert_eq!(t.unwrap().verify, Verify::Nothing);
        let (u, t) = split_url("postgres://h/db?sslrootcert=/etc/ca.pem&sslmode=verify-full");
        assert_eq!(u, "postgres://h/db?sslmode=require");
        assert_eq!(t, Some(Tls { verify: Verify::Full, root: Some("/etc/ca.pem".into()) }));
        assert_eq!(
            split_url("postgres://h/db?sslmode=verify-ca").1.unwrap().verify,
            Verify::Authority
        );
        // Left for the driver to refuse, naming the option.
        assert_eq!(
            split_url("postgres://h/db?sslmode=sometimes").0,
            "postgres://h/db?sslmode=sometimes"
        );
    }

    #[test]
    fn an_unreadable_root_certificate_is_named() {
        let tls = Tls { verify: Verify::Full, root: Some("/nonexistent/ca.pem".into()) };
        let e = tls.connector().err().expect("refused").to_string();
        assert!(e.contains("sslrootcert") && e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
