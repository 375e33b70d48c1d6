//! Property 4, **one master**: when a master sends a command, no other master believes it
//! holds the master lease (rule 6: a master acts only while its lease is valid by its own
//! clock); and no Node Manager executes a command whose master epoch is lower than one that
//! already reached it (rule 5, `Property::StaleCommand`).
//!
//! Who believes it is master is the simulation's to say (`Sim::believes`, in
//! `sim/master.rs`: alive, in the role, and its master keeper's deadline not passed), so
//! the simulation asks before every command it sends and reports each other believer here.
//! The stale command is one comparison where the Node Manager takes a command
//! (`Sim::nm_handle`, in `sim/nodemanager.rs`), recorded there.

use super::{Checker, Property};

impl Checker {
    /// Reports two masters acting at once, once per pair of tenures.
    pub fn two_masters(&mut self, at_ms: u64, sender: usize, other: usize, detail: String) {
        if self.reported_pairs.insert((sender.min(other), sender.max(other))) {
            self.violate(Property::OneMaster, at_ms, detail);
        }
    }
}
