//! DESIGN §3 rule 11 for PostgreSQL: a new authority restarts the lease clocks.
//!
//! Rule 1 lets the database's clock decide expiry. After a failover that clock is another
//! host's: a promoted standby whose clock runs 3 s ahead would find every lease 3 s older than
//! its holder does, and the master would take over servers that are alive and renewing. So
//! every connection reads the identity of the server it reached ([`Identity`]: system
//! identifier, timeline, postmaster start) before its first lease call, and compares it with
//! the `ferry_authority` row under that row's lock:
//!
//! - the same: nothing to do (the common case: one indexed read per new connection);
//! - none recorded yet (a new table, or one upgraded from version 1): recorded, nothing
//!   else (the stored expiries were computed by this server's clock as far as anyone knows);
//! - different (a promoted standby, a primary restarted or moved to other hardware on shared
//!   storage, a restore): the row is rewritten with the new identity and, in the same
//!   transaction, every held lease whose expiry is earlier than a full TTL from the new
//!   server's clock is renewed at that clock (`expires_at = now + ttl`, `renewed_at = now`,
//!   TTL = `expires_at - renewed_at` as last written). Extend, never shorten: a lease already
//!   further out is left alone.
//!
//! Because the leases themselves are rewritten, every reader obeys the rule without knowing
//! it: the master's scans, `next_expiry_ms`, the incremental cursor and acquisitions all read
//! the extended rows. Why this is safe whatever the clocks: the first process to see the new
//! server does this in real time after that server became primary, so after every
//! acknowledged renewal (synchronous replication, rule 8); no lease can then expire earlier
//! than a full TTL of real time after the holder's last acknowledged renewal, which is later
//! than the holder's own deadline (rule 2). The cost is liveness only: a holder that died
//! during the failover is taken over at most one TTL later than it would have been.
//!
//! A server on an *older* timeline of the same system than one this process already used is
//! a former primary that came back after a failover (a split): its connections are refused
//! and closed, idle ones too, so no lease is written to it ([`Authorities::admit`]).

use std::sync::Mutex;

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::errors::Failure;
use super::operations::CLOCK_SQL;

/// The server a connection reached, fixed for the connection's lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Identity {
    /// `pg_control_system().system_identifier`: shared by a primary and its standbys.
    pub(super) system_identifier: String,
    /// The WAL insertion timeline: 1 more at every promotion (read from the current WAL
    /// file's name; `pg_control_checkpoint()` lags until the next checkpoint).
    pub(super) timeline: i64,
    /// `pg_postmaster_start_time()` in Unix ms: tells a restarted or moved primary apart.
    pub(super) started_ms: i64,
}

impl Identity {
    /// Whether this is an older timeline of the same database system than `other`.
    pub(super) fn is_behind(&self, other: &Identity) -> bool {
        self.system_identifier == other.system_identifier && self.timeline < other.timeline
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "database system {} timeline {}", self.system_identifier, self.timeline)
    }
}

/// Fails on a standby ("recovery is in progress"): a standby is never trusted, even for reads.
const IDENTITY_SQL: &str = "SELECT system_identifier::text, \
     ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint, \
     floor(extract(epoch FROM pg_postmaster_start_time()) * 1000)::bigint \
     FROM pg_control_system()";

const LOCK_SQL: &str = "SELECT system_identifier, timeline, \
     floor(extract(epoch FROM started_at) * 1000)::bigint \
     FROM ferry_authority WHERE singleton FOR UPDATE";

const RECORD_SQL: &str = "INSERT INTO ferry_authority \
     (singleton, system_identifier, timeline, started_at, since) \
     VALUES (true, $1, $2, to_timestamp($3::bigint::float8 / 1000), to_timestamp($4::bigint::float8 / 1000)) \
     ON CONFLICT (singleton) DO UPDATE SET system_identifier = excluded.system_identifier, \
     timeline = excluded.timeline, started_at = excluded.started_at, since = excluded.since";

/// Rule 11 on the rows: renew every held lease at `$1` (the new server's clock, Unix ms)
/// unless it already expires a full TTL or more after it.
pub(super) const RESTART_CLOCKS_SQL: &str = "UPDATE ferry_leases SET \
     expires_at = to_timestamp(($1::bigint + (extract(epoch FROM expires_at - renewed_at) * 1000)::bigint)::float8 / 1000), \
     renewed_at = to_timestamp($1::bigint::float8 / 1000) \
     WHERE state = 'held' AND expires_at < \
     to_timestamp(($1::bigint + (extract(epoch FROM expires_at - renewed_at) * 1000)::bigint)::float8 / 1000)";

/// Reads the identity of the server `c` is connected to.
pub(super) async fn identify(c: &Client) -> Result<Identity, Failure> {
    let r = c.query_typed_one(IDENTITY_SQL, &[]).await?;
    Ok(Identity { system_identifier: r.try_get(0)?, timeline: r.try_get(1)?, started_ms: r.try_get(2)? })
}

/// What a store has seen of the servers behind its data source.
#[derive(Default)]
pub(super) struct Authorities {
    /// The latest timeline this process used, per the order of [`Identity::is_behind`].
    highest: Mutex<Option<Identity>>,
}

impl Authorities {
    /// Admits a new connection's server, or refuses a former primary (a timeline behind the
    /// latest one used).
    pub(super) fn admit(&self, id: &Identity) -> Result<(), Failure> {
        let mut highest = self.highest.lock().unwrap_or_else(|e| e.into_inner());
        match highest.as_ref() {
            Some(seen) if id.is_behind(seen) => {
                return Err(Failure::Stale { found: id.clone(), seen: seen.clone() });
            }
            Some(seen) if seen == id => {}
            _ => *highest = Some(id.clone()),
        }
        Ok(())
    }

    /// Whether any server has been admitted yet.
    pub(super) fn has_seen(&self) -> bool {
        self.highest.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Whether a pooled connection's server has since been superseded.
    pub(super) fn is_stale(&self, id: &Identity) -> bool {
        let highest = self.highest.lock().unwrap_or_else(|e| e.into_inner());
        highest.as_ref().is_some_and(|seen| id.is_behind(seen))
    }
}

/// Compares the connection's server with the recorded authority and, if it changed, records
/// it and restarts the lease clocks (see the module docs). One transaction; returns how many
/// leases were renewed (0 when nothing changed).
pub(super) async fn check(c: &Client, id: &Identity) -> Result<u64, Failure> {
    let (_, recorded, now) = futures_util::future::try_join3(
        c.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"),
        c.query_typed_opt(LOCK_SQL, &[]),
        c.query_typed_one(CLOCK_SQL, &[]),
    )
    .await?;
    let now: i64 = now.try_get(0)?;
    let previous = match &recorded {
        Some(r) => {
            Some(Identity { system_identifier: r.try_get(0)?, timeline: r.try_get(1)?, started_ms: r.try_get(2)? })
        }
        None => None,
    };
    if previous.as_ref() == Some(id) {
        c.batch_execute("COMMIT").await?;
        return Ok(0);
    }
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 4] = [
        (&id.system_identifier, Type::TEXT),
        (&id.timeline, Type::INT8),
        (&id.started_ms, Type::INT8),
        (&now, Type::INT8),
    ];
    let record = c.execute_typed(RECORD_SQL, &params);
    let Some(before) = previous else {
        // The first server recorded (a new table, or one from before version 2): the one
        // the stored expiries were computed with, as far as anything can know.
        futures_util::future::try_join(record, c.batch_execute("COMMIT")).await?;
        tracing::info!(server = %id, "recorded the lease table's database server");
        return Ok(0);
    };
    let (_, renewed, ()) = futures_util::future::try_join3(
        record,
        c.execute_typed(RESTART_CLOCKS_SQL, &[(&now, Type::INT8)]),
        c.batch_execute("COMMIT"),
    )
    .await?;
    tracing::warn!(
        before = %before,
        now = %id,
        leases_renewed = renewed,
        "the lease table's database server changed (a failover or a restart): every held \
         lease now expires no earlier than a full TTL from the new server's clock \
         (DESIGN §3 rule 11)"
    );
    Ok(renewed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sys: &str, timeline: i64, started_ms: i64) -> Identity {
        Identity { system_identifier: sys.into(), timeline, started_ms }
    }

    #[test]
    fn a_former_primary_is_refused_once_a_later_timeline_was_used() {
        let a = Authorities::default();
        assert!(a.admit(&id("s", 1, 10)).is_ok());
        assert!(a.admit(&id("s", 2, 20)).is_ok(), "a promotion is admitted");
        assert!(matches!(a.admit(&id("s", 1, 10)), Err(Failure::Stale { .. })), "the old primary is not");
        assert!(a.is_stale(&id("s", 1, 30)));
        assert!(!a.is_stale(&id("s", 2, 40)), "the same timeline restarted is not stale");
        // Another database system (a restore, pg_upgrade): the table decides, not the order.
        assert!(a.admit(&id("t", 1, 50)).is_ok());
        assert!(!a.is_stale(&id("s", 2, 40)));
    }
}
