//! TLS when the URL asks for it, with libpq's meanings of `sslmode` (rustls with the `ring`
//! provider: nothing of it is touched until a URL asks for TLS, and no OpenSSL is linked):
//!
//! - `disable`, or `prefer` (the default): plain TCP (no TLS is tried);
//! - `require`: encrypted, the server's certificate not checked (as libpq does without a
//!   root certificate);
//! - `verify-ca`: encrypted, the certificate signed by a trusted authority (the system's, or
//!   the one in `sslrootcert=PATH`), any host name;
//! - `verify-full`: as `verify-ca`, and the certificate names the host (a DNS or IP subject
//!   alternative name: the subject's common name is not read).
//!
//! The driver knows only `disable`, `prefer` and `require`, so the URL is read here first:
//! `verify-*` becomes `require` for it, `sslrootcert` is taken out. A TLS connection that
//! cannot be set up (the server has no TLS, a certificate is refused, the root certificate
//! cannot be read) is an error that says which.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

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
    pub(super) fn connector(&self) -> Result<MakeRustlsConnect, BoxError> {
        #[expect(deprecated, reason = "ring has no post-quantum key exchange: not needed here")]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let verifier: Arc<dyn ServerCertVerifier> = match self.verify {
            Verify::Nothing => Arc::new(AnyCertificate(algorithms)),
            Verify::Authority => Arc::new(AnyName(self.webpki(&provider)?)),
            Verify::Full => self.webpki(&provider)?,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }

    /// The chain-of-trust check: the system's authorities and `sslrootcert`'s.
    fn webpki(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<WebPkiServerVerifier>, BoxError> {
        let mut roots = RootCertStore::empty();
        // Unreadable or malformed system certificates are skipped, as OpenSSL skips them.
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(path) = &self.root {
            let pem = std::fs::read(path).map_err(|e| {
                format!("unable to read the root certificate (sslrootcert) {}: {e}", path.display())
            })?;
            let not_pem = |e: &dyn std::fmt::Display| {
                format!("the root certificate (sslrootcert) {} is not PEM: {e}", path.display())
            };
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| not_pem(&e))?;
            if certs.is_empty() {
                return Err(not_pem(&"no certificate in it").into());
            }
            for cert in certs {
                roots.add(cert).map_err(|e| not_pem(&e))?;
            }
        }
        Ok(WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("no trusted root certificate (system or sslrootcert): {e}"))?)
    }
}

/// `require`: any certificate (the handshake's signatures are still checked, so the
/// connection is encrypted to whoever holds the certificate's key).
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain of trust checked, the host name not (webpki checks the name last,
/// so a name error means the chain was good).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
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
