//! Consensus leasing under faults (DESIGN §3 rule 11), with real openraft voters in this
//! process: the leader crashes, or is cut off from everyone, while holders keep renewing.
//! What must hold: no holder is refused a renewal of a lease it keeps renewing (a leader
//! change costs time, never a lease), and no lease is granted to anyone else before its
//! holder's own deadline (the last renewal it *sent* that succeeded, plus the TTL) has
//! passed: a deposed leader stops renewing before its successor starts granting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_consensus::{ConsensusStore, VoterTiming};
use ferry_core::time::Bugs;
use ferry_core::{Epoch, Incarnation, LeaseName, MachineName, Mono, ServerName};
use ferry_host::clock;
use ferry_store::{AcquireRequest, LeaseStore, StoreError};
use ferry_testkit::consensus::Cluster;

const TTL: Duration = Duration::from_millis(1_500);
const RENEW_EVERY: Duration = Duration::from_millis(250);
const CALL_TIMEOUT: Duration = Duration::from_millis(400);

fn request(server: &str, incarnation: &str) -> AcquireRequest {
    let owner = ServerName::new(server).expect("server name");
    AcquireRequest {
        name: LeaseName::Server(owner.clone()),
        owner,
        machine: MachineName::new("m1").expect("machine name"),
        incarnation: Incarnation(incarnation.into()),
        ttl: TTL,
    }
}

/// What one holder saw while renewing.
#[derive(Default, Debug)]
struct Seen {
    /// Send instants of the renewals that succeeded.
    renewed: Vec<Mono>,
    /// Refusals (`Lost`): never expected while the holder keeps renewing.
    lost: Vec<String>,
}

impl Seen {
    /// The holder's own deadline: a TTL after the last successful renewal was sent.
    fn deadline(&self) -> Option<Mono> {
        self.renewed.last().map(|&t| t + TTL)
    }

    /// The longest time between two successful renewals' send instants.
    fn longest_gap_ms(&self) -> u64 {
        self.renewed.windows(2).map(|w| w[1].since(w[0])).max().unwrap_or(0)
    }
}

/// Renews `lease` through `store` every [`RENEW_EVERY`] until `stop`, as a holder does.
fn keep_renewing(
    store: ConsensusStore,
    req: AcquireRequest,
    epoch: Epoch,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        while !*stop.borrow() {
            let sent = clock::now();
            match store.renew(&req.name, &req.incarnation, epoch, TTL).await {
                Ok(_) => record.lock().expect("seen").renewed.push(sent),
                Err(e @ StoreError::Lost { .. }) => record.lock().expect("seen").lost.push(e.to_string()),
                Err(_) => {} // Timeout while the leader changes: the lease absorbs it.
            }
            tokio::time::sleep(RENEW_EVERY).await;
        }
    });
    (seen, task)
}

/// The leader once a voter other than `not` (0: any) leads and serves, as seen by the others.
async fn new_leader(cluster: &Cluster, not: u64) -> u64 {
    cluster.serving_leader(Some(not)).await.expect("a new leader serves")
}

async fn started(voters: u64, bugs: Bugs) -> (Cluster, u64) {
    let mut timing = VoterTiming::default();
    timing.leadership.bugs = bugs;
    let cluster = Cluster::start(voters, timing).await.expect("voters start");
    let leader = new_leader(&cluster, 0).await;
    (cluster, leader)
}

/// Twenty holders renew through a follower; the leader crashes. A new leader is elected and
/// every holder keeps its lease: no refusal, no renewal gap as long as the TTL, and nothing
/// listed as expired by the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_crash_costs_no_lease() {
    let violations = leader_crash(Bugs::NONE).await;
    assert!(violations.is_empty(), "{violations:#?}");
}

/// The crash scenario, with what went wrong.
async fn leader_crash(bugs: Bugs) -> Vec<String> {
    let (cluster, leader) = started(3, bugs).await;
    let home = (1..=3).find(|&v| v != leader).expect("a follower");
    let store = cluster.store(home, CALL_TIMEOUT);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut holders = Vec::new();
    for i in 0..20 {
        let req = request(&format!("s{i}"), &format!("i{i}"));
        let lease = store.acquire(&req).await.expect("acquire");
        holders.push(keep_renewing(store.clone(), req, lease.epoch, stop.clone()));
    }
    // Longer than a TTL: what was replicated at the acquisitions is long out of date.
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    cluster.kill(leader).await;
    let successor = new_leader(&cluster, leader).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let expired = cluster.store(successor, CALL_TIMEOUT).expired().await.expect("expired");
    let _ = stop_tx.send(true);
    let mut violations = Vec::new();
    for (seen, task) in holders {
        task.await.expect("holder");
        let seen = seen.lock().expect("seen");
        if !seen.lost.is_empty() {
            violations.push(format!("a holder lost its lease to a leader crash: {:?}", seen.lost));
        }
        if seen.longest_gap_ms() >= TTL.as_millis() as u64 {
            violations.push(format!("a renewal gap reached the TTL: {seen:?}"));
        }
    }
    if !expired.is_empty() {
        violations.push(format!("the new leader expired leases being renewed: {expired:?}"));
    }
    violations
}

/// The leader is cut off from every other voter while a holder renews through it. The
/// holder's renewals stop succeeding; the majority elects a successor, which grants the
/// lease to a rival only after the holder's own deadline, and restarted the lease's clock so
/// that it expires no earlier than that deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_stops_renewing_before_its_successor_grants() {
    let violations = partitioned_leader(Bugs::NONE).await;
    assert!(violations.is_empty(), "{violations:#?}");
}

/// The partition scenario, with what went wrong.
async fn partitioned_leader(bugs: Bugs) -> Vec<String> {
    let (cluster, leader) = started(3, bugs).await;
    let others: Vec<u64> = (1..=3).filter(|&v| v != leader).collect();
    let holder_store = cluster.store(leader, CALL_TIMEOUT);
    let req = request("ms1", "holder");
    let lease = holder_store.acquire(&req).await.expect("acquire");
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (seen, task) = keep_renewing(holder_store, req, lease.epoch, stop);
    tokio::time::sleep(Duration::from_millis(600)).await;

    cluster.router.partition(&[leader], &others);
    let successor = new_leader(&cluster, leader).await;
    let rival_store = cluster.store(successor, CALL_TIMEOUT);
    let as_seen = rival_store.get(&lease.name).await.expect("get").expect("the row was replicated");
    let expiry = clock::now() + as_seen.remaining_ms.max(0) as u64;
    let rival = request("ms1", "rival");
    let mut violations = Vec::new();
    let granted_at = loop {
        match rival_store.acquire(&rival).await {
            Ok(l) => {
                if l.epoch <= lease.epoch {
                    violations.push(format!("a take did not bump the epoch: {l:?}"));
                }
                break clock::now();
            }
            Err(StoreError::Held { .. } | StoreError::Timeout { .. }) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("unexpected refusal: {e}"),
        }
    };
    // The holder keeps trying through the deposed leader a while longer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(true);
    task.await.expect("holder");
    let seen = seen.lock().expect("seen");
    let deadline = seen.deadline().expect("the holder renewed before the partition");
    if expiry < deadline {
        violations.push(format!(
            "the new leader would expire the lease at {expiry}, before its holder's deadline {deadline}"
        ));
    }
    if granted_at <= deadline {
        violations.push(format!("granted to a rival at {granted_at}, before the holder's deadline {deadline}"));
    }
    if !seen.lost.is_empty() {
        violations.push(format!("the deposed leader refused instead of going quiet: {:?}", seen.lost));
    }
    violations
}

/// The scenarios catch the bugs rule 11 exists against (ferry-core's planted bugs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_leadership_bugs_are_caught() {
    let no_restart = Bugs { leader_no_restart: true, ..Bugs::NONE };
    assert!(no_restart.leader_no_restart(), "ferry-core must be built with `planted-bugs`");
    let caught = leader_crash(no_restart).await;
    assert!(!caught.is_empty(), "a new leader that expires leases at once went unnoticed");
    eprintln!("leader_no_restart caught: {caught:?}");
    let unconfirmed = Bugs { leader_unconfirmed_renews: true, ..Bugs::NONE };
    let caught = partitioned_leader(unconfirmed).await;
    assert!(!caught.is_empty(), "a deposed leader that keeps renewing went unnoticed");
    eprintln!("leader_unconfirmed_renews caught: {caught:?}");
}

/// Every voter dies at once (a power cut) and starts again from its vote and log on disk:
/// the rows come back with their epochs, every lease held before counts a full TTL from the
/// new leader's start (a rival is refused), and the holder renews as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restarted_from_disk_keeps_every_lease_and_epoch() {
    let dir = tempfile::tempdir().expect("a directory");
    let cluster = Cluster::start_on_disk(3, VoterTiming::default(), dir.path()).await.expect("voters start");
    let leader = new_leader(&cluster, 0).await;
    let store = cluster.store(leader, CALL_TIMEOUT);
    let mut held = Vec::new();
    for i in 0..5 {
        let req = request(&format!("s{i}"), &format!("i{i}"));
        let first = store.acquire(&req).await.expect("acquire");
        // A second owner, so the epochs are not all 1.
        store.release(&req.name, &req.incarnation, first.epoch).await.expect("release");
        let again = store.acquire(&req).await.expect("acquire again");
        assert!(again.epoch > first.epoch);
        held.push((req, again.epoch));
    }
    for v in 1..=3 {
        cluster.kill(v).await;
    }
    for v in 1..=3 {
        cluster.restart(v).await.expect("the voter starts again from disk");
    }
    let leader = new_leader(&cluster, 0).await;
    let store = cluster.store(leader, CALL_TIMEOUT);
    for (req, epoch) in &held {
        let lease = store.get(&req.name).await.expect("get").expect("the row survived");
        assert_eq!(lease.epoch, *epoch, "{lease:?}");
        assert!(lease.remaining_ms > 1_000, "not a full TTL from the new leader: {lease:?}");
        let rival = AcquireRequest { incarnation: Incarnation("rival".into()), ..req.clone() };
        assert!(matches!(store.acquire(&rival).await, Err(StoreError::Held { .. })), "a held lease was granted");
        store.renew(&req.name, &req.incarnation, *epoch, TTL).await.expect("the holder renews");
    }
}
