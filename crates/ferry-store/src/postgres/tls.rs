//! TLS to the PostgreSQL lease table: libpq's `sslmode` and `sslrootcert` on top of
//! tokio-postgres and rustls (with the ring provider given explicitly, never a process-wide
//! default).
//!
//! Why it is its own piece: tokio-postgres's URL parser knows `sslmode=disable|prefer|
//! require` only and rejects `verify-ca`, `verify-full` and `sslrootcert`, and its TLS
//! connector verifies whatever its rustls configuration says. So [`take_params`] takes both
//! parameters out of the data source before tokio-postgres parses it, and [`decide`] turns
//! them (with the root certificate from the options or the environment) into the mode
//! tokio-postgres negotiates with and the rustls configuration that checks the server:
//!
//! | `sslmode`         | TLS                     | server certificate checked against the root file  |
//! |-------------------|-------------------------|---------------------------------------------------|
//! | `disable`         | never                   | -                                                 |
//! | `allow`, `prefer` | if the server offers it | no (as libpq)                                     |
//! | `require`         | always                  | chain and host name if there is a root file, else |
//! |                   |                         | no (the store warns once)                         |
//! | `verify-ca`       | always                  | chain; a root file is required                    |
//! | `verify-full`     | always                  | chain and host name; a root file is required      |
//!
//! The root file is `sslrootcert=PATH` in the data source, else
//! `PostgresOptions::ssl_root_cert`, else `PGSSLROOTCERT`, else `~/.postgresql/root.crt` if
//! it exists (the last two are filled in by `open` and `open_with`). With a root file,
//! `require` checks the host name too, which is stricter than libpq (it checks the chain
//! only): a lease table must not be served by whoever holds any certificate of the CA.
//! Over Unix sockets TLS is never used, whatever `sslmode` says (libpq does the same). The
//! root file is read when the store is opened; a store that is already open keeps the CA
//! certificates it read (a daemon reads a replaced file when it restarts).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::errors::PgProblem;

/// libpq's `sslmode` (`allow` is taken as `prefer`: both accept either kind of connection;
/// ferry tries TLS first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SslPolicy {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslPolicy {
    fn parse(value: &str) -> Result<SslPolicy, PgProblem> {
        Ok(match value {
            "disable" => SslPolicy::Disable,
            "allow" | "prefer" => SslPolicy::Prefer,
            "require" => SslPolicy::Require,
            "verify-ca" => SslPolicy::VerifyCa,
            "verify-full" => SslPolicy::VerifyFull,
            other => return Err(PgProblem::SslModeUnknown { value: other.to_string() }),
        })
    }
}

/// What the data source says about TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsParams {
    /// `sslmode`; tokio-postgres's and libpq's default is `prefer`.
    pub mode: SslPolicy,
    /// `sslrootcert`.
    pub root_cert: Option<PathBuf>,
}

/// Takes `sslmode` and `sslrootcert` out of the query string of a `postgres://` URL (the
/// last of each wins, as tokio-postgres does with repeated parameters) and returns the URL
/// without them, for tokio-postgres to parse.
pub(super) fn take_params(data_source: &str) -> Result<(String, TlsParams), PgProblem> {
    let mut params = TlsParams { mode: SslPolicy::Prefer, root_cert: None };
    let Some((base, query)) = data_source.split_once('?') else {
        return Ok((data_source.to_string(), params));
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(key).as_str() {
            "sslmode" => params.mode = SslPolicy::parse(&percent_decode(value))?,
            "sslrootcert" => {
                let path = percent_decode(value);
                if path == "system" {
                    return Err(PgProblem::RootCertSystem);
                }
                params.root_cert = Some(PathBuf::from(path));
            }
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    Ok((url, params))
}

/// `%XX` escapes decoded, as tokio-postgres decodes query parameters (a `%` not followed by
/// two hex digits stays as it is).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The root file libpq would use when the data source names none: `PGSSLROOTCERT`, else
/// `~/.postgresql/root.crt` if it exists.
pub(super) fn root_cert_from_env() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PGSSLROOTCERT").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let default = PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".postgresql/root.crt");
    default.is_file().then_some(default)
}

/// How connections are secured, as decided from the settings.
pub(super) struct Decision {
    /// What tokio-postgres negotiates.
    pub ssl_mode: SslMode,
    /// The TLS connector; `None` for plain connections.
    pub connector: Option<MakeRustlsConnect>,
    /// The root file the server's certificate is checked against.
    pub root_cert: Option<PathBuf>,
    /// `sslmode=require` without a root file: encrypted, but anyone in the path can pose as
    /// the server. The store warns once.
    pub unverified: bool,
}

/// Decides TLS for a data source: `root_cert` is the data source's, else the options' (or
/// the environment's); `unix_only` is true when every host is a Unix socket.
pub(super) fn decide(params: &TlsParams, root_cert: Option<&Path>, unix_only: bool) -> Result<Decision, PgProblem> {
    let plain = Decision { ssl_mode: SslMode::Disable, connector: None, root_cert: None, unverified: false };
    let (ssl_mode, check) = match params.mode {
        _ if unix_only => return Ok(plain),
        SslPolicy::Disable => return Ok(plain),
        // libpq does not check the certificate under `prefer` either: a server that answers
        // "no TLS" gets a plain connection anyway, so checking would protect nothing.
        SslPolicy::Prefer => (SslMode::Prefer, Check::Nothing),
        SslPolicy::Require => (SslMode::Require, if root_cert.is_some() { Check::Full } else { Check::Nothing }),
        SslPolicy::VerifyCa | SslPolicy::VerifyFull if root_cert.is_none() => {
            let mode = if params.mode == SslPolicy::VerifyCa { "verify-ca" } else { "verify-full" };
            return Err(PgProblem::NoRootCert { mode });
        }
        SslPolicy::VerifyCa => (SslMode::Require, Check::Chain),
        SslPolicy::VerifyFull => (SslMode::Require, Check::Full),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(PgProblem::TlsSetup)?;
    let (config, root_cert) = match (check, root_cert) {
        (Check::Full, Some(path)) => {
            (builder.with_root_certificates(load_roots(path)?).with_no_client_auth(), Some(path.to_path_buf()))
        }
        (Check::Chain, Some(path)) => {
            let verifier = Verifier {
                roots: Some(Arc::new(load_roots(path)?)),
                algorithms: provider.signature_verification_algorithms,
            };
            (
                builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth(),
                Some(path.to_path_buf()),
            )
        }
        _ => {
            let verifier = Verifier { roots: None, algorithms: provider.signature_verification_algorithms };
            (builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth(), None)
        }
    };
    Ok(Decision {
        ssl_mode,
        connector: Some(MakeRustlsConnect::new(config)),
        unverified: params.mode == SslPolicy::Require && root_cert.is_none(),
        root_cert,
    })
}

/// What is checked of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    Full,
}

/// Reads the PEM certificates of a root file.
fn load_roots(path: &Path) -> Result<RootCertStore, PgProblem> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| PgProblem::RootCertUnreadable { path: shown.clone(), source })?;
    let invalid = |source: Option<Box<dyn std::error::Error + Send + Sync>>| PgProblem::RootCertInvalid {
        path: shown.clone(),
        source,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| invalid(Some(Box::new(e))))?;
        roots.add(cert).map_err(|e| invalid(Some(Box::new(e))))?;
    }
    if roots.is_empty() {
        return Err(invalid(None));
    }
    Ok(roots)
}

/// Checks the server's certificate chain against `roots` without its host name
/// (`verify-ca`), or nothing at all when there are no roots (`prefer`, or `require` without a
/// root file). The handshake's own signatures are always checked, so the session is bound
/// to the certificate's key either way.
struct Verifier {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("checks_chain", &self.roots.is_some()).finish_non_exhaustive()
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why a TLS connection failed, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TlsFailure {
    /// The server answered the TLS request with "no".
    NotOffered,
    /// No certificate of the root file issued the server's certificate.
    Untrusted,
    /// The certificate does not name the host connected to.
    WrongHost,
    /// The certificate was refused for another reason (expired, not yet valid, ...).
    Refused,
    /// The handshake failed otherwise.
    Handshake,
}

/// Whether a connection error is a TLS failure, and which. tokio-postgres has no public
/// kind for it, only its message; the certificate problem is rustls's error inside the I/O
/// error of the handshake.
pub(super) fn failure(e: &tokio_postgres::Error) -> Option<TlsFailure> {
    if e.to_string() != "error performing TLS handshake" {
        return None;
    }
    let source = std::error::Error::source(e)?;
    if source.to_string() == "server does not support TLS" {
        return Some(TlsFailure::NotOffered);
    }
    let rustls_error = source
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    Some(match rustls_error {
        Some(rustls::Error::InvalidCertificate(problem)) => match problem {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsFailure::WrongHost
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => TlsFailure::Untrusted,
            _ => TlsFailure::Refused,
        },
        _ => TlsFailure::Handshake,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_parameters_are_taken_out_of_the_url() {
        let (url, params) =
            take_params("postgres://u:pw@db/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca%20x.pem")
                .map_err(|e| e.to_string())
                .expect("parse");
        assert_eq!(url, "postgres://u:pw@db/x?application_name=a");
        assert_eq!(params, TlsParams { mode: SslPolicy::VerifyFull, root_cert: Some("/etc/ca x.pem".into()) });

        let (url, params) = take_params("postgres://db/x?sslmode=disable&sslmode=require").expect("parse");
        assert_eq!(url, "postgres://db/x");
        assert_eq!(params.mode, SslPolicy::Require, "the last one wins");

        let (url, params) = take_params("postgres://db/x").expect("parse");
        assert_eq!(url, "postgres://db/x");
        assert_eq!(params, TlsParams { mode: SslPolicy::Prefer, root_cert: None });

        let (_, params) = take_params("postgres://db/x?sslmode=allow").expect("parse");
        assert_eq!(params.mode, SslPolicy::Prefer);
        let (_, params) = take_params("postgres://db/x?ssl%6dode=verify-ca").expect("parse");
        assert_eq!(params.mode, SslPolicy::VerifyCa);

        let err = take_params("postgres://db/x?sslmode=verify").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("sslmode=verify is not known") && err.contains("verify-full"), "{err}");
        let err = take_params("postgres://db/x?sslrootcert=system").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("sslrootcert=system"), "{err}");
    }

    #[test]
    fn percent_escapes_decode_like_tokio_postgres() {
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    #[test]
    fn unix_sockets_and_disable_are_plain_and_verification_needs_a_root_file() {
        let params = |mode| TlsParams { mode, root_cert: None };
        for mode in [SslPolicy::Disable, SslPolicy::Prefer, SslPolicy::Require, SslPolicy::VerifyFull] {
            let plain = decide(&params(mode), None, true).map_err(|e| e.to_string()).expect("unix socket");
            assert!(plain.connector.is_none() && plain.ssl_mode == SslMode::Disable, "{mode:?}");
        }
        let plain = decide(&params(SslPolicy::Disable), None, false).map_err(|e| e.to_string()).expect("disable");
        assert!(plain.connector.is_none());
        let prefer = decide(&params(SslPolicy::Prefer), None, false).map_err(|e| e.to_string()).expect("prefer");
        assert!(prefer.connector.is_some() && prefer.ssl_mode == SslMode::Prefer && !prefer.unverified);
        let require = decide(&params(SslPolicy::Require), None, false).map_err(|e| e.to_string()).expect("require");
        assert!(require.connector.is_some() && require.ssl_mode == SslMode::Require && require.unverified);
        for mode in [SslPolicy::VerifyCa, SslPolicy::VerifyFull] {
            let err = decide(&params(mode), None, false).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("no root certificate") && err.contains("PGSSLROOTCERT"), "{err}");
        }
    }

    #[test]
    fn a_root_file_must_hold_a_pem_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let err = load_roots(&missing).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(&format!("cannot read the root certificate file {}", missing.display())), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = load_roots(&empty).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(&format!("{} holds no usable PEM certificate", empty.display())), "{err}");
    }
}
