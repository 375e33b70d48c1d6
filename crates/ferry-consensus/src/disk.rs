//! A voter's vote and log on disk: one SQLite file (WAL, `synchronous=FULL`, DESIGN §3
//! rule 8), so that a restarted voter never votes twice in a term nor forgets an entry it
//! acknowledged, which Raft's safety needs. The replicated table is rebuilt at start by
//! applying the committed log again (ferry keeps the whole log: it holds acquisitions,
//! handovers and releases only, never renewals, so it grows by a few rows per migration).

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use rusqlite::{params, Connection, OptionalExtension};

use crate::replicated::Config;

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = FULL;
    CREATE TABLE IF NOT EXISTS raft_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS raft_log (idx INTEGER PRIMARY KEY, entry TEXT NOT NULL);
";

/// The identity of the voter whose data lives in `dir` (a new one, drawn at random, when
/// `dir` holds none: a voter that lost its data comes back as somebody new).
pub fn identity_in(dir: &Path) -> io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    DiskLog::open(&dir.join("raft.db"))?.identity(|| loop {
        let id = u64::from(rand::random::<u32>());
        if id != 0 {
            break id;
        }
    })
}

/// The vote and log of one voter in `DIR/raft.db`.
#[derive(Clone)]
pub struct DiskLog {
    db: Arc<Mutex<Connection>>,
}

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

impl DiskLog {
    /// Opens (or creates) the log at `path`.
    pub fn open(path: &Path) -> io::Result<DiskLog> {
        let db = Connection::open(path).map_err(io_err)?;
        db.execute_batch(SCHEMA).map_err(io_err)?;
        Ok(DiskLog { db: Arc::new(Mutex::new(db)) })
    }

    /// The voter id this log belongs to, drawn by `fresh` the first time (a new data
    /// directory is a new identity: the id lives in the same file as the vote and log, so
    /// the two can only be lost together).
    pub fn identity(&self, fresh: impl FnOnce() -> u64) -> io::Result<u64> {
        let c = self.db.lock().unwrap_or_else(|e| e.into_inner());
        let kept: Option<String> = c
            .query_row("SELECT value FROM raft_meta WHERE key = 'voter_id'", [], |r| r.get(0))
            .optional()
            .map_err(io_err)?;
        if let Some(text) = kept {
            return text.parse().map_err(io_err);
        }
        let id = fresh();
        c.execute("INSERT INTO raft_meta (key, value) VALUES ('voter_id', ?1)", [id.to_string()]).map_err(io_err)?;
        Ok(id)
    }

    /// Runs `work` on the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let mut c = db.lock().unwrap_or_else(|e| e.into_inner());
            work(&mut c)
        })
        .await
        .map_err(io_err)?
        .map_err(io_err)
    }

    async fn meta<T: serde::de::DeserializeOwned + Send + 'static>(&self, key: &'static str) -> io::Result<Option<T>> {
        let text: Option<String> = self
            .with(move |c| c.query_row("SELECT value FROM raft_meta WHERE key = ?1", [key], |r| r.get(0)).optional())
            .await?;
        text.map(|t| serde_json::from_str(&t).map_err(io_err)).transpose()
    }

    async fn set_meta<T: serde::Serialize>(&self, key: &'static str, value: &T) -> io::Result<()> {
        let text = serde_json::to_string(value).map_err(io_err)?;
        self.with(move |c| {
            c.execute(
                "INSERT INTO raft_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
                params![key, text],
            )
        })
        .await
        .map(drop)
    }
}

impl RaftLogReader<Config> for DiskLog {
    async fn try_get_log_entries<RB>(&mut self, range: RB) -> Result<Vec<EntryOf<Config>>, io::Error>
    where
        RB: std::ops::RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend,
    {
        use std::ops::Bound;
        let from = match range.start_bound() {
            Bound::Included(&i) => i as i64,
            Bound::Excluded(&i) => i as i64 + 1,
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&i) => i.min(i64::MAX as u64) as i64,
            Bound::Excluded(&i) => (i as i64).saturating_sub(1),
            Bound::Unbounded => i64::MAX,
        };
        let rows: Vec<String> = self
            .with(move |c| {
                let mut q = c.prepare_cached("SELECT entry FROM raft_log WHERE idx BETWEEN ?1 AND ?2 ORDER BY idx")?;
                let rows = q.query_map([from, to], |r| r.get::<_, String>(0))?;
                rows.collect()
            })
            .await?;
        rows.iter().map(|t| serde_json::from_str(t).map_err(io_err)).collect()
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<Config>>, io::Error> {
        self.meta("vote").await
    }
}

impl RaftLogStorage<Config> for DiskLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<Config>, io::Error> {
        let last: Option<String> = self
            .with(|c| c.query_row("SELECT entry FROM raft_log ORDER BY idx DESC LIMIT 1", [], |r| r.get(0)).optional())
            .await?;
        let last = last.map(|t| serde_json::from_str::<EntryOf<Config>>(&t).map_err(io_err)).transpose()?;
        let purged: Option<LogIdOf<Config>> = self.meta("last_purged").await?;
        Ok(LogState { last_purged_log_id: purged, last_log_id: last.map(|e| e.log_id()).or(purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<Config>) -> Result<(), io::Error> {
        self.set_meta("vote", vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<Config>>) -> Result<(), io::Error> {
        self.set_meta("committed", &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<Config>>, io::Error> {
        Ok(self.meta::<Option<LogIdOf<Config>>>("committed").await?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<Config>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<Config>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows: Vec<(i64, String)> = entries
            .into_iter()
            .map(|e| serde_json::to_string(&e).map(|t| (e.index() as i64, t)))
            .collect::<Result<_, _>>()
            .map_err(io_err)?;
        let written = self
            .with(move |c| {
                let tx = c.transaction()?;
                for (idx, text) in &rows {
                    tx.execute("INSERT OR REPLACE INTO raft_log (idx, entry) VALUES (?1, ?2)", params![idx, text])?;
                }
                tx.commit()
            })
            .await;
        let answer = written.as_ref().map(|_| ()).map_err(|e| io::Error::other(e.to_string()));
        callback.io_completed(answer);
        written
    }

    async fn truncate_after(&mut self, last: Option<LogIdOf<Config>>) -> Result<(), io::Error> {
        let from = last.map_or(0, |l| l.index() as i64 + 1);
        self.with(move |c| c.execute("DELETE FROM raft_log WHERE idx >= ?1", [from])).await.map(drop)
    }

    async fn purge(&mut self, upto: LogIdOf<Config>) -> Result<(), io::Error> {
        let through = upto.index() as i64;
        self.with(move |c| c.execute("DELETE FROM raft_log WHERE idx <= ?1", [through])).await?;
        self.set_meta("last_purged", &upto).await
    }
}
