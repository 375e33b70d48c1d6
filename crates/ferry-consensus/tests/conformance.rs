//! The conformance suite every lease table passes, on consensus leasing: three and five
//! voters in this process, each call made through a voter that is not the leader (so it
//! is forwarded) or through the leader, in turn.

use std::time::Duration;

use ferry_consensus::VoterTiming;
use ferry_testkit::conformance;
use ferry_testkit::consensus::Cluster;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

async fn suite(voters: u64) {
    let mut n = 0u64;
    conformance::run_all(|| {
        n += 1;
        let home = n % voters + 1;
        async move {
            let cluster = Cluster::start(voters, VoterTiming::default()).await.expect("the voters start");
            cluster.store(home, CALL_TIMEOUT)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_three_voters() {
    suite(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_five_voters() {
    suite(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_three_voters_on_disk() {
    let dir = tempfile::tempdir().expect("a directory");
    let mut n = 0u64;
    let base = dir.path().to_path_buf();
    conformance::run_all(|| {
        n += 1;
        let at = base.join(format!("cluster-{n}"));
        async move {
            Cluster::start_on_disk(3, VoterTiming::default(), &at)
                .await
                .expect("the voters start")
                .store(2, CALL_TIMEOUT)
        }
    })
    .await;
}
