//! What the voters replicate through openraft: the lease table's rows, written only by the
//! leader, each write a compare-and-set on the row it replaces so that an entry decided by a
//! deposed leader can never overwrite a newer decision. Renewals are not replicated (the
//! leader keeps expiries in memory, by its own clock); every acquisition, handover, release
//! and epoch bump is, before it is acknowledged.

use std::collections::BTreeMap;
use std::io;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use futures_util::TryStreamExt;
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use ferry_store::rules::Row;

openraft::declare_raft_types!(
    /// The openraft types of consensus leasing.
    pub Config:
        D = Cmd,
        R = Applied,
);

/// One voter's openraft instance.
pub type Raft = openraft::Raft<Config, Machine>;

/// The identity of a row before a write: what the leader decided the write against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub epoch: u64,
    pub incarnation: String,
    pub held: bool,
    pub ttl_ms: i64,
}

/// A replicated row: the row as the leader wrote it (its times are the leader's, read only
/// by that leader) and the TTL a new leader restarts its clock with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub row: Row,
    pub ttl_ms: i64,
}

impl Stored {
    pub fn version(&self) -> Version {
        Version {
            epoch: self.row.epoch,
            incarnation: self.row.incarnation.clone(),
            held: self.row.held,
            ttl_ms: self.ttl_ms,
        }
    }
}

/// A log entry's command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Cmd {
    /// Write `stored` if the row is still `expect` (`None`: absent).
    Put { stored: Stored, expect: Option<Version> },
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Put { stored, .. } => {
                let r = &stored.row;
                let state = if r.held { "held" } else { "released" };
                write!(f, "put {} {state} by {} epoch {}", r.name, r.incarnation, r.epoch)
            }
        }
    }
}

/// What applying an entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Nothing,
    Written,
    /// The row had changed since the leader decided: nothing written.
    Conflict,
}

/// The rows every voter holds, in the order the log decided them.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Table {
    pub rows: BTreeMap<String, Stored>,
}

impl Table {
    fn apply(&mut self, cmd: &Cmd) -> Applied {
        match cmd {
            Cmd::Put { stored, expect } => {
                let current = self.rows.get(&stored.row.name).map(Stored::version);
                if current != *expect {
                    return Applied::Conflict;
                }
                // Epochs never go backwards (STYLE habit 4), whoever decided the write.
                if current.is_some_and(|c| c.epoch > stored.row.epoch) {
                    return Applied::Conflict;
                }
                self.rows.insert(stored.row.name.clone(), stored.clone());
                Applied::Written
            }
        }
    }
}

#[derive(Debug, Default)]
struct MachineInner {
    last_applied: Option<LogIdOf<Config>>,
    membership: StoredMembershipOf<Config>,
    table: Table,
    snapshot: Option<(SnapshotMetaOf<Config>, Vec<u8>)>,
}

/// The state machine: the replicated table, shared with the voter's lease store.
#[derive(Debug, Clone, Default)]
pub struct Machine(Arc<Mutex<MachineInner>>);

impl Machine {
    fn inner(&self) -> std::sync::MutexGuard<'_, MachineInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the rows as applied so far.
    pub fn table(&self) -> Table {
        self.inner().table.clone()
    }

    /// One row as applied so far.
    pub fn row(&self, name: &str) -> Option<Stored> {
        self.inner().table.rows.get(name).cloned()
    }
}

fn invalid(e: serde_json::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl RaftSnapshotBuilder<Config> for Machine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<Config, Cursor<Vec<u8>>>, io::Error> {
        let mut inner = self.inner();
        let data = serde_json::to_vec(&inner.table).map_err(invalid)?;
        let meta =
            SnapshotMetaOf::<Config> { last_log_id: inner.last_applied, last_membership: inner.membership.clone() };
        inner.snapshot = Some((meta.clone(), data.clone()));
        Ok(SnapshotOf::<Config, Cursor<Vec<u8>>> { meta, snapshot: Cursor::new(data) })
    }
}

impl RaftStateMachine<Config> for Machine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<Config>>, StoredMembershipOf<Config>), io::Error> {
        let inner = self.inner();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<Config>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let applied = {
                let mut inner = self.inner();
                inner.last_applied = Some(entry.log_id());
                match &entry.payload {
                    EntryPayload::Blank => Applied::Nothing,
                    EntryPayload::Normal(cmd) => inner.table.apply(cmd),
                    EntryPayload::Membership(m) => {
                        inner.membership = StoredMembershipOf::<Config>::new(Some(entry.log_id()), m.clone());
                        Applied::Nothing
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(applied);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<Config>,
        snapshot: Cursor<Vec<u8>>,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let table: Table = serde_json::from_slice(&data).map_err(invalid)?;
        let mut inner = self.inner();
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.table = table;
        inner.snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<Config, Cursor<Vec<u8>>>>, io::Error> {
        let inner = self.inner();
        Ok(inner.snapshot.as_ref().map(|(meta, data)| SnapshotOf::<Config, Cursor<Vec<u8>>> {
            meta: meta.clone(),
            snapshot: Cursor::new(data.clone()),
        }))
    }
}

#[derive(Debug, Default)]
struct LogInner {
    last_purged: Option<LogIdOf<Config>>,
    entries: BTreeMap<u64, openraft::alias::EntryOf<Config>>,
    committed: Option<LogIdOf<Config>>,
    vote: Option<VoteOf<Config>>,
}

/// A voter's log and vote, in memory: lost with the process, so a restarted voter must
/// rejoin under a new identity (DESIGN: consensus leasing).
#[derive(Debug, Clone, Default)]
pub struct MemLog(Arc<Mutex<LogInner>>);

impl MemLog {
    fn inner(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RaftLogReader<Config> for MemLog {
    async fn try_get_log_entries<RB>(&mut self, range: RB) -> Result<Vec<openraft::alias::EntryOf<Config>>, io::Error>
    where
        RB: std::ops::RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend,
    {
        Ok(self.inner().entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<Config>>, io::Error> {
        Ok(self.inner().vote)
    }
}

impl RaftLogStorage<Config> for MemLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<Config>, io::Error> {
        let inner = self.inner();
        let last = inner.entries.values().next_back().map(|e| e.log_id()).or_else(|| inner.last_purged);
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<Config>) -> Result<(), io::Error> {
        self.inner().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<Config>>) -> Result<(), io::Error> {
        self.inner().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<Config>>, io::Error> {
        Ok(self.inner().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<Config>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = openraft::alias::EntryOf<Config>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut inner = self.inner();
            for e in entries {
                inner.entries.insert(e.index(), e);
            }
        }
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogIdOf<Config>>) -> Result<(), io::Error> {
        let from = last.map_or(0, |l| l.index() + 1);
        self.inner().entries.retain(|&i, _| i < from);
        Ok(())
    }

    async fn purge(&mut self, upto: LogIdOf<Config>) -> Result<(), io::Error> {
        let mut inner = self.inner();
        let through = upto.index();
        inner.entries.retain(|&i, _| i > through);
        inner.last_purged = Some(upto);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(epoch: u64, incarnation: &str, held: bool) -> Stored {
        Stored {
            row: Row {
                name: "server/ms1".into(),
                owner: "ms1".into(),
                machine: "m".into(),
                incarnation: incarnation.into(),
                epoch,
                held,
                expires_at_ms: 0,
                renewed_at_ms: 0,
            },
            ttl_ms: 1_500,
        }
    }

    #[test]
    fn a_write_decided_against_an_older_row_is_refused() {
        let mut t = Table::default();
        let first = stored(1, "a", true);
        assert_eq!(t.apply(&Cmd::Put { stored: first.clone(), expect: None }), Applied::Written);
        // Two leaders decided a take of the same row; the second one applied loses.
        let by_b = Cmd::Put { stored: stored(2, "b", true), expect: Some(first.version()) };
        let by_c = Cmd::Put { stored: stored(2, "c", true), expect: Some(first.version()) };
        assert_eq!(t.apply(&by_b), Applied::Written);
        assert_eq!(t.apply(&by_c), Applied::Conflict);
        assert_eq!(t.rows["server/ms1"].row.incarnation, "b");
        // A row that exists is never re-created from nothing.
        assert_eq!(t.apply(&Cmd::Put { stored: stored(1, "d", true), expect: None }), Applied::Conflict);
    }
}
