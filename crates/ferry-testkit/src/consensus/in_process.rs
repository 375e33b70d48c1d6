//! Consensus-leasing voters inside one process, for tests and the benchmark: the
//! in-process network (`net.rs`), a [`Cluster`] of voters on it with partitions, kills,
//! restarts from disk, learners and replacement, and [`Route`] to its leader.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_consensus::call::{Answer, Call};
use ferry_consensus::openraft::async_runtime::WatchReceiver;
use ferry_consensus::openraft::{BasicNode, ChangeMembers};
use ferry_consensus::voter::Voter;
use ferry_consensus::{ConsensusStore, Route, Storage, VoterTiming};

use super::net::Router;

/// The voters of one cluster inside this process, and their network. The voters stop when
/// the last handle (cluster or store) is dropped.
#[derive(Clone)]
pub struct Cluster {
    pub router: Router,
    voters: Arc<Voters>,
    name: String,
    timing: VoterTiming,
    /// Where voter N keeps its vote and log (`DIR/voter-N`), or `None`: in memory.
    dir: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Voters(Mutex<BTreeMap<u64, Arc<Voter>>>);

impl Drop for Voters {
    fn drop(&mut self) {
        let voters = std::mem::take(self.0.get_mut().unwrap_or_else(|e| e.into_inner()));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            for v in voters.into_values() {
                rt.spawn(async move {
                    let _ = v.raft.shutdown().await;
                });
            }
        }
    }
}

impl Cluster {
    /// Starts `n` voters (ids 1..=n) with an empty log in memory and makes them the
    /// membership.
    pub async fn start(n: u64, timing: VoterTiming) -> anyhow::Result<Cluster> {
        Cluster::start_in(n, timing, None).await
    }

    /// [`Cluster::start`] with every voter's vote and log on disk under `dir`, so that
    /// [`Cluster::restart`] brings a voter back with them.
    pub async fn start_on_disk(n: u64, timing: VoterTiming, dir: &std::path::Path) -> anyhow::Result<Cluster> {
        Cluster::start_in(n, timing, Some(dir.to_path_buf())).await
    }

    /// `voters` voters (ids 1..=voters) and `learners` learners after them: a learner
    /// receives the log but neither votes nor counts for a quorum, which keeps the number
    /// of voters odd on an even number of machines.
    pub async fn start_with_learners(voters: u64, learners: u64, timing: VoterTiming) -> anyhow::Result<Cluster> {
        let cluster = Cluster::start_in(voters, timing, None).await?;
        for id in voters + 1..=voters + learners {
            cluster.boot(id).await?;
            cluster
                .on_leader(|raft| async move { raft.add_learner(id, BasicNode::new(id), true).await.map(drop) })
                .await?;
        }
        Ok(cluster)
    }

    /// Voter `lost`, whose vote and log are gone, comes back as `new`: a new identity with
    /// an empty log, added as a learner, caught up, then swapped for `lost` in one
    /// membership change. Never the old identity with an empty log: it could vote twice
    /// in a term and forget entries it acknowledged.
    pub async fn replace(&self, lost: u64, new: u64) -> anyhow::Result<()> {
        anyhow::ensure!(self.voter(new).is_none() && lost != new, "voter {new} already exists");
        self.boot(new).await?;
        self.on_leader(|raft| async move { raft.add_learner(new, BasicNode::new(new), true).await.map(drop) }).await?;
        self.on_leader(|raft| async move {
            let change = ChangeMembers::ReplaceAllVoters(
                raft.metrics()
                    .borrow_watched()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .filter(|&v| v != lost)
                    .chain([new])
                    .collect(),
            );
            raft.change_membership(change, false).await.map(drop)
        })
        .await
    }

    /// Runs a membership call on the current leader, trying again while leadership moves.
    async fn on_leader<F, Fut, E>(&self, call: F) -> anyhow::Result<()>
    where
        F: Fn(ferry_consensus::replicated::Raft) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: std::fmt::Display,
    {
        let mut last = String::from("no leader");
        for _ in 0..400 {
            if let Some(raft) = self.leader().and_then(|l| self.voter(l)).map(|v| v.raft.clone()) {
                match call(raft).await {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anyhow::bail!("a membership change did not finish within 10 s: {last}")
    }

    async fn start_in(n: u64, timing: VoterTiming, dir: Option<std::path::PathBuf>) -> anyhow::Result<Cluster> {
        let cluster = Cluster {
            router: Router::default(),
            voters: Arc::default(),
            name: format!("consensus leasing among {n} voters"),
            timing,
            dir,
        };
        for id in 1..=n {
            cluster.boot(id).await?;
        }
        let ids: BTreeMap<u64, String> = (1..=n).map(|v| (v, v.to_string())).collect();
        let first = cluster.voter(1).ok_or_else(|| anyhow::anyhow!("no voter 1"))?;
        first.initialize(&ids).await?;
        Ok(cluster)
    }

    fn storage(&self, id: u64) -> Storage {
        match &self.dir {
            Some(dir) => Storage::Disk(dir.join(format!("voter-{id}"))),
            None => Storage::Memory,
        }
    }

    /// Starts voter `id` with whatever its storage holds and connects it.
    async fn boot(&self, id: u64) -> anyhow::Result<()> {
        let voter = Voter::start(id, self.router.for_voter(id), self.timing, &self.name, &self.storage(id)).await?;
        self.router.add(id, voter.raft.clone());
        self.voters().insert(id, voter);
        Ok(())
    }

    /// Starts a killed voter again with its vote and log (on disk) or none (in memory).
    pub async fn restart(&self, id: u64) -> anyhow::Result<()> {
        self.boot(id).await
    }

    fn voters(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Voter>>> {
        self.voters.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn voter(&self, id: u64) -> Option<Arc<Voter>> {
        self.voters().get(&id).cloned()
    }

    /// The voter that leads, as far as any voter knows (a partitioned former leader may
    /// still believe it leads: see [`Cluster::leader_seen_by`]).
    pub fn leader(&self) -> Option<u64> {
        self.voters().values().find_map(|v| v.current_leader())
    }

    /// The voter that `voter` believes leads.
    pub fn leader_seen_by(&self, voter: u64) -> Option<u64> {
        self.voter(voter).and_then(|v| v.current_leader())
    }

    /// Waits for a leader other than `not`, seen by a voter other than `not`, that answers.
    pub async fn serving_leader(&self, not: Option<u64>) -> anyhow::Result<u64> {
        let ids: Vec<u64> = self.voters().keys().copied().collect();
        super::serving_leader(&ids, not, |v| self.leader_seen_by(v), |l| Ok(self.store(l, super::PROBE_TIMEOUT))).await
    }

    /// Stops a voter as a crash would: it answers nobody from now on.
    pub async fn kill(&self, id: u64) {
        self.router.remove(id);
        let voter = self.voters().remove(&id);
        if let Some(v) = voter {
            let _ = v.raft.shutdown().await;
        }
    }

    /// The lease store as a process next to voter `home` sees it.
    pub fn store(&self, home: u64, call_timeout: Duration) -> ConsensusStore {
        ConsensusStore::new(Arc::new(InProcess { cluster: self.clone(), home }), call_timeout)
    }
}

/// Voters in this process ([`Cluster`]).
struct InProcess {
    cluster: Cluster,
    home: u64,
}

#[async_trait]
impl Route for InProcess {
    fn leader(&self) -> Option<u64> {
        let leader = self.cluster.voter(self.home)?.current_leader()?;
        (leader == self.home || self.cluster.router.reach(self.home, leader).is_some()).then_some(leader)
    }

    async fn send(&self, leader: u64, call: &Call) -> Answer {
        match self.cluster.voter(leader) {
            Some(v) => v.answer(call).await,
            None => Answer::Retry("the leader is gone".into()),
        }
    }

    fn describe(&self) -> String {
        self.cluster.name.clone()
    }
}
