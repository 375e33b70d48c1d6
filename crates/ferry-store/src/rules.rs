//! The lease rules of DESIGN §3 as pure decisions over one row and the store's "now", shared
//! by the SQL backends (SQLite, PostgreSQL).
//!
//! Public so that every backend decides alike, the consensus store (`ferry-consensus`)
//! included. Why a module of its own: each backend reads the row under its write lock and the clock
//! of its database, then asks these functions what to write. Both backends therefore agree
//! to the letter on when a take bumps the epoch, when a retry is idempotent, and what a
//! `Held` or `Lost` answer says; only locking, clocks and SQL differ between them.

use std::time::Duration;

use ferry_core::lease::{Lease, LeaseState};
use ferry_core::{Epoch, Incarnation, LeaseName, MachineName, ServerName};

use crate::{AcquireRequest, StoreError};

/// One row of `ferry_leases`, checked on the way in ([`Row::from_columns`]). Times are
/// milliseconds since the Unix epoch by the store's clock (the consensus store: milliseconds
/// on the leader's monotonic clock).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub name: String,
    pub owner: String,
    pub machine: String,
    pub incarnation: String,
    pub epoch: u64,
    pub held: bool,
    pub expires_at_ms: i64,
    pub renewed_at_ms: i64,
}

impl Row {
    /// Builds a row from its stored columns; an impossible value is a [`CorruptRow`], not a
    /// panic, whoever wrote it.
    #[allow(clippy::too_many_arguments)]
    pub fn from_columns(
        name: String,
        owner: String,
        machine: String,
        incarnation: String,
        epoch: i64,
        state: &str,
        expires_at_ms: i64,
        renewed_at_ms: i64,
    ) -> Result<Row, CorruptRow> {
        let bad = |why: String| CorruptRow { name: name.clone(), why };
        let epoch = match u64::try_from(epoch) {
            Ok(e) if e >= 1 => e,
            _ => return Err(bad(format!("epoch {epoch} is below 1"))),
        };
        let held = match state {
            "held" => true,
            "released" => false,
            _ => return Err(bad(format!("state {state:?} is neither 'held' nor 'released'"))),
        };
        Ok(Row { name, owner, machine, incarnation, epoch, held, expires_at_ms, renewed_at_ms })
    }

    /// The row as everyone else sees it, timed against the store's `now`.
    pub fn to_lease(&self, now: i64) -> Result<Lease, CorruptRow> {
        let bad = |why: String| CorruptRow { name: self.name.clone(), why };
        Ok(Lease {
            name: LeaseName::parse(&self.name).map_err(|e| bad(e.to_string()))?,
            owner: Some(ServerName::new(self.owner.as_str()).map_err(|e| bad(e.to_string()))?),
            machine: Some(MachineName::new(self.machine.as_str()).map_err(|e| bad(e.to_string()))?),
            incarnation: Some(Incarnation(self.incarnation.clone())),
            epoch: Epoch(self.epoch),
            state: if self.held { LeaseState::Held } else { LeaseState::Released },
            remaining_ms: self.expires_at_ms.saturating_sub(now),
            since_renewal_ms: now.saturating_sub(self.renewed_at_ms),
        })
    }

    /// The epoch as the tables store it (a signed 64-bit integer).
    pub fn stored_epoch(&self) -> Result<i64, CorruptRow> {
        i64::try_from(self.epoch).map_err(|_| CorruptRow {
            name: self.name.clone(),
            why: format!("epoch {} does not fit the table", self.epoch),
        })
    }

    /// The `state` column's value.
    pub fn state(&self) -> &'static str {
        if self.held {
            "held"
        } else {
            "released"
        }
    }
}

/// How a lease is taken.
#[derive(Clone, Copy)]
pub enum Take<'a> {
    Acquire,
    /// Rule 4: from the incarnation the caller's Node Manager saw exit.
    Handover(&'a Incarnation),
}

/// Why a take, renewal or release writes nothing.
pub enum Refusal {
    /// The answer the caller gets (`Held`, `Lost`).
    Store(StoreError),
    /// The row cannot be read or advanced.
    Corrupt(CorruptRow),
}

/// `acquire` and `handover`: given the current row (read under the write lock) and the
/// store's `now`, the row to write, or why not.
pub fn take(old: Option<&Row>, req: &AcquireRequest, how: Take<'_>, now: i64) -> Result<Row, Refusal> {
    let name = req.name.to_string();
    let epoch = match old {
        None => 1,
        Some(row) => {
            let live = row.held && row.expires_at_ms > now;
            let same_holder = row.incarnation == req.incarnation.0
                && row.owner == req.owner.as_str()
                && row.machine == req.machine.as_str();
            if live && same_holder {
                // A retry whose first answer was lost: renew, keep the epoch.
                row.epoch
            } else if !live || matches!(how, Take::Handover(from) if row.incarnation == from.0) {
                row.epoch.checked_add(1).ok_or_else(|| {
                    Refusal::Corrupt(CorruptRow {
                        name: name.clone(),
                        why: "its epoch cannot grow any further".to_string(),
                    })
                })?
            } else {
                return Err(Refusal::Store(match how {
                    Take::Acquire => StoreError::Held {
                        name: req.name.clone(),
                        owner: row.owner.clone(),
                        machine: row.machine.clone(),
                        epoch: Epoch(row.epoch),
                        remaining_ms: row.expires_at_ms.saturating_sub(now),
                    },
                    Take::Handover(from) => {
                        StoreError::Lost { name: req.name.clone(), incarnation: from.clone(), detail: holder(row) }
                    }
                }));
            }
        }
    };
    let row = Row {
        name,
        owner: req.owner.to_string(),
        machine: req.machine.to_string(),
        incarnation: req.incarnation.0.clone(),
        epoch,
        held: true,
        expires_at_ms: now.saturating_add(ttl_ms(req.ttl)),
        renewed_at_ms: now,
    };
    // Epochs never go backwards (STYLE habit 4); `row.epoch` is computed above, not input.
    debug_assert!(!matches!(old, Some(o) if o.epoch > row.epoch));
    Ok(row)
}

/// `renew`: the row to write, or `Lost` unless the row is held, unexpired, by
/// `incarnation` at `epoch`.
pub fn renew(
    row: Option<Row>,
    name: &LeaseName,
    incarnation: &Incarnation,
    epoch: Epoch,
    ttl: Duration,
    now: i64,
) -> Result<Row, StoreError> {
    let lost = |detail: String| StoreError::Lost { name: name.clone(), incarnation: incarnation.clone(), detail };
    let Some(mut row) = row else {
        return Err(lost("the lease does not exist".to_string()));
    };
    if let Some(why) = not_theirs(&row, incarnation, epoch) {
        return Err(lost(why));
    }
    if !row.held {
        return Err(lost(format!("it was released at epoch {}", row.epoch)));
    }
    if row.expires_at_ms <= now {
        let ago = now.saturating_sub(row.expires_at_ms);
        return Err(lost(format!("it expired {ago} ms ago by the store's clock")));
    }
    row.expires_at_ms = now.saturating_add(ttl_ms(ttl));
    row.renewed_at_ms = now;
    Ok(row)
}

/// `release`: the row to write, `None` when it is already released by this incarnation (a
/// retried release whose first answer was lost), or `Lost`.
pub fn release(
    row: Option<Row>,
    name: &LeaseName,
    incarnation: &Incarnation,
    epoch: Epoch,
    now: i64,
) -> Result<Option<Row>, StoreError> {
    let lost = |detail: String| StoreError::Lost { name: name.clone(), incarnation: incarnation.clone(), detail };
    let Some(mut row) = row else {
        return Err(lost("the lease does not exist".to_string()));
    };
    if let Some(why) = not_theirs(&row, incarnation, epoch) {
        return Err(lost(why));
    }
    if !row.held {
        return Ok(None);
    }
    row.held = false;
    // The lease ends now; an already expired one keeps its expiry for display.
    row.expires_at_ms = row.expires_at_ms.min(now);
    Ok(Some(row))
}

/// Why `incarnation` at `epoch` does not own `row`, if it does not.
fn not_theirs(row: &Row, incarnation: &Incarnation, epoch: Epoch) -> Option<String> {
    if row.incarnation != incarnation.0 {
        Some(holder(row))
    } else if row.epoch != epoch.0 {
        Some(format!("the lease is at epoch {}, not {epoch}", row.epoch))
    } else {
        None
    }
}

/// Who has the row now, for `Lost` details.
fn holder(row: &Row) -> String {
    let Row { owner, machine, incarnation, epoch, .. } = row;
    if row.held {
        format!("now held by {owner} on {machine}, incarnation {incarnation}, epoch {epoch}")
    } else {
        format!("released by {owner} on {machine}, incarnation {incarnation}, epoch {epoch}")
    }
}

pub fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// What is wrong with the `ferry_schema` table, if anything.
pub(crate) enum SchemaProblem {
    /// No `ferry_schema` table.
    Missing,
    /// `ferry_schema` is empty.
    NoVersion,
    /// Another version than the one this build reads.
    Version(i64),
    /// More than one row.
    Several,
}

/// The versions found in `ferry_schema`.
pub(crate) enum Version {
    Absent,
    Empty,
    Is(i64),
    Several,
}

impl Version {
    /// From `SELECT count(*), max(version) FROM ferry_schema`.
    pub fn from_count_and_max(count: i64, max: Option<i64>) -> Version {
        match (count, max) {
            (0, _) | (_, None) => Version::Empty,
            (1, Some(v)) => Version::Is(v),
            _ => Version::Several,
        }
    }

    /// Whether lease calls may use a table at this version.
    pub fn check(self, expected: i64) -> Result<(), SchemaProblem> {
        match self {
            Version::Is(v) if v == expected => Ok(()),
            Version::Absent => Err(SchemaProblem::Missing),
            Version::Empty => Err(SchemaProblem::NoVersion),
            Version::Is(found) => Err(SchemaProblem::Version(found)),
            Version::Several => Err(SchemaProblem::Several),
        }
    }

    /// Whether `init` may (re-)run the DDL over a table at this version.
    pub fn check_init(self, expected: i64) -> Result<(), SchemaProblem> {
        match self {
            Version::Absent | Version::Empty => Ok(()),
            Version::Is(v) if v == expected => Ok(()),
            Version::Is(found) => Err(SchemaProblem::Version(found)),
            Version::Several => Err(SchemaProblem::Several),
        }
    }
}

impl SchemaProblem {
    /// The operator-facing error: what is wrong and what to run.
    pub fn into_store_error(self, data_source: &str, expected: i64) -> StoreError {
        let init = format!("run `ferry leasing init --data-source {data_source}`");
        let detail = match self {
            SchemaProblem::Missing => format!("the lease table does not exist; {init}"),
            SchemaProblem::NoVersion => format!("the lease table has no schema version; {init}"),
            SchemaProblem::Version(found) => format!(
                "the lease table has schema version {found} but this ferry reads version \
                 {expected}; use a ferry that reads version {found}, or stop every \
                 server and run `ferry leasing reset --data-source {data_source}` (forgets \
                 every lease)"
            ),
            SchemaProblem::Several => format!(
                "ferry_schema holds several versions; stop every server and run \
                 `ferry leasing reset --data-source {data_source}` (forgets every lease)"
            ),
        };
        StoreError::Schema { data_source: data_source.to_string(), detail }
    }
}

/// The error for SQL that names a table or column the database does not have.
pub(crate) fn malformed(data_source: &str, message: &str) -> StoreError {
    StoreError::Schema {
        data_source: data_source.to_string(),
        detail: format!(
            "the lease table is missing or malformed ({message}); run `ferry leasing init \
             --data-source {data_source}`"
        ),
    }
}

/// A row no ferry would have written (edited by hand, or a bug): reported, never a panic.
#[derive(Debug, thiserror::Error)]
#[error("row {name:?} of ferry_leases is invalid: {why}")]
pub struct CorruptRow {
    pub name: String,
    pub why: String,
}
