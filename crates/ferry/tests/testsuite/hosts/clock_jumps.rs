//! One machine's wall clock jumps while it runs servers (libfaketime): nothing fences,
//! expires or moves.

use std::time::Duration;

use ferry_api::{EventKind, ViewState};
use ferry_host::clock;
use ferry_testkit::{libfaketime, LabDomain};

use super::{
    assert_ending, client_on, count, events, kill_running, start_cluster, started_domain, status_of, trail,
    wait_client_after, Ending, TTL_MS,
};
use crate::{PATIENCE, SERIAL};

/// The wall clock (ms since the Unix epoch) that processes of machine-c see under the
/// libfaketime settings `env`.
async fn wall_ms_seen(d: &LabDomain, env: &[(&str, String)]) -> u64 {
    let mut argv: Vec<String> = vec!["env".into()];
    argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.extend(["date".into(), "+%s%3N".into()]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = d.lab.run("machine-c", &argv).await.unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// One machine's wall clock jumps (backwards by 3 hours, then forwards by a day) while it
/// runs servers: machine-c's Node Manager, and so its servers and their services, run under
/// libfaketime with DONT_FAKE_MONOTONIC, so only CLOCK_REALTIME moves (the real system
/// clock is shared by every namespace and is never touched). ferry's deadlines use
/// CLOCK_BOOTTIME and lease expiry the database's clock (rule 1), so nothing fences, expires
/// or moves, and a lease taken under the skewed clock behaves like any other.
#[tokio::test]
async fn wall_clock_jumps_on_one_machine_change_nothing() {
    let _g = SERIAL.lock().await;
    let Some(lib) = libfaketime() else {
        let why = "libfaketime (Debian package libfaketime, via `apt-get install faketime`) is not installed";
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{why} (CI=true requires it)");
        eprintln!("skipping: {why}");
        return;
    };
    let Some(mut d) = started_domain().await else {
        return;
    };
    let spec = d.dir.join("faketime.rc");
    std::fs::write(&spec, "+2h\n").unwrap();
    let env = [
        ("LD_PRELOAD", lib.display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE", spec.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".to_string()),
        ("DONT_FAKE_MONOTONIC", "1".to_string()),
    ];
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Replace machine-c's Node Manager by one on the skewed clock, before any server runs.
    kill_running(&d, "machine-c", &["nodemanager"]).await;
    d.start_nm_with_env("machine-c", &env_ref).unwrap();
    d.wait_nm("machine-c", PATIENCE).await.unwrap();
    start_cluster(&d).await;
    client_on(&mut d, "ms1").await;
    client_on(&mut d, "ms2").await;
    let ms2 = status_of(&d, "ms2").await;
    let pid = ms2.pid.unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    assert!(
        environ.split(|&b| b == 0).any(|kv| kv == format!("LD_PRELOAD={}", lib.display()).as_bytes()),
        "ms2's runtime runs under libfaketime"
    );
    // ferry itself sees the shifted clock: the event machine-c's Node Manager sent at start
    // carries a wall-clock time two hours ahead.
    let ev = events(&d).await;
    let nm_start = ev
        .iter()
        .rev()
        .find(|e| e.kind == EventKind::NodemanagerStarted && e.source == "nodemanager/machine-c")
        .unwrap();
    let skew = nm_start.at_ms as i64 - clock::wall_ms() as i64;
    assert!(
        (6_600_000..7_300_000).contains(&skew),
        "machine-c's Node Manager saw a wall clock {skew} ms off, not +2 h: libfaketime is not in effect"
    );

    let t0 = clock::now().0;
    // Three hours back.
    std::fs::write(&spec, "-1h\n").unwrap();
    let seen = wall_ms_seen(&d, &env).await as i64 - clock::wall_ms() as i64;
    assert!((-3_700_000..-3_500_000).contains(&seen), "{seen}");
    tokio::time::sleep(Duration::from_millis(5 * TTL_MS)).await;
    // A lease taken under the skewed clock: move ms1 onto machine-c by hand.
    let ms1 = status_of(&d, "ms1").await;
    let out = d.cli(&["migrate", "ms1", "--to", "machine-c", "--wait"]).await.unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let ms1_c = d.wait_running("ms1", "machine-c", ms1.epoch.unwrap().0, PATIENCE).await.unwrap();
    let t1 = clock::now().0;
    wait_client_after(&d, "ms1", t1).await;
    // A day forward.
    std::fs::write(&spec, "+1d\n").unwrap();
    let seen = wall_ms_seen(&d, &env).await as i64 - clock::wall_ms() as i64;
    assert!((86_300_000..86_500_000).contains(&seen), "{seen}");
    tokio::time::sleep(Duration::from_millis(5 * TTL_MS)).await;
    let t2 = clock::now().0;

    let now1 = status_of(&d, "ms1").await;
    let now2 = status_of(&d, "ms2").await;
    assert_eq!(
        (now2.state, now2.machine.as_deref(), now2.epoch, now2.pid),
        (ViewState::Running, Some("machine-c"), ms2.epoch, ms2.pid),
        "ms2 ran on through both jumps"
    );
    assert_eq!(
        (now1.state, now1.machine.as_deref(), now1.epoch, now1.pid),
        (ViewState::Running, Some("machine-c"), ms1_c.epoch, ms1_c.pid),
        "ms1, started under the skewed clock, ran on through the jump"
    );
    wait_client_after(&d, "ms2", t2).await;
    wait_client_after(&d, "ms1", t2).await;
    let ev = events(&d).await;
    assert_eq!(count(&ev, EventKind::ServerExited, "ms2"), 0, "{}", trail(&ev));
    // ms1 moved once, by hand, before the window checked for it.
    let end = Ending {
        what: "clock jumps",
        clients: &["ms1", "ms2"],
        one_instance: &["ms2"],
        kept_answering: &[("ms2", t0, t2), ("ms1", t1, t2)],
        no_events: &[
            EventKind::LeaseExpired,
            EventKind::Fenced,
            EventKind::Migrate,
            EventKind::RestartInPlace,
            EventKind::Unhealthy,
        ],
    };
    assert_ending(&d, end).await;
}
