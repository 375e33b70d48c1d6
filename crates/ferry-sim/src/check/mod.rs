//! The properties checked over a whole run, in true (global) time, and the violations found.
//!
//! 1. **Safety** (DESIGN §3): at no instant do two instances of one server run their hosted
//!    services. An instance runs them from `KeeperAction::Acquired` until it is fenced,
//!    killed, or crashes; on a frozen host they do not run while it is frozen.
//! 2. **Fence before expiry** (rule 2): whenever a keeper moves its deadline, that local
//!    instant (in true time, plus the worst timer latency) lies before the store's expiry of
//!    the grant it holds. Safety rests on it; checking it directly catches a broken deadline
//!    long before two instances happen to overlap.
//! 3. **Epochs**: every instance that starts services holds a strictly larger epoch than the
//!    previous one of its server; every master tenure a larger master epoch than the last
//!    (the same process may come back at its own epoch); the store's epochs never go back.
//! 4. **One master**: when a master sends a command, no other master believes it holds the
//!    master lease (rule 6); and no Node Manager executes a command whose master epoch is
//!    lower than one it has already seen (rule 5).
//! 5. **Liveness**: once the faults stop, every server with `auto_migration` runs again
//!    within the bound (see `Sim::heal_bound_ms`) and still runs at the end.
//! 6. **Validate**: every keeper's, planner's and supervisor's `validate()` holds after every
//!    transition of a server process.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ferry_core::{Epoch, ServerName};

/// Which property a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Property {
    /// Two instances of one server ran their services at once.
    Safety,
    /// An instance started services without a larger epoch than its predecessor.
    Epoch,
    /// A holder's local deadline fell after the store's expiry of its lease (rule 2).
    FenceBeforeExpiry,
    /// Two masters acted at once (rule 6).
    OneMaster,
    /// A Node Manager executed a command from a master it knew to be deposed (rule 5).
    StaleCommand,
    /// A server did not run again in time after the faults stopped.
    Liveness,
    /// A state machine's `validate()` failed.
    Validate,
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Property::Safety => "safety (two instances ran services at once)",
            Property::Epoch => "epoch monotonicity",
            Property::FenceBeforeExpiry => "holder fences before the store expires (rule 2)",
            Property::OneMaster => "one master (rule 6)",
            Property::StaleCommand => "stale master command executed (rule 5)",
            Property::Liveness => "liveness after healing",
            Property::Validate => "validate()",
        };
        f.write_str(s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub property: Property,
    /// True time of the violation, in ms.
    pub at_ms: u64,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t={}ms {}: {}", self.at_ms, self.property, self.detail)
    }
}

/// One stretch during which an instance ran its services, in true time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub server: ServerName,
    pub instance: usize,
    pub machine: String,
    pub epoch: Epoch,
    pub start_ms: u64,
    /// `None` while still running at the end.
    pub end_ms: Option<u64>,
}

const MAX_VIOLATIONS: usize = 50;

#[derive(Debug, Default)]
pub struct Checker {
    pub violations: Vec<Violation>,
    pub runs: Vec<Run>,
    /// Open runs per server: instance -> index in `runs`.
    running: BTreeMap<ServerName, BTreeMap<usize, usize>>,
    last_epoch: BTreeMap<ServerName, Epoch>,
    /// The last master tenure's epoch and process.
    last_master: Option<(Epoch, usize)>,
    reported_pairs: BTreeSet<(usize, usize)>,
}

impl Checker {
    pub fn violate(&mut self, property: Property, at_ms: u64, detail: String) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(Violation { property, at_ms, detail });
        }
    }

    /// Property 2: an instance starts services with `epoch`.
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

    /// Property 2 for the master lease. The same process may take the role again at the same
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

    /// Property 1: an instance's services start (or resume after a freeze).
    pub fn run_start(&mut self, at_ms: u64, server: &ServerName, instance: usize, machine: &str, epoch: Epoch) {
        let open = self.running.entry(server.clone()).or_default();
        if open.contains_key(&instance) {
            return;
        }
        let others: Vec<String> = open
            .values()
            .map(|r| {
                let r = &self.runs[*r];
                format!("#{} on {} (epoch {}, since {} ms)", r.instance, r.machine, r.epoch, r.start_ms)
            })
            .collect();
        open.insert(instance, self.runs.len());
        self.runs.push(Run {
            server: server.clone(),
            instance,
            machine: machine.to_string(),
            epoch,
            start_ms: at_ms,
            end_ms: None,
        });
        if !others.is_empty() {
            self.violate(
                Property::Safety,
                at_ms,
                format!(
                    "{server} instance #{instance} on {machine} (epoch {epoch}) runs services while {} also does",
                    others.join(", ")
                ),
            );
        }
    }

    /// Property 1: an instance's services stop (fenced, killed, crashed, host frozen).
    pub fn run_stop(&mut self, at_ms: u64, server: &ServerName, instance: usize) {
        if let Some(open) = self.running.get_mut(server) {
            if let Some(r) = open.remove(&instance) {
                self.runs[r].end_ms = Some(at_ms);
            }
        }
    }

    pub fn is_running(&self, server: &ServerName) -> bool {
        self.running.get(server).is_some_and(|o| !o.is_empty())
    }

    /// Property 3: reports two masters acting at once, once per pair of tenures.
    pub fn two_masters(&mut self, at_ms: u64, sender: usize, other: usize, detail: String) {
        if self.reported_pairs.insert((sender.min(other), sender.max(other))) {
            self.violate(Property::OneMaster, at_ms, detail);
        }
    }

    /// The first instant at or after `from_ms` when `server` ran services, if any.
    pub fn first_run_since(&self, server: &ServerName, from_ms: u64) -> Option<u64> {
        self.runs
            .iter()
            .filter(|r| &r.server == server && r.end_ms.is_none_or(|e| e > from_ms))
            .map(|r| r.start_ms.max(from_ms))
            .min()
    }
}
