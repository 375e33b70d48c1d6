//! `ferry server NAME`, started by a Node Manager: read the bootstrap it wrote on stdin,
//! open the local channel, obtain the configuration (from the admin, else the cache, else the
//! Node Manager's copy: managed server independence), open the lease table and run the loop.

use ferry_core::EventKind;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::{AdminClient, Bootstrap, Report, VersionedDomain};
use ferry_core::keeper::KeeperTiming;
use ferry_core::ServerName;
use ferry_host::files;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::channel::Channel;
use crate::context::{Ctx, Msg};
use crate::runtime::EXIT_CONFIG;

/// Runs `ferry server NAME`; returns the process's exit status (told to the Node Manager
/// first, which cannot wait for a server it adopted).
pub async fn run(name: ServerName) -> i32 {
    let boot = match read_bootstrap().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ferry server {name}: {e}");
            return EXIT_CONFIG;
        }
    };
    let (tx, rx) = mpsc::channel(256);
    let replies = tx.clone();
    let channel = Channel::new(
        boot.channel.clone(),
        Report::Hello {
            server: name.clone(),
            incarnation: boot.incarnation.clone(),
            pid: std::process::id(),
            epoch: None,
            master: false,
        },
        // Read on the channel's own thread, outside the runtime.
        Box::new(move |reply| {
            let _ = replies.blocking_send(Msg::Reply(reply));
        }),
    );
    let code = run_inner(name, boot, channel.clone(), tx, rx).await;
    channel.send(&Report::Exiting { code });
    code
}

async fn run_inner(
    name: ServerName,
    boot: Bootstrap,
    channel: Arc<Channel>,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
) -> i32 {
    let machine = boot.machine.clone();
    let cache_dir = PathBuf::from(&boot.cache_dir);
    let Some(domain) = obtain_config(&name, &boot, &cache_dir, &channel).await else {
        return EXIT_CONFIG;
    };
    let Some(server) = domain.domain.server(&name).cloned() else {
        eprintln!(
            "ferry server {name}: server {name} is not defined in domain {} (version {})",
            domain.domain.name, domain.version
        );
        return EXIT_CONFIG;
    };
    let mut timing = KeeperTiming::new(server.health_check_interval, server.health_check_periods_until_fencing);
    // Patience to take the lease: long enough for a dead holder's lease to run out.
    timing.acquire_patience_ms = Some(timing.ttl_ms + 2 * timing.interval_ms);
    // Connected on first use: an unreachable table is then just a failed acquisition,
    // retried within the acquire patience (and after it, by the Node Manager).
    let call_timeout = Duration::from_millis(timing.request_timeout_ms());
    let store = match open_table(&domain.domain, &machine, boot.credentials.as_ref(), call_timeout) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("ferry server {name}: {e:#}");
            return EXIT_CONFIG;
        }
    };
    let ctx = Ctx {
        name,
        machine,
        incarnation: boot.incarnation.clone(),
        domain: domain.domain.clone(),
        server,
        store,
        credentials: boot.credentials.clone(),
        tx,
        channel,
    };
    let handover = boot.handover_from.clone();
    crate::runtime::Runtime::new(ctx, timing, handover, cache_dir).run(rx).await
}

/// The lease table: the database, or (consensus leasing) the cluster leader, reached
/// through this machine's Node Manager.
fn open_table(
    domain: &ferry_core::domain::Domain,
    machine: &ferry_core::MachineName,
    credentials: Option<&ferry_tls::Credentials>,
    call_timeout: Duration,
) -> anyhow::Result<std::sync::Arc<dyn ferry_store::LeaseStore>> {
    match domain.leasing.basis {
        ferry_core::domain::LeasingBasis::Database => {
            Ok(ferry_store::open_lazy(&domain.leasing.data_source, call_timeout))
        }
        ferry_core::domain::LeasingBasis::Consensus => {
            let creds = credentials.ok_or_else(|| {
                anyhow::anyhow!(
                    "consensus leasing needs a certificate from the Node Manager, and none came with the start"
                )
            })?;
            let nm = domain
                .machine(machine)
                .ok_or_else(|| anyhow::anyhow!("machine {machine} is not defined in domain {}", domain.name))?
                .node_manager;
            ferry_consensus::http::relay_store(&[nm], creds, call_timeout)
        }
    }
}

async fn read_bootstrap() -> Result<Bootstrap, String> {
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    match tokio::time::timeout(Duration::from_secs(10), stdin.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => serde_json::from_str(&line).map_err(|e| format!("bad bootstrap message from the Node Manager: {e}")),
        _ => Err("no bootstrap message on stdin: `ferry server` is started by a Node Manager (`ferry start NAME`), not by hand".into()),
    }
}

/// Figure 7-1 steps 4 and 5: fetch the configuration from the admin and cache it; when the
/// admin is down, use the cached copy (managed server independence), then the Node
/// Manager's copy.
async fn obtain_config(
    name: &ServerName,
    boot: &Bootstrap,
    cache_dir: &std::path::Path,
    channel: &Arc<Channel>,
) -> Option<VersionedDomain> {
    let report = |r: &Report| {
        channel.send(r);
    };
    let cache = cache_dir.join("config-cache.json");
    let admin = match &boot.credentials {
        Some(c) => AdminClient::with_tls(&boot.admin_url, c, Duration::from_secs(2)),
        None => AdminClient::new(&boot.admin_url, Duration::from_secs(2)),
    };
    match admin.server_config(name.as_str()).await {
        Ok(d) => {
            if let Ok(bytes) = serde_json::to_vec(&d) {
                if let Err(e) = files::write_atomic(&cache, &bytes, 0o600) {
                    tracing::warn!("could not cache the configuration at {}: {e}", cache.display());
                }
            }
            report(&Report::Event {
                kind: EventKind::ConfigObtained,
                message: format!(
                    "{name} obtained configuration version {} from the Administration Server and cached it",
                    d.version
                ),
                epoch: None,
                server: None,
            });
            return Some(d);
        }
        Err(e) => {
            tracing::warn!("Administration Server unavailable ({e}); using cached configuration")
        }
    }
    if let Some(d) = std::fs::read(&cache).ok().and_then(|b| serde_json::from_slice::<VersionedDomain>(&b).ok()) {
        report(&Report::Event {
            kind: EventKind::ConfigCached,
            message: format!(
                "{name} started from its cached configuration version {} (Administration Server unreachable)",
                d.version
            ),
            epoch: None,
            server: None,
        });
        return Some(d);
    }
    if let Some(d) = boot.domain.clone() {
        report(&Report::Event {
            kind: EventKind::ConfigCached,
            message: format!("{name} started from the Node Manager's copy of the configuration (version {}; Administration Server unreachable)", d.version),
            epoch: None,
            server: None,
        });
        return Some(d);
    }
    eprintln!(
        "ferry server {name}: the Administration Server at {} is unreachable and no configuration is cached",
        boot.admin_url
    );
    None
}
