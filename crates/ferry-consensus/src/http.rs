//! The voters' protocol over HTTP (JSON): openraft's RPCs under `/raft/v1/` and forwarded
//! lease calls under `/lease/v1/call`, served by [`routes`] and sent by [`HttpNet`] and
//! [`HttpRoute`]; a process without a voter reaches the leader through a Node Manager's
//! `/lease/v1/relay` ([`RelayRoute`]). The tests use plain HTTP; the Node Managers serve
//! the same routes on their mutually authenticated HTTPS listener, with their own client.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
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

/// The header that names the voter identity an RPC is for.
pub const TARGET_HEADER: &str = "ferry-raft-target";

/// The routes a voter serves. Each RPC names the identity it is for ([`TARGET_HEADER`]) and
/// is refused (409) by any other: after a voter lost its data, its name and address answer
/// with a new identity, and the leader's replication to the old one must find nobody there,
/// not a fresh log that would count for the old identity (or, in openraft, look like a
/// follower's log going backwards).
pub fn routes(voter: Arc<Voter>) -> axum::Router {
    axum::Router::new()
        .route("/raft/v1/append", post(append))
        .route("/raft/v1/vote", post(vote))
        .route("/raft/v1/pre-vote", post(pre_vote))
        .route("/raft/v1/snapshot", post(snapshot))
        .route("/lease/v1/call", post(lease_call))
        .layer(axum::middleware::from_fn_with_state(voter.clone(), only_for_me))
        .with_state(voter)
}

async fn only_for_me(
    State(v): State<Arc<Voter>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let target = req.headers().get(TARGET_HEADER).and_then(|h| h.to_str().ok()).and_then(|t| t.parse::<u64>().ok());
    match target {
        Some(id) if id == v.id => next.run(req).await,
        Some(id) => (
            axum::http::StatusCode::CONFLICT,
            format!("this is voter {}, not {id} (that identity lost its data and never answers again)", v.id),
        )
            .into_response(),
        None => (axum::http::StatusCode::BAD_REQUEST, format!("a voter's RPC names its target in {TARGET_HEADER}"))
            .into_response(),
    }
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

/// Where each voter listens: its node's address in the membership is its name (a machine,
/// or the witness), looked up here when a call is sent, so a voter that moves to another
/// address is found there. An address that is already a URL (`http://IP:PORT`) is used
/// as it is.
#[derive(Clone, Default)]
pub struct Directory(Arc<RwLock<BTreeMap<String, String>>>);

impl Directory {
    /// Replaces the whole directory (name → base URL).
    pub fn set(&self, urls: BTreeMap<String, String>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = urls;
    }

    pub fn url(&self, addr: &str) -> Option<String> {
        if addr.contains("://") {
            return Some(addr.to_string());
        }
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(addr).cloned()
    }
}

/// openraft's network over HTTP (or HTTPS, with the client's TLS configuration).
#[derive(Clone)]
pub struct HttpNet {
    client: reqwest::Client,
    directory: Directory,
    timeout: Duration,
}

impl HttpNet {
    /// Plain HTTP, each RPC bounded by `timeout`; node addresses are URLs.
    pub fn new(timeout: Duration) -> anyhow::Result<HttpNet> {
        ferry_tls::install_crypto_provider();
        Ok(HttpNet::with_client(reqwest::Client::builder().no_proxy().build()?, Directory::default(), timeout))
    }

    /// Through `client` (the Node Manager's, mutual TLS), nodes found in `directory`.
    pub fn with_client(client: reqwest::Client, directory: Directory, timeout: Duration) -> HttpNet {
        HttpNet { client, directory, timeout }
    }
}

pub struct HttpPeer {
    client: reqwest::Client,
    directory: Directory,
    target: u64,
    addr: String,
    timeout: Duration,
}

impl HttpPeer {
    async fn post<B: Serialize, T: serde::de::DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, String> {
        let url = self.directory.url(&self.addr).ok_or_else(|| format!("no address known for voter {}", self.addr))?;
        let answer = self
            .client
            .post(format!("{url}{path}"))
            .header(TARGET_HEADER, self.target)
            .timeout(self.timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| ferry_core::chain(&e))?;
        if !answer.status().is_success() {
            return Err(format!("{url}{path} answered {}", answer.status()));
        }
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

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> HttpPeer {
        HttpPeer {
            client: self.client.clone(),
            directory: self.directory.clone(),
            target,
            addr: node.addr.clone(),
            timeout: self.timeout,
        }
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
    directory: Directory,
    timeout: Duration,
    name: String,
}

impl HttpRoute {
    /// Plain HTTP; node addresses are URLs.
    pub fn new(local: Arc<Voter>, timeout: Duration) -> anyhow::Result<HttpRoute> {
        ferry_tls::install_crypto_provider();
        Ok(HttpRoute::with_client(local, reqwest::Client::builder().no_proxy().build()?, Directory::default(), timeout))
    }

    pub fn with_client(
        local: Arc<Voter>,
        client: reqwest::Client,
        directory: Directory,
        timeout: Duration,
    ) -> HttpRoute {
        let name = format!("consensus leasing at voter {}", local.id);
        HttpRoute { local, client, directory, timeout, name }
    }

    /// The voter this route starts from.
    pub fn local(&self) -> &Arc<Voter> {
        &self.local
    }

    /// Runs `call` on the leader this voter knows, once: the relay a server's or the
    /// admin's call takes through a Node Manager.
    pub async fn relay(&self, call: &Call) -> Answer {
        match self.leader() {
            Some(leader) => self.send(leader, call).await,
            None => Answer::Retry("no cluster leader is known here".into()),
        }
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
        let Some(url) = self.local.node_addr(leader).and_then(|a| self.directory.url(&a)) else {
            return Answer::Retry(format!("no address for voter {leader}"));
        };
        post_call(&self.client, &format!("{url}/lease/v1/call"), Some(leader), call, self.timeout).await
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// Posts a lease call; a failure to reach the other end is an answer to try again.
async fn post_call(client: &reqwest::Client, url: &str, to: Option<u64>, call: &Call, timeout: Duration) -> Answer {
    let mut request = client.post(url).timeout(timeout).json(call);
    if let Some(id) = to {
        request = request.header(TARGET_HEADER, id);
    }
    match request.send().await {
        Ok(answer) if answer.status().is_success() => {
            answer.json::<Answer>().await.unwrap_or_else(|e| Answer::Retry(e.to_string()))
        }
        Ok(answer) => match answer.status().as_u16() {
            // Refused for who we are: no retry helps.
            401 | 403 => Answer::Failed(format!("{url} refused the call ({})", answer.status())),
            _ => Answer::Retry(format!("{url} answered {}", answer.status())),
        },
        Err(e) => Answer::Retry(format!("{url} did not answer: {}", ferry_core::chain(&e))),
    }
}

/// The way to the lease table of a process that runs no voter (a server, the admin): its
/// calls go to a Node Manager's `/lease/v1/relay`, which forwards them to the leader. The
/// Node Managers are tried in turn, from the last one that answered.
pub struct RelayRoute {
    client: reqwest::Client,
    urls: Vec<String>,
    current: AtomicUsize,
    timeout: Duration,
    name: String,
}

impl RelayRoute {
    /// Relays through the Node Managers at `urls` (base URLs), each call bounded by `timeout`.
    pub fn new(client: reqwest::Client, urls: Vec<String>, timeout: Duration) -> RelayRoute {
        let name = format!("consensus leasing through {}", urls.join(", "));
        RelayRoute { client, urls, current: AtomicUsize::new(0), timeout, name }
    }
}

#[async_trait]
impl Route for RelayRoute {
    fn leader(&self) -> Option<u64> {
        (!self.urls.is_empty()).then(|| self.current.load(Ordering::Relaxed) as u64)
    }

    async fn send(&self, at: u64, call: &Call) -> Answer {
        let i = at as usize % self.urls.len().max(1);
        let Some(url) = self.urls.get(i) else { return Answer::Retry("no Node Manager to relay through".into()) };
        let answer = post_call(&self.client, &format!("{url}/lease/v1/relay"), None, call, self.timeout).await;
        if matches!(answer, Answer::Retry(_)) && self.urls.len() > 1 {
            // Next time, the next Node Manager.
            let _ = self.current.compare_exchange(i, (i + 1) % self.urls.len(), Ordering::Relaxed, Ordering::Relaxed);
        }
        answer
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// The lease table of a process that runs no voter (a server, the admin), relayed by the
/// Node Managers at `nms` (tried in this order), over mutual TLS with `creds`.
pub fn relay_store(
    nms: &[std::net::SocketAddr],
    creds: &ferry_tls::Credentials,
    call_timeout: Duration,
) -> anyhow::Result<Arc<dyn ferry_store::LeaseStore>> {
    ferry_tls::install_crypto_provider();
    let tls = creds.client_config(ferry_tls::Expect::AnyPeer).map_err(|e| anyhow::anyhow!("{e}"))?;
    let client = reqwest::Client::builder().use_preconfigured_tls(tls).no_proxy().pool_max_idle_per_host(4).build()?;
    let urls = nms.iter().map(|a| format!("https://{a}")).collect();
    // Each relay gets a share of the call, so that a dead Node Manager leaves time for the next.
    let per_try = (call_timeout / 2).max(Duration::from_millis(50));
    Ok(Arc::new(crate::store::ConsensusStore::new(Arc::new(RelayRoute::new(client, urls, per_try)), call_timeout)))
}
