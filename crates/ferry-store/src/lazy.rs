//! A lease store opened on first use, and opened again after a failed open. Daemons start
//! and keep running when their lease table is down or misconfigured at start-up; every
//! call answers with the store's error (naming the data source, without its password, and
//! the fix) until the table is reachable, and then simply works.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::lease::Lease;
use ferry_core::{Epoch, Incarnation, LeaseName};

use crate::{AcquireRequest, LeaseStore, Result};

pub struct LazyStore {
    data_source: String,
    call_timeout: Duration,
    inner: tokio::sync::Mutex<Option<Arc<dyn LeaseStore>>>,
}

impl LazyStore {
    pub fn new(data_source: &str, call_timeout: Duration) -> Self {
        LazyStore { data_source: data_source.to_string(), call_timeout, inner: tokio::sync::Mutex::new(None) }
    }

    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        let mut guard = self.inner.lock().await;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let s = crate::open_patient(&self.data_source, self.call_timeout).await?;
        *guard = Some(s.clone());
        Ok(s)
    }
}

/// A store that connects on first use (see [`LazyStore`]).
pub fn open_lazy(data_source: &str, call_timeout: Duration) -> Arc<dyn LeaseStore> {
    Arc::new(LazyStore::new(data_source, call_timeout))
}

#[async_trait::async_trait]
impl LeaseStore for LazyStore {
    async fn acquire(&self, req: &AcquireRequest) -> Result<Lease> {
        self.store().await?.acquire(req).await
    }
    async fn handover(&self, req: &AcquireRequest, from: &Incarnation) -> Result<Lease> {
        self.store().await?.handover(req, from).await
    }
    async fn renew(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch, ttl: Duration) -> Result<Lease> {
        self.store().await?.renew(name, incarnation, epoch, ttl).await
    }
    async fn release(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch) -> Result<()> {
        self.store().await?.release(name, incarnation, epoch).await
    }
    async fn get(&self, name: &LeaseName) -> Result<Option<Lease>> {
        self.store().await?.get(name).await
    }
    async fn list(&self) -> Result<Vec<Lease>> {
        self.store().await?.list().await
    }
    async fn expired(&self) -> Result<Vec<Lease>> {
        self.store().await?.expired().await
    }
    async fn next_expiry_ms(&self) -> Result<Option<i64>> {
        self.store().await?.next_expiry_ms().await
    }
    async fn scan(&self, since: crate::ScanCursor, tracked: &[LeaseName]) -> Result<crate::Scan> {
        self.store().await?.scan(since, tracked).await
    }
    async fn renew_many(&self, renewals: &[crate::Renewal]) -> Result<Vec<Result<Lease>>> {
        self.store().await?.renew_many(renewals).await
    }
    fn describe(&self) -> String {
        crate::postgres::redact(&self.data_source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_store_that_cannot_open_yet_answers_with_the_reason_then_works() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the database file should be: every call fails, naming the path.
        let path = dir.path().join("later").join("leases.db");
        std::fs::create_dir_all(&path).unwrap();
        let ds = format!("sqlite://{}", path.display());
        let store = open_lazy(&ds, Duration::from_secs(2));
        let err = store.list().await.unwrap_err().to_string();
        assert!(err.contains("later"), "{err}");
        // The operator fixes it; the same handle now works.
        std::fs::remove_dir(&path).unwrap();
        crate::init(&ds).await.unwrap();
        assert!(store.list().await.unwrap().is_empty());
    }
}
