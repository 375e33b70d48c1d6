//! Time as the core sees it: instants are plain milliseconds on the caller's clock
//! (`CLOCK_BOOTTIME` in the shells, a simulated clock in ferry-sim). The core never reads a
//! clock; every transition takes `now`.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// An instant on a local monotonic clock that keeps counting through suspend, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mono(pub u64);

impl Mono {
    pub fn ms(self) -> u64 {
        self.0
    }
    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Mono) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Mono {
    type Output = Mono;
    fn add(self, d: Duration) -> Mono {
        Mono(self.0.saturating_add(d.as_millis() as u64))
    }
}

impl Add<u64> for Mono {
    type Output = Mono;
    fn add(self, ms: u64) -> Mono {
        Mono(self.0.saturating_add(ms))
    }
}

impl Sub<u64> for Mono {
    type Output = Mono;
    fn sub(self, ms: u64) -> Mono {
        Mono(self.0.saturating_sub(ms))
    }
}

impl fmt::Display for Mono {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Bugs that the simulation plants to prove it can catch them (DESIGN §5). They take effect
/// only when ferry-core is built with the `planted-bugs` feature; release builds ignore them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bugs {
    /// Rule 2 broken: the holder's deadline counts from the response, not from the request.
    pub deadline_after_response: bool,
    /// Rule 5 broken: the Node Manager accepts commands from a deposed master.
    pub no_nm_epoch_check: bool,
    /// Rules 2 and 3 broken: neither the holder nor its Node Manager fences.
    pub no_self_fence: bool,
    /// Rule 6 broken: a server takes the master role when it stops hearing the master,
    /// without waiting for the old master's lease to expire in the store.
    pub master_no_wait: bool,
    /// Rule 11 broken (consensus leasing): a new leader grants at once and keeps the
    /// replicated expiries, which no renewal has moved since they were written.
    pub leader_no_restart: bool,
    /// Rule 11 broken (consensus leasing): a leader renews without a recent quorum
    /// confirmation, so a deposed one keeps renewing.
    pub leader_unconfirmed_renews: bool,
}

impl Bugs {
    pub const NONE: Bugs = Bugs {
        deadline_after_response: false,
        no_nm_epoch_check: false,
        no_self_fence: false,
        master_no_wait: false,
        leader_no_restart: false,
        leader_unconfirmed_renews: false,
    };

    pub fn deadline_after_response(&self) -> bool {
        cfg!(feature = "planted-bugs") && self.deadline_after_response
    }
    pub fn no_nm_epoch_check(&self) -> bool {
        cfg!(feature = "planted-bugs") && self.no_nm_epoch_check
    }
    pub fn no_self_fence(&self) -> bool {
        cfg!(feature = "planted-bugs") && self.no_self_fence
    }
    pub fn master_no_wait(&self) -> bool {
        cfg!(feature = "planted-bugs") && self.master_no_wait
    }
    pub fn leader_no_restart(&self) -> bool {
        cfg!(feature = "planted-bugs") && self.leader_no_restart
    }
    pub fn leader_unconfirmed_renews(&self) -> bool {
        cfg!(feature = "planted-bugs") && self.leader_unconfirmed_renews
    }
}
