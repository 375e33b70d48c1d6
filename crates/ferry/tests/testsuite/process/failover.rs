//! Failures and recovery: a machine, a server, the master's machine, the admin, the lease
//! table or a Node Manager fails or hangs; the domain heals and no two instances ever ran.

use std::time::Duration;

use ferry_api::{EventKind, NmStart, OperationState, Origin, ServerState, ViewState};
use ferry_testkit::{wait_until, Harness};
use nix::sys::signal::Signal;

use super::{assert_safe, events, ferry_cli, journal_with, spec, started, status_of};
use crate::{exe, PATIENCE, SERIAL};

/// Figures 7-1, 7-2 and 7-3: a machine dies, its server moves, an operator moves it back.
#[tokio::test]
async fn kill_machine_then_failback() {
    let _g = SERIAL.lock().await;
    let mut h = started().await;
    let before = status_of(&h, "ms2").await;
    assert!(status_of(&h, "ms1").await.master, "the first server started is the cluster master");

    assert!(h.kill_machine("machine-c") >= 3, "machine-c had a Node Manager, a server and a service");
    let after = h.wait_running("ms2", "machine-d", 0, PATIENCE).await.expect("ms2 migrated to machine-d");
    assert!(after.epoch > before.epoch, "the new instance has a larger fencing token");
    let answer = h.wait_answer_from("ms2", "machine-d", PATIENCE).await.expect("ms2's service answers");
    assert_eq!(answer["fencing_token"], after.epoch.unwrap().0);
    let ev = events(&h).await;
    for kind in [EventKind::LeaseExpired, EventKind::RestartInPlace, EventKind::MachineFailed, EventKind::Migrate] {
        assert!(ev.iter().any(|e| e.kind == kind && e.server.as_deref() == Some("ms2")), "no {kind} event for ms2");
    }
    assert!(h.machine_pids("machine-c").is_empty(), "nothing of machine-c survived");

    // Failback (Figure 7-3): machine C is repaired and ms2 moves back by hand.
    h.start_nm("machine-c").await.expect("machine-c's Node Manager restarts");
    let op = h.admin().migrate("ms2", "machine-c").await.expect("migration accepted");
    let admin = h.admin();
    wait_until(PATIENCE, "the failback to finish", || async {
        admin.operation(op.id).await.map(|o| o.state != OperationState::Running).unwrap_or(false)
    })
    .await
    .unwrap();
    let op = admin.operation(op.id).await.unwrap();
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    let back = h.wait_running("ms2", "machine-c", after.epoch.unwrap().0, PATIENCE).await.unwrap();
    assert!(back.epoch > after.epoch);
    // ms1 was never disturbed.
    let ms1 = status_of(&h, "ms1").await;
    assert_eq!(ms1.epoch, Some(ferry_core::Epoch(1)));
    assert_safe(&h).await;
}

/// A hung server (SIGSTOP): its Node Manager fences it at its deadline (rule 3), then the
/// cluster master has that Node Manager restart it in place (Figure 7-2 note).
#[tokio::test]
async fn hung_server_is_fenced_and_restarted_in_place() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let before = status_of(&h, "ms2").await;
    let pid = before.pid.expect("ms2 has a pid");
    assert!(ferry_host::process::signal(pid, Signal::SIGSTOP));
    let admin = h.admin();
    wait_until(PATIENCE, "a fenced event from machine-c's Node Manager", || async {
        admin
            .events(0)
            .await
            .map(|ev| ev.iter().any(|e| e.kind == EventKind::Fenced && e.source == "nodemanager/machine-c"))
            .unwrap_or(false)
    })
    .await
    .unwrap();
    wait_until(PATIENCE, "the hung server to be gone", || async { !ferry_host::process::alive(pid) }).await.unwrap();
    let after =
        h.wait_running("ms2", "machine-c", before.epoch.unwrap().0, PATIENCE).await.expect("ms2 restarted in place");
    assert!(after.epoch > before.epoch);
    assert_ne!(after.pid, Some(pid));
    let ev = events(&h).await;
    assert!(ev.iter().any(|e| e.kind == EventKind::RestartInPlace && e.server.as_deref() == Some("ms2")));
    assert_safe(&h).await;
}

/// A crashed server is restarted on its own machine at once, taking its lease over from the
/// reaped incarnation (rule 4) instead of waiting for it to expire.
#[tokio::test]
async fn crashed_server_restarts_at_once_by_handover() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let before = status_of(&h, "ms1").await;
    let pid = before.pid.expect("ms1 has a pid");
    assert!(ferry_host::process::signal(pid, Signal::SIGKILL));
    let admin = h.admin();
    wait_until(PATIENCE, "ms1 to run again with a new epoch", || async {
        admin.servers().await.ok().and_then(|l| l.into_iter().find(|s| s.name == "ms1")).is_some_and(|s| {
            s.state == ViewState::Running
                && s.epoch > before.epoch
                && s.machine.as_deref() == Some("machine-b")
                && s.pid.is_some()
                && s.pid != Some(pid)
        })
    })
    .await
    .unwrap();
    let ev = events(&h).await;
    assert!(
        ev.iter().any(|e| e.kind == EventKind::LeaseAcquired
            && e.server.as_deref() == Some("ms1")
            && e.message.contains("handover")),
        "ms1 took its lease by handover"
    );
    assert!(
        !ev.iter().any(|e| e.kind == EventKind::LeaseExpired && e.server.as_deref() == Some("ms1")),
        "the lease never had to expire"
    );
    assert_safe(&h).await;
}

/// The cluster master's machine dies: another server takes the master role once the master
/// lease expires, and migrates the dead master's server.
#[tokio::test]
async fn master_machine_dies_another_server_takes_over() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    assert!(status_of(&h, "ms1").await.master);
    h.kill_machine("machine-b");
    // ms1's candidates are machine-d first.
    h.wait_running("ms1", "machine-d", 0, PATIENCE).await.expect("ms1 migrated to machine-d");
    let ms2 = status_of(&h, "ms2").await;
    assert_eq!(ms2.machine.as_deref(), Some("machine-c"));
    let ev = events(&h).await;
    assert!(ev.iter().any(|e| e.kind == EventKind::MasterAcquired && e.source == "server/ms2"), "ms2 became master");
    assert_safe(&h).await;
}

/// Managed server independence: with the Administration Server down, servers keep running,
/// and a crashed server restarts from its cached configuration.
#[tokio::test]
async fn admin_down_servers_keep_running_and_restart_from_cache() {
    let _g = SERIAL.lock().await;
    let mut h = started().await;
    let before = status_of(&h, "ms1").await;
    assert!(h.kill_admin() >= 1);
    // Several lease periods pass without the admin.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a = h.who_answers("ms1").await.expect("ms1 still answers");
    assert_eq!(a["fencing_token"], before.epoch.unwrap().0);
    // Crash ms1's runtime: its Node Manager restarts it with the cached configuration.
    assert!(ferry_host::process::signal(before.pid.unwrap(), Signal::SIGKILL));
    let addr = h.service_addr["ms1"];
    wait_until(PATIENCE, "ms1 to answer with a new fencing token", || async {
        ferry_testkit::probe(addr, Duration::from_millis(300))
            .await
            .is_some_and(|v| v["fencing_token"].as_u64() > before.epoch.map(|e| e.0))
    })
    .await
    .unwrap();
    // The admin comes back and learns what happened while it was away.
    h.start_admin().await.unwrap();
    let admin = h.admin();
    wait_until(PATIENCE, "the queued events to reach the admin", || async {
        admin
            .events(0)
            .await
            .map(|ev| ev.iter().any(|e| e.kind == EventKind::ConfigCached && e.server.as_deref() == Some("ms1")))
            .unwrap_or(false)
    })
    .await
    .unwrap();
    assert_eq!(status_of(&h, "ms1").await.state, ViewState::Running);
    assert_safe(&h).await;
}

/// Stop releases the lease (the master does not resurrect a stopped server); start brings it
/// back on its home machine.
#[tokio::test]
async fn stop_is_respected_and_start_brings_it_back() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let admin = h.admin();
    let op = admin.stop("ms2", false).await.expect("stop accepted");
    wait_until(PATIENCE, "the stop to finish", || async {
        admin.operation(op.id).await.map(|o| o.state == OperationState::Succeeded).unwrap_or(false)
    })
    .await
    .unwrap();
    // Longer than ttl + grace + a scan: the master must leave it alone.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let s = status_of(&h, "ms2").await;
    assert_eq!(s.state, ViewState::Shutdown, "{s:?}");
    assert!(h.who_answers("ms2").await.is_none());
    // A forced stop releases the lease too.
    admin.start("ms2").await.expect("start accepted");
    h.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();
    let op = admin.stop("ms2", true).await.expect("forced stop accepted");
    wait_until(PATIENCE, "the forced stop to finish", || async {
        admin.operation(op.id).await.map(|o| o.state == OperationState::Succeeded).unwrap_or(false)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(status_of(&h, "ms2").await.state, ViewState::Shutdown);
    assert_safe(&h).await;
}

/// Losing the lease table: every server fails to renew and shuts itself down before its
/// lease can expire (rule 2), with the seed's message, and exits 75. When the table comes
/// back, the domain returns to its configured state without an operator.
#[tokio::test]
async fn lost_lease_table_makes_every_server_fence_itself() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    // Take the database's write lock and keep it: every renewal now times out.
    let db = rusqlite::Connection::open(h.dir.join("data/leases.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for (server, machine) in [("ms1", "machine-b"), ("ms2", "machine-c")] {
        let nm = h.nm_client(machine, Duration::from_secs(2)).await.unwrap();
        wait_until(PATIENCE, &format!("{server} to fence itself"), || async {
            nm.servers()
                .await
                .ok()
                .and_then(|l| l.into_iter().find(|s| s.name == server))
                .is_some_and(|s| s.state == ServerState::Fenced && s.last_exit.as_deref() == Some("exit code 75"))
        })
        .await
        .unwrap();
        let log =
            std::fs::read_to_string(h.dir.join(format!("data/nm-{machine}/servers/{server}/server.log"))).unwrap();
        // The server fences itself first (its Node Manager's backstop fires half a margin
        // later); on a badly overloaded machine the backstop may win the race, which is
        // just as safe and shows as a Node Manager `fenced` event instead of the message.
        let said_why = log.contains("failed to reach the lease table for lease renewal");
        let admin = h.admin();
        let nm_fenced = said_why
            || wait_until(Duration::from_secs(5), "a Node Manager fence event", || async {
                admin.events(0).await.unwrap_or_default().iter().any(|e| {
                    e.kind == EventKind::Fenced
                        && e.source == format!("nodemanager/{machine}")
                        && e.server.as_deref() == Some(server)
                })
            })
            .await
            .is_ok();
        assert!(said_why || nm_fenced, "{server}'s log says why:\n{log}");
        assert!(h.who_answers(server).await.is_none(), "{server}'s service was killed");
    }
    // The table comes back: Node Managers restart the servers they own, which take their
    // leases over from their fenced incarnations, with no operator.
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    h.wait_running("ms1", "machine-b", 1, PATIENCE).await.expect("ms1 back on machine-b");
    h.wait_running("ms2", "machine-c", 1, PATIENCE).await.expect("ms2 back on machine-c");
    // The old master lease runs out by the store's clock; then one of them takes it.
    let admin = h.admin();
    wait_until(PATIENCE, "a cluster master again", || async {
        admin.servers().await.map(|l| l.iter().any(|s| s.master)).unwrap_or(false)
    })
    .await
    .unwrap();
    h.wait_answer_from("ms1", "machine-b", PATIENCE).await.unwrap();
    h.wait_answer_from("ms2", "machine-c", PATIENCE).await.unwrap();
    let ev = events(&h).await;
    assert!(
        ev.iter().any(|e| e.kind == EventKind::RestartAfterFence && e.server.as_deref() == Some("ms2")),
        "{:#?}",
        ev.iter().map(|e| format!("{:?} {} {} {}", e.server, e.source, e.kind, e.message)).collect::<Vec<_>>()
    );
    assert!(
        !ev.iter().any(|e| e.kind == EventKind::NotRestarting),
        "after an outage the Node Managers bring their servers back themselves"
    );
    assert_safe(&h).await;
}

/// A Node Manager crash leaves its servers running; the restarted Node Manager adopts them
/// through its local channel and fences them again (rule 3) and can stop them.
#[tokio::test]
async fn restarted_node_manager_adopts_its_running_servers() {
    let _g = SERIAL.lock().await;
    let mut h = started().await;
    let before = status_of(&h, "ms2").await;
    let cluster = h.admin().clusters().await.unwrap().into_iter().next().expect("a cluster");
    let (name, epoch) = (cluster.master.expect("a master"), cluster.master_epoch.expect("an epoch"));
    let home = if name == "ms1" { "machine-b" } else { "machine-c" };
    let master_creds = h.server_credentials(home, &name).unwrap();
    let master = |epoch| NmStart {
        origin: Origin::Master { cluster: cluster.name.clone(), epoch, server: name.clone() },
        in_place: false,
    };
    // The real master's epoch reaches this Node Manager (as a no-op start of a running server).
    h.nm_client_as("machine-c", &master_creds).start("ms2", &master(epoch)).await.expect("the current master may ask");
    // The Node Manager writes the epoch it learned in the background (off the command's path).
    let epochs_file = h.dir.join("data/nm-machine-c/master-epochs.json");
    wait_until(PATIENCE, "machine-c's Node Manager to persist the master epoch", || async {
        std::fs::read(&epochs_file).is_ok_and(|b| {
            serde_json::from_slice::<std::collections::BTreeMap<String, u64>>(&b)
                .is_ok_and(|m| m.get("cluster-1") == Some(&epoch.0))
        })
    })
    .await
    .unwrap();
    assert_eq!(h.kill_nm_only("machine-c"), 1);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mid = status_of(&h, "ms2").await;
    assert_eq!((mid.state, mid.epoch), (ViewState::Running, before.epoch), "ms2 kept running without its Node Manager");
    h.start_nm("machine-c").await.unwrap();
    let admin = h.admin();
    wait_until(PATIENCE, "the new Node Manager to adopt ms2", || async {
        admin
            .events(0)
            .await
            .map(|ev| ev.iter().any(|e| e.kind == EventKind::Adopted && e.server.as_deref() == Some("ms2")))
            .unwrap_or(false)
    })
    .await
    .unwrap();
    let nm = h.nm_client_as("machine-c", &master_creds);
    let e = nm.start("ms2", &master(ferry_core::Epoch(epoch.0 - 1))).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "an older epoch is not the master's: {e}");
    // Rule 5 across restarts: the restarted Node Manager still knows master epoch `epoch`.
    let seen: std::collections::BTreeMap<String, u64> = serde_json::from_slice(
        &std::fs::read(h.dir.join("data/nm-machine-c/master-epochs.json")).expect("master epochs persisted"),
    )
    .unwrap();
    assert_eq!(seen.get("cluster-1"), Some(&epoch.0), "{seen:?}");
    let seen = nm.servers().await.unwrap().into_iter().find(|s| s.name == "ms2").expect("adopted ms2 is listed");
    assert_eq!(seen.pid, before.pid);
    assert!(seen.deadline_in_ms.is_some(), "the adopted server reports its deadline again");
    // Rule 3 works again: a hung adopted server is fenced by the new Node Manager.
    assert!(ferry_host::process::signal(before.pid.unwrap(), Signal::SIGSTOP));
    wait_until(PATIENCE, "the new Node Manager to fence the hung ms2", || async {
        admin
            .events(0)
            .await
            .map(|ev| ev.iter().any(|e| e.kind == EventKind::Fenced && e.source == "nodemanager/machine-c"))
            .unwrap_or(false)
    })
    .await
    .unwrap();
    h.wait_running("ms2", "machine-c", before.epoch.unwrap().0, PATIENCE).await.expect("ms2 restarted in place");
    assert_safe(&h).await;
}

/// Servers hand their renewals to their Node Manager, which sends all of its servers'
/// renewals as one `renew_many` per window (the scale benchmark's batching, for real). When
/// the Node Manager is gone, a server renews directly and keeps running.
#[tokio::test]
async fn servers_renew_through_their_node_manager_in_batches() {
    let _g = SERIAL.lock().await;
    let mut spec = spec();
    // Both servers on machine-b, so its Node Manager batches for two.
    spec.servers[1].home = "machine-b".into();
    let h = Harness::start(spec, exe(), None).await.expect("domain starts");
    h.admin().start_cluster("cluster-1").await.unwrap();
    h.wait_running("ms1", "machine-b", 0, PATIENCE).await.unwrap();
    let before = h.wait_running("ms2", "machine-b", 0, PATIENCE).await.unwrap();
    let nm = h.nm_client("machine-b", Duration::from_secs(2)).await.unwrap();
    let first = nm.health().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = nm.health().await.unwrap();
    // 200 ms interval, two servers: about ten renewals a second went through this Node Manager.
    assert!(later.renewals >= first.renewals + 5, "renewals go through the Node Manager: {first:?} -> {later:?}");
    assert!(later.renewal_batches > first.renewal_batches && later.renewal_batches <= later.renewals);
    let after = status_of(&h, "ms2").await;
    assert_eq!((after.state, after.epoch), (ViewState::Running, before.epoch), "the lease stays live");
    // Without its Node Manager, the server renews on its own.
    assert_eq!(h.kill_nm_only("machine-b"), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alone = status_of(&h, "ms2").await;
    assert_eq!(
        (alone.state, alone.epoch),
        (ViewState::Running, before.epoch),
        "ms2 kept its lease without its Node Manager"
    );
    assert_safe(&h).await;
}

/// How many `ferry server NAME` processes this harness's machines run right now.
fn server_processes(h: &Harness, name: &str) -> usize {
    h.spec
        .machines
        .iter()
        .flat_map(|m| h.machine_pids(m))
        .filter(|&pid| ferry_host::process::is_server_leader(pid, name))
        .count()
}

/// Issue 9, item 8: a server that fenced itself while the rest of the domain was healthy was
/// restarted both by its Node Manager (after the fence) and by the cluster master (after the
/// expiry), on two machines. They now agree: with a live master reading the table, the Node
/// Manager gives way and the master restarts it, in place; never two processes.
#[tokio::test]
async fn a_fenced_server_is_restarted_by_the_master_alone_while_one_is_live() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let before = status_of(&h, "ms2").await;
    assert!(status_of(&h, "ms1").await.master, "ms1 is the cluster master");
    // ms2's lease runs out under it by the store's clock (as on a host too busy to renew in
    // time): its next renewal is refused as lost, and it fences itself (exit 75).
    let db = rusqlite::Connection::open(h.dir.join("data/leases.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute("UPDATE ferry_leases SET expires_at_ms = expires_at_ms - 60000 WHERE name = 'server/ms2'", []).unwrap();
    drop(db);
    let until = ferry_host::clock::now() + Duration::from_secs(30);
    let mut most = 0;
    let after = loop {
        most = most.max(server_processes(&h, "ms2"));
        let s = status_of(&h, "ms2").await;
        if s.state == ViewState::Running && s.epoch > before.epoch {
            break s;
        }
        assert!(ferry_host::clock::now() < until, "ms2 never came back: {s:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    for _ in 0..100 {
        most = most.max(server_processes(&h, "ms2"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        most,
        1,
        "never two `ferry server ms2` processes at once: {:#?}",
        events(&h)
            .await
            .iter()
            .filter(|e| e.server.as_deref() == Some("ms2"))
            .map(|e| format!("{} {} {} {}", e.at_ms, e.source, e.kind, e.message))
            .collect::<Vec<_>>()
    );
    assert_eq!(after.machine.as_deref(), Some("machine-c"), "restarted in place: {after:?}");
    let ev = events(&h).await;
    let ms2: Vec<_> = ev.iter().filter(|e| e.server.as_deref() == Some("ms2")).collect();
    assert!(
        ms2.iter().any(|e| e.kind == EventKind::NotRestarting && e.message.contains("cluster master ms1")),
        "the Node Manager gave way to the master: {ms2:#?}"
    );
    assert!(ms2.iter().any(|e| e.kind == EventKind::RestartInPlace && e.source.starts_with("server/")), "{ms2:#?}");
    assert!(!ms2.iter().any(|e| e.kind == EventKind::RestartAfterFence), "{ms2:#?}");
    journal_with(&h, "ms2", 2).await;
}

/// The pid of `machine`'s Node Manager.
fn nm_pid(h: &Harness, machine: &str) -> i32 {
    let is_nm = |pid: &i32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|&b| b == 0)
            .any(|a| a == b"nodemanager")
    };
    h.machine_pids(machine).into_iter().find(is_nm).expect("the Node Manager runs")
}

/// `ferry machines -o json` and `ferry status -o json` as the CLI prints them.
fn cli_views(h: &Harness) -> (Vec<ferry_api::MachineStatus>, Vec<ferry_api::ServerStatus>) {
    let cfg = h.client_config_dir();
    let machines = ferry_cli(&h.admin_url, &cfg, &["machines", "-o", "json"]);
    assert!(machines.status.success(), "{}", String::from_utf8_lossy(&machines.stderr));
    let status = ferry_cli(&h.admin_url, &cfg, &["status", "-o", "json"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    (serde_json::from_slice(&machines.stdout).unwrap(), serde_json::from_slice(&status.stdout).unwrap())
}

/// A machine whose Node Manager hangs (SIGSTOP: connections to it hang, as with a pulled
/// cable) costs `ferry status` nothing: it answers from what the admin knows, marks the
/// machine unreachable and stale with the age of its last answer, and shows the servers
/// there as last known. Once the Node Manager answers again, so does the view.
#[tokio::test]
async fn status_answers_while_a_node_manager_hangs_and_marks_its_machine_stale() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let (machines, servers) = cli_views(&h);
    assert!(machines.iter().all(|m| m.reachable && !m.stale && m.last_seen_age_ms.is_some()), "{machines:?}");
    assert!(servers.iter().all(|s| !s.view_stale && s.state == ViewState::Running), "{servers:?}");

    let nm = nm_pid(&h, "machine-c");
    assert!(ferry_host::process::signal(nm, Signal::SIGSTOP));
    let mut answers = 0;
    let mut ages = Vec::new();
    let stale = wait_until(PATIENCE, "status to mark machine-c stale", || {
        let (machines, servers) = cli_views(&h);
        answers += 1;
        let c = machines.iter().find(|m| m.name == "machine-c").unwrap().clone();
        let ms2 = servers.iter().find(|s| s.name == "ms2").unwrap().clone();
        let done = !c.reachable
            && c.stale
            && c.error.is_some()
            && c.servers.is_empty()
            && ms2.machine.as_deref() == Some("machine-c")
            && ms2.view_stale
            && ms2.view_age_ms.is_some();
        if done {
            ages.push(c.last_seen_age_ms.expect("an age"));
        }
        async move { done }
    })
    .await;
    let text = ferry_cli(&h.admin_url, &h.client_config_dir(), &["status"]);
    let (machines, _) = cli_views(&h);
    assert!(ferry_host::process::signal(nm, Signal::SIGCONT));
    stale.unwrap();
    assert!(answers > 0);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.contains("machine-c  UNREACHABLE (last answered ") && text.contains(" s ago: "), "{text}");
    assert!(text.lines().any(|l| l.starts_with("ms2 ") && l.contains("RUNNING? ")), "{text}");
    let later = machines.iter().find(|m| m.name == "machine-c").unwrap().last_seen_age_ms.unwrap();
    assert!(later > ages[0], "the age grows: {} then {later}", ages[0]);
    // machine-b's Node Manager answered all along.
    assert!(machines.iter().find(|m| m.name == "machine-b").unwrap().reachable);

    wait_until(PATIENCE, "machine-c's view to be fresh again", || {
        let (machines, _) = cli_views(&h);
        async move { machines.iter().all(|m| m.reachable && !m.stale) }
    })
    .await
    .unwrap();
    assert_safe(&h).await;
}

/// A Node Manager that was itself stopped (SIGSTOP, a frozen cgroup, a starved host) woke to
/// find its servers' deadlines passed, while their newer deadlines still waited unread on its
/// local channel, and killed a healthy server (found while testing `ferry status` against a
/// stopped Node Manager). It now reads what queued up first: a server that kept renewing
/// (directly, while its Node Manager did not answer) keeps running.
#[tokio::test]
async fn a_node_manager_resumed_after_a_pause_does_not_fence_its_healthy_servers() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let before = status_of(&h, "ms2").await;
    let since = events(&h).await.last().map_or(0, |e| e.id);
    let pid = nm_pid(&h, "machine-c");
    for _ in 0..3 {
        assert!(ferry_host::process::signal(pid, Signal::SIGSTOP));
        // Well past a lease (600 ms): every deadline ms2 reported meanwhile queues unread.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(ferry_host::process::signal(pid, Signal::SIGCONT));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    wait_until(PATIENCE, "machine-c's Node Manager to answer again", || async {
        h.nm_client("machine-c", Duration::from_secs(2)).await.unwrap().health().await.is_ok()
    })
    .await
    .unwrap();
    let after = status_of(&h, "ms2").await;
    let ev = h.admin().events(since).await.unwrap();
    let fenced: Vec<_> =
        ev.iter().filter(|e| e.kind == EventKind::Fenced || e.kind == EventKind::ServerExited).collect();
    assert!(fenced.is_empty(), "nobody was fenced: {fenced:#?}");
    assert_eq!((after.epoch, after.machine.as_deref()), (before.epoch, Some("machine-c")), "{after:?}");
    assert_safe(&h).await;
}
