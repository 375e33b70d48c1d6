//! Files the daemons share: the domain file (read and resolved against its directory), the
//! domain secret (0600), small state files written atomically, and where a user's `ferry`
//! finds its operator token for an Administration Server.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_core::domain::{ConfigError, ConfigErrors, Domain};

/// Reads, parses and validates a domain file; a relative `sqlite://` path is made absolute
/// against the file's directory, so every process agrees on one lease table.
pub fn load_domain(path: &Path) -> Result<Domain, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: name.clone(),
        errors: vec![ConfigError {
            field: String::new(),
            line: None,
            column: None,
            message: format!("cannot read the domain file: {e}"),
        }],
    })?;
    let mut domain = Domain::parse(&name, &text)?;
    resolve_paths(&mut domain, &domain_dir(path));
    Ok(domain)
}

/// The directory relative paths of a domain file are resolved against.
pub fn domain_dir(path: &Path) -> PathBuf {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

/// Makes a relative `sqlite://` data source absolute against `base`.
pub fn resolve_paths(domain: &mut Domain, base: &Path) {
    if let Some(rest) = domain.leasing.data_source.strip_prefix("sqlite://") {
        if !rest.starts_with('/') {
            domain.leasing.data_source = format!("sqlite://{}", base.join(rest).display());
        }
    }
}

/// Where a domain's secret lives: next to the domain file, in `.ferry/secret` (mode 0600),
/// so every process started with the same domain file finds it, whatever its data directory.
pub fn secret_path(domain_file: &Path) -> PathBuf {
    domain_dir(domain_file).join(".ferry").join("secret")
}

/// Writes `contents` to `path` atomically (temp file, fsync, rename) with `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

/// Writes a secret (a token) to `path` atomically with mode 0600, creating missing
/// directories with mode 0700, so it is never readable by others, not even for a moment.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    write_atomic(path, contents, 0o600)
}

/// Where `ferry` keeps a user's client files: `$FERRY_CONFIG_DIR`, else
/// `$HOME/.config/ferry`; `None` when neither is set.
pub fn client_config_dir() -> Option<PathBuf> {
    match std::env::var_os("FERRY_CONFIG_DIR") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".config").join("ferry")),
    }
}

/// The file in which a user's `ferry` finds its operator token for the Administration
/// Server at `host:port`: `CONFIG_DIR/admins/HOST_PORT/token`. The admin writes its initial
/// Admin token there (DESIGN's flow: `ferry admin` then `ferry status` on the same host).
pub fn admin_token_file(config_dir: &Path, host: &str, port: u16) -> PathBuf {
    let host: String = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':') { c } else { '_' })
        .collect();
    config_dir.join("admins").join(format!("{host}_{port}")).join("token")
}

/// Reads the domain secret at `path`, creating it (32 random bytes, hex, mode 0600) when
/// `create` and it does not exist yet.
pub fn secret(path: &Path, create: bool, random: impl FnOnce() -> [u8; 32]) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Ok(_) | Err(_) if create => {
            let hex: String = random().iter().map(|b| format!("{b:02x}")).collect();
            write_atomic(path, hex.as_bytes(), 0o600)?;
            Ok(hex)
        }
        Ok(_) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} is empty", path.display()))),
        Err(e) => Err(e),
    }
}

/// Waits up to `patience` for a secret file another process creates.
pub async fn wait_for_secret(path: &Path, patience: Duration) -> std::io::Result<String> {
    let mut waited = Duration::ZERO;
    loop {
        match secret(path, false, || [0; 32]) {
            Ok(s) => return Ok(s),
            Err(e) if waited >= patience => return Err(e),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                waited += Duration::from_millis(100);
            }
        }
    }
}

/// Compares two secrets in time independent of where they differ.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    bytes_equal(a.as_bytes(), b.as_bytes())
}

/// [`secrets_equal`] for bytes (hashes of secrets).
pub fn bytes_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
