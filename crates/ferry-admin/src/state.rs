//! The Administration Server's state and its run-time view of the domain.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ferry_api::{ClusterStatus, Event, MachineStatus, NmClient, NmServer, ServerStatus, VersionedDomain};
use ferry_core::lease::{Lease, LeaseState};
use ferry_core::{LeaseName, MachineName};
use ferry_host::{clock, files};
use ferry_store::LeaseStore;

use crate::config::ConfigStore;
use crate::events::EventLog;
use crate::ops::Operations;
use crate::tokens::{self, TokenFiles, TokenStore};

#[derive(Debug, Clone)]
pub struct AdminOptions {
    pub domain_file: PathBuf,
    pub data_dir: PathBuf,
    /// Overrides `[admin] listen`.
    pub listen: Option<std::net::SocketAddr>,
    /// The directory of the user's client files (`$FERRY_CONFIG_DIR`, else
    /// `$HOME/.config/ferry`), where the first start leaves the initial Admin token for this
    /// host's operators; `None` to leave it only in the data directory.
    pub client_config_dir: Option<PathBuf>,
}

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
}

/// What the admin learned from one Node Manager.
pub(crate) struct NmView {
    pub machine: MachineName,
    pub addr: String,
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
        let key = (m.name.to_string(), m.node_manager.to_string());
        let mut cache = self.nm_clients.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(key)
            .or_insert_with(|| {
                NmClient::with_connect_timeout(
                    &m.node_manager.to_string(),
                    m.name.as_str(),
                    &self.pki.creds,
                    NM_CONNECT_TIMEOUT,
                    timeout,
                )
            })
            .with_timeout(timeout)
    }

    /// Records an event from the admin itself.
    pub fn event(&self, kind: &str, server: Option<&str>, machine: Option<&str>, epoch: Option<u64>, message: String) {
        self.record(kind, server, machine, epoch, message, None);
    }

    /// Records an event from the admin, with the name of the operator token behind it (the
    /// audit trail of changes made through the API).
    pub(crate) fn record(
        &self,
        kind: &str,
        server: Option<&str>,
        machine: Option<&str>,
        epoch: Option<u64>,
        message: String,
        by: Option<&str>,
    ) {
        match by {
            Some(by) => tracing::info!(kind, by, "{message}"),
            None => tracing::info!(kind, "{message}"),
        }
        self.events.append(Event {
            id: 0,
            at_ms: clock::wall_ms(),
            source: "admin".into(),
            kind: kind.into(),
            server: server.map(Into::into),
            machine: machine.map(Into::into),
            epoch,
            message,
            by: by.map(Into::into),
        });
    }

    /// Asks every Node Manager what it runs, concurrently, with a short timeout.
    pub(crate) async fn poll_nms(&self) -> Vec<NmView> {
        let d = self.domain();
        let mut tasks = Vec::new();
        for m in &d.domain.machines {
            let client = self.nm_client(m, Duration::from_millis(800));
            let name = m.name.clone();
            let addr = m.node_manager.to_string();
            tasks.push(tokio::spawn(async move {
                let result = client.servers().await.map_err(|e| e.to_string());
                NmView { machine: name, addr, result }
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

    pub async fn machines(&self) -> Vec<MachineStatus> {
        self.poll_nms()
            .await
            .into_iter()
            .map(|v| MachineStatus {
                name: v.machine.to_string(),
                node_manager: v.addr,
                reachable: v.result.is_ok(),
                error: v.result.as_ref().err().cloned(),
                servers: v.result.unwrap_or_default(),
            })
            .collect()
    }

    /// The run-time view: the lease table says who holds what; Node Managers say what runs.
    pub async fn servers(&self) -> Result<Vec<ServerStatus>, ferry_store::StoreError> {
        let d = self.domain().domain;
        let leases = self.store.list().await?;
        let by_name: BTreeMap<LeaseName, Lease> = leases.into_iter().map(|l| (l.name.clone(), l)).collect();
        let nms = self.poll_nms().await;
        let mut out = Vec::new();
        for s in &d.servers {
            let lease = by_name.get(&LeaseName::Server(s.name.clone()));
            let master = by_name
                .get(&LeaseName::Master(s.cluster.clone()))
                .is_some_and(|m| m.is_live() && m.owner.as_ref() == Some(&s.name));
            // The Node Manager entries for this server that have a live process.
            let mut nm_entry: Option<(MachineName, NmServer)> = None;
            for v in &nms {
                if let Ok(list) = &v.result {
                    if let Some(e) = list.iter().find(|e| e.name == s.name.as_str()) {
                        let live = e.pid.is_some();
                        let better = match &nm_entry {
                            None => true,
                            Some((_, cur)) => live && cur.pid.is_none(),
                        };
                        let on_lease_machine = lease.and_then(|l| l.machine.as_ref()) == Some(&v.machine);
                        if better || (on_lease_machine && live) {
                            nm_entry = Some((v.machine.clone(), e.clone()));
                        }
                    }
                }
            }
            let (state, machine) = match (lease, &nm_entry) {
                (Some(l), _) if l.is_live() => ("RUNNING".to_string(), l.machine.as_ref().map(|m| m.to_string())),
                (_, Some((m, e))) if e.pid.is_some() => (e.state.clone(), Some(m.to_string())),
                (Some(l), _) if l.is_expired() => ("EXPIRED".to_string(), l.machine.as_ref().map(|m| m.to_string())),
                (_, Some((m, e))) => (e.state.clone(), Some(m.to_string())),
                (Some(l), None) if l.state == LeaseState::Released => {
                    ("SHUTDOWN".to_string(), l.machine.as_ref().map(|m| m.to_string()))
                }
                _ => ("SHUTDOWN".to_string(), None),
            };
            let pid =
                nm_entry.as_ref().filter(|(m, _)| Some(m.as_str()) == machine.as_deref()).and_then(|(_, e)| e.pid);
            out.push(ServerStatus {
                name: s.name.to_string(),
                cluster: s.cluster.to_string(),
                state,
                machine,
                home_machine: s.machine.to_string(),
                pid,
                epoch: lease.map(|l| l.epoch.0),
                incarnation: lease.and_then(|l| l.incarnation.as_ref().map(|i| i.0.clone())),
                lease_remaining_ms: lease.filter(|l| l.state == LeaseState::Held).map(|l| l.remaining_ms),
                master,
                floating_ip: s.floating_ip.map(|i| i.to_string()),
                auto_migration: s.auto_migration,
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
                name: c.name.to_string(),
                master: lease.as_ref().and_then(|l| l.owner.as_ref().map(|o| o.to_string())),
                master_epoch: lease.as_ref().map(|l| l.epoch.0),
                master_lease_remaining_ms: lease.as_ref().map(|l| l.remaining_ms),
                servers: d.servers_in(&c.name).map(|s| s.name.to_string()).collect(),
            });
        }
        Ok(out)
    }
}

/// Runs the Administration Server until Ctrl-C or SIGTERM.
pub async fn run(opts: AdminOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create data directory {}", opts.data_dir.display()))?;
    let (config, note) = ConfigStore::open(&opts.data_dir, &opts.domain_file)?;
    let secret_path = files::secret_path(&opts.domain_file);
    if let Some(dir) = secret_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
    }
    let secret = files::secret(&secret_path, true, rand::random)
        .with_context(|| format!("cannot read or create the domain secret {}", secret_path.display()))?;
    let domain = config.current.clone();
    let pki = crate::pki::AdminPki::open(&opts.data_dir, &opts.domain_file, domain.domain.name.as_str())?;
    let ds = domain.domain.leasing.data_source.clone();
    // The admin runs whatever state the lease table is in: its views answer with the
    // table's error (and the fix) until it is reachable.
    let store = ferry_store::open_lazy(&ds, Duration::from_secs(5));
    let lease_table_problem = if ds.starts_with("sqlite://") {
        // The embedded lease table is created on first use; a production database is
        // prepared by its operator with `ferry leasing init`.
        ferry_store::init(&ds).await.err()
    } else {
        store.expired().await.err()
    };
    let listen = opts.listen.unwrap_or(domain.domain.admin.listen);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} ([admin] listen)"))?;
    // The client file is named after the address operators reach: the bound one.
    let token_files =
        TokenFiles::new(&opts.data_dir, opts.client_config_dir.as_deref(), listener.local_addr().unwrap_or(listen));
    let (tokens, token_notes) = tokens::bootstrap(&opts.data_dir, &token_files, clock::wall_ms(), rand::random)?;
    let state = Arc::new(AdminState {
        config: Mutex::new(config),
        store,
        events: EventLog::open(opts.data_dir.join("events.jsonl")),
        ops: Operations::default(),
        secret,
        started_ms: clock::wall_ms(),
        pki,
        nm_clients: Mutex::default(),
        tokens: Mutex::new(tokens),
        token_hint: token_files.hint(),
    });
    for n in token_notes {
        state.event("operator-tokens", None, None, None, n);
    }
    if let Some(e) = lease_table_problem {
        state.event(
            "lease-table-unavailable",
            None,
            None,
            None,
            format!("{}; the Administration Server runs anyway and its views answer with this error until the table is reachable", ferry_store::chain(&e)),
        );
    }
    if let Some(n) = note {
        state.event("config-imported", None, None, None, n);
    }
    state.event(
        "admin-started",
        None,
        None,
        None,
        format!(
            "Administration Server of domain {} listening on {listen} (configuration version {})",
            domain.domain.name, domain.version
        ),
    );
    // TLS for daemons (mutual) and remote operators; plain HTTP from this host only.
    let config =
        state.pki.creds.server_config_optional_client(state.pki.revoked.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = ferry_tls::TlsListener::new(listener, config, true)?;
    let app = crate::http::router(state).into_make_service_with_connect_info::<ferry_tls::PeerInfo>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}
