//! The voters' network inside one process: every RPC is a direct call on the target's
//! openraft instance, unless a test cut the link (a partition), in which case it fails as an
//! unreachable peer would. The conformance suite and the fault tests use it; the daemons
//! speak the same RPCs over the Node Managers' mutually authenticated HTTPS.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use ferry_consensus::openraft::alias::{SnapshotOf, VoteOf};
use ferry_consensus::openraft::error::{RPCError, RemoteError, ReplicationClosed, StreamingError, Unreachable};
use ferry_consensus::openraft::network::v2::RaftNetworkV2;
use ferry_consensus::openraft::network::RPCOption;
use ferry_consensus::openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use ferry_consensus::openraft::{BasicNode, OptionalSend, RaftNetworkFactory};

use ferry_consensus::replicated::{Config, Raft};

#[derive(Default)]
struct Links {
    voters: BTreeMap<u64, Raft>,
    /// Directed links that are cut: (from, to).
    cut: BTreeSet<(u64, u64)>,
}

/// Who reaches whom.
#[derive(Clone, Default)]
pub struct Router {
    links: Arc<Mutex<Links>>,
}

impl Router {
    fn links(&self) -> std::sync::MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, id: u64, raft: Raft) {
        self.links().voters.insert(id, raft);
    }

    /// The voter is gone (its process died): nobody reaches it.
    pub fn remove(&self, id: u64) -> Option<Raft> {
        self.links().voters.remove(&id)
    }

    /// Cuts every link between the two sides, both ways.
    pub fn partition(&self, side: &[u64], other: &[u64]) {
        let mut links = self.links();
        for &a in side {
            for &b in other {
                links.cut.insert((a, b));
                links.cut.insert((b, a));
            }
        }
    }

    /// Cuts every link of `id`.
    pub fn isolate(&self, id: u64) {
        let others: Vec<u64> = self.links().voters.keys().copied().filter(|&v| v != id).collect();
        self.partition(&[id], &others);
    }

    pub fn heal(&self) {
        self.links().cut.clear();
    }

    /// The target's instance, if `from` reaches it.
    pub fn reach(&self, from: u64, to: u64) -> Option<Raft> {
        let links = self.links();
        if links.cut.contains(&(from, to)) {
            return None;
        }
        links.voters.get(&to).cloned()
    }

    /// A network for the voter `id`.
    pub fn for_voter(&self, id: u64) -> Net {
        Net { router: self.clone(), from: id }
    }
}

/// One voter's side of the [`Router`].
#[derive(Clone)]
pub struct Net {
    router: Router,
    from: u64,
}

/// A connection from one voter to another.
pub struct Peer {
    router: Router,
    from: u64,
    to: u64,
}

impl Peer {
    fn target(&self) -> Result<Raft, Unreachable<Config>> {
        self.router.reach(self.from, self.to).ok_or_else(|| {
            let e = io::Error::new(io::ErrorKind::NotConnected, format!("voter {} is unreachable", self.to));
            Unreachable::new(&e)
        })
    }
}

impl RaftNetworkFactory<Config> for Net {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Peer {
        Peer { router: self.router.clone(), from: self.from, to: target }
    }
}

impl RaftNetworkV2<Config> for Peer {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Config>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<Config>, RPCError<Config>> {
        let target = self.target()?;
        target.append_entries(rpc).await.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<Config>,
        _option: RPCOption,
    ) -> Result<VoteResponse<Config>, RPCError<Config>> {
        let target = self.target()?;
        target.vote(rpc).await.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<Config>,
        _option: RPCOption,
    ) -> Result<VoteResponse<Config>, RPCError<Config>> {
        let target = self.target()?;
        target.pre_vote(rpc).await.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<Config>,
        snapshot: SnapshotOf<Config, Cursor<Vec<u8>>>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<Config>, StreamingError<Config>> {
        let target = self.target()?;
        target
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&RemoteError::<Config, _>::new(self.to, e))))
    }
}
