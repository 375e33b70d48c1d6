//! Why a Node Manager refuses a command, each with its HTTP status (`status`, the one place
//! that maps them) and, for refusals a caller may act on, a stable reason word
//! (`detail.reason` of the answer).

use crate::ids::{ClusterName, Epoch, MachineName, ServerName};
use crate::nodeman::supervisor::StaleMaster;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown server {server}: it is not defined in domain {domain}")]
    UnknownServer { server: ServerName, domain: String },
    #[error("machine {machine} is not defined in the domain")]
    MachineNotDefined { machine: MachineName },
    #[error(
        "server {server} may not run on {machine}: it is neither its home machine ({home}) nor one of its candidate machines"
    )]
    NotAllowedHere { server: ServerName, machine: MachineName, home: MachineName },
    #[error("the master of cluster {cluster} may not command {server}, which belongs to {belongs_to}")]
    WrongCluster { cluster: ClusterName, server: ServerName, belongs_to: ClusterName },
    #[error(transparent)]
    StaleMaster(#[from] StaleMaster),
    #[error(
        "{server} is running on {machine} (epoch {epoch}, lease {remaining_ms} ms left); not starting a second copy on {here}"
    )]
    RunningElsewhere { server: ServerName, machine: String, epoch: Epoch, remaining_ms: i64, here: MachineName },
    #[error("not starting {server} on {machine}: this machine cannot read the lease table: {detail}")]
    TableUnreadable { server: ServerName, machine: MachineName, detail: String },
    #[error("not starting {server} on {machine}: another host still answers for its floating IP {ip}: {detail}")]
    AddressInUse { server: ServerName, machine: MachineName, ip: std::net::Ipv4Addr, detail: String },
    #[error("not starting {server}: adding floating IP {ip} failed: {detail}")]
    PlumbFailed { server: ServerName, ip: std::net::Ipv4Addr, detail: String },
    #[error("not starting {server}: mount hook failed: {detail}")]
    MountFailed { server: ServerName, detail: String },
    #[error("could not start {server}: {detail}")]
    SpawnFailed { server: ServerName, detail: String },
}

/// `detail.reason` of [`Refusal::AddressInUse`] (also `ferry_api::REASON_ADDRESS_IN_USE`).
pub const REASON_ADDRESS_IN_USE: &str = "address-in-use";

impl Refusal {
    /// The HTTP status the Node Manager answers with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::UnknownServer { .. } => 404,
            Refusal::WrongCluster { .. } => 403,
            Refusal::MachineNotDefined { .. }
            | Refusal::NotAllowedHere { .. }
            | Refusal::StaleMaster(_)
            | Refusal::RunningElsewhere { .. }
            | Refusal::AddressInUse { .. } => 409,
            Refusal::PlumbFailed { .. } | Refusal::MountFailed { .. } => 502,
            Refusal::TableUnreadable { .. } => 503,
            Refusal::SpawnFailed { .. } => 500,
        }
    }

    /// The stable reason word of a refusal a caller may act on.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Refusal::AddressInUse { .. } => Some(REASON_ADDRESS_IN_USE),
            _ => None,
        }
    }
}
