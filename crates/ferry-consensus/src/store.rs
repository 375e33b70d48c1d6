//! [`ConsensusStore`]: the `LeaseStore` of consensus leasing, as seen from one voter. Every
//! call goes to the voter its home voter believes leads (the seed: "all the servers renew
//! their leases by contacting the cluster leader"), and is tried again, on whichever voter
//! leads then, until its call timeout: while a new leader is elected and waits out its
//! predecessor, calls wait; they never see a lease expire early.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::lease::{Lease, LeaseState};
use ferry_core::{Epoch, Incarnation, LeaseName};
use ferry_store::{AcquireRequest, LeaseStore, Renewal, Result, StoreError};

use crate::call::{Answer, Call};

/// How a store reaches the leader from its home voter: in this process, or over HTTP.
#[async_trait]
pub trait Route: Send + Sync + 'static {
    /// The voter the home voter believes leads, if it can be reached.
    fn leader(&self) -> Option<u64>;
    /// Runs `call` on voter `leader`.
    async fn send(&self, leader: u64, call: &Call) -> Answer;
    fn describe(&self) -> String;
}

/// The lease table of consensus leasing, reached through one voter.
#[derive(Clone)]
pub struct ConsensusStore {
    route: Arc<dyn Route>,
    call_timeout: Duration,
}

/// How long a call waits before it looks for the leader again.
const RETRY: Duration = Duration::from_millis(5);

impl ConsensusStore {
    /// A store that reaches the leader along `route`.
    pub fn new(route: Arc<dyn Route>, call_timeout: Duration) -> ConsensusStore {
        ConsensusStore { route, call_timeout }
    }

    /// Runs `call` on the serving leader, trying again until the call timeout.
    async fn on_leader(&self, call: Call) -> Result<Answer> {
        let attempt = async {
            loop {
                let why = match self.route.leader() {
                    Some(leader) => match self.route.send(leader, &call).await {
                        Answer::Retry(why) => why,
                        Answer::Held { name, owner, machine, epoch, remaining_ms } => {
                            return Err(StoreError::Held { name, owner, machine, epoch, remaining_ms })
                        }
                        Answer::Lost { name, incarnation, detail } => {
                            return Err(StoreError::Lost { name, incarnation, detail })
                        }
                        Answer::Failed(why) => {
                            return Err(StoreError::Unavailable { data_source: self.describe(), source: why.into() })
                        }
                        answer => return Ok(answer),
                    },
                    None => "no cluster leader is reachable".into(),
                };
                tracing::trace!(why, "consensus lease call waits");
                tokio::time::sleep(RETRY).await;
            }
        };
        tokio::time::timeout(self.call_timeout, attempt).await.unwrap_or_else(|_| {
            Err(StoreError::Timeout { data_source: self.describe(), timeout_ms: self.call_timeout.as_millis() as u64 })
        })
    }

    fn unexpected(&self, answer: Answer) -> StoreError {
        StoreError::Unavailable { data_source: self.describe(), source: format!("unexpected answer {answer:?}").into() }
    }

    async fn lease(&self, call: Call) -> Result<Lease> {
        match self.on_leader(call).await? {
            Answer::Lease(l) => Ok(l),
            other => Err(self.unexpected(other)),
        }
    }
}

#[async_trait]
impl LeaseStore for ConsensusStore {
    async fn acquire(&self, req: &AcquireRequest) -> Result<Lease> {
        self.lease(Call::Acquire(req.clone())).await
    }

    async fn handover(&self, req: &AcquireRequest, from: &Incarnation) -> Result<Lease> {
        self.lease(Call::Handover { req: req.clone(), from: from.clone() }).await
    }

    async fn renew(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch, ttl: Duration) -> Result<Lease> {
        self.lease(Call::Renew { name: name.clone(), incarnation: incarnation.clone(), epoch, ttl }).await
    }

    async fn renew_many(&self, renewals: &[Renewal]) -> Result<Vec<Result<Lease>>> {
        match self.on_leader(Call::RenewMany(renewals.to_vec())).await? {
            Answer::Renewed(each) if each.len() == renewals.len() => Ok(each
                .into_iter()
                .map(|a| match a {
                    Answer::Lease(l) => Ok(l),
                    Answer::Lost { name, incarnation, detail } => Err(StoreError::Lost { name, incarnation, detail }),
                    other => Err(self.unexpected(other)),
                })
                .collect()),
            other => Err(self.unexpected(other)),
        }
    }

    async fn release(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch) -> Result<()> {
        match self.on_leader(Call::Release { name: name.clone(), incarnation: incarnation.clone(), epoch }).await? {
            Answer::Done => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    async fn get(&self, name: &LeaseName) -> Result<Option<Lease>> {
        let all = self.list().await?;
        Ok(all.into_iter().find(|l| &l.name == name))
    }

    async fn list(&self) -> Result<Vec<Lease>> {
        match self.on_leader(Call::List).await? {
            Answer::Leases(all) => Ok(all),
            other => Err(self.unexpected(other)),
        }
    }

    async fn expired(&self) -> Result<Vec<Lease>> {
        let mut expired: Vec<Lease> = self.list().await?.into_iter().filter(Lease::is_expired).collect();
        // Oldest expiry first: the most negative time left.
        expired.sort_by_key(|l| l.remaining_ms);
        Ok(expired)
    }

    async fn next_expiry_ms(&self) -> Result<Option<i64>> {
        let all = self.list().await?;
        Ok(all.iter().filter(|l| l.state == LeaseState::Held && l.remaining_ms > 0).map(|l| l.remaining_ms).min())
    }

    fn describe(&self) -> String {
        self.route.describe()
    }
}
