//! ferry-tls: the domain's certificate authority, enrollment and mutual TLS (issue 5).
//!
//! Who is who, by certificate:
//! - the **domain CA** (`ca.pem`, `ca.key` 0600 in the admin's data directory) signs
//!   everything; its key never leaves the admin;
//! - the **admin** has a leaf certificate of the CA;
//! - each **machine** (its Node Manager) has a leaf certificate for TLS and an issuing
//!   certificate (a CA limited to leaves, `pathlen 0`), both for keys the Node Manager made
//!   itself and sent as certificate requests at enrollment;
//! - each **server** gets a short-lived leaf from the issuing certificate of the machine it
//!   starts on, at every start.
//!
//! Every leaf names its holder in a URI subject alternative name (`ferry:admin`,
//! `ferry:machine:NAME`, `ferry:server:NAME`) and carries the DNS name [`DNS_NAME`], so a
//! chain is verified against that fixed name, whatever address a peer was dialled at, and
//! the holder is then checked by identity ([`Expect`]). The admin's leaf also names its
//! listen address and host names ([`Ca::issue_named`]), for clients such as curl that check
//! the address they dialled; those names identify nobody. Revocation is by serial number
//! ([`Revocations`]): the admin records the serials it signed for each machine, and a
//! revoked machine's certificates, and every server certificate its issuing certificate
//! signed, are refused during the handshake.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

pub mod listener;

pub use listener::{PeerInfo, TlsListener};

/// Makes ring the process's default TLS crypto provider (HTTP clients built without a
/// configuration of ours need one). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The DNS name in every ferry leaf certificate; chains are verified against it.
pub const DNS_NAME: &str = "ferry";

/// How long the CA certificate is valid.
const CA_DAYS: i64 = 3650;
/// How long a machine's and the admin's certificates are valid (rotate before).
pub const MACHINE_DAYS: i64 = 365;
/// How long a server's certificate is valid: a server asks for a new one when it restarts.
pub const SERVER_HOURS: i64 = 24 * 7;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Cert(String),
}

fn cert_err(e: impl fmt::Display) -> TlsError {
    TlsError::Cert(e.to_string())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_path_buf(), source }
}

/// Who holds a certificate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Identity {
    Admin,
    Machine(String),
    Server(String),
}

impl Identity {
    /// The URI subject alternative name that carries the identity.
    pub fn uri(&self) -> String {
        match self {
            Identity::Admin => "ferry:admin".into(),
            Identity::Machine(m) => format!("ferry:machine:{m}"),
            Identity::Server(s) => format!("ferry:server:{s}"),
        }
    }

    pub fn from_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix("ferry:")?;
        if rest == "admin" {
            return Some(Identity::Admin);
        }
        let (kind, name) = rest.split_once(':')?;
        if name.is_empty() {
            return None;
        }
        match kind {
            "machine" => Some(Identity::Machine(name.into())),
            "server" => Some(Identity::Server(name.into())),
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Admin => write!(f, "the Administration Server"),
            Identity::Machine(m) => write!(f, "machine {m}"),
            Identity::Server(s) => write!(f, "server {s}"),
        }
    }
}

/// What a verified peer certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub identity: Identity,
    /// For a server's certificate: the machine whose issuing certificate signed it.
    pub issued_by: Option<String>,
    /// The leaf's serial number (hex).
    pub serial: String,
    /// The issuing certificate's serial (server certificates).
    pub issuer_serial: Option<String>,
}

/// Reads the identity (and issuer) out of a chain a verifier accepted.
pub fn peer_of(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Result<Peer, String> {
    let (identity, serial) = identity_of(end_entity)?;
    let mut issued_by = None;
    let mut issuer_serial = None;
    if let Identity::Server(_) = identity {
        let first =
            intermediates.first().ok_or("a server certificate came without its machine's issuing certificate")?;
        match identity_of(first)? {
            (Identity::Machine(m), s) => {
                issued_by = Some(m);
                issuer_serial = Some(s);
            }
            (other, _) => return Err(format!("a server certificate issued by {other}, not by a machine")),
        }
    }
    Ok(Peer { identity, issued_by, serial, issuer_serial })
}

/// The serial number (hex) of the first certificate in a PEM text.
pub fn serial_of(pem: &str) -> Result<String, TlsError> {
    let chain = certs(pem)?;
    identity_of(&chain[0]).map(|(_, s)| s).map_err(TlsError::Cert)
}

fn identity_of(der: &CertificateDer<'_>) -> Result<(Identity, String), String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| format!("unreadable certificate: {e}"))?;
    let serial = cert.raw_serial_as_string();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(id) = Identity::from_uri(uri) {
                    return Ok((id, serial));
                }
            }
        }
    }
    Err(format!("certificate for {} names no ferry identity", cert.subject()))
}

/// Revoked certificates by serial number: a machine's leaf and issuing certificates are
/// refused, and so is every server certificate the issuing one signed. Shared by a
/// process's verifiers; updated in place.
#[derive(Debug, Clone, Default)]
pub struct Revocations(Arc<RwLock<BTreeSet<String>>>);

/// Two lists are equal when they refuse the same serials.
impl PartialEq for Revocations {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.snapshot() == other.snapshot()
    }
}

impl Eq for Revocations {}

impl Revocations {
    pub fn replace(&self, serials: BTreeSet<String>) {
        if let Ok(mut g) = self.0.write() {
            *g = serials;
        }
    }

    pub fn snapshot(&self) -> BTreeSet<String> {
        self.0.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// Why `peer` is refused, if it is.
    pub fn refuses(&self, peer: &Peer) -> Option<String> {
        let g = self.0.read().ok()?;
        if g.contains(&peer.serial) {
            return Some(format!("the certificate of {} (serial {}) was revoked", peer.identity, peer.serial));
        }
        match (&peer.issued_by, &peer.issuer_serial) {
            (Some(m), Some(s)) if g.contains(s) => {
                Some(format!("{} has a certificate from machine {m}, whose certificates were revoked", peer.identity))
            }
            _ => None,
        }
    }
}

fn serial() -> rcgen::SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and of full length
    rcgen::SerialNumber::from_slice(&bytes)
}

fn leaf_params(identity: &Identity, not_after: time::OffsetDateTime) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(vec![DNS_NAME.to_string()]).map_err(cert_err)?;
    p.subject_alt_names.push(SanType::URI(identity.uri().try_into().map_err(cert_err)?));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.uri());
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = not_before();
    p.not_after = not_after;
    p.serial_number = Some(serial());
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn issuer_params(machine: &str, not_after: time::OffsetDateTime) -> Result<CertificateParams, TlsError> {
    let identity = Identity::Machine(machine.into());
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    p.subject_alt_names.push(SanType::URI(identity.uri().try_into().map_err(cert_err)?));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{} issuing", identity.uri()));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = not_before();
    p.not_after = not_after;
    p.serial_number = Some(serial());
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// How far back certificates are dated: a machine whose wall clock is off by less than this
/// still accepts them (leases never look at wall clocks; TLS does).
pub const CLOCK_SKEW_TOLERANCE_DAYS: i64 = 1;

fn not_before() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - time::Duration::days(CLOCK_SKEW_TOLERANCE_DAYS)
}

fn days(n: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(n)
}

/// The domain's certificate authority, kept by the admin.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Loads `dir/ca.pem` and `dir/ca.key`, or creates them (the key with mode 0600).
    pub fn load_or_create(dir: &Path, domain: &str) -> Result<Ca, TlsError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert_path.exists() || key_path.exists() {
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
            let key =
                KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Cert(format!("{}: {e}", key_path.display())))?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
                .map_err(|e| TlsError::Cert(format!("{}: {e}", cert_path.display())))?;
            return Ok(Ca { cert_pem, issuer });
        }
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("ferry domain {domain} CA"));
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        p.not_before = not_before();
        p.not_after = days(CA_DAYS);
        let cert = p.self_signed(&key).map_err(cert_err)?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        Ok(Ca { cert_pem: cert.pem(), issuer: Issuer::new(p, key) })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A leaf for `identity` for the public key of `csr_pem` (nothing else of the request is
    /// used: the CA decides the names).
    pub fn sign_leaf(&self, csr_pem: &str, identity: &Identity) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Cert(format!("bad certificate request: {e}")))?;
        let p = leaf_params(identity, days(MACHINE_DAYS))?;
        Ok(p.signed_by(&csr.public_key, &self.issuer).map_err(cert_err)?.pem())
    }

    /// A machine's issuing certificate for the public key of `csr_pem`.
    pub fn sign_issuer(&self, csr_pem: &str, machine: &str) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Cert(format!("bad certificate request: {e}")))?;
        let p = issuer_params(machine, days(MACHINE_DAYS))?;
        Ok(p.signed_by(&csr.public_key, &self.issuer).map_err(cert_err)?.pem())
    }

    /// Credentials made here, key and all (the admin's own).
    pub fn issue(&self, identity: &Identity) -> Result<Credentials, TlsError> {
        self.issue_named(identity, &[], &[])
    }

    /// [`Ca::issue`], with the leaf also naming `ips` and the DNS names `dns`: so a client
    /// that checks the address it dialled (curl, a browser) accepts it. Who the holder is
    /// stays its identity's URI alone; ferry's own clients check only that.
    pub fn issue_named(&self, identity: &Identity, ips: &[IpAddr], dns: &[String]) -> Result<Credentials, TlsError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut p = leaf_params(identity, days(MACHINE_DAYS))?;
        p.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        for name in dns.iter().filter(|n| n.as_str() != DNS_NAME) {
            p.subject_alt_names.push(SanType::DnsName(name.as_str().try_into().map_err(cert_err)?));
        }
        let cert = p.signed_by(&key, &self.issuer).map_err(cert_err)?;
        Ok(Credentials {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
            revoked: Revocations::default(),
        })
    }
}

/// A key and its certificate request, made where the key stays.
pub struct Request {
    pub key_pem: String,
    pub csr_pem: String,
}

/// Makes a key and a certificate request for `identity`.
pub fn request(identity: &Identity) -> Result<Request, TlsError> {
    let key = KeyPair::generate().map_err(cert_err)?;
    // Only the key matters to the CA, which decides the names; the subject is a courtesy.
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.uri());
    p.distinguished_name = dn;
    let csr = p.serialize_request(&key).map_err(cert_err)?;
    Ok(Request { key_pem: key.serialize_pem(), csr_pem: csr.pem().map_err(cert_err)? })
}

/// A machine's issuing certificate and key: signs its servers' certificates.
pub struct MachineIssuer {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl MachineIssuer {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<MachineIssuer, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_err)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(cert_err)?;
        Ok(MachineIssuer { cert_pem: cert_pem.to_string(), issuer })
    }

    /// A short-lived certificate (and key) for `server`, chained to this machine: valid
    /// [`SERVER_HOURS`], or `FERRY_SERVER_CERT_SECONDS` (tests of the refresh).
    pub fn issue_server(&self, server: &str, ca_pem: &str) -> Result<Credentials, TlsError> {
        let life = std::env::var("FERRY_SERVER_CERT_SECONDS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map_or(std::time::Duration::from_secs(SERVER_HOURS as u64 * 3600), std::time::Duration::from_secs);
        self.issue_server_for(server, ca_pem, life)
    }

    /// [`MachineIssuer::issue_server`] with a life of the caller's choosing.
    pub fn issue_server_for(
        &self,
        server: &str,
        ca_pem: &str,
        life: std::time::Duration,
    ) -> Result<Credentials, TlsError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let not_after = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(life.as_millis() as i64);
        let cert = leaf_params(&Identity::Server(server.into()), not_after)?
            .signed_by(&key, &self.issuer)
            .map_err(cert_err)?;
        Ok(Credentials {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
            ca_pem: ca_pem.to_string(),
            revoked: Revocations::default(),
        })
    }
}

/// What a process presents and trusts: its chain (leaf first), its key, the domain CA.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub chain_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    /// What the clients built from these credentials refuse in the servers they reach
    /// (the process's list, kept up to date by its owner; never sent anywhere).
    #[serde(skip)]
    pub revoked: Revocations,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Credentials").field("chain_pem", &self.chain_pem.len()).finish_non_exhaustive()
    }
}

/// What a client expects the server it dials to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Any holder of a certificate of the domain.
    AnyPeer,
    Identity(Identity),
}

impl Credentials {
    /// `dir/NAME.pem` (chain), `dir/NAME.key` (0600) and `dir/ca.pem`.
    pub fn load(dir: &Path, name: &str) -> Result<Credentials, TlsError> {
        let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(io_err(&p));
        Ok(Credentials {
            chain_pem: read(dir.join(format!("{name}.pem")))?,
            key_pem: read(dir.join(format!("{name}.key")))?,
            ca_pem: read(dir.join("ca.pem"))?,
            revoked: Revocations::default(),
        })
    }

    pub fn save(&self, dir: &Path, name: &str) -> Result<(), TlsError> {
        write_file(&dir.join(format!("{name}.key")), self.key_pem.as_bytes(), 0o600)?;
        write_file(&dir.join(format!("{name}.pem")), self.chain_pem.as_bytes(), 0o644)?;
        write_file(&dir.join("ca.pem"), self.ca_pem.as_bytes(), 0o644)
    }

    /// The holder's identity, from its own leaf.
    pub fn identity(&self) -> Result<Identity, TlsError> {
        let chain = certs(&self.chain_pem)?;
        let leaf = chain.first().ok_or_else(|| TlsError::Cert("no certificate in the chain".into()))?;
        identity_of(leaf).map(|(id, _)| id).map_err(TlsError::Cert)
    }

    /// The IP addresses and DNS names the leaf names (its subject alternative names other
    /// than the identity).
    pub fn names(&self) -> Result<(Vec<IpAddr>, Vec<String>), TlsError> {
        use x509_parser::extensions::GeneralName;
        let chain = certs(&self.chain_pem)?;
        let leaf = chain.first().ok_or_else(|| TlsError::Cert("no certificate in the chain".into()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(cert_err)?;
        let (mut ips, mut dns) = (Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                        16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                        _ => {}
                    },
                    GeneralName::DNSName(d) => dns.push(d.to_string()),
                    _ => {}
                }
            }
        }
        Ok((ips, dns))
    }

    /// Seconds until the leaf expires (negative once it has).
    pub fn expires_in_s(&self) -> Result<i64, TlsError> {
        let chain = certs(&self.chain_pem)?;
        let leaf = chain.first().ok_or_else(|| TlsError::Cert("no certificate in the chain".into()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(cert_err)?;
        Ok(cert.validity().not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp())
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        roots(&self.ca_pem)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|_| TlsError::Cert("unreadable private key".into()))
    }

    /// A server configuration that requires a client certificate of the domain, refused in
    /// the handshake when revoked.
    pub fn server_config(&self, revoked: Revocations) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.server_config_inner(revoked, true)
    }

    /// A server configuration where a client certificate is optional (the admin: operators
    /// come with tokens, daemons with certificates).
    pub fn server_config_optional_client(&self, revoked: Revocations) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.server_config_inner(revoked, false)
    }

    fn server_config_inner(&self, revoked: Revocations, required: bool) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone());
        let builder = if required { builder } else { builder.allow_unauthenticated() };
        let inner = builder.build().map_err(cert_err)?;
        let verifier = Arc::new(ClientVerifier { inner, revoked });
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(cert_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&self.chain_pem)?, self.key()?)
            .map_err(cert_err)?;
        Ok(Arc::new(cfg))
    }

    /// A client configuration that presents these credentials and accepts only a server
    /// of the domain that is `expect`.
    pub fn client_config(&self, expect: Expect) -> Result<rustls::ClientConfig, TlsError> {
        verifying_client(&self.ca_pem, expect, self.revoked.clone())?
            .with_client_auth_cert(certs(&self.chain_pem)?, self.key()?)
            .map_err(cert_err)
    }
}

/// A client configuration without a certificate of its own (an operator's CLI) that trusts
/// the domain CA and accepts only `expect`.
pub fn anonymous_client_config(ca_pem: &str, expect: Expect) -> Result<rustls::ClientConfig, TlsError> {
    Ok(verifying_client(ca_pem, expect, Revocations::default())?.with_no_client_auth())
}

/// A client configuration under way that trusts the CA in `ca_pem` and accepts only
/// `expect` (what is left to say: the client's own certificate, if any).
fn verifying_client(
    ca_pem: &str,
    expect: Expect,
    revoked: Revocations,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone())
        .build()
        .map_err(cert_err)?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(cert_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier { inner, expect, revoked })))
}

/// The trust anchors in a PEM text.
fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem)? {
        roots.add(c).map_err(cert_err)?;
    }
    Ok(roots)
}

/// The handshake-signature methods of a certificate verifier (the same three in rustls's
/// `ServerCertVerifier` and `ClientCertVerifier`), written once for ferry's three verifiers.
/// They say whether the peer's handshake was signed by the key of the certificate it sent,
/// which is what binds the session to that certificate:
/// - `checked by FIELD`: the wrapped WebPKI verifier in `self.FIELD` checks them, with the
///   ring provider's algorithms it was built with ([`ClientVerifier`], [`ServerVerifier`]
///   only add checks of who the certificate names, and of revocation);
/// - `unchecked, schemes from FIELD`: every signature is taken as valid and the schemes in
///   `self.FIELD` are offered; only for [`AnyServer`], over which nothing is sent and
///   nothing is believed but the CA certificate, itself checked against the fingerprint the
///   enrollment token carries.
macro_rules! handshake_signatures {
    (checked by $inner:ident) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.$inner.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.$inner.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.$inner.supported_verify_schemes()
        }
    };
    (unchecked, schemes from $schemes:ident) => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.$schemes.clone()
        }
    };
}

/// A client configuration that accepts any server certificate: only for fetching the CA
/// certificate at enrollment, which the caller then checks against the fingerprint the
/// enrollment token carries (nothing else is sent or believed over it).
pub fn trust_on_first_use_client_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider.signature_verification_algorithms.supported_schemes();
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"))
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer { schemes }))
        .with_no_client_auth()
}

#[derive(Debug)]
struct AnyServer {
    schemes: Vec<rustls::SignatureScheme>,
}

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    handshake_signatures!(unchecked, schemes from schemes);
}

/// The fingerprint an enrollment token carries: the first 16 bytes of the SHA-256 of the
/// CA certificate's PEM text (trimmed), in hex.
pub fn ca_pin(ca_pem: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(ca_pem.trim().as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Proof that whoever serves `ca_pem` knows the domain secret: HMAC-SHA-256 over the
/// client's `nonce` and the CA certificate, keyed with the secret (hex). Lets a Node Manager
/// that has the domain secret but not the CA certificate (started with `--admin-url` on
/// another host) trust the CA it fetched, without sending the secret to an impostor.
pub fn ca_mac(secret: &str, nonce: &str, ca_pem: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(nonce.as_bytes());
    mac.update(b"\n");
    mac.update(ca_pem.trim().as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks [`ca_mac`] (in constant time, by the HMAC's own verification).
pub fn ca_mac_ok(secret: &str, nonce: &str, ca_pem: &str, mac_hex: &str) -> bool {
    use hmac::{KeyInit, Mac};
    let Some(given) = unhex(mac_hex) else { return false };
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(nonce.as_bytes());
    mac.update(b"\n");
    mac.update(ca_pem.trim().as_bytes());
    mac.verify_slice(&given).is_ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Every certificate in a PEM text.
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let v: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let v = v.map_err(|_| TlsError::Cert("unreadable PEM certificate".into()))?;
    if v.is_empty() {
        return Err(TlsError::Cert("no certificate in the PEM text".into()));
    }
    Ok(v)
}

#[derive(Debug)]
struct ClientVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    revoked: Revocations,
}

impl rustls::server::danger::ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let peer = peer_of(end_entity, intermediates).map_err(rustls::Error::General)?;
        if let Some(why) = self.revoked.refuses(&peer) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)).inspect_err(|_| {
                tracing::warn!("refused a TLS client: {why}");
            });
        }
        Ok(ok)
    }
    handshake_signatures!(checked by inner);
}

#[derive(Debug)]
struct ServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    expect: Expect,
    revoked: Revocations,
}

impl rustls::client::danger::ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        // The chain against the fixed name; then who it is, whatever address was dialled.
        let name = ServerName::try_from(DNS_NAME).map_err(|e| rustls::Error::General(e.to_string()))?;
        let ok = self.inner.verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)?;
        let peer = peer_of(end_entity, intermediates).map_err(rustls::Error::General)?;
        if let Expect::Identity(want) = &self.expect {
            if &peer.identity != want {
                return Err(rustls::Error::General(format!("expected {want}, but the peer is {}", peer.identity)));
            }
        }
        if let Some(why) = self.revoked.refuses(&peer) {
            tracing::warn!("refused a TLS server: {why}");
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked));
        }
        Ok(ok)
    }
    handshake_signatures!(checked by inner);
}

/// Writes a file atomically with `mode` (`ferry_host::files::write_atomic`), naming it in
/// the error.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    ferry_host::files::write_atomic(path, contents, mode).map_err(io_err(path))
}

#[cfg(test)]
mod tests;
