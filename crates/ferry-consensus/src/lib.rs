//! ferry-consensus: consensus leasing (`[leasing] basis = "consensus"`), the seed's
//! "Non-database Consensus Leasing". The cluster's voters elect a leader by majority with
//! openraft; the leader holds the lease table, replicates every acquisition, handover,
//! release and epoch bump before it answers, and renews from memory by its own clock.
//! When a lease call may be answered is decided by `ferry_core::leadership` (DESIGN §3
//! rule 11), what it writes by `ferry_store::rules`, like every other lease table.

pub mod call;
pub mod disk;
pub mod http;
pub mod membership;
pub mod replicated;
pub mod store;
pub mod voter;

/// The pinned openraft, for the crates that stand voters up (ferry-testkit).
pub use openraft;
pub use store::{ConsensusStore, Route};
pub use voter::{Storage, VoterTiming};
