//! Property 2, **fence before expiry** (rule 2): whenever a keeper moves its deadline, that
//! local instant, in true time and plus the worst latency of its timer, lies before the
//! store's expiry of the grant it holds. Safety rests on it: a holder stops its services by
//! its deadline, and only after the store's expiry can anyone else be granted the lease.
//! Checking it directly catches a broken deadline (the `deadline_after_response` planted
//! bug) long before two instances happen to overlap.
//!
//! The simulation knows both sides in true time: the holder's clock converts its deadline,
//! and every grant carries the true instant the store will consider it expired.

use ferry_core::Mono;

use super::{Checker, Property};

impl Checker {
    /// A holder moved its `which` lease deadline to `at` on its own clock: `fence_by` in true
    /// time, timer latency included. The store expires what it granted at `expires_at`.
    /// `holder` names it, asked only when the property breaks.
    pub fn deadline_moved(
        &mut self,
        at_ms: u64,
        holder: impl FnOnce() -> String,
        which: &str,
        at: Mono,
        fence_by: u64,
        expires_at: u64,
    ) {
        if fence_by >= expires_at {
            let detail = format!(
                "{} moves its {which} lease deadline to {at} (true {fence_by} ms) but the store expires it at {expires_at} ms",
                holder()
            );
            self.violate(Property::FenceBeforeExpiry, at_ms, detail);
        }
    }
}
