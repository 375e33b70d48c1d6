//! The server runtime's main loop: one task that owns the lease keeper, the services and
//! the master role; store calls, health checks and Node Manager calls run as side tasks and
//! report back over a channel, so nothing slow ever stands between the loop and a deadline.

use ferry_core::EventKind;
use std::path::PathBuf;
use std::time::Duration;

use ferry_api::Report;
use ferry_core::health::HealthJudge;
use ferry_core::keeper::{Keeper, KeeperAction, KeeperTiming};
use ferry_core::{Incarnation, LeaseName, Mono};
use ferry_host::clock;
use ferry_store::StoreError;
use tokio::sync::mpsc;

use crate::context::{Ctx, Msg};
use crate::master::MasterRole;
use crate::services::{self, Running, ServiceEnv};

/// Exit status of a server that fenced itself or never obtained its lease.
pub const EXIT_FENCED: i32 = 75;
/// Exit status of a server that cannot run with the configuration it has.
pub const EXIT_CONFIG: i32 = 78;
/// Exit status when a hosted service died (the Node Manager restarts the server at once).
const EXIT_SERVICE_DIED: i32 = 70;

pub(crate) struct Runtime {
    ctx: Ctx,
    keeper: Keeper,
    handover: Option<Incarnation>,
    dir: PathBuf,
    services: Vec<Running>,
    epoch: Option<ferry_core::Epoch>,
    running_reported: bool,
    unhealthy_reported: bool,
    health_in_flight: bool,
    next_health: Mono,
    /// When a failed check makes a service unhealthy (ferry-core decides).
    health: HealthJudge,
    master: Option<MasterRole>,
    /// The renewal handed to the Node Manager's batch and not answered yet.
    renew_pending: Option<u64>,
    next_renew_id: u64,
    /// After the Node Manager failed a renewal, this many renewals go straight to the table.
    direct_renewals: u32,
    /// When to ask the Node Manager for a fresh certificate (half its life).
    cert_refresh_at: Option<Mono>,
}

/// When a certificate with `creds`' remaining life should be replaced: at half of it.
fn refresh_at(now: Mono, creds: &Option<ferry_tls::Credentials>) -> Option<Mono> {
    let left_s = creds.as_ref()?.expires_in_s().ok()?;
    Some(now + (left_s.max(0) as u64) * 500)
}

/// Renewals that go straight to the lease table after the Node Manager failed one.
const DIRECT_AFTER_NM_FAILURE: u32 = 10;

enum Flow {
    Continue,
    Exit(i32),
}

impl Runtime {
    pub fn new(ctx: Ctx, timing: KeeperTiming, handover: Option<Incarnation>, dir: PathBuf) -> Self {
        let now = clock::now();
        let health = HealthJudge::new(ctx.server.health_check_periods_until_fencing);
        Runtime {
            keeper: Keeper::new(timing, now),
            ctx,
            handover,
            dir,
            services: Vec::new(),
            epoch: None,
            running_reported: false,
            unhealthy_reported: false,
            health_in_flight: false,
            next_health: now,
            health,
            master: None,
            renew_pending: None,
            next_renew_id: 0,
            direct_renewals: 0,
            cert_refresh_at: None,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> i32 {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cannot install the SIGTERM handler: {e}");
                return EXIT_CONFIG;
            }
        };
        self.cert_refresh_at = refresh_at(clock::now(), &self.ctx.credentials);
        loop {
            let now = clock::now();
            if self.cert_refresh_at.is_some_and(|at| now >= at) {
                // Ask again in a minute if no answer comes (the Node Manager may be down).
                self.cert_refresh_at = Some(now + 60_000);
                self.ctx.channel.send(&Report::Certificate);
            }
            let actions = self.keeper.tick(now);
            if let Flow::Exit(code) = self.on_keeper(actions).await {
                return code;
            }
            if let Some(m) = self.master.as_mut() {
                m.tick(&self.ctx, now);
            }
            if let Flow::Exit(code) = self.check_services(now) {
                return code;
            }
            let mut wake = self.keeper.next_wakeup().unwrap_or(now + 1000);
            if self.epoch.is_some() {
                wake = wake.min(self.next_health);
            }
            if let Some(m) = &self.master {
                wake = wake.min(m.next_wakeup(now));
            }
            // Never spin: even a due wakeup yields to the side tasks for a moment.
            let wake = wake.max(now + 1);
            tokio::select! {
                biased;
                _ = term.recv() => return self.shutdown().await,
                msg = rx.recv() => {
                    let Some(msg) = msg else { continue };
                    if let Flow::Exit(code) = self.on_msg(msg).await {
                        return code;
                    }
                }
                _ = clock::sleep_until(wake) => {}
            }
        }
    }

    async fn on_msg(&mut self, msg: Msg) -> Flow {
        let now = clock::now();
        match msg {
            Msg::ServerAcquire(r) => {
                let actions = match r {
                    Ok(lease) => self.keeper.on_acquired(now, lease.epoch),
                    Err(e @ StoreError::Schema { .. }) => {
                        // Retrying cannot help: the table is missing or of another version.
                        eprintln!("ferry server {}: {e}", self.ctx.name);
                        self.ctx.event(
                            EventKind::ConfigError,
                            None,
                            format!("{} cannot use the lease table: {e}", self.ctx.name),
                        );
                        return Flow::Exit(EXIT_CONFIG);
                    }
                    Err(e) => {
                        if matches!(e, StoreError::Lost { .. }) {
                            // The handover was refused: someone took the lease meanwhile.
                            self.handover = None;
                        }
                        self.keeper.on_acquire_failed(now, ferry_store::chain(&e))
                    }
                };
                self.on_keeper(actions).await
            }
            Msg::ServerRenew(r) => {
                let actions = match r {
                    Ok(_) => self.keeper.on_renewed(now),
                    Err(e @ StoreError::Lost { .. }) => self.keeper.on_lost(now, e.to_string()),
                    Err(e) => self.keeper.on_renew_failed(now, ferry_store::chain(&e)),
                };
                self.on_keeper(actions).await
            }
            Msg::Reply(ferry_api::Reply::Certificate { credentials }) => {
                if credentials.identity().ok() == Some(ferry_tls::Identity::Server(self.ctx.name.to_string())) {
                    let left_h = credentials.expires_in_s().unwrap_or(0) / 3600;
                    self.ctx.credentials = Some(credentials);
                    self.cert_refresh_at = refresh_at(now, &self.ctx.credentials);
                    if let Some(m) = self.master.as_mut() {
                        m.forget_clients();
                    }
                    tracing::info!("{}: a fresh certificate from the Node Manager (valid {left_h} h)", self.ctx.name);
                }
                Flow::Continue
            }
            Msg::Reply(ferry_api::Reply::Renewed { id, outcome, detail }) => {
                if self.renew_pending != Some(id) {
                    return Flow::Continue;
                }
                self.renew_pending = None;
                let actions = match outcome {
                    ferry_api::RenewOutcome::Ok => self.keeper.on_renewed(now),
                    ferry_api::RenewOutcome::Lost => self.keeper.on_lost(now, detail),
                    ferry_api::RenewOutcome::Failed => {
                        self.direct_renewals = DIRECT_AFTER_NM_FAILURE;
                        self.keeper.on_renew_failed(now, detail)
                    }
                };
                self.on_keeper(actions).await
            }
            Msg::RenewTimeout { id } => {
                if self.renew_pending != Some(id) {
                    return Flow::Continue;
                }
                self.renew_pending = None;
                self.direct_renewals = DIRECT_AFTER_NM_FAILURE;
                let actions = self.keeper.on_renew_failed(
                    now,
                    format!(
                        "the Node Manager did not answer the renewal within {} ms",
                        self.keeper.timing.request_timeout_ms()
                    ),
                );
                self.on_keeper(actions).await
            }
            Msg::Health(results) => {
                self.health_in_flight = false;
                self.on_health(now, results);
                Flow::Continue
            }
            other => {
                if let Some(m) = self.master.as_mut() {
                    m.on_msg(&self.ctx, now, other);
                }
                Flow::Continue
            }
        }
    }

    async fn on_keeper(&mut self, actions: Vec<KeeperAction>) -> Flow {
        for action in actions {
            match action {
                KeeperAction::Acquire => {
                    let store = self.ctx.store.clone();
                    let req = self.ctx.request(LeaseName::Server(self.ctx.name.clone()));
                    let handover = self.handover.clone();
                    let tx = self.ctx.tx.clone();
                    tokio::spawn(async move {
                        let r = match handover {
                            Some(from) => store.handover(&req, &from).await,
                            None => store.acquire(&req).await,
                        };
                        let _ = tx.send(Msg::ServerAcquire(r)).await;
                    });
                }
                KeeperAction::Renew { epoch } => {
                    // Through the Node Manager's batch when it answers (one transaction for
                    // all its servers); the keeper took t0 before this, so the deadline holds
                    // (rule 2). If the Node Manager is gone or failed, straight to the table.
                    if self.direct_renewals == 0 {
                        self.next_renew_id += 1;
                        let id = self.next_renew_id;
                        let report = Report::Renew {
                            id,
                            lease: LeaseName::Server(self.ctx.name.clone()),
                            incarnation: self.ctx.incarnation.clone(),
                            epoch,
                            ttl_ms: self.ctx.server.lease_ttl().as_millis() as u64,
                        };
                        if self.ctx.channel.send(&report) {
                            self.renew_pending = Some(id);
                            let tx = self.ctx.tx.clone();
                            let wait = Duration::from_millis(self.keeper.timing.request_timeout_ms());
                            tokio::spawn(async move {
                                tokio::time::sleep(wait).await;
                                let _ = tx.send(Msg::RenewTimeout { id }).await;
                            });
                            continue;
                        }
                    } else {
                        self.direct_renewals -= 1;
                    }
                    let store = self.ctx.store.clone();
                    let name = LeaseName::Server(self.ctx.name.clone());
                    let inc = self.ctx.incarnation.clone();
                    let ttl = self.ctx.server.lease_ttl();
                    let tx = self.ctx.tx.clone();
                    tokio::spawn(async move {
                        let r = store.renew(&name, &inc, epoch, ttl).await;
                        let _ = tx.send(Msg::ServerRenew(r)).await;
                    });
                }
                // The Node Manager's fence is the backstop for a hung server (rule 3): it
                // fires half a margin after the server's own, still before the store can
                // expire the lease, so a healthy server always fences itself first.
                KeeperAction::Deadline { at } => {
                    let backstop = at + self.keeper.timing.margin_ms / 2;
                    self.ctx.report(&Report::Deadline { at_ms: backstop.0 })
                }
                KeeperAction::Acquired { epoch } => {
                    self.epoch = Some(epoch);
                    self.ctx.channel.update_hello(Some(epoch), None);
                    self.ctx.report(&Report::Acquired { epoch });
                    self.ctx.event(
                        EventKind::LeaseAcquired,
                        Some(epoch),
                        format!(
                            "{} obtained its server lease on {} (epoch {}, ttl {} ms){}",
                            self.ctx.name,
                            self.ctx.machine,
                            epoch,
                            self.keeper.timing.ttl_ms,
                            if self.handover.is_some() { " by handover from the reaped incarnation" } else { "" }
                        ),
                    );
                    let env = ServiceEnv {
                        server: &self.ctx.server,
                        machine: self.ctx.machine.as_str(),
                        epoch: epoch.0,
                        incarnation: &self.ctx.incarnation.0,
                    };
                    match services::start_all(&env, &self.dir) {
                        Ok(s) => {
                            let now = clock::now();
                            for svc in &self.ctx.server.services {
                                let start_timeout_ms = svc.start_timeout.as_millis() as u64;
                                self.health.add(&svc.name, now, start_timeout_ms, svc.health.is_some());
                            }
                            self.services = s;
                        }
                        Err(e) => {
                            self.ctx.event(EventKind::StartFailed, Some(epoch), format!("{}: {e}", self.ctx.name));
                            self.release_all().await;
                            return Flow::Exit(EXIT_CONFIG);
                        }
                    }
                    self.next_health = clock::now();
                    // Figure 7-1 step 6: the server tries for the master role once it runs.
                    self.master = Some(MasterRole::new(&self.ctx, self.keeper.timing));
                }
                KeeperAction::Fence { reason } => {
                    services::kill_all(&mut self.services);
                    let msg = format!("{} {reason}; its services were killed", self.ctx.name);
                    eprintln!("<Error> <Cluster> <FERRY-000150> <{msg}>");
                    self.ctx.event(EventKind::Fenced, self.epoch, msg);
                    return Flow::Exit(EXIT_FENCED);
                }
                KeeperAction::Release { epoch } => self.release_server_lease(epoch).await,
            }
        }
        Flow::Continue
    }

    fn check_services(&mut self, now: Mono) -> Flow {
        if self.epoch.is_none() || self.services.is_empty() {
            return Flow::Continue;
        }
        if let Some((svc, status)) = services::exited(&mut self.services) {
            services::kill_all(&mut self.services);
            self.ctx.event(
                EventKind::ServiceDied,
                self.epoch,
                format!(
                    "service {svc} of {} ended ({status}); the server exits so its Node Manager restarts it",
                    self.ctx.name
                ),
            );
            return Flow::Exit(EXIT_SERVICE_DIED);
        }
        if now >= self.next_health && !self.health_in_flight {
            // Often while a service is still starting (RUNNING as soon as it answers), then
            // every interval (ferry-core's HealthJudge decides).
            self.next_health = now + self.health.next_check_in(self.keeper.timing.interval_ms);
            self.health_in_flight = true;
            let checks: Vec<_> =
                self.services.iter().filter_map(|s| s.health.clone().map(|h| (s.name.clone(), h))).collect();
            let timeout = Duration::from_millis(self.keeper.timing.request_timeout_ms());
            let tx = self.ctx.tx.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for (name, h) in checks {
                    out.push((name, services::check(&h, timeout).await));
                }
                let _ = tx.send(Msg::Health(out)).await;
            });
        }
        Flow::Continue
    }

    fn on_health(&mut self, now: Mono, results: Vec<(String, Result<(), String>)>) {
        let verdict = self.health.on_results(now, &results);
        self.keeper.set_healthy(verdict.healthy);
        if !verdict.healthy && !self.unhealthy_reported {
            self.unhealthy_reported = true;
            self.ctx.event(
                EventKind::Unhealthy,
                self.epoch,
                format!("{} stops renewing its lease: {}", self.ctx.name, verdict.problems.join("; ")),
            );
        }
        if verdict.healthy && verdict.all_answered && !self.running_reported {
            self.running_reported = true;
            self.ctx.report(&Report::Running);
            self.ctx.event(
                EventKind::ServerRunning,
                self.epoch,
                format!("{} is running on {}: its services answer", self.ctx.name, self.ctx.machine),
            );
        }
    }

    async fn release_server_lease(&self, epoch: ferry_core::Epoch) {
        let r = self.ctx.store.release(&LeaseName::Server(self.ctx.name.clone()), &self.ctx.incarnation, epoch).await;
        match r {
            Ok(()) => self.ctx.event(
                EventKind::LeaseReleased,
                Some(epoch),
                format!("{} removed its lease (epoch {epoch})", self.ctx.name),
            ),
            Err(e) => self.ctx.event(EventKind::LeaseReleaseFailed, Some(epoch), format!("{}: {e}", self.ctx.name)),
        }
    }

    async fn release_all(&mut self) {
        if let Some(m) = self.master.as_mut() {
            m.release(&self.ctx).await;
        }
        for action in self.keeper.release(clock::now()) {
            if let KeeperAction::Release { epoch } = action {
                self.release_server_lease(epoch).await;
            }
        }
        self.ctx.report(&Report::Released);
    }

    /// SIGTERM: stop the services, give the leases back (Figure 7-3 step 4), exit 0.
    async fn shutdown(&mut self) -> i32 {
        self.ctx.event(EventKind::ServerStopping, self.epoch, format!("{} is shutting down gracefully", self.ctx.name));
        let patience = self.ctx.server.shutdown_timeout * 8 / 10;
        services::stop_all(&mut self.services, patience).await;
        self.release_all().await;
        0
    }
}
