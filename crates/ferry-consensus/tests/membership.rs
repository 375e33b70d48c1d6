//! Who serves after a partition, and how the membership changes (ARCHITECTURE.md, "Consensus
//! voters"): openraft's quorums are majorities, so an even split of an even number of voters
//! leaves neither side serving (the seed keeps the leader's side: a documented deviation);
//! keeping the voter count odd (a learner on the fourth machine) gives one side the
//! majority. A voter whose data is lost comes back under a new identity.

use std::time::Duration;

use ferry_consensus::VoterTiming;
use ferry_core::{Incarnation, LeaseName, MachineName, ServerName};
use ferry_host::clock;
use ferry_store::{AcquireRequest, LeaseStore};
use ferry_testkit::consensus::Cluster;

const CALL_TIMEOUT: Duration = Duration::from_millis(300);

/// Whether a lease call through voter `via` is answered within `within`.
async fn serves(cluster: &Cluster, via: u64, within: Duration) -> bool {
    let deadline = clock::now() + within;
    while clock::now() < deadline {
        if cluster.store(via, CALL_TIMEOUT).list().await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn leader_serving(cluster: &Cluster) -> u64 {
    cluster.serving_leader(None).await.expect("a leader serves")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_even_split_of_four_voters_serves_on_neither_side() {
    let cluster = Cluster::start(4, VoterTiming::default()).await.expect("voters start");
    let leader = leader_serving(&cluster).await;
    let others: Vec<u64> = (1..=4).filter(|&v| v != leader).collect();
    let with_leader = [leader, others[0]];
    let without = [others[1], others[2]];
    cluster.router.partition(&with_leader, &without);
    // Past the leader's validity and several election timeouts.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    for v in with_leader.iter().chain(&without) {
        assert!(!serves(&cluster, *v, Duration::from_millis(1_000)).await, "voter {v}'s side serves after a 2-2 split");
    }
    cluster.router.heal();
    assert!(serves(&cluster, without[0], Duration::from_secs(10)).await, "nobody serves after the split healed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_and_a_learner_keep_the_side_with_two_voters() {
    let cluster = Cluster::start_with_learners(3, 1, VoterTiming::default()).await.expect("voters start");
    leader_serving(&cluster).await;
    // Machines 1 and 2 (two voters) against 3 and 4 (a voter and the learner).
    cluster.router.partition(&[1, 2], &[3, 4]);
    assert!(serves(&cluster, 1, Duration::from_secs(10)).await, "the side with two of three voters does not serve");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for v in [3, 4] {
        assert!(!serves(&cluster, v, Duration::from_millis(1_000)).await, "voter {v}'s side serves without a majority");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_whose_data_is_lost_rejoins_under_a_new_identity() {
    let cluster = Cluster::start(3, VoterTiming::default()).await.expect("voters start");
    let leader = leader_serving(&cluster).await;
    let owner = ServerName::new("ms1").expect("name");
    let req = AcquireRequest {
        name: LeaseName::Server(owner.clone()),
        owner,
        machine: MachineName::new("m1").expect("name"),
        incarnation: Incarnation("a".into()),
        ttl: Duration::from_millis(1_500),
    };
    let lease = cluster.store(leader, CALL_TIMEOUT * 10).acquire(&req).await.expect("acquire");
    // A follower loses its disk (these voters keep their log in memory) ...
    let lost = (1..=3).find(|&v| v != leader).expect("a follower");
    cluster.kill(lost).await;
    // ... and comes back as voter 4, which catches up and replaces it.
    cluster.replace(lost, 4).await.expect("replace the lost voter");
    // The new identity counts: with the old leader gone too, voter 4 and the third voter
    // are the majority, and they have the row.
    cluster.kill(leader).await;
    let third = (1..=3).find(|&v| v != leader && v != lost).expect("the third voter");
    assert!(serves(&cluster, third, Duration::from_secs(10)).await, "the replaced voter does not count for a majority");
    let got = cluster.store(4, CALL_TIMEOUT * 10).get(&lease.name).await.expect("get").expect("the row");
    assert_eq!(got.epoch, lease.epoch);
}
