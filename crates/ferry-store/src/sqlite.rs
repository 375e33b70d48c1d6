//! The SQLite lease table: one file shared by every ferry process on a host (or on a
//! shared disk), the zero-setup data source for demos and small clusters.
//!
//! Why it is built this way (DESIGN §3):
//! - **Rule 1, the store's clock:** every state change reads "now" from SQLite
//!   (`julianday('now')`) inside its own write transaction and decides expiry from it; no
//!   method takes a timestamp from the caller.
//! - **Rule 7, bounded calls:** the rusqlite work runs on the blocking pool under
//!   `tokio::time::timeout(call_timeout)`, and a busy file is waited for until the call's own
//!   deadline (counted from the call, the wait for the connection included) and not a moment
//!   longer, so a locked or slow file answers `Timeout` at the deadline: never "database is
//!   locked" while the caller's timeout has time left, and no work left running after it.
//! - **Renewals first:** a writer waiting for the file polls for it (SQLite's own
//!   `busy_timeout` backs off to 100 ms sleeps, so a busy writer in a tight loop, a mass
//!   start, starves a waiting renewal batch of another process to its timeout). Renewals
//!   poll every 200 µs, everything else every 2 ms: when the lock comes free, a waiting
//!   renewal is almost always the one that takes it (issue 11). The connection sits behind an async mutex: callers queue
//!   without occupying blocking threads, and a call that outlives its caller holds at most
//!   one blocking thread (it finishes, or fails at the busy timeout, in the background; its
//!   caller has already been told `Timeout`, which means "outcome unknown").
//! - **Rule 8, durable writes:** WAL journal with `synchronous=FULL`.
//! - **Several processes, one file:** each state change is one `BEGIN IMMEDIATE`
//!   transaction (read the row, decide, write the whole row), so SQLite's write lock
//!   serialises changes across processes and no two of them can both bump an epoch.
//! - **Batched renewals:** [`LeaseStore::renew_many`] is one `BEGIN IMMEDIATE` transaction
//!   (one fsync) that decides each renewal with `rules::renew` against the store's clock,
//!   in the order given.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::time::Mono;
use ferry_host::clock;

use ferry_core::lease::Lease;
use ferry_core::{Epoch, Incarnation, LeaseName};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::rules::{self, CorruptRow, Refusal, Row, SchemaProblem, Take, Version};
use crate::{AcquireRequest, LeaseStore, Renewal, Result, Scan, ScanCursor, StoreError};

/// The DDL `ferry leasing init` runs; idempotent.
pub const SCHEMA_SQL: &str = include_str!("../schema/sqlite.sql");

/// The version `SCHEMA_SQL` writes into `ferry_schema` and the only one this build reads.
pub const SCHEMA_VERSION: i64 = 1;

/// The store's clock in Unix milliseconds, evaluated by SQLite.
const NOW_MS_SQL: &str = "SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

const COLUMNS: &str = "name, owner, machine, incarnation, epoch, state, expires_at_ms, renewed_at_ms";

/// A lease table in one SQLite file.
pub struct SqliteStore {
    conn: Arc<tokio::sync::Mutex<Conn>>,
    /// `sqlite://` and the absolute path: what `--data-source` accepts from any directory.
    data_source: Arc<str>,
    call_timeout: Duration,
}

struct Conn {
    db: Connection,
    /// Whether `ferry_schema` has been seen at [`SCHEMA_VERSION`] through this connection.
    schema_checked: bool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("data_source", &self.data_source)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the file named by `sqlite://PATH` or a bare `PATH`, and
    /// its parent directories. Does not create the lease table: the first call then fails
    /// with `Schema`. Blocks for at most about `call_timeout` (the busy timeout); async
    /// callers should use [`SqliteStore::open_bounded`] or [`crate::open`], which run this
    /// on the blocking pool.
    pub fn open(url_or_path: &str, call_timeout: Duration) -> Result<SqliteStore> {
        let raw = url_or_path.strip_prefix("sqlite://").unwrap_or(url_or_path);
        let unavailable =
            |data_source: String, e: SetupError| StoreError::Unavailable { data_source, source: Box::new(e) };
        if let Some((scheme, _)) = raw.split_once("://") {
            let scheme = scheme.to_string();
            return Err(unavailable(ferry_core::domain::redact_url(url_or_path), SetupError::NotSqlite { scheme }));
        }
        if raw.is_empty() {
            return Err(unavailable(url_or_path.to_string(), SetupError::EmptyPath));
        }
        let path = std::path::absolute(raw).map_err(|source| {
            unavailable(url_or_path.to_string(), SetupError::Path { path: PathBuf::from(raw), source })
        })?;
        let data_source = format!("sqlite://{}", path.display());
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| {
                unavailable(data_source.clone(), SetupError::CreateDir { path: parent.to_path_buf(), source })
            })?;
        }
        let db = within(clock::now() + call_timeout, Wait::OTHER, || connect(&path))
            .map_err(|source| unavailable(data_source.clone(), SetupError::Open { path: path.clone(), source }))?;
        Ok(SqliteStore {
            conn: Arc::new(tokio::sync::Mutex::new(Conn { db, schema_checked: false })),
            data_source: data_source.into(),
            call_timeout,
        })
    }

    /// [`SqliteStore::open`] then [`SqliteStore::init`]: the daemons create the table on
    /// first use.
    pub async fn open_and_init(url_or_path: &str, call_timeout: Duration) -> Result<SqliteStore> {
        let store = Self::open_bounded(url_or_path, call_timeout).await?;
        store.init().await?;
        Ok(store)
    }

    /// [`SqliteStore::open`] on the blocking pool, bounded by `call_timeout` (rule 7).
    pub async fn open_bounded(url_or_path: &str, call_timeout: Duration) -> Result<SqliteStore> {
        let owned = url_or_path.to_string();
        crate::off_runtime(url_or_path, call_timeout, move || Self::open(&owned, call_timeout)).await
    }

    /// Creates the lease table if it is absent (idempotent). Fails with `Schema` if a table
    /// of another version is there, without touching it.
    pub async fn init(&self) -> Result<()> {
        self.call(Check::Creates, |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            read_version(&tx)?.check_init(SCHEMA_VERSION).map_err(Failure::Schema)?;
            tx.execute_batch(SCHEMA_SQL)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Drops the lease table and creates it empty, whatever version it had. Every lease and
    /// epoch is forgotten: only for a stopped cluster.
    pub async fn reset(&self) -> Result<()> {
        self.call(Check::Creates, |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch("DROP TABLE IF EXISTS ferry_leases; DROP TABLE IF EXISTS ferry_schema;")?;
            tx.execute_batch(SCHEMA_SQL)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The call timeout this handle was opened with.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// Runs `work` on the blocking pool with the connection, within the call timeout.
    async fn call<T, F>(&self, check: Check, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    {
        self.call_waiting(check, Wait::OTHER, work).await
    }

    /// [`SqliteStore::call`], polling a busy file every `wait`.
    async fn call_waiting<T, F>(&self, check: Check, wait: Wait, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let deadline = clock::now() + self.call_timeout;
        let attempt = async move {
            // Waiting for the connection counts against the deadline but occupies no thread.
            let mut guard = conn.lock_owned().await;
            tokio::task::spawn_blocking(move || {
                let _wait = Waiting::until(deadline, wait);
                let conn = &mut *guard;
                if check == Check::Schema && !conn.schema_checked {
                    check_schema(&conn.db)?;
                    conn.schema_checked = true;
                }
                let value = work(&mut conn.db)?;
                if check == Check::Creates {
                    conn.schema_checked = true;
                }
                Ok::<T, Failure>(value)
            })
            .await
        };
        let timeout = || StoreError::Timeout {
            data_source: self.data_source.to_string(),
            timeout_ms: u64::try_from(self.call_timeout.as_millis()).unwrap_or(u64::MAX),
        };
        match tokio::time::timeout(self.call_timeout, attempt).await {
            Ok(Ok(Ok(value))) => Ok(value),
            // The file stayed locked until the deadline ([`busy`] gave up): the call timed
            // out, whether or not the runtime's timer has fired yet.
            Ok(Ok(Err(failure))) if failure.is_busy() => Err(timeout()),
            Ok(Ok(Err(failure))) => Err(failure.into_store_error(&self.data_source)),
            Ok(Err(join)) => {
                Err(StoreError::Unavailable { data_source: self.data_source.to_string(), source: Box::new(join) })
            }
            Err(_elapsed) => Err(timeout()),
        }
    }
}

/// How often a writer that finds the file locked looks again.
#[derive(Debug, Clone, Copy)]
struct Wait(Duration);

impl Wait {
    const RENEWAL: Wait = Wait(Duration::from_micros(200));
    const OTHER: Wait = Wait(Duration::from_millis(2));
}

thread_local! {
    /// The deadline and poll of the call this blocking thread runs (see [`busy`]).
    static WAITING: std::cell::Cell<Option<(Mono, Wait)>> = const { std::cell::Cell::new(None) };
}

/// Sets the deadline of the call on this thread for as long as it lives.
struct Waiting;

impl Waiting {
    fn until(deadline: Mono, wait: Wait) -> Waiting {
        WAITING.with(|w| w.set(Some((deadline, wait))));
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.with(|w| w.set(None));
    }
}

fn within<T>(deadline: Mono, wait: Wait, f: impl FnOnce() -> T) -> T {
    let _wait = Waiting::until(deadline, wait);
    f()
}

/// SQLite's busy handler: the file is locked by another writer; wait `poll` and try again
/// while the call's deadline allows, else give up (SQLITE_BUSY, which the call's own
/// timeout has already turned into `Timeout` for its caller). A connection used outside a
/// call (none is) gets no wait at all.
fn busy(_attempts: i32) -> bool {
    let Some((deadline, Wait(poll))) = WAITING.with(|w| w.get()) else { return false };
    let left = Duration::from_millis(deadline.0.saturating_sub(clock::now().0));
    if left.is_zero() {
        return false;
    }
    // SQLite calls this on the blocking thread that runs the call, never on the runtime.
    #[allow(clippy::disallowed_methods)]
    std::thread::sleep(poll.min(left));
    true
}

/// Opens the connection with the settings rules 7 and 8 need.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let db = Connection::open(path)?;
    db.busy_handler(Some(busy))?;
    let mode: String = db.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Still durable with synchronous=FULL, but writers block readers.
        tracing::warn!(path = %path.display(), mode, "the lease table file cannot use WAL");
    }
    db.pragma_update(None, "synchronous", "FULL")?;
    Ok(db)
}

#[async_trait::async_trait]
impl LeaseStore for SqliteStore {
    async fn acquire(&self, req: &AcquireRequest) -> Result<Lease> {
        let req = req.clone();
        self.call(Check::Schema, move |db| take(db, &req, Take::Acquire)).await
    }

    async fn handover(&self, req: &AcquireRequest, from: &Incarnation) -> Result<Lease> {
        let req = req.clone();
        let from = from.clone();
        self.call(Check::Schema, move |db| take(db, &req, Take::Handover(&from))).await
    }

    async fn renew(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch, ttl: Duration) -> Result<Lease> {
        let name = name.clone();
        let incarnation = incarnation.clone();
        self.call_waiting(Check::Schema, Wait::RENEWAL, move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = store_now_ms(&tx)?;
            let old = read_row(&tx, &name.to_string())?;
            let row = rules::renew(old, &name, &incarnation, epoch, ttl, now).map_err(Failure::Store)?;
            write_row(&tx, &row)?;
            tx.commit()?;
            Ok(row.to_lease(now)?)
        })
        .await
    }

    async fn renew_many(&self, renewals: &[Renewal]) -> Result<Vec<Result<Lease>>> {
        if renewals.is_empty() {
            return Ok(Vec::new());
        }
        let renewals = renewals.to_vec();
        let data_source = Arc::clone(&self.data_source);
        self.call_waiting(Check::Schema, Wait::RENEWAL, move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = store_now_ms(&tx)?;
            let mut outcomes = Vec::with_capacity(renewals.len());
            for r in &renewals {
                // A row that cannot be read is that lease's error, not the batch's.
                let corrupt = |e: CorruptRow| Failure::Corrupt(e).into_store_error(&data_source);
                let old = match read_row(&tx, &r.name.to_string()) {
                    Ok(old) => old,
                    Err(Failure::Corrupt(e)) => {
                        outcomes.push(Err(corrupt(e)));
                        continue;
                    }
                    Err(other) => return Err(other),
                };
                match rules::renew(old, &r.name, &r.incarnation, r.epoch, r.ttl, now) {
                    Ok(row) => match row.to_lease(now) {
                        Ok(lease) => {
                            write_row(&tx, &row)?;
                            outcomes.push(Ok(lease));
                        }
                        Err(e) => outcomes.push(Err(corrupt(e))),
                    },
                    Err(e) => outcomes.push(Err(e)),
                }
            }
            tx.commit()?;
            Ok(outcomes)
        })
        .await
    }

    async fn release(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch) -> Result<()> {
        let name = name.clone();
        let incarnation = incarnation.clone();
        self.call(Check::Schema, move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = store_now_ms(&tx)?;
            let old = read_row(&tx, &name.to_string())?;
            let Some(row) = rules::release(old, &name, &incarnation, epoch, now).map_err(Failure::Store)? else {
                // A retried release whose first answer was lost.
                return Ok(());
            };
            write_row(&tx, &row)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn get(&self, name: &LeaseName) -> Result<Option<Lease>> {
        let name = name.to_string();
        self.call(Check::Schema, move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let now = store_now_ms(&tx)?;
            match read_row(&tx, &name)? {
                Some(row) => Ok(Some(row.to_lease(now)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list(&self) -> Result<Vec<Lease>> {
        self.call(Check::Schema, |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let now = store_now_ms(&tx)?;
            let sql = format!("SELECT {COLUMNS} FROM ferry_leases ORDER BY name");
            read_rows(&tx, &sql, params![], now)
        })
        .await
    }

    async fn expired(&self) -> Result<Vec<Lease>> {
        self.call(Check::Schema, |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let now = store_now_ms(&tx)?;
            read_rows(&tx, EXPIRED_SQL, params![now], now)
        })
        .await
    }

    async fn next_expiry_ms(&self) -> Result<Option<i64>> {
        self.call(Check::Schema, |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let now = store_now_ms(&tx)?;
            let next: Option<i64> = tx.query_row(NEXT_EXPIRY_SQL, params![now], |r| r.get(0))?;
            Ok(next.map(|at| at - now))
        })
        .await
    }

    async fn scan(&self, since: ScanCursor, tracked: &[LeaseName]) -> Result<Scan> {
        let tracked = tracked.to_vec();
        self.call(Check::Schema, move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let now = store_now_ms(&tx)?;
            let mut leases = match since.floor_ms() {
                Some(floor) => read_rows(&tx, EXPIRED_SINCE_SQL, params![now, floor], now)?,
                None => read_rows(&tx, EXPIRED_SQL, params![now], now)?,
            };
            let sql = format!("SELECT {COLUMNS} FROM ferry_leases WHERE name = ?1");
            for name in &tracked {
                if !leases.iter().any(|l| &l.name == name) {
                    leases.extend(read_rows(&tx, &sql, params![name.to_string()], now)?);
                }
            }
            let next: Option<i64> = tx.query_row(NEXT_EXPIRY_SQL, params![now], |r| r.get(0))?;
            Ok(Scan { leases, next_expiry_ms: next.map(|at| at - now), cursor: ScanCursor::at(now) })
        })
        .await
    }

    fn describe(&self) -> String {
        self.data_source.to_string()
    }
}

/// The incremental expiry scan ([`LeaseStore::scan`]): expiries after the cursor's floor.
pub const EXPIRED_SINCE_SQL: &str = "SELECT name, owner, machine, incarnation, epoch, state, \
     expires_at_ms, renewed_at_ms FROM ferry_leases \
     WHERE state = 'held' AND expires_at_ms <= ?1 AND expires_at_ms > ?2 ORDER BY expires_at_ms, name";

/// The earliest expiry still to come of a held lease, from the same partial index as the
/// expiry scan.
pub const NEXT_EXPIRY_SQL: &str =
    "SELECT MIN(expires_at_ms) FROM ferry_leases WHERE state = 'held' AND expires_at_ms > ?1";

/// The expiry scan. `state = 'held'` is spelt literally so SQLite can use the partial index
/// on held rows' expiry (see `schema/sqlite.sql`).
pub const EXPIRED_SQL: &str = "SELECT name, owner, machine, incarnation, epoch, state, \
     expires_at_ms, renewed_at_ms FROM ferry_leases \
     WHERE state = 'held' AND expires_at_ms <= ?1 ORDER BY expires_at_ms, name";

/// `acquire` and `handover`: one write transaction that reads the row, decides by the
/// store's clock ([`rules::take`]), and writes the whole row.
fn take(db: &mut Connection, req: &AcquireRequest, how: Take<'_>) -> Result<Lease, Failure> {
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = store_now_ms(&tx)?;
    let old = read_row(&tx, &req.name.to_string())?;
    let row = rules::take(old.as_ref(), req, how, now).map_err(|refusal| match refusal {
        Refusal::Store(e) => Failure::Store(e),
        Refusal::Corrupt(e) => Failure::Corrupt(e),
    })?;
    write_row(&tx, &row)?;
    tx.commit()?;
    Ok(row.to_lease(now)?)
}

fn store_now_ms(tx: &Transaction<'_>) -> rusqlite::Result<i64> {
    tx.query_row(NOW_MS_SQL, [], |r| r.get(0))
}

/// Reads the columns in [`COLUMNS`] order; an impossible value is a `CorruptRow`.
fn row_from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Row, CorruptRow>> {
    let state: String = r.get(5)?;
    Ok(Row::from_columns(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, &state, r.get(6)?, r.get(7)?))
}

fn read_row(tx: &Transaction<'_>, name: &str) -> Result<Option<Row>, Failure> {
    let sql = format!("SELECT {COLUMNS} FROM ferry_leases WHERE name = ?1");
    match tx.query_row(&sql, params![name], row_from_sql).optional()? {
        Some(row) => Ok(Some(row?)),
        None => Ok(None),
    }
}

fn read_rows(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    now: i64,
) -> Result<Vec<Lease>, Failure> {
    let mut stmt = tx.prepare(sql)?;
    let rows = stmt.query_map(params, row_from_sql)?;
    let mut leases = Vec::new();
    for row in rows {
        leases.push(row??.to_lease(now)?);
    }
    Ok(leases)
}

fn write_row(tx: &Transaction<'_>, row: &Row) -> Result<(), Failure> {
    let epoch = row.stored_epoch()?;
    tx.execute(
        "INSERT INTO ferry_leases (name, owner, machine, incarnation, epoch, state, \
             expires_at_ms, renewed_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, \
             machine = excluded.machine, incarnation = excluded.incarnation, \
             epoch = excluded.epoch, state = excluded.state, \
             expires_at_ms = excluded.expires_at_ms, renewed_at_ms = excluded.renewed_at_ms",
        params![
            row.name,
            row.owner,
            row.machine,
            row.incarnation,
            epoch,
            row.state(),
            row.expires_at_ms,
            row.renewed_at_ms,
        ],
    )?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Check `ferry_schema` once per connection before the first lease call.
    Schema,
    /// `init` and `reset` look at the schema themselves; success leaves it checked.
    Creates,
}

fn read_version(db: &Connection) -> rusqlite::Result<Version> {
    let exists: bool = db.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'ferry_schema')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(Version::Absent);
    }
    let (count, version): (i64, Option<i64>) =
        db.query_row("SELECT count(*), max(version) FROM ferry_schema", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(Version::from_count_and_max(count, version))
}

fn check_schema(db: &Connection) -> Result<(), Failure> {
    read_version(db)?.check(SCHEMA_VERSION).map_err(Failure::Schema)
}

/// What went wrong inside a call, before the data source is attached.
enum Failure {
    Sql(rusqlite::Error),
    Corrupt(CorruptRow),
    Schema(SchemaProblem),
    Store(StoreError),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

impl From<CorruptRow> for Failure {
    fn from(e: CorruptRow) -> Self {
        Failure::Corrupt(e)
    }
}

impl Failure {
    /// Another connection held the file's lock until the call's deadline.
    fn is_busy(&self) -> bool {
        matches!(
            self,
            Failure::Sql(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }

    fn into_store_error(self, data_source: &str) -> StoreError {
        let unavailable = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Unavailable {
            data_source: data_source.to_string(),
            source,
        };
        match self {
            Failure::Store(e) => e,
            Failure::Schema(problem) => problem.into_store_error(data_source, SCHEMA_VERSION),
            Failure::Sql(rusqlite::Error::SqliteFailure(_, Some(msg)))
                if msg.starts_with("no such table") || msg.starts_with("no such column") =>
            {
                rules::malformed(data_source, &msg)
            }
            Failure::Sql(e) => unavailable(Box::new(e)),
            Failure::Corrupt(e) => unavailable(Box::new(e)),
        }
    }
}

/// Why the file could not be opened.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("the data source names no file; use sqlite://PATH")]
    EmptyPath,
    #[error("`{scheme}://` is not an SQLite data source; use sqlite://PATH")]
    NotSqlite { scheme: String },
    #[error("cannot resolve path {path:?}")]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create directory {path:?} for the lease table")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {path:?} as an SQLite database")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}
