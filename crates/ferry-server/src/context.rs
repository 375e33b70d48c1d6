//! What every part of a server's runtime shares: who it is ([`Ctx`]: name, machine,
//! incarnation, configuration, the lease table, its certificate, the channel to its Node
//! Manager) and the answers side tasks send back to the loop ([`Msg`]).

use ferry_core::EventKind;
use std::sync::Arc;

use ferry_api::Report;
use ferry_core::domain::{Domain, Server};
use ferry_core::lease::Lease;
use ferry_core::{Epoch, Incarnation, LeaseName, MachineName, ServerName};
use ferry_store::{AcquireRequest, LeaseStore, StoreError};
use tokio::sync::mpsc;

use crate::channel::Channel;

/// Answers that side tasks send back to the loop.
pub(crate) enum Msg {
    ServerAcquire(Result<Lease, StoreError>),
    ServerRenew(Result<Lease, StoreError>),
    MasterAcquire(Result<Lease, StoreError>),
    MasterRenew(Result<Lease, StoreError>),
    /// The expired (and tracked) leases, and the ms until the next lease expires.
    Scan(Result<ferry_store::Scan, StoreError>),
    NmResult {
        server: ServerName,
        machine: MachineName,
        result: ferry_core::master::CommandResult,
    },
    Health(Vec<(String, Result<(), String>)>),
    /// The Node Manager's answer on the local channel (a batched renewal).
    Reply(ferry_api::Reply),
    /// A renewal handed to the Node Manager got no answer in time.
    RenewTimeout {
        id: u64,
    },
    /// The master's reachability check of one Node Manager.
    NmHealth {
        machine: MachineName,
        ok: bool,
    },
}

/// What every part of the runtime shares.
pub(crate) struct Ctx {
    pub name: ServerName,
    pub machine: MachineName,
    pub incarnation: Incarnation,
    pub domain: Domain,
    pub server: Server,
    pub store: Arc<dyn LeaseStore>,
    /// This server's certificate from its Node Manager (mutual TLS as cluster master).
    pub credentials: Option<ferry_tls::Credentials>,
    pub tx: mpsc::Sender<Msg>,
    /// The local channel to this server's Node Manager.
    pub channel: Arc<Channel>,
}

impl Ctx {
    /// Sends one report to the Node Manager: a Node Manager that is gone does not stop the
    /// server, which keeps running on its own lease.
    pub fn report(&self, r: &Report) {
        self.channel.send(r);
    }

    pub fn event(&self, kind: EventKind, epoch: Option<Epoch>, message: String) {
        tracing::info!(kind = kind.as_str(), "{message}");
        self.report(&Report::Event { kind, message, epoch, server: None });
    }

    pub fn request(&self, name: LeaseName) -> AcquireRequest {
        AcquireRequest {
            name,
            owner: self.name.clone(),
            machine: self.machine.clone(),
            incarnation: self.incarnation.clone(),
            ttl: self.server.lease_ttl(),
        }
    }
}
