//! Consensus leasing with real processes (`[leasing] basis = "consensus"`): the three Node
//! Managers are the voters; servers and the admin reach the cluster leader through them.
//! The leader's machine dies, a voter leaves cleanly and comes back, a voter loses its data
//! and comes back as somebody new; the journals show no two instances at once.

use ferry_api::{EventKind, LeasingStatus};
use ferry_testkit::{wait_until, DomainSpec, Harness};

use super::{assert_safe, events, journal_with, status_of};
use crate::{exe, PATIENCE, SERIAL};

async fn started() -> Harness {
    // 300 ms x 3: leases of 900 ms, within which a change of leader fits (`ferry validate`).
    let mut spec = DomainSpec::figure_7_1(300, 3, 200);
    spec.consensus = true;
    let h = Harness::start(spec, exe(), None).await.expect("domain starts");
    h.admin().start_cluster("cluster-1").await.expect("start-cluster accepted");
    h.wait_running("ms1", "machine-b", 0, PATIENCE).await.expect("ms1 runs on machine-b");
    h.wait_running("ms2", "machine-c", 0, PATIENCE).await.expect("ms2 runs on machine-c");
    h
}

async fn leasing(h: &Harness) -> LeasingStatus {
    h.admin().leasing().await.expect("leasing status")
}

/// Waits until the cluster's leader and voters satisfy `cond`; gives that view.
async fn wait_leasing(h: &Harness, what: &str, cond: impl Fn(&LeasingStatus) -> bool) -> LeasingStatus {
    let admin = h.admin();
    let cond = &cond;
    if let Err(e) =
        wait_until(PATIENCE, what, || async { admin.leasing().await.map(|l| cond(&l)).unwrap_or(false) }).await
    {
        panic!("{e}; the last view: {:?}", admin.leasing().await);
    }
    leasing(h).await
}

fn members(l: &LeasingStatus) -> Vec<(String, u64)> {
    l.voters.iter().filter(|v| v.member).filter_map(|v| Some((v.name.clone(), v.id?))).collect()
}

/// The seed's consensus leasing: the leader's machine dies; the majority elects a new
/// leader, which waits out the old one and restarts every lease's clock, and the master
/// migrates the dead machine's server; the server on the surviving machine keeps its lease.
#[tokio::test]
async fn the_leaders_machine_dies_and_the_majority_elects_another_and_migrates_its_server() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let before = wait_leasing(&h, "a cluster leader", |l| l.leader.is_some()).await;
    assert_eq!(members(&before).len(), 3, "every Node Manager is a voter: {before:?}");
    let leader = before.leader.clone().unwrap();
    let (victim, survivor, target) = match leader.as_str() {
        "machine-b" => ("ms1", "ms2", "machine-d"),
        "machine-c" => ("ms2", "ms1", "machine-d"),
        // The leader hosts no server: still kill it, and the servers must not notice.
        _ => ("", "ms1", ""),
    };
    let survivor_before = status_of(&h, survivor).await;
    let victim_before = if victim.is_empty() { None } else { Some(status_of(&h, victim).await) };

    assert!(h.kill_machine(&leader) >= 1);
    let after =
        wait_leasing(&h, "a new leader", |l| l.leader.as_deref().is_some_and(|n| n != leader) && l.term > before.term)
            .await;
    if let Some(v) = victim_before {
        let moved = h.wait_running(victim, target, v.epoch.unwrap().0, PATIENCE).await.expect("migrated");
        assert!(moved.epoch > v.epoch);
    }
    let survivor_after = status_of(&h, survivor).await;
    assert_eq!(
        survivor_after.epoch, survivor_before.epoch,
        "{survivor} kept its instance through the change of leader"
    );
    let ev = events(&h).await;
    assert!(
        !ev.iter().any(|e| e.kind == EventKind::Fenced && e.server.as_deref() == Some(survivor)),
        "{survivor} was fenced: {:?}",
        ev.iter().filter(|e| e.kind == EventKind::Fenced).collect::<Vec<_>>()
    );
    let elected: Vec<_> = ev.iter().filter(|e| e.kind == EventKind::LeaderElected).collect();
    assert!(elected.len() >= 2, "both elections are events: {elected:?}");
    assert!(after.voters.iter().any(|v| v.name == leader && v.member && !v.reachable), "{after:?}");
    assert_safe(&h).await;
    if !victim.is_empty() {
        journal_with(&h, victim, 2).await;
    }
}

/// A voter whose Node Manager stops cleanly stops counting against the majority (the seed's
/// cleanly shut down server), and joins again at its next start; a voter that lost its data
/// comes back as a new identity that replaces the old one, never as the old one.
#[tokio::test]
async fn a_voter_leaves_cleanly_and_one_that_lost_its_data_comes_back_as_somebody_new() {
    let _g = SERIAL.lock().await;
    let mut h = started().await;
    let first = wait_leasing(&h, "three voters", |l| l.leader.is_some() && members(l).len() == 3).await;
    let d_id = first.voters.iter().find(|v| v.name == "machine-d").and_then(|v| v.id).expect("machine-d's id");

    h.stop_nm("machine-d").await.expect("machine-d's Node Manager stops");
    let left = wait_leasing(&h, "machine-d to leave", |l| members(l).len() == 2).await;
    assert!(!members(&left).iter().any(|(n, _)| n == "machine-d"), "{left:?}");
    assert!(events(&h)
        .await
        .iter()
        .any(|e| e.kind == EventKind::VoterLeft && e.machine.as_deref() == Some("machine-d")));

    h.start_nm("machine-d").await.expect("machine-d's Node Manager restarts");
    let back = wait_leasing(&h, "machine-d to join again", |l| members(l).len() == 3).await;
    assert!(members(&back).contains(&("machine-d".into(), d_id)), "the same identity, its data kept: {back:?}");

    // A crash that takes the voter's data with it.
    assert_eq!(h.kill_nm_only("machine-d"), 1);
    std::fs::remove_dir_all(h.nm_data_dir("machine-d").join("consensus")).expect("the voter's data is gone");
    h.start_nm("machine-d").await.expect("machine-d's Node Manager restarts");
    let renewed = wait_leasing(&h, "machine-d to come back under a new identity", |l| {
        let m = members(l);
        m.len() == 3 && m.iter().any(|(n, id)| n == "machine-d" && *id != d_id)
    })
    .await;
    assert!(!members(&renewed).iter().any(|(_, id)| *id == d_id), "the old identity never counts again: {renewed:?}");
    // The leader's event reaches the admin in its own time.
    let joined = wait_until(PATIENCE, "the leader's voter-joined event for the new identity", || async {
        let id = renewed.voters.iter().find(|v| v.name == "machine-d").and_then(|v| v.id).unwrap_or_default();
        events(&h)
            .await
            .iter()
            .any(|e| e.kind == EventKind::VoterJoined && e.message.contains(&format!("machine-d ({id})")))
    })
    .await;
    assert!(joined.is_ok(), "{joined:?}");
    // The servers never noticed.
    for s in ["ms1", "ms2"] {
        assert_eq!(status_of(&h, s).await.epoch, Some(ferry_core::Epoch(1)), "{s} kept its first instance");
    }
    assert_safe(&h).await;
}
