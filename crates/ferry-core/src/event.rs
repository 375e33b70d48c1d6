//! The kinds of event in the audit trail (`ferry events`, `GET /api/v1/events`): a stable
//! word each, kebab-case on the wire and in `-o json`. A kind this version does not know (a
//! newer daemon's) is kept as [`EventKind::Other`], never refused: prefer adding a kind to
//! changing one.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! kinds {
    ($($variant:ident = $word:literal,)*) => {
        /// What happened. Each variant's word is what the event log stores.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind {
            $($variant,)*
            /// A kind this version does not know.
            Other(String),
        }

        impl EventKind {
            /// Every kind this version knows.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            /// The kind's word.
            pub fn as_str(&self) -> &str {
                match self {
                    $(EventKind::$variant => $word,)*
                    EventKind::Other(word) => word,
                }
            }

            /// The kind a word names ([`EventKind::Other`] if none this version knows).
            pub fn parse(word: &str) -> EventKind {
                match word {
                    $($word => EventKind::$variant,)*
                    other => EventKind::Other(other.to_string()),
                }
            }
        }
    };
}

kinds! {
    Addif = "addif",
    AddressInUse = "address-in-use",
    AdminStarted = "admin-started",
    Adopted = "adopted",
    AlreadyRunning = "already-running",
    Backoff = "backoff",
    ConfigCached = "config-cached",
    ConfigChanged = "config-changed",
    ConfigError = "config-error",
    ConfigImported = "config-imported",
    ConfigObtained = "config-obtained",
    ContactNm = "contact-nm",
    EnrollTokenCreated = "enroll-token-created",
    EnrollmentRefused = "enrollment-refused",
    Fenced = "fenced",
    GaveUp = "gave-up",
    Kill = "kill",
    LeaderElected = "leader-elected",
    LeaseAcquired = "lease-acquired",
    LeaseExpired = "lease-expired",
    LeaseObtained = "lease-obtained",
    LeaseReleaseFailed = "lease-release-failed",
    LeaseReleased = "lease-released",
    LeaseRemoved = "lease-removed",
    LeaseTableUnavailable = "lease-table-unavailable",
    Leftover = "leftover",
    MachineEnrolled = "machine-enrolled",
    MachineFailed = "machine-failed",
    MachineRevoked = "machine-revoked",
    MachineRotated = "machine-rotated",
    MasterAcquired = "master-acquired",
    MasterLost = "master-lost",
    MasterReleased = "master-released",
    Migrate = "migrate",
    MigrationStart = "migration-start",
    MigrationWait = "migration-wait",
    Mount = "mount",
    NmSilent = "nm-silent",
    NmStarted = "nm-started",
    NmStopped = "nm-stopped",
    NodemanagerStarted = "nodemanager-started",
    NotRestarting = "not-restarting",
    OperatorTokens = "operator-tokens",
    Removeif = "removeif",
    RemoveifFailed = "removeif-failed",
    RestartAfterFence = "restart-after-fence",
    RestartInPlace = "restart-in-place",
    Rollback = "rollback",
    ServerExited = "server-exited",
    ServerRecovered = "server-recovered",
    ServerRunning = "server-running",
    ServerStarted = "server-started",
    ServerStopping = "server-stopping",
    ServiceDied = "service-died",
    StaleMasterRefused = "stale-master-refused",
    StartComplete = "start-complete",
    StartFailed = "start-failed",
    StartQueued = "start-queued",
    StartTimeout = "start-timeout",
    Stop = "stop",
    StopTimeout = "stop-timeout",
    TokenCreated = "token-created",
    TokenRevoked = "token-revoked",
    Unhealthy = "unhealthy",
    Unmount = "unmount",
    UnmountFailed = "unmount-failed",
    VoterJoined = "voter-joined",
    VoterLeft = "voter-left",
    WaitingForLeaseTable = "waiting-for-lease-table",
    WitnessStarted = "witness-started",
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(EventKind::parse(&String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_unknown_words_are_kept() {
        for k in EventKind::ALL {
            assert_eq!(&EventKind::parse(k.as_str()), k);
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(json, format!("\"{k}\""));
            assert_eq!(&serde_json::from_str::<EventKind>(&json).unwrap(), k);
        }
        assert_eq!(EventKind::parse("fenced"), EventKind::Fenced);
        assert_eq!(EventKind::parse("from-the-future"), EventKind::Other("from-the-future".into()));
        let words: std::collections::BTreeSet<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(words.len(), EventKind::ALL.len(), "no word twice");
    }
}
