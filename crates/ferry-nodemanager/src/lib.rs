//! ferry-nodemanager: the Node Manager (DESIGN §1), the only thing that starts, stops and
//! kills servers on its machine. Its decisions are ferry-core's `NodeManager`; this crate is
//! the shell around it:
//!
//! * `daemon`: start-up, enrollment, the listeners, the configuration refresh;
//! * `actor`: the one task that owns the state machine and the processes, fed by messages;
//! * `channel`: the local channel its servers report on (and adopted servers reconnect to);
//! * `renewals`: the batcher that sends all its servers' renewals as one `renew_many`;
//! * `plumbing`: floating IPs, mounts, spawning and killing;
//! * `authorize`: who may command it (the admin, its cluster's current master);
//! * `consensus`: its consensus-leasing voter, when the domain leases by consensus;
//! * `http`: `/nm/v1` over mutual TLS; `pki`: its certificates;
//! * `witness`: `ferry witness`, a voter of consensus leasing that hosts no servers.

mod actor;
mod authorize;
mod channel;
mod consensus;
mod daemon;
mod http;
pub mod pki;
mod plumbing;
mod renewals;
mod witness;

pub use daemon::{run, undefined, NmOptions, Role};
pub use witness::run_witness;
