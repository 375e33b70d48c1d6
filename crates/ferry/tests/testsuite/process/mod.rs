//! Real-process tests on loopback (DESIGN §5 "processes"): every scenario starts a whole
//! domain (an Administration Server and three Node Managers) with fast timings, injects a
//! failure with real signals, waits for the domain to heal, and checks the safety property
//! on the services' own journals: no two instances of a server ever ran at once, and every
//! new instance carries a larger fencing token. Waits have generous deadlines; timings are
//! measured by the benchmark, not asserted here.

use std::path::Path;

use ferry_testkit::{check_journal, wait_until, DomainSpec, Harness};

use crate::{exe, PATIENCE};

mod addresses;
mod cli;
mod consensus;
mod failover;
mod input;
mod postgres;
mod scale;
mod security;

fn spec() -> DomainSpec {
    // 200 ms x 3 = 600 ms leases, 200 ms grace: fast, yet far from the scheduler's noise.
    DomainSpec::figure_7_1(200, 3, 200)
}

async fn started() -> Harness {
    let h = Harness::start(spec(), exe(), None).await.expect("domain starts");
    let admin = h.admin();
    admin.start_cluster("cluster-1").await.expect("start-cluster accepted");
    h.wait_running("ms1", "machine-b", 0, PATIENCE).await.expect("ms1 runs on machine-b");
    h.wait_running("ms2", "machine-c", 0, PATIENCE).await.expect("ms2 runs on machine-c");
    h
}

async fn status_of(h: &Harness, server: &str) -> ferry_api::ServerStatus {
    h.status().await.expect("status").into_iter().find(|s| s.name == server).expect("server listed")
}

async fn events(h: &Harness) -> Vec<ferry_api::Event> {
    h.admin().events(0).await.expect("events")
}

async fn assert_safe(h: &Harness) {
    for s in ["ms1", "ms2"] {
        journal_with(h, s, 1).await;
    }
}

/// `server`'s journal once it shows at least `instances` instances (a service writes its
/// first line a moment after its server reports it running), checked for safety each time.
async fn journal_with(h: &Harness, server: &str, instances: usize) -> Vec<ferry_testkit::Instance> {
    let path = h.journal_path(server);
    let enough = || async {
        path.exists()
            && check_journal(&path)
                .map(|list| list.len() >= instances)
                .unwrap_or_else(|e| panic!("safety violated for {server}: {e}"))
    };
    wait_until(PATIENCE, &format!("{server}'s journal to show {instances} instance(s)"), enough).await.unwrap();
    check_journal(&path).unwrap_or_else(|e| panic!("safety violated for {server}: {e}"))
}

/// `ferry ARGS` as an operator on the admin's host: its token comes from the client file
/// the admin left in `config` (`FERRY_CONFIG_DIR`), unless `env` names one.
fn ferry_cli_env(admin: &str, config: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    std::process::Command::new(exe())
        .args(args)
        .env("FERRY_ADMIN", admin)
        .env("FERRY_CONFIG_DIR", config)
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_TOKEN_FILE")
        .envs(env.iter().copied())
        .output()
        .expect("ferry runs")
}

fn ferry_cli(admin: &str, config: &Path, args: &[&str]) -> std::process::Output {
    ferry_cli_env(admin, config, &[], args)
}
