//! ferry-server: the migratable server runtime (`ferry server NAME`, DESIGN §1) and the
//! cluster-master executor. Started only by a Node Manager, it obtains its configuration
//! (caching it), takes its server lease, starts its hosted services only then (rule 4),
//! renews the lease while they are healthy, fences itself at its deadline (rule 2), and
//! competes for its cluster's master lease.

mod channel;
mod context;
mod daemon;
mod master;
mod runtime;
mod services;

pub use daemon::run;
pub use runtime::{EXIT_CONFIG, EXIT_FENCED};
