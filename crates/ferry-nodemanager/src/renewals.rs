//! The renewal batcher: the renewals of all this machine's servers go to the lease table as
//! one `renew_many` (one transaction) per window instead of one call per server. Each lease
//! is decided exactly as `renew` would, and each server computed its deadline from the
//! instant before it handed its renewal over (rule 2), so batching weakens nothing. It runs
//! beside the actor, never behind it: renewals are what keeps every lease alive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_store::LeaseStore;
use tokio::io::AsyncWriteExt;

/// Where a server's answers go (its half of the local channel).
pub(crate) type Writer = Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>;

/// How long the batcher waits after the first renewal for others to join it.
const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// The most renewals in one `renew_many`.
const BATCH_MAX: usize = 1_000;
/// How long an answer may take to write to a server.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(100);

struct Pending {
    id: u64,
    renewal: ferry_store::Renewal,
    reply: Writer,
}

#[derive(Clone)]
pub(crate) struct Batcher {
    queue: Arc<Mutex<Vec<Pending>>>,
    wake: Arc<tokio::sync::Notify>,
    /// Renewals sent and `renew_many` calls made (for `/nm/v1/health`).
    pub renewals: Arc<AtomicU64>,
    pub batches: Arc<AtomicU64>,
}

impl Batcher {
    /// A batcher sending to `store`, running for ever.
    pub fn start(store: Arc<dyn LeaseStore>) -> Batcher {
        let b =
            Batcher { queue: Arc::default(), wake: Arc::default(), renewals: Arc::default(), batches: Arc::default() };
        tokio::spawn(b.clone().run(store));
        b
    }

    pub fn push(&self, id: u64, renewal: ferry_store::Renewal, reply: Writer) {
        if let Ok(mut q) = self.queue.lock() {
            q.push(Pending { id, renewal, reply });
        }
        self.wake.notify_one();
    }

    async fn run(self, store: Arc<dyn LeaseStore>) {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(BATCH_WINDOW).await;
            loop {
                let batch: Vec<Pending> = match self.queue.lock() {
                    Ok(mut q) => {
                        let n = q.len().min(BATCH_MAX);
                        q.drain(..n).collect()
                    }
                    Err(_) => return,
                };
                if batch.is_empty() {
                    break;
                }
                let renewals: Vec<ferry_store::Renewal> = batch.iter().map(|p| p.renewal.clone()).collect();
                let result = store.renew_many(&renewals).await;
                self.renewals.fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.batches.fetch_add(1, Ordering::Relaxed);
                for (i, p) in batch.iter().enumerate() {
                    let (outcome, detail) = match &result {
                        Ok(outcomes) => match outcomes.get(i) {
                            Some(Ok(_)) => (ferry_api::RenewOutcome::Ok, String::new()),
                            Some(Err(e @ ferry_store::StoreError::Lost { .. })) => {
                                (ferry_api::RenewOutcome::Lost, e.to_string())
                            }
                            Some(Err(e)) => (ferry_api::RenewOutcome::Failed, ferry_store::chain(e)),
                            None => (ferry_api::RenewOutcome::Failed, "no outcome for this renewal".into()),
                        },
                        Err(e) => (ferry_api::RenewOutcome::Failed, ferry_store::chain(e)),
                    };
                    let reply = ferry_api::Reply::Renewed { id: p.id, outcome, detail };
                    if let Ok(mut line) = serde_json::to_vec(&reply) {
                        line.push(b'\n');
                        let mut w = p.reply.lock().await;
                        let _ = tokio::time::timeout(ANSWER_TIMEOUT, w.write_all(&line)).await;
                    }
                }
            }
        }
    }
}
