//! Consensus-leasing voters that talk HTTP on loopback, each with its own listener, as the
//! Node Managers will: for the tests and the benchmark of `ferry-consensus` over a real
//! transport (TCP, HTTP, JSON).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_consensus::http::{routes, HttpNet, HttpRoute};
use ferry_consensus::voter::Voter;
use ferry_consensus::{ConsensusStore, Storage, VoterTiming};

/// How long one RPC between voters may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(1);

/// `n` voters, ids 1..=n, each serving its routes on `127.0.0.1:PORT`.
pub struct HttpVoters {
    voters: BTreeMap<u64, (Arc<Voter>, tokio::task::JoinHandle<()>)>,
    pub urls: BTreeMap<u64, String>,
}

impl HttpVoters {
    /// Starts the voters (vote and log in memory) and makes them the membership.
    pub async fn start(n: u64, timing: VoterTiming) -> anyhow::Result<HttpVoters> {
        let mut voters = BTreeMap::new();
        let mut urls = BTreeMap::new();
        for id in 1..=n {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", listener.local_addr()?);
            let name = format!("consensus leasing at voter {id} over HTTP");
            let voter = Voter::start(id, HttpNet::new(RPC_TIMEOUT)?, timing, &name, &Storage::Memory).await?;
            let app = routes(Arc::clone(&voter));
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            voters.insert(id, (voter, server));
            urls.insert(id, url);
        }
        let first = voters.get(&1).map(|(v, _)| Arc::clone(v)).ok_or_else(|| anyhow::anyhow!("no voter 1"))?;
        first.initialize(&urls).await?;
        Ok(HttpVoters { voters, urls })
    }

    pub fn voter(&self, id: u64) -> Option<Arc<Voter>> {
        self.voters.get(&id).map(|(v, _)| Arc::clone(v))
    }

    /// The voter `id` believes leads.
    pub fn leader_seen_by(&self, id: u64) -> Option<u64> {
        self.voter(id).and_then(|v| v.current_leader())
    }

    /// Waits for a leader other than `not`, seen by a voter other than `not`, that answers.
    pub async fn serving_leader(&self, not: Option<u64>) -> anyhow::Result<u64> {
        let ids: Vec<u64> = self.urls.keys().copied().collect();
        super::serving_leader(&ids, not, |v| self.leader_seen_by(v), |l| self.store(l, super::PROBE_TIMEOUT)).await
    }

    /// The lease table as a process next to voter `home` sees it.
    pub fn store(&self, home: u64, call_timeout: Duration) -> anyhow::Result<ConsensusStore> {
        let voter = self.voter(home).ok_or_else(|| anyhow::anyhow!("no voter {home}"))?;
        let route = HttpRoute::new(voter, call_timeout)?;
        Ok(ConsensusStore::new(Arc::new(route), call_timeout))
    }

    /// Stops voter `id` as a crash would: its listener closes, its instance stops.
    pub async fn kill(&mut self, id: u64) {
        if let Some((voter, server)) = self.voters.remove(&id) {
            server.abort();
            let _ = voter.raft.shutdown().await;
        }
    }
}

impl Drop for HttpVoters {
    fn drop(&mut self) {
        let voters = std::mem::take(&mut self.voters);
        let runtime = tokio::runtime::Handle::try_current().ok();
        for (voter, server) in voters.into_values() {
            server.abort();
            if let Some(rt) = &runtime {
                rt.spawn(async move {
                    let _ = voter.raft.shutdown().await;
                });
            }
        }
    }
}
