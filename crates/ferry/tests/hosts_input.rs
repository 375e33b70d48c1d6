//! Bad floating-IP input on lab hosts: an address another host already answers for, an
//! interface that does not exist, an address outside the machine's subnet. Each time the
//! server is not started there, the error names the cause, the event log records it, and the
//! cluster master tries the next candidate machine. Needs root and the lab's tools.

use std::path::Path;
use std::time::Duration;

use ferry_testkit::{DomainSpec, LabDomain};

const PATIENCE: Duration = Duration::from_secs(30);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

#[tokio::test]
async fn bad_floating_ip_input_is_refused_and_the_master_moves_on() {
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
        ev.iter().any(|e| e.kind == "address-in-use"
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
    let after = d.wait_running("ms2", "machine-b", before.epoch.unwrap(), PATIENCE).await.expect("ms2 on machine-b");
    assert!(after.epoch > before.epoch);
    let ev = d.events().await.unwrap();
    assert!(
        ev.iter().any(|e| e.kind == "start-failed"
            && e.machine.as_deref() == Some("machine-d")
            && e.message.contains("eth9")),
        "machine-d's refusal names the missing interface: {:?}",
        ev.iter().filter(|e| e.machine.as_deref() == Some("machine-d")).map(|e| &e.message).collect::<Vec<_>>()
    );
    assert!(ev.iter().any(|e| e.kind == "machine-failed" && e.message.contains("machine-d")));
    let addrs_b = d.addresses("machine-b").await.unwrap();
    assert!(addrs_b.iter().any(|a| a.starts_with(&format!("{fip2}/"))), "the address moved to machine-b: {addrs_b:?}");
    assert!(addrs_b.iter().any(|a| a.starts_with(&format!("{fip1}/"))), "ms1's address stays: {addrs_b:?}");
}

/// A floating IP outside every subnet of the machine's interface is refused with a message
/// that says so.
#[tokio::test]
async fn a_floating_ip_outside_the_subnet_is_refused() {
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
    assert_ne!(st.state, "RUNNING");
}
