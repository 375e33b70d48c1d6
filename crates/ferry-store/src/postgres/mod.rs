//! The PostgreSQL lease table: the data source for production clusters, shared by every
//! ferry process of a domain over the network, made highly available the way the database
//! itself is (a primary with synchronous standbys).
//!
//! Why it is built this way (DESIGN §3):
//! - **Same rules as SQLite:** each state change is one `READ COMMITTED` transaction that
//!   locks the row (`SELECT ... FOR UPDATE`), reads the database clock, asks
//!   `rules.rs` (the code `sqlite.rs` uses too) what to write, and writes the whole row.
//!   A missing row is inserted with `ON CONFLICT DO NOTHING`; losing that race means
//!   someone else inserted it, and the transaction starts over and finds the row locked.
//! - **Rule 1, the store's clock:** the clock is read with `clock_timestamp()` in a statement
//!   sent right behind the row lock in the same pipeline, so it is read after the lock is
//!   granted (as SQLite reads it after `BEGIN IMMEDIATE`); reads use the statement's
//!   `now()`. Times are stored as `timestamptz` in whole milliseconds and compared by the
//!   server (`expires_at <= now()`), never against a caller's clock.
//! - **Rule 7, bounded calls:** every call runs under `tokio::time::timeout(call_timeout)`,
//!   including waiting for a pooled connection and connecting; each session also has
//!   `statement_timeout` (the server stops the work) and `idle_in_transaction_session_timeout`
//!   (a client that freezes inside a transaction does not keep the row locked) equal to the
//!   call timeout. A connection whose call failed or timed out is closed, never reused, so a
//!   dead TCP connection costs one call, not every later one.
//! - **Rule 8, durable writes:** sessions keep `synchronous_commit` on; if the server or
//!   database turned it off, the session turns it back on.
//! - **No password in messages:** [`describe`](crate::LeaseStore::describe) and every error
//!   name the data source with the password replaced by `***`.
//! - **Batched renewals:** [`LeaseStore::renew_many`](crate::LeaseStore::renew_many) is one
//!   transaction of two round trips whatever the batch size: lock every named row in name
//!   order (so two batches never deadlock) and read the clock behind the locks, decide each
//!   renewal with `rules::renew` in the order given, then write the renewed rows with one
//!   `UPDATE ... WHERE name = ANY(...)` per TTL (they share their new times) and commit.
//!   Each lease's outcome is the one `renew` would give.
//! - **Pool:** a few connections per process (made on demand, [`DEFAULT_POOL_SIZE`]), so a
//!   daemon's renewals do not queue behind its scans.
//! - **TLS as libpq:** `sslmode=disable|allow|prefer|require|verify-ca|verify-full` and
//!   `sslrootcert=PATH` in the data source (tokio-postgres parses neither `verify-*` nor
//!   `sslrootcert`, so `tls.rs` takes them out of the URL first). The default is `prefer`:
//!   TLS when the server offers it, else plain. `require` insists on TLS and, when a root
//!   certificate is found (`sslrootcert`, [`PostgresOptions::ssl_root_cert`], `PGSSLROOTCERT`,
//!   else `~/.postgresql/root.crt` if it exists), checks the server's certificate chain
//!   against it *and* its host name, as `verify-full` does (stricter than libpq); without
//!   one it encrypts without checking and the store warns once. `verify-ca` checks the
//!   chain only; `verify-*` refuse to start without a root certificate. Unix sockets never
//!   use TLS. rustls with the ring provider, TLS 1.2 and 1.3.
//! - **Passwords from the environment:** without a password in the URL it comes from
//!   `PGPASSWORD` or the password file (`PGPASSFILE`, else `~/.pgpass`, ignored unless mode
//!   0600), as libpq finds it, so it need not appear on a command line.
//!
//! Needs PostgreSQL 14 or later (tested with 15): from 14 on, `extract(epoch ...)` is an
//! exact numeric, so the millisecond arithmetic above is exact.
//!
//! The pieces: `operations.rs` (the SQL and the lease calls), `pool.rs` (connections, made
//! in the background, and the per-session timeouts), `config.rs` (reading the data source:
//! URL, hosts, user, password, TLS), `errors.rs` (what failed, as the operator reads it) and
//! `tls.rs` (libpq's `sslmode` over rustls).

use std::sync::Arc;
use std::time::Duration;

use crate::{Result, StoreError};

mod authority;
mod config;
mod errors;
mod operations;
mod pool;
mod tls;

pub use config::{redact, PostgresOptions, DEFAULT_POOL_SIZE};
pub use operations::{EXPIRED_SINCE_SQL, EXPIRED_SQL, NEXT_EXPIRY_SQL};

use errors::Failure;
use pool::{Check, Pool};

/// The DDL `ferry leasing init` runs; idempotent.
pub const SCHEMA_SQL: &str = include_str!("../../schema/postgres.sql");

/// The version `SCHEMA_SQL` writes into `ferry_schema` and the only one this build reads.
pub const SCHEMA_VERSION: i64 = 2;

/// A lease table in a PostgreSQL database.
pub struct PostgresStore {
    pool: Arc<Pool>,
    call_timeout: Duration,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("data_source", &self.pool.names.data_source)
            .field("call_timeout", &self.call_timeout)
            .field("pool_size", &self.pool.size)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database named by a `postgres://` or `postgresql://` URL, with
    /// [`PostgresOptions::new`]. Makes one connection, so a wrong address, user, password
    /// or database is reported here; does not create the lease table (the first call then
    /// fails with `Schema`). Bounded by `call_timeout` (rule 7).
    pub async fn open(data_source: &str, call_timeout: Duration) -> Result<PostgresStore> {
        Self::open_with(data_source, PostgresOptions::new(call_timeout)).await
    }

    /// [`PostgresStore::open`] with explicit options.
    ///
    /// The URL is parsed by tokio-postgres (`postgres://USER:PASSWORD@HOST:PORT/DATABASE?
    /// options`, several hosts, `host=/socket/dir`), after `sslmode` and `sslrootcert` are
    /// taken out (see the module docs). Without a password in the URL, the password comes
    /// from `PGPASSWORD` or the password file (`PGPASSFILE`, else `~/.pgpass`), as with
    /// libpq; without a user, from `PGUSER`, else the OS user. Without
    /// `options.ssl_root_cert`, the root certificate comes from `PGSSLROOTCERT`, else
    /// `~/.postgresql/root.crt` if it exists.
    pub async fn open_with(data_source: &str, mut options: PostgresOptions) -> Result<PostgresStore> {
        if options.ssl_root_cert.is_none() {
            options.ssl_root_cert = tls::root_cert_from_env();
        }
        let pool = Arc::new(Pool::new(data_source, &options)?);
        let store = PostgresStore { pool, call_timeout: options.call_timeout };
        let first = store
            .call(async {
                let conn = store.pool.lend(Check::Nothing).await?;
                conn.give_back();
                Ok(())
            })
            .await;
        match first {
            Ok(()) => {}
            // Slow, not wrong: the connection goes on being made in the background and the
            // next call finds it (a store that failed to open would start over each time).
            Err(StoreError::Timeout { .. }) if options.patient_open => return Ok(store),
            Err(e) => return Err(e),
        }
        if store.pool.hosts() > 1 {
            // Several hosts: failover is intended, so rule 8 needs a synchronous standby.
            if let Ok(Some(warning)) = store.durability_warning().await {
                tracing::warn!(data_source = %store.pool.names.data_source, "{warning}");
            }
        }
        if store.pool.unverified {
            // Once per store, and only once it works (a lazy store retries failed opens).
            tracing::warn!(
                data_source = %store.pool.names.data_source,
                "the PostgreSQL lease table is reached over TLS without checking the server's \
                 certificate (sslmode=require and no root certificate), so anyone on the path \
                 can pose as the database; to check it, give the CA certificate with \
                 sslrootcert=PATH in the data source, PGSSLROOTCERT or ~/.postgresql/root.crt \
                 (and use sslmode=verify-full)"
            );
        }
        Ok(store)
    }

    /// [`PostgresStore::open`] then [`PostgresStore::init`]: what the daemons do at start.
    pub async fn open_and_init(data_source: &str, call_timeout: Duration) -> Result<PostgresStore> {
        let store = Self::open(data_source, call_timeout).await?;
        store.init().await?;
        Ok(store)
    }

    /// The call timeout this handle was opened with.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The most connections this handle opens.
    pub fn pool_size(&self) -> usize {
        self.pool.size
    }

    /// Runs one call within the call timeout and names the data source in its errors.
    async fn call<T>(&self, work: impl std::future::Future<Output = Result<T, Failure>>) -> Result<T> {
        match tokio::time::timeout(self.call_timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(failure)) => Err(failure.into_store_error(&self.pool.names)),
            Err(_elapsed) => Err(StoreError::Timeout {
                data_source: self.pool.names.data_source.clone(),
                timeout_ms: self.pool.names.timeout_ms,
            }),
        }
    }
}
