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
//! - **No password in messages:** [`PostgresStore::describe`] and every error name the data
//!   source with the password replaced by `***`.
//! - **Batched renewals:** [`LeaseStore::renew_many`] is one transaction of two round trips
//!   whatever the batch size: lock every named row in name order (so two batches never
//!   deadlock) and read the clock behind the locks, decide each renewal with
//!   `rules::renew` in the order given, then write the renewed rows with one `UPDATE ...
//!   WHERE name = ANY(...)` per TTL (they share their new times) and commit. Each lease's
//!   outcome is the one `renew` would give.
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

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::lease::Lease;
use ferry_core::{Epoch, Incarnation, LeaseName};
use futures_util::future::{try_join, try_join3};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::rules::{self, CorruptRow, Refusal, Row, SchemaProblem, Take, Version};
use crate::{AcquireRequest, LeaseStore, Renewal, Result, Scan, ScanCursor, StoreError};

mod tls;

/// The DDL `ferry leasing init` runs; idempotent.
pub const SCHEMA_SQL: &str = include_str!("../schema/postgres.sql");

/// The version `SCHEMA_SQL` writes into `ferry_schema` and the only one this build reads.
pub const SCHEMA_VERSION: i64 = 1;

/// Bounds of the connect timeout of a new connection (made in the background, see
/// [`Pool::lend`]).
const BACKGROUND_CONNECT_MIN: Duration = Duration::from_secs(1);
const BACKGROUND_CONNECT_MAX: Duration = Duration::from_secs(10);

/// Connections one [`PostgresStore`] opens at most (made on demand).
pub const DEFAULT_POOL_SIZE: usize = 4;

/// Serialises `init` and `reset` across processes: `CREATE TABLE IF NOT EXISTS` is not safe
/// against itself in PostgreSQL. The bytes spell "ferrylse".
const SCHEMA_LOCK_KEY: i64 = 0x6665_7272_796c_7365;

/// The columns of a row, times in Unix milliseconds (stored values are whole milliseconds).
macro_rules! columns {
    () => {
        "name, owner, machine, incarnation, epoch, state, \
         floor(extract(epoch FROM expires_at) * 1000)::bigint, \
         floor(extract(epoch FROM renewed_at) * 1000)::bigint"
    };
}

/// The statement's clock in Unix milliseconds, for reads: `now()` is one value per
/// statement, the same one the `WHERE` clause compares with.
macro_rules! now_ms {
    () => {
        "floor(extract(epoch FROM now()) * 1000)::bigint"
    };
}

/// Milliseconds (a bigint parameter) to the stored timestamp.
macro_rules! at_ms {
    ($param:literal) => {
        concat!("to_timestamp(", $param, "::bigint::float8 / 1000)")
    };
}

const BEGIN_SQL: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// Locks the row for the rest of the transaction (a missing row locks nothing).
const LOCK_SQL: &str = concat!("SELECT ", columns!(), " FROM ferry_leases WHERE name = $1 FOR UPDATE");

/// The database clock at the moment it runs: behind `LOCK_SQL` in the pipeline, so after
/// the lock is granted.
const CLOCK_SQL: &str = "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

const INSERT_SQL: &str = concat!(
    "INSERT INTO ferry_leases (name, owner, machine, incarnation, epoch, state, expires_at, \
     renewed_at) VALUES ($1, $2, $3, $4, $5, $6, ",
    at_ms!("$7"),
    ", ",
    at_ms!("$8"),
    ") ON CONFLICT (name) DO NOTHING"
);

const UPDATE_SQL: &str = concat!(
    "UPDATE ferry_leases SET owner = $2, machine = $3, incarnation = $4, epoch = $5, \
     state = $6, expires_at = ",
    at_ms!("$7"),
    ", renewed_at = ",
    at_ms!("$8"),
    " WHERE name = $1"
);

/// Starts a batch's transaction. Its statements look rows up by primary key; with the
/// default costs (`random_page_cost = 4`) the planner prices probes of a table whose
/// names are not in physical order above reading the whole table once a batch is about 1%
/// of it, and a whole-table read per batch makes a batch's cost follow the table's size.
/// `enable_seqscan = off` for this transaction only keeps them on the index.
const BEGIN_MANY_SQL: &str = "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL enable_seqscan = off";

/// Locks the rows of a batch, in name order so that concurrent batches cannot deadlock.
const LOCK_MANY_SQL: &str =
    concat!("SELECT ", columns!(), " FROM ferry_leases WHERE name = ANY($1) ORDER BY name FOR UPDATE");

/// Writes renewed rows of a batch that share their new expiry and renewal time (under the
/// locks `LOCK_MANY_SQL` took; a renewal changes nothing else). `name = ANY($1)` is
/// planned as probes of the primary key whatever the batch size, where a join with
/// `unnest(...)` of a large batch is planned as a hash join over the whole table.
const RENEW_MANY_SQL: &str = concat!(
    "UPDATE ferry_leases SET expires_at = ",
    at_ms!("$2"),
    ", renewed_at = ",
    at_ms!("$3"),
    " WHERE name = ANY($1)"
);

const GET_SQL: &str = concat!("SELECT ", columns!(), ", ", now_ms!(), " FROM ferry_leases WHERE name = $1");

const LIST_SQL: &str =
    concat!("SELECT ", columns!(), ", ", now_ms!(), " FROM ferry_leases ORDER BY name COLLATE \"C\"");

/// The expiry scan: held rows past their expiry by the database clock, from the partial
/// index on held rows' expiry (see `schema/postgres.sql`).
pub const EXPIRED_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    ", ",
    now_ms!(),
    " FROM ferry_leases WHERE state = 'held' AND expires_at <= now() \
     ORDER BY expires_at, name COLLATE \"C\""
);

/// Milliseconds until the earliest expiry still to come of a held lease, from the same
/// partial index (`min()` reads one index entry).
/// The incremental expiry scan ([`LeaseStore::scan`]): held rows whose expiry passed after
/// the cursor's floor ($1, Unix ms), so the index range read is the one since the previous
/// scan, not every old expiry that renewals left behind for the vacuum.
pub const EXPIRED_SINCE_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    ", ",
    now_ms!(),
    " FROM ferry_leases WHERE state = 'held' AND expires_at <= now() AND expires_at > ",
    at_ms!("$1"),
    " ORDER BY expires_at, name COLLATE \"C\""
);

/// The rows the master tracks, by primary key.
const TRACKED_SQL: &str = concat!("SELECT ", columns!(), ", ", now_ms!(), " FROM ferry_leases WHERE name = ANY($1)");

/// The next expiry and the clock, read before the scan's other statements (so the cursor
/// is never later than what they saw).
const NEXT_EXPIRY_AND_NOW_SQL: &str = concat!(
    "SELECT floor(extract(epoch FROM min(expires_at)) * 1000)::bigint - ",
    now_ms!(),
    ", ",
    now_ms!(),
    " FROM ferry_leases WHERE state = 'held' AND expires_at > now()"
);

pub const NEXT_EXPIRY_SQL: &str = concat!(
    "SELECT floor(extract(epoch FROM min(expires_at)) * 1000)::bigint - ",
    now_ms!(),
    " FROM ferry_leases WHERE state = 'held' AND expires_at > now()"
);

/// How a [`PostgresStore`] connects and how long it waits.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The bound on every call, and the server's `statement_timeout` (rule 7).
    pub call_timeout: Duration,
    /// The bound on establishing one connection (never longer than `call_timeout`).
    pub connect_timeout: Duration,
    /// Connections this store opens at most; calls beyond it wait (within their timeout).
    pub pool_size: usize,
    /// The PEM file of the CA certificate(s) the server's TLS certificate is checked against
    /// (see the module docs for when). `sslrootcert=PATH` in the data source takes
    /// precedence; `None` means libpq's rule: `PGSSLROOTCERT`, else `~/.postgresql/root.crt`
    /// if it exists ([`PostgresStore::open_with`] looks there).
    pub ssl_root_cert: Option<PathBuf>,
    /// `open` answers with the store even when its first connection is not made within the
    /// call timeout (it goes on being made in the background): what a store opened on
    /// first use wants, so a slow database is reached by the next call.
    pub patient_open: bool,
}

impl PostgresOptions {
    /// The defaults for a call timeout: connect within it, [`DEFAULT_POOL_SIZE`] connections,
    /// the root certificate from the environment.
    pub fn new(call_timeout: Duration) -> PostgresOptions {
        PostgresOptions {
            call_timeout,
            connect_timeout: call_timeout,
            pool_size: DEFAULT_POOL_SIZE,
            ssl_root_cert: None,
            patient_open: false,
        }
    }
}

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

    /// Creates the lease table if it is absent (idempotent, safe to run concurrently).
    /// Fails with `Schema` if a table of another version is there, without touching it.
    pub async fn init(&self) -> Result<()> {
        self.call(async {
            let conn = self.pool.lend(Check::Nothing).await?;
            let result = async {
                let c = conn.client()?;
                c.batch_execute(&format!("{BEGIN_SQL}; SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})")).await?;
                if let Err(problem) = read_version(c).await?.check_init(SCHEMA_VERSION) {
                    c.batch_execute("ROLLBACK").await?;
                    return Err(Failure::Schema(problem));
                }
                c.batch_execute(SCHEMA_SQL).await?;
                c.batch_execute("COMMIT").await?;
                Ok(())
            }
            .await;
            conn.finish_creating(result)
        })
        .await
    }

    /// Drops the lease table and creates it empty, whatever version it had. Every lease and
    /// epoch is forgotten: only for a stopped cluster.
    pub async fn reset(&self) -> Result<()> {
        self.call(async {
            let conn = self.pool.lend(Check::Nothing).await?;
            let result = async {
                let c = conn.client()?;
                c.batch_execute(&format!(
                    "{BEGIN_SQL}; SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY}); \
                     DROP TABLE IF EXISTS ferry_leases; DROP TABLE IF EXISTS ferry_schema;"
                ))
                .await?;
                c.batch_execute(SCHEMA_SQL).await?;
                c.batch_execute("COMMIT").await?;
                Ok(())
            }
            .await;
            conn.finish_creating(result)
        })
        .await
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

    /// Runs `op` on a pooled connection whose schema has been checked, keeping the
    /// connection only when the call ended cleanly.
    async fn with_conn<T>(&self, op: impl AsyncOp<T>) -> Result<T> {
        self.call(async {
            let conn = self.pool.lend(Check::Schema).await?;
            let result = op.run(conn.client()?).await;
            conn.finish(result)
        })
        .await
    }
}

/// One lease operation over a connection. (A trait rather than a closure so the borrow of
/// the client can be named.)
trait AsyncOp<T> {
    fn run(self, client: &Client) -> impl std::future::Future<Output = Result<T, Failure>> + Send;
}

#[async_trait::async_trait]
impl LeaseStore for PostgresStore {
    async fn acquire(&self, req: &AcquireRequest) -> Result<Lease> {
        self.with_conn(TakeOp { req, how: Take::Acquire }).await
    }

    async fn handover(&self, req: &AcquireRequest, from: &Incarnation) -> Result<Lease> {
        self.with_conn(TakeOp { req, how: Take::Handover(from) }).await
    }

    async fn renew(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch, ttl: Duration) -> Result<Lease> {
        self.with_conn(RenewOp { name, incarnation, epoch, ttl }).await
    }

    async fn renew_many(&self, renewals: &[Renewal]) -> Result<Vec<Result<Lease>>> {
        if renewals.is_empty() {
            return Ok(Vec::new());
        }
        let outcomes = self.with_conn(RenewManyOp { renewals }).await?;
        let names = &self.pool.names;
        Ok(outcomes.into_iter().map(|o| o.map_err(|f| f.into_store_error(names))).collect())
    }

    async fn release(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch) -> Result<()> {
        self.with_conn(ReleaseOp { name, incarnation, epoch }).await
    }

    async fn get(&self, name: &LeaseName) -> Result<Option<Lease>> {
        self.with_conn(GetOp { name }).await
    }

    async fn list(&self) -> Result<Vec<Lease>> {
        self.with_conn(ScanOp { sql: LIST_SQL }).await
    }

    async fn expired(&self) -> Result<Vec<Lease>> {
        self.with_conn(ScanOp { sql: EXPIRED_SQL }).await
    }

    async fn next_expiry_ms(&self) -> Result<Option<i64>> {
        self.with_conn(NextExpiryOp).await
    }

    async fn scan(&self, since: ScanCursor, tracked: &[LeaseName]) -> Result<Scan> {
        self.with_conn(ScanWindowOp { since, tracked }).await
    }

    fn describe(&self) -> String {
        self.pool.names.data_source.clone()
    }
}

// ---- the operations ----

struct TakeOp<'a> {
    req: &'a AcquireRequest,
    how: Take<'a>,
}

impl AsyncOp<Lease> for TakeOp<'_> {
    async fn run(self, c: &Client) -> Result<Lease, Failure> {
        let name = self.req.name.to_string();
        // A second pass only follows a lost insert race; a third cannot lose another one
        // (the row exists by then), unless the table is being reset under us.
        for _ in 0..3 {
            let (old, now) = lock_row(c, &name).await?;
            let row = match rules::take(old.as_ref(), self.req, self.how, now) {
                Ok(row) => row,
                Err(refusal) => {
                    c.batch_execute("ROLLBACK").await?;
                    return Err(match refusal {
                        Refusal::Store(e) => Failure::Store(e),
                        Refusal::Corrupt(e) => Failure::Corrupt(e),
                    });
                }
            };
            let sql = if old.is_some() { UPDATE_SQL } else { INSERT_SQL };
            if write_and_commit(c, sql, &row).await? {
                return Ok(row.to_lease(now)?);
            }
        }
        Err(Failure::Busy(name))
    }
}

struct RenewOp<'a> {
    name: &'a LeaseName,
    incarnation: &'a Incarnation,
    epoch: Epoch,
    ttl: Duration,
}

impl AsyncOp<Lease> for RenewOp<'_> {
    async fn run(self, c: &Client) -> Result<Lease, Failure> {
        let name = self.name.to_string();
        let (old, now) = lock_row(c, &name).await?;
        match rules::renew(old, self.name, self.incarnation, self.epoch, self.ttl, now) {
            Ok(row) => {
                if write_and_commit(c, UPDATE_SQL, &row).await? {
                    Ok(row.to_lease(now)?)
                } else {
                    Err(Failure::Busy(name))
                }
            }
            Err(e) => {
                c.batch_execute("ROLLBACK").await?;
                Err(Failure::Store(e))
            }
        }
    }
}

struct RenewManyOp<'a> {
    renewals: &'a [Renewal],
}

impl AsyncOp<Vec<Result<Lease, Failure>>> for RenewManyOp<'_> {
    async fn run(self, c: &Client) -> Result<Vec<Result<Lease, Failure>>, Failure> {
        use std::collections::HashMap;

        let mut names: Vec<String> = self.renewals.iter().map(|r| r.name.to_string()).collect();
        names.sort_unstable();
        names.dedup();
        // Lock every row, then read the clock: the statements run in order, so the clock is
        // read once every lock is granted (rule 1), as in `lock_row`.
        let (_, locked, now) = try_join3(
            c.batch_execute(BEGIN_MANY_SQL),
            c.query_typed(LOCK_MANY_SQL, &[(&names, Type::TEXT_ARRAY)]),
            c.query_typed_one(CLOCK_SQL, &[]),
        )
        .await?;
        let now: i64 = now.try_get(0)?;
        // Each named row as it stands in this transaction; a row that cannot be read is
        // that lease's error, not the batch's.
        let mut rows: HashMap<String, Result<Row, CorruptRow>> = HashMap::new();
        for r in &locked {
            let name: String = r.try_get(0)?;
            let row = match row_from_pg(r) {
                Ok(row) => Ok(row),
                Err(Failure::Corrupt(e)) => Err(e),
                Err(other) => return Err(other),
            };
            rows.insert(name, row);
        }
        let mut outcomes = Vec::with_capacity(self.renewals.len());
        for (r, name) in self.renewals.iter().map(|r| (r, r.name.to_string())) {
            let old = match rows.get(&name) {
                None => None,
                Some(Ok(row)) => Some(row.clone()),
                Some(Err(e)) => {
                    outcomes.push(Err(Failure::Corrupt(CorruptRow { name: e.name.clone(), why: e.why.clone() })));
                    continue;
                }
            };
            match rules::renew(old, &r.name, &r.incarnation, r.epoch, r.ttl, now) {
                Ok(row) => match row.to_lease(now) {
                    Ok(lease) => {
                        rows.insert(name, Ok(row));
                        outcomes.push(Ok(lease));
                    }
                    Err(e) => outcomes.push(Err(Failure::Corrupt(e))),
                },
                Err(e) => outcomes.push(Err(Failure::Store(e))),
            }
        }
        // The rows to write: those renewed (a name renewed twice is written once, as last
        // renewed), grouped by their new times (one group unless the TTLs differ).
        let mut groups: Vec<((i64, i64), Vec<String>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (r, outcome) in self.renewals.iter().zip(&outcomes) {
            let name = r.name.to_string();
            if outcome.is_ok() && seen.insert(name.clone()) {
                if let Some(Ok(row)) = rows.get(&name) {
                    let times = (row.expires_at_ms, row.renewed_at_ms);
                    match groups.iter_mut().find(|(t, _)| *t == times) {
                        Some((_, names)) => names.push(name),
                        None => groups.push((times, vec![name])),
                    }
                }
            }
        }
        let Some(((expires, renewed), last)) = groups.pop() else {
            c.batch_execute("ROLLBACK").await?;
            return Ok(outcomes);
        };
        let mut updated = 0;
        let mut expected = last.len() as u64;
        for ((expires, renewed), names) in &groups {
            expected += names.len() as u64;
            updated += c
                .execute_typed(
                    RENEW_MANY_SQL,
                    &[(names, Type::TEXT_ARRAY), (expires, Type::INT8), (renewed, Type::INT8)],
                )
                .await?;
        }
        // Should the write fail, the server answers the pipelined COMMIT with a rollback.
        let (last_updated, ()) = try_join(
            c.execute_typed(
                RENEW_MANY_SQL,
                &[(&last, Type::TEXT_ARRAY), (&expires, Type::INT8), (&renewed, Type::INT8)],
            ),
            c.batch_execute("COMMIT"),
        )
        .await?;
        if updated + last_updated != expected {
            // Impossible while the rows are locked; say so rather than guess.
            return Err(Failure::Busy(last.join(", ")));
        }
        Ok(outcomes)
    }
}

struct ReleaseOp<'a> {
    name: &'a LeaseName,
    incarnation: &'a Incarnation,
    epoch: Epoch,
}

impl AsyncOp<()> for ReleaseOp<'_> {
    async fn run(self, c: &Client) -> Result<(), Failure> {
        let name = self.name.to_string();
        let (old, now) = lock_row(c, &name).await?;
        match rules::release(old, self.name, self.incarnation, self.epoch, now) {
            Ok(Some(row)) => {
                if write_and_commit(c, UPDATE_SQL, &row).await? {
                    Ok(())
                } else {
                    Err(Failure::Busy(name))
                }
            }
            Ok(None) => {
                // A retried release whose first answer was lost.
                c.batch_execute("ROLLBACK").await?;
                Ok(())
            }
            Err(e) => {
                c.batch_execute("ROLLBACK").await?;
                Err(Failure::Store(e))
            }
        }
    }
}

struct GetOp<'a> {
    name: &'a LeaseName,
}

impl AsyncOp<Option<Lease>> for GetOp<'_> {
    async fn run(self, c: &Client) -> Result<Option<Lease>, Failure> {
        let name = self.name.to_string();
        match c.query_typed_opt(GET_SQL, &[(&name, Type::TEXT)]).await? {
            Some(r) => {
                let now: i64 = r.try_get(8)?;
                Ok(Some(row_from_pg(&r)?.to_lease(now)?))
            }
            None => Ok(None),
        }
    }
}

struct ScanOp {
    sql: &'static str,
}

impl AsyncOp<Vec<Lease>> for ScanOp {
    async fn run(self, c: &Client) -> Result<Vec<Lease>, Failure> {
        let rows = c.query_typed(self.sql, &[]).await?;
        let mut leases = Vec::with_capacity(rows.len());
        for r in &rows {
            let now: i64 = r.try_get(8)?;
            leases.push(row_from_pg(r)?.to_lease(now)?);
        }
        Ok(leases)
    }
}

struct ScanWindowOp<'a> {
    since: ScanCursor,
    tracked: &'a [LeaseName],
}

impl AsyncOp<Scan> for ScanWindowOp<'_> {
    async fn run(self, c: &Client) -> Result<Scan, Failure> {
        let names: Vec<String> = self.tracked.iter().map(|n| n.to_string()).collect();
        let floor = self.since.floor_ms();
        // One round trip: the statements run in the order sent, the clock first.
        let (head, window, tracked) = try_join3(
            c.query_typed_one(NEXT_EXPIRY_AND_NOW_SQL, &[]),
            async {
                match &floor {
                    Some(ms) => c.query_typed(EXPIRED_SINCE_SQL, &[(ms, Type::INT8)]).await,
                    None => c.query_typed(EXPIRED_SQL, &[]).await,
                }
            },
            async {
                if names.is_empty() {
                    Ok(Vec::new())
                } else {
                    c.query_typed(TRACKED_SQL, &[(&names, Type::TEXT_ARRAY)]).await
                }
            },
        )
        .await?;
        let next_expiry_ms: Option<i64> = head.try_get(0)?;
        let now: i64 = head.try_get(1)?;
        let mut leases = Vec::with_capacity(window.len() + tracked.len());
        let mut seen = std::collections::HashSet::with_capacity(window.len());
        for r in window.iter().chain(tracked.iter()) {
            let at: i64 = r.try_get(8)?;
            let lease = row_from_pg(r)?.to_lease(at)?;
            if seen.insert(lease.name.clone()) {
                leases.push(lease);
            }
        }
        Ok(Scan { leases, next_expiry_ms, cursor: ScanCursor::at(now) })
    }
}

struct NextExpiryOp;

impl AsyncOp<Option<i64>> for NextExpiryOp {
    async fn run(self, c: &Client) -> Result<Option<i64>, Failure> {
        let r = c.query_typed_one(NEXT_EXPIRY_SQL, &[]).await?;
        Ok(r.try_get(0)?)
    }
}

/// Starts the transaction, locks the row and reads the clock, in one round trip: the
/// statements run in order, so the clock is read once the lock is granted.
async fn lock_row(c: &Client, name: &String) -> Result<(Option<Row>, i64), Failure> {
    let (_, old, now) = try_join3(
        c.batch_execute(BEGIN_SQL),
        c.query_typed_opt(LOCK_SQL, &[(name, Type::TEXT)]),
        c.query_typed_one(CLOCK_SQL, &[]),
    )
    .await?;
    let old = old.as_ref().map(row_from_pg).transpose()?;
    Ok((old, now.try_get(0)?))
}

/// Writes the whole row and commits, in one round trip. False when nothing was written
/// (an insert that lost a race; the commit then ends an empty transaction).
async fn write_and_commit(c: &Client, sql: &str, row: &Row) -> Result<bool, Failure> {
    let epoch = row.stored_epoch()?;
    let state = row.state();
    let params: [(&(dyn ToSql + Sync), Type); 8] = [
        (&row.name, Type::TEXT),
        (&row.owner, Type::TEXT),
        (&row.machine, Type::TEXT),
        (&row.incarnation, Type::TEXT),
        (&epoch, Type::INT8),
        (&state, Type::TEXT),
        (&row.expires_at_ms, Type::INT8),
        (&row.renewed_at_ms, Type::INT8),
    ];
    // Should the write fail, the server answers the pipelined COMMIT with a rollback.
    let (written, ()) = try_join(c.execute_typed(sql, &params), c.batch_execute("COMMIT")).await?;
    Ok(written == 1)
}

/// Reads the columns in `columns!()` order.
fn row_from_pg(r: &tokio_postgres::Row) -> Result<Row, Failure> {
    let state: String = r.try_get(5)?;
    Ok(Row::from_columns(
        r.try_get(0)?,
        r.try_get(1)?,
        r.try_get(2)?,
        r.try_get(3)?,
        r.try_get(4)?,
        &state,
        r.try_get(6)?,
        r.try_get(7)?,
    )?)
}

async fn read_version(c: &Client) -> Result<Version, Failure> {
    let exists: bool = c.query_typed_one("SELECT to_regclass('ferry_schema') IS NOT NULL", &[]).await?.try_get(0)?;
    if !exists {
        return Ok(Version::Absent);
    }
    let r = c.query_typed_one("SELECT count(*), max(version)::bigint FROM ferry_schema", &[]).await?;
    Ok(Version::from_count_and_max(r.try_get(0)?, r.try_get(1)?))
}

// ---- the pool ----

/// How connections are made (`tls.rs` decides which).
#[derive(Clone)]
enum Transport {
    /// TCP or a Unix socket without TLS.
    Plain,
    /// TLS, negotiated as the config's `ssl_mode` says (`Prefer`: falls back to plain when
    /// the server does not offer it; `Require`: fails), checked as the connector says.
    Tls(MakeRustlsConnect),
}

impl Transport {
    async fn connect(&self, config: &Config) -> Result<Client, tokio_postgres::Error> {
        match self {
            Transport::Plain => Ok(drive(config.connect(NoTls).await?)),
            Transport::Tls(connector) => Ok(drive(config.connect(connector.clone()).await?)),
        }
    }
}

/// Runs a connection's I/O on its own task; the client is what the pool keeps.
fn drive<S, T>((client, connection): (Client, tokio_postgres::Connection<S, T>)) -> Client
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    client
}

/// What errors need to name: the data source (redacted), user, database and address.
#[derive(Debug, Clone)]
struct Names {
    data_source: String,
    user: String,
    database: String,
    target: String,
    /// The root certificate file the server's certificate is checked against, if any.
    root_cert: Option<String>,
    /// The call timeout.
    timeout_ms: u64,
}

/// At most `size` connections, made on demand and kept while they stay clean.
struct Pool {
    /// How new connections are made: in a task of their own, with a connect timeout longer
    /// than a call's (see [`Pool::lend`]).
    config: Config,
    transport: Transport,
    /// Run once on each new connection (rule 7 and 8 settings).
    session_sql: String,
    idle: Mutex<Vec<Conn>>,
    slots: Arc<Semaphore>,
    size: usize,
    names: Names,
    /// TLS without checking the server's certificate (`sslmode=require`, no root file).
    unverified: bool,
}

struct Conn {
    client: Client,
    /// Whether `ferry_schema` has been seen at [`SCHEMA_VERSION`] through this connection.
    schema_checked: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Check `ferry_schema` once per connection before the first lease call.
    Schema,
    /// `open`, `init` and `reset` look at the schema themselves (or not at all).
    Nothing,
}

impl Pool {
    fn new(data_source: &str, options: &PostgresOptions) -> Result<Pool> {
        let redacted = redact(data_source);
        let refuse =
            |problem: PgProblem| StoreError::Unavailable { data_source: redacted.clone(), source: Box::new(problem) };
        let (url, tls_params) = tls::take_params(data_source).map_err(&refuse)?;
        let mut config: Config = url.parse().map_err(|e| refuse(PgProblem::Url(e)))?;
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            // libpq's default: the local Unix socket.
            let socket_dir = std::path::Path::new("/var/run/postgresql");
            if socket_dir.is_dir() {
                config.host_path(socket_dir);
            } else {
                config.host("localhost");
            }
        }
        if config.get_user().is_none() {
            if let Some(user) = env_nonempty("PGUSER").or_else(|| env_nonempty("USER")) {
                config.user(user);
            }
        }
        let user = config.get_user().unwrap_or("(the OS user)").to_string();
        let database = config.get_dbname().unwrap_or(&user).to_string();
        if config.get_password().is_none() {
            if let Some(password) = password_from_env(&config, &database) {
                config.password(password);
            }
        }
        let unix_only =
            config.get_hostaddrs().is_empty() && config.get_hosts().iter().all(|h| matches!(h, Host::Unix(_)));
        let root_cert = tls_params.root_cert.as_deref().or(options.ssl_root_cert.as_deref());
        let decision = tls::decide(&tls_params, root_cert, unix_only).map_err(&refuse)?;
        config.ssl_mode(decision.ssl_mode);
        let transport = match decision.connector {
            Some(connector) => {
                if config.get_hosts().is_empty() {
                    // tokio-postgres takes the name to check the certificate against from
                    // `host`; with addresses only, the address is that name.
                    for addr in config.get_hostaddrs().to_vec() {
                        config.host(addr.to_string());
                    }
                }
                Transport::Tls(connector)
            }
            None => Transport::Plain,
        };
        if config.get_application_name().is_none() {
            config.application_name("ferry");
        }
        // A new connection is made in a task of its own that outlives a call that gave up
        // waiting for it (`Pool::lend`): a database that takes longer than one call timeout
        // to accept a connection (a TLS or SCRAM handshake on a loaded host) is then still
        // reached, by the next call, instead of never. Calls stay bounded by their timeout.
        let connect_timeout = options
            .connect_timeout
            .max(options.call_timeout * 10)
            .clamp(BACKGROUND_CONNECT_MIN, BACKGROUND_CONNECT_MAX);
        config.connect_timeout(connect_timeout);
        // Notice dead peers of idle pooled connections within seconds, not hours.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(5));
        config.keepalives_interval(Duration::from_secs(1));
        config.keepalives_retries(3);
        config.tcp_user_timeout(options.call_timeout.max(Duration::from_millis(1)));
        let timeout_ms = options.call_timeout.as_millis().clamp(1, i32::MAX as u128);
        let session_sql = format!(
            "SET statement_timeout = {timeout_ms}; \
             SET idle_in_transaction_session_timeout = {timeout_ms}; \
             SET client_min_messages = warning; \
             SELECT set_config('synchronous_commit', 'on', false) \
                 WHERE current_setting('synchronous_commit') = 'off'"
        );
        let size = options.pool_size.max(1);
        let names = Names {
            data_source: redacted,
            target: target(&config),
            user,
            database,
            root_cert: decision.root_cert.map(|p| p.display().to_string()),
            timeout_ms: u64::try_from(options.call_timeout.as_millis()).unwrap_or(u64::MAX),
        };
        Ok(Pool {
            config,
            transport,
            session_sql,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(size)),
            size,
            names,
            unverified: decision.unverified,
        })
    }

    /// A connection for one call: an idle one, or a new one while the pool has room.
    async fn lend(self: &Arc<Self>, check: Check) -> Result<Lent, Failure> {
        let slot = Arc::clone(&self.slots).acquire_owned().await.map_err(|_| Failure::PoolClosed)?;
        let idle = loop {
            let next = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match next {
                Some(conn) if conn.client.is_closed() => continue,
                other => break other,
            }
        };
        let (mut conn, slot) = match idle {
            Some(conn) => (conn, slot),
            None => {
                // The connection is made in a task that holds the slot: if this call times out
                // meanwhile, the task goes on and leaves the connection in the pool for the
                // next call.
                let (tx, rx) = tokio::sync::oneshot::channel();
                let pool = Arc::clone(self);
                tokio::spawn(async move {
                    let made = async {
                        let client = pool.transport.connect(&pool.config).await.map_err(Failure::Connect)?;
                        client.batch_execute(&pool.session_sql).await?;
                        Ok::<_, Failure>(Conn { client, schema_checked: false })
                    }
                    .await;
                    if let Err(Ok((conn, slot))) = tx.send(made.map(|c| (c, slot))) {
                        // Nobody waits any more: keep it for the next call.
                        if !conn.client.is_closed() {
                            pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
                        }
                        drop(slot);
                    }
                });
                rx.await.map_err(|_| Failure::PoolClosed)??
            }
        };
        if check == Check::Schema && !conn.schema_checked {
            read_version(&conn.client).await?.check(SCHEMA_VERSION).map_err(Failure::Schema)?;
            conn.schema_checked = true;
        }
        Ok(Lent { conn: Some(conn), pool: Arc::clone(self), _slot: slot })
    }
}

/// A connection lent for one call. Dropped without [`Lent::give_back`] (an error, a
/// timeout, a panic), it is closed, so no half-finished transaction is ever reused.
struct Lent {
    conn: Option<Conn>,
    pool: Arc<Pool>,
    _slot: OwnedSemaphorePermit,
}

impl Lent {
    fn client(&self) -> Result<&Client, Failure> {
        self.conn.as_ref().map(|c| &c.client).ok_or(Failure::PoolClosed)
    }

    fn give_back(mut self) {
        if let Some(conn) = self.conn.take() {
            if !conn.client.is_closed() {
                self.pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            }
        }
    }

    /// Keeps the connection after a success or a refusal (its transaction was ended);
    /// closes it after anything else.
    fn finish<T>(self, result: Result<T, Failure>) -> Result<T, Failure> {
        if matches!(result, Ok(_) | Err(Failure::Store(_))) {
            self.give_back();
        }
        result
    }

    /// `finish` for `init` and `reset`: success also leaves the schema checked.
    fn finish_creating(mut self, result: Result<(), Failure>) -> Result<(), Failure> {
        if result.is_ok() {
            if let Some(conn) = self.conn.as_mut() {
                conn.schema_checked = true;
            }
            self.give_back();
        }
        result
    }
}

// ---- configuration helpers ----

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The password from `PGPASSWORD`, else from the password file, as libpq finds it.
fn password_from_env(config: &Config, database: &str) -> Option<String> {
    if let Some(password) = env_nonempty("PGPASSWORD") {
        return Some(password);
    }
    let path = match env_nonempty("PGPASSFILE") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::PathBuf::from(env_nonempty("HOME")?).join(".pgpass"),
    };
    let text = std::fs::read_to_string(&path).ok()?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).ok()?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "password file has group or world access; ignored (chmod 0600 it)"
            );
            return None;
        }
    }
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(_)) | None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = config.get_user().unwrap_or_default();
    passfile_lookup(&text, [&host, &port, database, user])
}

/// The password of the first `host:port:database:user:password` line of a password file
/// that matches (`*` matches anything, `\` escapes `:` and `\`).
fn passfile_lookup(text: &str, want: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = vec![String::new()];
        let mut chars = line.chars();
        while let Some(ch) = chars.next() {
            match ch {
                '\\' => {
                    if let (Some(next), Some(field)) = (chars.next(), fields.last_mut()) {
                        field.push(next);
                    }
                }
                ':' if fields.len() < 5 => fields.push(String::new()),
                _ => {
                    if let Some(field) = fields.last_mut() {
                        field.push(ch);
                    }
                }
            }
        }
        if fields.len() != 5 {
            continue;
        }
        if fields[..4].iter().zip(want).all(|(pattern, value)| pattern == "*" || pattern == value) {
            return fields.pop();
        }
    }
    None
}

/// The server address(es) for messages.
fn target(config: &Config) -> String {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let hosts: Vec<String> = if config.get_hosts().is_empty() {
        config.get_hostaddrs().iter().enumerate().map(|(i, a)| format!("{a}:{}", port(i))).collect()
    } else {
        config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| match h {
                Host::Tcp(h) => format!("{h}:{}", port(i)),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), port(i)),
            })
            .collect()
    };
    hosts.join(", ")
}

/// The data source without its password: `user:***@` in the authority (as everywhere in
/// ferry) and `password=***` in the query string.
pub fn redact(data_source: &str) -> String {
    let redacted = ferry_core::domain::redact_url(data_source);
    let Some((base, query)) = redacted.split_once('?') else {
        return redacted;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

// ---- errors ----

/// What went wrong inside a call, before the data source is attached.
enum Failure {
    /// Making a connection failed.
    Connect(tokio_postgres::Error),
    Sql(tokio_postgres::Error),
    Corrupt(CorruptRow),
    Schema(SchemaProblem),
    Store(StoreError),
    /// The row kept changing under a take (only while the table is being reset).
    Busy(String),
    PoolClosed,
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Sql(e)
    }
}

impl From<CorruptRow> for Failure {
    fn from(e: CorruptRow) -> Self {
        Failure::Corrupt(e)
    }
}

impl Failure {
    fn into_store_error(self, names: &Names) -> StoreError {
        let data_source = &names.data_source;
        let unavailable = |problem: PgProblem| StoreError::Unavailable {
            data_source: data_source.clone(),
            source: Box::new(problem),
        };
        match self {
            Failure::Store(e) => e,
            Failure::Schema(problem) => problem.into_store_error(data_source, SCHEMA_VERSION),
            Failure::Corrupt(e) => unavailable(PgProblem::Corrupt(e)),
            Failure::Busy(name) => unavailable(PgProblem::Busy { name }),
            Failure::PoolClosed => unavailable(PgProblem::PoolClosed),
            Failure::Connect(e) => {
                let user = names.user.clone();
                let target = names.target.clone();
                if let Some(failure) = tls::failure(&e) {
                    let root = names.root_cert.clone().unwrap_or_else(|| "(none)".to_string());
                    return unavailable(match failure {
                        tls::TlsFailure::NotOffered => PgProblem::TlsNotOffered { target },
                        tls::TlsFailure::Untrusted => PgProblem::CertUntrusted { target, root, source: e },
                        tls::TlsFailure::WrongHost => PgProblem::CertWrongHost { target, source: e },
                        tls::TlsFailure::Refused => PgProblem::CertRefused { target, source: e },
                        tls::TlsFailure::Handshake => PgProblem::Tls { target, source: e },
                    });
                }
                match e.code() {
                    Some(c)
                        if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
                    {
                        unavailable(PgProblem::Auth { user, source: e })
                    }
                    Some(c) if *c == SqlState::INVALID_CATALOG_NAME => StoreError::Schema {
                        data_source: data_source.clone(),
                        detail: format!(
                            "database {db:?} does not exist; create it (`createdb --owner \
                             {user} {db}`) and run `ferry leasing init --data-source \
                             {data_source}`",
                            db = names.database,
                        ),
                    },
                    Some(_) => unavailable(PgProblem::Refused { target: names.target.clone(), source: e }),
                    None if is_password_missing(&e) => unavailable(PgProblem::NoPassword { user, source: e }),
                    None => unavailable(PgProblem::Connect { target: names.target.clone(), source: e }),
                }
            }
            Failure::Sql(e) => match e.code() {
                Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::UNDEFINED_COLUMN => {
                    let message = e.as_db_error().map(|d| d.message()).unwrap_or_default();
                    rules::malformed(data_source, message)
                }
                // The server's `statement_timeout` equals the call timeout.
                Some(c) if *c == SqlState::QUERY_CANCELED || *c == SqlState::LOCK_NOT_AVAILABLE => {
                    StoreError::Timeout { data_source: data_source.clone(), timeout_ms: names.timeout_ms }
                }
                Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
                    unavailable(PgProblem::Privilege { user: names.user.clone(), source: e })
                }
                Some(c) if *c == SqlState::READ_ONLY_SQL_TRANSACTION => {
                    unavailable(PgProblem::ReadOnly { target: names.target.clone(), source: e })
                }
                None if e.is_closed() || is_transport(&e) => {
                    unavailable(PgProblem::Lost { target: names.target.clone(), source: e })
                }
                _ => unavailable(PgProblem::Query(e)),
            },
        }
    }
}

/// Whether tokio-postgres failed to talk to the server (rather than the server refusing
/// the query): it has no public kind for this, only its message.
fn is_transport(e: &tokio_postgres::Error) -> bool {
    e.to_string() == "error communicating with the server"
}

/// tokio-postgres reports a password the server asked for and nobody gave as a
/// configuration error with this text.
fn is_password_missing(e: &tokio_postgres::Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.to_string() == "password missing")
}

/// Why the PostgreSQL lease table could not answer: the source of `StoreError::Unavailable`.
#[derive(Debug, thiserror::Error)]
enum PgProblem {
    #[error(
        "the data source is not a valid PostgreSQL URL; use \
         postgres://USER@HOST:PORT/DATABASE"
    )]
    Url(#[source] tokio_postgres::Error),
    #[error(
        "sslmode={value} is not known; use disable, allow, prefer (the default), require, \
         verify-ca or verify-full"
    )]
    SslModeUnknown { value: String },
    #[error(
        "sslrootcert=system (the operating system's trusted roots) is not supported; give the \
         path of a PEM file holding the CA certificate(s) that signed the server's certificate"
    )]
    RootCertSystem,
    #[error(
        "sslmode={mode} checks the server's certificate, but no root certificate was given; \
         set sslrootcert=PATH in the data source or PGSSLROOTCERT, or put the CA certificate \
         in ~/.postgresql/root.crt (sslmode=require encrypts without checking)"
    )]
    NoRootCert { mode: &'static str },
    #[error(
        "cannot read the root certificate file {path}; check the path (sslrootcert in the \
         data source, PGSSLROOTCERT or ~/.postgresql/root.crt) and its permissions"
    )]
    RootCertUnreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the root certificate file {path} holds no usable PEM certificate; it must hold the \
         CA certificate(s) that signed the server's certificate, in PEM"
    )]
    RootCertInvalid {
        path: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("cannot set up TLS")]
    TlsSetup(#[source] rustls::Error),
    #[error(
        "the PostgreSQL server at {target} does not offer TLS, which the data source requires \
         (sslmode=require, verify-ca or verify-full); turn ssl on in the server's \
         postgresql.conf, or use sslmode=prefer to allow plain connections"
    )]
    TlsNotOffered { target: String },
    #[error(
        "the certificate of the PostgreSQL server at {target} is not trusted: no certificate \
         in the root certificate file {root} issued it; put the CA certificate that signed \
         the server's certificate in that file, or name the right file (sslrootcert=PATH in \
         the data source, PGSSLROOTCERT)"
    )]
    CertUntrusted {
        target: String,
        root: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "the certificate of the PostgreSQL server at {target} is not valid for that host \
         name; connect by a name the certificate lists, or use sslmode=verify-ca to check \
         the issuer only"
    )]
    CertWrongHost {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "the certificate of the PostgreSQL server at {target} was refused; if it has expired \
         or is not valid yet, renew it or check this machine's clock"
    )]
    CertRefused {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the TLS handshake with the PostgreSQL server at {target} failed")]
    Tls {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "cannot connect to the PostgreSQL server at {target}; check that it runs and \
         accepts connections there"
    )]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the PostgreSQL server at {target} refused the connection")]
    Refused {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "authentication failed for user {user}; check the user and password (in the data \
         source, PGPASSWORD or the password file) and the server's pg_hba.conf"
    )]
    Auth {
        user: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "the server asks for a password for user {user} and none was given; put it in the \
         data source, PGPASSWORD or the password file (~/.pgpass)"
    )]
    NoPassword {
        user: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "the PostgreSQL server at {target} is read-only (a standby?); point the data source \
         at the primary, or list every host and add target_session_attrs=read-write"
    )]
    ReadOnly {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "user {user} lacks a privilege on the lease table; grant it SELECT, INSERT and \
         UPDATE on ferry_leases and SELECT on ferry_schema (`ferry leasing init` also needs \
         CREATE on the schema), or let a DBA run schema/postgres.sql"
    )]
    Privilege {
        user: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("lost the connection to the PostgreSQL server at {target}")]
    Lost {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("query failed")]
    Query(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Corrupt(CorruptRow),
    #[error("the row of {name} kept changing while it was being taken; try again")]
    Busy { name: String },
    #[error("the connection pool is closed")]
    PoolClosed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://ferry:s3cret@db:5432/ferry"), "postgres://ferry:***@db:5432/ferry");
        assert_eq!(
            redact("postgresql://db/ferry?user=ferry&password=s3cret&sslmode=disable"),
            "postgresql://db/ferry?user=ferry&password=***&sslmode=disable"
        );
        assert_eq!(redact("postgres://ferry@db/ferry"), "postgres://ferry@db/ferry");
    }

    #[test]
    fn password_file_lines_match_like_libpq() {
        let file = "# comment\n\
                    other:5432:*:ferry:wrong\n\
                    db:5432:ferry:ferry:pa\\:ss\\\\word\n\
                    *:*:*:*:fallback\n";
        assert_eq!(passfile_lookup(file, ["db", "5432", "ferry", "ferry"]).as_deref(), Some("pa:ss\\word"));
        assert_eq!(passfile_lookup(file, ["db2", "5433", "x", "y"]).as_deref(), Some("fallback"));
        assert_eq!(passfile_lookup("a:b:c\n", ["a", "b", "c", "d"]), None);
    }

    #[test]
    fn urls_that_cannot_work_are_refused_before_connecting() {
        let options = PostgresOptions::new(Duration::from_secs(1));
        let refused = |url: &str| Pool::new(url, &options).err().map(|e| chain(&e)).unwrap_or_default();
        let text = refused("postgres://u:s3cret@db:notaport/x");
        assert!(text.contains("not a valid PostgreSQL URL"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        let text = refused("postgres://u:s3cret@db/x?sslmode=verify");
        assert!(text.contains("sslmode=verify is not known"), "{text}");
        assert!(text.contains("postgres://u:***@db/x?sslmode=verify"), "{text}");
        let text = refused("postgres://u:s3cret@db/x?sslmode=verify-full");
        assert!(text.contains("sslmode=verify-full checks the server's certificate"), "{text}");
        assert!(text.contains("sslrootcert=PATH") && text.contains("PGSSLROOTCERT"), "{text}");
        let text = refused("postgres://u:s3cret@db/x?sslmode=require&sslrootcert=/no/such/ca.pem");
        assert!(text.contains("cannot read the root certificate file /no/such/ca.pem"), "{text}");
        let text = refused("postgres://db/x?sslmode=verify-full&sslrootcert=system");
        assert!(text.contains("sslrootcert=system"), "{text}");
        let text = refused("postgres://db/x?sslcert=/client.pem");
        assert!(text.contains("unknown option `sslcert`"), "{text}");
        for url in ["postgres://u:pw@db/x?sslmode=require", "postgres://u:pw@db/x?sslmode=disable"] {
            assert!(Pool::new(url, &options).is_ok(), "{url}");
        }
        // The root certificate of the options is checked when TLS needs it.
        let options = PostgresOptions { ssl_root_cert: Some("/no/such/root.crt".into()), ..options };
        let text =
            Pool::new("postgres://db/x?sslmode=verify-ca", &options).err().map(|e| chain(&e)).unwrap_or_default();
        assert!(text.contains("/no/such/root.crt"), "{text}");
        // Unix sockets never use TLS, as with libpq: nothing to check, no root file needed.
        let pool = Pool::new("postgres:///x?host=/run/postgresql&sslmode=verify-full", &options).ok();
        assert!(pool.is_some_and(|p| matches!(p.transport, Transport::Plain) && !p.unverified));
    }

    #[tokio::test]
    async fn sessions_over_tls_are_encrypted_and_verified() {
        let Some(pg) = ferry_testkit::PgServer::start_with_tls_or_skip() else {
            return;
        };
        let Some(ca) = pg.ca_cert_path() else {
            panic!("a TLS test server has a CA");
        };
        let options = PostgresOptions { ssl_root_cert: Some(ca), ..PostgresOptions::new(Duration::from_secs(10)) };
        let store =
            PostgresStore::open_with(&format!("{}?sslmode=require", pg.url()), options).await.expect("open over TLS");
        assert!(!store.pool.unverified);
        let Ok(lent) = store.pool.lend(Check::Nothing).await else {
            panic!("no connection from the pool");
        };
        let Ok(c) = lent.client() else {
            panic!("the lent connection is gone");
        };
        let row = c
            .query_one("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .expect("pg_stat_ssl");
        assert!(row.get::<_, bool>(0), "the store's own session is not encrypted");
        let version: String = row.get(1);
        assert!(version.starts_with("TLSv1.") && version != "TLSv1.1", "{version}");
    }

    #[test]
    fn sql_is_spelt_for_the_partial_index() {
        // The planner uses `ferry_leases_held_expiry` only if the query repeats its
        // predicate literally; tests/postgres.rs checks the plans on a real server.
        assert!(EXPIRED_SQL.contains("state = 'held' AND expires_at <= now()"));
        assert!(NEXT_EXPIRY_SQL.contains("state = 'held' AND expires_at > now()"));
        assert!(LIST_SQL.ends_with("ORDER BY name COLLATE \"C\""));
    }

    #[tokio::test]
    async fn sessions_keep_synchronous_commit_on_and_bound_every_statement() {
        let Some(pg) = ferry_testkit::PgServer::start_or_skip() else {
            return;
        };
        pg.execute("ALTER DATABASE ferry SET synchronous_commit = off")
            .await
            .expect("turn synchronous commit off for the database");
        // A plain session sees the database's setting, so the check below means something.
        let plain = pg.client().await.expect("client");
        assert_eq!(show(&plain, "synchronous_commit").await, "off");

        let store = PostgresStore::open(&pg.url(), Duration::from_millis(1500)).await.expect("open");
        let Ok(lent) = store.pool.lend(Check::Nothing).await else {
            panic!("no connection from the pool");
        };
        let Ok(c) = lent.client() else {
            panic!("the lent connection is gone");
        };
        assert_eq!(show(c, "synchronous_commit").await, "on");
        assert_eq!(show(c, "statement_timeout").await, "1500ms");
        assert_eq!(show(c, "idle_in_transaction_session_timeout").await, "1500ms");
        assert_eq!(show(c, "application_name").await, "ferry");
    }

    #[tokio::test]
    async fn a_large_batch_probes_the_primary_key() {
        let Some(pg) = ferry_testkit::PgServer::start_or_skip() else {
            return;
        };
        let store = PostgresStore::open_and_init(&pg.url(), Duration::from_secs(10)).await.expect("open");
        pg.execute(
            "INSERT INTO ferry_leases
                 SELECT 'server/s' || i, 's' || i, 'm', 'i' || i, 1, 'held',
                        now() + interval '1 hour', now()
                 FROM generate_series(1, 100000) i;
             ANALYZE ferry_leases;",
        )
        .await
        .expect("fill the table");
        // A batch of 1% of the table (a Node Manager's renewals of a few milliseconds).
        let names: Vec<String> = (1..=1000).map(|i| format!("server/s{}", i * 100)).collect();
        let c = pg.client().await.expect("client");
        c.batch_execute(BEGIN_MANY_SQL).await.expect("begin");
        for (sql, params) in [
            (LOCK_MANY_SQL, vec![(&names as &(dyn ToSql + Sync), Type::TEXT_ARRAY)]),
            (
                RENEW_MANY_SQL,
                vec![(&names as &(dyn ToSql + Sync), Type::TEXT_ARRAY), (&1i64, Type::INT8), (&2i64, Type::INT8)],
            ),
        ] {
            let plan: Vec<String> = c
                .query_typed(&format!("EXPLAIN {sql}"), &params)
                .await
                .expect("explain")
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect();
            let plan = plan.join("\n");
            assert!(plan.contains("ferry_leases_pkey"), "{sql}\n{plan}");
            assert!(!plan.contains("Seq Scan"), "{sql}\n{plan}");
        }
        c.batch_execute("ROLLBACK").await.expect("rollback");
        drop(store);
    }

    async fn show(c: &Client, what: &str) -> String {
        let rows = c.simple_query(&format!("SHOW {what}")).await.expect("show");
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .expect("a value")
    }

    fn chain(e: &StoreError) -> String {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}
