//! Private PostgreSQL servers for tests and benchmarks, all made by one builder: each
//! [`PgServer`] is a throw-away cluster in its own directory, on its own port, torn down when
//! it is dropped (also when the test panics). By default it listens on 127.0.0.1 on a free
//! port; [`PgOptions`] says where else it listens, who may log in, whether it speaks TLS, and
//! what command it runs under, so the same server runs inside a ferry-lab switch namespace on
//! 198.18.1.1:5432 ([`PgOptions::in_lab`]), where every lab machine reaches it over the
//! bridge and a partition can cut a machine off from it.
//!
//! Why it exists: the PostgreSQL lease table must be tested against a real server (row
//! locks, the server's clock, synchronous commit, plans), and tests of other crates need
//! one they can stop, restart and freeze to play outages. Nothing here is used by the
//! daemons.
//!
//! How: the server binaries are Debian's (`/usr/lib/postgresql/*/bin`, the highest
//! version) or the first `initdb` on `PATH` ([`postgres_bin_dir`]). `initdb` costs ~0.6 s, so
//! one initialised cluster is kept as a template in the temporary directory, shared by every
//! test process (built once, then reused), and copied for each server, so a server starts in
//! a fraction of a second. Each copy gets its own `pg_hba.conf` for the networks its options
//! name. PostgreSQL refuses to run as root, so as root every server command runs as the
//! `postgres` OS user (`runuser -u postgres --`).
//!
//! The template lives in `$TMPDIR/ferry-pg-template-VERSION-fN-uUID` (about 40 MB) and is
//! kept for later runs; delete it freely. Servers of a test process killed with SIGKILL
//! are not stopped (nothing runs their `Drop`): `pg_ctl stop -D /tmp/ferry-pg-*/data`
//! (a lab's server dies with its lab).
//!
//! The methods that start and stop servers block for a fraction of a second (they run
//! `pg_ctl`); async tests may call them directly.
//!
//! Without the binaries, [`PgServer::start`] fails with [`PgServerError::NotFound`]; tests
//! call [`PgServer::start_or_skip`], which prints why they did not run and lets them return
//! early, except under `CI=true`, where a missing server fails the test loudly.
//!
//! [`PgServer::start_with_tls`] starts a server with `ssl=on` and a certificate for
//! `localhost` and its address from a throw-away CA ([`TestCa`]) made for that server alone;
//! [`PgServer::ca_cert_path`] is the CA's PEM file, the root certificate clients check the
//! server against. Plain and TLS connections are both accepted.

mod ca;
mod error;
mod pair;
mod server;
mod setup;

pub use ca::TestCa;
pub use error::PgServerError;
pub use pair::PgPair;
pub use server::{libfaketime, PgOptions, PgServer, LAB_PORT};
pub use setup::{postgres_bin_dir, DATABASE, SUPERUSER};
