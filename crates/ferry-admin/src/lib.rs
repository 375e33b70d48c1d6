//! ferry-admin: the Administration Server (DESIGN §1). Holds the domain configuration and
//! persists changes (versioned), serves each server its configuration, gives the run-time
//! view of the domain (lease table + Node Managers), keeps the event log, and orchestrates
//! start cluster, start, stop and manual migration (Figure 7-3) through Node Managers.
//! Operators call it with tokens whose roles (Monitor, Operator, Admin) the API enforces.
//!
//! **Architecture Invariant:** the admin is not on the failover path. Nothing in automatic
//! migration waits for it; servers fall back to their cached configuration when it is down.

mod auth;
mod config;
mod daemon;
mod errors;
mod events;
mod http;
mod operations;
mod ops;
mod pki;
mod state;
mod tokens;
mod views;

pub use daemon::{run, AdminOptions};
pub use http::router;
