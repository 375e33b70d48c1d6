//! The fault suite on lab hosts (DESIGN §5 "hosts"): every machine a network namespace,
//! PostgreSQL and the Administration Server in the switch namespace, floating IPs really
//! moving between machines, and a client namespace asking the floating IP who answers every
//! few milliseconds. Each test injects one fault the seed worries about and checks the two
//! DESIGN §3 properties: no two instances ever answered in overlapping time (by the client's
//! log and the services' own journals), and the outage ended within the liveness bound.
//! Needs root and the lab's tools; without them a test says why it did not run (and fails
//! under `CI=true`).

use std::path::Path;
use std::time::Duration;

use ferry::harness::{check_journal, DomainSpec};
use ferry::labdomain::{client_view, LabDomain};
use ferry_host::clock;

/// One lab at a time: the two cores are shared.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PATIENCE: Duration = Duration::from_secs(30);
const INTERVAL_MS: u64 = 200;
const PERIODS: u32 = 3;
const GRACE_MS: u64 = 200;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

/// DESIGN §3's liveness bound for these timings, plus generous room for a start and for a
/// busy 2-core machine (the benchmark measures; this only catches a broken bound).
fn liveness_bound_ms() -> u64 {
    INTERVAL_MS * PERIODS as u64 + GRACE_MS + INTERVAL_MS + 3_000
}

async fn started() -> Option<LabDomain> {
    let spec = DomainSpec::figure_7_1(INTERVAL_MS, PERIODS, GRACE_MS);
    let d = LabDomain::start(spec, exe(), None)
        .await
        .expect("the lab domain starts")?;
    let out = d
        .cli(&["start-cluster", "cluster-1", "--wait"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_running("ms1", "machine-b", 0, PATIENCE)
        .await
        .unwrap();
    d.wait_running("ms2", "machine-c", 0, PATIENCE)
        .await
        .unwrap();
    Some(d)
}

fn assert_journals_safe(d: &LabDomain) {
    for s in ["ms1", "ms2"] {
        check_journal(&d.journal_path(s))
            .unwrap_or_else(|e| panic!("safety violated for {s}: {e}"));
    }
}

async fn has_ip(d: &LabDomain, machine: &str, ip: &str) -> bool {
    d.addresses(machine)
        .await
        .unwrap_or_default()
        .iter()
        .any(|a| a.starts_with(&format!("{ip}/")))
}

/// Figure 7-2 on real hosts: machine C crashes (every process killed, cable pulled); ms2 and
/// its floating IP move to machine D, and the client reaches it there.
#[tokio::test]
async fn machine_crash_moves_server_and_floating_ip() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started().await else { return };
    let fip = d.floating["ms2"].ip().to_string();
    assert!(
        has_ip(&d, "machine-c", &fip).await,
        "ms2's floating IP is on machine-c"
    );
    assert!(!has_ip(&d, "machine-d", &fip).await);
    d.start_client("ms2", 5).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = d
        .status()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == "ms2")
        .unwrap();

    let t0 = clock::now().0;
    d.lab.crash("machine-c").await.unwrap();
    let after = d
        .wait_running("ms2", "machine-d", before.epoch.unwrap(), PATIENCE)
        .await
        .expect("ms2 moved to machine-d");
    let fip_on_d = async { has_ip(&d, "machine-d", &fip).await };
    assert!(fip_on_d.await, "the floating IP moved to machine-d");
    // Give the client time to see the new instance.
    let until = clock::now() + PATIENCE;
    let view = loop {
        let v = client_view(&d.client_log("ms2"), t0, before.epoch.unwrap());
        if v.first_new_ms.is_some() || clock::now() >= until {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(view.new_machine.as_deref(), Some("machine-d"), "{view:?}");
    assert!(
        view.went_back.is_none(),
        "an old instance answered after a new one: {view:?}"
    );
    let outage = view.outage_ms.unwrap();
    assert!(
        outage <= liveness_bound_ms(),
        "outage {outage} ms exceeds the bound {} ms",
        liveness_bound_ms()
    );
    assert!(after.epoch > before.epoch);
    println!(
        "machine crash: client outage {outage} ms (bound {} ms)",
        liveness_bound_ms()
    );
    assert_journals_safe(&d);
}
