//! One voter: its openraft instance, the replicated table, and, while it leads, the lease
//! table as the leader sees it (the rows with expiries by its own clock). A task per voter
//! keeps [`Leadership`] current: it notices a new term, and confirms the leadership with a
//! quorum round (`ensure_linearizable` with `ReadIndex`: heartbeats sent after the call,
//! answered by a quorum) every `confirm_every`, reading the clock *before* each round.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::leadership::{Leadership, LeadershipTiming, Serving};
use ferry_core::lease::Lease;
use ferry_core::{Epoch, Incarnation, LeaseName, Mono};
use ferry_host::clock;
use ferry_store::rules::{self, Refusal, Take};
use ferry_store::{AcquireRequest, StoreError};
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, RaftNetworkFactory, ReadPolicy, ServerState};

use crate::replicated::{Applied, Cmd, Config, Machine, MemLog, Raft, Stored};

/// The timing of a cluster's voters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoterTiming {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// How often a leader confirms its leadership with a quorum.
    pub confirm_every: Duration,
    pub leadership: LeadershipTiming,
}

impl Default for VoterTiming {
    /// For leases of a second or more: a dead leader is replaced in 0.15–0.6 s, and its
    /// successor grants 0.27 s later (`ferry_core::leadership`'s defaults, which
    /// `ferry validate` checks leases against).
    fn default() -> Self {
        use ferry_core::leadership as l;
        VoterTiming {
            heartbeat: l::HEARTBEAT,
            election_min: l::ELECTION_MIN,
            election_max: l::ELECTION_MAX,
            confirm_every: l::HEARTBEAT,
            leadership: l::DEFAULT_TIMING,
        }
    }
}

impl From<ferry_core::leadership::VoterPlan> for VoterTiming {
    /// A domain's plan (`Domain::voter_plan`): confirmations as often as heartbeats.
    fn from(p: ferry_core::leadership::VoterPlan) -> Self {
        VoterTiming {
            heartbeat: p.heartbeat,
            election_min: p.election_min,
            election_max: p.election_max,
            confirm_every: p.heartbeat,
            leadership: p.leadership,
        }
    }
}

/// Why a leader-side call was not answered here: try again (elsewhere, or later).
#[derive(Debug)]
pub(crate) enum Local {
    /// Not the leader, not yet serving, or deposed meanwhile.
    Retry(&'static str),
    /// The answer (`Held`, `Lost`, ...).
    Store(StoreError),
}

type LocalResult<T> = std::result::Result<T, Local>;

/// The lease table at the leader: the replicated rows with this leader's expiries.
struct LeaderState {
    leadership: Leadership,
    /// Built at the first call once serving (every held lease's clock restarted).
    view: Option<BTreeMap<String, Stored>>,
}

/// Where a voter keeps its vote and log.
#[derive(Debug, Clone)]
pub enum Storage {
    /// Lost with the process: a restarted voter must come back under a new identity.
    Memory,
    /// `DIR/raft.db`, kept across restarts.
    Disk(std::path::PathBuf),
}

pub struct Voter {
    pub id: u64,
    pub raft: Raft,
    machine: Machine,
    leader: Mutex<Option<LeaderState>>,
    /// One write at a time at the leader (decide, replicate, then update the view).
    writes: tokio::sync::Mutex<()>,
    timing: VoterTiming,
    data_source: String,
}

impl Voter {
    /// Starts voter `id` on `net`, with the vote and log `storage` holds (none yet: a new
    /// identity). The replicated table is rebuilt from the committed log.
    pub async fn start<N>(
        id: u64,
        net: N,
        timing: VoterTiming,
        data_source: &str,
        storage: &Storage,
    ) -> anyhow::Result<Arc<Voter>>
    where
        N: RaftNetworkFactory<Config>,
        N::Network: openraft::network::NetSnapshot<Config, SnapshotData = std::io::Cursor<Vec<u8>>>,
    {
        let config = openraft::Config {
            cluster_name: "ferry".into(),
            heartbeat_interval: timing.heartbeat.as_millis() as u64,
            election_timeout_min: timing.election_min.as_millis() as u64,
            election_timeout_max: timing.election_max.as_millis() as u64,
            // The whole log is kept (it holds no renewals), so a restarted voter rebuilds
            // its table from it and no snapshot needs to be stored.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            // A voter that cannot win (cut off, restarted behind) asks before it raises its
            // term: otherwise it comes back from a partition with a higher term and deposes a
            // healthy leader, which holds every renewal up for an election. Off by default
            // in openraft 0.10.
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()?;
        let config = Arc::new(config);
        let machine = Machine::default();
        let raft = match storage {
            Storage::Memory => Raft::new(id, config, net, MemLog::default(), machine.clone()).await?,
            Storage::Disk(dir) => {
                std::fs::create_dir_all(dir)?;
                let log = crate::disk::DiskLog::open(&dir.join("raft.db"))?;
                let kept = log.identity(|| id)?;
                anyhow::ensure!(
                    kept == id,
                    "{} holds the vote and log of voter {kept}, not of voter {id}",
                    dir.display()
                );
                Raft::new(id, config, net, log, machine.clone()).await?
            }
        };
        let voter = Arc::new(Voter {
            id,
            raft,
            machine,
            leader: Mutex::new(None),
            writes: tokio::sync::Mutex::new(()),
            timing,
            data_source: data_source.to_string(),
        });
        tokio::spawn(keep_leadership(Arc::downgrade(&voter)));
        Ok(voter)
    }

    /// Makes `voters` (id and address) the first membership (one voter of a new cluster
    /// does this).
    pub async fn initialize(&self, voters: &BTreeMap<u64, String>) -> anyhow::Result<()> {
        let members: BTreeMap<u64, BasicNode> = voters.iter().map(|(&v, addr)| (v, BasicNode::new(addr))).collect();
        self.raft.initialize(members).await?;
        Ok(())
    }

    /// The voter this one believes leads, if any.
    pub fn current_leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Option<LeaderState>> {
        self.leader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the leader's view if this voter leads and serves at `now`.
    fn with_view<T>(
        &self,
        now: Mono,
        f: impl FnOnce(&mut BTreeMap<String, Stored>) -> LocalResult<T>,
    ) -> LocalResult<T> {
        let mut state = self.state();
        let Some(s) = state.as_mut() else {
            return Err(Local::Retry("not the cluster leader"));
        };
        match s.leadership.serving(now) {
            Serving::Yes => {}
            Serving::WaitingOutPredecessor(_) => return Err(Local::Retry("waiting out the previous leader")),
            Serving::Unconfirmed => return Err(Local::Retry("leadership not confirmed by a quorum")),
        }
        let leadership = &s.leadership;
        let view = s.view.get_or_insert_with(|| restarted(self.machine.table().rows, leadership));
        f(view)
    }

    fn now() -> Mono {
        clock::now()
    }

    fn corrupt(&self, e: rules::CorruptRow) -> Local {
        Local::Store(StoreError::Unavailable { data_source: self.data_source.clone(), source: Box::new(e) })
    }

    fn lease(&self, stored: &Stored, now: Mono) -> LocalResult<Lease> {
        stored.row.to_lease(now.ms() as i64).map_err(|e| self.corrupt(e))
    }

    /// Replicates `stored` over `expect`, then puts it in the view (if still leading).
    async fn write(&self, stored: Stored, expect: Option<&Stored>) -> LocalResult<()> {
        let term = self.state().as_ref().map(|s| s.leadership.term());
        let cmd = Cmd::Put { stored: stored.clone(), expect: expect.map(Stored::version) };
        let answer = self.raft.client_write(cmd).await.map_err(|_| Local::Retry("the write was not committed here"))?;
        match answer.data {
            Applied::Written => {}
            _ => return Err(Local::Retry("the row changed under the write")),
        }
        let mut state = self.state();
        match state.as_mut() {
            Some(s) if Some(s.leadership.term()) == term => {
                if let Some(view) = s.view.as_mut() {
                    view.insert(stored.row.name.clone(), stored);
                }
                Ok(())
            }
            _ => Err(Local::Retry("deposed while writing")),
        }
    }

    pub(crate) async fn take(&self, req: &AcquireRequest, how: Take<'_>) -> LocalResult<Lease> {
        let _one = self.writes.lock().await;
        let now = Self::now();
        let ttl_ms = rules::ttl_ms(req.ttl);
        let (old, row) = self.with_view(now, |view| {
            let old = view.get(&req.name.to_string()).cloned();
            match rules::take(old.as_ref().map(|s| &s.row), req, how, now.ms() as i64) {
                Ok(row) => Ok((old, row)),
                Err(Refusal::Store(e)) => Err(Local::Store(e)),
                Err(Refusal::Corrupt(e)) => Err(self.corrupt(e)),
            }
        })?;
        let stored = Stored { row, ttl_ms };
        let same = old.as_ref().is_some_and(|o| o.version() == stored.version());
        if same {
            // A retry whose first answer was lost: a renewal, nothing to replicate.
            self.with_view(now, |view| {
                view.insert(stored.row.name.clone(), stored.clone());
                Ok(())
            })?;
        } else {
            self.write(stored.clone(), old.as_ref()).await?;
        }
        self.lease(&stored, now)
    }

    pub(crate) async fn renew(
        &self,
        name: &LeaseName,
        incarnation: &Incarnation,
        epoch: Epoch,
        ttl: std::time::Duration,
    ) -> LocalResult<Lease> {
        let now = Self::now();
        let ttl_ms = rules::ttl_ms(ttl);
        let renewed = self.with_view(now, |view| {
            let old = view.get(&name.to_string()).cloned();
            let row = rules::renew(old.as_ref().map(|s| s.row.clone()), name, incarnation, epoch, ttl, now.ms() as i64)
                .map_err(Local::Store)?;
            let stored = Stored { row, ttl_ms };
            if old.as_ref().is_some_and(|o| o.ttl_ms == ttl_ms) {
                // Memory only: a new leader restarts this lease's clock with the same TTL.
                view.insert(name.to_string(), stored.clone());
                Ok((stored, None))
            } else {
                Ok((stored, old))
            }
        })?;
        match renewed {
            (stored, None) => self.lease(&stored, now),
            (stored, Some(old)) => {
                // Another TTL than the replicated one: a new leader must know it.
                let _one = self.writes.lock().await;
                self.write(stored.clone(), Some(&old)).await?;
                self.lease(&stored, now)
            }
        }
    }

    pub(crate) async fn release(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch) -> LocalResult<()> {
        let _one = self.writes.lock().await;
        let now = Self::now();
        let decided = self.with_view(now, |view| {
            let old = view.get(&name.to_string()).cloned();
            let row = rules::release(old.as_ref().map(|s| s.row.clone()), name, incarnation, epoch, now.ms() as i64)
                .map_err(Local::Store)?;
            Ok(row.map(|row| (Stored { row, ttl_ms: old.as_ref().map_or(0, |o| o.ttl_ms) }, old)))
        })?;
        match decided {
            None => Ok(()),
            Some((stored, old)) => self.write(stored, old.as_ref()).await,
        }
    }

    /// Every row, as leases timed by this leader's clock.
    pub(crate) fn leases(&self) -> LocalResult<Vec<Lease>> {
        let now = Self::now();
        let rows: Vec<Stored> = self.with_view(now, |view| Ok(view.values().cloned().collect()))?;
        rows.iter().map(|s| self.lease(s, now)).collect()
    }
}

/// The view of a new leader: every held lease's clock restarted at `serves_from`.
fn restarted(rows: BTreeMap<String, Stored>, leadership: &Leadership) -> BTreeMap<String, Stored> {
    let from = leadership.serves_from().ms() as i64;
    rows.into_iter()
        .map(|(name, mut s)| {
            if s.row.held {
                let ttl = Duration::from_millis(s.ttl_ms.max(0) as u64);
                // The replicated expiry is another leader's clock: not a known expiry here
                // (except under the planted bug that keeps it).
                let kept = Mono(s.row.expires_at_ms.max(0) as u64);
                s.row.expires_at_ms = leadership
                    .restarted_expiry(ttl, Some(kept).filter(|_| leadership.keeps_replicated_expiries()))
                    .ms() as i64;
            } else {
                s.row.expires_at_ms = s.row.expires_at_ms.min(from);
            }
            s.row.renewed_at_ms = from;
            (name, s)
        })
        .collect()
}

/// Keeps the voter's [`Leadership`] current until the voter is dropped.
async fn keep_leadership(voter: std::sync::Weak<Voter>) {
    loop {
        let Some(v) = voter.upgrade() else { return };
        let every = v.timing.confirm_every;
        let (state, term) = {
            let m = v.raft.metrics();
            let m = m.borrow_watched();
            (m.state, m.current_term)
        };
        if state != ServerState::Leader {
            *v.state() = None;
        } else {
            {
                let mut s = v.state();
                if s.as_ref().map(|s| s.leadership.term()) != Some(term) {
                    tracing::info!(voter = v.id, term, "elected cluster leader; waiting out the previous leader");
                    *s = Some(LeaderState {
                        leadership: Leadership::elected(term, clock::now(), &v.timing.leadership),
                        view: None,
                    });
                }
            }
            // `ReadIndex` also waits until this voter applied everything up to
            // max(committed, this term's first entry): every row an earlier leader decided
            // is in the table before the view is built from it (in `with_view`, only once
            // a confirmation of this term succeeded).
            let sent_at = clock::now();
            let confirmed =
                tokio::time::timeout(v.timing.leadership.validity, v.raft.ensure_linearizable(ReadPolicy::ReadIndex))
                    .await;
            if matches!(confirmed, Ok(Ok(_))) {
                if let Some(s) = v.state().as_mut().filter(|s| s.leadership.term() == term) {
                    s.leadership.confirmed(sent_at, &v.timing.leadership);
                }
            }
        }
        drop(v);
        tokio::time::sleep(every).await;
    }
}
