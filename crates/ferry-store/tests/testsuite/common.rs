//! What the SQLite and PostgreSQL tests share: the call timeout, two handles of one store
//! for the conformance suite, requests and names, and reading errors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferry_core::lease::Lease;
use ferry_core::{Epoch, Incarnation, LeaseName, MachineName, ServerName};
use ferry_store::{AcquireRequest, LeaseStore, Renewal, Scan, ScanCursor, StoreError};

pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends each call to the next of two handles on one store (two handles on one SQLite file,
/// two pools on one PostgreSQL database), so every conformance check also runs across
/// connections, the way two processes share the table.
pub(crate) struct TwoHandles<S> {
    handles: [S; 2],
    next: AtomicUsize,
}

impl<S: LeaseStore> TwoHandles<S> {
    pub(crate) fn new(a: S, b: S) -> Self {
        TwoHandles { handles: [a, b], next: AtomicUsize::new(0) }
    }

    fn pick(&self) -> &S {
        &self.handles[self.next.fetch_add(1, Ordering::Relaxed) % 2]
    }
}

#[async_trait::async_trait]
impl<S: LeaseStore> LeaseStore for TwoHandles<S> {
    async fn acquire(&self, req: &AcquireRequest) -> ferry_store::Result<Lease> {
        self.pick().acquire(req).await
    }
    async fn handover(&self, req: &AcquireRequest, from: &Incarnation) -> ferry_store::Result<Lease> {
        self.pick().handover(req, from).await
    }
    async fn renew(
        &self,
        name: &LeaseName,
        incarnation: &Incarnation,
        epoch: Epoch,
        ttl: Duration,
    ) -> ferry_store::Result<Lease> {
        self.pick().renew(name, incarnation, epoch, ttl).await
    }
    async fn renew_many(&self, renewals: &[Renewal]) -> ferry_store::Result<Vec<ferry_store::Result<Lease>>> {
        self.pick().renew_many(renewals).await
    }
    async fn release(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch) -> ferry_store::Result<()> {
        self.pick().release(name, incarnation, epoch).await
    }
    async fn get(&self, name: &LeaseName) -> ferry_store::Result<Option<Lease>> {
        self.pick().get(name).await
    }
    async fn list(&self) -> ferry_store::Result<Vec<Lease>> {
        self.pick().list().await
    }
    async fn expired(&self) -> ferry_store::Result<Vec<Lease>> {
        self.pick().expired().await
    }
    async fn scan(&self, since: ScanCursor, tracked: &[LeaseName]) -> ferry_store::Result<Scan> {
        self.pick().scan(since, tracked).await
    }
    async fn next_expiry_ms(&self) -> ferry_store::Result<Option<i64>> {
        self.pick().next_expiry_ms().await
    }
    fn describe(&self) -> String {
        format!("{} (two handles)", self.handles[0].describe())
    }
}

/// The libtest name of the test `name` in `module` (its `module_path!()`), to run this
/// binary again as that one test: libtest's names start below the crate's.
pub(crate) fn test_name(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_, path)) => format!("{path}::{name}"),
        None => name.to_string(),
    }
}

pub(crate) fn server(name: &str) -> LeaseName {
    LeaseName::Server(ServerName::new(name).expect("name"))
}

pub(crate) fn request(name: &LeaseName, machine: &str, incarnation: &str) -> AcquireRequest {
    AcquireRequest {
        name: name.clone(),
        owner: ServerName::new("ms1").expect("name"),
        machine: MachineName::new(machine).expect("name"),
        incarnation: Incarnation(incarnation.to_string()),
        ttl: Duration::from_secs(60),
    }
}

pub(crate) fn lost_detail<T: std::fmt::Debug>(r: ferry_store::Result<T>) -> String {
    match r {
        Err(StoreError::Lost { detail, .. }) => detail,
        other => panic!("expected Lost, got {other:?}"),
    }
}

pub(crate) use ferry_store::chain;
