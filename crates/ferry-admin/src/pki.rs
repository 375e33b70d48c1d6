//! The admin's side of the domain's certificates: the CA (created at first start), its own
//! certificate, one-time enrollment tokens, the record of what each machine was issued, and
//! revocation.
//!
//! Files, in `DATA/pki/`: `ca.pem`, `ca.key` (0600: whoever reads it can mint any identity
//! of the domain), `admin.pem`, `admin.key` (0600), `registry.json` (serials issued per
//! machine, and the revoked ones). The CA certificate is also copied to the domain file's
//! `.ferry/ca.pem`, for processes on this host.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferry_api::{EnrollRequest, EnrollResponse, EnrollToken, Revoked};
use ferry_core::MachineName;
use ferry_host::files;
use ferry_tls::{Ca, Credentials, Identity, Revocations};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// How long an enrollment token is good for.
const TOKEN_TTL_MS: u64 = 60 * 60 * 1000;

pub struct AdminPki {
    ca: Ca,
    pub creds: Credentials,
    pub revoked: Revocations,
    dir: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Default, Serialize, Deserialize)]
struct Registry {
    /// Serials issued to each machine and not revoked.
    machines: BTreeMap<String, Vec<String>>,
    revoked: BTreeSet<String>,
}

#[derive(Default)]
struct Inner {
    registry: Registry,
    /// Pending enrollment tokens: SHA-256 of the token, its machine, expiry (Unix ms).
    tokens: Vec<([u8; 32], MachineName, u64)>,
}

/// Why a machine gets no certificates, each with its HTTP status (`status`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the enrollment token for machine {0} is not valid (unknown, already used, expired after an hour, or made for another machine): run `ferry machine enroll-token {0}` for a new one"
    )]
    BadToken(String),
    #[error("{0}")]
    BadRequest(String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadToken(_) => 403,
            Refusal::BadRequest(_) => 400,
        }
    }
}

fn hash(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// What the admin's certificate names besides its identity, so that a client checking the
/// address it dialled (`curl --cacert ca.pem https://IP:PORT/...`) accepts it: the address
/// it listens on (loopback's when it listens on every address), `localhost`, and this
/// host's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminNames {
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
}

impl AdminNames {
    /// The names of an admin listening on `listen` on a host named `hostname`.
    pub fn new(listen: SocketAddr, hostname: Option<&str>) -> AdminNames {
        let ips = if listen.ip().is_unspecified() {
            vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)]
        } else {
            vec![listen.ip()]
        };
        let mut dns = vec!["localhost".to_string()];
        // Only a name a certificate can carry (letters, digits, '-', '.').
        let host = hostname.map(str::trim).filter(|h| {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && !h.starts_with(['-', '.'])
        });
        if let Some(h) = host.filter(|h| *h != "localhost") {
            dns.push(h.to_ascii_lowercase());
        }
        AdminNames { ips, dns }
    }

    /// This host's name, as the kernel has it.
    pub fn hostname() -> Option<String> {
        std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string())
    }

    /// Whether `creds` names all of these.
    fn named_by(&self, creds: &Credentials) -> bool {
        creds.names().is_ok_and(|(ips, dns)| {
            self.ips.iter().all(|i| ips.contains(i)) && self.dns.iter().all(|d| dns.contains(d))
        })
    }
}

impl AdminPki {
    /// Opens (or creates) the domain CA and the admin's certificate in `DATA/pki`. The
    /// admin's certificate is issued again, by the same CA, when it lacks one of `names`
    /// (another listen address, or one made before certificates named addresses), is about
    /// to expire, or is of another CA.
    pub fn open(data_dir: &Path, domain_file: &Path, domain: &str, names: &AdminNames) -> anyhow::Result<AdminPki> {
        let dir = data_dir.join("pki");
        let ca = Ca::load_or_create(&dir, domain).map_err(|e| anyhow::anyhow!("the domain CA: {e}"))?;
        let creds = match Credentials::load(&dir, "admin") {
            Ok(c)
                if c.identity().ok() == Some(Identity::Admin)
                    && c.expires_in_s().unwrap_or(0) > 30 * 86_400
                    && c.ca_pem == ca.cert_pem()
                    && names.named_by(&c) =>
            {
                c
            }
            _ => {
                let c = ca
                    .issue_named(&Identity::Admin, &names.ips, &names.dns)
                    .map_err(|e| anyhow::anyhow!("the admin's certificate: {e}"))?;
                c.save(&dir, "admin").map_err(|e| anyhow::anyhow!("{e}"))?;
                c
            }
        };
        // For Node Managers and clients on this host.
        let local = files::secret_path(domain_file).with_file_name("ca.pem");
        files::write_atomic(&local, ca.cert_pem().as_bytes(), 0o644)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", local.display()))?;
        let registry: Registry = std::fs::read(dir.join("registry.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let revoked = Revocations::default();
        revoked.replace(registry.revoked.clone());
        // The admin's clients (to Node Managers) refuse what it revoked.
        let mut creds = creds;
        creds.revoked = revoked.clone();
        Ok(AdminPki { ca, creds, revoked, dir, inner: Mutex::new(Inner { registry, tokens: Vec::new() }) })
    }

    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    fn persist(&self, inner: &Inner) {
        match serde_json::to_vec_pretty(&inner.registry) {
            Ok(bytes) => {
                if let Err(e) = files::write_atomic(&self.dir.join("registry.json"), &bytes, 0o600) {
                    tracing::warn!("cannot persist the certificate registry: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot encode the certificate registry: {e}"),
        }
    }

    /// A one-time token for `ferry enroll --machine MACHINE`: random, then the CA's
    /// fingerprint (so the machine can check it reached this domain's admin).
    pub fn enroll_token(&self, machine: &MachineName, now_ms: u64) -> EnrollToken {
        let secret: [u8; 24] = rand::random();
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let token = format!("{hex}.{}", ferry_tls::ca_pin(self.ca.cert_pem()));
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.tokens.retain(|(_, _, exp)| *exp > now_ms);
        inner.tokens.push((hash(&token), machine.clone(), now_ms + TOKEN_TTL_MS));
        EnrollToken { machine: machine.clone(), token, expires_ms: now_ms + TOKEN_TTL_MS }
    }

    /// Signs a machine's requests if `req.token` is a pending token for it (used up here)
    /// or the domain secret.
    pub fn enroll(&self, req: &EnrollRequest, domain_secret: &str, now_ms: u64) -> Result<EnrollResponse, Refusal> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let by_secret = files::secrets_equal(&req.token, domain_secret);
        if !by_secret {
            let h = hash(&req.token);
            let found = inner.tokens.iter().position(|(th, m, exp)| {
                // Constant time over the hash; the machine and expiry are not secret.
                files::bytes_equal(th, &h) && m == &req.machine && *exp > now_ms
            });
            match found {
                Some(i) => {
                    inner.tokens.remove(i);
                }
                None => return Err(Refusal::BadToken(req.machine.to_string())),
            }
        }
        self.sign(&mut inner, req)
    }

    /// Rotation: certificates for new keys of a machine that proved itself with its
    /// current certificate (the caller checks that). The old ones stay valid until they
    /// expire or the machine is revoked.
    pub fn rotate(&self, req: &EnrollRequest) -> Result<EnrollResponse, Refusal> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.sign(&mut inner, req)
    }

    /// Signs a machine's two requests and records the serials (under the caller's lock).
    fn sign(&self, inner: &mut Inner, req: &EnrollRequest) -> Result<EnrollResponse, Refusal> {
        let id = Identity::Machine(req.machine.to_string());
        let chain_pem = self.ca.sign_leaf(&req.leaf_csr, &id).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        let issuer_pem =
            self.ca.sign_issuer(&req.issuer_csr, &req.machine).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        let serials: Vec<String> =
            [&chain_pem, &issuer_pem].iter().filter_map(|p| ferry_tls::serial_of(p).ok()).collect();
        inner.registry.machines.entry(req.machine.to_string()).or_default().extend(serials);
        self.persist(inner);
        Ok(EnrollResponse { chain_pem, issuer_pem, ca_pem: self.ca.cert_pem().to_string() })
    }

    /// Revokes every certificate machine `machine` was issued (and so every server
    /// certificate its Node Manager signed). Its Node Manager must enroll again.
    pub fn revoke(&self, machine: &MachineName) -> Revoked {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let serials = inner.registry.machines.remove(machine.as_str()).unwrap_or_default();
        inner.registry.revoked.extend(serials.iter().cloned());
        self.revoked.replace(inner.registry.revoked.clone());
        self.persist(&inner);
        Revoked { machine: machine.clone(), serials }
    }

    pub fn revoked_serials(&self) -> Vec<String> {
        self.revoked.snapshot().into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(listen: &str, host: Option<&str>) -> AdminNames {
        AdminNames::new(listen.parse().unwrap(), host)
    }

    #[test]
    fn the_admin_is_named_by_its_listen_address_and_host_name() {
        let n = names("198.18.1.1:7001", Some("admin-host\n"));
        assert_eq!(n.ips, ["198.18.1.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(n.dns, ["localhost", "admin-host"]);
        let n = names("0.0.0.0:7001", Some("Admin.Example"));
        assert_eq!(n.ips, ["127.0.0.1".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]);
        assert_eq!(n.dns, ["localhost", "admin.example"]);
        for odd in [None, Some(""), Some("a b"), Some("-x"), Some("localhost"), Some("x_y")] {
            assert_eq!(names("[::1]:7001", odd).dns, ["localhost"], "{odd:?}");
        }
    }

    /// A certificate made before certificates named addresses (or for another listen
    /// address) is issued again at start, by the same CA, still the admin's.
    #[test]
    fn the_admins_certificate_is_issued_again_when_it_lacks_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("domain.toml");
        let pki = dir.path().join("pki");
        // As an earlier version left it: no address.
        let ca = Ca::load_or_create(&pki, "t").unwrap();
        ca.issue(&Identity::Admin).unwrap().save(&pki, "admin").unwrap();
        let old = Credentials::load(&pki, "admin").unwrap();
        let ca_pem = ca.cert_pem().to_string();

        let here = names("198.18.1.1:7001", Some("h1"));
        let a = AdminPki::open(dir.path(), &file, "t", &here).unwrap();
        assert_ne!(a.creds.chain_pem, old.chain_pem, "issued again");
        assert_eq!((a.ca_pem(), a.creds.identity().unwrap()), (ca_pem.as_str(), Identity::Admin));
        let (ips, dns) = a.creds.names().unwrap();
        assert_eq!(ips, here.ips);
        assert!(
            dns.contains(&"ferry".to_string())
                && dns.contains(&"h1".to_string())
                && dns.contains(&"localhost".to_string()),
            "{dns:?}"
        );
        assert_eq!(Credentials::load(&pki, "admin").unwrap(), a.creds, "and saved");

        // The same names: kept as it is.
        let b = AdminPki::open(dir.path(), &file, "t", &here).unwrap();
        assert_eq!(b.creds, a.creds);
        // Another listen address: issued again, same CA.
        let c = AdminPki::open(dir.path(), &file, "t", &names("198.18.1.2:7001", Some("h1"))).unwrap();
        assert_ne!(c.creds, a.creds);
        assert_eq!(c.ca_pem(), ca_pem);
        assert_eq!(c.creds.names().unwrap().0, ["198.18.1.2".parse::<IpAddr>().unwrap()]);
    }
}
