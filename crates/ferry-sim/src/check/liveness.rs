//! Property 5, **liveness**: once the faults stop, every server with `auto_migration` runs
//! again within the bound and still runs at the end. Safety alone is cheap (never start
//! anything); this is what makes the simulation show that ferry also recovers.
//!
//! The bound (`Sim::heal_bound_ms`) is DESIGN §3's, plus a master takeover, plus what a
//! planner or Node Manager may still be waiting out from the fault phase, plus slack for
//! messages still in flight. It counts from healing, or from the operator's `start-cluster`
//! when the whole cluster had died.

use ferry_core::ServerName;

use super::{Checker, Property};
use crate::scenario::ServerSpec;

impl Checker {
    /// The first instant at or after `from_ms` when `server` ran services, if any.
    pub fn first_run_since(&self, server: &ServerName, from_ms: u64) -> Option<u64> {
        self.runs
            .iter()
            .filter(|r| &r.server == server && r.end_ms.is_none_or(|e| e > from_ms))
            .map(|r| r.start_ms.max(from_ms))
            .min()
    }

    /// Checks every migratable server of `servers` at the end of a run: the faults stopped
    /// at `heal_at` ms, the clock of the bound runs from `base` ms, and the run ended at
    /// `end` ms. Returns the slowest recovery, in ms from `base`.
    pub fn liveness(&mut self, servers: &[ServerSpec], heal_at: u64, base: u64, bound: u64, end: u64) -> u64 {
        let mut slowest_recovery_ms = 0;
        for spec in servers {
            if !spec.auto_migration {
                continue;
            }
            let first = self.first_run_since(&spec.name, heal_at);
            if let Some(t) = first {
                slowest_recovery_ms = slowest_recovery_ms.max(t.saturating_sub(base));
            }
            match first {
                Some(t) if t <= base + bound => {}
                Some(t) => self.violate(
                    Property::Liveness,
                    t,
                    format!("{} ran again only {} ms after the faults stopped (bound {bound} ms)", spec.name, t - base),
                ),
                None => self.violate(
                    Property::Liveness,
                    end,
                    format!("{} never ran again after the faults stopped (bound {bound} ms)", spec.name),
                ),
            }
            if !self.is_running(&spec.name) {
                self.violate(Property::Liveness, end, format!("{} is not running at the end", spec.name));
            }
        }
        slowest_recovery_ms
    }
}
