//! Many servers per machine (issue 11): forty servers on four machines start without one
//! fence, and when a machine dies only its own servers move; the others keep their first
//! instance (epoch 1) throughout.

use std::collections::BTreeMap;

use ferry_api::{EventKind, ServerStatus, ViewState};
use ferry_testkit::{DomainSpec, Harness};

use super::journal_with;
use crate::{exe, PATIENCE, SERIAL};

const SERVERS: usize = 40;

/// Every server, by name, once all of them are RUNNING where `place` says.
async fn all_running(h: &Harness, place: impl Fn(&ServerStatus) -> bool, what: &str) -> BTreeMap<String, ServerStatus> {
    let until = ferry_host::clock::now() + PATIENCE * 4;
    loop {
        let list: BTreeMap<String, ServerStatus> =
            h.status().await.unwrap_or_default().into_iter().map(|s| (s.name.to_string(), s)).collect();
        let behind: Vec<String> = list
            .values()
            .filter(|s| s.state != ViewState::Running || !place(s))
            .map(|s| format!("{} {:?} on {:?}", s.name, s.state, s.machine))
            .collect();
        if list.len() == SERVERS && behind.is_empty() {
            return list;
        }
        assert!(ferry_host::clock::now() < until, "timed out waiting for {what}: not yet {behind:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn fences(events: &[ferry_api::Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Fenced | EventKind::RestartAfterFence | EventKind::LeaseExpired))
        .map(|e| format!("{} {}: {}", e.kind, e.server.as_deref().unwrap_or("-"), e.message))
        .collect()
}

#[tokio::test]
async fn forty_servers_start_without_a_fence_and_only_a_dead_machines_servers_move() {
    let _g = SERIAL.lock().await;
    // The seed's timings scaled down: 500 ms x 3, grace 500 ms; ten servers per machine.
    let h = Harness::start(DomainSpec::many(SERVERS, 4, 500, 3, 500), exe(), None).await.expect("domain starts");
    h.admin().start_cluster("scale").await.expect("start-cluster accepted");
    let started = all_running(&h, |s| s.machine.as_ref() == Some(&s.home_machine), "40 servers at home").await;
    let events = h.admin().events(0).await.expect("events");
    assert_eq!(fences(&events), Vec::<String>::new(), "a fence while the cluster started");
    assert!(started.values().all(|s| s.epoch.map(|e| e.0) == Some(1)), "every server has its first instance");

    let doomed: Vec<String> =
        started.values().filter(|s| s.home_machine.as_str() == "node-2").map(|s| s.name.to_string()).collect();
    assert_eq!(doomed.len(), SERVERS / 4);
    assert!(h.kill_machine("node-2") >= doomed.len(), "node-2 had a Node Manager and its servers");
    let after =
        all_running(&h, |s| s.machine.as_ref().is_some_and(|m| m.as_str() != "node-2"), "node-2's servers moved").await;

    for (name, s) in &after {
        if doomed.contains(name) {
            assert!(s.epoch.map(|e| e.0) > Some(1), "{name} moved with a larger fencing token: {s:?}");
        } else {
            assert_eq!(s.machine, started[name].machine, "{name} stayed where it was");
            assert_eq!(s.epoch.map(|e| e.0), Some(1), "{name} was never restarted");
        }
    }
    let events = h.admin().events(0).await.expect("events");
    let collateral: Vec<String> = fences(&events)
        .into_iter()
        .filter(|f| !doomed.iter().any(|d| f.split(':').next().unwrap().ends_with(d.as_str())))
        .collect();
    assert_eq!(collateral, Vec::<String>::new(), "a fence of a server that was not on node-2");
    for name in after.keys() {
        journal_with(&h, name, if doomed.contains(name) { 2 } else { 1 }).await;
    }
}
