//! The voters' protocol over HTTP (JSON): openraft's RPCs under `/raft/v1/` and forwarded
//! lease calls under `/lease/v1/call`, served by [`routes`] and sent by [`HttpNet`] and
//! [`HttpRoute`]. Plain HTTP here; the Node Managers will serve the same routes on their
//! mutually authenticated HTTPS listener.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::routing::post;
use axum::Json;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{BasicNode, OptionalSend, RaftNetworkFactory};
use serde::{Deserialize, Serialize};

use crate::call::{Answer, Call};
use crate::replicated::Config;
use crate::store::Route;
use crate::voter::Voter;

/// What `/raft/v1/snapshot` carries.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    vote: VoteOf<Config>,
    meta: SnapshotMetaOf<Config>,
    data: Vec<u8>,
}

/// An RPC's answer on the wire: the target's own error in words when it failed.
type Wire<T> = Result<T, String>;

/// The routes a voter serves.
pub fn routes(voter: Arc<Voter>) -> axum::Router {
    axum::Router::new()
        .route("/raft/v1/append", post(append))
        .route("/raft/v1/vote", post(vote))
        .route("/raft/v1/pre-vote", post(pre_vote))
        .route("/raft/v1/snapshot", post(snapshot))
        .route("/lease/v1/call", post(lease_call))
        .with_state(voter)
}

async fn append(
    State(v): State<Arc<Voter>>,
    Json(rpc): Json<AppendEntriesRequest<Config>>,
) -> Json<Wire<AppendEntriesResponse<Config>>> {
    Json(v.raft.append_entries(rpc).await.map_err(|e| e.to_string()))
}

async fn vote(State(v): State<Arc<Voter>>, Json(rpc): Json<VoteRequest<Config>>) -> Json<Wire<VoteResponse<Config>>> {
    Json(v.raft.vote(rpc).await.map_err(|e| e.to_string()))
}

async fn pre_vote(
    State(v): State<Arc<Voter>>,
    Json(rpc): Json<VoteRequest<Config>>,
) -> Json<Wire<VoteResponse<Config>>> {
    Json(v.raft.pre_vote(rpc).await.map_err(|e| e.to_string()))
}

async fn snapshot(State(v): State<Arc<Voter>>, Json(body): Json<SnapshotBody>) -> Json<Wire<SnapshotResponse<Config>>> {
    let snapshot = SnapshotOf::<Config, Cursor<Vec<u8>>> { meta: body.meta, snapshot: Cursor::new(body.data) };
    Json(v.raft.install_full_snapshot(body.vote, snapshot).await.map_err(|e| e.to_string()))
}

async fn lease_call(State(v): State<Arc<Voter>>, Json(call): Json<Call>) -> Json<Answer> {
    Json(v.answer(&call).await)
}

/// openraft's network over HTTP; a voter's address is its node's `addr` (`http://IP:PORT`).
#[derive(Clone)]
pub struct HttpNet {
    client: reqwest::Client,
}

impl HttpNet {
    pub fn new(timeout: Duration) -> anyhow::Result<HttpNet> {
        ferry_tls::install_crypto_provider();
        Ok(HttpNet { client: reqwest::Client::builder().timeout(timeout).build()? })
    }
}

pub struct HttpPeer {
    client: reqwest::Client,
    url: String,
}

impl HttpPeer {
    async fn post<B: Serialize, T: serde::de::DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, String> {
        let answer =
            self.client.post(format!("{}{path}", self.url)).json(body).send().await.map_err(|e| e.to_string())?;
        let wire: Wire<T> = answer.json().await.map_err(|e| e.to_string())?;
        wire
    }

    async fn rpc<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, RPCError<Config>> {
        self.post(path, body).await.map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))
    }
}

impl RaftNetworkFactory<Config> for HttpNet {
    type Network = HttpPeer;

    async fn new_client(&mut self, _target: u64, node: &BasicNode) -> HttpPeer {
        HttpPeer { client: self.client.clone(), url: node.addr.clone() }
    }
}

impl RaftNetworkV2<Config> for HttpPeer {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Config>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<Config>, RPCError<Config>> {
        self.rpc("/raft/v1/append", &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<Config>,
        _option: RPCOption,
    ) -> Result<VoteResponse<Config>, RPCError<Config>> {
        self.rpc("/raft/v1/vote", &rpc).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<Config>,
        _option: RPCOption,
    ) -> Result<VoteResponse<Config>, RPCError<Config>> {
        self.rpc("/raft/v1/pre-vote", &rpc).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<Config>,
        snapshot: SnapshotOf<Config, Cursor<Vec<u8>>>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<Config>, StreamingError<Config>> {
        let body = SnapshotBody { vote, meta: snapshot.meta, data: snapshot.snapshot.into_inner() };
        self.post("/raft/v1/snapshot", &body)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))
    }
}

/// A store's way to the leader over HTTP, from a voter in this process.
pub struct HttpRoute {
    local: Arc<Voter>,
    client: reqwest::Client,
    /// Every voter's address, by id.
    urls: Mutex<BTreeMap<u64, String>>,
    name: String,
}

impl HttpRoute {
    pub fn new(local: Arc<Voter>, urls: BTreeMap<u64, String>, timeout: Duration) -> anyhow::Result<HttpRoute> {
        ferry_tls::install_crypto_provider();
        let name = format!("consensus leasing at voter {} over HTTP", local.id);
        Ok(HttpRoute {
            local,
            client: reqwest::Client::builder().timeout(timeout).build()?,
            urls: Mutex::new(urls),
            name,
        })
    }
}

#[async_trait]
impl Route for HttpRoute {
    fn leader(&self) -> Option<u64> {
        self.local.current_leader()
    }

    async fn send(&self, leader: u64, call: &Call) -> Answer {
        if leader == self.local.id {
            return self.local.answer(call).await;
        }
        let url = self.urls.lock().unwrap_or_else(|e| e.into_inner()).get(&leader).cloned();
        let Some(url) = url else {
            return Answer::Retry(format!("no address for voter {leader}"));
        };
        let sent = self.client.post(format!("{url}/lease/v1/call")).json(call).send().await;
        match sent {
            Ok(answer) => answer.json::<Answer>().await.unwrap_or_else(|e| Answer::Retry(e.to_string())),
            Err(e) => Answer::Retry(format!("the leader at {url} did not answer: {e}")),
        }
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}
