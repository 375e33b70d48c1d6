//! Floating IPs and their hooks: hooks that fail or hang, a slow `removeif` waited for, a
//! busy address retried and rolled back, leftovers removed by a restarted Node Manager.

use std::path::Path;
use std::time::Duration;

use ferry_api::{EventKind, NmStart, OperationState, Origin, ViewState};
use ferry_testkit::{wait_until, Harness};

use super::{assert_safe, events, journal_with, spec, status_of};
use crate::{exe, PATIENCE, SERIAL};

/// Floating-IP hooks that fail or hang: the server is not started there, the error names
/// the cause (in the event log), and the cluster master tries the next candidate machine;
/// once a hook works again, the server runs.
#[tokio::test]
async fn failing_and_hanging_hooks_stop_the_start_and_the_master_moves_on() {
    let _g = SERIAL.lock().await;
    let hooks = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = hooks.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&p).unwrap().permissions(), 0o755);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    };
    // The hooks misbehave only for ms2's floating IP (198.18.1.102); ms1 (the cluster
    // master, on machine-b) is unaffected.
    let ok_c = write("ok-c.sh", "echo plumbed $@");
    let fails_d = write(
        "fails-d.sh",
        "if [ \"$3\" = 198.18.1.102 ]; then echo \"address $3 is in use on $2\" >&2; exit 1; fi; echo ok",
    );
    let hangs_b = write("hangs-b.sh", "if [ \"$1 $3\" = \"addif 198.18.1.102\" ]; then sleep 60; fi; echo ok");
    let mut spec = spec();
    spec.ifconfig_hooks = vec![
        ("machine-c".into(), ok_c, 2_000),
        ("machine-d".into(), fails_d, 2_000),
        ("machine-b".into(), hangs_b.clone(), 300),
    ];
    let h = Harness::start(spec, exe(), None).await.expect("domain starts");
    let admin = h.admin();
    admin.start_cluster("cluster-1").await.unwrap();
    h.wait_running("ms1", "machine-b", 0, PATIENCE).await.unwrap();
    let before = h.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();
    // A start on a machine whose hook fails is refused with the hook's words.
    let nm_d = h.nm_client("machine-d", Duration::from_secs(5)).await.unwrap();
    h.kill_machine("machine-c");
    // The master: machine-c is dead, machine-d's hook fails, machine-b's hangs and is killed.
    wait_until(PATIENCE, "both hook failures in the event log", || async {
        admin.events(0).await.is_ok_and(|ev| {
            let d = ev.iter().any(|e| {
                e.kind == EventKind::StartFailed
                    && e.machine.as_deref() == Some("machine-d")
                    && e.message.contains("is in use on")
            });
            let b = ev.iter().any(|e| {
                e.kind == EventKind::StartFailed
                    && e.machine.as_deref() == Some("machine-b")
                    && e.message.contains("did not finish within 300 ms")
            });
            d && b
        })
    })
    .await
    .unwrap();
    let ms2 = h.status().await.unwrap().into_iter().find(|s| s.name == "ms2").unwrap();
    assert_ne!(ms2.state, ViewState::Running, "ms2 runs nowhere while every hook fails: {ms2:?}");
    let e = nm_d.start("ms2", &NmStart { origin: Origin::Admin, in_place: false }).await.unwrap_err();
    assert!(e.to_string().contains("is in use on"), "{e}");
    // Machine-b's hook is repaired: the master's next circuit starts ms2 there.
    std::fs::write(&hangs_b, "#!/bin/sh\necho ok\n").unwrap();
    assert!(h.who_answers("ms1").await.is_some(), "ms1 was never disturbed");
    let after = h
        .wait_running("ms2", "machine-b", before.epoch.unwrap().0, Duration::from_secs(60))
        .await
        .expect("ms2 runs on machine-b");
    assert!(after.epoch > before.epoch);
    let ev = events(&h).await;
    assert!(
        ev.iter().any(|e| e.kind == EventKind::Backoff && e.server.as_deref() == Some("ms2")),
        "the master paused between circuits"
    );
    journal_with(&h, "ms2", 2).await;
}

/// An `ifconfig` hook per machine of [`spec`], sharing a directory (returned) that plays the
/// network: `ip-ADDR` names the machine that holds ADDR. `addif` refuses with exit 3 (the
/// address is in use) while another machine holds it, or while `block-MACHINE` exists;
/// `removeif` takes `removeif_s` seconds.
fn address_hooks(dir: &Path, removeif_s: f64) -> (std::path::PathBuf, Vec<(String, std::path::PathBuf, u64)>) {
    let state = dir.join("addresses");
    std::fs::create_dir_all(&state).unwrap();
    let hook = |m: &str| {
        let p = dir.join(format!("ifconfig-{m}.sh"));
        let s = state.display();
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\nf={s}/ip-$3\ncase $1 in\n\
                 addif) if [ -f {s}/block-{m} ]; then echo \"$3 answers elsewhere (blocked)\" >&2; exit 3; fi\n\
                 if [ -f $f ] && [ \"$(cat $f)\" != {m} ]; then echo \"$3 answers from $(cat $f)\" >&2; exit 3; fi\n\
                 echo {m} > $f; echo added;;\n\
                 removeif) sleep {removeif_s}; if [ -f $f ] && [ \"$(cat $f)\" = {m} ]; then rm -f $f; fi; echo removed;;\n\
                 esac\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    };
    let hooks = spec().machines.iter().map(|m| (m.clone(), hook(m), 5_000)).collect();
    (state, hooks)
}

/// The operation `op` once it has finished (succeeded or failed).
async fn finished(h: &Harness, op: ferry_api::Operation) -> ferry_api::Operation {
    let admin = h.admin();
    let until = ferry_host::clock::now() + Duration::from_secs(60);
    loop {
        let o = admin.operation(op.id).await.expect("operation");
        if o.state != OperationState::Running {
            return o;
        }
        assert!(ferry_host::clock::now() < until, "operation {} still running after 60 s: {o:?}", op.id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 9, item 1: with an `ifconfig` hook whose `removeif` takes half a second, a manual
/// migration found the old address still answering (the stop was acknowledged before the
/// removal ran) and left the server down for good. A stop now answers only once the
/// address is gone; a target that still sees the address is asked again; one that keeps
/// refusing makes the migration roll back to where the server came from.
#[tokio::test]
async fn a_migration_waits_for_a_slow_removeif_retries_a_busy_address_and_rolls_back() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (state, hooks) = address_hooks(dir.path(), 0.5);
    let mut spec = spec();
    spec.ifconfig_hooks = hooks;
    let h = Harness::start(spec, exe(), None).await.expect("domain starts");
    let admin = h.admin();
    admin.start_cluster("cluster-1").await.unwrap();
    h.wait_running("ms1", "machine-b", 0, PATIENCE).await.unwrap();
    let on_c = h.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();
    let owner = |ip: &str| std::fs::read_to_string(state.join(format!("ip-{ip}"))).ok().map(|s| s.trim().to_string());
    assert_eq!(owner("198.18.1.102").as_deref(), Some("machine-c"));

    // 1. The stop waits for the slow removeif: the target finds the address free at once.
    let op = finished(&h, admin.migrate("ms2", "machine-d").await.unwrap()).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    let on_d = h.wait_running("ms2", "machine-d", on_c.epoch.unwrap().0, PATIENCE).await.unwrap();
    assert_eq!(owner("198.18.1.102").as_deref(), Some("machine-d"));
    let ev = events(&h).await;
    let ms2 = |e: &&ferry_api::Event| e.server.as_deref() == Some("ms2");
    assert!(
        !ev.iter().filter(ms2).any(|e| e.kind == EventKind::AddressInUse),
        "machine-d never saw the address still on machine-c: {:#?}",
        ev.iter().filter(ms2).filter(|e| e.kind == EventKind::AddressInUse).collect::<Vec<_>>()
    );
    let removed =
        ev.iter().filter(ms2).find(|e| e.kind == EventKind::Removeif && e.machine.as_deref() == Some("machine-c"));
    let stopped = ev.iter().filter(ms2).find(|e| e.kind == EventKind::NmStopped);
    let (removed, stopped) = (removed.expect("removeif on machine-c"), stopped.expect("the stop's answer"));
    assert!(
        removed.at_ms <= stopped.at_ms,
        "the stop was answered before the address was removed: {removed:?} {stopped:?}"
    );

    // 2. A target that still sees the address is asked again until it is free.
    std::fs::write(state.join("block-machine-c"), "").unwrap();
    let op = admin.migrate("ms2", "machine-c").await.unwrap();
    wait_until(PATIENCE, "machine-c to refuse ms2 for its address", || async {
        admin.operation(op.id).await.is_ok_and(|o| o.steps.iter().any(|s| s.message.contains("asking machine-c again")))
    })
    .await
    .unwrap();
    std::fs::remove_file(state.join("block-machine-c")).unwrap();
    let op = finished(&h, op).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    let back_on_c = h.wait_running("ms2", "machine-c", on_d.epoch.unwrap().0, PATIENCE).await.unwrap();

    // 3. A target that never gets the address: the migration rolls back, ms2 runs again on c.
    std::fs::write(state.join("block-machine-b"), "").unwrap();
    let op = finished(&h, admin.migrate("ms2", "machine-b").await.unwrap()).await;
    assert_eq!(op.state, OperationState::Failed, "{op:?}");
    let error = op.error.clone().unwrap_or_default();
    assert!(error.contains("migration to machine-b failed") && error.contains("rolled back"), "{error}");
    let rolled = h.wait_running("ms2", "machine-c", back_on_c.epoch.unwrap().0, PATIENCE).await.unwrap();
    assert_eq!(owner("198.18.1.102").as_deref(), Some("machine-c"), "{rolled:?}");
    assert!(h.who_answers("ms2").await.is_some(), "ms2 answers after the rollback");
    journal_with(&h, "ms2", 4).await;
}

/// Issue 9, item 2: a machine whose Node Manager and servers died left its floating IPs in
/// place, and every other candidate refused the server for ever. Its restarted Node Manager
/// removes what it left for servers that no longer run there, and the master's next try
/// succeeds; a server that still runs keeps its address.
#[tokio::test]
async fn a_restarted_node_manager_removes_the_floating_ips_it_left_behind() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (state, hooks) = address_hooks(dir.path(), 0.0);
    let mut spec = spec();
    spec.ifconfig_hooks = hooks;
    let mut h = Harness::start(spec, exe(), None).await.expect("domain starts");
    let admin = h.admin();
    admin.start_cluster("cluster-1").await.unwrap();
    h.wait_running("ms1", "machine-b", 0, PATIENCE).await.unwrap();
    let before = h.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();
    let owner = |ip: &str| std::fs::read_to_string(state.join(format!("ip-{ip}"))).ok().map(|s| s.trim().to_string());
    assert_eq!(owner("198.18.1.102").as_deref(), Some("machine-c"));
    // Machine-c's processes die; its "kernel" keeps the address (the hook's file stays).
    h.kill_machine("machine-c");
    wait_until(PATIENCE, "a candidate to refuse ms2 because its address still answers", || async {
        admin
            .events(0)
            .await
            .is_ok_and(|ev| ev.iter().any(|e| e.kind == EventKind::AddressInUse && e.server.as_deref() == Some("ms2")))
    })
    .await
    .unwrap();
    assert_eq!(owner("198.18.1.102").as_deref(), Some("machine-c"), "nobody took the address");
    // The Node Manager comes back (its server does not): it removes the leftover address.
    h.start_nm("machine-c").await.unwrap();
    wait_until(PATIENCE, "machine-c's Node Manager to report the leftover", || async {
        admin
            .events(0)
            .await
            .is_ok_and(|ev| ev.iter().any(|e| e.kind == EventKind::Leftover && e.server.as_deref() == Some("ms2")))
    })
    .await
    .unwrap();
    let until = ferry_host::clock::now() + Duration::from_secs(60);
    let after = loop {
        let s = status_of(&h, "ms2").await;
        if s.state == ViewState::Running && s.epoch > before.epoch {
            break s;
        }
        assert!(ferry_host::clock::now() < until, "ms2 never ran again: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(owner("198.18.1.102").as_deref(), after.machine.as_deref(), "the address is where ms2 runs");
    // ms1 still runs on machine-b, with its address: a Node Manager restart there keeps it.
    h.kill_nm_only("machine-b");
    h.start_nm("machine-b").await.unwrap();
    assert_eq!(owner("198.18.1.101").as_deref(), Some("machine-b"));
    assert!(
        !events(&h).await.iter().any(|e| e.kind == EventKind::Leftover && e.server.as_deref() == Some("ms1")),
        "ms1 still runs: its address is not a leftover"
    );
    journal_with(&h, "ms2", 2).await;
    assert_safe(&h).await;
}
