//! ferry-store's one integration test binary (STYLE habit 11): each lease table against
//! the conformance suite (`ferry_testkit::conformance`) and what only it has. `sqlite` needs
//! nothing; `postgres` starts private servers (`ferry_testkit::PgServer`) and, without the
//! PostgreSQL server binaries, prints why and passes, except under `CI=true`, where it fails.
//!
//! One part at a time: `cargo test -p ferry-store --test testsuite postgres::tls::`.

mod common;
mod postgres;
mod sqlite;
