//! Typed names (STYLE habit 10): validated once at the edge, never a bare `String` or `u64`
//! across a crate boundary.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {name:?}: {why}")]
pub struct NameError {
    pub kind: &'static str,
    pub name: String,
    pub why: &'static str,
}

fn check_name(kind: &'static str, name: &str) -> Result<(), NameError> {
    let err = |why| NameError { kind, name: name.to_string(), why };
    if name.is_empty() {
        return Err(err("must not be empty"));
    }
    if name.len() > 63 {
        return Err(err("must be at most 63 characters"));
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(err("must start with a letter or digit"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        return Err(err("may hold only letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                check_name($kind, &name)?;
                Ok(Self(name))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad`, so `{:<12}` lines up tables.
                f.pad(&self.0)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        /// A name reads as the text it checked (`Option<Name>::as_deref()` gives the text).
        impl std::ops::Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
        impl PartialEq<String> for $ty {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }
    };
}

name_type!(
    /// A migratable server, e.g. `ms1`.
    ServerName,
    "server"
);
name_type!(
    /// A machine (a host with a Node Manager), e.g. `machine-b`.
    MachineName,
    "machine"
);
name_type!(
    /// A cluster, e.g. `cluster-1`.
    ClusterName,
    "cluster"
);
name_type!(
    /// An operator token's name, e.g. `ci` or `admin` (the token itself is a secret; its
    /// name is what errors, listings and the audit trail show).
    TokenName,
    "token"
);

/// The fencing token: bumped by the lease store on every change of owner or incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Unique per process start of a server (chosen by the Node Manager that starts it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Incarnation(pub String);

impl Incarnation {
    /// Builds an incarnation from 64 random bits the caller drew (the core draws nothing).
    pub fn from_random(bits: u64) -> Self {
        Self(format!("{bits:016x}"))
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// A row of the lease table is named `server/NAME` or `master/CLUSTER`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeaseName {
    Server(ServerName),
    Master(ClusterName),
}

impl LeaseName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        match s.split_once('/') {
            Some(("server", n)) => Ok(Self::Server(ServerName::new(n)?)),
            Some(("master", n)) => Ok(Self::Master(ClusterName::new(n)?)),
            _ => Err(NameError { kind: "lease", name: s.to_string(), why: "must be server/NAME or master/CLUSTER" }),
        }
    }
}

impl fmt::Display for LeaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server(n) => f.pad(&format!("server/{n}")),
            Self::Master(n) => f.pad(&format!("master/{n}")),
        }
    }
}

impl Serialize for LeaseName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LeaseName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        LeaseName::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(ServerName::new("ms1").is_ok());
        assert!(ServerName::new("").is_err());
        assert!(ServerName::new("-x").is_err());
        assert!(ServerName::new("a b").is_err());
        assert!(MachineName::new("machine-b").is_ok());
    }

    /// Tables (`ferry status`, `ferry machines`) align names, epochs and states by width.
    #[test]
    fn names_and_epochs_honour_the_width_of_a_table_column() {
        let ms1 = ServerName::new("ms1").unwrap();
        assert_eq!(
            format!("{ms1:<6}|{:>4}|{:<12}|", Epoch(7), LeaseName::Server(ms1.clone())),
            "ms1   |   7|server/ms1  |"
        );
        let state = crate::nodeman::ViewState::Running;
        assert_eq!(format!("{state:<9}|{:<7}|", crate::EventKind::Kill), "RUNNING  |kill   |");
    }

    #[test]
    fn lease_names_round_trip() {
        for s in ["server/ms1", "master/cluster-1"] {
            assert_eq!(LeaseName::parse(s).unwrap().to_string(), s);
        }
        assert!(LeaseName::parse("other/x").is_err());
    }
}
