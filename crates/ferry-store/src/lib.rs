//! ferry-store: the lease table (DESIGN §3). The [`LeaseStore`] trait, its SQLite
//! implementation, and the conformance suite every implementation must pass.
//!
//! **Architecture Invariant:** expiry is decided by the store's own clock (rule 1). No method
//! takes a timestamp from the caller; every row read comes back with `remaining_ms` computed
//! by the store at the moment of the read.

use std::time::Duration;

use ferry_core::lease::Lease;
use ferry_core::{Epoch, Incarnation, LeaseName, MachineName, ServerName};

pub mod conformance;
pub mod sqlite;

/// What a holder asks for when it takes a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireRequest {
    pub name: LeaseName,
    pub owner: ServerName,
    pub machine: MachineName,
    pub incarnation: Incarnation,
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else holds a live lease.
    #[error("lease {name} is held by {owner} on {machine} (epoch {epoch}, {remaining_ms} ms left)")]
    Held { name: LeaseName, owner: String, machine: String, epoch: Epoch, remaining_ms: i64 },
    /// The caller's incarnation or epoch no longer holds the lease (renew, release, handover).
    #[error("lease {name} is no longer held by incarnation {incarnation}: {detail}")]
    Lost { name: LeaseName, incarnation: Incarnation, detail: String },
    /// The store could not be reached or failed; the call may succeed later.
    #[error("lease table at {data_source} is unavailable")]
    Unavailable {
        data_source: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The call did not finish within the store's call timeout (rule 7).
    #[error("lease table at {data_source} did not answer within {timeout_ms} ms")]
    Timeout { data_source: String, timeout_ms: u64 },
    /// The table is missing or of another version.
    #[error("lease table at {data_source}: {detail}; run `ferry leasing init --data-source {data_source}`")]
    Schema { data_source: String, detail: String },
}

impl StoreError {
    /// True when the answer says nothing about ownership (retry may help).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. } | StoreError::Timeout { .. })
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A lease table. Every method is atomic; every change of owner or incarnation bumps the
/// row's epoch (the fencing token), and epochs never go backwards, even across release.
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes the lease if it is absent, released, or expired by the store's clock. Taking a
    /// lease the same incarnation already holds renews it and keeps its epoch (a retried
    /// acquire whose first answer was lost).
    async fn acquire(&self, req: &AcquireRequest) -> Result<Lease>;

    /// Rule 4: takes the lease from `from`, an incarnation the caller's Node Manager saw
    /// exit, without waiting for it to expire. Fails with `Lost` if the row's incarnation is
    /// not `from` (someone else took it meanwhile); succeeds like `acquire` if the lease is
    /// free anyway.
    async fn handover(&self, req: &AcquireRequest, from: &Incarnation) -> Result<Lease>;

    /// Extends the lease by `ttl` from the store's now. Fails with `Lost` unless the row is
    /// held, unexpired, by `incarnation` at `epoch`.
    async fn renew(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch, ttl: Duration) -> Result<Lease>;

    /// Gives the lease back (marks the row released; the epoch stays). Fails with `Lost`
    /// unless held by `incarnation` at `epoch`.
    async fn release(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch) -> Result<()>;

    /// One lease, if its row exists.
    async fn get(&self, name: &LeaseName) -> Result<Option<Lease>>;

    /// Every row, ordered by name.
    async fn list(&self) -> Result<Vec<Lease>>;

    /// Held leases whose expiry has passed by the store's clock. Its cost follows the
    /// number of expired leases, not of all leases (an index on the expiry).
    async fn expired(&self) -> Result<Vec<Lease>>;

    /// The data source, without any password, for messages.
    fn describe(&self) -> String;
}
