//! The cluster-master role, which lives in the server processes: once it has joined, each
//! competes for `master/CLUSTER` with a second `Keeper`; the holder runs a `Planner`, scans
//! the lease table every interval and at the instant the next lease runs out, sends
//! heartbeats, and before every command to a Node Manager checks that its master lease is
//! still valid by its own clock (rule 6) and stamps the command with its epoch (rule 5).
//! Each stretch in the role is a [`Tenure`], so the checker can tell two masters apart.

use ferry_core::keeper::{Keeper, KeeperAction};
use ferry_core::master::{MasterAction, Planner};
use ferry_core::EventKind;
use ferry_core::{Epoch, MachineName, Mono, ServerName};

use super::network::{Node, Payload, StoreOp, StoreReply};
use super::server::{RequestKind, RequestSlot};
use super::{InstanceId, Sim};
use crate::store::{Acquire, StoreError};

/// A command a master sent to a Node Manager and awaits the answer to, until `timeout_at`
/// on its own clock.
pub(super) struct PendingCommand {
    pub(super) server: ServerName,
    pub(super) machine: MachineName,
    pub(super) timeout_at: Mono,
}

/// One stretch of one process acting as cluster master.
pub(super) struct Tenure {
    pub(super) instance: InstanceId,
    pub(super) epoch: Epoch,
    /// False for a usurper (the `master_no_wait` planted bug).
    pub(super) legit: bool,
    pub(super) start_ms: u64,
    pub(super) end_ms: Option<u64>,
}

impl Sim {
    /// The store's answer to the master keeper's request.
    pub(super) fn master_reply(&mut self, i: InstanceId, local: Mono, kind: RequestKind, reply: StoreReply) {
        let instance = &mut self.instances[i];
        let Some(keeper) = instance.master_keeper.as_mut() else {
            return;
        };
        if let StoreReply::Lease(_, until) = reply {
            instance.master_granted_until = instance.master_granted_until.max(until);
        }
        let actions = match (kind, reply) {
            (RequestKind::Acquire, StoreReply::Lease(l, _)) => keeper.on_acquired(local, l.epoch),
            (RequestKind::Acquire, StoreReply::Refused(StoreError::Held(d) | StoreError::Lost(d))) => {
                keeper.on_acquire_failed(local, d)
            }
            (RequestKind::Acquire, _) => keeper.on_acquire_failed(local, "lease table unavailable".into()),
            (_, StoreReply::Lease(..)) => keeper.on_renewed(local),
            (_, StoreReply::Refused(StoreError::Held(d) | StoreError::Lost(d))) => keeper.on_lost(local, d),
            (_, _) => keeper.on_renew_failed(local, "lease table unavailable".into()),
        };
        self.master_keeper_actions(i, actions);
    }

    /// Performs what the master lease's keeper asks: acquiring it begins a tenure, losing it
    /// ends the tenure.
    pub(super) fn master_keeper_actions(&mut self, i: InstanceId, actions: Vec<KeeperAction>) {
        for a in actions {
            if !self.instances[i].alive {
                break;
            }
            let instance = &self.instances[i];
            let ttl_ms = self.master_timing.ttl_ms;
            match a {
                KeeperAction::Acquire => {
                    let op = StoreOp::Acquire(Acquire {
                        name: self.master_lease.clone(),
                        owner: instance.server.clone(),
                        machine: self.hosts[instance.host].machine.clone().expect("a machine"),
                        incarnation: instance.incarnation.clone(),
                        ttl_ms,
                        handover_from: None,
                    });
                    self.store_request(i, RequestSlot::Master, RequestKind::Acquire, op);
                }
                KeeperAction::Renew { epoch } => {
                    let op = StoreOp::Renew {
                        name: self.master_lease.clone(),
                        incarnation: instance.incarnation.clone(),
                        epoch,
                        ttl_ms,
                    };
                    self.store_request(i, RequestSlot::Master, RequestKind::Renew, op);
                }
                KeeperAction::Acquired { epoch } => self.begin_tenure(i, epoch, true),
                KeeperAction::Deadline { at } => self.check_deadline(i, "master", at, instance.master_granted_until),
                KeeperAction::Release { .. } => {}
                KeeperAction::Fence { reason } => {
                    let why = format!("master role lost: {reason}");
                    self.end_tenure(i, &why);
                    // Back in the race for the role an interval later, with a fresh keeper.
                    let local = self.local(self.instances[i].host);
                    let retry_at = local + self.master_timing.interval_ms;
                    self.instances[i].master_keeper = Some(Keeper::new(self.master_timing, retry_at));
                    self.instances[i].master_request = None;
                }
            }
        }
        self.validate(i);
    }

    /// In the role: a scan when one is due, heartbeats every interval. Out of it, with the
    /// `master_no_wait` planted bug: take the role once the heartbeats stop.
    pub(super) fn master_duties(&mut self, i: InstanceId) {
        if !self.instances[i].alive {
            return;
        }
        let local = self.local(self.instances[i].host);
        let instance = &self.instances[i];
        if instance.tenure.is_some() {
            let due = match instance.planner.as_ref().and_then(|p| p.next_wakeup()) {
                Some(w) => w.min(instance.next_scan),
                None => instance.next_scan,
            };
            if instance.scan_request.is_none() && local >= due {
                self.instances[i].next_scan = local + self.scan_interval_ms;
                self.store_request(i, RequestSlot::Scan, RequestKind::List, StoreOp::List);
            }
            if local >= self.instances[i].next_heartbeat {
                self.instances[i].next_heartbeat = local + self.scenario.interval_ms;
                let epoch = self.tenures[self.instances[i].tenure.expect("tenure")].epoch;
                let peers: Vec<InstanceId> = self.alive.iter().copied().filter(|j| *j != i).collect();
                for j in peers {
                    self.send(self.instances[i].host, Node::Instance(j), Payload::Heartbeat { from: i, epoch });
                }
            }
        } else if self.bugs.master_no_wait()
            && instance.services_up
            && local >= instance.last_heartbeat + self.master_timing.ttl_ms
        {
            // The planted bug: no heartbeat for a lease's worth of time, so take the role
            // without waiting for the store to grant the master lease.
            let epoch = Epoch(instance.heartbeat_epoch.0 + 1);
            self.stats.usurpers += 1;
            self.begin_tenure(i, epoch, false);
        }
    }

    fn begin_tenure(&mut self, i: InstanceId, epoch: Epoch, legit: bool) {
        if legit {
            self.checker.master_acquired(self.now, i, epoch);
        }
        self.end_tenure(i, "takes the role for real");
        let t = self.tenures.len();
        self.tenures.push(Tenure { instance: i, epoch, legit, start_ms: self.now, end_ms: None });
        self.active_tenures.insert(t);
        self.stats.masters += 1;
        let local = self.local(self.instances[i].host);
        let instance = &mut self.instances[i];
        instance.tenure = Some(t);
        instance.planner = Some(Planner::new(self.scenario.cluster.clone()));
        instance.next_scan = local;
        instance.next_heartbeat = local;
        tr!(self, "master: {} tenure {t} epoch {epoch}{}", self.who(i), if legit { "" } else { " (usurped)" });
    }

    pub(super) fn end_tenure(&mut self, i: InstanceId, why: &str) {
        let instance = &mut self.instances[i];
        let Some(t) = instance.tenure.take() else { return };
        instance.planner = None;
        instance.commands.clear();
        instance.scan_request = None;
        self.tenures[t].end_ms = Some(self.now);
        self.active_tenures.remove(&t);
        tr!(self, "master tenure {t} of {} ends: {why}", self.who(i));
    }

    /// Whether tenure `t`'s process would act as master right now: alive, in the role, and
    /// (for a real master) its master keeper's deadline not passed on its own clock.
    fn believes(&self, t: usize) -> bool {
        let tenure = &self.tenures[t];
        let instance = &self.instances[tenure.instance];
        if tenure.end_ms.is_some() || !instance.alive || instance.tenure != Some(t) {
            return false;
        }
        if !tenure.legit {
            return true;
        }
        let local = self.local(instance.host);
        instance.master_keeper.as_ref().and_then(|keeper| keeper.held(local)).is_some_and(|(e, _)| e == tenure.epoch)
    }

    pub(super) fn scan_reply(&mut self, i: InstanceId, local: Mono, reply: StoreReply) {
        let StoreReply::Leases(leases) = reply else {
            return;
        };
        // Look again the instant the next lease runs out (LeaseStore::next_expiry_ms).
        if let Some(ms) = leases.iter().filter(|l| l.is_live()).map(|l| l.remaining_ms).min() {
            let at = local + (ms.max(0) as u64 + 1);
            self.instances[i].next_scan = self.instances[i].next_scan.min(at);
        }
        let actions = match self.instances[i].planner.as_mut() {
            Some(p) => p.on_scan(local, &leases, &self.domain),
            None => return,
        };
        self.master_plan(i, actions);
    }

    pub(super) fn master_plan(&mut self, i: InstanceId, actions: Vec<MasterAction>) {
        for a in actions {
            let Some(t) = self.instances[i].tenure.filter(|_| self.instances[i].alive) else {
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
                            self.who(self.tenures[o].instance),
                            self.tenures[o].start_ms,
                            self.tenures[o].epoch,
                            if self.tenures[o].legit { "" } else { ", usurped" },
                        );
                        self.checker.two_masters(self.now, t, o, detail);
                    }
                    let Some(h) = self.hosts.iter().position(|x| x.machine.as_ref() == Some(&machine)) else {
                        continue;
                    };
                    let id = self.fresh_id();
                    let local = self.local(self.instances[i].host);
                    let epoch = self.tenures[t].epoch;
                    self.stats.commands += 1;
                    tr!(self, "{} -> nm {machine}: start {server} (in place: {in_place}, epoch {epoch})", self.who(i));
                    self.instances[i].commands.insert(
                        id,
                        PendingCommand { server: server.clone(), machine, timeout_at: local + self.command_timeout_ms },
                    );
                    let cluster = self.scenario.cluster.clone();
                    let payload = Payload::Command { id, from: i, tenure: t, cluster, epoch, server, in_place };
                    self.send(self.instances[i].host, Node::Nm(h), payload);
                }
                MasterAction::Event { kind, server, message } => {
                    match kind {
                        EventKind::Migrate => self.stats.migrations += 1,
                        EventKind::RestartInPlace => self.stats.in_place += 1,
                        EventKind::GaveUp => self.stats.gave_up += 1,
                        _ => {}
                    }
                    tr!(self, "{} event {kind} {server}: {message}", self.who(i));
                }
            }
        }
    }
}
