//! Consensus leasing at a Node Manager (`[leasing] basis = "consensus"`): this machine's
//! voter (vote, log and identity in `DATA/consensus/raft.db`), its routes on the Node
//! Manager's mutual-TLS listener, and the loop that finds its place in the cluster
//! ([`ferry_core::voters::step`]).
//!
//! Routes, all behind the listener's client-certificate check:
//! - `/raft/v1/{append,vote,pre-vote,snapshot}`, `/lease/v1/call`, `/raft/v1/join`,
//!   `/raft/v1/leave`: voters only (a machine's certificate; join and leave only for the
//!   caller's own name);
//! - `/lease/v1/relay`: the lease calls of this machine's servers and of the admin, run on
//!   the leader this voter knows; `/raft/v1/hello`: who this voter is and what it knows
//!   (voters finding their place, the admin's view).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_api::{ErrorBody, EventSink};
use ferry_consensus::call::{Answer, Call};
use ferry_consensus::http::{Directory, HttpNet, HttpRoute};
use ferry_consensus::openraft::async_runtime::WatchReceiver;
use ferry_consensus::voter::Voter;
use ferry_consensus::{ConsensusStore, Storage, VoterTiming};
use ferry_core::domain::Domain;
use ferry_core::voters::{self, Hello, Members, Step};
use ferry_core::{EventKind, MachineName};
use ferry_store::LeaseStore;
use ferry_tls::{Credentials, Expect, Identity, PeerInfo};
use serde::{Deserialize, Serialize};

/// How long one RPC between voters may take.
const RPC_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a relayed or forwarded lease call may take on the way to the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a voter that is not a member looks for its place, and how long asking takes.
const FIND_PLACE_EVERY: Duration = Duration::from_millis(300);
/// ... and a voter that is a member by its own log asks every this many rounds.
const ASK_MEMBER_EVERY: u32 = 10;
const HELLO_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a clean shutdown waits for the leader to let this voter go.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest request the voters' routes take (a batch of log entries).
const MAX_RPC_BODY: usize = 16 * 1024 * 1024;

/// What a voter asks the leader when it joins or leaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Member {
    id: u64,
    name: String,
}

/// This machine's voter and the ways to it.
pub(crate) struct Consensus {
    pub voter: Arc<Voter>,
    route: Arc<HttpRoute>,
    name: String,
    /// The domain's voters by name (the first starts the cluster).
    roster: RwLock<Vec<String>>,
    directory: Directory,
    client: reqwest::Client,
    events: EventSink,
    machine: MachineName,
}

/// Every voter's base URL, by name.
fn urls(domain: &Domain) -> BTreeMap<String, String> {
    domain.voters().into_iter().map(|(name, addr)| (name, format!("https://{addr}"))).collect()
}

impl Consensus {
    /// Starts this machine's voter with the vote and log `data_dir` keeps (a new identity
    /// when it keeps none), and the loop that makes it a member.
    pub async fn start(
        domain: &Domain,
        machine: &MachineName,
        data_dir: &Path,
        creds: &Credentials,
        events: EventSink,
    ) -> anyhow::Result<Arc<Consensus>> {
        let dir = data_dir.join("consensus");
        let id = ferry_consensus::disk::identity_in(&dir)
            .map_err(|e| anyhow::anyhow!("cannot open the consensus log in {}: {e}", dir.display()))?;
        let tls = creds.client_config(Expect::AnyPeer).map_err(|e| anyhow::anyhow!("{e}"))?;
        let client =
            reqwest::Client::builder().use_preconfigured_tls(tls).no_proxy().pool_max_idle_per_host(8).build()?;
        let directory = Directory::default();
        directory.set(urls(domain));
        let plan = domain.voter_plan();
        let timing = VoterTiming::from(plan);
        let describe = format!(
            "consensus leasing among {}",
            domain.voters().into_iter().map(|(n, _)| n).collect::<Vec<_>>().join(", ")
        );
        let net = HttpNet::with_client(client.clone(), directory.clone(), RPC_TIMEOUT);
        let voter = Voter::start(id, net, timing, &describe, &Storage::Disk(dir)).await?;
        tracing::info!(
            "consensus voter {id} for {machine} started (heartbeat {} ms, elections after {}–{} ms, a new leader serves after {} ms)",
            plan.heartbeat.as_millis(),
            plan.election_min.as_millis(),
            plan.election_max.as_millis(),
            plan.leadership.wait_ms()
        );
        let route = Arc::new(HttpRoute::with_client(voter.clone(), client.clone(), directory.clone(), FORWARD_TIMEOUT));
        let consensus = Arc::new(Consensus {
            voter,
            route,
            name: machine.to_string(),
            roster: RwLock::new(domain.voters().into_iter().map(|(n, _)| n).collect()),
            directory,
            client,
            events,
            machine: machine.clone(),
        });
        tokio::spawn(consensus.clone().find_place());
        tokio::spawn(consensus.clone().watch_leadership());
        Ok(consensus)
    }

    /// The lease table as this Node Manager reaches it.
    pub fn store(&self, call_timeout: Duration) -> Arc<dyn LeaseStore> {
        Arc::new(ConsensusStore::new(self.route.clone(), call_timeout))
    }

    /// A new configuration: where the voters listen, and who they are.
    pub fn update(&self, domain: &Domain) {
        self.directory.set(urls(domain));
        *self.roster.write().unwrap_or_else(|e| e.into_inner()) = domain.voters().into_iter().map(|(n, _)| n).collect();
    }

    fn roster(&self) -> Vec<String> {
        self.roster.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What every other voter of the domain says about itself (those that answer).
    async fn hellos(&self) -> Vec<Hello> {
        let asks =
            self.roster().into_iter().filter(|n| *n != self.name).filter_map(|n| self.directory.url(&n)).map(|url| {
                let client = self.client.clone();
                async move {
                    let answer = client.get(format!("{url}/raft/v1/hello")).timeout(HELLO_TIMEOUT).send().await.ok()?;
                    answer.json::<Hello>().await.ok()
                }
            });
        futures_util::future::join_all(asks).await.into_iter().flatten().collect()
    }

    /// Until this voter is a member: ask the others, then start the cluster, join it, or
    /// wait, as [`voters::step`] says. Then keep checking (a leader may have let it go).
    async fn find_place(self: Arc<Self>) {
        let mut last_wait = String::new();
        let mut round = 0u32;
        loop {
            round = round.wrapping_add(1);
            let me = self.voter.hello(&self.name);
            // A member by its own log that knows a leader asks the others only now and then:
            // its log may be behind the leader's (it left and came back), and only the
            // leader's membership says whether it is still a voter.
            let settled = me.members.as_ref().is_some_and(|m| m.contains_key(&me.id)) && me.leader.is_some();
            let step = if settled && !round.is_multiple_of(ASK_MEMBER_EVERY) {
                Step::Member
            } else {
                voters::step(&me, &self.hellos().await, &self.roster())
            };
            match step {
                Step::Member => {}
                Step::Initialize(members) => {
                    tracing::info!("starting the consensus cluster with {}", describe(&members));
                    if let Err(e) = self.voter.initialize(&members).await {
                        tracing::warn!("could not start the consensus cluster: {e:#}");
                    }
                }
                Step::Join { leader, name } => match self.ask(&name, "join").await {
                    Ok(members) => {
                        tracing::info!("joined the consensus cluster through {name} ({leader}): {}", describe(&members))
                    }
                    Err(e) => tracing::info!("joining the consensus cluster through {name}: {e}"),
                },
                Step::Wait(why) => {
                    if why != last_wait {
                        tracing::info!("consensus voter {} waits: {why}", me.id);
                        last_wait = why;
                    }
                }
            }
            tokio::time::sleep(FIND_PLACE_EVERY).await;
        }
    }

    /// Asks voter `name` (the leader) to let this voter `join` or `leave`.
    async fn ask(&self, name: &str, what: &str) -> Result<Members, String> {
        let url = self.directory.url(name).ok_or_else(|| format!("no address for {name}"))?;
        let body = Member { id: self.voter.id, name: self.name.clone() };
        let answer = self
            .client
            .post(format!("{url}/raft/v1/{what}"))
            .timeout(LEAVE_TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|e| ferry_core::chain(&e))?;
        answer.json::<Result<Members, String>>().await.map_err(|e| e.to_string())?
    }

    /// A clean shutdown: this voter stops counting against the majority (the seed's cleanly
    /// shut down server). It joins again at its next start.
    pub async fn leave(&self) {
        let id = self.voter.id;
        let attempt = async {
            loop {
                let result = match self.voter.current_leader() {
                    Some(l) if l == id => self.voter.dismiss(id).await,
                    Some(l) => match self.voter.node_addr(l) {
                        Some(name) => self.ask(&name, "leave").await,
                        None => Err("no address for the leader".into()),
                    },
                    None => Err("no leader".into()),
                };
                match result {
                    Ok(members) => return Ok(members),
                    Err(e) if e.contains("last voter") => return Err(e),
                    Err(e) => tracing::debug!("leaving the consensus cluster: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        match tokio::time::timeout(LEAVE_TIMEOUT, attempt).await {
            Ok(Ok(members)) => {
                self.events.emit(
                    EventKind::VoterLeft,
                    None,
                    Some(&self.machine),
                    None,
                    format!(
                        "{} left the consensus cluster on a clean shutdown; voters now {}",
                        self.name,
                        describe(&members)
                    ),
                );
                // The event goes out before the process does.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Err(e)) => tracing::info!("{} stays a consensus voter: {e}", self.name),
            Err(_) => tracing::warn!(
                "{} could not leave the consensus cluster within {LEAVE_TIMEOUT:?}; it still counts as a voter",
                self.name
            ),
        }
        let _ = self.voter.raft.shutdown().await;
    }

    /// Records each term this voter leads, once, as the leader.
    async fn watch_leadership(self: Arc<Self>) {
        let mut metrics = self.voter.raft.metrics();
        let mut announced = 0u64;
        loop {
            let (leading, term) = {
                let m = metrics.borrow_watched();
                // Leading, confirmed by a quorum: a voter restarted with a committed vote of
                // its own comes back as the leader of that (old) term until it hears of a
                // newer one, and no quorum acknowledges it meanwhile.
                let leading = m.state == ferry_consensus::openraft::ServerState::Leader
                    && m.current_leader == Some(self.voter.id)
                    && m.last_quorum_acked.is_some();
                (leading, m.current_term)
            };
            if leading && term > announced {
                announced = term;
                let members = self.voter.members().unwrap_or_default();
                self.events.emit(
                    EventKind::LeaderElected,
                    None,
                    Some(&self.machine),
                    None,
                    format!("{} leads the consensus cluster in term {term}; voters {}", self.name, describe(&members)),
                );
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// The voters' and the relay's routes.
    pub fn router(self: Arc<Self>) -> Router {
        let voters_only = ferry_consensus::http::routes(self.voter.clone())
            .merge(
                Router::new()
                    .route("/raft/v1/join", post(join))
                    .route("/raft/v1/leave", post(leave))
                    .with_state(self.clone()),
            )
            .layer(axum::middleware::from_fn(voters_only))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_RPC_BODY));
        Router::new()
            .route("/lease/v1/relay", post(relay))
            .route("/raft/v1/hello", get(hello))
            .with_state(self)
            .merge(voters_only)
    }
}

fn describe(members: &Members) -> String {
    let names: Vec<String> = members.iter().map(|(id, n)| format!("{n} ({id})")).collect();
    names.join(", ")
}

fn peer(req: &Request) -> Option<Identity> {
    req.extensions().get::<ConnectInfo<PeerInfo>>().and_then(|c| c.0.peer.as_ref()).map(|p| p.identity.clone())
}

/// The voters' routes take a machine's certificate only.
async fn voters_only(req: Request, next: Next) -> Response {
    match peer(&req) {
        Some(Identity::Machine(_)) => next.run(req).await,
        _ => (
            axum::http::StatusCode::FORBIDDEN,
            Json(ErrorBody {
                error: "only the domain's consensus voters (a machine's certificate) may call this".into(),
                detail: serde_json::Value::Null,
            }),
        )
            .into_response(),
    }
}

async fn hello(State(c): State<Arc<Consensus>>) -> Json<Hello> {
    Json(c.voter.hello(&c.name))
}

/// The caller's own name from its certificate, which a join or leave must match.
fn caller(info: &PeerInfo) -> Option<String> {
    match info.peer.as_ref().map(|p| &p.identity) {
        Some(Identity::Machine(m)) => Some(m.clone()),
        _ => None,
    }
}

async fn join(
    State(c): State<Arc<Consensus>>,
    ConnectInfo(info): ConnectInfo<PeerInfo>,
    Json(m): Json<Member>,
) -> Json<Result<Members, String>> {
    if caller(&info).as_deref() != Some(m.name.as_str()) || !c.roster().contains(&m.name) {
        return Json(Err(format!("{} may not join as {}", caller(&info).unwrap_or_default(), m.name)));
    }
    // A voter that restarted before its log told it it is a member asks again: no news.
    let already = c.voter.members().is_some_and(|ms| ms.get(&m.id) == Some(&m.name));
    let result = c.voter.admit(m.id, &m.name).await;
    if let (Ok(members), false) = (&result, already) {
        c.events.emit(
            EventKind::VoterJoined,
            None,
            Some(&c.machine),
            None,
            format!("{} ({}) joined the consensus cluster; voters now {}", m.name, m.id, describe(members)),
        );
    }
    Json(result)
}

async fn leave(
    State(c): State<Arc<Consensus>>,
    ConnectInfo(info): ConnectInfo<PeerInfo>,
    Json(m): Json<Member>,
) -> Json<Result<Members, String>> {
    if caller(&info).as_deref() != Some(m.name.as_str()) {
        return Json(Err(format!("{} may not leave for {}", caller(&info).unwrap_or_default(), m.name)));
    }
    Json(c.voter.dismiss(m.id).await)
}

async fn relay(State(c): State<Arc<Consensus>>, Json(call): Json<Call>) -> Json<Answer> {
    Json(c.route.relay(&call).await)
}
