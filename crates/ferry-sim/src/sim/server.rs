//! The `ferry server` processes: each runs a `Keeper` for its server lease (with
//! ferry-server's acquire patience), starts its services once the lease is acquired and
//! runs them until it is fenced, killed or crashes, reports each new deadline to its Node
//! Manager at once, and times out every store call (rule 7). A process gets to run in
//! [`Sim::inst_poll`]: deadline checks first, then timeouts, then the master's duties.

use std::collections::{BTreeMap, VecDeque};

use ferry_core::keeper::{Keeper, KeeperAction, KeeperState};
use ferry_core::master::{CommandResult, Planner};
use ferry_core::nodeman::agent::ServerReport;
use ferry_core::{Epoch, Incarnation, LeaseName, Mono, ServerName};
use rand::Rng;

use super::master::Cmd;
use super::network::{Node, Payload, StoreOp, StoreReply};
use super::{who, Ev, HostId, InstId, Sim, TIMER_JITTER_MS};
use crate::check::Property;
use crate::store::{Acquire, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReqKind {
    Acquire,
    Renew,
    List,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Req {
    pub(super) id: u64,
    pub(super) kind: ReqKind,
    pub(super) timeout_at: Mono,
}

pub(super) enum InstItem {
    Msg(Payload),
    Started,
}

/// One `ferry server` process (an incarnation).
pub(super) struct Inst {
    pub(super) server: ServerName,
    pub(super) host: HostId,
    pub(super) incarnation: Incarnation,
    pub(super) alive: bool,
    pub(super) hung: bool,
    pub(super) started: bool,
    pub(super) keeper: Option<Keeper>,
    pub(super) handover_from: Option<Incarnation>,
    pub(super) req: Option<Req>,
    pub(super) services_up: bool,
    pub(super) epoch: Epoch,
    /// The latest true instant the store granted this process's server lease until.
    pub(super) granted_until: u64,
    /// The same for its master lease.
    pub(super) mgranted_until: u64,
    // The cluster-master side of the process.
    pub(super) mk: Option<Keeper>,
    pub(super) mreq: Option<Req>,
    pub(super) tenure: Option<usize>,
    pub(super) planner: Option<Planner>,
    pub(super) scan: Option<Req>,
    pub(super) next_scan: Mono,
    pub(super) next_hb: Mono,
    pub(super) cmds: BTreeMap<u64, Cmd>,
    pub(super) last_hb: Mono,
    pub(super) hb_epoch: Epoch,
    pub(super) inbox: VecDeque<InstItem>,
    pub(super) wake_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    Server,
    Master,
    Scan,
}

impl Sim {
    pub(super) fn inst_start(&mut self, i: InstId) {
        let local = self.local(self.insts[i].host);
        let inst = &mut self.insts[i];
        inst.started = true;
        inst.keeper = Some(Keeper::new(self.server_timing, local));
        self.inst_poll(i);
    }

    /// A process ends: its services stop with it (SIGKILL of the group, or the Node
    /// Manager kills what is left when it reaps), and its Node Manager is told.
    /// `code`: its exit status (`None`: killed by a signal).
    pub(super) fn inst_exit(&mut self, i: InstId, code: Option<i32>, why: &str) {
        if !self.insts[i].alive {
            return;
        }
        tr!(self, "exit {} ({code:?}): {why}", self.who(i));
        if self.insts[i].tenure.is_some() {
            self.master_died_at.push(self.now);
        }
        self.end_tenure(i, why);
        let inst = &mut self.insts[i];
        inst.alive = false;
        inst.req = None;
        inst.mreq = None;
        inst.inbox.clear();
        self.alive.remove(&i);
        if inst.services_up {
            inst.services_up = false;
            let server = inst.server.clone();
            self.checker.run_stop(self.now, &server, i);
        }
        let (h, server, incarnation) = (inst.host, inst.server.clone(), inst.incarnation.clone());
        // Its Node Manager hears of it as of its child's exit: a moment later, not inside
        // whatever action killed it.
        let boot = self.hosts[h].boot;
        self.schedule(self.now, Ev::NmExit { host: h, boot, server, incarnation, code, why: why.to_string() });
    }

    pub(super) fn inst_handle(&mut self, i: InstId, payload: Payload) {
        let local = self.local(self.insts[i].host);
        match payload {
            Payload::StoreResp { req, reply } => {
                let inst = &mut self.insts[i];
                if let Some(r) = inst.req.filter(|r| r.id == req) {
                    inst.req = None;
                    self.server_reply(i, local, r.kind, reply);
                } else if let Some(r) = inst.mreq.filter(|r| r.id == req) {
                    inst.mreq = None;
                    self.master_reply(i, local, r.kind, reply);
                } else if inst.scan.is_some_and(|r| r.id == req) {
                    inst.scan = None;
                    self.scan_reply(i, local, reply);
                }
                // Otherwise: the answer to a request that timed out, dropped like the
                // connection it came on.
            }
            Payload::CommandResp { id, result } => {
                if let Some(cmd) = self.insts[i].cmds.remove(&id) {
                    let acts = match self.insts[i].planner.as_mut() {
                        Some(p) => p.on_command_result(local, &cmd.server, &cmd.machine, result, &self.domain),
                        None => vec![],
                    };
                    self.master_plan(i, acts);
                }
            }
            Payload::Heartbeat { from, epoch } => {
                let inst = &mut self.insts[i];
                inst.last_hb = local;
                inst.hb_epoch = inst.hb_epoch.max(epoch);
                if let Some(t) = inst.tenure {
                    if !self.tenures[t].legit && from != i {
                        self.end_tenure(i, "heard the master's heartbeat again");
                    }
                }
            }
            Payload::StoreReq { .. } | Payload::Command { .. } => {}
        }
        self.inst_poll(i);
    }

    fn server_reply(&mut self, i: InstId, local: Mono, kind: ReqKind, reply: StoreReply) {
        let inst = &mut self.insts[i];
        let Some(k) = inst.keeper.as_mut() else {
            return;
        };
        let acts = match (kind, reply) {
            (ReqKind::Acquire, StoreReply::Lease(l, until)) => {
                inst.granted_until = inst.granted_until.max(until);
                inst.handover_from = None;
                k.on_acquired(local, l.epoch)
            }
            (ReqKind::Acquire, StoreReply::Refused(StoreError::Held(d) | StoreError::Lost(d))) => {
                inst.handover_from = None;
                k.on_acquire_failed(local, d)
            }
            (ReqKind::Acquire, _) => k.on_acquire_failed(local, "lease table unavailable".into()),
            (_, StoreReply::Lease(_, until)) => {
                inst.granted_until = inst.granted_until.max(until);
                k.on_renewed(local)
            }
            (_, StoreReply::Refused(StoreError::Held(d) | StoreError::Lost(d))) => k.on_lost(local, d),
            (_, _) => k.on_renew_failed(local, "lease table unavailable".into()),
        };
        self.server_actions(i, acts);
    }

    pub(super) fn store_request(&mut self, i: InstId, slot: Slot, kind: ReqKind, op: StoreOp) {
        let id = self.id();
        let local = self.local(self.insts[i].host);
        let timing = if slot == Slot::Server { self.server_timing } else { self.master_timing };
        let req = Some(Req { id, kind, timeout_at: local + timing.request_timeout_ms() });
        let inst = &mut self.insts[i];
        match slot {
            Slot::Server => inst.req = req,
            Slot::Master => inst.mreq = req,
            Slot::Scan => inst.scan = req,
        }
        let host = inst.host;
        self.send(host, Node::Store, Payload::StoreReq { req: id, from: i, op });
    }

    fn server_actions(&mut self, i: InstId, acts: Vec<KeeperAction>) {
        for a in acts {
            if !self.insts[i].alive {
                break;
            }
            let inst = &self.insts[i];
            let ttl_ms = self.server_timing.ttl_ms;
            let name = LeaseName::Server(inst.server.clone());
            match a {
                KeeperAction::Acquire => {
                    let op = StoreOp::Acquire(Acquire {
                        name,
                        owner: inst.server.clone(),
                        machine: self.hosts[inst.host].machine.clone().expect("a machine"),
                        incarnation: inst.incarnation.clone(),
                        ttl_ms,
                        handover_from: inst.handover_from.clone(),
                    });
                    self.store_request(i, Slot::Server, ReqKind::Acquire, op);
                }
                KeeperAction::Renew { epoch } => {
                    let op = StoreOp::Renew { name, incarnation: inst.incarnation.clone(), epoch, ttl_ms };
                    self.store_request(i, Slot::Server, ReqKind::Renew, op);
                }
                KeeperAction::Acquired { epoch } => self.services_start(i, epoch),
                KeeperAction::Deadline { at } => {
                    let (h, server, inc) = (inst.host, inst.server.clone(), inst.incarnation.clone());
                    let granted = inst.granted_until;
                    // ferry-server reports a backstop half a margin later, so a healthy server
                    // always fences itself first; it must still beat the store's expiry.
                    let backstop = at + self.server_timing.margin_ms / 2;
                    self.check_deadline(i, "server", at, granted);
                    self.check_deadline(i, "Node Manager backstop of the server", backstop, granted);
                    if let Some(nm) = self.hosts[h].nm.as_mut() {
                        nm.core.report(&server, &inc, ServerReport::Deadline { at: backstop });
                    }
                    self.nm_reschedule(h);
                }
                KeeperAction::Fence { reason } => {
                    self.stats.keeper_fences += 1;
                    let why = reason.to_string();
                    self.inst_exit(i, Some(75), &why);
                }
                KeeperAction::Release { .. } => {}
            }
        }
        self.validate(i);
    }

    /// Rule 2: the holder's local deadline, in true time and with its timer's worst latency,
    /// must fall before the store's expiry of what it was granted.
    pub(super) fn check_deadline(&mut self, i: InstId, which: &str, at: Mono, granted_until: u64) {
        let h = self.insts[i].host;
        let fence_by = self.hosts[h].clock.true_at(at, 0) + TIMER_JITTER_MS;
        let (insts, hosts) = (&self.insts, &self.hosts);
        self.checker.deadline_moved(self.now, || who(insts, hosts, i), which, at, fence_by, granted_until);
    }

    fn services_start(&mut self, i: InstId, epoch: Epoch) {
        let local = self.local(self.insts[i].host);
        let inst = &mut self.insts[i];
        inst.services_up = true;
        inst.epoch = epoch;
        // Having joined the cluster, the server competes for the master role.
        inst.mk = Some(Keeper::new(self.master_timing, local));
        inst.last_hb = local;
        let (server, machine) = (inst.server.clone(), self.hosts[inst.host].name.clone());
        tr!(self, "services up: {} epoch {epoch}", self.who(i));
        self.checker.services_acquired(self.now, &server, i, epoch);
        self.checker.run_start(self.now, &server, i, &machine, epoch);
    }

    pub(super) fn validate(&mut self, i: InstId) {
        let inst = &self.insts[i];
        let mut errs = Vec::new();
        for (which, k) in [("server", &inst.keeper), ("master", &inst.mk)] {
            if let Some(Err(e)) = k.as_ref().map(|k| k.validate()) {
                errs.push(format!("{which} keeper of {}: {e}", self.who(i)));
            }
        }
        if let Some(Err(e)) = inst.planner.as_ref().map(|p| p.validate(&self.planner_timing)) {
            errs.push(format!("planner of {}: {e}", self.who(i)));
        }
        if let Some(Err(e)) = self.hosts[inst.host].nm.as_ref().map(|nm| nm.core.validate()) {
            errs.push(format!("supervisor of {}: {e}", self.hosts[inst.host].name));
        }
        for e in errs {
            self.checker.violate(Property::Validate, self.now, e);
        }
    }

    /// Everything a process does when it gets to run: deadlines first, then timeouts, then
    /// the master's duties; then it sleeps until its next timer.
    pub(super) fn inst_poll(&mut self, i: InstId) {
        let inst = &self.insts[i];
        if !inst.alive || !inst.started || self.paused(i) {
            return;
        }
        self.deadline_checks(i);
        self.timeouts(i);
        self.master_duties(i);
        self.inst_reschedule(i);
    }

    pub(super) fn deadline_checks(&mut self, i: InstId) {
        let local = self.local(self.insts[i].host);
        if !self.insts[i].alive {
            return;
        }
        if let Some(k) = self.insts[i].keeper.as_mut() {
            let acts = k.tick(local);
            self.server_actions(i, acts);
        }
        if !self.insts[i].alive {
            return;
        }
        if let Some(k) = self.insts[i].mk.as_mut() {
            let acts = k.tick(local);
            self.master_keeper_actions(i, acts);
        }
    }

    fn timeouts(&mut self, i: InstId) {
        let local = self.local(self.insts[i].host);
        const NO_ANSWER: &str = "no answer from the lease table within the request timeout";
        if let Some(r) = self.insts[i].req.filter(|r| local >= r.timeout_at && self.insts[i].alive) {
            self.insts[i].req = None;
            let k = self.insts[i].keeper.as_mut().expect("a request implies a keeper");
            let acts = match r.kind {
                ReqKind::Acquire => k.on_acquire_failed(local, NO_ANSWER.into()),
                _ => k.on_renew_failed(local, NO_ANSWER.into()),
            };
            self.server_actions(i, acts);
        }
        if let Some(r) = self.insts[i].mreq.filter(|r| local >= r.timeout_at && self.insts[i].alive) {
            self.insts[i].mreq = None;
            let k = self.insts[i].mk.as_mut().expect("a request implies a keeper");
            let acts = match r.kind {
                ReqKind::Acquire => k.on_acquire_failed(local, NO_ANSWER.into()),
                _ => k.on_renew_failed(local, NO_ANSWER.into()),
            };
            self.master_keeper_actions(i, acts);
        }
        if self.insts[i].scan.is_some_and(|r| local >= r.timeout_at) {
            self.insts[i].scan = None;
        }
        let expired: Vec<u64> =
            self.insts[i].cmds.iter().filter(|(_, c)| local >= c.timeout_at).map(|(id, _)| *id).collect();
        for id in expired {
            let Some(cmd) = self.insts[i].cmds.remove(&id) else {
                continue;
            };
            let result = CommandResult::Unreachable(format!("no answer within {} ms", self.cmd_timeout_ms));
            let acts = match self.insts[i].planner.as_mut() {
                Some(p) => p.on_command_result(local, &cmd.server, &cmd.machine, result, &self.domain),
                None => vec![],
            };
            self.master_plan(i, acts);
        }
    }

    fn inst_reschedule(&mut self, i: InstId) {
        let inst = &self.insts[i];
        if !inst.alive {
            return;
        }
        let local = self.local(inst.host);
        let mut wake: Option<Mono> = None;
        let mut add = |m: Mono| {
            if m > local {
                wake = Some(wake.map_or(m, |w| w.min(m)));
            }
        };
        for (k, in_flight) in [(&inst.keeper, inst.req.is_some()), (&inst.mk, inst.mreq.is_some())] {
            if let Some(k) = k {
                match k.state() {
                    KeeperState::Acquiring { since, next_at, .. } => {
                        if !in_flight {
                            add(*next_at);
                        }
                        if let Some(p) = k.timing.acquire_patience_ms {
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
        for r in [&inst.req, &inst.mreq, &inst.scan].into_iter().flatten() {
            add(r.timeout_at);
        }
        for c in inst.cmds.values() {
            add(c.timeout_at);
        }
        if inst.tenure.is_some() {
            if inst.scan.is_none() {
                add(inst.next_scan);
                if let Some(w) = inst.planner.as_ref().and_then(|p| p.next_wakeup()) {
                    add(w);
                }
            }
            add(inst.next_hb);
        } else if self.bugs.master_no_wait() && inst.services_up {
            add(inst.last_hb + self.master_timing.ttl_ms);
        }
        let Some(w) = wake else { return };
        let at = self.hosts[inst.host].clock.true_at(w, self.now) + self.rng.gen_range(0..=TIMER_JITTER_MS);
        if inst.wake_at.is_none_or(|cur| cur < self.now || at < cur) {
            self.insts[i].wake_at = Some(at);
            self.schedule(at, Ev::InstWake(i));
        }
    }
}
