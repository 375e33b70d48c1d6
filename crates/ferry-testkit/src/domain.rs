//! What both kinds of test domain share: the domain to start ([`DomainSpec`], the same for
//! one host and for lab hosts), and waiting on it ([`wait_until`], and the one wait for a
//! server to run that [`crate::Harness`] and [`crate::LabDomain`] both offer).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use ferry_api::{ServerStatus, ViewState};
use ferry_host::clock;

/// One migratable server of a harness domain.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub name: String,
    pub home: String,
    pub candidates: Vec<String>,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    pub name: String,
    pub machines: Vec<String>,
    pub cluster: String,
    /// The cluster's `migration_candidates`.
    pub cluster_candidates: Vec<String>,
    pub servers: Vec<ServerSpec>,
    pub interval_ms: u64,
    pub periods: u32,
    pub grace_ms: u64,
    /// `None`: SQLite in the harness directory (unless `consensus`).
    pub data_source: Option<String>,
    /// Consensus leasing among the machines' Node Managers instead of a database.
    pub consensus: bool,
    /// Lab only, with `consensus`: a witness of this name (`ferry witness`) in the switch
    /// namespace, next to the admin.
    pub witness: Option<String>,
    /// Give every service a journal (for the no-two-instances check).
    pub journal: bool,
    pub shutdown_timeout_ms: u64,
    /// Per machine: an `ifconfig` hook and its timeout in ms.
    pub ifconfig_hooks: Vec<(String, PathBuf, u64)>,
    /// Lab only: a machine whose floating-IP interface is not `eth0`.
    pub interfaces: Vec<(String, String)>,
    /// Lab only: a server whose floating IP is not the lab's next one.
    pub floating_ips: Vec<(String, std::net::Ipv4Addr)>,
    /// Extra environment of every daemon this harness starts (test knobs).
    pub env: Vec<(String, String)>,
    /// Put before every service's command (see [`PYTHON_SERVICE`]).
    pub service_prefix: Vec<String>,
    /// Every machine's `max_concurrent_starts` (`None`: the domain file leaves it out).
    pub starts_per_machine: Option<u32>,
}

/// A [`DomainSpec::service_prefix`] that makes every service start as a python3 service
/// does: the interpreter starts and imports `http.server`, then becomes the demo service
/// (which keeps the journal of the no-two-instances check). The start cost of the small
/// python3 HTTP services of issue 11, on a real interpreter.
pub const PYTHON_SERVICE: [&str; 3] =
    ["python3", "-c", "import http.server, os, sys; os.execvp(sys.argv[1], sys.argv[1:])"];

impl DomainSpec {
    /// The demo's domain: machines B, C, D; ms1 at home on B, ms2 on C (Figure 7-1).
    pub fn figure_7_1(interval_ms: u64, periods: u32, grace_ms: u64) -> Self {
        let m = |s: &str| s.to_string();
        DomainSpec {
            name: "demo".into(),
            machines: vec![m("machine-b"), m("machine-c"), m("machine-d")],
            cluster: "cluster-1".into(),
            cluster_candidates: vec![m("machine-b"), m("machine-c"), m("machine-d")],
            servers: vec![
                ServerSpec { name: m("ms1"), home: m("machine-b"), candidates: vec![m("machine-d"), m("machine-c")] },
                ServerSpec { name: m("ms2"), home: m("machine-c"), candidates: vec![m("machine-d"), m("machine-b")] },
            ],
            interval_ms,
            periods,
            grace_ms,
            data_source: None,
            consensus: false,
            witness: None,
            journal: true,
            shutdown_timeout_ms: 5_000,
            ifconfig_hooks: Vec::new(),
            interfaces: Vec::new(),
            floating_ips: Vec::new(),
            env: Vec::new(),
            service_prefix: Vec::new(),
            starts_per_machine: None,
        }
    }

    /// `n` servers (`s001`, `s002`, ...) spread round-robin over `machines` machines
    /// (`node-1`, ...), one cluster `scale` whose migration candidates are every machine, no
    /// server-level candidates: the load of `ferry-bench scale` and the many-servers tests.
    pub fn many(n: usize, machines: usize, interval_ms: u64, periods: u32, grace_ms: u64) -> Self {
        let names: Vec<String> = (1..=machines.max(1)).map(|i| format!("node-{i}")).collect();
        let servers = (0..n)
            .map(|i| ServerSpec {
                name: format!("s{:03}", i + 1),
                home: names[i % names.len()].clone(),
                candidates: Vec::new(),
            })
            .collect();
        DomainSpec {
            name: "scale".into(),
            machines: names.clone(),
            cluster: "scale".into(),
            cluster_candidates: names,
            servers,
            ..DomainSpec::figure_7_1(interval_ms, periods, grace_ms)
        }
    }
}

/// Polls `cond` every 20 ms until it holds or `patience` runs out.
pub async fn wait_until<F, Fut>(patience: Duration, what: &str, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = clock::now() + patience;
    loop {
        if cond().await {
            return Ok(());
        }
        if clock::now() >= until {
            bail!("timed out after {patience:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `server` is RUNNING on `machine` with an epoch above `epoch` (0: any
/// instance; its current epoch: a new instance, not the one that was there), reading the
/// domain's status with `status` every `poll`; gives the server's status. The error shows
/// the last status seen.
pub(crate) async fn wait_running<F, Fut>(
    mut status: F,
    poll: Duration,
    server: &str,
    machine: &str,
    epoch: u64,
    patience: Duration,
) -> anyhow::Result<ServerStatus>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<ServerStatus>>>,
{
    let until = clock::now() + patience;
    let mut last = None;
    loop {
        if let Ok(list) = status().await {
            if let Some(s) = list.into_iter().find(|s| s.name == server) {
                if s.state == ViewState::Running
                    && s.machine.as_deref() == Some(machine)
                    && s.epoch.map_or(0, |e| e.0) > epoch
                {
                    return Ok(s);
                }
                last = Some(s);
            }
        }
        if clock::now() >= until {
            bail!("{server} is not running on {machine} (epoch > {epoch}) after {patience:?}: {last:?}");
        }
        tokio::time::sleep(poll).await;
    }
}
