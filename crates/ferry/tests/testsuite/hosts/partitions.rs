//! Partitions: a machine cut off from everything, from its peers only (the lease table
//! decides, so nothing moves), or from the lease table only.

use std::time::Duration;

use ferry_api::{EventKind, ViewState};
use ferry_host::clock;

use super::{
    assert_ending, assert_outage_within, client_on, events, holders, in_place_attempt_bound_ms, liveness_bound_ms,
    pids_running, started, status_of, wait_client_after, wait_client_new, wait_event, Ending, TTL_MS,
};
use crate::{PATIENCE, SERIAL};

/// A symmetric partition of machine-c (nothing in or out): ms2 cannot renew and fences
/// itself; the master cannot reach machine-c's Node Manager and moves ms2 and its floating
/// IP to machine-d. After the partition heals, the old instance is gone, machine-c does not
/// take ms2 back, and the address is only on machine-d.
#[tokio::test]
async fn partitioned_machine_loses_its_server_and_does_not_take_it_back() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started().await else { return };
    client_on(&mut d, "ms2").await;
    let fip = d.floating["ms2"].ip().to_string();
    let before = status_of(&d, "ms2").await;
    let old_epoch = before.epoch.unwrap().0;

    let t0 = clock::now().0;
    d.lab.partition("machine-c").await.unwrap();
    let after = d.wait_running("ms2", "machine-d", old_epoch, PATIENCE).await.expect("ms2 moved to machine-d");
    let view = wait_client_new(&d, "ms2", t0, old_epoch).await;
    assert_eq!(view.new_machine.as_deref(), Some("machine-d"), "{view:?}");
    assert_outage_within("symmetric partition", &view, liveness_bound_ms());

    d.lab.heal().await.unwrap();
    // If ms2 fenced itself (exit 75), machine-c's Node Manager wants it back once the lease
    // table answers, unless the master moved it: wait for that decision.
    let ev = events(&d).await;
    let self_fenced = ev.iter().any(|e| {
        e.kind == EventKind::ServerExited && e.source == "nodemanager/machine-c" && e.message.contains("(Fenced)")
    });
    if self_fenced {
        wait_event(&d, "machine-c's Node Manager to leave ms2 to machine-d", |e| {
            e.kind == EventKind::NotRestarting && e.source == "nodemanager/machine-c"
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(pids_running(&d, "machine-c", &["server", "ms2"]).await.is_empty(), "no ms2 process is left on machine-c");
    assert_eq!(holders(&d, &fip).await, vec!["machine-d".to_string()]);
    let now = status_of(&d, "ms2").await;
    assert_eq!(
        (now.machine.as_deref(), now.epoch),
        (Some("machine-d"), after.epoch),
        "ms2 stays on machine-d after the heal"
    );
    assert_ending(&d, Ending { clients: &["ms2"], ..Ending::default() }).await;
}

/// Machine-c loses its peers but still reaches the database (and the client): ms2 keeps
/// renewing its lease, so nothing moves although the master cannot reach machine-c's Node
/// Manager (DESIGN §1: the lease decides, not reachability).
#[tokio::test]
async fn cut_from_peers_but_not_from_the_lease_table_moves_nothing() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started().await else { return };
    client_on(&mut d, "ms2").await;
    let before = status_of(&d, "ms2").await;

    let t0 = clock::now().0;
    d.lab.partition_from_peers("machine-c").await.unwrap();
    // Five leases' worth of time.
    tokio::time::sleep(Duration::from_millis(5 * TTL_MS)).await;
    let mid = status_of(&d, "ms2").await;
    let t1 = clock::now().0;
    d.lab.heal().await.unwrap();
    assert_eq!(
        (mid.state, mid.machine.as_deref(), mid.epoch, mid.pid),
        (ViewState::Running, Some("machine-c"), before.epoch, before.pid),
        "ms2 kept its lease on machine-c"
    );
    wait_client_after(&d, "ms2", t1).await;
    let end = Ending {
        what: "cut from peers",
        clients: &["ms2"],
        one_instance: &["ms2"],
        kept_answering: &[("ms2", t0, t1)],
        no_events: &[EventKind::LeaseExpired, EventKind::Migrate, EventKind::RestartInPlace, EventKind::Fenced],
    };
    assert_ending(&d, end).await;
}

/// The reverse cut: machine-c reaches its peers and the client but not the switch's
/// address (the database and the admin). ms2 cannot renew and fences itself; the master's
/// in-place attempt reaches machine-c's Node Manager but cannot succeed there, so after the
/// planner's start timeout ms2 moves to machine-d with its floating IP.
#[tokio::test]
async fn cut_from_the_lease_table_fences_and_moves() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started().await else { return };
    client_on(&mut d, "ms2").await;
    let fip = d.floating["ms2"].ip().to_string();
    let before = status_of(&d, "ms2").await;
    let old_epoch = before.epoch.unwrap().0;

    let t0 = clock::now().0;
    d.lab.partition_from_switch("machine-c").await.unwrap();
    let after = d.wait_running("ms2", "machine-d", old_epoch, PATIENCE).await.expect("ms2 moved to machine-d");
    let view = wait_client_new(&d, "ms2", t0, old_epoch).await;
    assert_eq!(view.new_machine.as_deref(), Some("machine-d"), "{view:?}");
    d.lab.heal().await.unwrap();
    // machine-c's events were queued while it could not reach the admin.
    wait_event(&d, "ms2 on machine-c to have fenced itself", |e| {
        e.kind == EventKind::Fenced && e.source == "server/ms2" && e.machine.as_deref() == Some("machine-c")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(holders(&d, &fip).await, vec!["machine-d".to_string()]);
    assert!(pids_running(&d, "machine-c", &["server", "ms2"]).await.is_empty(), "no ms2 process is left on machine-c");
    let now = status_of(&d, "ms2").await;
    assert_eq!((now.machine.as_deref(), now.epoch), (Some("machine-d"), after.epoch));
    assert_outage_within("cut from the lease table", &view, in_place_attempt_bound_ms());
    assert_ending(&d, Ending { clients: &["ms2"], ..Ending::default() }).await;
}
