//! The Administration Server daemon (`ferry admin`): opens the configuration, the domain
//! secret, the CA and the lease table, makes the first start's Admin token, starts polling the
//! machines' views, and serves `/api/v1` (TLS for daemons and remote operators, plain HTTP
//! from this host only) until Ctrl-C or SIGTERM. Crash-only: everything it shows is rebuilt
//! from the lease table and the Node Managers at every start.

use ferry_core::EventKind;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ferry_host::{clock, files};

use crate::config::ConfigStore;
use crate::events::EventLog;
use crate::operations::Operations;
use crate::state::AdminState;
use crate::tokens::{self, TokenFiles};
use crate::views::POLL_INTERVAL;

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
    let listen = opts.listen.unwrap_or(domain.domain.admin.listen);
    let names = crate::pki::AdminNames::new(listen, crate::pki::AdminNames::hostname().as_deref());
    let pki = crate::pki::AdminPki::open(&opts.data_dir, &opts.domain_file, domain.domain.name.as_str(), &names)?;
    let ds = domain.domain.leasing.data_source.clone();
    // The admin runs whatever state the lease table is in: its views answer with the
    // table's error (and the fix) until it is reachable.
    let consensus = domain.domain.leasing.basis == ferry_core::domain::LeasingBasis::Consensus;
    let store = if consensus {
        // Consensus leasing: the table is at the cluster leader, relayed by any voter.
        let nms: Vec<_> = domain.domain.voters().into_iter().map(|(_, addr)| addr).collect();
        ferry_consensus::http::relay_store(&nms, &pki.creds, Duration::from_secs(5))?
    } else {
        ferry_store::open_lazy(&ds, Duration::from_secs(5))
    };
    let lease_table_problem = if consensus {
        // The voters start the table: nothing to prepare, and no Node Manager may be up yet.
        None
    } else if ds.starts_with("sqlite://") {
        // The embedded lease table is created on first use; a production database is
        // prepared by its operator with `ferry leasing init`.
        ferry_store::init(&ds).await.err()
    } else {
        store.expired().await.err()
    };
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
        views: Arc::default(),
    });
    // The machines' views, from the first moment (crash-only: nothing of them is kept).
    tokio::spawn(keep_polling(state.clone()));
    for n in token_notes {
        state.event(EventKind::OperatorTokens, None, None, None, n);
    }
    if let Some(e) = lease_table_problem {
        state.event(
            EventKind::LeaseTableUnavailable,
            None,
            None,
            None,
            format!("{}; the Administration Server runs anyway and its views answer with this error until the table is reachable", ferry_store::chain(&e)),
        );
    }
    if let Some(n) = note {
        state.event(EventKind::ConfigImported, None, None, None, n);
    }
    state.event(
        EventKind::AdminStarted,
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

/// The background round: every [`POLL_INTERVAL`], one poll of each machine of the domain
/// that has none in flight; views of machines that left the domain are dropped. Runs for
/// the admin's life.
pub(crate) async fn keep_polling(state: Arc<AdminState>) {
    loop {
        let machines = state.nm_clients_for_views();
        state.views.retain(&machines.iter().map(|(m, a, _)| (m.clone(), a.clone())).collect::<Vec<_>>());
        for (m, addr, client) in machines {
            state.views.poll(m, addr, client);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
