//! The Administration Server's state and its run-time view of the domain.

use ferry_core::EventKind;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_api::{ClusterStatus, Event, MachineStatus, NmClient, NmServer, ServerStatus, VersionedDomain};
use ferry_core::lease::{Lease, LeaseState};
use ferry_core::nodeman::ViewState;
use ferry_core::{Epoch, LeaseName, MachineName, Mono, ServerName, TokenName};
use ferry_host::clock;
use ferry_store::LeaseStore;

use crate::config::ConfigStore;
use crate::events::EventLog;
use crate::operations::Operations;
use crate::tokens::TokenStore;
use crate::views::{self, Views};

/// How long the admin waits for a Node Manager to accept a connection.
const NM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct AdminState {
    pub(crate) config: Mutex<ConfigStore>,
    pub(crate) store: Arc<dyn LeaseStore>,
    pub(crate) events: EventLog,
    pub(crate) ops: Operations,
    pub(crate) secret: String,
    pub(crate) started_ms: u64,
    /// The domain CA, the admin's certificate, enrollment and revocation.
    pub(crate) pki: crate::pki::AdminPki,
    /// Operator tokens (hashes), checked by `auth::require` on every request.
    pub(crate) tokens: Mutex<TokenStore>,
    /// How a caller without a token gets one (paths only), for 401 answers.
    pub(crate) token_hint: String,
    /// Kept Node Manager clients (see `AdminState::nm_client`).
    pub(crate) nm_clients: Mutex<std::collections::BTreeMap<(String, String), NmClient>>,
    /// What each machine's Node Manager last said (`views`): what `status` and `machines`
    /// answer from.
    pub(crate) views: Arc<Views>,
}

/// What the admin learned from one Node Manager, asked directly.
pub(crate) struct NmView {
    pub machine: MachineName,
    pub result: Result<Vec<NmServer>, String>,
}

impl AdminState {
    pub fn domain(&self) -> VersionedDomain {
        self.config.lock().map(|c| c.current.clone()).unwrap_or_else(|p| p.into_inner().current.clone())
    }

    pub fn nm(&self, machine: &MachineName, timeout: Duration) -> Option<NmClient> {
        let d = self.domain();
        let m = d.domain.machine(machine)?;
        Some(self.nm_client(m, timeout))
    }

    /// A client of `m`'s Node Manager, kept per machine and address so views and commands
    /// reuse its TLS connection; `timeout` bounds each call. A dead machine does not answer
    /// a connect: give up on it after a few seconds at most, not after the whole budget of a
    /// command a live Node Manager may take long to finish.
    fn nm_client(&self, m: &ferry_core::domain::Machine, timeout: Duration) -> NmClient {
        self.voter_client(m.name.as_str(), m.node_manager, timeout)
    }

    /// The same for any voter of consensus leasing (a machine's Node Manager or a witness).
    fn voter_client(&self, name: &str, addr: std::net::SocketAddr, timeout: Duration) -> NmClient {
        let key = (name.to_string(), addr.to_string());
        let mut cache = self.nm_clients.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(key)
            .or_insert_with(|| {
                NmClient::with_connect_timeout(&addr.to_string(), name, &self.pki.creds, NM_CONNECT_TIMEOUT, timeout)
            })
            .with_timeout(timeout)
    }

    /// Records an event from the admin itself.
    pub fn event(
        &self,
        kind: EventKind,
        server: Option<&ServerName>,
        machine: Option<&MachineName>,
        epoch: Option<Epoch>,
        message: String,
    ) {
        self.record(kind, server, machine, epoch, message, None);
    }

    /// Records an event from the admin, with the name of the operator token behind it (the
    /// audit trail of changes made through the API).
    pub(crate) fn record(
        &self,
        kind: EventKind,
        server: Option<&ServerName>,
        machine: Option<&MachineName>,
        epoch: Option<Epoch>,
        message: String,
        by: Option<&TokenName>,
    ) {
        match by {
            Some(by) => tracing::info!(kind = kind.as_str(), by = by.as_str(), "{message}"),
            None => tracing::info!(kind = kind.as_str(), "{message}"),
        }
        self.events.append(Event {
            id: 0,
            at_ms: clock::wall_ms(),
            source: "admin".into(),
            kind,
            server: server.cloned(),
            machine: machine.cloned(),
            epoch,
            message,
            by: by.cloned(),
        });
    }

    /// Every machine of the domain, its Node Manager's address and a client for a poll.
    pub(crate) fn nm_clients_for_views(&self) -> Vec<(MachineName, String, NmClient)> {
        let d = self.domain();
        d.domain
            .machines
            .iter()
            .map(|m| (m.name.clone(), m.node_manager.to_string(), self.nm_client(m, views::POLL_TIMEOUT)))
            .collect()
    }

    /// The views of every machine of the domain, as fresh as [`Views::refresh`] makes them.
    async fn fresh_views(&self) -> Vec<(MachineName, views::View)> {
        let machines = self.nm_clients_for_views();
        let names: Vec<_> = machines.iter().map(|(m, a, _)| (m.clone(), a.clone())).collect();
        self.views.refresh(machines).await;
        self.views.snapshot(&names)
    }

    /// Asks `machine`'s Node Manager what it runs now, within `timeout`, and records the
    /// answer in its view: for operations that need the truth, not the last view.
    pub(crate) async fn ask_nm(&self, machine: &MachineName, timeout: Duration) -> Result<Vec<NmServer>, String> {
        let d = self.domain();
        let m = d.domain.machine(machine).ok_or_else(|| format!("machine {machine} is not defined"))?;
        let client = self.nm_client(m, timeout);
        let asked = clock::now();
        let result = client.servers().await.map_err(|e| e.to_string());
        self.views.record(machine, &m.node_manager.to_string(), asked, &result);
        result
    }

    /// Asks every Node Manager what it runs, concurrently, each within `timeout` (a dead
    /// machine costs that much): for operations that need the truth of the whole domain.
    pub(crate) async fn poll_nms(&self, timeout: Duration) -> Vec<NmView> {
        let d = self.domain();
        let mut tasks = Vec::new();
        for m in &d.domain.machines {
            let client = self.nm_client(m, timeout);
            let (name, addr, views) = (m.name.clone(), m.node_manager.to_string(), self.views.clone());
            tasks.push(tokio::spawn(async move {
                let asked = clock::now();
                let result = client.servers().await.map_err(|e| e.to_string());
                views.record(&name, &addr, asked, &result);
                NmView { machine: name, result }
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(v) = t.await {
                out.push(v);
            }
        }
        out
    }

    /// `GET /api/v1/machines`: from the views, at once.
    /// The lease table's basis and, with consensus leasing, the leader and every voter as
    /// it answers for itself now (asked at once, each within a second).
    pub async fn leasing(&self) -> ferry_api::LeasingStatus {
        use ferry_core::domain::LeasingBasis;
        let d = self.domain();
        let leasing = &d.domain.leasing;
        if leasing.basis == LeasingBasis::Database {
            return ferry_api::LeasingStatus {
                basis: leasing.basis,
                data_source: Some(ferry_core::domain::redact_url(&leasing.data_source)),
                leader: None,
                term: None,
                voters: Vec::new(),
            };
        }
        let asks = d.domain.voters().into_iter().map(|(name, addr)| {
            let client = self.voter_client(&name, addr, Duration::from_secs(1));
            async move { client.hello().await.map_err(|e| e.to_string()) }
        });
        let answers: Vec<_> = futures_util::future::join_all(asks).await;
        let hellos: Vec<_> = answers.iter().filter_map(|a| a.as_ref().ok().cloned()).collect();
        let view = ferry_core::voters::view(&hellos);
        let mut voters: Vec<ferry_api::VoterStatus> = d
            .domain
            .voters()
            .into_iter()
            .zip(answers)
            .map(|((name, _), answer)| {
                let (id, term, error) = match answer {
                    Ok(h) => (Some(h.id), Some(h.term), None),
                    Err(e) => (None, None, Some(e)),
                };
                let member = match id {
                    Some(id) => view.members.contains_key(&id),
                    None => view.members.values().any(|n| *n == name),
                };
                ferry_api::VoterStatus { name, id, reachable: error.is_none(), member, term, error }
            })
            .collect();
        // Members the domain no longer names (an identity that lost its data, not yet replaced).
        for (id, name) in &view.members {
            if !voters.iter().any(|v| v.id == Some(*id) || (v.id.is_none() && v.name == *name)) {
                voters.push(ferry_api::VoterStatus {
                    name: name.clone(),
                    id: Some(*id),
                    reachable: false,
                    member: true,
                    term: None,
                    error: Some("a member identity no voter answers for".into()),
                });
            }
        }
        ferry_api::LeasingStatus {
            basis: leasing.basis,
            data_source: None,
            leader: view.leader.map(|(_, n)| n),
            term: (view.term > 0).then_some(view.term),
            voters,
        }
    }

    pub async fn machines(&self) -> Vec<MachineStatus> {
        let views = self.fresh_views().await;
        let now = clock::now();
        let d = self.domain();
        views
            .into_iter()
            .map(|(m, v)| {
                let fresh = v.fresh(now);
                MachineStatus {
                    name: m.clone(),
                    node_manager: d.domain.machine(&m).map_or_else(|| v.addr.clone(), |m| m.node_manager.to_string()),
                    reachable: fresh,
                    error: (!fresh).then(|| v.problem(now)),
                    last_seen_age_ms: v.age_ms(now),
                    stale: v.stale(now),
                    servers: if fresh { v.servers } else { Vec::new() },
                }
            })
            .collect()
    }

    /// The run-time view: the lease table says who holds what; the Node Managers' views
    /// say what runs and whether it is healthy ([`judge`]).
    pub async fn servers(&self) -> Result<Vec<ServerStatus>, ferry_store::StoreError> {
        let d = self.domain().domain;
        let leases = self.store.list().await?;
        let by_name: BTreeMap<LeaseName, Lease> = leases.into_iter().map(|l| (l.name.clone(), l)).collect();
        let views = self.fresh_views().await;
        let now = clock::now();
        let mut out = Vec::new();
        for s in &d.servers {
            let lease = by_name.get(&LeaseName::Server(s.name.clone()));
            let master = by_name
                .get(&LeaseName::Master(s.cluster.clone()))
                .is_some_and(|m| m.is_live() && m.owner.as_ref() == Some(&s.name));
            let j = judge(&s.name, lease, &views, now);
            let view = j.machine.as_ref().and_then(|m| views.iter().find(|(n, _)| n == m)).map(|(_, v)| v);
            out.push(ServerStatus {
                name: s.name.clone(),
                cluster: s.cluster.clone(),
                state: j.state,
                machine: j.machine,
                home_machine: s.machine.clone(),
                pid: j.pid,
                epoch: lease.map(|l| l.epoch),
                incarnation: lease.and_then(|l| l.incarnation.clone()),
                lease_remaining_ms: lease.filter(|l| l.state == LeaseState::Held).map(|l| l.remaining_ms),
                master,
                floating_ip: s.floating_ip.map(|i| i.to_string()),
                auto_migration: s.auto_migration,
                view_age_ms: view.and_then(|v| v.age_ms(now)),
                view_stale: view.is_some_and(|v| !v.fresh(now)),
            });
        }
        Ok(out)
    }

    pub async fn clusters(&self) -> Result<Vec<ClusterStatus>, ferry_store::StoreError> {
        let d = self.domain().domain;
        let mut out = Vec::new();
        for c in &d.clusters {
            let lease = self.store.get(&LeaseName::Master(c.name.clone())).await?.filter(|l| l.is_live());
            out.push(ClusterStatus {
                name: c.name.clone(),
                master: lease.as_ref().and_then(|l| l.owner.clone()),
                master_epoch: lease.as_ref().map(|l| l.epoch),
                master_lease_remaining_ms: lease.as_ref().map(|l| l.remaining_ms),
                servers: d.servers_in(&c.name).map(|s| s.name.clone()).collect(),
            });
        }
        Ok(out)
    }
}

/// What `ferry status` says of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Judged {
    pub state: ViewState,
    pub machine: Option<MachineName>,
    pub pid: Option<i32>,
}

/// The state of `server` from its lease and the machines' views (README, `ferry status`).
/// A server that holds its lease is what its machine's Node Manager last said (RUNNING only
/// once its services answer; UNKNOWN when it does not list it), however old that is: the
/// live lease proves the process renews. Without a live lease only Node Managers that
/// answer lately count: a dead machine's last word is no evidence of a process.
pub(crate) fn judge(
    server: &ServerName,
    lease: Option<&Lease>,
    views: &[(MachineName, views::View)],
    now: Mono,
) -> Judged {
    let entry_in = |v: &views::View| v.servers.iter().find(|e| e.name == *server).cloned();
    if let Some(l) = lease.filter(|l| l.is_live()) {
        let e = l.machine.as_ref().and_then(|m| views.iter().find(|(n, _)| n == m)).and_then(|(_, v)| entry_in(v));
        return Judged {
            state: e.as_ref().map_or(ViewState::Unknown, |e| e.state.into()),
            machine: l.machine.clone(),
            pid: e.and_then(|e| e.pid),
        };
    }
    let lease_machine = lease.and_then(|l| l.machine.as_ref());
    // The answering Node Managers' entries: one with a live process first, on the lease's
    // machine first.
    let mut best: Option<(MachineName, NmServer)> = None;
    for (m, v) in views.iter().filter(|(_, v)| v.fresh(now)) {
        if let Some(e) = entry_in(v) {
            let live = e.pid.is_some();
            let better = best.as_ref().is_none_or(|(_, cur)| live && cur.pid.is_none());
            if better || (live && lease_machine == Some(m)) {
                best = Some((m.clone(), e));
            }
        }
    }
    let judged =
        |state: ViewState, machine: Option<&MachineName>, pid| Judged { state, machine: machine.cloned(), pid };
    match (lease, &best) {
        (_, Some((m, e))) if e.pid.is_some() => judged(e.state.into(), Some(m), e.pid),
        (Some(l), _) if l.is_expired() => judged(ViewState::Expired, l.machine.as_ref(), None),
        (_, Some((m, e))) => judged(e.state.into(), Some(m), None),
        (Some(l), None) if l.state == LeaseState::Released => judged(ViewState::Shutdown, l.machine.as_ref(), None),
        _ => judged(ViewState::Shutdown, None, None),
    }
}

#[cfg(test)]
mod tests {
    use ferry_core::lease::{Lease, LeaseState};
    use ferry_core::{Epoch, LeaseName, MachineName, Mono, ServerName};

    use super::{judge, Judged};
    use crate::views::View;

    fn lease(machine: &str, state: LeaseState, remaining_ms: i64) -> Lease {
        Lease {
            name: LeaseName::Server(ServerName::new("ms1").unwrap()),
            owner: Some(ServerName::new("ms1").unwrap()),
            machine: Some(MachineName::new(machine).unwrap()),
            incarnation: None,
            epoch: Epoch(3),
            state,
            remaining_ms,
            since_renewal_ms: 0,
        }
    }

    fn entry(state: &str, pid: Option<i32>) -> ferry_api::NmServer {
        ferry_api::NmServer {
            name: ServerName::new("ms1").unwrap(),
            state: ferry_core::nodeman::ServerState::parse(state).unwrap(),
            pid,
            incarnation: None,
            epoch: None,
            deadline_in_ms: None,
            restarts: 0,
            last_exit: None,
            master: false,
        }
    }

    const NOW: Mono = Mono(100_000);

    /// A view of `machine` that answered `age_ms` ago (`None`: never), listing `servers`.
    fn view(
        machine: &str,
        age_ms: Option<u64>,
        error: Option<&str>,
        servers: Vec<ferry_api::NmServer>,
    ) -> (MachineName, View) {
        (MachineName::new(machine).unwrap(), View::at("127.0.0.1:1", servers, age_ms.map(|a| NOW - a), error))
    }

    fn judged(state: &str, machine: Option<&str>, pid: Option<i32>) -> Judged {
        Judged {
            state: serde_json::from_str(&format!("{state:?}")).unwrap(),
            machine: machine.map(|m| MachineName::new(m).unwrap()),
            pid,
        }
    }

    /// RUNNING means healthy: with a live lease, the state is what the Node Manager of the
    /// lease's machine last said, however old; without one only answering Node Managers count.
    #[test]
    fn the_state_of_a_server_from_its_lease_and_the_views() {
        use LeaseState::{Held, Released};
        let ms1 = ServerName::new("ms1").unwrap();
        let live = lease("m1", Held, 1_000);
        let expired = lease("m1", Held, -10);
        let released = lease("m1", Released, 0);
        type Case<'a> = (&'a str, Option<&'a Lease>, Vec<(MachineName, View)>, Judged);
        let cases: Vec<Case> = vec![
            (
                "live, services not answering yet",
                Some(&live),
                vec![view("m1", Some(10), None, vec![entry("STARTING", Some(7))])],
                judged("STARTING", Some("m1"), Some(7)),
            ),
            (
                "live and healthy",
                Some(&live),
                vec![view("m1", Some(10), None, vec![entry("RUNNING", Some(7))])],
                judged("RUNNING", Some("m1"), Some(7)),
            ),
            (
                "live, its Node Manager hung: last known",
                Some(&live),
                vec![view("m1", Some(9_000), Some("timed out"), vec![entry("RUNNING", Some(7))])],
                judged("RUNNING", Some("m1"), Some(7)),
            ),
            (
                "live, last known STARTING",
                Some(&live),
                vec![view("m1", Some(9_000), Some("timed out"), vec![entry("STARTING", Some(7))])],
                judged("STARTING", Some("m1"), Some(7)),
            ),
            (
                "live, not listed by a restarted Node Manager",
                Some(&live),
                vec![view("m1", Some(10), None, vec![])],
                judged("UNKNOWN", Some("m1"), None),
            ),
            (
                "live, its Node Manager never answered",
                Some(&live),
                vec![view("m1", None, Some("refused"), vec![])],
                judged("UNKNOWN", Some("m1"), None),
            ),
            (
                "live, process gone, lease not yet released",
                Some(&live),
                vec![view("m1", Some(10), None, vec![entry("FAILED", None)])],
                judged("FAILED", Some("m1"), None),
            ),
            (
                "expired on a dead machine, whose last word is ignored",
                Some(&expired),
                vec![view("m1", Some(9_000), Some("timed out"), vec![entry("RUNNING", Some(7))])],
                judged("EXPIRED", Some("m1"), None),
            ),
            (
                "expired, being started elsewhere",
                Some(&expired),
                vec![
                    view("m1", Some(9_000), Some("x"), vec![entry("RUNNING", Some(7))]),
                    view("m2", Some(10), None, vec![entry("STARTING", Some(8))]),
                ],
                judged("STARTING", Some("m2"), Some(8)),
            ),
            (
                "released: stopped",
                Some(&released),
                vec![view("m1", Some(10), None, vec![entry("SHUTDOWN", None)])],
                judged("SHUTDOWN", Some("m1"), None),
            ),
            (
                "released, its Node Manager unreachable",
                Some(&released),
                vec![view("m1", Some(9_000), Some("x"), vec![entry("RUNNING", Some(7))])],
                judged("SHUTDOWN", Some("m1"), None),
            ),
            ("never started", None, vec![view("m1", Some(10), None, vec![])], judged("SHUTDOWN", None, None)),
            (
                "no lease, a live process the Node Manager reports",
                None,
                vec![view("m2", Some(10), None, vec![entry("STOPPING", Some(9))])],
                judged("STOPPING", Some("m2"), Some(9)),
            ),
        ];
        for (what, lease, views, want) in cases {
            assert_eq!(judge(&ms1, lease, &views, NOW), want, "{what}");
        }
    }

    #[test]
    fn a_view_is_fresh_while_its_node_manager_answers_and_stale_after_a_few_polls() {
        let (_, v) = view("m1", Some(100), None, vec![]);
        assert!(v.fresh(NOW) && !v.stale(NOW));
        let (_, v) = view("m1", Some(100), Some("connection refused"), vec![]);
        assert!(!v.fresh(NOW) && !v.stale(NOW), "a failed poll: not reachable, not stale yet");
        assert_eq!(v.problem(NOW), "connection refused");
        let (_, v) = view("m1", Some(crate::views::STALE_AFTER_MS + 1), None, vec![]);
        assert!(!v.fresh(NOW) && v.stale(NOW), "a poll hanging for long");
        assert_eq!(v.problem(NOW), format!("no answer for {} ms", crate::views::STALE_AFTER_MS + 1));
        let (_, v) = view("m1", None, None, vec![]);
        assert!(!v.fresh(NOW) && v.stale(NOW));
        assert_eq!((v.age_ms(NOW), v.problem(NOW).as_str()), (None, "not answered yet"));
    }
}
