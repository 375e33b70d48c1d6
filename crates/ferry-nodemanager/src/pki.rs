//! The Node Manager's certificates: enrollment with the admin (`ferry enroll`, or at first
//! start), loading them at later starts, issuing its servers' short-lived certificates, and
//! keeping the list of revoked serials fresh.
//!
//! Files, in `DATA/pki/` (keys 0600, made here and never sent anywhere):
//! `machine.pem`/`machine.key` (TLS, both directions), `issuer.pem`/`issuer.key` (signs this
//! machine's servers' certificates), `ca.pem` (the domain CA), `revoked.json`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ferry_api::{AdminClient, EnrollRequest, EnrollResponse};
use ferry_core::MachineName;
use ferry_host::files;
use ferry_tls::{Credentials, Expect, Identity, MachineIssuer, Revocations};

/// How long an enrollment or rotation call to the admin may take (it signs certificates).
const ENROLL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the revocation list is fetched from the admin, and how long that may take.
const REVOCATIONS_EVERY: Duration = Duration::from_secs(3);
const REVOCATIONS_TIMEOUT: Duration = Duration::from_secs(2);

/// What a Node Manager proves itself with and trusts.
pub struct NmTls {
    pub creds: Credentials,
    pub issuer: MachineIssuer,
    pub revoked: Revocations,
    pub dir: PathBuf,
}

/// How a machine without certificates gets them.
#[derive(Clone)]
pub enum Enrollment {
    /// A one-time token from `ferry machine enroll-token` (carries the CA's fingerprint).
    Token(String),
    /// The domain secret: read from the domain file's `.ferry/` on the admin's host, where
    /// the CA certificate lies next to it (`ca_file`), or given to a Node Manager elsewhere
    /// (`$FERRY_SECRET`, `--secret-file`); then the CA certificate is fetched and accepted
    /// only with the admin's proof that it knows the secret ([`ferry_tls::ca_mac`]).
    DomainSecret { secret: String, ca_file: Option<PathBuf> },
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Enrollment::Token(_) => write!(f, "Token(<redacted>)"),
            Enrollment::DomainSecret { ca_file, .. } => write!(f, "DomainSecret(ca {ca_file:?})"),
        }
    }
}

pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// Whether this data directory holds a machine's certificates.
pub fn enrolled(data_dir: &Path) -> bool {
    let d = pki_dir(data_dir);
    ["machine.pem", "machine.key", "issuer.pem", "issuer.key", "ca.pem"].iter().all(|f| d.join(f).exists())
}

/// Loads this machine's certificates, checking they are its own and still valid.
pub fn load(data_dir: &Path, machine: &str) -> anyhow::Result<NmTls> {
    let dir = pki_dir(data_dir);
    let creds = Credentials::load(&dir, "machine").map_err(|e| anyhow::anyhow!("{e}"))?;
    let who = creds.identity().map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("machine.pem").display()))?;
    if who != Identity::Machine(machine.into()) {
        anyhow::bail!(
            "{} is the certificate of {who}, not of machine {machine}: use this machine's data directory, or enroll it again with `ferry enroll --machine {machine}`",
            dir.join("machine.pem").display()
        );
    }
    let left = creds.expires_in_s().map_err(|e| anyhow::anyhow!("{e}"))?;
    if left <= 0 {
        anyhow::bail!(
            "the certificate of machine {machine} ({}) has expired: enroll it again (`ferry machine enroll-token {machine}` on the admin, then `ferry enroll --machine {machine} --token ...` here)",
            dir.join("machine.pem").display()
        );
    }
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).with_context(|| format!("cannot read {}", dir.join(f).display()))
    };
    let issuer = MachineIssuer::from_pem(&read("issuer.pem")?, &read("issuer.key")?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("issuer.pem").display()))?;
    let revoked = Revocations::default();
    if let Ok(text) = std::fs::read(dir.join("revoked.json")) {
        if let Ok(serials) = serde_json::from_slice::<BTreeSet<String>>(&text) {
            revoked.replace(serials);
        }
    }
    // This Node Manager's clients (to the admin, to other machines) refuse what is revoked.
    let mut creds = creds;
    creds.revoked = revoked.clone();
    Ok(NmTls { creds, issuer, revoked, dir })
}

/// Asks the admin at `admin_url` for this machine's certificates and stores them.
pub async fn enroll(data_dir: &Path, machine: &MachineName, admin_url: &str, how: &Enrollment) -> anyhow::Result<()> {
    let (token, ca_pem) = match how {
        Enrollment::DomainSecret { secret, ca_file: Some(ca_file) } => {
            let ca = std::fs::read_to_string(ca_file).with_context(|| {
                format!(
                    "cannot read the domain CA certificate {} (the Administration Server writes it at start)",
                    ca_file.display()
                )
            })?;
            (secret.clone(), ca)
        }
        Enrollment::DomainSecret { secret, ca_file: None } => {
            (secret.clone(), fetch_ca_proven_by_secret(admin_url, secret).await?)
        }
        Enrollment::Token(token) => {
            let (_, pin) = token.rsplit_once('.').ok_or_else(|| {
                anyhow::anyhow!(
                    "this is not an enrollment token (expected what `ferry machine enroll-token {machine}` printed)"
                )
            })?;
            (token.clone(), fetch_pinned_ca(admin_url, pin).await?)
        }
    };
    let keys = NewKeys::make(machine)?;
    let tls = ferry_tls::anonymous_client_config(&ca_pem, Expect::Identity(Identity::Admin))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let admin = AdminClient::with_tls_config(admin_url, tls, ENROLL_TIMEOUT);
    let got = admin
        .enroll(&keys.request(machine, token))
        .await
        .with_context(|| format!("enrollment of machine {machine} at {} failed", admin.base()))?;
    keys.store(data_dir, machine, got, false)?;
    Ok(())
}

/// Rotation: asks the admin, with this machine's current certificate, for certificates of
/// new keys made here, and puts them in place of the old ones (kept as `*.old`). Returns
/// the new serials.
pub async fn rotate(data_dir: &Path, machine: &MachineName, admin_url: &str) -> anyhow::Result<Vec<String>> {
    let current = load(data_dir, machine)?;
    let keys = NewKeys::make(machine)?;
    let admin = AdminClient::with_tls(admin_url, &current.creds, ENROLL_TIMEOUT);
    let got = admin
        .rotate(&keys.request(machine, String::new()))
        .await
        .with_context(|| format!("rotation of machine {machine} at {} failed", admin.base()))?;
    keys.store(data_dir, machine, got, true)
}

/// A machine's two new keys (TLS and issuing) and their certificate requests.
struct NewKeys {
    leaf: ferry_tls::Request,
    issuing: ferry_tls::Request,
}

impl NewKeys {
    fn make(machine: &str) -> anyhow::Result<NewKeys> {
        let id = Identity::Machine(machine.into());
        let made = (ferry_tls::request(&id), ferry_tls::request(&id));
        match made {
            (Ok(leaf), Ok(issuing)) => Ok(NewKeys { leaf, issuing }),
            (Err(e), _) | (_, Err(e)) => Err(anyhow::anyhow!("{e}")),
        }
    }

    fn request(&self, machine: &MachineName, token: String) -> EnrollRequest {
        EnrollRequest {
            machine: machine.clone(),
            token,
            leaf_csr: self.leaf.csr_pem.clone(),
            issuer_csr: self.issuing.csr_pem.clone(),
        }
    }

    /// Checks what the admin sent is this machine's and usable, and stores it with the keys
    /// (keeping the old files as `*.old` when `keep_old`). Returns the new serials.
    fn store(self, data_dir: &Path, machine: &str, got: EnrollResponse, keep_old: bool) -> anyhow::Result<Vec<String>> {
        let creds = Credentials {
            chain_pem: got.chain_pem,
            key_pem: self.leaf.key_pem,
            ca_pem: got.ca_pem,
            revoked: Revocations::default(),
        };
        let who = creds.identity().map_err(|e| anyhow::anyhow!("the admin sent an unusable certificate: {e}"))?;
        if who != Identity::Machine(machine.into()) {
            anyhow::bail!("the admin sent a certificate for {who}, not for machine {machine}");
        }
        MachineIssuer::from_pem(&got.issuer_pem, &self.issuing.key_pem)
            .map_err(|e| anyhow::anyhow!("the admin sent an unusable issuing certificate: {e}"))?;
        let dir = pki_dir(data_dir);
        if keep_old {
            for f in ["machine.pem", "machine.key", "issuer.pem", "issuer.key"] {
                let _ = std::fs::copy(dir.join(f), dir.join(format!("{f}.old")));
            }
        }
        creds.save(&dir, "machine").map_err(|e| anyhow::anyhow!("{e}"))?;
        files::write_atomic(&dir.join("issuer.key"), self.issuing.key_pem.as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", dir.join("issuer.key").display()))?;
        files::write_atomic(&dir.join("issuer.pem"), got.issuer_pem.as_bytes(), 0o644)
            .with_context(|| format!("cannot write {}", dir.join("issuer.pem").display()))?;
        Ok([&creds.chain_pem, &got.issuer_pem].iter().filter_map(|p| ferry_tls::serial_of(p).ok()).collect())
    }
}

/// The CA certificate as the server at `admin_url` presents it, trusting nothing yet (the
/// caller checks it), and the proof header for `nonce`.
async fn fetch_ca_unchecked(admin_url: &str, nonce: Option<&str>) -> anyhow::Result<(String, Option<String>)> {
    let admin = AdminClient::with_tls_config(admin_url, ferry_tls::trust_on_first_use_client_config(), ENROLL_TIMEOUT);
    admin.pki_ca(nonce).await.context("cannot fetch the domain CA certificate")
}

/// Fetches the CA certificate with a fresh nonce and accepts it only if the admin proved it
/// knows the domain secret (which is not sent).
async fn fetch_ca_proven_by_secret(admin_url: &str, secret: &str) -> anyhow::Result<String> {
    let nonce: String = rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect();
    let (pem, mac) = fetch_ca_unchecked(admin_url, Some(&nonce)).await?;
    if !ferry_tls::ca_mac_ok(secret, &nonce, &pem, mac.as_deref().unwrap_or("")) {
        anyhow::bail!(
            "the server at {admin_url} could not prove it knows this domain's secret: another domain's admin, or someone in between; check --admin-url and the secret"
        );
    }
    Ok(pem)
}

/// Fetches the CA certificate and accepts it only if its fingerprint is the token's.
async fn fetch_pinned_ca(admin_url: &str, pin: &str) -> anyhow::Result<String> {
    let (pem, _) = fetch_ca_unchecked(admin_url, None).await?;
    if ferry_tls::ca_pin(&pem) != pin {
        anyhow::bail!(
            "the CA certificate at {admin_url} does not match the enrollment token's fingerprint: a different domain, or someone in between; check --admin and the token"
        );
    }
    Ok(pem)
}

/// Keeps `revoked` in step with the admin's list (every few seconds while it answers).
pub async fn revocation_loop(tls: std::sync::Arc<NmTls>, admin_url: String) {
    let admin = AdminClient::with_tls(&admin_url, &tls.creds, REVOCATIONS_TIMEOUT);
    loop {
        match admin.revoked().await {
            Ok(list) => {
                let serials: BTreeSet<String> = list.into_iter().collect();
                if serials != tls.revoked.snapshot() {
                    if let Ok(bytes) = serde_json::to_vec(&serials) {
                        let _ = ferry_host::files::write_atomic(&tls.dir.join("revoked.json"), &bytes, 0o644);
                    }
                    tls.revoked.replace(serials);
                }
            }
            Err(e) => tracing::debug!("cannot fetch the revocation list: {e}"),
        }
        tokio::time::sleep(REVOCATIONS_EVERY).await;
    }
}
