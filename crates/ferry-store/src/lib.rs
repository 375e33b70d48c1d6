//! ferry-store: the lease table (DESIGN §3). The [`LeaseStore`] trait and its SQLite and
//! PostgreSQL implementations. The conformance suite every implementation must pass, and
//! the private PostgreSQL servers its tests run against, are test support and live in
//! ferry-testkit (`ferry_testkit::conformance`, `ferry_testkit::PgServer`).
//!
//! **Architecture Invariant:** expiry is decided by the store's own clock (rule 1). No method
//! takes a timestamp from the caller; every row read comes back with `remaining_ms` computed
//! by the store at the moment of the read.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::domain::redact_url;
use ferry_core::lease::Lease;
use ferry_core::{Epoch, Incarnation, LeaseName, MachineName, ServerName};

pub mod lazy;
pub mod postgres;
pub mod rules;
pub mod sqlite;

pub use lazy::open_lazy;

/// What a holder asks for when it takes a lease.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AcquireRequest {
    pub name: LeaseName,
    pub owner: ServerName,
    pub machine: MachineName,
    pub incarnation: Incarnation,
    pub ttl: Duration,
}

/// One renewal of a batch ([`LeaseStore::renew_many`]): the arguments of
/// [`LeaseStore::renew`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Renewal {
    pub name: LeaseName,
    pub incarnation: Incarnation,
    pub epoch: Epoch,
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else holds a live lease.
    #[error("lease {name} is held by {owner} on {machine} (epoch {epoch}, {remaining_ms} ms left)")]
    Held { name: LeaseName, owner: String, machine: String, epoch: Epoch, remaining_ms: i64 },
    /// The caller's incarnation or epoch no longer holds the lease (renew, release, handover).
    #[error("lease {name} is no longer held by incarnation {incarnation}: {detail}")]
    Lost { name: LeaseName, incarnation: Incarnation, detail: String },
    /// The store could not be reached or failed; the call may succeed later.
    #[error("lease table at {data_source} is unavailable")]
    Unavailable {
        data_source: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The call did not finish within the store's call timeout (rule 7). Its outcome is
    /// unknown: the change may still have been made. Retrying is safe, since acquire,
    /// handover, renew and release by the same incarnation are idempotent.
    #[error("lease table at {data_source} did not answer within {timeout_ms} ms")]
    Timeout { data_source: String, timeout_ms: u64 },
    /// The table is missing or of another version. `detail` says what to do (for a missing
    /// table: run `ferry leasing init --data-source URL`).
    #[error("lease table at {data_source}: {detail}")]
    Schema { data_source: String, detail: String },
}

impl StoreError {
    /// True when the answer says nothing about ownership (retry may help).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. } | StoreError::Timeout { .. })
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub use ferry_core::chain;

/// A lease table. Every method is atomic; every change of owner or incarnation bumps the
/// row's epoch (the fencing token), and epochs never go backwards, even across release.
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes the lease if it is absent, released, or expired by the store's clock. A new row
    /// starts at epoch 1; taking an existing row bumps its epoch. Taking a lease the same
    /// incarnation (same owner and machine) already holds live renews it and keeps its epoch
    /// (a retried acquire whose first answer was lost); once it has expired, taking it again
    /// bumps the epoch like any other owner change. Otherwise fails with `Held`.
    async fn acquire(&self, req: &AcquireRequest) -> Result<Lease>;

    /// Rule 4: takes the lease from `from`, an incarnation the caller's Node Manager saw
    /// exit, without waiting for it to expire. Fails with `Lost` if the row's incarnation is
    /// not `from` (someone else took it meanwhile); succeeds like `acquire` if the lease is
    /// free anyway. A retried handover whose first answer was lost (the row is held live by
    /// the request's own incarnation) succeeds without a second epoch bump.
    async fn handover(&self, req: &AcquireRequest, from: &Incarnation) -> Result<Lease>;

    /// Extends the lease by `ttl` from the store's now. Fails with `Lost` unless the row is
    /// held, unexpired, by `incarnation` at `epoch`.
    async fn renew(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch, ttl: Duration) -> Result<Lease>;

    /// Renews several leases in one call, each exactly as [`LeaseStore::renew`] would: the
    /// answer holds one outcome per renewal, in the order given, and each outcome is that
    /// lease's own (`Ok` with the renewed lease, or `Lost` with the detail `renew` gives),
    /// decided by the store's clock at the moment its row is locked. One refusal does not
    /// affect the others; no epoch changes. A name given twice is renewed twice, in order.
    ///
    /// The outer error means the call as a whole failed (`Timeout`, `Unavailable`): as with a
    /// `renew` that timed out, any of the renewals may or may not have been made. A holder
    /// that computed its deadline from its own send instant before handing its renewal to the
    /// batch keeps a valid deadline (rule 2): the store's now is later than that instant.
    ///
    /// The default calls `renew` for each in turn (each bounded by the call timeout, so the
    /// whole call is not); the SQL stores override it with one transaction.
    async fn renew_many(&self, renewals: &[Renewal]) -> Result<Vec<Result<Lease>>> {
        let mut out = Vec::with_capacity(renewals.len());
        for r in renewals {
            out.push(self.renew(&r.name, &r.incarnation, r.epoch, r.ttl).await);
        }
        Ok(out)
    }

    /// Gives the lease back (marks the row released; the epoch, owner and machine stay).
    /// Fails with `Lost` unless the row is `incarnation`'s at `epoch`: held (live or expired
    /// but not yet taken) or already released by it (a retried release succeeds).
    async fn release(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch) -> Result<()>;

    /// One lease, if its row exists.
    async fn get(&self, name: &LeaseName) -> Result<Option<Lease>>;

    /// Every row, ordered by name: the bytewise order of the `server/ms1` form (in
    /// PostgreSQL, `ORDER BY name COLLATE "C"`).
    async fn list(&self) -> Result<Vec<Lease>>;

    /// Held leases whose expiry has passed by the store's clock (`remaining_ms <= 0`), oldest
    /// expiry first; released rows are never listed. Its cost follows the number of expired
    /// leases, not of all leases (an index on the expiry).
    async fn expired(&self) -> Result<Vec<Lease>>;

    /// Milliseconds (by the store's clock) until the next live lease expires, or `None` when
    /// no live lease is held (leases already expired are not counted). Lets the cluster master look at the table at the instant a lease
    /// runs out instead of up to a scan interval later. Implementations answer from the
    /// expiry index; the default reads the whole table.
    async fn next_expiry_ms(&self) -> Result<Option<i64>> {
        let leases = self.list().await?;
        Ok(leases.iter().filter(|l| l.is_live()).map(|l| l.remaining_ms).min())
    }

    /// The cluster master's look at the table: the held leases that expired after `since`
    /// (a cursor from an earlier scan's answer; [`ScanCursor::FULL`] for all of them), plus
    /// the rows named in `tracked` whatever their state, plus the next expiry.
    ///
    /// Why a cursor: every renewal moves a lease's indexed expiry, so a database with
    /// multi-version rows keeps, until its vacuum runs, an index entry for each renewal's old
    /// expiry, all in the past. A scan of "everything expired" steps over every one of them,
    /// and its cost grows with the renewal rate times the time since the last vacuum. A scan
    /// from the cursor looks only at the expiries that passed since the previous scan (less
    /// [`SCAN_OVERLAP_MS`]); the leases that expired before are the master's own business,
    /// named in `tracked`. Implementations without the index answer a full scan (and a
    /// cursor that asks for one again).
    async fn scan(&self, since: ScanCursor, tracked: &[LeaseName]) -> Result<Scan> {
        let _ = since;
        let mut leases = self.expired().await?;
        for name in tracked {
            if !leases.iter().any(|l| &l.name == name) {
                if let Some(l) = self.get(name).await? {
                    leases.push(l);
                }
            }
        }
        let next_expiry_ms = self.next_expiry_ms().await?;
        Ok(Scan { leases, next_expiry_ms, cursor: ScanCursor::FULL })
    }

    /// The data source, without any password, for messages.
    fn describe(&self) -> String;
}

/// Where the next [`LeaseStore::scan`] starts: the store's clock (ms since the epoch) at an
/// earlier scan, or none for a full scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanCursor(Option<i64>);

impl ScanCursor {
    /// Every expired lease.
    pub const FULL: ScanCursor = ScanCursor(None);

    /// The cursor of a scan whose store clock read `now_ms`.
    pub fn at(now_ms: i64) -> ScanCursor {
        ScanCursor(Some(now_ms))
    }

    /// The lowest expiry (exclusive, store ms) the next scan reads, if it is not a full one.
    pub fn floor_ms(self) -> Option<i64> {
        self.0.map(|ms| ms - SCAN_OVERLAP_MS)
    }

    pub fn is_full(self) -> bool {
        self.0.is_none()
    }
}

/// How far back behind its cursor an incremental scan reads: a write that read the clock
/// before the previous scan but committed after it can only have set an expiry this much
/// in the past if its transaction ran for its whole TTL, past the holder's own deadline
/// (the holder has fenced itself by then). The cluster master's periodic full scan catches
/// even that.
pub const SCAN_OVERLAP_MS: i64 = 1_000;

/// The answer of [`LeaseStore::scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Expired held leases in the window, oldest expiry first, then the tracked rows.
    pub leases: Vec<Lease>,
    /// Milliseconds until the next live lease expires (see [`LeaseStore::next_expiry_ms`]).
    pub next_expiry_ms: Option<i64>,
    /// Where the next scan starts.
    pub cursor: ScanCursor,
}

/// The call timeout for the one-off administrative calls (`ferry leasing init|reset`).
pub const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens the lease table named by `data_source` (`sqlite://PATH` or a bare path,
/// `postgres://...` or `postgresql://...`). Does not create the table: the first call
/// reports a `Schema` error if it is missing. Opening itself is bounded by `call_timeout`
/// too (rule 7); for PostgreSQL it makes the first connection, so a wrong address, user,
/// password or database is reported here.
pub async fn open(data_source: &str, call_timeout: Duration) -> Result<Arc<dyn LeaseStore>> {
    Ok(match open_backend(data_source, call_timeout).await? {
        Opened::Sqlite(store) => Arc::new(store),
        Opened::Postgres(store) => Arc::new(store),
    })
}

/// Opens the lease table and creates it if it is absent: what the daemons do at start.
pub async fn open_and_init(data_source: &str, call_timeout: Duration) -> Result<Arc<dyn LeaseStore>> {
    Ok(match open_backend(data_source, call_timeout).await? {
        Opened::Sqlite(store) => {
            store.init().await?;
            Arc::new(store)
        }
        Opened::Postgres(store) => {
            store.init().await?;
            Arc::new(store)
        }
    })
}

/// What `init` found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// The lease table is there at this build's version (created now, or already).
    Ready,
    /// The table was at an older version and was upgraded in place, every lease kept: a
    /// ferry that reads only the older version refuses it from now on.
    Upgraded { from: i64, to: i64 },
}

/// `ferry leasing init --data-source URL`: creates the lease table if absent (idempotent),
/// upgrades an older version that this build upgrades in place; fails with `Schema` if a
/// table of another version is there.
pub async fn init(data_source: &str) -> Result<Prepared> {
    match open_backend(data_source, ADMIN_CALL_TIMEOUT).await? {
        Opened::Sqlite(store) => store.init().await.map(|()| Prepared::Ready),
        Opened::Postgres(store) => store.init().await,
    }
}

/// What the lease table's database lacks for rule 8 (durable writes across a failover), if
/// anything: PostgreSQL without a synchronous standby. `None` for SQLite (one file, synced).
pub async fn durability_warning(data_source: &str) -> Result<Option<String>> {
    match open_backend(data_source, ADMIN_CALL_TIMEOUT).await? {
        Opened::Sqlite(_) => Ok(None),
        Opened::Postgres(store) => store.durability_warning().await,
    }
}

/// `ferry leasing reset --data-source URL`: drops the lease table and creates it empty.
/// Every lease is forgotten, so epochs restart at 1: only for a cluster that is stopped.
pub async fn reset(data_source: &str) -> Result<()> {
    match open_backend(data_source, ADMIN_CALL_TIMEOUT).await? {
        Opened::Sqlite(store) => store.reset().await,
        Opened::Postgres(store) => store.reset().await,
    }
}

/// An opened lease table, by backend (`init` and `reset` are not part of the trait).
enum Opened {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PostgresStore),
}

async fn open_backend(data_source: &str, call_timeout: Duration) -> Result<Opened> {
    Ok(match backend(data_source)? {
        Backend::Sqlite => Opened::Sqlite(sqlite::SqliteStore::open_bounded(data_source, call_timeout).await?),
        Backend::Postgres => Opened::Postgres(postgres::PostgresStore::open(data_source, call_timeout).await?),
    })
}

/// [`open`] for a store used from now on whatever happens (the lazy store): a PostgreSQL
/// store is handed back even when its first connection was not made within the call
/// timeout, since that connection goes on being made and the next call uses it.
pub(crate) async fn open_patient(data_source: &str, call_timeout: Duration) -> Result<Arc<dyn LeaseStore>> {
    Ok(match backend(data_source)? {
        Backend::Sqlite => Arc::new(sqlite::SqliteStore::open_bounded(data_source, call_timeout).await?),
        Backend::Postgres => {
            let options =
                postgres::PostgresOptions { patient_open: true, ..postgres::PostgresOptions::new(call_timeout) };
            Arc::new(postgres::PostgresStore::open_with(data_source, options).await?)
        }
    })
}

/// The lease table implementations this build knows.
enum Backend {
    Sqlite,
    Postgres,
}

/// Why a data source was refused before any connection was tried.
#[derive(Debug, thiserror::Error)]
enum DataSourceError {
    #[error(
        "unknown data source scheme `{scheme}://`; use sqlite://PATH or \
         postgres://USER@HOST:PORT/DATABASE"
    )]
    UnknownScheme { scheme: String },
}

fn backend(data_source: &str) -> Result<Backend> {
    let refuse =
        |e: DataSourceError| StoreError::Unavailable { data_source: redact_url(data_source), source: Box::new(e) };
    match data_source.split_once("://") {
        None => Ok(Backend::Sqlite),
        Some(("sqlite", _)) => Ok(Backend::Sqlite),
        Some(("postgres" | "postgresql", _)) => Ok(Backend::Postgres),
        Some((scheme, _)) => Err(refuse(DataSourceError::UnknownScheme { scheme: scheme.to_string() })),
    }
}

/// Runs blocking set-up work (opening a file) on the blocking pool, bounded by `timeout`.
pub(crate) async fn off_runtime<T: Send + 'static>(
    data_source: &str,
    timeout: Duration,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(StoreError::Unavailable { data_source: redact_url(data_source), source: Box::new(join) }),
        Err(_elapsed) => Err(StoreError::Timeout {
            data_source: redact_url(data_source),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_postgres_is_reported_without_the_password() {
        // Port 1 on the loopback: nothing listens there, so the connection is refused.
        let err = open("postgres://u:pw@127.0.0.1:1/ferry", Duration::from_secs(5)).await.err();
        let text =
            err.map(|e| format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()));
        let text = text.unwrap_or_default();
        assert!(text.contains("cannot connect"), "{text}");
        assert!(text.contains("postgres://u:***@127.0.0.1:1/ferry"), "{text}");
        assert!(!text.contains("pw"), "{text}");
    }
}
