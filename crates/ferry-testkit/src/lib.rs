//! ferry-testkit: test support only. Product crates never export test helpers; everything a
//! test, the benchmark or `ferry demo` needs to stand up the real thing lives here:
//!
//! * [`PgServer`] (`pg.rs`): private PostgreSQL servers, from one builder ([`PgOptions`]):
//!   on loopback for the store's tests, or inside a lab's switch namespace
//!   ([`PgOptions::in_lab`]); [`TestCa`] issues their certificates.
//! * [`conformance`]: the lease semantics of DESIGN §3, run against every `LeaseStore`.
//! * [`consensus`]: consensus-leasing voters in this process ([`consensus::Cluster`]) or
//!   talking HTTP on loopback ([`consensus::HttpVoters`]).
//! * [`Harness`] (`harness.rs`): a whole domain of real `ferry` processes on one host.
//! * [`LabDomain`] (`labdomain.rs`): a whole domain on ferry-lab hosts, each machine a
//!   network namespace, with PostgreSQL and the admin in the switch.
//! * [`DomainSpec`] and the waits both kinds of domain share (`domain.rs`), and the demo
//!   service's records with the safety checks on them (`service.rs`).
//!
//! Dependencies point one way: ferry-testkit uses ferry-lab (namespaces and faults) and the
//! product crates' public APIs, and takes the `ferry` executable as an argument; nothing
//! but tests, the benchmark and the binary's demo depends on it.

pub mod conformance;
pub mod consensus;
pub mod domain;
pub mod harness;
pub mod labdomain;
pub mod pg;
pub mod service;

pub use domain::{wait_until, DomainSpec, ServerSpec, PYTHON_SERVICE};
pub use harness::{free_port, Harness, TAG_VAR};
pub use labdomain::LabDomain;
pub use pg::{libfaketime, postgres_bin_dir, PgOptions, PgPair, PgServer, PgServerError, TestCa, DATABASE, SUPERUSER};
pub use service::{check_journal, client_view, probe, ClientLine, ClientView, Instance, JournalLine};
