//! Property 3, **epochs** (DESIGN §3): every instance that starts services holds a strictly
//! larger epoch than the previous one of its server; every master tenure a larger master
//! epoch than the last (the same process may come back at its own epoch); the store's
//! epochs never go back. The epoch is the fencing token (rule 5): hosted services' storage
//! and the Node Manager's check of master commands both rest on a larger epoch meaning
//! a newer owner.

use ferry_core::{Epoch, LeaseName, ServerName};

use super::{Checker, Property};

impl Checker {
    /// An instance starts services with `epoch`.
    pub fn services_acquired(&mut self, at_ms: u64, server: &ServerName, instance: usize, epoch: Epoch) {
        if let Some(last) = self.last_epoch.get(server) {
            if epoch <= *last {
                self.violate(
                    Property::Epoch,
                    at_ms,
                    format!("{server} instance #{instance} starts services at epoch {epoch}, not above {last}"),
                );
            }
        }
        let last = self.last_epoch.entry(server.clone()).or_default();
        *last = (*last).max(epoch);
    }

    /// The same for the master lease. The same process may take the role again at the same
    /// epoch (its keeper gave up locally while the store still had its row live, and the
    /// store renews a live row of the same incarnation); any other process needs a larger one.
    pub fn master_acquired(&mut self, at_ms: u64, instance: usize, epoch: Epoch) {
        if let Some((last, by)) = self.last_master {
            if epoch < last || (epoch == last && by != instance) {
                self.violate(
                    Property::Epoch,
                    at_ms,
                    format!("instance #{instance} becomes master at epoch {epoch}; #{by} was at {last}"),
                );
            }
        }
        if self.last_master.is_none_or(|(last, _)| epoch >= last) {
            self.last_master = Some((epoch, instance));
        }
    }

    /// The store's epoch of `name` was `before` an acquisition and is `after` it.
    pub fn store_acquired(&mut self, at_ms: u64, name: &LeaseName, before: Epoch, after: Epoch) {
        if after < before {
            let detail = format!("store epoch of {name} went from {before} back to {after}");
            self.violate(Property::Epoch, at_ms, detail);
        }
    }
}
