//! Consensus-leasing voters for the tests and the benchmark of `ferry-consensus`: in this
//! process with a network that can be cut ([`Cluster`]), or each behind its own HTTP
//! listener on loopback ([`HttpVoters`]), as the Node Managers will run them.

mod http;
mod in_process;
pub mod net;

pub use http::HttpVoters;
pub use in_process::Cluster;
