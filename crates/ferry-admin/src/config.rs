//! The persisted domain configuration: `domain.json` in the data directory holds the current
//! version; every accepted version is also kept as `history/domain-vN.toml`. The domain file
//! is imported again, as a new version, whenever its content changes.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ferry_api::VersionedDomain;
use ferry_core::domain::Domain;
use ferry_host::files;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    version: u64,
    domain: Domain,
    /// Hash of the domain file's text when it was last imported.
    file_hash: u64,
}

pub(crate) struct ConfigStore {
    dir: PathBuf,
    file_hash: u64,
    pub current: VersionedDomain,
}

fn hash(text: &str) -> u64 {
    // FNV-1a: stable across builds, unlike `DefaultHasher`.
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

impl ConfigStore {
    /// Loads the stored configuration, importing the domain file if it is new or changed.
    pub fn open(dir: &Path, domain_file: &Path) -> anyhow::Result<(ConfigStore, Option<String>)> {
        // The domain file's problems stay a `ConfigErrors`, and come first (an unreadable file
        // is one of them), so `ferry admin` reports them as `ferry validate` does.
        let from_file = files::load_domain(domain_file)?;
        let text =
            std::fs::read_to_string(domain_file).with_context(|| format!("cannot read {}", domain_file.display()))?;
        let file_hash = hash(&text);
        let path = dir.join("domain.json");
        let stored: Option<Stored> = match std::fs::read(&path) {
            Ok(b) => Some(serde_json::from_slice(&b).with_context(|| {
                format!("{} is damaged; move it away to re-import the domain file", path.display())
            })?),
            Err(_) => None,
        };
        let mut note = None;
        let mut store = match stored {
            Some(s) if s.file_hash == file_hash => ConfigStore {
                dir: dir.into(),
                file_hash,
                current: VersionedDomain { version: s.version, domain: s.domain },
            },
            Some(s) => {
                note = Some(format!(
                    "{} changed since it was last read: imported as configuration version {}",
                    domain_file.display(),
                    s.version + 1
                ));
                ConfigStore {
                    dir: dir.into(),
                    file_hash,
                    current: VersionedDomain { version: s.version + 1, domain: from_file },
                }
            }
            None => {
                ConfigStore { dir: dir.into(), file_hash, current: VersionedDomain { version: 1, domain: from_file } }
            }
        };
        store.save()?;
        Ok((store, note))
    }

    fn save(&mut self) -> anyhow::Result<()> {
        let stored =
            Stored { version: self.current.version, domain: self.current.domain.clone(), file_hash: self.file_hash };
        files::write_atomic(&self.dir.join("domain.json"), &serde_json::to_vec_pretty(&stored)?, 0o600)?;
        let toml = toml::to_string_pretty(&self.current.domain)?;
        let hist = self.dir.join("history").join(format!("domain-v{}.toml", self.current.version));
        files::write_atomic(&hist, toml.as_bytes(), 0o600)?;
        Ok(())
    }

    /// Accepts a new configuration (already validated); returns the new version.
    pub fn update(&mut self, domain: Domain) -> anyhow::Result<u64> {
        let previous = self.current.clone();
        self.current = VersionedDomain { version: previous.version + 1, domain };
        if let Err(e) = self.save() {
            self.current = previous;
            return Err(e);
        }
        Ok(self.current.version)
    }
}
