//! ferry-core: the pure heart of ferry. Typed names, the domain model and its validation, and
//! the three state machines: the lease keeper (a holder's side of DESIGN §3 rule 2), the
//! cluster-master planner (Figure 7-2) and the Node Manager's supervisor (rules 3, 4, 5, 9).
//!
//! **Architecture Invariant:** nothing here reads a clock, touches a file or a socket, or
//! spawns a task. Every transition takes `now` and returns actions; that is what lets
//! ferry-sim drive the same code under a simulated clock and network.

pub mod domain;
pub mod error;
pub mod event;
pub mod health;
pub mod ids;
pub mod keeper;
pub mod leadership;
pub mod lease;
pub mod master;
pub mod nodeman;
pub mod reach;
pub mod time;
pub mod voters;

pub use error::chain;
pub use event::EventKind;
pub use ids::{ClusterName, Epoch, Incarnation, LeaseName, MachineName, ServerName, TokenName};
pub use time::Mono;
