//! Floating IPs on real hosts: a slow `removeif` hook waited for and leftovers removed by a
//! restarted Node Manager; bad floating-IP input (an address another host answers for, an
//! interface that does not exist, an address outside the subnet) refused while the master
//! moves on.

use std::path::Path;

use ferry_api::{EventKind, ViewState};
use ferry_host::{clock, process};
use ferry_testkit::{DomainSpec, LabDomain};
use nix::sys::signal::Signal;

use super::{
    assert_ending, client_on, count, events, has_ip, holders, start_cluster, status_of, trail, wait_client_after,
    wait_client_new, wait_event, wait_running_anywhere, Ending, GRACE_MS, INTERVAL_MS, PERIODS,
};
use crate::{exe, PATIENCE, SERIAL};

/// Issue 9, items 1 and 2 on real hosts, with the example `ifconfig` hook
/// (`examples/hooks/ifconfig.sh`: `ip`, a duplicate-address probe with `arping -D`, exit 3
/// when another host answers) made to take half a second to remove an address. A manual
/// migration waits for the source's `removeif`, so the target's probe finds the address
/// free. Then every process of the server's machine dies while its kernel keeps the
/// address: every other candidate refuses the server (address in use) and nothing moves,
/// until that machine's Node Manager starts again and removes what it left behind.
#[tokio::test]
async fn a_slow_removeif_is_waited_for_and_a_restarted_node_manager_removes_what_it_left() {
    let _g = SERIAL.lock().await;
    let hooks = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hooks/ifconfig.sh");
    let hook = hooks.path().join("slow-removeif.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\nif [ \"$1\" = removeif ]; then sleep 0.5; fi\nexec {} \"$@\"\n", example.display()),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut spec = DomainSpec::figure_7_1(INTERVAL_MS, PERIODS, GRACE_MS);
    spec.ifconfig_hooks = spec.machines.iter().map(|m| (m.clone(), hook.clone(), 5_000)).collect();
    let Some(mut d) = LabDomain::start(spec, exe(), None).await.expect("the lab domain starts") else { return };
    start_cluster(&d).await;
    client_on(&mut d, "ms2").await;
    let fip = d.floating["ms2"].ip().to_string();
    assert!(has_ip(&d, "machine-c", &fip).await);
    let before = status_of(&d, "ms2").await;

    // 1. The migration: the stop answers after the slow removeif; machine-d's probe is clean.
    let out = d.cli(&["migrate", "ms2", "--to", "machine-d", "--wait"]).await.unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), trail(&events(&d).await));
    let on_d = d.wait_running("ms2", "machine-d", before.epoch.unwrap().0, PATIENCE).await.unwrap();
    assert!(has_ip(&d, "machine-d", &fip).await && !has_ip(&d, "machine-c", &fip).await);
    let ev = events(&d).await;
    assert_eq!(count(&ev, EventKind::AddressInUse, "ms2"), 0, "machine-d found the address free:\n{}", trail(&ev));
    let removed =
        ev.iter().find(|e| e.kind == EventKind::Removeif && e.machine.as_deref() == Some("machine-c")).unwrap();
    let stopped = ev.iter().find(|e| e.kind == EventKind::NmStopped && e.server.as_deref() == Some("ms2")).unwrap();
    assert!(removed.at_ms <= stopped.at_ms, "the stop answered before the address was gone:\n{}", trail(&ev));
    wait_client_new(&d, "ms2", 0, before.epoch.unwrap().0).await;

    // 2. Every process of machine-d dies; its kernel (and the address) stays.
    let seen = ev.len();
    for pid in d.lab.pids("machine-d").await.unwrap() {
        process::signal(pid, Signal::SIGKILL);
    }
    wait_event(&d, "a candidate to refuse ms2 because its address still answers", |e| {
        e.kind == EventKind::AddressInUse && e.server.as_deref() == Some("ms2")
    })
    .await;
    assert!(has_ip(&d, "machine-d", &fip).await, "the dead machine's kernel still holds the address");
    let holders_now = holders(&d, &fip).await;
    assert_eq!(holders_now, vec!["machine-d".to_string()], "nobody else took the address");
    d.start_nm("machine-d").unwrap();
    wait_event(&d, "machine-d's Node Manager to remove the leftover address", |e| {
        e.kind == EventKind::Leftover && e.server.as_deref() == Some("ms2") && e.source == "nodemanager/machine-d"
    })
    .await;
    let back = wait_running_anywhere(&d, "ms2", on_d.epoch.unwrap().0).await;
    let machine = back.machine.clone().unwrap();
    assert_eq!(holders(&d, &fip).await, vec![machine.to_string()], "the address is where ms2 runs: {back:?}");
    let ev = events(&d).await;
    println!("after the Node Manager's restart ms2 runs on {machine}:\n{}", trail(&ev[seen..]));
    let t = clock::now().0;
    wait_client_after(&d, "ms2", t).await;
    assert_ending(&d, Ending { clients: &["ms2"], ..Ending::default() }).await;
}

#[tokio::test]
async fn bad_floating_ip_input_is_refused_and_the_master_moves_on() {
    let _g = SERIAL.lock().await;
    let mut spec = DomainSpec::figure_7_1(200, 3, 200);
    // machine-d names an interface it does not have.
    spec.interfaces = vec![("machine-d".into(), "eth9".into())];
    let Some(d) = LabDomain::start(spec, exe(), None).await.expect("the lab domain starts") else {
        return;
    };
    let fip1 = d.floating["ms1"].ip().to_string();
    let fip2 = d.floating["ms2"].ip().to_string();

    // 1. ms2's address is squatted by machine-b: machine-c refuses to start ms2.
    d.lab.exec("machine-b", &["ip", "addr", "add", &format!("{fip2}/24"), "dev", "eth0"]).await.unwrap();
    let out = d.cli(&["start-cluster", "cluster-1", "--wait"]).await.unwrap();
    assert!(!out.status.success(), "start-cluster must fail while ms2's address is in use");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&fip2) && err.contains("another host answers"),
        "the error names the address and the cause: {err}"
    );
    let ev = d.events().await.unwrap();
    assert!(
        ev.iter().any(|e| e.kind == EventKind::AddressInUse
            && e.server.as_deref() == Some("ms2")
            && e.message.contains("another host answers")),
        "the event log records why, as a refusal worth another try (not a failure of machine-c)"
    );
    let addrs_c = d.addresses("machine-c").await.unwrap();
    assert!(
        !addrs_c.iter().any(|a| a.starts_with(&format!("{fip2}/"))),
        "machine-c did not add the address: {addrs_c:?}"
    );
    // The squatter leaves; the same command works.
    d.lab.exec("machine-b", &["ip", "addr", "del", &format!("{fip2}/24"), "dev", "eth0"]).await.unwrap();
    let out = d.cli(&["start", "ms2", "--wait"]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = d.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();
    d.wait_running("ms1", "machine-b", 0, PATIENCE).await.unwrap();

    // 2. machine-c crashes: machine-d (ms2's first candidate) has no eth9, so the master
    // moves on to machine-b.
    d.lab.crash("machine-c").await.unwrap();
    let after = d.wait_running("ms2", "machine-b", before.epoch.unwrap().0, PATIENCE).await.expect("ms2 on machine-b");
    assert!(after.epoch > before.epoch);
    let ev = d.events().await.unwrap();
    assert!(
        ev.iter().any(|e| e.kind == EventKind::StartFailed
            && e.machine.as_deref() == Some("machine-d")
            && e.message.contains("eth9")),
        "machine-d's refusal names the missing interface: {:?}",
        ev.iter().filter(|e| e.machine.as_deref() == Some("machine-d")).map(|e| &e.message).collect::<Vec<_>>()
    );
    assert!(ev.iter().any(|e| e.kind == EventKind::MachineFailed && e.message.contains("machine-d")));
    let addrs_b = d.addresses("machine-b").await.unwrap();
    assert!(addrs_b.iter().any(|a| a.starts_with(&format!("{fip2}/"))), "the address moved to machine-b: {addrs_b:?}");
    assert!(addrs_b.iter().any(|a| a.starts_with(&format!("{fip1}/"))), "ms1's address stays: {addrs_b:?}");
}

/// A floating IP outside every subnet of the machine's interface is refused with a message
/// that says so.
#[tokio::test]
async fn a_floating_ip_outside_the_subnet_is_refused() {
    let _g = SERIAL.lock().await;
    let mut spec = DomainSpec::figure_7_1(200, 3, 200);
    spec.floating_ips = vec![("ms2".into(), std::net::Ipv4Addr::new(198, 19, 5, 5))];
    let Some(d) = LabDomain::start(spec, exe(), None).await.expect("the lab domain starts") else {
        return;
    };
    let out = d.cli(&["start", "ms2", "--wait"]).await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("198.19.5.5") && err.contains("outside"), "{err}");
    let st = d.status().await.unwrap().into_iter().find(|s| s.name == "ms2").unwrap();
    assert_ne!(st.state, ViewState::Running);
}
