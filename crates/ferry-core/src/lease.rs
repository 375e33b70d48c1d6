//! A row of the lease table as every part of ferry sees it (DESIGN §3).

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, Incarnation, LeaseName, MachineName, ServerName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Held by `owner`'s `incarnation` until it expires by the store's clock.
    Held,
    /// Given back on a clean stop. The row stays so the epoch never goes backwards.
    Released,
}

/// A lease as read from the store, with the time left computed by the store's own clock
/// at the moment of the read (rule 1: nobody compares their clock with a stored timestamp).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub name: LeaseName,
    pub owner: Option<ServerName>,
    pub machine: Option<MachineName>,
    pub incarnation: Option<Incarnation>,
    pub epoch: Epoch,
    pub state: LeaseState,
    /// Milliseconds until expiry by the store's clock; zero or negative once expired.
    pub remaining_ms: i64,
    /// Milliseconds since the last acquisition or renewal, by the store's clock.
    pub since_renewal_ms: i64,
}

impl Lease {
    pub fn is_expired(&self) -> bool {
        self.state == LeaseState::Held && self.remaining_ms <= 0
    }
    pub fn is_live(&self) -> bool {
        self.state == LeaseState::Held && self.remaining_ms > 0
    }
    pub fn server(&self) -> Option<&ServerName> {
        match &self.name {
            LeaseName::Server(s) => Some(s),
            LeaseName::Master(_) => None,
        }
    }
}
