//! The properties checked over a whole run, in true (global) time, and the violations found.
//! One property a file, each saying what it holds and why it matters:
//!
//! 1. **Safety** (`one_instance`): never two instances of one server running services at once.
//! 2. **Fence before expiry** (`fence_before_expiry`, rule 2): every deadline a keeper adopts
//!    falls before the store's expiry of its grant.
//! 3. **Epochs** (`epochs`): a new instance, a new master tenure, the store: epochs only grow.
//! 4. **One master** (`one_master`, rules 6 and 5): no two masters act at once, and no Node
//!    Manager executes a command from a master it knew to be deposed.
//! 5. **Liveness** (`liveness`): once the faults stop, every `auto_migration` server runs
//!    again within the bound and still runs at the end.
//! 6. **Validate**: every keeper's, planner's and supervisor's `validate()` holds after every
//!    transition of a server process. The state machines check themselves; the simulation
//!    calls them (`Sim::validate`, in `sim/server.rs`) and records each failure with
//!    [`Checker::violate`], so this property has no file of its own.
//!
//! This file holds what they share: the [`Property`] names, the [`Violation`]s, and the
//! [`Checker`] that the simulation feeds as things happen.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ferry_core::{Epoch, ServerName};

mod epochs;
mod fence_before_expiry;
mod liveness;
mod one_instance;
mod one_master;

pub use one_instance::Run;

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

const MAX_VIOLATIONS: usize = 50;

/// What the properties remember between events; each property's file adds its checks.
#[derive(Debug, Default)]
pub struct Checker {
    pub violations: Vec<Violation>,
    pub runs: Vec<Run>,
    /// Open runs per server: instance -> index in `runs`.
    running: BTreeMap<ServerName, BTreeMap<usize, usize>>,
    /// The largest epoch any instance of each server started services at.
    last_epoch: BTreeMap<ServerName, Epoch>,
    /// The last master tenure's epoch and process.
    last_master: Option<(Epoch, usize)>,
    /// Pairs of master tenures already reported acting at once.
    reported_pairs: BTreeSet<(usize, usize)>,
}

impl Checker {
    /// Records a violation; a run keeps its first few, as a broken seed tends to break on.
    pub fn violate(&mut self, property: Property, at_ms: u64, detail: String) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(Violation { property, at_ms, detail });
        }
    }
}
