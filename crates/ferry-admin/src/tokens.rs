//! Operator tokens: who may call the Administration Server's API, and in which role.
//!
//! A token is `ferry_` followed by 64 hex digits (32 random bytes). The admin keeps only its
//! SHA-256, with the token's name, role, creation time and optional expiry, in
//! `DATA/tokens.json` (mode 0600, written atomically); a presented token is hashed and the
//! hash compared in constant time. A revoked token's record stays (without any way back), so
//! a caller that still uses it hears which token was revoked, and when.
//!
//! Bootstrap (DESIGN's flow `ferry admin --domain d.toml` then `ferry status` on the same
//! host, as root or the same user): the first start makes an Admin token named `admin` and
//! writes it to `DATA/admin.token` and to the per-user client file
//! `$FERRY_CONFIG_DIR/admins/HOST_PORT/token`, both 0600. Later starts keep `tokens.json`
//! and write the client file again only while `DATA/admin.token` is still valid.
//!
//! Expiry compares the wall clock with a stored time, as a certificate's does; nothing about
//! leases does (DESIGN §3 rule 1 is untouched).

use std::path::{Path, PathBuf};

use anyhow::Context;
use ferry_api::{Role, TokenInfo, TokenState};
use ferry_core::TokenName;
use ferry_host::{clock, files};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every token starts with this, so a leaked one is recognisable (and scannable).
pub(crate) const TOKEN_PREFIX: &str = "ferry_";
/// The most tokens (revoked and expired ones included) the admin keeps.
const MAX_TOKENS: usize = 1_000;
/// The name of the Admin token the first start makes.
pub(crate) const INITIAL_TOKEN: &str = "admin";

/// One token as `tokens.json` keeps it: its hash, never the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    name: TokenName,
    role: Role,
    created_ms: u64,
    #[serde(default)]
    expires_ms: Option<u64>,
    #[serde(default)]
    revoked_ms: Option<u64>,
    /// Hex SHA-256 of the token.
    sha256: String,
}

impl Record {
    fn state(&self, now_ms: u64) -> TokenState {
        if self.revoked_ms.is_some() {
            TokenState::Revoked
        } else if self.expires_ms.is_some_and(|e| now_ms >= e) {
            TokenState::Expired
        } else {
            TokenState::Active
        }
    }

    fn info(&self, now_ms: u64) -> TokenInfo {
        TokenInfo {
            name: self.name.clone(),
            role: self.role,
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            revoked_ms: self.revoked_ms,
            state: self.state(now_ms),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    tokens: Vec<Record>,
}

/// Who made a request: the name and role of a valid operator token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    pub name: TokenName,
    pub role: Role,
}

/// Why a presented token is refused. Names the token when the admin knows it; never shows
/// the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Invalid {
    #[error("the token is not one this Administration Server issued (mistyped, or from another domain)")]
    Unknown,
    #[error("token '{name}' expired at {}", clock::format_wall(*at_ms))]
    Expired { name: TokenName, at_ms: u64 },
    #[error("token '{name}' was revoked at {}", clock::format_wall(*at_ms))]
    Revoked { name: TokenName, at_ms: u64 },
}

/// Why a token could not be made or revoked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("token '{0}' exists and is active: revoke it first (`ferry token revoke {0}`) or choose another name")]
    Exists(TokenName),
    #[error("no token named '{0}': `ferry token list` shows them")]
    NotFound(TokenName),
    #[error("token '{0}' is already revoked")]
    AlreadyRevoked(TokenName),
    #[error("token '{0}' is the last active Admin token: create another Admin token first, or nobody could manage tokens any more")]
    LastAdmin(TokenName),
    #[error("a token's lifetime must be at least 1 ms (omit --ttl for a token valid until revoked)")]
    BadTtl,
    #[error("the Administration Server keeps at most {MAX_TOKENS} tokens: revoke some")]
    Full,
    #[error("could not save the tokens to {path}: {reason}")]
    Persist { path: String, reason: String },
}

impl TokenError {
    pub fn status(&self) -> u16 {
        match self {
            TokenError::Exists(_) | TokenError::AlreadyRevoked(_) | TokenError::LastAdmin(_) | TokenError::Full => 409,
            TokenError::NotFound(_) => 404,
            TokenError::BadTtl => 400,
            TokenError::Persist { .. } => 500,
        }
    }
}

/// The tokens, persisted in `tokens.json`.
pub(crate) struct TokenStore {
    path: PathBuf,
    records: Vec<Record>,
}

fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A new token from 32 random bytes.
fn new_token(random: [u8; 32]) -> String {
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{TOKEN_PREFIX}{hex}")
}

impl TokenStore {
    /// Reads `path`; a missing file is an empty store.
    pub fn open(path: &Path) -> anyhow::Result<TokenStore> {
        let records = match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice::<Stored>(&bytes)
                    .with_context(|| {
                        format!(
                            "{} is damaged; move it away and restart to start over with a new `{INITIAL_TOKEN}` token",
                            path.display()
                        )
                    })?
                    .tokens
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(TokenStore { path: path.into(), records })
    }

    fn save(&self) -> Result<(), TokenError> {
        let persist = |reason: String| TokenError::Persist { path: self.path.display().to_string(), reason };
        let bytes =
            serde_json::to_vec_pretty(&Stored { tokens: self.records.clone() }).map_err(|e| persist(e.to_string()))?;
        files::write_atomic(&self.path, &bytes, 0o600).map_err(|e| persist(e.to_string()))
    }

    /// Makes a token and saves its hash; the token is returned once and kept nowhere.
    pub fn create(
        &mut self,
        name: TokenName,
        role: Role,
        ttl_ms: Option<u64>,
        now_ms: u64,
        random: [u8; 32],
    ) -> Result<(String, TokenInfo), TokenError> {
        if ttl_ms == Some(0) {
            return Err(TokenError::BadTtl);
        }
        let before = self.records.clone();
        if let Some(i) = self.records.iter().position(|r| r.name == name) {
            if self.records[i].state(now_ms) == TokenState::Active {
                return Err(TokenError::Exists(name));
            }
            // The name of a revoked or expired token may be used again.
            self.records.remove(i);
        }
        if self.records.len() >= MAX_TOKENS {
            self.records.retain(|r| r.state(now_ms) == TokenState::Active);
            if self.records.len() >= MAX_TOKENS {
                self.records = before;
                return Err(TokenError::Full);
            }
        }
        let token = new_token(random);
        let record = Record {
            name,
            role,
            created_ms: now_ms,
            expires_ms: ttl_ms.map(|t| now_ms.saturating_add(t)),
            revoked_ms: None,
            sha256: sha256_hex(&token),
        };
        let info = record.info(now_ms);
        self.records.push(record);
        if let Err(e) = self.save() {
            self.records = before;
            return Err(e);
        }
        Ok((token, info))
    }

    /// Revokes a token by name. The last active Admin token cannot go.
    pub fn revoke(&mut self, name: &TokenName, now_ms: u64) -> Result<TokenInfo, TokenError> {
        let i = self.records.iter().position(|r| &r.name == name).ok_or_else(|| TokenError::NotFound(name.clone()))?;
        if self.records[i].revoked_ms.is_some() {
            return Err(TokenError::AlreadyRevoked(name.clone()));
        }
        let is_active_admin = |r: &Record| r.role == Role::Admin && r.state(now_ms) == TokenState::Active;
        if is_active_admin(&self.records[i]) && self.records.iter().filter(|r| is_active_admin(r)).count() == 1 {
            return Err(TokenError::LastAdmin(name.clone()));
        }
        let before = self.records[i].clone();
        self.records[i].revoked_ms = Some(now_ms);
        if let Err(e) = self.save() {
            self.records[i] = before;
            return Err(e);
        }
        Ok(self.records[i].info(now_ms))
    }

    pub fn list(&self, now_ms: u64) -> Vec<TokenInfo> {
        self.records.iter().map(|r| r.info(now_ms)).collect()
    }

    /// Who holds `token`, if it is valid now. Hashes it and compares with every stored hash
    /// in constant time (no early exit), so timing says nothing about the stored tokens.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Caller, Invalid> {
        let hash = sha256_hex(token);
        let mut found = None;
        for r in &self.records {
            if files::secrets_equal(&hash, &r.sha256) {
                found = Some(r);
            }
        }
        let r = found.ok_or(Invalid::Unknown)?;
        if let Some(at_ms) = r.revoked_ms {
            return Err(Invalid::Revoked { name: r.name.clone(), at_ms });
        }
        match r.expires_ms {
            Some(at_ms) if now_ms >= at_ms => Err(Invalid::Expired { name: r.name.clone(), at_ms }),
            _ => Ok(Caller { name: r.name.clone(), role: r.role }),
        }
    }
}

/// Where the first start leaves the initial Admin token, for the 401 hint and the log.
#[derive(Debug, Clone)]
pub(crate) struct TokenFiles {
    /// `DATA/admin.token`.
    pub admin_token: PathBuf,
    /// The per-user client files (`CONFIG/admins/HOST_PORT/token`) for the listen address.
    pub client_files: Vec<PathBuf>,
}

impl TokenFiles {
    /// The files for an admin with data in `data_dir`, listening on `listen`, whose user's
    /// client files live in `config_dir`. An admin listening on every address is reached
    /// from its own host through loopback, so its client file is loopback's.
    pub fn new(data_dir: &Path, config_dir: Option<&Path>, listen: std::net::SocketAddr) -> TokenFiles {
        let ip = listen.ip();
        let host = match ip {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => "::1".to_string(),
            _ => ip.to_string(),
        };
        TokenFiles {
            admin_token: data_dir.join("admin.token"),
            client_files: config_dir.map(|d| files::admin_token_file(d, &host, listen.port())).into_iter().collect(),
        }
    }

    /// How a caller on the admin's own host without a token gets one (for the 401 answer):
    /// paths, never a token. A remote caller gets [`REMOTE_HINT`], which names no path.
    pub fn hint(&self) -> String {
        let mut where_ = self.client_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
        where_.push(self.admin_token.display().to_string());
        format!(
            "an Admin creates tokens with `ferry token create --name NAME --role monitor|operator|admin`; on the Administration Server's host, `ferry` finds the initial Admin token '{INITIAL_TOKEN}' in {} (readable by the user running the admin), or pass a token file with --token-file or FERRY_TOKEN_FILE",
            where_.join(" or ")
        )
    }
}

/// How a caller on another host gets a token (for the 401 answer): in words, without the
/// paths of the admin's host.
pub(crate) const REMOTE_HINT: &str = "an Admin creates tokens with `ferry token create --name NAME --role monitor|operator|admin` on the Administration Server's host, where the initial Admin token is in the admin's data directory as admin.token: ask its operator for a token, and pass it with --token-file or FERRY_TOKEN_FILE";

/// Opens the token store in `data_dir`, making the initial Admin token on the first start
/// and (re)writing the client files while it is valid. Returns the store and what happened,
/// for the event log (paths and names only).
pub(crate) fn bootstrap(
    data_dir: &Path,
    token_files: &TokenFiles,
    now_ms: u64,
    random: impl FnOnce() -> [u8; 32],
) -> anyhow::Result<(TokenStore, Vec<String>)> {
    let path = data_dir.join("tokens.json");
    let mut notes = Vec::new();
    let first = !path.exists();
    let mut store = TokenStore::open(&path)?;
    let token = if first {
        let name = TokenName::new(INITIAL_TOKEN).context("the initial token's name")?;
        let (token, _) = store.create(name, Role::Admin, None, now_ms, random()).map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Err(e) = files::write_private(&token_files.admin_token, token.as_bytes()) {
            // Without its file the token is lost: forget it, so the next start makes another.
            let _ = std::fs::remove_file(&path);
            return Err(e).with_context(|| {
                format!("cannot write the initial Admin token to {}", token_files.admin_token.display())
            });
        }
        notes.push(format!("made the initial Admin token '{INITIAL_TOKEN}' in {}", token_files.admin_token.display()));
        Some(token)
    } else {
        match std::fs::read_to_string(&token_files.admin_token) {
            Ok(t) => match store.verify(t.trim(), now_ms) {
                Ok(_) => Some(t.trim().to_string()),
                Err(e) => {
                    notes.push(format!(
                        "{} no longer holds a valid token ({e}): the client files are not refreshed; use another Admin token, or to start over stop the Administration Server, move {} away and start it again",
                        token_files.admin_token.display(),
                        path.display()
                    ));
                    None
                }
            },
            Err(e) => {
                notes.push(format!(
                    "cannot read {} ({e}): the client files are not refreshed",
                    token_files.admin_token.display()
                ));
                None
            }
        }
    };
    if let Some(token) = token {
        for f in &token_files.client_files {
            match files::write_private(f, token.as_bytes()) {
                Ok(()) if first => notes.push(format!("wrote the '{INITIAL_TOKEN}' token for this host's operators to {}", f.display())),
                Ok(()) => {}
                Err(e) => notes.push(format!(
                    "could not write the client token file {} ({e}); operators on this host can use `ferry --token-file {}`",
                    f.display(),
                    token_files.admin_token.display()
                )),
            }
        }
    }
    Ok((store, notes))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn name(s: &str) -> TokenName {
        TokenName::new(s).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn store(dir: &Path) -> TokenStore {
        TokenStore::open(&dir.join("tokens.json")).unwrap()
    }

    #[test]
    fn tokens_are_kept_as_hashes_and_verify_by_role() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path());
        let (t, info) = s.create(name("ci"), Role::Operator, None, 1_000, [7; 32]).unwrap();
        assert!(t.starts_with(TOKEN_PREFIX) && t.len() == TOKEN_PREFIX.len() + 64, "{}", t.len());
        assert_eq!((info.role, info.state, info.expires_ms), (Role::Operator, TokenState::Active, None));
        assert_eq!(s.verify(&t, 2_000), Ok(Caller { name: name("ci"), role: Role::Operator }));
        assert_eq!(s.verify("ferry_00", 2_000), Err(Invalid::Unknown));
        assert_eq!(s.verify("", 2_000), Err(Invalid::Unknown));
        let file = dir.path().join("tokens.json");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&t) && !text.contains(&t[TOKEN_PREFIX.len()..]), "the token itself is stored");
        assert!(text.contains(&sha256_hex(&t)));
        assert_eq!(mode(&file), 0o600);
        // A restart reads the same tokens.
        let again = store(dir.path());
        assert_eq!(again.verify(&t, 3_000).unwrap().name, name("ci"));
    }

    #[test]
    fn expired_and_revoked_tokens_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path());
        let (admin, _) = s.create(name("admin"), Role::Admin, None, 0, [1; 32]).unwrap();
        let (short, info) = s.create(name("short"), Role::Monitor, Some(500), 1_000, [2; 32]).unwrap();
        assert_eq!(info.expires_ms, Some(1_500));
        assert!(s.verify(&short, 1_499).is_ok());
        assert_eq!(s.verify(&short, 1_500), Err(Invalid::Expired { name: name("short"), at_ms: 1_500 }));
        assert_eq!(s.list(2_000).iter().find(|i| i.name == name("short")).unwrap().state, TokenState::Expired);
        let (ci, _) = s.create(name("ci"), Role::Operator, None, 0, [3; 32]).unwrap();
        let info = s.revoke(&name("ci"), 5_000).unwrap();
        assert_eq!((info.state, info.revoked_ms), (TokenState::Revoked, Some(5_000)));
        let e = s.verify(&ci, 6_000).unwrap_err();
        assert_eq!(e, Invalid::Revoked { name: name("ci"), at_ms: 5_000 });
        assert!(e.to_string().starts_with("token 'ci' was revoked at 1970-01-01T00:00:05"), "{e}");
        assert!(matches!(s.revoke(&name("ci"), 7_000), Err(TokenError::AlreadyRevoked(_))));
        assert!(matches!(s.revoke(&name("nosuch"), 7_000), Err(TokenError::NotFound(_))));
        // Revocation survives a restart.
        assert!(matches!(store(dir.path()).verify(&ci, 8_000), Err(Invalid::Revoked { .. })));
        assert!(s.verify(&admin, 8_000).is_ok());
    }

    #[test]
    fn names_are_unique_among_active_tokens_and_the_last_admin_stays() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path());
        let (old, _) = s.create(name("admin"), Role::Admin, None, 0, [1; 32]).unwrap();
        let e = s.create(name("admin"), Role::Monitor, None, 0, [2; 32]).unwrap_err();
        assert_eq!(e.status(), 409);
        assert!(e.to_string().contains("ferry token revoke admin"), "{e}");
        let e = s.revoke(&name("admin"), 1).unwrap_err();
        assert!(matches!(e, TokenError::LastAdmin(_)), "{e}");
        assert!(matches!(s.create(name("x"), Role::Monitor, Some(0), 0, [3; 32]), Err(TokenError::BadTtl)));
        // With a second Admin token, the first may go; its name may then be used again.
        s.create(name("root2"), Role::Admin, None, 0, [4; 32]).unwrap();
        s.revoke(&name("admin"), 10).unwrap();
        let (new, info) = s.create(name("admin"), Role::Monitor, None, 20, [5; 32]).unwrap();
        assert_eq!(info.role, Role::Monitor);
        assert_eq!(s.verify(&old, 30), Err(Invalid::Unknown), "the old token is gone with its record");
        assert_eq!(s.verify(&new, 30).unwrap().role, Role::Monitor);
        // An expired Admin token does not count as the last one.
        let mut s = store(tempfile::tempdir().unwrap().path());
        s.create(name("a"), Role::Admin, Some(10), 0, [6; 32]).unwrap();
        s.create(name("b"), Role::Admin, None, 0, [7; 32]).unwrap();
        assert!(matches!(s.revoke(&name("b"), 100), Err(TokenError::LastAdmin(_))));
    }

    #[test]
    fn the_first_start_makes_an_admin_token_and_later_starts_keep_it() {
        let data = tempfile::tempdir().unwrap();
        let config = tempfile::tempdir().unwrap();
        let listen: std::net::SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let files = TokenFiles::new(data.path(), Some(config.path()), listen);
        let client = config.path().join("admins/127.0.0.1_7001/token");
        assert_eq!(files.client_files, vec![client.clone()]);

        let (s, notes) = bootstrap(data.path(), &files, 1_000, || [9; 32]).unwrap();
        let token = std::fs::read_to_string(data.path().join("admin.token")).unwrap();
        assert_eq!(std::fs::read_to_string(&client).unwrap(), token);
        assert_eq!(s.verify(&token, 2_000), Ok(Caller { name: name("admin"), role: Role::Admin }));
        assert_eq!(mode(&data.path().join("admin.token")), 0o600);
        assert_eq!(mode(&client), 0o600);
        assert_eq!(mode(client.parent().unwrap()), 0o700);
        assert!(notes.iter().all(|n| !n.contains(&token)), "{notes:?}");
        assert!(!files.hint().contains(&token));
        assert!(files.hint().contains(&client.display().to_string()));

        // A later start keeps the tokens (no new one) and writes a lost client file again.
        std::fs::remove_file(&client).unwrap();
        let (mut s, _) = bootstrap(data.path(), &files, 3_000, || panic!("no new token on a later start")).unwrap();
        assert_eq!(std::fs::read_to_string(&client).unwrap(), token);

        // Once the admin token is revoked, the client file is left alone.
        s.create(name("other"), Role::Admin, None, 4_000, [8; 32]).unwrap();
        s.revoke(&name("admin"), 5_000).unwrap();
        std::fs::remove_file(&client).unwrap();
        let (_, notes) = bootstrap(data.path(), &files, 6_000, || panic!("no new token")).unwrap();
        assert!(!client.exists());
        assert!(notes.iter().any(|n| n.contains("no longer holds a valid token")), "{notes:?}");
    }

    #[test]
    fn an_admin_listening_everywhere_leaves_its_token_for_loopback() {
        let files = TokenFiles::new(Path::new("/d"), Some(Path::new("/c")), "0.0.0.0:7001".parse().unwrap());
        assert_eq!(files.client_files, vec![PathBuf::from("/c/admins/127.0.0.1_7001/token")]);
        let files = TokenFiles::new(Path::new("/d"), Some(Path::new("/c")), "[::]:7002".parse().unwrap());
        assert_eq!(files.client_files, vec![PathBuf::from("/c/admins/::1_7002/token")]);
        let files = TokenFiles::new(Path::new("/d"), None, "10.0.0.1:7001".parse().unwrap());
        assert!(files.client_files.is_empty());
        assert!(files.hint().contains("/d/admin.token"));
    }
}
