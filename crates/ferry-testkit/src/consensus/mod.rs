//! Consensus-leasing voters for the tests and the benchmark of `ferry-consensus`: in this
//! process with a network that can be cut ([`Cluster`]), or each behind its own HTTP
//! listener on loopback ([`HttpVoters`]), as the Node Managers will run them.

mod http;
mod in_process;
pub mod net;

pub use http::HttpVoters;
pub use in_process::Cluster;

use std::time::Duration;

use ferry_consensus::ConsensusStore;
use ferry_host::clock;
use ferry_store::LeaseStore;

/// How long [`serving_leader`] waits for a leader that answers.
const LEADER_PATIENCE_MS: u64 = 20_000;

/// The leader, as some voter of `voters` other than `not` sees it, once it is not `not`
/// and answers a lease call through `store`.
async fn serving_leader(
    voters: &[u64],
    not: Option<u64>,
    seen_by: impl Fn(u64) -> Option<u64>,
    store: impl Fn(u64) -> anyhow::Result<ConsensusStore>,
) -> anyhow::Result<u64> {
    let deadline = clock::now() + LEADER_PATIENCE_MS;
    loop {
        let seen = voters.iter().copied().filter(|&v| Some(v) != not).find_map(&seen_by);
        if let Some(l) = seen.filter(|&l| Some(l) != not) {
            if store(l)?.list().await.is_ok() {
                return Ok(l);
            }
        }
        anyhow::ensure!(clock::now() < deadline, "no serving leader within {} s", LEADER_PATIENCE_MS / 1000);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The call timeout of the lease call that shows a leader serves.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
