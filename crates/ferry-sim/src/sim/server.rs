//! The `ferry server` processes: each runs a `Keeper` for its server lease (with
//! ferry-server's acquire patience), starts its services once the lease is acquired and
//! runs them until it is fenced, killed or crashes, reports each new deadline to its Node
//! Manager at once, and times out every store call (rule 7). A process gets to run in
//! [`Sim::instance_poll`]: deadline checks first, then timeouts, then the master's duties.

use std::collections::{BTreeMap, VecDeque};

use ferry_core::keeper::{Keeper, KeeperAction, KeeperState};
use ferry_core::master::{CommandResult, Planner};
use ferry_core::nodeman::agent::ServerReport;
use ferry_core::{Epoch, Incarnation, LeaseName, Mono, ServerName};
use rand::Rng;

use super::master::PendingCommand;
use super::network::{Node, Payload, StoreOp, StoreReply};
use super::{who, Event, HostId, InstanceId, Sim, TIMER_JITTER_MS};
use crate::check::Property;
use crate::store::{Acquire, StoreError};

/// What a store request asks, so its answer (or its timeout) goes to the right handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestKind {
    Acquire,
    Renew,
    List,
}

/// A store request in flight, dropped when its answer comes or its timeout passes (rule 7).
#[derive(Debug, Clone, Copy)]
pub(super) struct Request {
    pub(super) id: u64,
    pub(super) kind: RequestKind,
    /// On the process's own clock.
    pub(super) timeout_at: Mono,
}

/// Which of a process's three requests a new one takes the place of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestSlot {
    /// Its server lease's keeper.
    Server,
    /// Its master lease's keeper.
    Master,
    /// The master's scan of the lease table.
    Scan,
}

/// Work that arrived while the process was stopped or its host frozen.
pub(super) enum InstanceItem {
    Msg(Payload),
    /// Its start-up finished.
    Started,
}

/// One `ferry server` process (an incarnation).
pub(super) struct Instance {
    pub(super) server: ServerName,
    pub(super) host: HostId,
    pub(super) incarnation: Incarnation,
    pub(super) alive: bool,
    /// SIGSTOPped.
    pub(super) hung: bool,
    /// Done starting up: its keeper runs.
    pub(super) started: bool,
    /// The keeper of its server lease, once started.
    pub(super) server_keeper: Option<Keeper>,
    /// The incarnation its Node Manager reaped, whose lease it may take over at once (rule 4).
    pub(super) handover_from: Option<Incarnation>,
    pub(super) server_request: Option<Request>,
    /// Its hosted services run (from `Acquired` until it ends).
    pub(super) services_up: bool,
    /// The epoch its services started at.
    pub(super) epoch: Epoch,
    /// The latest true instant the store granted this process's server lease until.
    pub(super) server_granted_until: u64,
    /// The same for its master lease.
    pub(super) master_granted_until: u64,
    // The cluster-master side of the process.
    /// The keeper of the master lease it competes for, once its services run.
    pub(super) master_keeper: Option<Keeper>,
    pub(super) master_request: Option<Request>,
    /// Its stretch in the master role, an index into `Sim::tenures`, while it has one.
    pub(super) tenure: Option<usize>,
    pub(super) planner: Option<Planner>,
    pub(super) scan_request: Option<Request>,
    pub(super) next_scan: Mono,
    pub(super) next_heartbeat: Mono,
    /// The master's commands awaiting a Node Manager's answer, by id.
    pub(super) commands: BTreeMap<u64, PendingCommand>,
    /// When it last heard a master's heartbeat (the `master_no_wait` planted bug acts on it).
    pub(super) last_heartbeat: Mono,
    /// The highest master epoch it heard in a heartbeat.
    pub(super) heartbeat_epoch: Epoch,
    pub(super) inbox: VecDeque<InstanceItem>,
    /// The true instant its next wake-up is scheduled for.
    pub(super) wake_at: Option<u64>,
}

impl Sim {
    pub(super) fn instance_start(&mut self, i: InstanceId) {
        let local = self.local(self.instances[i].host);
        let instance = &mut self.instances[i];
        instance.started = true;
        instance.server_keeper = Some(Keeper::new(self.server_timing, local));
        self.instance_poll(i);
    }

    /// A process ends: its services stop with it (SIGKILL of the group, or the Node
    /// Manager kills what is left when it reaps), and its Node Manager is told.
    /// `code`: its exit status (`None`: killed by a signal).
    pub(super) fn instance_exit(&mut self, i: InstanceId, code: Option<i32>, why: &str) {
        if !self.instances[i].alive {
            return;
        }
        tr!(self, "exit {} ({code:?}): {why}", self.who(i));
        if self.instances[i].tenure.is_some() {
            self.master_died_at.push(self.now);
        }
        self.end_tenure(i, why);
        let instance = &mut self.instances[i];
        instance.alive = false;
        instance.server_request = None;
        instance.master_request = None;
        instance.inbox.clear();
        self.alive.remove(&i);
        if instance.services_up {
            instance.services_up = false;
            let server = instance.server.clone();
            self.checker.run_stop(self.now, &server, i);
        }
        let (h, server, incarnation) = (instance.host, instance.server.clone(), instance.incarnation.clone());
        // Its Node Manager hears of it as of its child's exit: a moment later, not inside
        // whatever action killed it.
        let boot = self.hosts[h].boot;
        self.schedule(self.now, Event::NmExit { host: h, boot, server, incarnation, code, why: why.to_string() });
    }

    pub(super) fn instance_handle(&mut self, i: InstanceId, payload: Payload) {
        let local = self.local(self.instances[i].host);
        match payload {
            Payload::StoreResp { req, reply } => {
                let instance = &mut self.instances[i];
                if let Some(r) = instance.server_request.filter(|r| r.id == req) {
                    instance.server_request = None;
                    self.server_reply(i, local, r.kind, reply);
                } else if let Some(r) = instance.master_request.filter(|r| r.id == req) {
                    instance.master_request = None;
                    self.master_reply(i, local, r.kind, reply);
                } else if instance.scan_request.is_some_and(|r| r.id == req) {
                    instance.scan_request = None;
                    self.scan_reply(i, local, reply);
                }
                // Otherwise: the answer to a request that timed out, dropped like the
                // connection it came on.
            }
            Payload::CommandResp { id, result } => {
                if let Some(command) = self.instances[i].commands.remove(&id) {
                    let actions = match self.instances[i].planner.as_mut() {
                        Some(p) => p.on_command_result(local, &command.server, &command.machine, result, &self.domain),
                        None => vec![],
                    };
                    self.master_plan(i, actions);
                }
            }
            Payload::Heartbeat { from, epoch } => {
                let instance = &mut self.instances[i];
                instance.last_heartbeat = local;
                instance.heartbeat_epoch = instance.heartbeat_epoch.max(epoch);
                if let Some(t) = instance.tenure {
                    if !self.tenures[t].legit && from != i {
                        self.end_tenure(i, "heard the master's heartbeat again");
                    }
                }
            }
            Payload::StoreReq { .. } | Payload::Command { .. } => {}
        }
        self.instance_poll(i);
    }

    /// The store's answer to the server keeper's request.
    fn server_reply(&mut self, i: InstanceId, local: Mono, kind: RequestKind, reply: StoreReply) {
        let instance = &mut self.instances[i];
        let Some(keeper) = instance.server_keeper.as_mut() else {
            return;
        };
        let actions = match (kind, reply) {
            (RequestKind::Acquire, StoreReply::Lease(l, until)) => {
                instance.server_granted_until = instance.server_granted_until.max(until);
                instance.handover_from = None;
                keeper.on_acquired(local, l.epoch)
            }
            (RequestKind::Acquire, StoreReply::Refused(StoreError::Held(d) | StoreError::Lost(d))) => {
                instance.handover_from = None;
                keeper.on_acquire_failed(local, d)
            }
            (RequestKind::Acquire, _) => keeper.on_acquire_failed(local, "lease table unavailable".into()),
            (_, StoreReply::Lease(_, until)) => {
                instance.server_granted_until = instance.server_granted_until.max(until);
                keeper.on_renewed(local)
            }
            (_, StoreReply::Refused(StoreError::Held(d) | StoreError::Lost(d))) => keeper.on_lost(local, d),
            (_, _) => keeper.on_renew_failed(local, "lease table unavailable".into()),
        };
        self.server_actions(i, actions);
    }

    /// Sends a store request, in place of the one `slot` had in flight (whose answer will be
    /// dropped).
    pub(super) fn store_request(&mut self, i: InstanceId, slot: RequestSlot, kind: RequestKind, op: StoreOp) {
        let id = self.fresh_id();
        let local = self.local(self.instances[i].host);
        let timing = if slot == RequestSlot::Server { self.server_timing } else { self.master_timing };
        let request = Some(Request { id, kind, timeout_at: local + timing.request_timeout_ms() });
        let instance = &mut self.instances[i];
        match slot {
            RequestSlot::Server => instance.server_request = request,
            RequestSlot::Master => instance.master_request = request,
            RequestSlot::Scan => instance.scan_request = request,
        }
        let host = instance.host;
        self.send(host, Node::Store, Payload::StoreReq { req: id, from: i, op });
    }

    /// Performs what the server lease's keeper asks.
    fn server_actions(&mut self, i: InstanceId, actions: Vec<KeeperAction>) {
        for a in actions {
            if !self.instances[i].alive {
                break;
            }
            let instance = &self.instances[i];
            let ttl_ms = self.server_timing.ttl_ms;
            let name = LeaseName::Server(instance.server.clone());
            match a {
                KeeperAction::Acquire => {
                    let op = StoreOp::Acquire(Acquire {
                        name,
                        owner: instance.server.clone(),
                        machine: self.hosts[instance.host].machine.clone().expect("a machine"),
                        incarnation: instance.incarnation.clone(),
                        ttl_ms,
                        handover_from: instance.handover_from.clone(),
                    });
                    self.store_request(i, RequestSlot::Server, RequestKind::Acquire, op);
                }
                KeeperAction::Renew { epoch } => {
                    let op = StoreOp::Renew { name, incarnation: instance.incarnation.clone(), epoch, ttl_ms };
                    self.store_request(i, RequestSlot::Server, RequestKind::Renew, op);
                }
                KeeperAction::Acquired { epoch } => self.services_start(i, epoch),
                KeeperAction::Deadline { at } => {
                    let (h, server, incarnation) =
                        (instance.host, instance.server.clone(), instance.incarnation.clone());
                    let granted = instance.server_granted_until;
                    // ferry-server reports a backstop half a margin later, so a healthy server
                    // always fences itself first; it must still beat the store's expiry.
                    let backstop = at + self.server_timing.margin_ms / 2;
                    self.check_deadline(i, "server", at, granted);
                    self.check_deadline(i, "Node Manager backstop of the server", backstop, granted);
                    let local = self.local(h);
                    if let Some(nm) = self.hosts[h].nm.as_mut() {
                        nm.core.report(
                            local,
                            &self.domain,
                            &server,
                            &incarnation,
                            ServerReport::Deadline { at: backstop },
                        );
                    }
                    self.nm_reschedule(h);
                }
                KeeperAction::Fence { reason } => {
                    self.stats.keeper_fences += 1;
                    let why = reason.to_string();
                    self.instance_exit(i, Some(75), &why);
                }
                KeeperAction::Release { .. } => {}
            }
        }
        self.validate(i);
    }

    /// Rule 2: the holder's local deadline, in true time and with its timer's worst latency,
    /// must fall before the store's expiry of what it was granted (`check::fence_before_expiry`).
    pub(super) fn check_deadline(&mut self, i: InstanceId, which: &str, at: Mono, granted_until: u64) {
        let h = self.instances[i].host;
        let fence_by = self.hosts[h].clock.true_at(at, 0) + TIMER_JITTER_MS;
        let (instances, hosts) = (&self.instances, &self.hosts);
        self.checker.deadline_moved(self.now, || who(instances, hosts, i), which, at, fence_by, granted_until);
    }

    fn services_start(&mut self, i: InstanceId, epoch: Epoch) {
        let local = self.local(self.instances[i].host);
        let instance = &mut self.instances[i];
        instance.services_up = true;
        instance.epoch = epoch;
        // Having joined the cluster, the server competes for the master role.
        instance.master_keeper = Some(Keeper::new(self.master_timing, local));
        instance.last_heartbeat = local;
        let (server, machine) = (instance.server.clone(), self.hosts[instance.host].name.clone());
        tr!(self, "services up: {} epoch {epoch}", self.who(i));
        self.checker.services_acquired(self.now, &server, i, epoch);
        self.checker.run_start(self.now, &server, i, &machine, epoch);
        // Its services answer: RUNNING, which ends its start on its Node Manager (and gives
        // its turn to the next start waiting there).
        let (h, incarnation) = (self.instances[i].host, self.instances[i].incarnation.clone());
        if self.nm_running(h, self.hosts[h].boot) {
            let nm = self.hosts[h].nm.as_mut().expect("up");
            let actions = nm.core.report(local, &self.domain, &server, &incarnation, ServerReport::Running);
            self.nm_perform(h, actions);
        }
    }

    /// Property 6: the process's keepers and planner, and its machine's Node Manager, still
    /// hold their own invariants after a transition.
    pub(super) fn validate(&mut self, i: InstanceId) {
        let instance = &self.instances[i];
        let mut errors = Vec::new();
        for (which, keeper) in [("server", &instance.server_keeper), ("master", &instance.master_keeper)] {
            if let Some(Err(e)) = keeper.as_ref().map(|keeper| keeper.validate()) {
                errors.push(format!("{which} keeper of {}: {e}", self.who(i)));
            }
        }
        if let Some(Err(e)) = instance.planner.as_ref().map(|p| p.validate(&self.planner_timing)) {
            errors.push(format!("planner of {}: {e}", self.who(i)));
        }
        if let Some(Err(e)) = self.hosts[instance.host].nm.as_ref().map(|nm| nm.core.validate()) {
            errors.push(format!("supervisor of {}: {e}", self.hosts[instance.host].name));
        }
        for e in errors {
            self.checker.violate(Property::Validate, self.now, e);
        }
    }

    /// Everything a process does when it gets to run: deadlines first, then timeouts, then
    /// the master's duties; then it sleeps until its next timer.
    pub(super) fn instance_poll(&mut self, i: InstanceId) {
        let instance = &self.instances[i];
        if !instance.alive || !instance.started || self.paused(i) {
            return;
        }
        self.deadline_checks(i);
        self.timeouts(i);
        self.master_duties(i);
        self.instance_reschedule(i);
    }

    pub(super) fn deadline_checks(&mut self, i: InstanceId) {
        let local = self.local(self.instances[i].host);
        if !self.instances[i].alive {
            return;
        }
        if let Some(keeper) = self.instances[i].server_keeper.as_mut() {
            let actions = keeper.tick(local);
            self.server_actions(i, actions);
        }
        if !self.instances[i].alive {
            return;
        }
        if let Some(keeper) = self.instances[i].master_keeper.as_mut() {
            let actions = keeper.tick(local);
            self.master_keeper_actions(i, actions);
        }
    }

    fn timeouts(&mut self, i: InstanceId) {
        let local = self.local(self.instances[i].host);
        const NO_ANSWER: &str = "no answer from the lease table within the request timeout";
        if let Some(r) = self.instances[i].server_request.filter(|r| local >= r.timeout_at && self.instances[i].alive) {
            self.instances[i].server_request = None;
            let keeper = self.instances[i].server_keeper.as_mut().expect("a request implies a keeper");
            let actions = match r.kind {
                RequestKind::Acquire => keeper.on_acquire_failed(local, NO_ANSWER.into()),
                _ => keeper.on_renew_failed(local, NO_ANSWER.into()),
            };
            self.server_actions(i, actions);
        }
        if let Some(r) = self.instances[i].master_request.filter(|r| local >= r.timeout_at && self.instances[i].alive) {
            self.instances[i].master_request = None;
            let keeper = self.instances[i].master_keeper.as_mut().expect("a request implies a keeper");
            let actions = match r.kind {
                RequestKind::Acquire => keeper.on_acquire_failed(local, NO_ANSWER.into()),
                _ => keeper.on_renew_failed(local, NO_ANSWER.into()),
            };
            self.master_keeper_actions(i, actions);
        }
        if self.instances[i].scan_request.is_some_and(|r| local >= r.timeout_at) {
            self.instances[i].scan_request = None;
        }
        let expired: Vec<u64> =
            self.instances[i].commands.iter().filter(|(_, c)| local >= c.timeout_at).map(|(id, _)| *id).collect();
        for id in expired {
            let Some(command) = self.instances[i].commands.remove(&id) else {
                continue;
            };
            let result = CommandResult::Unreachable(format!("no answer within {} ms", self.command_timeout_ms));
            let actions = match self.instances[i].planner.as_mut() {
                Some(p) => p.on_command_result(local, &command.server, &command.machine, result, &self.domain),
                None => vec![],
            };
            self.master_plan(i, actions);
        }
    }

    fn instance_reschedule(&mut self, i: InstanceId) {
        let instance = &self.instances[i];
        if !instance.alive {
            return;
        }
        let local = self.local(instance.host);
        let mut wake: Option<Mono> = None;
        let mut add = |m: Mono| {
            if m > local {
                wake = Some(wake.map_or(m, |w| w.min(m)));
            }
        };
        for (keeper, in_flight) in [
            (&instance.server_keeper, instance.server_request.is_some()),
            (&instance.master_keeper, instance.master_request.is_some()),
        ] {
            if let Some(keeper) = keeper {
                match keeper.state() {
                    KeeperState::Acquiring { since, next_at, .. } => {
                        if !in_flight {
                            add(*next_at);
                        }
                        if let Some(p) = keeper.timing.acquire_patience_ms {
                            add(*since + p);
                        }
                    }
                    KeeperState::Holding { deadline, next_at, .. } => {
                        add(*deadline);
                        if !in_flight {
                            add(*next_at);
                        }
                    }
                    KeeperState::Fenced | KeeperState::Released => {}
                }
            }
        }
        for r in [&instance.server_request, &instance.master_request, &instance.scan_request].into_iter().flatten() {
            add(r.timeout_at);
        }
        for c in instance.commands.values() {
            add(c.timeout_at);
        }
        if instance.tenure.is_some() {
            if instance.scan_request.is_none() {
                add(instance.next_scan);
                if let Some(w) = instance.planner.as_ref().and_then(|p| p.next_wakeup()) {
                    add(w);
                }
            }
            add(instance.next_heartbeat);
        } else if self.bugs.master_no_wait() && instance.services_up {
            add(instance.last_heartbeat + self.master_timing.ttl_ms);
        }
        let Some(w) = wake else { return };
        let at = self.hosts[instance.host].clock.true_at(w, self.now) + self.rng.gen_range(0..=TIMER_JITTER_MS);
        if instance.wake_at.is_none_or(|cur| cur < self.now || at < cur) {
            self.instances[i].wake_at = Some(at);
            self.schedule(at, Event::InstanceWake(i));
        }
    }
}
