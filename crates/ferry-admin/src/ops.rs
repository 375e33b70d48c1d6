//! Orchestration: start cluster, start, stop, and manual migration (Figure 7-3), each an
//! operation whose steps are recorded (for `ferry migrate --wait`) and logged as events.
//! Requests are checked before anything is touched, so a refused request disturbs nothing.

use ferry_core::nodeman::ServerState;
use ferry_core::EventKind;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::{NmStart, NmStop, Operation, OperationKind, OperationState, Origin, Step};
use ferry_core::lease::Lease;
use ferry_core::{ClusterName, LeaseName, MachineName, ServerName, TokenName};
use ferry_host::clock;

use crate::operations::ApiError;
use crate::state::AdminState;

/// How long `locate` waits for each Node Manager (a dead machine's costs this much).
const LOCATE_TIMEOUT: Duration = Duration::from_millis(800);

impl AdminState {
    fn step(&self, op: u64, kind: EventKind, server: &ServerName, machine: Option<&MachineName>, message: String) {
        self.ops.update(op, |o| o.steps.push(Step { at_ms: clock::wall_ms(), message: message.clone() }));
        let by = self.ops.by(op);
        self.record(kind, Some(server), machine, None, message, by.as_ref());
    }

    fn finish(&self, op: u64, result: Result<String, String>) {
        self.ops.update(op, |o| match result {
            Ok(msg) => {
                o.steps.push(Step { at_ms: clock::wall_ms(), message: msg });
                o.state = OperationState::Succeeded;
            }
            Err(e) => {
                o.state = OperationState::Failed;
                o.error = Some(e);
            }
        });
    }

    fn server_cfg(&self, name: &str) -> Result<ferry_core::domain::Server, ApiError> {
        let d = self.domain().domain;
        let server = ServerName::new(name)?;
        d.server(&server).cloned().ok_or_else(|| {
            ApiError::unknown("server", server.as_str(), &d.name, d.servers.iter().map(|s| s.name.as_str()))
        })
    }

    async fn lease_of(&self, server: &ServerName) -> Result<Option<Lease>, ApiError> {
        self.store
            .get(&LeaseName::Server(server.clone()))
            .await
            .map_err(|e| ApiError::TableUnreadable(ferry_store::chain(&e)))
    }

    /// Where the server runs now: the machine of its live lease, else a Node Manager that
    /// reports a live process for it.
    async fn locate(&self, server: &ServerName) -> Result<Option<MachineName>, ApiError> {
        if let Some(l) = self.lease_of(server).await? {
            if l.is_live() {
                return Ok(l.machine);
            }
        }
        for v in self.poll_nms(LOCATE_TIMEOUT).await {
            if let Ok(list) = v.result {
                if list.iter().any(|e| e.name == server.as_str() && e.pid.is_some()) {
                    return Ok(Some(v.machine));
                }
            }
        }
        Ok(None)
    }

    /// Waits until the server's lease satisfies `done`; the answer or a timeout message.
    async fn wait_lease(
        &self,
        server: &ServerName,
        timeout: Duration,
        done: impl Fn(&Option<Lease>) -> bool,
    ) -> Result<Option<Lease>, String> {
        let until = clock::now() + timeout;
        loop {
            match self.store.get(&LeaseName::Server(server.clone())).await {
                Ok(l) if done(&l) => return Ok(l),
                Ok(_) | Err(_) if clock::now() >= until => {
                    return Err(format!("timed out after {} ms waiting for {server}'s lease", timeout.as_millis()))
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn start_timeout(server: &ferry_core::domain::Server) -> Duration {
        (server.lease_ttl() * 2 + Duration::from_secs(10)).max(Duration::from_secs(15))
    }

    /// `ferry start SERVER`: start it on its home machine (Figure 7-1 steps 2-3).
    pub async fn start_server(self: &Arc<Self>, name: &str, by: &TokenName) -> Result<Operation, ApiError> {
        let cfg = self.server_cfg(name)?;
        if let Some(l) = self.lease_of(&cfg.name).await?.filter(|l| l.is_live()) {
            return Err(ApiError::AlreadyRunning {
                server: cfg.name.to_string(),
                machine: l.machine.as_ref().map_or("?".to_string(), |m| m.to_string()),
                epoch: l.epoch.0,
                remaining_ms: l.remaining_ms,
            });
        }
        let created = self.ops.create(OperationKind::Start, cfg.name.as_str(), by);
        let op = created.id;
        let me = self.clone();
        tokio::spawn(async move {
            let r = me.start_on(op, &cfg, &cfg.machine).await;
            me.finish(op, r);
        });
        Ok(created)
    }

    /// Starts `cfg` on `machine` and waits until it runs there: its lease, then its services.
    async fn start_on(
        &self,
        op: u64,
        cfg: &ferry_core::domain::Server,
        machine: &MachineName,
    ) -> Result<String, String> {
        self.try_start_on(op, cfg, machine).await.map_err(|e| e.to_string())
    }

    /// [`AdminState::start_on`], telling an address still in use (worth another try) from
    /// other failures.
    async fn try_start_on(
        &self,
        op: u64,
        cfg: &ferry_core::domain::Server,
        machine: &MachineName,
    ) -> Result<String, StartFailure> {
        let epoch = self.start_leased(op, cfg, machine).await?;
        self.running(cfg, machine, epoch).await.map_err(StartFailure::Other)
    }

    /// Has `machine`'s Node Manager start `cfg` and waits until it holds its lease there
    /// (Figure 7-1 steps 2-6); its epoch.
    async fn start_leased(
        &self,
        op: u64,
        cfg: &ferry_core::domain::Server,
        machine: &MachineName,
    ) -> Result<u64, StartFailure> {
        let nm = self
            .nm(machine, Duration::from_secs(10))
            .ok_or_else(|| StartFailure::Other(format!("machine {machine} is not defined")))?;
        self.step(
            op,
            EventKind::ContactNm,
            &cfg.name,
            Some(machine),
            format!("contacting the Node Manager on {machine} to start {}", cfg.name),
        );
        let ack =
            nm.start(cfg.name.as_str(), &NmStart { origin: Origin::Admin, in_place: false }).await.map_err(|e| {
                let msg = format!("the Node Manager on {machine} could not start {}: {e}", cfg.name);
                if e.reason() == Some(ferry_api::REASON_ADDRESS_IN_USE) {
                    StartFailure::AddressInUse(msg)
                } else {
                    StartFailure::Other(msg)
                }
            })?;
        self.step(
            op,
            EventKind::NmStarted,
            &cfg.name,
            Some(machine),
            format!("Node Manager on {machine}: {}", ack.message),
        );
        let l = self
            .wait_lease(&cfg.name, Self::start_timeout(cfg), |l| {
                l.as_ref().is_some_and(|l| l.is_live() && l.machine.as_ref() == Some(machine))
            })
            .await
            .map_err(StartFailure::Other)?;
        let epoch = l.map(|l| l.epoch.0).unwrap_or(0);
        self.step(
            op,
            EventKind::LeaseObtained,
            &cfg.name,
            Some(machine),
            format!("{} obtained its lease on {machine} (epoch {epoch})", cfg.name),
        );
        Ok(epoch)
    }

    /// Waits until `cfg`, which holds its lease on `machine` at `epoch`, runs: the message
    /// that says so.
    async fn running(
        &self,
        cfg: &ferry_core::domain::Server,
        machine: &MachineName,
        epoch: u64,
    ) -> Result<String, String> {
        self.wait_running(cfg, machine).await?;
        Ok(format!("{} is running on {machine} (epoch {epoch}): its services answer", cfg.name))
    }

    /// Waits until `machine`'s Node Manager says `cfg` is RUNNING: its services answered
    /// their health checks (what RUNNING means in `ferry status`). Asks the Node Manager
    /// itself, which also brings the admin's view of the machine up to date.
    async fn wait_running(&self, cfg: &ferry_core::domain::Server, machine: &MachineName) -> Result<(), String> {
        let slowest = cfg.services.iter().map(|s| s.start_timeout).max().unwrap_or_default();
        let timeout = slowest + cfg.lease_ttl() + Duration::from_secs(5);
        let until = clock::now() + timeout;
        loop {
            let last = match self.ask_nm(machine, Duration::from_secs(2)).await {
                Ok(list) => match list.into_iter().find(|e| e.name == cfg.name.as_str()) {
                    Some(e) if e.state == ServerState::Running => return Ok(()),
                    Some(e) => format!("its Node Manager says {}", e.state),
                    None => "its Node Manager does not list it".to_string(),
                },
                Err(e) => e,
            };
            if clock::now() >= until {
                return Err(format!(
                    "{} holds its lease on {machine} but its services did not answer their health checks within {} ms ({last}); see its server log on {machine}",
                    cfg.name,
                    timeout.as_millis()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The start at the end of a migration: while the target refuses because the floating
    /// IP still answers elsewhere (the source's `removeif` may still run), ask again, for up
    /// to the source machine's hook timeout plus one lease time to live; if the target still
    /// cannot start the server, start it again where it came from. A migration never leaves
    /// a server stranded with nothing to restart it (a released lease is nobody's job).
    async fn start_after_move(
        &self,
        op: u64,
        cfg: &ferry_core::domain::Server,
        from: Option<&MachineName>,
        to: &MachineName,
    ) -> Result<String, String> {
        let d = self.domain().domain;
        let hook_timeout = from.and_then(|m| d.machine(m)).map_or(Duration::from_secs(10), |m| m.hooks.timeout);
        let until = clock::now() + hook_timeout + cfg.lease_ttl();
        let failure = loop {
            match self.try_start_on(op, cfg, to).await {
                Ok(msg) => return Ok(format!("{msg}: migration to {to} complete")),
                Err(StartFailure::AddressInUse(e)) if clock::now() < until => {
                    self.step(
                        op,
                        EventKind::AddressInUse,
                        &cfg.name,
                        Some(to),
                        format!("{e}; asking {to} again in {} ms", ADDRESS_RETRY.as_millis()),
                    );
                    tokio::time::sleep(ADDRESS_RETRY).await;
                }
                Err(e) => break e.to_string(),
            }
        };
        let Some(back) = from.filter(|m| *m != to) else {
            return Err(failure);
        };
        self.step(
            op,
            EventKind::Rollback,
            &cfg.name,
            Some(back),
            format!("{failure}; starting {} again on {back}, where it came from", cfg.name),
        );
        match self.start_on(op, cfg, back).await {
            Ok(msg) => Err(format!("migration to {to} failed ({failure}); rolled back: {msg}")),
            Err(e) => Err(format!(
                "migration to {to} failed ({failure}), and so did starting it again on {back} ({e}): start it by hand with `ferry start {}` or `ferry migrate {} --to MACHINE`",
                cfg.name, cfg.name
            )),
        }
    }

    /// `ferry start-cluster CLUSTER` (Figure 7-1): start every server not already running.
    pub async fn start_cluster(self: &Arc<Self>, name: &str, by: &TokenName) -> Result<Operation, ApiError> {
        let d = self.domain().domain;
        let cluster = ClusterName::new(name)?;
        if d.cluster(&cluster).is_none() {
            return Err(ApiError::unknown(
                "cluster",
                cluster.as_str(),
                &d.name,
                d.clusters.iter().map(|c| c.name.as_str()),
            ));
        }
        let servers: Vec<_> = d.servers_in(&cluster).cloned().collect();
        // At most the cluster's max_concurrent_starts at once, each from its command until
        // it is RUNNING: a cluster of hundreds starts in waves its machines can carry, and
        // each start's deadline counts from its own turn, not from the command.
        let turns = Arc::new(tokio::sync::Semaphore::new(
            d.cluster(&cluster).map_or(1, |c| c.max_concurrent_starts.max(1)) as usize,
        ));
        let created = self.ops.create(OperationKind::StartCluster, cluster.as_str(), by);
        let op = created.id;
        let me = self.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            let mut first_error = None;
            let mut servers = servers.into_iter();
            // Figure 7-1 step 6: "because Managed Server 1 starts up first, it also obtains a
            // cluster master lease". The first server starts alone; the rest together.
            // The others need not wait for its services: once it holds its lease (and the
            // master lease) they start, while it finishes starting.
            if let Some(first) = servers.next() {
                match me.lease_of(&first.name).await {
                    Ok(Some(l)) if l.is_live() => me.already_running(op, &first.name, l.machine.as_ref()),
                    _ => match me.start_leased(op, &first, &first.machine).await.map_err(|e| e.to_string()) {
                        Ok(epoch) => {
                            let (me2, first) = (me.clone(), first.clone());
                            let turn = turns.clone().try_acquire_owned().ok();
                            tasks.push(tokio::spawn(async move {
                                let _turn = turn;
                                me2.running(&first, &first.machine, epoch).await.map(|msg| {
                                    me2.step(op, EventKind::StartComplete, &first.name, Some(&first.machine), msg)
                                })
                            }));
                        }
                        Err(e) => first_error = Some(e),
                    },
                }
                let until = clock::now() + first.lease_ttl();
                while clock::now() < until {
                    match me.store.get(&LeaseName::Master(cluster.clone())).await {
                        Ok(Some(l)) if l.is_live() => break,
                        _ => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
            for s in servers {
                let me2 = me.clone();
                let Ok(turn) = turns.clone().acquire_owned().await else { break };
                tasks.push(tokio::spawn(async move {
                    let _turn = turn;
                    match me2.lease_of(&s.name).await {
                        Ok(Some(l)) if l.is_live() => {
                            me2.already_running(op, &s.name, l.machine.as_ref());
                            Ok(())
                        }
                        _ => me2
                            .start_on(op, &s, &s.machine)
                            .await
                            .map(|msg| me2.step(op, EventKind::StartComplete, &s.name, Some(&s.machine), msg)),
                    }
                }));
            }
            let mut errors: Vec<String> = first_error.into_iter().collect();
            for t in tasks {
                match t.await {
                    Ok(Err(e)) => errors.push(e),
                    Err(e) => errors.push(e.to_string()),
                    Ok(Ok(())) => {}
                }
            }
            me.finish(
                op,
                if errors.is_empty() { Ok(format!("cluster {cluster} started")) } else { Err(errors.join("; ")) },
            );
        });
        Ok(created)
    }

    /// The step of a start-cluster for a server that holds its lease already.
    fn already_running(&self, op: u64, server: &ServerName, machine: Option<&MachineName>) {
        let on = machine.map_or("an unknown machine", |m| m.as_str());
        self.step(op, EventKind::AlreadyRunning, server, machine, format!("{server} is already running on {on}"));
    }

    /// `ferry stop SERVER [--force]`: through its Node Manager, which releases its lease.
    pub async fn stop_server(self: &Arc<Self>, name: &str, force: bool, by: &TokenName) -> Result<Operation, ApiError> {
        let cfg = self.server_cfg(name)?;
        let Some(machine) = self.locate(&cfg.name).await? else {
            return Err(ApiError::NotRunning(cfg.name.to_string()));
        };
        let created = self.ops.create(OperationKind::Stop, cfg.name.as_str(), by);
        let op = created.id;
        let me = self.clone();
        tokio::spawn(async move {
            let r = me.stop_on(op, &cfg, &machine, force).await.map(|_| format!("{} stopped", cfg.name));
            me.finish(op, r);
        });
        Ok(created)
    }

    async fn stop_on(
        &self,
        op: u64,
        cfg: &ferry_core::domain::Server,
        machine: &MachineName,
        force: bool,
    ) -> Result<(), String> {
        let budget = cfg.shutdown_timeout + Duration::from_secs(15);
        let nm = self.nm(machine, budget).ok_or_else(|| format!("machine {machine} is not defined"))?;
        self.step(
            op,
            EventKind::ContactNm,
            &cfg.name,
            Some(machine),
            format!(
                "contacting the Node Manager on {machine} to stop {}{}",
                cfg.name,
                if force { " (forced)" } else { "" }
            ),
        );
        let cmd = NmStop { origin: Origin::Admin, force, timeout_ms: None };
        let stop = nm.stop(cfg.name.as_str(), &cmd);
        tokio::pin!(stop);
        // The server releases its lease once its services are down. If its machine dies
        // right then, the Node Manager's answer never comes: watch the lease too, and once
        // it is released give the Node Manager a moment (it removes the floating IP) before
        // going on without its answer.
        let released = self.wait_lease(&cfg.name, budget, |l| l.as_ref().is_none_or(|l| !l.is_live()));
        let answer = tokio::select! {
            r = &mut stop => Some(r),
            r = released => match r {
                Ok(_) => tokio::time::timeout(Duration::from_secs(2), &mut stop).await.ok(),
                Err(_) => Some(stop.await),
            },
        };
        match answer {
            Some(r) => {
                let ack = r.map_err(|e| format!("the Node Manager on {machine} could not stop {}: {e}", cfg.name))?;
                self.step(op, EventKind::NmStopped, &cfg.name, Some(machine), format!("Node Manager on {machine}: {}", ack.message));
                // So that `ferry status` shows the stop at once, not at the next poll.
                let _ = self.ask_nm(machine, Duration::from_secs(2)).await;
            }
            None => self.step(
                op,
                EventKind::NmSilent,
                &cfg.name,
                Some(machine),
                format!("{} released its lease but the Node Manager on {machine} stopped answering; going on without its answer", cfg.name),
            ),
        }
        let l = self.wait_lease(&cfg.name, Duration::from_secs(5), |l| l.as_ref().is_none_or(|l| !l.is_live())).await?;
        if let Some(l) = l {
            self.step(
                op,
                EventKind::LeaseRemoved,
                &cfg.name,
                Some(machine),
                format!("{}'s lease row is released (epoch {})", cfg.name, l.epoch),
            );
        }
        Ok(())
    }

    /// `ferry migrate SERVER --to MACHINE` (Figure 7-3), also used for failback.
    pub async fn migrate(self: &Arc<Self>, name: &str, to: &str, by: &TokenName) -> Result<Operation, ApiError> {
        let cfg = self.server_cfg(name)?;
        let d = self.domain().domain;
        let target = MachineName::new(to)?;
        if d.machine(&target).is_none() {
            return Err(ApiError::unknown(
                "machine",
                target.as_str(),
                &d.name,
                d.machines.iter().map(|m| m.name.as_str()),
            ));
        }
        let mut allowed = vec![cfg.machine.clone()];
        allowed.extend(d.candidates_for(&cfg).into_iter().filter(|m| m != &cfg.machine));
        if !allowed.contains(&target) {
            let list: Vec<_> = allowed.iter().map(|m| m.to_string()).collect();
            return Err(ApiError::NotACandidate {
                target: target.to_string(),
                server: cfg.name.to_string(),
                allowed: list.join(", "),
            });
        }
        let from = self.locate(&cfg.name).await?;
        if from.as_ref() == Some(&target) {
            return Err(ApiError::AlreadyThere { server: cfg.name.to_string(), target: target.to_string() });
        }
        let created = self.ops.create(OperationKind::Migrate, cfg.name.as_str(), by);
        let op = created.id;
        let me = self.clone();
        tokio::spawn(async move {
            let r = me.migrate_steps(op, &cfg, from, &target).await;
            me.finish(op, r);
        });
        Ok(created)
    }

    async fn migrate_steps(
        &self,
        op: u64,
        cfg: &ferry_core::domain::Server,
        from: Option<MachineName>,
        to: &MachineName,
    ) -> Result<String, String> {
        match &from {
            Some(m) => {
                self.step(
                    op,
                    EventKind::MigrationStart,
                    &cfg.name,
                    Some(m),
                    format!("migrating {} from {m} to {to}", cfg.name),
                );
                if let Err(e) = self.stop_on(op, cfg, m, false).await {
                    // The source machine may be dead: then its lease must run out first.
                    self.step(
                        op,
                        EventKind::MigrationWait,
                        &cfg.name,
                        Some(m),
                        format!("{e}; waiting for {}'s lease to expire before starting it on {to}", cfg.name),
                    );
                    // Meanwhile the cluster master may restart it (in place or elsewhere).
                    let l = self
                        .wait_lease(&cfg.name, cfg.lease_ttl() + Duration::from_secs(5), |l| {
                            l.as_ref().is_none_or(|l| !l.is_live() || l.machine.as_ref() != Some(m))
                        })
                        .await?;
                    if let Some(l) = l.filter(|l| l.is_live()) {
                        let there = l.machine.as_ref().map_or("?", |m| m.as_str());
                        if l.machine.as_ref() == Some(to) {
                            return Ok(format!(
                                "the cluster master already restarted {} on {to} (epoch {}) while {m} was unreachable: migration to {to} complete",
                                cfg.name, l.epoch
                            ));
                        }
                        return Err(format!(
                            "the cluster master restarted {} on {there} (epoch {}) while {m} was unreachable; it was not moved again: run `ferry migrate {} --to {to}` if it should still move",
                            cfg.name, l.epoch, cfg.name
                        ));
                    }
                }
            }
            None => self.step(
                op,
                EventKind::MigrationStart,
                &cfg.name,
                None,
                format!("{} is not running; starting it on {to}", cfg.name),
            ),
        }
        self.start_after_move(op, cfg, from.as_ref(), to).await
    }
}

/// Why a start through a Node Manager did not happen.
#[derive(Debug, thiserror::Error)]
enum StartFailure {
    /// Another host still answers for the server's floating IP.
    #[error("{0}")]
    AddressInUse(String),
    #[error("{0}")]
    Other(String),
}

/// How long a migration waits before asking a target that refused for an address in use again.
const ADDRESS_RETRY: Duration = Duration::from_millis(200);
