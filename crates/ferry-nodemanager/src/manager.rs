//! The Node Manager's state and the supervision of its server processes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ferry_api::{AdminClient, Bootstrap, EventSink, NmAck, NmServer, Origin, Report, VersionedDomain};
use ferry_core::domain::Domain;
use ferry_core::nodeman::{ExitKind, RestartPolicy, Supervisor, SupervisorAction};
use ferry_core::{ClusterName, Epoch, Incarnation, LeaseName, MachineName, Mono, ServerName};
use ferry_host::hooks::{self, IpAction};
use ferry_host::{clock, files, process};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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

/// One server process (or the memory of one) on this machine.
#[derive(Debug, Clone, Default)]
pub(crate) struct Proc {
    pub state: &'static str,
    pub pid: Option<i32>,
    pub incarnation: Option<Incarnation>,
    pub epoch: Option<u64>,
    pub deadline: Option<Mono>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub master: bool,
    /// Set when this Node Manager stops or kills the process on purpose.
    pub stopping: bool,
    pub fenced: bool,
    /// This Node Manager added the server's floating IP here (or adopted a server that
    /// runs with it) and has not removed it yet; also kept on disk (`servers/NAME/plumbed`)
    /// so a restarted Node Manager removes what it left behind.
    pub ip_plumbed: bool,
    /// Likewise for the mount hook's `mount` (`servers/NAME/mounted`).
    pub mounted: bool,
    /// Bumped by every explicit start or stop: a pending automatic restart that sees it
    /// changed gives way to what the operator or the master asked for.
    pub generation: u64,
    /// The exit status the server announced (all an adopted server leaves behind).
    pub exit_hint: Option<i32>,
}

pub(crate) struct Nm {
    pub opts: NmOptions,
    /// Serialises the writes of `master-epochs.json`.
    pub epochs_write: tokio::sync::Mutex<()>,
    pub tls: Arc<crate::pki::NmTls>,
    pub domain: Mutex<VersionedDomain>,
    pub sup: Mutex<Supervisor>,
    pub procs: Mutex<BTreeMap<ServerName, Proc>>,
    pub events: EventSink,
    pub wake: tokio::sync::Notify,
    /// Serialises start and stop of one server (two commands must not interleave).
    pub locks: Mutex<BTreeMap<ServerName, Arc<tokio::sync::Mutex<()>>>>,
    /// The lease table, opened on first use (releases after a kill, restart checks).
    pub store: tokio::sync::Mutex<Option<Arc<dyn ferry_store::LeaseStore>>>,
    /// Renewals its servers handed over, waiting for the next batch.
    pub renewals: Mutex<Vec<PendingRenewal>>,
    pub renewal_wake: tokio::sync::Notify,
    /// Renewals sent and `renew_many` calls made (for `/nm/v1/health`).
    pub renewal_counts: Mutex<(u64, u64)>,
}

/// A renewal a server handed to this Node Manager, with where to send the answer.
pub(crate) struct PendingRenewal {
    pub id: u64,
    pub renewal: ferry_store::Renewal,
    pub reply: Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>,
}

/// What a Node Manager puts in place for a server before it starts, and undoes after.
#[derive(Debug, Clone, Copy)]
enum Plumbing {
    Ip,
    Mount,
}

impl Plumbing {
    fn file(self) -> &'static str {
        match self {
            Plumbing::Ip => "plumbed",
            Plumbing::Mount => "mounted",
        }
    }
}

/// The fence loop woke this much later than the deadline it slept for: the Node Manager was
/// not running (see `fence_loop`).
const LATE_WAKE: Duration = Duration::from_millis(100);
/// How long it then lets the local channel's readers catch up before it judges deadlines.
const CATCH_UP: Duration = Duration::from_millis(20);

/// How long the batcher waits after the first renewal for others to join it.
const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// The most renewals in one `renew_many`.
const BATCH_MAX: usize = 1_000;

/// An error answered to a caller: HTTP status, message, and for refusals a caller may act
/// on, a stable reason word (`detail.reason` of the answer).
#[derive(Debug)]
pub(crate) struct Refusal {
    pub status: u16,
    pub error: String,
    pub reason: Option<&'static str>,
}

impl Refusal {
    pub fn new(status: u16, error: impl Into<String>) -> Self {
        Refusal { status, error: error.into(), reason: None }
    }

    fn because(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }
}

impl Nm {
    pub fn domain(&self) -> VersionedDomain {
        self.domain.lock().map(|d| d.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    fn generation(&self, server: &ServerName) -> u64 {
        self.procs.lock().ok().and_then(|p| p.get(server).map(|p| p.generation)).unwrap_or(0)
    }

    fn bump_generation(&self, server: &ServerName) {
        if let Ok(mut procs) = self.procs.lock() {
            procs.entry(server.clone()).or_default().generation += 1;
        }
    }

    /// The lease table, opened once and kept.
    async fn store(&self) -> Result<Arc<dyn ferry_store::LeaseStore>, ferry_store::StoreError> {
        let mut guard = self.store.lock().await;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let ds = self.domain().domain.leasing.data_source.clone();
        let s = ferry_store::open(&ds, Duration::from_secs(2)).await?;
        *guard = Some(s.clone());
        Ok(s)
    }

    /// Brings back a server that fenced itself, unless someone else has it or will restart it
    /// ([`ferry_core::nodeman::after_fence`]: the cluster master and this Node Manager never
    /// both). It looks one health-check interval after the fence, so a master that is alive
    /// has renewed its lease since; if the table cannot be read (an outage: every server
    /// fenced, the master too), it asks again every interval, and brings the server back as
    /// soon as the table answers: the domain is back within an interval or two of the
    /// table's return. Once it decided to restart, it waits out `delay_ms` (which grows while
    /// the server keeps fencing, rule 9) and checks only that nobody took the lease meanwhile.
    /// An operator's or master's command meanwhile makes this give way.
    async fn restart_if_unclaimed(
        self: Arc<Self>,
        server: ServerName,
        old: Incarnation,
        delay_ms: u64,
        generation: u64,
    ) {
        let fenced_at = clock::now();
        let Some(cfg) = self.domain().domain.server(&server).cloned() else { return };
        let interval = Duration::from_millis(cfg.health_check_interval.as_millis().clamp(50, 10_000) as u64);
        let mut table_was_down = false;
        let mut decided = false;
        let mut wait = interval;
        loop {
            tokio::time::sleep(wait).await;
            let current = self.procs.lock().ok().and_then(|p| p.get(&server).map(|p| (p.generation, p.pid, p.epoch)));
            let Some((g, None, epoch)) = current else { return };
            if g != generation {
                return;
            }
            let read = async {
                let store = self.store().await?;
                let lease = store.get(&LeaseName::Server(server.clone())).await?;
                let master = store.get(&LeaseName::Master(cfg.cluster.clone())).await?;
                Ok::<_, ferry_store::StoreError>((lease, master))
            };
            let (lease, master) = match read.await {
                Ok(rows) => rows,
                Err(e) => {
                    if !table_was_down {
                        table_was_down = true;
                        self.events.emit(
                            "waiting-for-lease-table",
                            Some(server.as_str()),
                            Some(self.machine_name()),
                            epoch,
                            format!("{server} fenced itself; it will be restarted here once the lease table answers again ({e})"),
                        );
                    }
                    wait = interval;
                    continue;
                }
            };
            // Once decided, only a lease that moved on stops the restart (no master lease:
            // a master elected since would otherwise make this wait out its grace period).
            let master = if decided { None } else { master };
            let since_fence_ms = clock::now().since(fenced_at);
            match ferry_core::nodeman::after_fence(
                &server,
                &old,
                lease.as_ref(),
                master.as_ref(),
                since_fence_ms,
                table_was_down,
            ) {
                ferry_core::nodeman::AfterFence::GiveWay(why) => {
                    self.events.emit(
                        "not-restarting",
                        Some(server.as_str()),
                        Some(self.machine_name()),
                        lease.as_ref().map(|l| l.epoch.0).or(epoch),
                        format!("not restarting fenced {server} here: {why}"),
                    );
                    return;
                }
                ferry_core::nodeman::AfterFence::Restart if !decided && since_fence_ms < delay_ms => {
                    decided = true;
                    wait = Duration::from_millis(delay_ms - since_fence_ms);
                }
                ferry_core::nodeman::AfterFence::Restart => {
                    self.events.emit(
                        "restart-after-fence",
                        Some(server.as_str()),
                        Some(self.machine_name()),
                        epoch,
                        format!(
                            "{} and no one else restarts {server} (fenced incarnation {old}); restarting it on {}",
                            if table_was_down { "the lease table answers again" } else { "the lease table answers" },
                            self.opts.machine
                        ),
                    );
                    if let Err(r) = self.start(&server, &Origin::Admin, false, Some(old.clone())).await {
                        tracing::warn!("restart of {server} failed: {}", r.error);
                    }
                    return;
                }
            }
        }
    }

    fn machine_name(&self) -> &str {
        self.opts.machine.as_str()
    }

    fn lock_for(&self, server: &ServerName) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(server.clone()).or_default().clone()
    }

    fn server_dir(&self, server: &ServerName) -> PathBuf {
        self.opts.data_dir.join("servers").join(server.as_str())
    }

    fn set_state(&self, server: &ServerName, state: &'static str) {
        if let Ok(mut procs) = self.procs.lock() {
            procs.entry(server.clone()).or_default().state = state;
        }
        // The seed's server.state file: the first line is the state.
        let _ = files::write_atomic(&self.server_dir(server).join("state"), format!("{state}\n").as_bytes(), 0o644);
    }

    pub fn snapshot(&self) -> Vec<NmServer> {
        let now = clock::now();
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        procs
            .iter()
            .map(|(name, p)| NmServer {
                name: name.to_string(),
                state: p.state.to_string(),
                pid: p.pid,
                incarnation: p.incarnation.as_ref().map(|i| i.0.clone()),
                epoch: p.epoch,
                deadline_in_ms: p.deadline.map(|d| d.0 as i64 - now.0 as i64),
                restarts: p.restarts,
                last_exit: p.last_exit.clone(),
                master: p.master,
            })
            .collect()
    }

    fn ack(&self, server: &ServerName, message: impl Into<String>) -> NmAck {
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let p = procs.get(server).cloned().unwrap_or_default();
        NmAck { server: server.to_string(), state: p.state.to_string(), pid: p.pid, message: message.into() }
    }

    /// Checks the caller's certificate against the command's origin: the admin commands as
    /// the admin; a server only as the master of its cluster, and only while the lease table
    /// names it holder of the master lease at the epoch it claims; nobody else commands.
    pub(crate) async fn authorize(&self, peer: Option<&ferry_tls::Peer>, origin: &Origin) -> Result<(), Refusal> {
        use ferry_tls::Identity;
        let Some(peer) = peer else {
            return Err(Refusal::new(401, "a client certificate of this domain is needed"));
        };
        match (&peer.identity, origin) {
            (Identity::Admin, Origin::Admin) => Ok(()),
            (Identity::Admin, Origin::Master { .. }) => {
                Err(Refusal::new(403, "the Administration Server's certificate cannot send a cluster master's command"))
            }
            (Identity::Server(s), Origin::Master { cluster, epoch, server }) => {
                if s != server {
                    return Err(Refusal::new(
                        403,
                        format!("the command claims to come from {server}, but the certificate is server {s}'s"),
                    ));
                }
                let cluster_name = ClusterName::new(cluster.as_str()).map_err(|e| Refusal::new(400, e.to_string()))?;
                let store = self.store().await.map_err(|e| {
                    Refusal::new(
                        503,
                        format!("cannot check that {s} is master of {cluster}: {}", ferry_store::chain(&e)),
                    )
                })?;
                let lease = store.get(&LeaseName::Master(cluster_name)).await.map_err(|e| {
                    Refusal::new(
                        503,
                        format!("cannot check that {s} is master of {cluster}: {}", ferry_store::chain(&e)),
                    )
                })?;
                match lease {
                    Some(l) if l.is_live() && l.owner.as_ref().is_some_and(|o| o.as_str() == s) && l.epoch.0 == *epoch => Ok(()),
                    Some(l) => Err(Refusal::new(
                        403,
                        format!(
                            "server {s} is not the current master of {cluster} at epoch {epoch}: the lease table names {} at epoch {}{}",
                            l.owner.as_ref().map_or("nobody".to_string(), |o| o.to_string()),
                            l.epoch,
                            if l.is_live() { "" } else { " (expired)" }
                        ),
                    )),
                    None => Err(Refusal::new(403, format!("server {s} is not master of {cluster}: the cluster has no master lease"))),
                }
            }
            (Identity::Server(s), Origin::Admin) => {
                Err(Refusal::new(403, format!("server {s} cannot send the Administration Server's commands")))
            }
            (Identity::Machine(m), _) => Err(Refusal::new(
                403,
                format!(
                    "machine {m}'s certificate cannot command a Node Manager: only the admin and cluster masters can"
                ),
            )),
        }
    }

    /// Writes the highest master epochs seen, in the background; writes are serialised and
    /// each writes the newest state, so the file never goes back.
    fn persist_master_epochs(self: &Arc<Self>) {
        let nm = self.clone();
        tokio::spawn(async move {
            let _one_at_a_time = nm.epochs_write.lock().await;
            let epochs: BTreeMap<String, u64> = {
                let sup = nm.sup.lock().unwrap_or_else(|p| p.into_inner());
                sup.master_epochs().iter().map(|(c, e)| (c.to_string(), e.0)).collect()
            };
            let path = nm.opts.data_dir.join("master-epochs.json");
            let r = tokio::task::spawn_blocking(move || {
                let bytes = serde_json::to_vec(&epochs).map_err(std::io::Error::other)?;
                files::write_atomic(&path, &bytes, 0o600)
            })
            .await;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("cannot persist master epochs: {e}"),
                Err(e) => tracing::warn!("cannot persist master epochs: {e}"),
            }
        });
    }

    /// Checks who is asking: a master's command must carry the highest master epoch seen for
    /// a cluster this server belongs to (rule 5).
    fn check_origin(self: &Arc<Self>, domain: &Domain, server: &ServerName, origin: &Origin) -> Result<(), Refusal> {
        if let Origin::Master { cluster, epoch, server: from } = origin {
            let cluster = ClusterName::new(cluster.as_str()).map_err(|e| Refusal::new(400, e.to_string()))?;
            let cfg = domain.server(server).ok_or_else(|| Refusal::new(404, format!("unknown server {server}")))?;
            if cfg.cluster != cluster {
                return Err(Refusal::new(
                    403,
                    format!(
                        "the master of cluster {cluster} may not command {server}, which belongs to {}",
                        cfg.cluster
                    ),
                ));
            }
            let mut sup = self.sup.lock().unwrap_or_else(|p| p.into_inner());
            let before = sup.highest_master_epoch(&cluster);
            let checked = sup.check_master(&cluster, Epoch(*epoch));
            if checked.is_ok() && sup.highest_master_epoch(&cluster) > before {
                // Rule 5 must survive a restart of this Node Manager. Written off the
                // command's path (an fsync); the command is already checked against the
                // master lease in the table (`authorize`), so nothing waits for the disk.
                self.persist_master_epochs();
            }
            if let Err(stale) = checked {
                self.events.emit(
                    "stale-master-refused",
                    Some(server.as_str()),
                    Some(self.machine_name()),
                    Some(*epoch),
                    format!("refused a command from {from}: {stale}"),
                );
                return Err(Refusal::new(409, stale.to_string()));
            }
        }
        Ok(())
    }

    /// The current domain and `server`'s configuration in it, or a 404 naming the domain.
    fn server_cfg(&self, server: &ServerName) -> Result<(VersionedDomain, ferry_core::domain::Server), Refusal> {
        let domain = self.domain();
        let cfg = domain.domain.server(server).cloned().ok_or_else(|| {
            Refusal::new(404, format!("unknown server {server}: it is not defined in domain {}", domain.domain.name))
        })?;
        Ok((domain, cfg))
    }

    /// Starts `server` here. Idempotent: a server already running here is left alone
    /// unless `in_place` asks to replace what is left of it.
    pub async fn start(
        self: &Arc<Self>,
        server: &ServerName,
        origin: &Origin,
        in_place: bool,
        handover_from: Option<Incarnation>,
    ) -> Result<NmAck, Refusal> {
        let (domain, cfg) = self.server_cfg(server)?;
        let machine =
            domain.domain.machine(&self.opts.machine).cloned().ok_or_else(|| {
                Refusal::new(409, format!("machine {} is not defined in the domain", self.opts.machine))
            })?;
        let allowed =
            cfg.machine == self.opts.machine || domain.domain.candidates_for(&cfg).contains(&self.opts.machine);
        if !allowed {
            return Err(Refusal::new(
                409,
                format!(
                    "server {server} may not run on {}: it is neither its home machine ({}) nor one of its candidate machines",
                    self.opts.machine, cfg.machine
                ),
            ));
        }
        self.check_origin(&domain.domain, server, origin)?;
        let lock = self.lock_for(server);
        let _guard = lock.lock().await;
        if handover_from.is_none() {
            self.bump_generation(server);
        }

        let running = {
            let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            procs.get(server).and_then(|p| p.pid.filter(|&pid| process::alive(pid)).map(|pid| (pid, p.clone())))
        };
        let mut handover_from = handover_from;
        if let Some((pid, p)) = running {
            if !in_place {
                return Ok(self.ack(server, format!("{server} is already running here (pid {pid})")));
            }
            self.events.emit(
                "kill",
                Some(server.as_str()),
                Some(self.machine_name()),
                p.epoch,
                format!("killing what is left of {server} (pid {pid}) before restarting it in place"),
            );
            self.kill_and_wait(server, pid).await;
            // This Node Manager reaped that incarnation itself: it may hand its lease over.
            handover_from = p.incarnation.clone();
        }
        if let Some(sup) = self.sup.lock().ok().as_mut() {
            if !matches!(origin, Origin::Admin) || handover_from.is_none() {
                sup.reset_crashes(server);
            }
        }

        // Never plumb a floating IP or start a second copy while another instance holds a
        // live lease: the address must not be on two machines, and the copy could not run.
        // (A handover restart replaces the holder this Node Manager just reaped.)
        let mut lease_not_live = false;
        if handover_from.is_none() {
            let lease = match self.store().await {
                Ok(store) => store.get(&LeaseName::Server(server.clone())).await,
                Err(e) => Err(e),
            };
            match lease {
                Ok(Some(l)) if l.is_live() => {
                    return Err(Refusal::new(
                        409,
                        format!(
                            "{server} is running on {} (epoch {}, lease {} ms left); not starting a second copy on {}",
                            l.machine.as_ref().map_or("?", |m| m.as_str()),
                            l.epoch,
                            l.remaining_ms,
                            self.opts.machine
                        ),
                    ));
                }
                Ok(_) => lease_not_live = true,
                // A server started here could not take its lease either: refuse at once, so
                // a cluster master moves on to another machine instead of waiting out its
                // start timeout while this machine holds the floating IP.
                Err(e) => {
                    return Err(Refusal::new(
                        503,
                        format!(
                            "not starting {server} on {}: this machine cannot read the lease table: {}",
                            self.opts.machine,
                            ferry_store::chain(&e)
                        ),
                    ));
                }
            }
        }

        // An instance started by an earlier Node Manager of this machine that never said
        // hello to this one (it hung while no Node Manager ran) is not supervised, so nothing
        // fenced it at its deadline (rule 3): its services may still run. Its lease is gone
        // (or the master says it failed), so kill it before another copy starts, as a
        // restart in place kills what is left of a known instance.
        if handover_from.is_none() && (lease_not_live || in_place) {
            if let Some(orphan) = self.orphan(server) {
                self.events.emit(
                    "kill",
                    Some(server.as_str()),
                    Some(self.machine_name()),
                    None,
                    format!("killing an earlier instance of {server} (pid {orphan}) that this Node Manager does not supervise before starting it"),
                );
                process::kill_session_and_wait(orphan, Duration::from_secs(1)).await;
            }
        }

        // Floating IP and disks first: the server must find them in place (Figure 7-2).
        let ip_plumbed = self.procs.lock().ok().and_then(|p| p.get(server).map(|p| p.ip_plumbed)).unwrap_or(false);
        if let (Some(ip), false) = (cfg.floating_ip, ip_plumbed) {
            match hooks::floating_ip(&machine, IpAction::Add, ip).await {
                Ok(line) => self.events.emit("addif", Some(server.as_str()), Some(self.machine_name()), None, line),
                // Another host still answers for the address (an old holder removing it, or
                // a machine whose kernel still runs): never add it twice. The caller may
                // try again shortly; nothing here failed.
                Err(e) if e.is_address_in_use() => {
                    let msg = format!(
                        "not starting {server} on {}: another host still answers for its floating IP {ip}: {}",
                        self.opts.machine,
                        ferry_store::chain(&e)
                    );
                    self.events.emit(
                        "address-in-use",
                        Some(server.as_str()),
                        Some(self.machine_name()),
                        None,
                        msg.clone(),
                    );
                    return Err(Refusal::new(409, msg).because(ferry_api::REASON_ADDRESS_IN_USE));
                }
                Err(e) => {
                    self.set_state(server, "FAILED");
                    let msg =
                        format!("not starting {server}: adding floating IP {ip} failed: {}", ferry_store::chain(&e));
                    self.events.emit(
                        "start-failed",
                        Some(server.as_str()),
                        Some(self.machine_name()),
                        None,
                        msg.clone(),
                    );
                    return Err(Refusal::new(502, msg));
                }
            }
            self.set_plumbed(server, Plumbing::Ip, true);
        }
        match hooks::mount(&machine, true, server.as_str()).await {
            Ok(Some(line)) => {
                self.set_plumbed(server, Plumbing::Mount, true);
                self.events.emit("mount", Some(server.as_str()), Some(self.machine_name()), None, line)
            }
            Ok(None) => {}
            Err(e) => {
                self.set_state(server, "FAILED");
                let msg = format!("not starting {server}: mount hook failed: {e}");
                self.events.emit("start-failed", Some(server.as_str()), Some(self.machine_name()), None, msg.clone());
                self.teardown(server).await;
                return Err(Refusal::new(502, msg));
            }
        }
        self.spawn_server(server, &domain, handover_from).map_err(|e| {
            let msg = format!("could not start {server}: {e:#}");
            self.events.emit("start-failed", Some(server.as_str()), Some(self.machine_name()), None, msg.clone());
            Refusal::new(500, msg)
        })?;
        Ok(self.ack(server, format!("started {server} on {}", self.opts.machine)))
    }

    /// The pid in `servers/NAME/pid` if it is a live `ferry server NAME` session leader that
    /// this Node Manager does not supervise.
    fn orphan(&self, server: &ServerName) -> Option<i32> {
        let pid = self.recorded_pid(server)?;
        let supervised = self.procs.lock().ok().and_then(|p| p.get(server).and_then(|p| p.pid));
        (supervised != Some(pid)).then_some(pid)
    }

    fn spawn_server(
        self: &Arc<Self>,
        server: &ServerName,
        domain: &VersionedDomain,
        handover_from: Option<Incarnation>,
    ) -> anyhow::Result<()> {
        let incarnation = Incarnation::from_random(rand::random());
        let dir = self.server_dir(server);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let spec = process::SpawnSpec {
            program: self.opts.ferry_exe.clone(),
            args: vec!["server".into(), server.to_string()],
            env: vec![("FERRY_LOG_TARGET".into(), "stderr".into())],
            env_remove: vec!["FERRY_SECRET".into()],
            log_file: Some(dir.join("server.log")),
            stdout_piped: false,
            stdin_piped: true,
            new_session: true,
            new_group: false,
            cwd: Some(dir.clone()),
        };
        let mut child = process::spawn(&spec).context("spawn failed")?;
        let pid = child.id().map(|p| p as i32);
        let boot = Bootstrap {
            machine: self.opts.machine.to_string(),
            incarnation: incarnation.0.clone(),
            handover_from: handover_from.as_ref().map(|i| i.0.clone()),
            admin_url: self.admin_url(&domain.domain),
            credentials: match self.tls.issuer.issue_server(server.as_str(), &self.tls.creds.ca_pem) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!("cannot issue a certificate for {server}: {e}; it will run without one (it cannot act as cluster master)");
                    None
                }
            },
            cache_dir: dir.display().to_string(),
            domain: Some(domain.clone()),
            channel: Some(self.channel_path().display().to_string()),
        };
        let mut line = serde_json::to_vec(&boot)?;
        line.push(b'\n');
        let stdin = child.stdin.take();
        let now = clock::now();
        {
            let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            let p = procs.entry(server.clone()).or_default();
            let restarts = if handover_from.is_some() { p.restarts + 1 } else { p.restarts };
            *p = Proc {
                state: "STARTING",
                pid,
                incarnation: Some(incarnation.clone()),
                restarts,
                ip_plumbed: p.ip_plumbed,
                mounted: p.mounted,
                ..Default::default()
            };
        }
        self.set_state(server, "STARTING");
        if let Some(pid) = pid {
            let _ = files::write_atomic(&dir.join("pid"), format!("{pid} {incarnation}\n").as_bytes(), 0o644);
        }
        self.sup.lock().unwrap_or_else(|p| p.into_inner()).on_started(server, incarnation.clone(), now);
        self.events.emit(
            "server-started",
            Some(server.as_str()),
            Some(self.machine_name()),
            None,
            match &handover_from {
                Some(old) => format!(
                    "started {server} (pid {}, incarnation {incarnation}) taking over from reaped incarnation {old}",
                    pid.unwrap_or(0)
                ),
                None => format!("started {server} (pid {}, incarnation {incarnation})", pid.unwrap_or(0)),
            },
        );
        let nm = self.clone();
        let server = server.clone();
        tokio::spawn(async move {
            if let Some(mut stdin) = stdin {
                let _ = stdin.write_all(&line).await;
                drop(stdin);
            }
            let status = child.wait().await;
            let (code, desc) = describe_exit(&status);
            nm.on_exit(&server, &incarnation, code, desc).await;
        });
        Ok(())
    }

    fn admin_url(&self, domain: &Domain) -> String {
        self.opts.admin_url.clone().unwrap_or_else(|| format!("http://{}", domain.admin.listen))
    }

    fn channel_path(&self) -> PathBuf {
        self.opts.data_dir.join("nm.sock")
    }

    /// Serves one connection on the local channel: a server says `Hello`, then reports.
    async fn serve_channel(self: Arc<Self>, stream: tokio::net::UnixStream) {
        let (read, write) = stream.into_split();
        let write = Arc::new(tokio::sync::Mutex::new(write));
        let mut lines = BufReader::new(read).lines();
        let Ok(Some(first)) = lines.next_line().await else {
            return;
        };
        let Ok(Report::Hello { server, incarnation, pid, epoch, master }) = serde_json::from_str::<Report>(&first)
        else {
            tracing::warn!("ignoring a channel connection that did not start with hello: {first}");
            return;
        };
        let (Ok(server), incarnation) = (ServerName::new(server), Incarnation(incarnation)) else {
            return;
        };
        if !self.adopt(&server, &incarnation, pid as i32, epoch, master) {
            return;
        }
        while let Ok(Some(l)) = lines.next_line().await {
            if let Ok(Report::Renew { id, lease, incarnation: inc, epoch, ttl_ms }) = serde_json::from_str::<Report>(&l)
            {
                // A server may only renew its own lease.
                let Ok(name) = LeaseName::parse(&lease) else { continue };
                if name != LeaseName::Server(server.clone()) || inc != incarnation.0 {
                    tracing::warn!("{server}: refusing to renew {lease} for incarnation {inc}");
                    continue;
                }
                let renewal = ferry_store::Renewal {
                    name,
                    incarnation: Incarnation(inc),
                    epoch: Epoch(epoch),
                    ttl: Duration::from_millis(ttl_ms),
                };
                if let Ok(mut q) = self.renewals.lock() {
                    q.push(PendingRenewal { id, renewal, reply: write.clone() });
                }
                self.renewal_wake.notify_one();
                continue;
            }
            if let Ok(Report::Certificate) = serde_json::from_str::<Report>(&l) {
                // A fresh certificate for the server this connection said hello as.
                match self.tls.issuer.issue_server(server.as_str(), &self.tls.creds.ca_pem) {
                    Ok(credentials) => {
                        if let Ok(mut line) = serde_json::to_vec(&ferry_api::Reply::Certificate { credentials }) {
                            line.push(b'\n');
                            let mut w = write.lock().await;
                            let _ = tokio::time::timeout(Duration::from_secs(1), w.write_all(&line)).await;
                        }
                    }
                    Err(e) => tracing::warn!("cannot issue a fresh certificate for {server}: {e}"),
                }
                continue;
            }
            self.on_report(&server, &incarnation, &l);
        }
    }

    /// Sends the renewals of all this machine's servers to the lease table in batches:
    /// one `renew_many` (one transaction) per window instead of one per server. Each lease is
    /// decided exactly as `renew` would, and each server computed its deadline from the
    /// instant before it handed its renewal over (rule 2), so batching weakens nothing.
    async fn renewal_loop(self: Arc<Self>) {
        loop {
            self.renewal_wake.notified().await;
            tokio::time::sleep(BATCH_WINDOW).await;
            loop {
                let batch: Vec<PendingRenewal> = match self.renewals.lock() {
                    Ok(mut q) => {
                        let n = q.len().min(BATCH_MAX);
                        q.drain(..n).collect()
                    }
                    Err(_) => return,
                };
                if batch.is_empty() {
                    break;
                }
                let renewals: Vec<ferry_store::Renewal> = batch.iter().map(|p| p.renewal.clone()).collect();
                let result = match self.store().await {
                    Ok(store) => store.renew_many(&renewals).await,
                    Err(e) => Err(e),
                };
                if let Ok(mut c) = self.renewal_counts.lock() {
                    c.0 += batch.len() as u64;
                    c.1 += 1;
                }
                for (i, p) in batch.iter().enumerate() {
                    let (outcome, detail) = match &result {
                        Ok(outcomes) => match outcomes.get(i) {
                            Some(Ok(_)) => (ferry_api::RenewOutcome::Ok, String::new()),
                            Some(Err(e @ ferry_store::StoreError::Lost { .. })) => {
                                (ferry_api::RenewOutcome::Lost, e.to_string())
                            }
                            Some(Err(e)) => (ferry_api::RenewOutcome::Failed, ferry_store::chain(e)),
                            None => (ferry_api::RenewOutcome::Failed, "no outcome for this renewal".into()),
                        },
                        Err(e) => (ferry_api::RenewOutcome::Failed, ferry_store::chain(e)),
                    };
                    let reply = ferry_api::Reply::Renewed { id: p.id, outcome, detail };
                    if let Ok(mut line) = serde_json::to_vec(&reply) {
                        line.push(b'\n');
                        let mut w = p.reply.lock().await;
                        let _ = tokio::time::timeout(Duration::from_millis(100), w.write_all(&line)).await;
                    }
                }
            }
        }
    }

    /// Makes sure the Node Manager knows the server that said hello. A server this Node
    /// Manager started is known; one started by an earlier Node Manager of this machine
    /// (which crashed or was restarted) is adopted: supervised, fenced and stoppable again.
    fn adopt(
        self: &Arc<Self>,
        server: &ServerName,
        incarnation: &Incarnation,
        pid: i32,
        epoch: Option<u64>,
        master: bool,
    ) -> bool {
        {
            let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(p) = procs.get(server) {
                if p.incarnation.as_ref() == Some(incarnation) {
                    return true;
                }
                if p.pid.is_some_and(process::alive) {
                    tracing::warn!(
                        "{server}: a second incarnation {incarnation} said hello while {:?} runs; ignoring it",
                        p.incarnation
                    );
                    return false;
                }
            }
        }
        // It must really be that server, leading its own session.
        if !process::is_server_leader(pid, server.as_str()) {
            tracing::warn!("{server}: pid {pid} is not a `ferry server {server}` session leader; not adopting it");
            return false;
        }
        {
            let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            let p = procs.entry(server.clone()).or_default();
            p.state = "RUNNING";
            p.pid = Some(pid);
            p.incarnation = Some(incarnation.clone());
            p.epoch = epoch;
            p.master = master;
            p.ip_plumbed = true;
            p.mounted = self.server_dir(server).join("mounted").exists();
            p.stopping = false;
            p.fenced = false;
        }
        self.sup.lock().unwrap_or_else(|p| p.into_inner()).on_started(server, incarnation.clone(), clock::now());
        self.set_state(server, "RUNNING");
        self.events.emit(
            "adopted",
            Some(server.as_str()),
            Some(self.machine_name()),
            epoch,
            format!(
                "adopted {server} (pid {pid}, incarnation {incarnation}) started by an earlier Node Manager of {}",
                self.opts.machine
            ),
        );
        // Not our child: watch for its end instead of waiting for it.
        let nm = self.clone();
        let (server, incarnation) = (server.clone(), incarnation.clone());
        tokio::spawn(async move {
            while process::alive(pid) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let hint = nm.procs.lock().ok().and_then(|p| p.get(&server).and_then(|p| p.exit_hint));
            let desc =
                hint.map_or_else(|| "ended (adopted; exit status unknown)".to_string(), |c| format!("exit code {c}"));
            nm.on_exit(&server, &incarnation, hint, desc).await;
        });
        true
    }

    fn on_report(&self, server: &ServerName, incarnation: &Incarnation, line: &str) {
        let Ok(report) = serde_json::from_str::<Report>(line) else {
            tracing::debug!(server = %server, "ignoring a line that is not a report: {line}");
            return;
        };
        let current = |p: &Proc| p.incarnation.as_ref() == Some(incarnation);
        match report {
            Report::Deadline { at_ms } => {
                self.sup.lock().unwrap_or_else(|p| p.into_inner()).on_deadline(server, incarnation, Mono(at_ms));
                if let Ok(mut procs) = self.procs.lock() {
                    if let Some(p) = procs.get_mut(server).filter(|p| current(p)) {
                        p.deadline = Some(Mono(at_ms));
                    }
                }
                self.wake.notify_one();
            }
            Report::Acquired { epoch } => {
                if let Ok(mut procs) = self.procs.lock() {
                    if let Some(p) = procs.get_mut(server).filter(|p| current(p)) {
                        p.epoch = Some(epoch);
                    }
                }
            }
            Report::Running => self.set_state(server, "RUNNING"),
            Report::Hello { .. } | Report::Renew { .. } | Report::Certificate => {}
            Report::Exiting { code } => {
                if let Ok(mut procs) = self.procs.lock() {
                    if let Some(p) = procs.get_mut(server).filter(|p| current(p)) {
                        p.exit_hint = Some(code);
                    }
                }
            }
            Report::Master { held, .. } => {
                if let Ok(mut procs) = self.procs.lock() {
                    if let Some(p) = procs.get_mut(server).filter(|p| current(p)) {
                        p.master = held;
                    }
                }
            }
            Report::Released => {
                self.sup.lock().unwrap_or_else(|p| p.into_inner()).on_released(server, incarnation);
                if let Ok(mut procs) = self.procs.lock() {
                    if let Some(p) = procs.get_mut(server).filter(|p| current(p)) {
                        p.deadline = None;
                    }
                }
            }
            Report::Event { kind, message, epoch, server: about } => {
                self.events.push(ferry_api::Event {
                    id: 0,
                    at_ms: clock::wall_ms(),
                    source: format!("server/{server}"),
                    kind,
                    server: Some(about.unwrap_or_else(|| server.to_string())),
                    machine: Some(self.opts.machine.to_string()),
                    epoch,
                    message,
                    by: None,
                });
            }
        }
    }

    async fn on_exit(
        self: &Arc<Self>,
        server: &ServerName,
        incarnation: &Incarnation,
        code: Option<i32>,
        desc: String,
    ) {
        // Whatever the server left behind in its session dies with it.
        let pid = {
            let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            procs.get(server).filter(|p| p.incarnation.as_ref() == Some(incarnation)).and_then(|p| p.pid)
        };
        let Some(pid) = pid else { return };
        process::kill_session(pid);
        let (stopping, fenced, epoch) = {
            let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            let p = procs.entry(server.clone()).or_default();
            p.pid = None;
            p.deadline = None;
            p.master = false;
            p.last_exit = Some(desc.clone());
            (p.stopping, p.fenced, p.epoch)
        };
        let kind = ExitKind::classify(code, stopping || fenced);
        let actions =
            self.sup.lock().unwrap_or_else(|p| p.into_inner()).on_exit(server, incarnation, kind, clock::now());
        self.events.emit(
            "server-exited",
            Some(server.as_str()),
            Some(self.machine_name()),
            epoch,
            format!("{server} (incarnation {incarnation}) ended: {desc} ({kind:?})"),
        );
        for action in actions {
            match action {
                // A server that fenced itself while an operator or the master stopped it
                // stays stopped.
                SupervisorAction::Restart { if_unclaimed: true, .. } if stopping => {}
                SupervisorAction::Restart { server, handover_from, delay_ms, if_unclaimed: true } => {
                    let nm = self.clone();
                    let generation = self.generation(&server);
                    tokio::spawn(async move {
                        nm.restart_if_unclaimed(server, handover_from, delay_ms, generation).await;
                    });
                }
                SupervisorAction::Restart { server, handover_from, delay_ms, if_unclaimed: false } => {
                    self.set_state(&server, "RESTARTING");
                    let nm = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                        nm.events.emit(
                            "restart-in-place",
                            Some(server.as_str()),
                            Some(nm.machine_name()),
                            None,
                            format!("{server} crashed; restarting it on {} at once (after {delay_ms} ms) with a lease handover", nm.opts.machine),
                        );
                        if let Err(r) = nm.start(&server, &Origin::Admin, false, Some(handover_from)).await {
                            tracing::warn!("restart of {server} failed: {}", r.error);
                        }
                    });
                }
                SupervisorAction::Down { server, state } => {
                    // Serialised with start and stop of this server: a start that raced with
                    // this exit (a master's restart-in-place arriving as the old process dies)
                    // must not find the floating IP "plumbed" and then lose it to this
                    // removal. If such a start already ran, the address is the new
                    // incarnation's: leave it.
                    let lock = self.lock_for(&server);
                    let _guard = lock.lock().await;
                    let superseded = self
                        .procs
                        .lock()
                        .map(|p| p.get(&server).is_some_and(|p| p.incarnation.as_ref() != Some(incarnation)))
                        .unwrap_or(false);
                    if superseded {
                        continue;
                    }
                    self.set_state(&server, state);
                    self.teardown(&server).await;
                }
                SupervisorAction::Fence { .. } => {}
            }
        }
    }

    /// Undoes a server's plumbing on this machine: removes its floating IP and runs the
    /// unmount hook, each only if this Node Manager did (or inherited) it. Idempotent, so
    /// whoever reaped the server runs it: a stop or fence before it answers, an exit on its
    /// own. Callers hold the server's lock, so no start interleaves.
    async fn teardown(&self, server: &ServerName) {
        self.remove_ip(server).await;
        let mounted = self.procs.lock().ok().and_then(|p| p.get(server).map(|p| p.mounted)).unwrap_or(false);
        if !mounted {
            return;
        }
        if let Some(machine) = self.domain().domain.machine(&self.opts.machine).cloned() {
            match hooks::mount(&machine, false, server.as_str()).await {
                Ok(Some(line)) => {
                    self.events.emit("unmount", Some(server.as_str()), Some(self.machine_name()), None, line)
                }
                Ok(None) => {}
                Err(e) => self.events.emit(
                    "unmount-failed",
                    Some(server.as_str()),
                    Some(self.machine_name()),
                    None,
                    e.to_string(),
                ),
            }
        }
        self.set_plumbed(server, Plumbing::Mount, false);
    }

    async fn remove_ip(&self, server: &ServerName) {
        let plumbed = self.procs.lock().ok().and_then(|p| p.get(server).map(|p| p.ip_plumbed)).unwrap_or(false);
        if !plumbed {
            return;
        }
        let domain = self.domain().domain;
        let (Some(cfg), Some(machine)) = (domain.server(server), domain.machine(&self.opts.machine)) else {
            return;
        };
        if let Some(ip) = cfg.floating_ip {
            match hooks::floating_ip(machine, IpAction::Remove, ip).await {
                Ok(line) => self.events.emit("removeif", Some(server.as_str()), Some(self.machine_name()), None, line),
                Err(e) => {
                    // Still here: keep the record, so the next teardown (or a restarted Node
                    // Manager) tries again, and say so.
                    self.events.emit(
                        "removeif-failed",
                        Some(server.as_str()),
                        Some(self.machine_name()),
                        None,
                        ferry_store::chain(&e),
                    );
                    return;
                }
            }
        }
        self.set_plumbed(server, Plumbing::Ip, false);
    }

    /// Records that the floating IP or the mount is (or is no longer) in place, in memory and
    /// on disk (`servers/NAME/plumbed`, `servers/NAME/mounted`).
    fn set_plumbed(&self, server: &ServerName, what: Plumbing, on: bool) {
        if let Ok(mut procs) = self.procs.lock() {
            let p = procs.entry(server.clone()).or_default();
            match what {
                Plumbing::Ip => p.ip_plumbed = on,
                Plumbing::Mount => p.mounted = on,
            }
        }
        let path = self.server_dir(server).join(what.file());
        let r = if on {
            std::fs::create_dir_all(self.server_dir(server)).and_then(|()| files::write_atomic(&path, b"", 0o644))
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            }
        };
        if let Err(e) = r {
            tracing::warn!("cannot record {} of {server} in {}: {e}", what.file(), path.display());
        }
    }

    /// At start-up: removes the floating IPs and mounts an earlier Node Manager of this
    /// machine left in place for servers that no longer run here (it crashed, or was killed
    /// with them). Otherwise every other candidate's probe would see the address and refuse
    /// the server for ever. A server still running is left alone: it says hello and is
    /// adopted, or is killed as an orphan before another copy starts.
    pub(crate) async fn remove_leftovers(&self) {
        let domain = self.domain().domain;
        let Some(machine) = domain.machine(&self.opts.machine).cloned() else {
            return;
        };
        for cfg in &domain.servers {
            let dir = self.server_dir(&cfg.name);
            let marked_ip = dir.join(Plumbing::Ip.file()).exists();
            let marked_mount = dir.join(Plumbing::Mount.file()).exists();
            // The built-in action can look: an address of this server on the interface
            // with no record (a record lost with the data directory) is left over too.
            let present = match (cfg.floating_ip, &machine.hooks.ifconfig) {
                (Some(ip), None) if !machine.node_manager.ip().is_loopback() => {
                    let iface = machine.interface.clone().unwrap_or_else(|| "eth0".into());
                    ferry_host::ipaddr::present(&iface, ip).await.unwrap_or(false)
                }
                _ => false,
            };
            if !(marked_ip || marked_mount || present) {
                continue;
            }
            if let Some(pid) = self.recorded_pid(&cfg.name) {
                tracing::info!("{} still runs here (pid {pid}); keeping its floating IP and mounts", cfg.name);
                continue;
            }
            self.events.emit(
                "leftover",
                Some(cfg.name.as_str()),
                Some(self.machine_name()),
                None,
                format!(
                    "{} no longer runs on {}, but an earlier Node Manager left its {} in place; removing it",
                    cfg.name,
                    self.opts.machine,
                    match (marked_ip || present, marked_mount) {
                        (true, true) => "floating IP and mount",
                        (true, false) => "floating IP",
                        _ => "mount",
                    }
                ),
            );
            if let Ok(mut procs) = self.procs.lock() {
                let p = procs.entry(cfg.name.clone()).or_default();
                p.ip_plumbed = cfg.floating_ip.is_some() && (marked_ip || present);
                p.mounted = marked_mount;
            }
            let lock = self.lock_for(&cfg.name);
            let _guard = lock.lock().await;
            self.teardown(&cfg.name).await;
        }
    }

    /// The pid in `servers/NAME/pid` if it is a live `ferry server NAME` session leader
    /// (supervised or not).
    fn recorded_pid(&self, server: &ServerName) -> Option<i32> {
        let text = std::fs::read_to_string(self.server_dir(server).join("pid")).ok()?;
        let pid: i32 = text.split_whitespace().next()?.parse().ok()?;
        process::is_server_leader(pid, server.as_str()).then_some(pid)
    }

    /// SIGKILLs a server's session and waits until its supervision task has reaped it.
    async fn kill_and_wait(&self, server: &ServerName, pid: i32) {
        if let Ok(mut procs) = self.procs.lock() {
            if let Some(p) = procs.get_mut(server) {
                p.stopping = true;
            }
        }
        process::kill_session(pid);
        self.wait_exit(server, Duration::from_secs(10)).await;
    }

    async fn wait_exit(&self, server: &ServerName, patience: Duration) -> bool {
        let until = clock::now() + patience;
        loop {
            let gone = self.procs.lock().ok().map(|p| p.get(server).is_none_or(|p| p.pid.is_none())).unwrap_or(true);
            if gone {
                return true;
            }
            if clock::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops a server: SIGTERM (it stops its services and releases its lease), then SIGKILL
    /// of its session after the timeout; `force` kills at once. A killed server's lease is
    /// released here, so the cluster master does not restart what an operator stopped.
    /// Answers only once the server is gone and its floating IP removed and its disks
    /// unmounted, so whoever starts it elsewhere next finds the address free.
    pub async fn stop(
        self: &Arc<Self>,
        server: &ServerName,
        origin: &Origin,
        force: bool,
        timeout_ms: Option<u64>,
    ) -> Result<NmAck, Refusal> {
        let (domain, cfg) = self.server_cfg(server)?;
        self.check_origin(&domain.domain, server, origin)?;
        let lock = self.lock_for(server);
        let _guard = lock.lock().await;
        self.bump_generation(server);
        let p = self.procs.lock().ok().and_then(|p| p.get(server).cloned()).unwrap_or_default();
        let Some(pid) = p.pid.filter(|&pid| process::alive(pid)) else {
            // Nothing runs, but something may be left in place (a start that failed after
            // adding the address): a stop leaves the machine clean.
            self.teardown(server).await;
            return Ok(self.ack(server, format!("{server} is not running on {}", self.opts.machine)));
        };
        if let Ok(mut procs) = self.procs.lock() {
            if let Some(p) = procs.get_mut(server) {
                p.stopping = true;
            }
        }
        self.set_state(server, "STOPPING");
        let timeout = Duration::from_millis(timeout_ms.unwrap_or(cfg.shutdown_timeout.as_millis() as u64));
        let mut forced = force;
        if !force {
            self.events.emit(
                "stop",
                Some(server.as_str()),
                Some(self.machine_name()),
                p.epoch,
                format!("asking {server} (pid {pid}) to shut down gracefully"),
            );
            process::signal(pid, nix::sys::signal::Signal::SIGTERM);
            if !self.wait_exit(server, timeout).await {
                self.events.emit(
                    "stop-timeout",
                    Some(server.as_str()),
                    Some(self.machine_name()),
                    p.epoch,
                    format!("{server} did not stop within {} ms; killing it", timeout.as_millis()),
                );
                forced = true;
            }
        }
        if forced {
            self.events.emit(
                "kill",
                Some(server.as_str()),
                Some(self.machine_name()),
                p.epoch,
                format!("killing {server} (pid {pid}) and its services"),
            );
            process::kill_session(pid);
            self.wait_exit(server, Duration::from_secs(10)).await;
        }
        // The exit handler leaves this to the stop, which holds the server's lock.
        self.teardown(server).await;
        if forced {
            if let (Some(inc), Some(epoch)) = (p.incarnation.clone(), p.epoch) {
                self.release_for(server, &inc, epoch).await;
            }
        }
        self.set_state(server, "SHUTDOWN");
        Ok(self.ack(server, format!("stopped {server} on {}", self.opts.machine)))
    }

    /// Releases the lease of an incarnation this Node Manager killed and reaped.
    async fn release_for(&self, server: &ServerName, inc: &Incarnation, epoch: u64) {
        let result = async {
            let store = self.store().await?;
            store.release(&LeaseName::Server(server.clone()), inc, Epoch(epoch)).await
        }
        .await;
        match result {
            Ok(()) => self.events.emit(
                "lease-released",
                Some(server.as_str()),
                Some(self.machine_name()),
                Some(epoch),
                format!("released the lease of killed {server} (epoch {epoch})"),
            ),
            Err(e) => tracing::info!("lease of {server} not released after kill: {e}"),
        }
    }

    /// Rule 3: fences servers whose deadline passed, for ever (spawn it).
    async fn fence_loop(self: Arc<Self>) {
        // The deadline this loop last woke late for and let the readers catch up on.
        let mut caught_up: Option<Mono> = None;
        loop {
            let next = self.sup.lock().ok().and_then(|s| s.next_wakeup());
            let wait = async {
                match next {
                    Some(at) => clock::sleep_until(at).await,
                    None => tokio::time::sleep(Duration::from_secs(3600)).await,
                }
            };
            tokio::select! {
                _ = wait => {}
                _ = self.wake.notified() => continue,
            }
            // Woken long after the deadline it slept for: this Node Manager itself did not
            // run (stopped, frozen, starved). Its servers' newer deadlines may be waiting
            // unread on the local channel; let the readers deliver them before judging any
            // deadline, or a healthy server would be killed for this process's pause.
            if next != caught_up && next.is_some_and(|at| clock::now().since(at) > LATE_WAKE.as_millis() as u64) {
                caught_up = next;
                tokio::time::sleep(CATCH_UP).await;
                continue;
            }
            let actions = self.sup.lock().map(|mut s| s.tick(clock::now())).unwrap_or_default();
            for a in actions {
                if let SupervisorAction::Fence { server, incarnation, late_ms } = a {
                    let found = {
                        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
                        match procs.get_mut(&server).filter(|p| p.incarnation.as_ref() == Some(&incarnation)) {
                            Some(p) => {
                                p.fenced = true;
                                p.pid.map(|pid| (pid, p.epoch))
                            }
                            None => None,
                        }
                    };
                    if let Some((pid, epoch)) = found {
                        // Kill at once, here: the deadline has passed, and other servers'
                        // fences must not wait behind this one's clean-up.
                        let n = process::kill_session(pid);
                        let nm = self.clone();
                        tokio::spawn(async move { nm.after_fence(server, incarnation, pid, n, epoch, late_ms).await });
                    }
                }
            }
        }
    }

    /// After a fence's kill: waits until the session is gone, removes the floating IP and
    /// unmounts (under the server's lock, so a start that raced the fence keeps what is now
    /// its own), and only then announces the fence: a start elsewhere finds the address free.
    async fn after_fence(
        &self,
        server: ServerName,
        incarnation: Incarnation,
        pid: i32,
        killed: usize,
        epoch: Option<u64>,
        late_ms: u64,
    ) {
        // The kill counted every process of the session; this only waits for the kernel.
        process::kill_session_and_wait(pid, Duration::from_secs(1)).await;
        let n = killed;
        self.wait_exit(&server, Duration::from_secs(2)).await;
        {
            let lock = self.lock_for(&server);
            let _guard = lock.lock().await;
            let current = self
                .procs
                .lock()
                .ok()
                .is_some_and(|p| p.get(&server).is_some_and(|p| p.incarnation.as_ref() == Some(&incarnation)));
            if current {
                self.teardown(&server).await;
            }
        }
        if n == 0 {
            // The server had ended by itself (it fenced itself a moment earlier): its exit
            // tells that story; this backstop killed nothing.
            tracing::info!("{server} (pid {pid}) was already gone when its deadline passed");
            return;
        }
        self.events.emit(
            "fenced",
            Some(server.as_str()),
            Some(self.machine_name()),
            epoch,
            format!(
                "{server} (pid {pid}) missed its lease deadline by {late_ms} ms; the Node Manager killed its {n} process{}",
                if n == 1 { "" } else { "es" }
            ),
        );
    }

    /// Keeps the domain configuration fresh from the admin (it may change through the API).
    async fn refresh_loop(self: Arc<Self>) {
        // One client (and TLS connection) while the admin's address stays the same.
        let mut admin: Option<(String, AdminClient)> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let url = self.admin_url(&self.domain().domain);
            if admin.as_ref().is_none_or(|(u, _)| *u != url) {
                admin = Some((url.clone(), AdminClient::with_tls(&url, &self.tls.creds, Duration::from_secs(2))));
            }
            let Some((_, client)) = &admin else { continue };
            if let Ok(d) = client.domain().await {
                let mut cur = self.domain.lock().unwrap_or_else(|p| p.into_inner());
                if d.version > cur.version || d.domain != cur.domain {
                    *cur = d.clone();
                    let _ = files::write_atomic(
                        &self.opts.data_dir.join("domain-cache.json"),
                        &serde_json::to_vec(&d).unwrap_or_default(),
                        0o600,
                    );
                }
            }
        }
    }
}

/// Runs a Node Manager until Ctrl-C or SIGTERM.
pub async fn run(opts: NmOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create data directory {}", opts.data_dir.display()))?;
    let cache = opts.data_dir.join("domain-cache.json");
    // A machine the domain does not define can do nothing: say so now, before waiting for
    // an Administration Server to enroll it (which may be down).
    check_machine_defined(&opts, &cache)?;
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
    tokio::spawn(events.clone().deliver(AdminClient::with_tls(&admin_url, &tls.creds, Duration::from_secs(2))));
    tokio::spawn(crate::pki::revocation_loop(tls.clone(), admin_url.clone()));
    let nm = Arc::new(Nm {
        opts: opts.clone(),
        epochs_write: tokio::sync::Mutex::new(()),
        tls: tls.clone(),
        domain: Mutex::new(domain),
        sup: Mutex::new(restore_supervisor(&opts.data_dir)),
        procs: Mutex::default(),
        events,
        wake: tokio::sync::Notify::new(),
        locks: Mutex::default(),
        store: tokio::sync::Mutex::new(None),
        renewals: Mutex::default(),
        renewal_wake: tokio::sync::Notify::new(),
        renewal_counts: Mutex::default(),
    });
    tokio::spawn(nm.clone().fence_loop());
    tokio::spawn(nm.clone().renewal_loop());
    // Open the lease table now: the first start command (a failover) must not pay for it.
    {
        let nm = nm.clone();
        tokio::spawn(async move {
            if let Err(e) = nm.store().await {
                tracing::info!("lease table not reachable yet ({e}); will retry on first use");
            }
        });
    }
    tokio::spawn(nm.clone().refresh_loop());
    // Before taking commands: what an earlier Node Manager of this machine left in place
    // for servers that are gone (their floating IPs would make every other machine refuse
    // them).
    nm.remove_leftovers().await;
    // The local channel: servers (also those of an earlier Node Manager) report here.
    let sock = nm.channel_path();
    let _ = std::fs::remove_file(&sock);
    let channel = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("cannot create the local channel {}", sock.display()))?;
    let _ = std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    {
        let nm = nm.clone();
        tokio::spawn(async move {
            loop {
                match channel.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(nm.clone().serve_channel(stream));
                    }
                    Err(e) => {
                        tracing::warn!("local channel: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(machine.node_manager).await.with_context(|| {
        format!("cannot listen on {} (node_manager of machine {})", machine.node_manager, opts.machine)
    })?;
    nm.events.emit(
        "nodemanager-started",
        None,
        Some(opts.machine.as_str()),
        None,
        format!("Node Manager for {} listening on {}", opts.machine, machine.node_manager),
    );
    let config = tls.creds.server_config(tls.revoked.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = ferry_tls::TlsListener::new(listener, config, false)?;
    let app = crate::http::router(nm.clone()).into_make_service_with_connect_info::<ferry_tls::PeerInfo>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    // Leave servers running: a Node Manager restart must not take the domain down.
    Ok(())
}

/// Fails at once when the domain file (or, without one, the cached configuration) does not
/// define this Node Manager's machine.
fn check_machine_defined(opts: &NmOptions, cache: &std::path::Path) -> anyhow::Result<()> {
    let (domain, from) = match &opts.domain_file {
        Some(path) => (files::load_domain(path).map_err(|e| anyhow::anyhow!("{e}"))?, path.display().to_string()),
        None => match std::fs::read(cache).ok().and_then(|b| serde_json::from_slice::<VersionedDomain>(&b).ok()) {
            Some(d) => (d.domain, format!("the cached configuration {}", cache.display())),
            None => return Ok(()),
        },
    };
    if domain.machine(&opts.machine).is_some() {
        return Ok(());
    }
    let known: Vec<&str> = domain.machines.iter().map(|m| m.name.as_str()).collect();
    anyhow::bail!(
        "machine {} is not defined in domain {} ({from} defines {}): add a [[machines]] entry named {} or pass the right --machine",
        opts.machine,
        domain.name,
        if known.is_empty() { "no machines".to_string() } else { known.join(", ") },
        opts.machine
    )
}

/// `url` as the TLS client dials it (every daemon talks to the admin over TLS, whatever
/// scheme the domain file's address implies): for messages.
fn tls_url(url: &str) -> String {
    let bare = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or(url);
    format!("https://{bare}")
}

/// This machine's certificates: loaded, or obtained by enrolling with the admin at the
/// first start (retrying while the admin is not up yet).
async fn certificates(opts: &NmOptions) -> anyhow::Result<crate::pki::NmTls> {
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
            match crate::pki::enroll(&opts.data_dir, machine, &admin_url, &how).await {
                Ok(()) => {
                    tracing::info!(
                        "machine {machine} enrolled with the Administration Server at {}",
                        tls_url(&admin_url)
                    );
                    break;
                }
                // A refusal will not change by waiting; an admin not up yet will.
                Err(e) if waited < 120 && is_transient(&e) => {
                    if waited.is_multiple_of(10) {
                        tracing::warn!("waiting for the Administration Server to enroll machine {machine}: {e:#}");
                    }
                    waited += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    crate::pki::load(&opts.data_dir, machine)
}

/// Whether an enrollment failure may pass by itself (the admin is not up yet).
fn is_transient(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("cannot reach") || text.contains("did not answer") || text.contains("cannot read the domain CA")
}

async fn load_initial_domain(
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
        if let Ok(d) = AdminClient::with_tls(&url, creds, Duration::from_secs(2)).domain().await {
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

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

/// The exit code (if it exited) and a description of how a process ended.
fn describe_exit(status: &std::io::Result<std::process::ExitStatus>) -> (Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => (
            s.code(),
            s.code()
                .map_or_else(|| format!("killed by signal {}", s.signal().unwrap_or(0)), |c| format!("exit code {c}")),
        ),
        Err(e) => (None, format!("wait failed: {e}")),
    }
}

/// A supervisor that remembers the highest master epochs an earlier run of this Node Manager
/// saw (rule 5 across restarts).
fn restore_supervisor(data_dir: &std::path::Path) -> Supervisor {
    let mut sup = Supervisor::new(RestartPolicy::default());
    if let Ok(bytes) = std::fs::read(data_dir.join("master-epochs.json")) {
        if let Ok(map) = serde_json::from_slice::<BTreeMap<String, u64>>(&bytes) {
            sup.restore_master_epochs(
                map.into_iter().filter_map(|(c, e)| Some((ClusterName::new(c).ok()?, Epoch(e)))).collect(),
            );
        }
    }
    sup
}
