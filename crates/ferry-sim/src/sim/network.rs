//! The network and the lease store's side of it: every message between the store, the
//! Node Managers and the server processes goes through [`Sim::send`], which asks the
//! simulated network for a delay (or a loss) when it is sent, and arrives through
//! [`Sim::deliver`], which queues it on a frozen host or a stopped process. The store
//! answers requests at once, with its own drifting clock (rule 1: the single authority).

use ferry_core::lease::Lease;
use ferry_core::master::CommandResult;
use ferry_core::{ClusterName, Epoch, Incarnation, LeaseName, Mono, ServerName};

use super::nodemanager::NmItem;
use super::server::InstanceItem;
use super::{Event, HostId, InstanceId, Sim};
use crate::store::{Acquire, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Node {
    Store,
    Nm(HostId),
    Instance(InstanceId),
}

#[derive(Debug, Clone)]
pub(super) enum StoreOp {
    Acquire(Acquire),
    Renew { name: LeaseName, incarnation: Incarnation, epoch: Epoch, ttl_ms: u64 },
    List,
}

#[derive(Debug, Clone)]
pub(super) enum StoreReply {
    /// A grant, with the true instant the store will consider it expired (known to the
    /// checker only; the holder sees the `Lease`).
    Lease(Lease, u64),
    Leases(Vec<Lease>),
    Refused(StoreError),
    Unavailable,
}

#[derive(Debug, Clone)]
pub(super) enum Payload {
    StoreReq {
        req: u64,
        from: InstanceId,
        op: StoreOp,
    },
    StoreResp {
        req: u64,
        reply: StoreReply,
    },
    Command {
        id: u64,
        from: InstanceId,
        tenure: usize,
        cluster: ClusterName,
        epoch: Epoch,
        server: ServerName,
        in_place: bool,
    },
    CommandResp {
        id: u64,
        result: CommandResult,
    },
    Heartbeat {
        from: InstanceId,
        epoch: Epoch,
    },
}

impl Sim {
    fn host_of(&self, n: Node) -> HostId {
        match n {
            Node::Store => self.store_host,
            Node::Nm(h) => h,
            Node::Instance(i) => self.instances[i].host,
        }
    }

    pub(super) fn send(&mut self, from: HostId, to: Node, payload: Payload) {
        let to_host = self.host_of(to);
        self.stats.messages += 1;
        match self.net.delay(&mut self.rng, from, to_host) {
            None => {
                self.stats.lost += 1;
                tr!(self, "  lost {} -> {}: {:?}", self.hosts[from].name, self.hosts[to_host].name, payload);
            }
            Some(d) => {
                let boot = self.hosts[to_host].boot;
                self.schedule(self.now + d, Event::Deliver { to, boot, payload });
            }
        }
    }

    pub(super) fn deliver(&mut self, to: Node, boot: u32, payload: Payload) {
        match to {
            Node::Store => self.store_handle(payload),
            Node::Nm(h) => {
                if !self.hosts[h].up || self.hosts[h].boot != boot {
                    return;
                }
                if self.hosts[h].frozen {
                    let nm = self.hosts[h].nm.as_mut().expect("up");
                    nm.inbox.push_back(NmItem::Msg(payload));
                    return;
                }
                self.nm_handle(h, payload);
            }
            Node::Instance(i) => {
                if !self.instances[i].alive {
                    return;
                }
                if self.paused(i) {
                    self.instances[i].inbox.push_back(InstanceItem::Msg(payload));
                    return;
                }
                self.instance_handle(i, payload);
            }
        }
    }

    fn store_handle(&mut self, payload: Payload) {
        let Payload::StoreReq { req, from, op } = payload else {
            return;
        };
        if self.deposed.as_ref().is_some_and(|d| self.now >= d.gone_at) {
            self.deposed = None;
        }
        let deposed_serves = self.deposed.as_ref().is_some_and(|d| self.now < d.serves_until);
        let reply = if let (true, StoreOp::Renew { name, incarnation, epoch, ttl_ms }) = (deposed_serves, &op) {
            // The holders reach the deposed authority (the side it is on), which renews in
            // its memory; where the new authority stands is what the grant is checked against.
            let d = self.deposed.as_mut().expect("serving");
            match d.store.renew(self.now, name, incarnation, *epoch, *ttl_ms) {
                Ok(l) => {
                    let StoreReply::Lease(l, own) = granted_by(&d.store, l, self.now) else { unreachable!() };
                    let until = if d.replaced {
                        self.store.expires_true(self.now, name, *epoch).unwrap_or(self.now)
                    } else {
                        own
                    };
                    StoreReply::Lease(l, until.min(own))
                }
                Err(e) => StoreReply::Refused(e),
            }
        } else if !self.store_outages.is_empty() || !self.store.available(self.now) {
            StoreReply::Unavailable
        } else {
            match op {
                StoreOp::Acquire(a) => {
                    let before = self.store.epoch(&a.name);
                    let r = self.store.acquire(self.now, &a);
                    let after = self.store.epoch(&a.name);
                    self.checker.store_acquired(self.now, &a.name, before, after);
                    match r {
                        Ok(l) => self.granted(l),
                        Err(e) => StoreReply::Refused(e),
                    }
                }
                StoreOp::Renew { name, incarnation, epoch, ttl_ms } => {
                    match self.store.renew(self.now, &name, &incarnation, epoch, ttl_ms) {
                        Ok(l) => self.granted(l),
                        Err(e) => StoreReply::Refused(e),
                    }
                }
                StoreOp::List => StoreReply::Leases(self.store.list(self.now)),
            }
        };
        if self.config.trace {
            let said = match &reply {
                StoreReply::Lease(l, _) => format!("granted {} epoch {} ({} ms)", l.name, l.epoch, l.remaining_ms),
                StoreReply::Leases(l) => format!("{} rows", l.len()),
                StoreReply::Refused(e) => format!("refused: {e:?}"),
                StoreReply::Unavailable => "unavailable".into(),
            };
            tr!(self, "  store -> {}: {said}", self.who(from));
        }
        self.send(self.store_host, Node::Instance(from), Payload::StoreResp { req, reply });
    }

    /// A grant as the holder receives it, tagged with the true instant of its expiry.
    fn granted(&self, l: Lease) -> StoreReply {
        granted_by(&self.store, l, self.now)
    }
}

/// A grant of `store` at true time `now`, tagged with the true instant of its expiry there.
fn granted_by(store: &crate::store::Store, l: Lease, now: u64) -> StoreReply {
    let store_now = store.clock.mono(now);
    let expires = Mono((store_now.0 as i64 + l.remaining_ms).max(0) as u64);
    let until = store.clock.true_at(expires, now);
    StoreReply::Lease(l, until)
}
