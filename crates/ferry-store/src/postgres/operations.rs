//! The calls of [`PostgresStore`]: the SQL of each lease operation (one `READ COMMITTED`
//! transaction that locks the row and reads the database clock behind the lock, as the
//! `postgres` module docs explain), the decisions `rules.rs` makes from what it read, and
//! `init`/`reset` of the table. Each call runs on one pooled connection within the call
//! timeout (`with_conn`).

use std::time::Duration;

use ferry_core::lease::Lease;
use ferry_core::{Epoch, Incarnation, LeaseName};
use futures_util::future::{try_join, try_join3};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::errors::Failure;
use super::pool::Check;
use super::{PostgresStore, SCHEMA_SQL, SCHEMA_VERSION};
use crate::rules::{self, CorruptRow, Refusal, Row, Take, Version};
use crate::{AcquireRequest, LeaseStore, Prepared, Renewal, Result, Scan, ScanCursor, StoreError};

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

/// The first and the longest pause between the attempts of a call that met a failover.
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(100);

/// The primary's synchronous replication: the standbys it waits for, and how many are
/// connected as such.
const DURABILITY_SQL: &str = "SELECT current_setting('synchronous_standby_names'), \
     (SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum'))";

const BEGIN_SQL: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// Locks the row for the rest of the transaction (a missing row locks nothing).
const LOCK_SQL: &str = concat!("SELECT ", columns!(), " FROM ferry_leases WHERE name = $1 FOR UPDATE");

/// The database clock at the moment it runs: behind `LOCK_SQL` in the pipeline, so after
/// the lock is granted.
pub(super) const CLOCK_SQL: &str = "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

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

/// Milliseconds until the earliest expiry still to come of a held lease, from the same
/// partial index (`min()` reads one index entry).
pub const NEXT_EXPIRY_SQL: &str = concat!(
    "SELECT floor(extract(epoch FROM min(expires_at)) * 1000)::bigint - ",
    now_ms!(),
    " FROM ferry_leases WHERE state = 'held' AND expires_at > now()"
);

impl PostgresStore {
    /// Creates the lease table if it is absent (idempotent, safe to run concurrently), or
    /// upgrades a version-1 table in place. Fails with `Schema` if a table of another
    /// version is there, without touching it.
    pub async fn init(&self) -> Result<Prepared> {
        self.call(async {
            let conn = self.pool.lend(Check::Nothing).await?;
            let result = async {
                let c = conn.client()?;
                c.batch_execute(&format!("{BEGIN_SQL}; SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})")).await?;
                let prepared = match read_version(c).await? {
                    // Version 1 lacks only `ferry_authority`: the DDL upgrades it in place.
                    Version::Is(1) => Prepared::Upgraded { from: 1, to: SCHEMA_VERSION },
                    version => {
                        if let Err(problem) = version.check_init(SCHEMA_VERSION) {
                            c.batch_execute("ROLLBACK").await?;
                            return Err(Failure::Schema(problem));
                        }
                        Prepared::Ready
                    }
                };
                c.batch_execute(SCHEMA_SQL).await?;
                c.batch_execute("COMMIT").await?;
                Ok(prepared)
            }
            .await;
            conn.finish_creating(result)
        })
        .await
    }

    /// What rule 8 needs of the server and is missing, in words for the operator: without
    /// a synchronous standby (`synchronous_standby_names` set, and one connected), a commit
    /// is acknowledged before any standby has it, so a failover can lose an acknowledged
    /// renewal or epoch bump. `None` when a synchronous standby confirms every commit.
    pub async fn durability_warning(&self) -> Result<Option<String>> {
        self.call(async {
            let conn = self.pool.lend(Check::Nothing).await?;
            let result = async {
                let r = conn.client()?.query_typed_one(DURABILITY_SQL, &[]).await?;
                let names: String = r.try_get(0)?;
                let sync: i64 = r.try_get(1)?;
                Ok(if names.trim().is_empty() {
                    Some(
                        "the PostgreSQL primary has no synchronous standby (synchronous_standby_names \
                         is empty), so a failover can lose a lease write it acknowledged: a lost \
                         epoch bump lets two instances run; set synchronous_standby_names on the \
                         primary (for example '*' or 'FIRST 1 (standby1, standby2)') or run a \
                         single PostgreSQL server without failover"
                            .to_string(),
                    )
                } else if sync == 0 {
                    Some(format!(
                        "synchronous_standby_names is {names:?} but no synchronous standby is \
                         connected now (or this user may not see pg_stat_replication: grant it \
                         pg_monitor), so commits wait for one; check the standbys' \
                         primary_conninfo and application_name"
                    ))
                } else {
                    None
                })
            }
            .await;
            conn.finish(result)
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
                     DROP TABLE IF EXISTS ferry_leases; DROP TABLE IF EXISTS ferry_schema; \
                     DROP TABLE IF EXISTS ferry_authority;"
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

    /// Runs `op` on a pooled connection whose schema has been checked, keeping the
    /// connection only when the call ended cleanly.
    ///
    /// A failure of the kind a database failover causes ([`Failure::is_retryable`]: the
    /// server is gone, not yet promoted, or a former primary) is retried on a new connection
    /// with a short backoff until the call timeout; if the time runs out, the call fails
    /// with the last such failure (transient, never a lost lease).
    async fn with_conn<T>(&self, op: impl AsyncOp<T>) -> Result<T> {
        let deadline = tokio::time::Instant::now() + self.call_timeout;
        let mut backoff = RETRY_FIRST;
        let mut last: Option<Failure> = None;
        loop {
            let attempt = async {
                let conn = self.pool.lend(Check::Schema).await?;
                let result = op.run(conn.client()?).await;
                conn.finish(result)
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(failure)) if failure.is_retryable() && tokio::time::Instant::now() + backoff < deadline => {
                    tracing::debug!(error = %failure.describe(&self.pool.names), "retrying a lease call");
                    last = Some(failure);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                Ok(Err(failure)) => return Err(failure.into_store_error(&self.pool.names)),
                Err(_elapsed) => {
                    return Err(match last {
                        Some(failure) => failure.into_store_error(&self.pool.names),
                        None => StoreError::Timeout {
                            data_source: self.pool.names.data_source.clone(),
                            timeout_ms: self.pool.names.timeout_ms,
                        },
                    })
                }
            }
        }
    }
}

/// One lease operation over a connection. (A trait rather than a closure so the borrow of
/// the client can be named.)
trait AsyncOp<T> {
    fn run(&self, client: &Client) -> impl std::future::Future<Output = Result<T, Failure>> + Send;
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
    async fn run(&self, c: &Client) -> Result<Lease, Failure> {
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
    async fn run(&self, c: &Client) -> Result<Lease, Failure> {
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
    async fn run(&self, c: &Client) -> Result<Vec<Result<Lease, Failure>>, Failure> {
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
    async fn run(&self, c: &Client) -> Result<(), Failure> {
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
    async fn run(&self, c: &Client) -> Result<Option<Lease>, Failure> {
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
    async fn run(&self, c: &Client) -> Result<Vec<Lease>, Failure> {
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
    async fn run(&self, c: &Client) -> Result<Scan, Failure> {
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
    async fn run(&self, c: &Client) -> Result<Option<i64>, Failure> {
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

pub(super) async fn read_version(c: &Client) -> Result<Version, Failure> {
    let exists: bool = c.query_typed_one("SELECT to_regclass('ferry_schema') IS NOT NULL", &[]).await?.try_get(0)?;
    if !exists {
        return Ok(Version::Absent);
    }
    let r = c.query_typed_one("SELECT count(*), max(version)::bigint FROM ferry_schema", &[]).await?;
    Ok(Version::from_count_and_max(r.try_get(0)?, r.try_get(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_is_spelt_for_the_partial_index() {
        // The planner uses `ferry_leases_held_expiry` only if the query repeats its
        // predicate literally; tests/postgres.rs checks the plans on a real server.
        assert!(EXPIRED_SQL.contains("state = 'held' AND expires_at <= now()"));
        assert!(NEXT_EXPIRY_SQL.contains("state = 'held' AND expires_at > now()"));
        assert!(LIST_SQL.ends_with("ORDER BY name COLLATE \"C\""));
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
}
