//! The Node Manager daemon's start-up (`ferry nodemanager`): check the machine is defined,
//! enroll or load its certificates, get the domain (from the admin, the domain file or the
//! cache), open the lease table, start the renewal batcher, the actor, the local channel and
//! the `/nm/v1` listener, and run until Ctrl-C or SIGTERM. Servers are left running when it
//! stops: a Node Manager restart must not take the domain down (the next one adopts them).

use ferry_core::EventKind;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_api::{AdminClient, EventSink, VersionedDomain};
use ferry_core::domain::LeasingBasis;
use ferry_core::nodeman::{NodeManager, NodeManagerTiming, RestartPolicy};
use ferry_core::{ClusterName, Epoch, MachineName};
use ferry_host::{clock, files};

use crate::actor::{Actor, Env, Handle, Msg};
use crate::channel::Channel;
use crate::plumbing::ServerDirs;
use crate::renewals::Batcher;

/// How long a call to the lease table may take (the Node Manager's own reads and writes;
/// servers' renewals use their own budget).
const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the configuration is fetched from the admin (it may change through the API).
const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// How long each call to the admin may take.
pub(crate) const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// A first start waits this many rounds for an admin that is not up yet ...
const ENROLL_PATIENCE_ROUNDS: u32 = 120;
/// ... this long apart.
const ENROLL_RETRY: Duration = Duration::from_millis(500);

/// How the Node Manager is started (`ferry nodemanager`).
#[derive(Debug, Clone)]
pub struct NmOptions {
    pub machine: MachineName,
    /// The domain file, if given; its `[admin] listen` is the admin's address.
    pub domain_file: Option<PathBuf>,
    pub admin_url: Option<String>,
    pub data_dir: PathBuf,
    /// The domain secret, when this process can read it (on the admin's host): enough to
    /// enroll this machine at its first start.
    pub secret: Option<String>,
    /// A one-time enrollment token (`ferry machine enroll-token`), for a first start.
    pub enroll_token: Option<String>,
    /// The `ferry` executable to start servers with.
    pub ferry_exe: PathBuf,
}

/// Runs a Node Manager until Ctrl-C or SIGTERM.
pub async fn run(opts: NmOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create data directory {}", opts.data_dir.display()))?;
    let cache = opts.data_dir.join("domain-cache.json");
    // A machine the domain does not define can do nothing: say so now, before waiting for
    // an Administration Server to enroll it (which may be down).
    check_defined(&opts, &cache, Role::NodeManager)?;
    let tls = Arc::new(certificates(&opts).await?);
    let domain = load_initial_domain(&opts, &cache, &tls.creds).await?;
    let _ = files::write_atomic(&cache, &serde_json::to_vec(&domain)?, 0o600);
    let machine = domain.domain.machine(&opts.machine).cloned().ok_or_else(|| {
        anyhow::anyhow!(
            "machine {} is not defined in domain {}: add a [[machines]] entry named {} or pass the right --machine",
            opts.machine,
            domain.domain.name,
            opts.machine
        )
    })?;
    let admin_url = opts.admin_url.clone().unwrap_or_else(|| format!("http://{}", domain.domain.admin.listen));
    let events = EventSink::new(format!("nodemanager/{}", opts.machine), clock::wall_ms);
    tokio::spawn(events.clone().deliver(AdminClient::with_tls(&admin_url, &tls.creds, ADMIN_CALL_TIMEOUT)));
    tokio::spawn(crate::pki::revocation_loop(tls.clone(), admin_url.clone()));
    // Consensus leasing: this machine's voter holds (a replica of) the lease table.
    let consensus = match domain.domain.leasing.basis {
        LeasingBasis::Consensus => Some(
            crate::consensus::Consensus::start(
                &domain.domain,
                &opts.machine,
                &opts.data_dir,
                &tls.creds,
                events.clone(),
            )
            .await?,
        ),
        LeasingBasis::Database => None,
    };
    let open = |timeout| match &consensus {
        Some(c) => c.store(timeout),
        None => ferry_store::open_lazy(&domain.domain.leasing.data_source, timeout),
    };
    // The lease table, opened at once in the background: the first start (a failover) must
    // not pay for the connection.
    let store = open(STORE_CALL_TIMEOUT);
    {
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.list().await {
                tracing::info!("lease table not reachable yet ({e}); will retry on first use");
            }
        });
    }
    // The renewals on a connection of their own: a burst of starts (lease reads, handovers)
    // never queues ahead of the renewals of the servers already up.
    let batcher = Batcher::start(open(STORE_CALL_TIMEOUT));
    let channel_path = opts.data_dir.join("nm.sock");
    let mut nm = NodeManager::new(opts.machine.clone(), RestartPolicy::default(), NodeManagerTiming::default());
    nm.supervisor.restore_master_epochs(restore_master_epochs(&opts.data_dir));
    let env = Env {
        machine: opts.machine.clone(),
        ferry_exe: opts.ferry_exe.clone(),
        admin_url: admin_url.clone(),
        channel: channel_path.clone(),
        data_dir: opts.data_dir.clone(),
        tls: tls.clone(),
        store: store.clone(),
        events: events.clone(),
    };
    let (mut actor, handle) = Actor::new(env, nm, domain.clone());
    // The local channel first: servers of an earlier Node Manager reconnect and are adopted.
    let channel = Arc::new(Channel {
        actor: handle.clone(),
        batcher: batcher.clone(),
        events: events.clone(),
        tls: tls.clone(),
        dirs: ServerDirs::new(&opts.data_dir),
        machine: opts.machine.clone(),
    });
    crate::channel::listen(&channel_path, channel)?;
    // Before taking commands: what an earlier Node Manager of this machine left in place
    // for servers that are gone (their floating IPs would make every other machine refuse
    // them).
    actor.remove_leftovers().await;
    tokio::spawn(actor.run());
    tokio::spawn(refresh_loop(Some(handle.clone()), opts.clone(), tls.clone(), domain, cache, consensus.clone()));
    let listener = tokio::net::TcpListener::bind(machine.node_manager).await.with_context(|| {
        format!("cannot listen on {} (node_manager of machine {})", machine.node_manager, opts.machine)
    })?;
    events.emit(
        EventKind::NodemanagerStarted,
        None,
        Some(&opts.machine),
        None,
        format!("Node Manager for {} listening on {}", opts.machine, machine.node_manager),
    );
    let config = tls.creds.server_config(tls.revoked.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = ferry_tls::TlsListener::new(listener, config, false)?;
    let api = Arc::new(crate::http::Api { machine: opts.machine.clone(), actor: handle, tls, store, batcher });
    let voters = consensus.as_ref().map(|c| c.clone().router());
    let app = crate::http::router(api, voters).into_make_service_with_connect_info::<ferry_tls::PeerInfo>();
    let leaving = consensus.clone();
    let stopping = async move {
        shutdown_signal().await;
        // Still listening: the leader may need this voter's answers to let it go.
        if let Some(c) = &leaving {
            c.leave().await;
        }
    };
    axum::serve(listener, app).with_graceful_shutdown(stopping).await?;
    // Leave servers running: a Node Manager restart must not take the domain down.
    Ok(())
}

/// Keeps the domain configuration fresh from the admin, and cached on disk (for the actor,
/// when this is a Node Manager, and the voter).
pub(crate) async fn refresh_loop(
    actor: Option<Handle>,
    opts: NmOptions,
    tls: Arc<crate::pki::NmTls>,
    mut current: VersionedDomain,
    cache: PathBuf,
    consensus: Option<Arc<crate::consensus::Consensus>>,
) {
    // One client (and TLS connection) while the admin's address stays the same.
    let mut admin: Option<(String, AdminClient)> = None;
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let url = opts.admin_url.clone().unwrap_or_else(|| format!("http://{}", current.domain.admin.listen));
        if admin.as_ref().is_none_or(|(u, _)| *u != url) {
            admin = Some((url.clone(), AdminClient::with_tls(&url, &tls.creds, ADMIN_CALL_TIMEOUT)));
        }
        let Some((_, client)) = &admin else { continue };
        if let Ok(d) = client.domain().await {
            if d.version > current.version || d.domain != current.domain {
                current = d.clone();
                let _ = files::write_atomic(&cache, &serde_json::to_vec(&d).unwrap_or_default(), 0o600);
                if let Some(c) = &consensus {
                    c.update(&d.domain);
                }
                if let Some(actor) = &actor {
                    actor.send(Msg::Domain(d)).await;
                }
            }
        }
    }
}

/// The highest master epochs an earlier run of this Node Manager saw (rule 5 across
/// restarts).
fn restore_master_epochs(data_dir: &std::path::Path) -> BTreeMap<ClusterName, Epoch> {
    std::fs::read(data_dir.join("master-epochs.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<BTreeMap<String, u64>>(&bytes).ok())
        .map(|map| map.into_iter().filter_map(|(c, e)| Some((ClusterName::new(c).ok()?, Epoch(e)))).collect())
        .unwrap_or_default()
}

/// What a process of this crate is to the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    NodeManager,
    Witness,
}

/// Fails at once when the domain file (or, without one, the cached configuration) does not
/// define this Node Manager's machine (or this witness).
pub(crate) fn check_defined(opts: &NmOptions, cache: &std::path::Path, role: Role) -> anyhow::Result<()> {
    let (domain, from) = match &opts.domain_file {
        Some(path) => (files::load_domain(path).map_err(|e| anyhow::anyhow!("{e}"))?, path.display().to_string()),
        None => match std::fs::read(cache).ok().and_then(|b| serde_json::from_slice::<VersionedDomain>(&b).ok()) {
            Some(d) => (d.domain, format!("the cached configuration {}", cache.display())),
            None => return Ok(()),
        },
    };
    match undefined(&domain, &opts.machine, &from, role) {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}

/// Why `name` cannot run as `role` in `domain` (read from `from`), or `None` when it can:
/// the daemons' check at start, and the command line's before it waits for anything.
pub fn undefined(domain: &ferry_core::domain::Domain, name: &MachineName, from: &str, role: Role) -> Option<String> {
    let list = |names: Vec<&str>, none: &str| if names.is_empty() { none.to_string() } else { names.join(", ") };
    match role {
        Role::NodeManager if domain.machine(name).is_some() => None,
        Role::NodeManager => Some(format!(
            "machine {name} is not defined in domain {} ({from} defines {}): add a [[machines]] entry named {name} or pass the right --machine{}",
            domain.name,
            list(domain.machines.iter().map(|m| m.name.as_str()).collect(), "no machines"),
            if domain.witness(name).is_some() { format!(" ({name} is a witness: run it with `ferry witness --name {name}`)") } else { String::new() }
        )),
        Role::Witness if domain.witness(name).is_some() => None,
        Role::Witness => Some(format!(
            "witness {name} is not defined in domain {} ({from} defines {}): add a [[witnesses]] entry named {name} with its listen address, or pass the right --name",
            domain.name,
            list(domain.witnesses.iter().map(|w| w.name.as_str()).collect(), "no witnesses")
        )),
    }
}

/// `url` as the TLS client dials it (every daemon talks to the admin over TLS, whatever
/// scheme the domain file's address implies): for messages.
fn tls_url(url: &str) -> String {
    let bare = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or(url);
    format!("https://{bare}")
}

/// This machine's certificates: loaded, or obtained by enrolling with the admin at the
/// first start (retrying while the admin is not up yet).
pub(crate) async fn certificates(opts: &NmOptions) -> anyhow::Result<crate::pki::NmTls> {
    let machine = opts.machine.as_str();
    if !crate::pki::enrolled(&opts.data_dir) {
        let from_file = match &opts.domain_file {
            Some(path) => Some(files::load_domain(path).map_err(|e| anyhow::anyhow!("{e}"))?),
            None => None,
        };
        let admin_url = opts
            .admin_url
            .clone()
            .or_else(|| from_file.as_ref().map(|d| format!("http://{}", d.admin.listen)))
            .ok_or_else(|| anyhow::anyhow!("give --admin-url or --domain"))?;
        let how = match (&opts.enroll_token, &opts.secret, &opts.domain_file) {
            (Some(t), _, _) => crate::pki::Enrollment::Token(t.clone()),
            (None, Some(secret), file) => crate::pki::Enrollment::DomainSecret {
                secret: secret.clone(),
                // On the admin's host the CA lies next to the domain file; elsewhere it is
                // fetched and checked with the secret.
                ca_file: file.as_ref().map(|f| files::secret_path(f).with_file_name("ca.pem")).filter(|p| p.exists()),
            },
            _ => anyhow::bail!(
                "machine {machine} is not enrolled (no certificates in {}): on the admin's host run `ferry machine enroll-token {machine}`, then here `ferry enroll --machine {machine} --token TOKEN --admin-url {admin_url} --data-dir {}` (or pass --enroll-token to this command)",
                crate::pki::pki_dir(&opts.data_dir).display(),
                opts.data_dir.display()
            ),
        };
        let mut waited = 0u32;
        loop {
            match crate::pki::enroll(&opts.data_dir, &opts.machine, &admin_url, &how).await {
                Ok(()) => {
                    tracing::info!(
                        "machine {machine} enrolled with the Administration Server at {}",
                        tls_url(&admin_url)
                    );
                    break;
                }
                // A refusal will not change by waiting; an admin not up yet will.
                Err(e) if waited < ENROLL_PATIENCE_ROUNDS && is_transient(&e) => {
                    if waited.is_multiple_of(10) {
                        tracing::warn!("waiting for the Administration Server to enroll machine {machine}: {e:#}");
                    }
                    waited += 1;
                    tokio::time::sleep(ENROLL_RETRY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    crate::pki::load(&opts.data_dir, machine)
}

/// Whether an enrollment failure may pass by itself: the admin did not answer (it is not up
/// yet), or has not written the domain CA next to the domain file yet. Decided from the
/// errors themselves, not their wording; a refusal will not change by waiting.
fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<ferry_api::ClientError>().is_some_and(|c| c.is_unreachable())
            || cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    })
}

pub(crate) async fn load_initial_domain(
    opts: &NmOptions,
    cache: &std::path::Path,
    creds: &ferry_tls::Credentials,
) -> anyhow::Result<VersionedDomain> {
    let from_file = match &opts.domain_file {
        Some(path) => Some(files::load_domain(path).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let admin_url = opts.admin_url.clone().or_else(|| from_file.as_ref().map(|d| format!("http://{}", d.admin.listen)));
    if let Some(url) = admin_url {
        if let Ok(d) = AdminClient::with_tls(&url, creds, ADMIN_CALL_TIMEOUT).domain().await {
            return Ok(d);
        }
    }
    if let Some(domain) = from_file {
        return Ok(VersionedDomain { version: 0, domain });
    }
    let text = std::fs::read(cache).with_context(|| {
        format!("the Administration Server is unreachable and there is no cached configuration at {}", cache.display())
    })?;
    Ok(serde_json::from_slice(&text)?)
}

pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_admin_that_is_not_up_yet_is_worth_waiting_for() {
        let unreachable = ferry_api::ClientError::Unreachable { url: "https://a".into(), reason: "refused".into() };
        assert!(is_transient(&anyhow::Error::new(unreachable).context("enrollment of machine m failed")));
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no ca.pem");
        assert!(is_transient(&anyhow::Error::new(missing).context("cannot read the domain CA certificate")));
        let refused = ferry_api::ClientError::Api {
            status: 403,
            error: "cannot reach ... (a message that only looks transient)".into(),
            detail: serde_json::Value::Null,
        };
        assert!(!is_transient(&anyhow::Error::new(refused).context("enrollment of machine m failed")));
        assert!(!is_transient(&anyhow::anyhow!("did not answer: just words")));
    }
}
