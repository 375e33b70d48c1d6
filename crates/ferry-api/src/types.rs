//! Wire types. Field names are stable: `ferry status -o json` prints [`ServerStatus`] as is.

use ferry_core::domain::Domain;
pub use ferry_core::nodeman::{ServerState, ViewState};
pub use ferry_core::EventKind;
use ferry_core::{ClusterName, Epoch, Incarnation, LeaseName, MachineName, ServerName, TokenName};
use serde::{Deserialize, Serialize};

/// `detail.reason` of a Node Manager's refusal to start a server because another host still
/// answers for its floating IP: it may pass by itself (the old holder is removing the
/// address), so the caller may try again shortly rather than give up on the machine.
pub const REASON_ADDRESS_IN_USE: &str = "address-in-use";

/// Every 4xx/5xx answer carries this body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// The domain configuration with its version (bumped on every accepted change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionedDomain {
    pub version: u64,
    pub domain: Domain,
}

/// `PUT /api/v1/domain`: replace the configuration. With `expected_version`, the change is
/// refused if someone else changed it first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainUpdate {
    #[serde(default)]
    pub expected_version: Option<u64>,
    pub domain: Domain,
}

/// One server in the run-time view (`GET /api/v1/servers`, `ferry status -o json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub name: ServerName,
    pub cluster: ClusterName,
    /// RUNNING (it holds its lease and its Node Manager says its services answer),
    /// STARTING, RESTARTING, STOPPING, SHUTDOWN, FENCED, FAILED, FAILED_CONFIG (what its
    /// Node Manager says), EXPIRED (its lease ran out and no Node Manager runs it), UNKNOWN (it holds its
    /// lease but its machine's Node Manager does not list it). With `view_stale`, the last
    /// known state.
    pub state: ViewState,
    /// Where it runs (or last ran): the lease's machine, else the Node Manager's.
    pub machine: Option<MachineName>,
    pub home_machine: MachineName,
    pub pid: Option<i32>,
    pub epoch: Option<Epoch>,
    pub incarnation: Option<Incarnation>,
    /// Time left on the server lease by the store's clock; negative once expired.
    pub lease_remaining_ms: Option<i64>,
    /// Whether this server holds its cluster's master lease.
    pub master: bool,
    pub floating_ip: Option<String>,
    pub auto_migration: bool,
    /// How old the admin's view of `machine` is: milliseconds since its Node Manager last
    /// answered (`None`: it never did, or no machine is known).
    #[serde(default)]
    pub view_age_ms: Option<u64>,
    /// `machine`'s Node Manager did not answer lately (`reachable` false in `ferry
    /// machines`): `state` and `pid` are what it last said.
    #[serde(default)]
    pub view_stale: bool,
}

/// `GET /api/v1/clusters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub name: ClusterName,
    pub master: Option<ServerName>,
    pub master_epoch: Option<Epoch>,
    pub master_lease_remaining_ms: Option<i64>,
    pub servers: Vec<ServerName>,
}

/// `GET /api/v1/leasing` (`ferry leasing status`): the lease table's basis and, with
/// consensus leasing, the cluster leader and the voters as each answers for itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeasingStatus {
    /// `database` or `consensus`.
    pub basis: ferry_core::domain::LeasingBasis,
    /// The database (its password hidden); none with consensus leasing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<String>,
    /// The voter the answering voters of the highest term name leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// The domain's voters, in its order, and any member id the domain no longer names.
    #[serde(default)]
    pub voters: Vec<VoterStatus>,
}

/// One consensus voter in [`LeasingStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoterStatus {
    pub name: String,
    /// Its identity (a new one after its data was lost), when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub reachable: bool,
    /// It is a voter of the cluster (by the leader's, or else the newest, membership).
    pub member: bool,
    /// The term it is in, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// Why it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /api/v1/machines`: the admin's view of each machine, kept by polling its Node
/// Manager in the background (it answers at once, whatever state the machines are in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineStatus {
    pub name: MachineName,
    pub node_manager: String,
    /// Its Node Manager answered the last poll, lately (the view is not stale).
    pub reachable: bool,
    /// Why not, when not reachable.
    pub error: Option<String>,
    /// What it runs, when reachable (empty otherwise).
    pub servers: Vec<NmServer>,
    /// Milliseconds since its Node Manager last answered; `None` if it never did since the
    /// admin started.
    #[serde(default)]
    pub last_seen_age_ms: Option<u64>,
    /// The last answer is older than a couple of polls (or there was none).
    #[serde(default)]
    pub stale: bool,
}

/// An entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Assigned by the Administration Server, increasing.
    #[serde(default)]
    pub id: u64,
    /// Wall-clock milliseconds since the Unix epoch at the source.
    pub at_ms: u64,
    /// `admin`, `nodemanager/MACHINE`, `server/NAME`.
    pub source: String,
    /// A stable word: `server-started`, `lease-acquired`, `fenced`, `master-acquired`, ...
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
    pub message: String,
    /// The name of the operator token behind a change made through the API (start, stop,
    /// migrate, start-cluster, configuration and token changes); never the token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<TokenName>,
}

/// `POST /api/v1/servers/{name}/migrate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateRequest {
    pub to: String,
}

/// `POST /api/v1/servers/{name}/stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StopRequest {
    #[serde(default)]
    pub force: bool,
}

/// A long-running action of the Administration Server (start cluster, stop, migrate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub id: u64,
    pub kind: OperationKind,
    /// The server, or for `start-cluster` the cluster.
    pub target: String,
    pub state: OperationState,
    pub steps: Vec<Step>,
    pub error: Option<String>,
    /// The name of the operator token that asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<TokenName>,
}

/// What an [`Operation`] does: `start-cluster`, `start`, `stop`, `migrate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperationKind {
    StartCluster,
    Start,
    Stop,
    Migrate,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::StartCluster => "start-cluster",
            OperationKind::Start => "start",
            OperationKind::Stop => "stop",
            OperationKind::Migrate => "migrate",
        }
    }
}

/// Where an [`Operation`] is: `running`, then `succeeded` or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationState {
    Running,
    Succeeded,
    Failed,
}

impl OperationState {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::Running => "running",
            OperationState::Succeeded => "succeeded",
            OperationState::Failed => "failed",
        }
    }
}

/// Where an operator token is: `active`, `expired` or `revoked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    Active,
    Expired,
    Revoked,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Expired => "expired",
            TokenState::Revoked => "revoked",
        }
    }
}

macro_rules! display_as_str {
    ($($ty:ty),*) => {$(
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    )*};
}
display_as_str!(OperationKind, OperationState, TokenState);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub at_ms: u64,
    pub message: String,
}

// ---- Operators and their tokens ----

/// What an operator token may do, as in WebLogic: a `Monitor` reads (status, leases,
/// events, the configuration, metrics); an `Operator` also starts, stops and migrates; an
/// `Admin` also changes the configuration and the tokens. Ordered: each role includes the
/// ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Monitor,
    Operator,
    Admin,
}

impl Role {
    /// The wire and command-line spelling: `monitor`, `operator`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Monitor => "monitor",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// Capitalised, as messages name roles: "stop needs the Operator role".
impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Monitor => "Monitor",
            Role::Operator => "Operator",
            Role::Admin => "Admin",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s.to_ascii_lowercase().as_str() {
            "monitor" => Ok(Role::Monitor),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?}: use monitor, operator or admin")),
        }
    }
}

/// `POST /api/v1/tokens`: make a token. Without `ttl_ms` it is valid until revoked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRequest {
    pub name: TokenName,
    pub role: Role,
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

/// A token as `GET /api/v1/tokens` and `ferry token list -o json` show it: never the token
/// or its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: TokenName,
    pub role: Role,
    /// Wall-clock milliseconds since the Unix epoch.
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
    pub state: TokenState,
}

/// The answer to `POST /api/v1/tokens`: the only message that ever carries a token, once.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct NewToken {
    pub token: String,
    pub info: TokenInfo,
}

/// Shows everything but the token.
impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken").field("token", &"<redacted>").field("info", &self.info).finish()
    }
}

// ---- Node Manager ----

/// Who sends a Node Manager command (the core's type, as it travels).
pub use ferry_core::nodeman::agent::Origin;

/// `POST /nm/v1/servers/{name}/start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NmStart {
    pub origin: Origin,
    /// Kill whatever is left of an earlier process of this server first (the master's
    /// restart in place of a hung server).
    #[serde(default)]
    pub in_place: bool,
}

/// `POST /nm/v1/servers/{name}/stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NmStop {
    pub origin: Origin,
    #[serde(default)]
    pub force: bool,
    /// Graceful stop budget before the kill; the server's `shutdown_timeout` if absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// A server as its Node Manager sees it (`GET /nm/v1/servers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NmServer {
    pub name: ServerName,
    pub state: ServerState,
    pub pid: Option<i32>,
    pub incarnation: Option<Incarnation>,
    pub epoch: Option<Epoch>,
    /// Time left before this Node Manager fences the server (rule 3).
    pub deadline_in_ms: Option<i64>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub master: bool,
}

/// `POST /nm/v1/...` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NmAck {
    pub server: ServerName,
    pub state: ServerState,
    pub pid: Option<i32>,
    pub message: String,
}

/// `GET /nm/v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NmHealth {
    pub machine: MachineName,
    pub version: String,
    /// Lease renewals this Node Manager sent to the lease table for its servers, and in how
    /// many batches (`renew_many` calls).
    #[serde(default)]
    pub renewals: u64,
    #[serde(default)]
    pub renewal_batches: u64,
}

/// What a Node Manager answers a server on its local channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    /// The outcome of [`Report::Renew`] `id`: renewed, lost (another owner, expired: fence),
    /// or failed (the table did not answer: retry).
    Renewed { id: u64, outcome: RenewOutcome, detail: String },
    /// A fresh certificate, for [`Report::Certificate`].
    Certificate { credentials: ferry_tls::Credentials },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RenewOutcome {
    Ok,
    Lost,
    Failed,
}

// ---- Node Manager ⇄ server local channel ----

/// The first and only line a Node Manager writes to a server's stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    pub machine: MachineName,
    pub incarnation: Incarnation,
    /// Rule 4: the incarnation this Node Manager reaped, whose lease may be handed over.
    pub handover_from: Option<Incarnation>,
    pub admin_url: String,
    /// This server's certificate (short-lived, issued by this machine's Node Manager) and
    /// key, for mutual TLS with Node Managers (as cluster master) and the admin.
    #[serde(default)]
    pub credentials: Option<ferry_tls::Credentials>,
    /// Directory for the cached configuration (Figure 7-1 step 5).
    pub cache_dir: String,
    /// The Node Manager's own copy of the domain, if it has one: the last fallback when the
    /// admin is down and nothing is cached on this machine.
    pub domain: Option<VersionedDomain>,
    /// The Node Manager's local channel (a Unix socket) for [`Report`]s. A server reconnects
    /// to it when its Node Manager restarts, so a new Node Manager adopts running servers.
    /// Without it, reports go to stdout.
    #[serde(default)]
    pub channel: Option<String>,
}

/// What a server reports to its Node Manager, one JSON object per stdout line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "kebab-case")]
pub enum Report {
    /// The first line on every connection to the Node Manager's channel: who is speaking.
    /// A Node Manager that does not know this incarnation (it restarted) adopts the server.
    Hello { server: ServerName, incarnation: Incarnation, pid: u32, epoch: Option<Epoch>, master: bool },
    /// Renew this lease in the Node Manager's next batch (one `renew_many` for all its
    /// servers). The server took its deadline's `t0` before sending this (rule 2).
    Renew { id: u64, lease: LeaseName, incarnation: Incarnation, epoch: Epoch, ttl_ms: u64 },
    /// Half the server's certificate's life has passed: asks its Node Manager for a fresh
    /// one (answered with [`Reply::Certificate`]).
    Certificate,
    /// The server is about to exit with `code` (for an adopted server, which the Node
    /// Manager cannot wait for).
    Exiting { code: i32 },
    /// The Node Manager's fencing deadline on CLOCK_BOOTTIME (ms): kill the server's session
    /// if it passes without a later one (rule 3). The server sets it half its safety margin
    /// after its own deadline, still before the store can expire the lease.
    Deadline { at_ms: u64 },
    /// The server lease is held: services are starting.
    Acquired { epoch: Epoch },
    /// Services answered their health checks.
    Running,
    /// The server took or lost its cluster's master role.
    Master { held: bool, epoch: Epoch },
    /// Released the lease on a clean stop: stop watching its deadline.
    Released,
    /// For the event log.
    /// `server` names the server the event is about when it is not the reporter (the
    /// cluster master reports on others).
    Event {
        kind: EventKind,
        message: String,
        epoch: Option<Epoch>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server: Option<ServerName>,
    },
}

/// `POST /api/v1/enroll`: a Node Manager asks for its certificates (`ferry enroll`). Only
/// the public halves travel: the keys stay on the machine.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub machine: MachineName,
    /// A one-time enrollment token (`ferry machine enroll-token`), or the domain secret
    /// (a Node Manager on the admin's host that can read it).
    pub token: String,
    /// Certificate requests (PEM) for the machine's TLS key and its issuing key.
    pub leaf_csr: String,
    pub issuer_csr: String,
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("machine", &self.machine)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The answer to [`EnrollRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub chain_pem: String,
    pub issuer_pem: String,
    pub ca_pem: String,
}

/// `POST /api/v1/machines/{name}/enroll-token`: a one-time token for `ferry enroll`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollToken {
    pub machine: MachineName,
    pub token: String,
    /// Unix milliseconds after which the token is refused.
    pub expires_ms: u64,
}

impl std::fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollToken")
            .field("machine", &self.machine)
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

/// `POST /api/v1/machines/{name}/revoke`: what was revoked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revoked {
    pub machine: MachineName,
    pub serials: Vec<String>,
}
