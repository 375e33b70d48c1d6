//! The cluster-master role, which lives in the server processes: once it has joined, each
//! competes for `master/CLUSTER` with a second `Keeper`; the holder runs a `Planner`, scans
//! the lease table every interval and at the instant the next lease runs out, sends
//! heartbeats, and before every command to a Node Manager checks that its master lease is
//! still valid by its own clock (rule 6) and stamps the command with its epoch (rule 5).
//! Each stretch in the role is a [`Tenure`], so the checker can tell two masters apart.

use ferry_core::keeper::{Keeper, KeeperAction};
use ferry_core::master::{MasterAction, Planner};
use ferry_core::{Epoch, MachineName, Mono, ServerName};

use super::network::{Node, Payload, StoreOp, StoreReply};
use super::server::{ReqKind, Slot};
use super::{InstId, Sim};
use crate::store::{Acquire, StoreError};

pub(super) struct Cmd {
    pub(super) server: ServerName,
    pub(super) machine: MachineName,
    pub(super) timeout_at: Mono,
}

/// One stretch of one process acting as cluster master.
pub(super) struct Tenure {
    pub(super) inst: InstId,
    pub(super) epoch: Epoch,
    /// False for a usurper (the `master_no_wait` planted bug).
    pub(super) legit: bool,
    pub(super) start_ms: u64,
    pub(super) end_ms: Option<u64>,
}

impl Sim {
    pub(super) fn master_reply(&mut self, i: InstId, local: Mono, kind: ReqKind, reply: StoreReply) {
        let inst = &mut self.insts[i];
        let Some(k) = inst.mk.as_mut() else {
            return;
        };
        if let StoreReply::Lease(_, until) = reply {
            inst.mgranted_until = inst.mgranted_until.max(until);
        }
        let acts = match (kind, reply) {
            (ReqKind::Acquire, StoreReply::Lease(l, _)) => k.on_acquired(local, l.epoch),
            (ReqKind::Acquire, StoreReply::Refused(StoreError::Held(d) | StoreError::Lost(d))) => {
                k.on_acquire_failed(local, d)
            }
            (ReqKind::Acquire, _) => k.on_acquire_failed(local, "lease table unavailable".into()),
            (_, StoreReply::Lease(..)) => k.on_renewed(local),
            (_, StoreReply::Refused(StoreError::Held(d) | StoreError::Lost(d))) => k.on_lost(local, d),
            (_, _) => k.on_renew_failed(local, "lease table unavailable".into()),
        };
        self.master_keeper_actions(i, acts);
    }

    pub(super) fn master_keeper_actions(&mut self, i: InstId, acts: Vec<KeeperAction>) {
        for a in acts {
            if !self.insts[i].alive {
                break;
            }
            let inst = &self.insts[i];
            let ttl_ms = self.master_timing.ttl_ms;
            match a {
                KeeperAction::Acquire => {
                    let op = StoreOp::Acquire(Acquire {
                        name: self.master_lease.clone(),
                        owner: inst.server.clone(),
                        machine: self.hosts[inst.host].machine.clone().expect("a machine"),
                        incarnation: inst.incarnation.clone(),
                        ttl_ms,
                        handover_from: None,
                    });
                    self.store_request(i, Slot::Master, ReqKind::Acquire, op);
                }
                KeeperAction::Renew { epoch } => {
                    let op = StoreOp::Renew {
                        name: self.master_lease.clone(),
                        incarnation: inst.incarnation.clone(),
                        epoch,
                        ttl_ms,
                    };
                    self.store_request(i, Slot::Master, ReqKind::Renew, op);
                }
                KeeperAction::Acquired { epoch } => self.begin_tenure(i, epoch, true),
                KeeperAction::Deadline { at } => self.check_deadline(i, "master", at, inst.mgranted_until),
                KeeperAction::Release { .. } => {}
                KeeperAction::Fence { reason } => {
                    let why = format!("master role lost: {reason}");
                    self.end_tenure(i, &why);
                    // Back in the race for the role an interval later, with a fresh keeper.
                    let local = self.local(self.insts[i].host);
                    let retry_at = local + self.master_timing.interval_ms;
                    self.insts[i].mk = Some(Keeper::new(self.master_timing, retry_at));
                    self.insts[i].mreq = None;
                }
            }
        }
        self.validate(i);
    }

    pub(super) fn master_duties(&mut self, i: InstId) {
        if !self.insts[i].alive {
            return;
        }
        let local = self.local(self.insts[i].host);
        let inst = &self.insts[i];
        if inst.tenure.is_some() {
            let due = match inst.planner.as_ref().and_then(|p| p.next_wakeup()) {
                Some(w) => w.min(inst.next_scan),
                None => inst.next_scan,
            };
            if inst.scan.is_none() && local >= due {
                self.insts[i].next_scan = local + self.scan_ms;
                self.store_request(i, Slot::Scan, ReqKind::List, StoreOp::List);
            }
            if local >= self.insts[i].next_hb {
                self.insts[i].next_hb = local + self.sc.interval_ms;
                let epoch = self.tenures[self.insts[i].tenure.expect("tenure")].epoch;
                let peers: Vec<InstId> = self.alive.iter().copied().filter(|j| *j != i).collect();
                for j in peers {
                    self.send(self.insts[i].host, Node::Inst(j), Payload::Heartbeat { from: i, epoch });
                }
            }
        } else if self.bugs.master_no_wait() && inst.services_up && local >= inst.last_hb + self.master_timing.ttl_ms {
            // The planted bug: no heartbeat for a lease's worth of time, so take the role
            // without waiting for the store to grant the master lease.
            let epoch = Epoch(inst.hb_epoch.0 + 1);
            self.stats.usurpers += 1;
            self.begin_tenure(i, epoch, false);
        }
    }

    fn begin_tenure(&mut self, i: InstId, epoch: Epoch, legit: bool) {
        if legit {
            self.checker.master_acquired(self.now, i, epoch);
        }
        self.end_tenure(i, "takes the role for real");
        let t = self.tenures.len();
        self.tenures.push(Tenure { inst: i, epoch, legit, start_ms: self.now, end_ms: None });
        self.active_tenures.insert(t);
        self.stats.masters += 1;
        let local = self.local(self.insts[i].host);
        let inst = &mut self.insts[i];
        inst.tenure = Some(t);
        inst.planner = Some(Planner::new(self.sc.cluster.clone()));
        inst.next_scan = local;
        inst.next_hb = local;
        tr!(self, "master: {} tenure {t} epoch {epoch}{}", self.who(i), if legit { "" } else { " (usurped)" });
    }

    pub(super) fn end_tenure(&mut self, i: InstId, why: &str) {
        let inst = &mut self.insts[i];
        let Some(t) = inst.tenure.take() else { return };
        inst.planner = None;
        inst.cmds.clear();
        inst.scan = None;
        self.tenures[t].end_ms = Some(self.now);
        self.active_tenures.remove(&t);
        tr!(self, "master tenure {t} of {} ends: {why}", self.who(i));
    }

    /// Whether tenure `t`'s process would act as master right now: alive, in the role, and
    /// (for a real master) its master keeper's deadline not passed on its own clock.
    fn believes(&self, t: usize) -> bool {
        let ten = &self.tenures[t];
        let inst = &self.insts[ten.inst];
        if ten.end_ms.is_some() || !inst.alive || inst.tenure != Some(t) {
            return false;
        }
        if !ten.legit {
            return true;
        }
        let local = self.local(inst.host);
        inst.mk.as_ref().and_then(|k| k.held(local)).is_some_and(|(e, _)| e == ten.epoch)
    }

    pub(super) fn scan_reply(&mut self, i: InstId, local: Mono, reply: StoreReply) {
        let StoreReply::Leases(leases) = reply else {
            return;
        };
        // Look again the instant the next lease runs out (LeaseStore::next_expiry_ms).
        if let Some(ms) = leases.iter().filter(|l| l.is_live()).map(|l| l.remaining_ms).min() {
            let at = local + (ms.max(0) as u64 + 1);
            self.insts[i].next_scan = self.insts[i].next_scan.min(at);
        }
        let acts = match self.insts[i].planner.as_mut() {
            Some(p) => p.on_scan(local, &leases, &self.domain),
            None => return,
        };
        self.master_plan(i, acts);
    }

    pub(super) fn master_plan(&mut self, i: InstId, acts: Vec<MasterAction>) {
        for a in acts {
            let Some(t) = self.insts[i].tenure.filter(|_| self.insts[i].alive) else {
                break;
            };
            match a {
                MasterAction::Start { server, machine, in_place, .. } => {
                    // Rule 6: act only while the master lease is valid by the local deadline.
                    if !self.believes(t) {
                        self.stats.rule6_skips += 1;
                        tr!(self, "{} does not send start {server}: its master lease is no longer valid", self.who(i));
                        continue;
                    }
                    let others: Vec<usize> =
                        self.active_tenures.iter().copied().filter(|o| *o != t && self.believes(*o)).collect();
                    for o in others {
                        let detail = format!(
                            "{} (tenure {t} since {} ms, epoch {}{}) sends `start {server}` to {machine} while {} (tenure {o} since {} ms, epoch {}{}) also holds the master role",
                            self.who(i),
                            self.tenures[t].start_ms,
                            self.tenures[t].epoch,
                            if self.tenures[t].legit { "" } else { ", usurped" },
                            self.who(self.tenures[o].inst),
                            self.tenures[o].start_ms,
                            self.tenures[o].epoch,
                            if self.tenures[o].legit { "" } else { ", usurped" },
                        );
                        self.checker.two_masters(self.now, t, o, detail);
                    }
                    let Some(h) = self.hosts.iter().position(|x| x.machine.as_ref() == Some(&machine)) else {
                        continue;
                    };
                    let id = self.id();
                    let local = self.local(self.insts[i].host);
                    let epoch = self.tenures[t].epoch;
                    self.stats.commands += 1;
                    tr!(self, "{} -> nm {machine}: start {server} (in place: {in_place}, epoch {epoch})", self.who(i));
                    self.insts[i]
                        .cmds
                        .insert(id, Cmd { server: server.clone(), machine, timeout_at: local + self.cmd_timeout_ms });
                    let cluster = self.sc.cluster.clone();
                    let payload = Payload::Command { id, from: i, tenure: t, cluster, epoch, server, in_place };
                    self.send(self.insts[i].host, Node::Nm(h), payload);
                }
                MasterAction::Event { kind, server, message } => {
                    match kind {
                        "migrate" => self.stats.migrations += 1,
                        "restart-in-place" => self.stats.in_place += 1,
                        "gave-up" => self.stats.gave_up += 1,
                        _ => {}
                    }
                    tr!(self, "{} event {kind} {server}: {message}", self.who(i));
                }
            }
        }
    }
}
