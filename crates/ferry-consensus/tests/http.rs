//! Consensus leasing over its real transport: three voters, each with its own HTTP listener
//! on loopback, every RPC and every forwarded lease call serialized as JSON. The
//! conformance suite passes through a follower, and a leader crash costs no lease.

use std::time::Duration;

use ferry_consensus::VoterTiming;
use ferry_core::{Incarnation, LeaseName, MachineName, ServerName};
use ferry_host::clock;
use ferry_store::{AcquireRequest, LeaseStore, StoreError};
use ferry_testkit::conformance;
use ferry_testkit::consensus::HttpVoters;

const CALL_TIMEOUT: Duration = Duration::from_millis(400);
const TTL: Duration = Duration::from_millis(1_500);

async fn serving_leader(voters: &HttpVoters, not: Option<u64>) -> u64 {
    voters.serving_leader(not).await.expect("a leader serves")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_http_through_a_follower() {
    conformance::run_all(|| async {
        let voters = HttpVoters::start(3, VoterTiming::default()).await.expect("voters start");
        let leader = serving_leader(&voters, None).await;
        let follower = (1..=3).find(|&v| v != leader).expect("a follower");
        let store = voters.store(follower, Duration::from_secs(5)).expect("store");
        // The store keeps the voters running for as long as the check uses it.
        Kept { store, _voters: voters }
    })
    .await;
}

/// A store that owns the voters it talks to.
struct Kept {
    store: ferry_consensus::ConsensusStore,
    _voters: HttpVoters,
}

#[async_trait::async_trait]
impl LeaseStore for Kept {
    async fn acquire(&self, req: &AcquireRequest) -> ferry_store::Result<ferry_core::lease::Lease> {
        self.store.acquire(req).await
    }
    async fn handover(
        &self,
        req: &AcquireRequest,
        from: &Incarnation,
    ) -> ferry_store::Result<ferry_core::lease::Lease> {
        self.store.handover(req, from).await
    }
    async fn renew(
        &self,
        name: &LeaseName,
        incarnation: &Incarnation,
        epoch: ferry_core::Epoch,
        ttl: Duration,
    ) -> ferry_store::Result<ferry_core::lease::Lease> {
        self.store.renew(name, incarnation, epoch, ttl).await
    }
    async fn release(
        &self,
        name: &LeaseName,
        incarnation: &Incarnation,
        epoch: ferry_core::Epoch,
    ) -> ferry_store::Result<()> {
        self.store.release(name, incarnation, epoch).await
    }
    async fn get(&self, name: &LeaseName) -> ferry_store::Result<Option<ferry_core::lease::Lease>> {
        self.store.get(name).await
    }
    async fn list(&self) -> ferry_store::Result<Vec<ferry_core::lease::Lease>> {
        self.store.list().await
    }
    async fn expired(&self) -> ferry_store::Result<Vec<ferry_core::lease::Lease>> {
        self.store.expired().await
    }
    fn describe(&self) -> String {
        self.store.describe()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_crash_over_http_costs_no_lease() {
    let mut voters = HttpVoters::start(3, VoterTiming::default()).await.expect("voters start");
    let leader = serving_leader(&voters, None).await;
    let home = (1..=3).find(|&v| v != leader).expect("a follower");
    let store = voters.store(home, CALL_TIMEOUT).expect("store");
    let mut held = Vec::new();
    for i in 0..10 {
        let owner = ServerName::new(format!("s{i}")).expect("name");
        let req = AcquireRequest {
            name: LeaseName::Server(owner.clone()),
            owner,
            machine: MachineName::new("m1").expect("name"),
            incarnation: Incarnation(format!("i{i}")),
            ttl: TTL,
        };
        let lease = store.acquire(&req).await.expect("acquire");
        held.push((req, lease.epoch));
    }
    let mut last_ok = vec![clock::now(); held.len()];
    let mut longest = 0u64;
    let until = clock::now() + 4_000;
    let mut killed = false;
    while clock::now() < until {
        if !killed && clock::now() > until - 2_500 {
            voters.kill(leader).await;
            killed = true;
        }
        for (i, (req, epoch)) in held.iter().enumerate() {
            let sent = clock::now();
            match store.renew(&req.name, &req.incarnation, *epoch, TTL).await {
                Ok(_) => {
                    longest = longest.max(sent.since(last_ok[i]));
                    last_ok[i] = sent;
                }
                Err(e @ StoreError::Lost { .. }) => panic!("a leader crash cost a lease: {e}"),
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(killed);
    assert!(longest < TTL.as_millis() as u64, "a renewal gap of {longest} ms reached the TTL");
    let successor = serving_leader(&voters, Some(leader)).await;
    assert_ne!(successor, leader);
}

/// A voter answers only RPCs for its own identity: after a voter lost its data, its name and
/// address answer with a new identity, and the leader's replication to the old one must find
/// nobody there (the leader took the old identity's acknowledgements from the fresh, empty
/// log before, and openraft panicked at the follower's log "going backwards").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_refuses_rpcs_for_another_identity() {
    let voters = HttpVoters::start(3, VoterTiming::default()).await.expect("voters start");
    let leader = serving_leader(&voters, None).await;
    let other = (1..=3).find(|&v| v != leader).expect("a follower");
    let url = &voters.urls[&other];
    let client = reqwest::Client::new();
    let ask = |target: Option<u64>| {
        let mut r = client.post(format!("{url}/raft/v1/vote")).json(&serde_json::json!({}));
        if let Some(t) = target {
            r = r.header(ferry_consensus::http::TARGET_HEADER, t);
        }
        r.send()
    };
    let wrong = ask(Some(other + 100)).await.expect("an answer");
    assert_eq!(wrong.status(), 409);
    assert!(wrong.text().await.unwrap().contains(&format!("this is voter {other}")));
    assert_eq!(ask(None).await.expect("an answer").status(), 400);
    // Its own identity gets through to the RPC (here a body openraft cannot read: 422).
    assert_eq!(ask(Some(other)).await.expect("an answer").status(), 422);
    // And the cluster still runs on the real RPCs, which name their targets.
    let store = voters.store(other, Duration::from_secs(5)).expect("store");
    let owner = ServerName::new("s1").expect("name");
    let req = AcquireRequest {
        name: LeaseName::Server(owner.clone()),
        owner,
        machine: MachineName::new("m1").expect("name"),
        incarnation: Incarnation("i1".into()),
        ttl: TTL,
    };
    store.acquire(&req).await.expect("a lease through a follower");
}
