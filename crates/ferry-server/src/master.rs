//! The cluster-master role inside a running server: holds `master/CLUSTER` with its own
//! keeper (the renewals are the master's heartbeats, visible to every server in the table),
//! scans the lease table every interval, and enacts the planner's decisions through Node
//! Managers, each command stamped with the master lease's epoch (rule 5) and sent only while
//! the master's own deadline has not passed (rule 6).

use ferry_core::EventKind;
use std::time::Duration;

use ferry_api::{NmClient, NmStart, Origin, Report};
use ferry_core::keeper::{Keeper, KeeperAction, KeeperTiming};
use ferry_core::master::{CommandResult, MasterAction, Planner};
use ferry_core::reach::Reachability;
use ferry_core::{LeaseName, Mono, ServerName};
use ferry_host::clock;
use ferry_store::ScanCursor;

use crate::context::{Ctx, Msg};

pub(crate) struct MasterRole {
    keeper: Keeper,
    timing: KeeperTiming,
    planner: Option<Planner>,
    epoch: Option<ferry_core::Epoch>,
    scan_in_flight: bool,
    next_scan: Mono,
    /// When to start competing again after losing the role.
    retry_at: Option<Mono>,
    /// What this tenure heard from each Node Manager it may command (the rule is the core's
    /// `Reachability`): a machine that stopped answering is skipped at once, so a failover
    /// does not first wait out a connect timeout.
    reach: Reachability,
    next_ping: Mono,
    clients: std::sync::Mutex<std::collections::BTreeMap<(String, String), NmClient>>,
    /// Bumped each time this server gives the role up: every tenure holds the master lease
    /// under an incarnation of its own, so a new tenure takes a new master epoch (rule 5),
    /// even when the store still held the lease for the old one.
    tenure: u32,
    /// Where the next incremental scan starts, and when the next full one is due.
    cursor: ScanCursor,
    full_scan_at: Mono,
}

/// How often the master reads every expired lease instead of those since its last scan: a
/// backstop for an expiry the incremental scans cannot see (a write that committed a whole
/// TTL after it read the clock, or a lease the planner stopped tracking).
const FULL_SCAN_EVERY_MS: u64 = 10_000;

impl MasterRole {
    pub fn new(ctx: &Ctx, server_timing: KeeperTiming) -> Self {
        let mut timing = server_timing;
        timing.acquire_patience_ms = None;
        let now = clock::now();
        let _ = ctx;
        MasterRole {
            keeper: Keeper::new(timing, now),
            timing,
            planner: None,
            epoch: None,
            scan_in_flight: false,
            next_scan: now,
            retry_at: None,
            reach: Reachability::new(now, timing.interval_ms),
            next_ping: now,
            tenure: 0,
            cursor: ScanCursor::FULL,
            full_scan_at: now,
            clients: Default::default(),
        }
    }

    fn lease(ctx: &Ctx) -> LeaseName {
        LeaseName::Master(ctx.server.cluster.clone())
    }

    /// The incarnation this tenure holds the master lease under.
    fn incarnation(&self, ctx: &Ctx) -> ferry_core::Incarnation {
        ferry_core::Incarnation(format!("{}.m{}", ctx.incarnation, self.tenure))
    }

    pub fn next_wakeup(&self, now: Mono) -> Mono {
        let mut w = self.keeper.next_wakeup().unwrap_or(now + 1000);
        if let Some(r) = self.retry_at {
            w = w.min(r);
        }
        if let Some(at) = self.scan_due() {
            w = w.min(at);
        }
        w
    }

    /// When the next scan is due: every interval, and also at once when the planner has a
    /// grace period or a wait ending (so the master acts at that instant, not a scan later).
    fn scan_due(&self) -> Option<Mono> {
        if self.scan_in_flight {
            return None;
        }
        let p = self.planner.as_ref()?;
        Some(p.next_wakeup().map_or(self.next_scan, |w| w.min(self.next_scan)))
    }

    pub fn tick(&mut self, ctx: &Ctx, now: Mono) {
        if let Some(at) = self.retry_at {
            if now < at {
                return;
            }
            self.retry_at = None;
            self.keeper = Keeper::new(self.timing, now);
        }
        let actions = self.keeper.tick(now);
        self.on_keeper(ctx, actions);
        if self.planner.is_some() && now >= self.next_ping {
            self.next_ping = now + self.timing.interval_ms;
            self.ping_node_managers(ctx);
        }
        if self.keeper.held(now).is_some() && self.scan_due().is_some_and(|at| now >= at) {
            self.next_scan = now + self.timing.interval_ms;
            self.scan_in_flight = true;
            let store = ctx.store.clone();
            let tracked: Vec<ServerName> = self
                .planner
                .as_ref()
                .map(|p| p.in_progress().into_iter().map(|(s, _)| s).collect())
                .unwrap_or_default();
            let since = if now >= self.full_scan_at {
                self.full_scan_at = now + FULL_SCAN_EVERY_MS;
                ScanCursor::FULL
            } else {
                self.cursor
            };
            let tx = ctx.tx.clone();
            tokio::spawn(async move {
                // The scan reads the leases that expired since the previous one plus the rows
                // being worked on, so its cost follows the failures, not the size of the
                // domain or its renewal rate (see `LeaseStore::scan`).
                let names: Vec<LeaseName> = tracked.into_iter().map(LeaseName::Server).collect();
                let r = store.scan(since, &names).await;
                let _ = tx.send(Msg::Scan(r)).await;
            });
        }
    }

    /// How long a command waits to connect to a Node Manager: a dead machine answers
    /// nothing, so give up after two intervals (100 ms at least, a second at most).
    fn connect_timeout(&self) -> Duration {
        Duration::from_millis((self.timing.interval_ms * 2).clamp(100, 1_000))
    }

    /// Drops the kept Node Manager clients (the server's certificate changed).
    pub fn forget_clients(&mut self) {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// A client of a Node Manager, kept per machine and address so the TLS connection the
    /// health checks keep warm also carries the commands (no handshake on the failover
    /// path); `timeout` bounds each call.
    fn client(&self, ctx: &Ctx, machine: &ferry_core::MachineName, addr: &str, timeout: Duration) -> NmClient {
        let key = (machine.to_string(), addr.to_string());
        let mut cache = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(key)
            .or_insert_with(|| match &ctx.credentials {
                Some(c) => NmClient::with_connect_timeout(addr, machine.as_str(), c, self.connect_timeout(), timeout),
                None => NmClient::unusable(addr, "this server has no certificate from its Node Manager"),
            })
            .with_timeout(timeout)
    }

    /// Asks every Node Manager this cluster may use whether it answers (one interval to
    /// connect and answer).
    fn ping_node_managers(&self, ctx: &Ctx) {
        let mut machines: Vec<ferry_core::MachineName> = Vec::new();
        for s in ctx.domain.servers_in(&ctx.server.cluster) {
            for m in std::iter::once(s.machine.clone()).chain(ctx.domain.candidates_for(s)) {
                if !machines.contains(&m) {
                    machines.push(m);
                }
            }
        }
        let wait = Duration::from_millis(self.timing.interval_ms.clamp(50, 1_000));
        for machine in machines {
            let Some(m) = ctx.domain.machine(&machine) else {
                continue;
            };
            // The commands' client: the connection this check keeps warm carries them. The
            // call's bound (one interval) also bounds the connect.
            let nm = self.client(ctx, &machine, &m.node_manager.to_string(), wait);
            let tx = ctx.tx.clone();
            tokio::spawn(async move {
                let ok = nm.health().await.is_ok();
                let _ = tx.send(Msg::NmHealth { machine, ok }).await;
            });
        }
    }

    fn on_keeper(&mut self, ctx: &Ctx, actions: Vec<KeeperAction>) {
        for a in actions {
            match a {
                KeeperAction::Acquire => {
                    let store = ctx.store.clone();
                    let mut req = ctx.request(Self::lease(ctx));
                    req.incarnation = self.incarnation(ctx);
                    let tx = ctx.tx.clone();
                    tokio::spawn(async move {
                        let r = store.acquire(&req).await;
                        let _ = tx.send(Msg::MasterAcquire(r)).await;
                    });
                }
                KeeperAction::Renew { epoch } => {
                    let store = ctx.store.clone();
                    let name = Self::lease(ctx);
                    let inc = self.incarnation(ctx);
                    let ttl = Duration::from_millis(self.timing.ttl_ms);
                    let tx = ctx.tx.clone();
                    tokio::spawn(async move {
                        let r = store.renew(&name, &inc, epoch, ttl).await;
                        let _ = tx.send(Msg::MasterRenew(r)).await;
                    });
                }
                KeeperAction::Acquired { epoch } => {
                    self.epoch = Some(epoch);
                    self.planner = Some(Planner::new(ctx.server.cluster.clone()));
                    // A new tenure knows nothing yet about who answers.
                    self.reach = Reachability::new(clock::now(), self.timing.interval_ms);
                    self.next_scan = clock::now();
                    self.full_scan_at = self.next_scan;
                    ctx.channel.update_hello(None, Some(true));
                    ctx.report(&Report::Master { held: true, epoch });
                    ctx.event(
                        EventKind::MasterAcquired,
                        Some(epoch),
                        format!("{} is now cluster master of {} (master epoch {epoch})", ctx.name, ctx.server.cluster),
                    );
                }
                KeeperAction::Deadline { .. } => {}
                KeeperAction::Fence { reason } => {
                    let held = self.epoch.take();
                    let epoch = held.unwrap_or_default();
                    self.planner = None;
                    if let Some(e) = held {
                        // This tenure is over: the next one holds the lease under a new
                        // incarnation (so a new epoch). Give this one back if the table
                        // answers, so another server need not wait for it to expire.
                        let (store, name, inc) = (ctx.store.clone(), Self::lease(ctx), self.incarnation(ctx));
                        self.tenure += 1;
                        tokio::spawn(async move {
                            if let Err(err) = store.release(&name, &inc, e).await {
                                tracing::debug!("the ended master tenure's lease was not released: {err}");
                            }
                        });
                    }
                    ctx.channel.update_hello(None, Some(false));
                    ctx.report(&Report::Master { held: false, epoch });
                    ctx.event(
                        EventKind::MasterLost,
                        Some(epoch),
                        format!("{} gave up the cluster master role of {}: {reason}", ctx.name, ctx.server.cluster),
                    );
                    self.retry_at = Some(clock::now() + self.timing.interval_ms);
                }
                KeeperAction::Release { .. } => {}
            }
        }
    }

    pub fn on_msg(&mut self, ctx: &Ctx, now: Mono, msg: Msg) {
        match msg {
            Msg::MasterAcquire(r) => {
                let actions = match r {
                    Ok(lease) => self.keeper.on_acquired(now, lease.epoch),
                    Err(e) => self.keeper.on_acquire_failed(now, ferry_store::chain(&e)),
                };
                self.on_keeper(ctx, actions);
            }
            Msg::MasterRenew(r) => {
                let actions = match r {
                    Ok(_) => self.keeper.on_renewed(now),
                    Err(e @ ferry_store::StoreError::Lost { .. }) => self.keeper.on_lost(now, e.to_string()),
                    Err(e) => self.keeper.on_renew_failed(now, ferry_store::chain(&e)),
                };
                self.on_keeper(ctx, actions);
            }
            Msg::Scan(r) => {
                self.scan_in_flight = false;
                match r {
                    Ok(scan) => {
                        self.cursor = scan.cursor;
                        // Look again at the instant the next lease runs out (DESIGN §3: the
                        // master's detection delay is then ~0 instead of up to one interval).
                        if let Some(ms) = scan.next_expiry_ms {
                            let at = now + (ms.max(0) as u64 + 1);
                            self.next_scan = self.next_scan.min(at);
                        }
                        let actions = match self.planner.as_mut() {
                            Some(p) => p.on_scan(now, &scan.leases, &ctx.domain),
                            None => return,
                        };
                        self.enact(ctx, actions);
                    }
                    // Rule: the master never acts on a table it cannot read.
                    Err(e) => tracing::warn!("cluster master cannot read the lease table: {e}"),
                }
            }
            Msg::NmHealth { machine, ok } => self.reach.on_check(&machine, ok, now),
            Msg::NmResult { server, machine, result } => {
                let actions = match self.planner.as_mut() {
                    Some(p) => p.on_command_result(now, &server, &machine, result, &ctx.domain),
                    None => return,
                };
                self.enact(ctx, actions);
            }
            _ => {}
        }
    }

    fn enact(&mut self, ctx: &Ctx, actions: Vec<MasterAction>) {
        for a in actions {
            match a {
                MasterAction::Event { kind, server, message } => {
                    tracing::info!(kind = kind.as_str(), server = %server, "{message}");
                    ctx.report(&Report::Event { kind, message, epoch: self.epoch, server: Some(server) });
                }
                MasterAction::Start { server, machine, in_place, power_fence } => {
                    // Rule 6: act only while the master lease is valid by our own deadline.
                    let Some((epoch, _)) = self.keeper.held(clock::now()) else {
                        tracing::warn!("not starting {server} on {machine}: the master lease is no longer held");
                        continue;
                    };
                    let Some(m) = ctx.domain.machine(&machine) else {
                        continue;
                    };
                    if let Some(silent_ms) = self.reach.unreachable_for(&machine, clock::now()) {
                        // Figure 7-2 step 3 without the wait: the machine already stopped answering.
                        let result = CommandResult::Unreachable(format!(
                            "its Node Manager has not answered the master's checks for {silent_ms} ms"
                        ));
                        let _ = ctx.tx.try_send(Msg::NmResult { server, machine, result });
                        continue;
                    }
                    // A dead machine answers nothing: give up connecting after two intervals
                    // (100 ms at least, a second at most). A live Node Manager accepts at once
                    // and may take a while to plumb the IP and start the server.
                    let nm = self.client(ctx, &m.name, &m.node_manager.to_string(), Duration::from_secs(10));
                    let cmd = NmStart {
                        origin: Origin::Master { cluster: ctx.server.cluster.clone(), epoch, server: ctx.name.clone() },
                        in_place,
                    };
                    let fence_cmd = power_fence
                        .as_ref()
                        .and_then(|_| ctx.domain.cluster(&ctx.server.cluster)?.fence_command.clone());
                    let tx = ctx.tx.clone();
                    tokio::spawn(async move {
                        if let (Some(cmd), Some(failed)) = (fence_cmd, power_fence) {
                            let mut args: Vec<String> = cmd[1..].to_vec();
                            args.push(failed.to_string());
                            args.push(server.to_string());
                            if let Err(e) = ferry_host::hooks::run_hook(&cmd[0], &args, Duration::from_secs(30)).await {
                                let result = CommandResult::Refused(format!("power fence of {failed} failed: {e}"));
                                let _ = tx.send(Msg::NmResult { server, machine, result }).await;
                                return;
                            }
                        }
                        let result = match nm.start(server.as_str(), &cmd).await {
                            Ok(_) => CommandResult::Accepted,
                            Err(e) if e.is_unreachable() => CommandResult::Unreachable(e.to_string()),
                            Err(e) if e.reason() == Some(ferry_api::REASON_ADDRESS_IN_USE) => {
                                CommandResult::AddressInUse(e.to_string())
                            }
                            Err(e) => CommandResult::Refused(e.to_string()),
                        };
                        let _ = tx.send(Msg::NmResult { server, machine, result }).await;
                    });
                }
            }
        }
    }

    /// Gives the master lease back on a graceful stop, so another server takes over at once.
    pub async fn release(&mut self, ctx: &Ctx) {
        let now = clock::now();
        for a in self.keeper.release(now) {
            if let KeeperAction::Release { epoch } = a {
                match ctx.store.release(&Self::lease(ctx), &self.incarnation(ctx), epoch).await {
                    Ok(()) => ctx.event(
                        EventKind::MasterReleased,
                        Some(epoch),
                        format!("{} released the cluster master role of {}", ctx.name, ctx.server.cluster),
                    ),
                    Err(e) => tracing::info!("master lease not released: {e}"),
                }
            }
        }
    }
}
