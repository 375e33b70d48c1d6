//! Who may command this Node Manager (README, "Security"): the Administration Server as
//! itself, and a server only as the master of its cluster, while the lease table names it
//! holder of the master lease at the epoch it claims. Nobody else. Rule 5's epoch check
//! comes after, in ferry-core.

use ferry_api::Origin;
use ferry_core::{ClusterName, Epoch, LeaseName, ServerName};
use ferry_store::LeaseStore;
use ferry_tls::{Identity, Peer};

/// Why a caller may not command this Node Manager.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Denied {
    #[error("a client certificate of this domain is needed")]
    NoCertificate,
    #[error("the Administration Server's certificate cannot send a cluster master's command")]
    AdminAsMaster,
    #[error("the command claims to come from {claimed}, but the certificate is server {actual}'s")]
    WrongServer { claimed: ServerName, actual: String },
    #[error("cannot check that {server} is master of {cluster}: {detail}")]
    CannotCheck { server: String, cluster: ClusterName, detail: String },
    #[error("server {server} is not the current master of {cluster} at epoch {epoch}: the lease table names {owner} at epoch {held}{expired}")]
    NotMaster { server: String, cluster: ClusterName, epoch: Epoch, owner: String, held: Epoch, expired: &'static str },
    #[error("server {server} is not master of {cluster}: the cluster has no master lease")]
    NoMaster { server: String, cluster: ClusterName },
    #[error("server {0} cannot send the Administration Server's commands")]
    ServerAsAdmin(String),
    #[error("machine {0}'s certificate cannot command a Node Manager: only the admin and cluster masters can")]
    Machine(String),
}

impl Denied {
    pub fn status(&self) -> u16 {
        match self {
            Denied::NoCertificate => 401,
            Denied::CannotCheck { .. } => 503,
            _ => 403,
        }
    }
}

/// Checks the caller's certificate against the command's origin.
pub(crate) async fn authorize(store: &dyn LeaseStore, peer: Option<&Peer>, origin: &Origin) -> Result<(), Denied> {
    let Some(peer) = peer else { return Err(Denied::NoCertificate) };
    match (&peer.identity, origin) {
        (Identity::Admin, Origin::Admin) => Ok(()),
        (Identity::Admin, Origin::Master { .. }) => Err(Denied::AdminAsMaster),
        (Identity::Server(s), Origin::Master { cluster, epoch, server }) => {
            if *server != *s {
                return Err(Denied::WrongServer { claimed: server.clone(), actual: s.clone() });
            }
            let cannot = |e: ferry_store::StoreError| Denied::CannotCheck {
                server: s.clone(),
                cluster: cluster.clone(),
                detail: ferry_store::chain(&e),
            };
            match store.get(&LeaseName::Master(cluster.clone())).await.map_err(cannot)? {
                Some(l) if l.is_live() && l.owner.as_ref().is_some_and(|o| o == s) && l.epoch == *epoch => Ok(()),
                Some(l) => Err(Denied::NotMaster {
                    server: s.clone(),
                    cluster: cluster.clone(),
                    epoch: *epoch,
                    owner: l.owner.as_ref().map_or("nobody".to_string(), |o| o.to_string()),
                    held: l.epoch,
                    expired: if l.is_live() { "" } else { " (expired)" },
                }),
                None => Err(Denied::NoMaster { server: s.clone(), cluster: cluster.clone() }),
            }
        }
        (Identity::Server(s), Origin::Admin) => Err(Denied::ServerAsAdmin(s.clone())),
        (Identity::Machine(m), _) => Err(Denied::Machine(m.clone())),
    }
}
