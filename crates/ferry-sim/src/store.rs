//! The simulated lease table: the single authority on ownership (DESIGN §3 rule 1). It has
//! its own clock, computes every expiry from it, and implements the semantics documented on
//! `ferry_store::LeaseStore` (acquire, handover, renew, list). Epochs are bumped on every
//! change of owner or incarnation and never go backwards.
//!
//! One deliberate choice where the trait is silent: re-acquiring an *expired* row by the same
//! incarnation bumps the epoch too (only a live row held by the same incarnation keeps it, the
//! "retried acquire whose first answer was lost" case). A lapse in holding therefore always
//! shows in the fencing token.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_core::leadership::{Leadership, LeadershipTiming};
use ferry_core::lease::{Lease, LeaseState};
use ferry_core::{Epoch, Incarnation, LeaseName, MachineName, Mono, ServerName};

use crate::clock::HostClock;

/// What the store answers when it refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Someone else holds a live lease (acquire).
    Held(String),
    /// The caller's incarnation or epoch no longer holds it (renew, handover).
    Lost(String),
}

#[derive(Debug, Clone)]
struct Row {
    owner: ServerName,
    machine: MachineName,
    incarnation: Incarnation,
    epoch: Epoch,
    state: LeaseState,
    /// By the store's clock.
    expires_at_ms: u64,
    renewed_at_ms: u64,
    /// The TTL of the last grant: what a new authority restarts the row's clock with.
    ttl_ms: u64,
}

/// One acquisition request, as the holder's shell would send it.
#[derive(Debug, Clone)]
pub struct Acquire {
    pub name: LeaseName,
    pub owner: ServerName,
    pub machine: MachineName,
    pub incarnation: Incarnation,
    pub ttl_ms: u64,
    /// Rule 4: the incarnation the Node Manager saw exit.
    pub handover_from: Option<Incarnation>,
}

#[derive(Debug, Clone)]
pub struct Store {
    pub clock: HostClock,
    rows: BTreeMap<LeaseName, Row>,
    /// Since the authority last changed (a new consensus leader, a promoted standby): the
    /// core's rule 11 state, which decides when it answers and how it restarted the clocks.
    leadership: Option<Leadership>,
}

impl Store {
    pub fn new(clock: HostClock) -> Self {
        Store { clock, rows: BTreeMap::new(), leadership: None }
    }

    /// Whether the store answers at true time `t_ms`: not while a new authority waits out
    /// its predecessor (`ferry_core::leadership`).
    pub fn available(&self, t_ms: u64) -> bool {
        self.leadership.as_ref().is_none_or(|l| self.clock.mono(t_ms) >= l.serves_from())
    }

    /// The authority changes at true time `t_ms` to a host whose clock reads `offset_ms`
    /// ahead of the old one (behind when negative): DESIGN §3 rule 11 as
    /// `ferry_core::leadership` decides it. The rows are the replicated ones (as written at
    /// their last grant, in the old clock's numbers); the new authority restarts every held
    /// row's clock. Returns each held row with the true instant it now expires.
    pub fn new_authority(
        &mut self,
        t_ms: u64,
        offset_ms: i64,
        timing: &LeadershipTiming,
    ) -> Vec<(LeaseName, Epoch, u64)> {
        let reads = (self.clock.mono(t_ms).0 as i64 + offset_ms).max(0) as u64;
        self.clock = HostClock::new(self.clock.drift_ppm, reads, t_ms, self.clock.wall_offset_ms);
        let term = self.leadership.as_ref().map_or(1, |l| l.term() + 1);
        let leadership = Leadership::elected(term, self.clock.mono(t_ms), timing);
        let mut changed = Vec::new();
        for (name, r) in self.rows.iter_mut().filter(|(_, r)| r.state == LeaseState::Held) {
            let kept = Some(Mono(r.expires_at_ms)).filter(|_| leadership.keeps_replicated_expiries());
            r.expires_at_ms = leadership.restarted_expiry(Duration::from_millis(r.ttl_ms), kept).0;
            r.renewed_at_ms = leadership.serves_from().0;
            changed.push((name.clone(), r.epoch, self.clock.true_at(Mono(r.expires_at_ms), t_ms)));
        }
        self.leadership = Some(leadership);
        changed
    }

    fn now_ms(&self, t_ms: u64) -> u64 {
        self.clock.mono(t_ms).0
    }

    fn view(name: &LeaseName, r: &Row, now_ms: u64) -> Lease {
        Lease {
            name: name.clone(),
            owner: Some(r.owner.clone()),
            machine: Some(r.machine.clone()),
            incarnation: Some(r.incarnation.clone()),
            epoch: r.epoch,
            state: r.state,
            remaining_ms: r.expires_at_ms as i64 - now_ms as i64,
            since_renewal_ms: now_ms as i64 - r.renewed_at_ms as i64,
        }
    }

    /// `acquire`, or `handover` when `req.handover_from` is set, at true time `t_ms`.
    pub fn acquire(&mut self, t_ms: u64, req: &Acquire) -> Result<Lease, StoreError> {
        let now = self.now_ms(t_ms);
        let row = self.rows.get(&req.name);
        let live = |r: &Row| r.state == LeaseState::Held && r.expires_at_ms > now;
        if let Some(r) = row {
            if live(r) && r.incarnation == req.incarnation {
                // A retried acquire whose first answer was lost: renew, keep the epoch.
                let r = self.rows.get_mut(&req.name).expect("row exists");
                r.expires_at_ms = now + req.ttl_ms;
                r.renewed_at_ms = now;
                r.ttl_ms = req.ttl_ms;
                return Ok(Self::view(&req.name, r, now));
            }
        }
        let free = match row {
            None => true,
            Some(r) => !live(r),
        };
        let handed = match (row, &req.handover_from) {
            (Some(r), Some(from)) => r.state == LeaseState::Held && &r.incarnation == from,
            _ => false,
        };
        if !free && !handed {
            let r = row.expect("a held row exists");
            let who = format!(
                "{} is held by {} on {} (incarnation {}, epoch {}, {} ms left)",
                req.name,
                r.owner,
                r.machine,
                r.incarnation,
                r.epoch,
                r.expires_at_ms as i64 - now as i64
            );
            return Err(match &req.handover_from {
                Some(from) => StoreError::Lost(format!("handover from {from} refused: {who}")),
                None => StoreError::Held(who),
            });
        }
        let previous = row.map_or(Epoch(0), |r| r.epoch);
        let new = Row {
            owner: req.owner.clone(),
            machine: req.machine.clone(),
            incarnation: req.incarnation.clone(),
            epoch: Epoch(previous.0 + 1),
            state: LeaseState::Held,
            expires_at_ms: now + req.ttl_ms,
            renewed_at_ms: now,
            ttl_ms: req.ttl_ms,
        };
        let lease = Self::view(&req.name, &new, now);
        self.rows.insert(req.name.clone(), new);
        Ok(lease)
    }

    /// Extends the lease by `ttl_ms` if `incarnation` holds it, unexpired, at `epoch`.
    pub fn renew(
        &mut self,
        t_ms: u64,
        name: &LeaseName,
        incarnation: &Incarnation,
        epoch: Epoch,
        ttl_ms: u64,
    ) -> Result<Lease, StoreError> {
        let now = self.now_ms(t_ms);
        let Some(r) = self.rows.get_mut(name) else {
            return Err(StoreError::Lost(format!("{name} has no row")));
        };
        if r.state != LeaseState::Held || &r.incarnation != incarnation || r.epoch != epoch || r.expires_at_ms <= now {
            return Err(StoreError::Lost(format!(
                "{name} is {:?} by incarnation {} at epoch {} ({} ms left)",
                r.state,
                r.incarnation,
                r.epoch,
                r.expires_at_ms as i64 - now as i64
            )));
        }
        r.expires_at_ms = now + ttl_ms;
        r.renewed_at_ms = now;
        r.ttl_ms = ttl_ms;
        Ok(Self::view(name, r, now))
    }

    /// When `name`, held at `epoch`, expires by this store, as a true instant; `None` when
    /// this store has it at another epoch or not held (any deadline is then too late).
    pub fn expires_true(&self, t_ms: u64, name: &LeaseName, epoch: Epoch) -> Option<u64> {
        let r = self.rows.get(name).filter(|r| r.state == LeaseState::Held && r.epoch == epoch)?;
        Some(self.clock.true_at(Mono(r.expires_at_ms), t_ms))
    }

    /// Every row, ordered by name, with the time left by the store's clock.
    pub fn list(&self, t_ms: u64) -> Vec<Lease> {
        let now = self.now_ms(t_ms);
        self.rows.iter().map(|(n, r)| Self::view(n, r, now)).collect()
    }

    /// The epoch of a row (zero if absent), for the checker's own bookkeeping.
    pub fn epoch(&self, name: &LeaseName) -> Epoch {
        self.rows.get(name).map_or(Epoch(0), |r| r.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(inc: &str, handover: Option<&str>) -> Acquire {
        Acquire {
            name: LeaseName::parse("server/ms1").unwrap(),
            owner: ServerName::new("ms1").unwrap(),
            machine: MachineName::new("machine-b").unwrap(),
            incarnation: Incarnation(inc.into()),
            ttl_ms: 300,
            handover_from: handover.map(|h| Incarnation(h.into())),
        }
    }

    #[test]
    fn semantics_follow_the_lease_store_trait() {
        let mut s = Store::new(HostClock::new(0, 0, 0, 0));
        let name = LeaseName::parse("server/ms1").unwrap();
        assert_eq!(s.acquire(0, &req("a", None)).unwrap().epoch, Epoch(1));
        // Retried acquire by the same incarnation keeps the epoch.
        assert_eq!(s.acquire(10, &req("a", None)).unwrap().epoch, Epoch(1));
        assert!(matches!(s.acquire(20, &req("b", None)), Err(StoreError::Held(_))));
        assert!(matches!(s.acquire(20, &req("b", Some("x"))), Err(StoreError::Lost(_))));
        // Handover from the reaped incarnation: at once, new epoch.
        assert_eq!(s.acquire(30, &req("b", Some("a"))).unwrap().epoch, Epoch(2));
        assert!(s.renew(40, &name, &Incarnation("a".into()), Epoch(1), 300).is_err());
        s.renew(40, &name, &Incarnation("b".into()), Epoch(2), 300).unwrap();
        // Expired by the store's clock: anyone may take it, the epoch moves on.
        assert!(s.renew(340, &name, &Incarnation("b".into()), Epoch(2), 300).is_err());
        assert_eq!(s.acquire(340, &req("c", None)).unwrap().epoch, Epoch(3));
        assert_eq!(s.list(400)[0].remaining_ms, 240);
    }
}
