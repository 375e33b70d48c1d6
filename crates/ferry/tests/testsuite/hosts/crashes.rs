//! A machine, a process or the admin fails: a crashed machine, a hung server, a frozen
//! machine, a Node Manager crash, the master's machine crash, the admin down during a
//! failure, the database gone.

use std::time::Duration;

use ferry_api::{EventKind, ServerState, ViewState};
use ferry_host::{clock, process};
use ferry_testkit::{check_journal, wait_until, ClientView, LabDomain};
use nix::sys::signal::Signal;

use super::{
    assert_ending, assert_outage_within, client_on, count, events, has_ip, holders, kill_running, liveness_bound_ms,
    machines, master_liveness_bound_ms, started, started_domain, status_of, trail, wait_client_after, wait_client_new,
    wait_event, wait_running_anywhere, Ending, CLIENT_MS, GRACE_MS, INTERVAL_MS, TTL_MS,
};
use crate::{PATIENCE, SERIAL};

/// Figure 7-2 on real hosts: machine C crashes (every process killed, cable pulled); ms2 and
/// its floating IP move to machine D, and the client reaches it there.
#[tokio::test]
async fn machine_crash_moves_server_and_floating_ip() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started().await else { return };
    let fip = d.floating["ms2"].ip().to_string();
    assert!(has_ip(&d, "machine-c", &fip).await, "ms2's floating IP is on machine-c");
    assert!(!has_ip(&d, "machine-d", &fip).await);
    d.start_client("ms2", CLIENT_MS).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = status_of(&d, "ms2").await;

    let t0 = clock::now().0;
    d.lab.crash("machine-c").await.unwrap();
    // On failure, the event trail says why the master passed machine-d over.
    let after = match d.wait_running("ms2", "machine-d", before.epoch.unwrap().0, PATIENCE).await {
        Ok(after) => after,
        Err(e) => panic!("ms2 moved to machine-d: {e}\n{}", trail(&events(&d).await)),
    };
    assert!(has_ip(&d, "machine-d", &fip).await, "the floating IP moved to machine-d");
    let view = wait_client_new(&d, "ms2", t0, before.epoch.unwrap().0).await;
    assert_eq!(view.new_machine.as_deref(), Some("machine-d"), "{view:?}");
    assert_outage_within("machine crash", &view, liveness_bound_ms());
    assert!(after.epoch > before.epoch);
    assert_ending(&d, Ending { clients: &["ms2"], ..Ending::default() }).await;
}

/// A hung server (SIGSTOP of the `ferry server ms2` runtime; its service keeps running): its
/// Node Manager fences it at the deadline it last reported (rule 3), the cluster master has
/// that Node Manager restart it in place, and the old instance never answers again, also
/// after SIGCONT.
#[tokio::test]
async fn hung_server_is_fenced_by_its_node_manager_and_restarted_in_place() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started().await else { return };
    client_on(&mut d, "ms2").await;
    let before = status_of(&d, "ms2").await;
    let pid = before.pid.expect("ms2 has a pid");
    let old_epoch = before.epoch.unwrap().0;

    let t0 = clock::now().0;
    assert!(process::signal(pid, Signal::SIGSTOP));
    wait_event(&d, "machine-c's Node Manager to fence the hung ms2", |e| {
        e.kind == EventKind::Fenced && e.source == "nodemanager/machine-c" && e.server.as_deref() == Some("ms2")
    })
    .await;
    let after =
        d.wait_running("ms2", "machine-c", old_epoch, PATIENCE).await.expect("ms2 restarted in place on machine-c");
    assert_ne!(after.pid, Some(pid), "a new process");
    assert!(!process::alive(pid), "the hung runtime was killed");
    // Continuing it changes nothing: the fence was a SIGKILL of its whole session.
    process::signal(pid, Signal::SIGCONT);
    let view = wait_client_new(&d, "ms2", t0, old_epoch).await;
    assert_eq!(view.new_machine.as_deref(), Some("machine-c"), "{view:?}");
    // Watch a while longer: the old epoch must never answer again.
    let t1 = clock::now().0;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    wait_client_after(&d, "ms2", t1 + 900).await;
    let seen =
        assert_ending(&d, Ending { clients: &["ms2"], no_events: &[EventKind::Migrate], ..Ending::default() }).await;
    let seen = &seen["ms2"];
    assert!(seen.iter().filter(|s| s.epoch == old_epoch).all(|s| s.last_ms < view.first_new_ms.unwrap()), "{seen:?}");
    assert_outage_within("hung server", &view, liveness_bound_ms());
    let ev = events(&d).await;
    assert!(count(&ev, EventKind::RestartInPlace, "ms2") >= 1, "{}", trail(&ev));
}

/// Waits (at most `patience`) until a cluster master's restart-in-place command for `server`
/// has been out to `machine` for 150 ms without an answer; whether that happened.
async fn command_pending_at(d: &LabDomain, server: &str, machine: &str, patience: Duration) -> bool {
    let until = clock::now() + patience;
    let mut seen: Option<(u64, ferry_core::Mono)> = None;
    while clock::now() < until {
        let ev = events(d).await;
        let last = ev.iter().rposition(|e| {
            e.kind == EventKind::RestartInPlace
                && e.source.starts_with("server/")
                && e.server.as_deref() == Some(server)
        });
        if let Some(i) = last {
            let answered = ev[i + 1..].iter().any(|e| {
                e.kind == EventKind::MachineFailed && e.server.as_deref() == Some(server) && e.message.contains(machine)
            });
            if !answered {
                match seen {
                    Some((id, at)) if id == ev[i].id => {
                        if clock::now().since(at) >= 150 {
                            return true;
                        }
                    }
                    _ => seen = Some((ev[i].id, clock::now())),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A whole machine hangs (every process of machine-c frozen, its kernel still up) for longer
/// than the lease and the grace period, then resumes. While it is frozen its kernel keeps
/// answering ARP for ms2's floating IP, so no other machine may plumb the address (the
/// built-in addif probes first and refuses): the master's attempts elsewhere fail, safely.
/// On thaw ms2's runtime and its Node Manager both find the deadline long past and kill the
/// old instance at once; the master then restarts ms2 (in place on machine-c, or on
/// machine-d). The old epoch never answers after a newer one, the floating IP ends on
/// exactly the machine that runs ms2, and every instance that took the lease could serve.
#[tokio::test]
async fn frozen_machine_thaws_and_its_old_instance_never_answers_again() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started().await else { return };
    client_on(&mut d, "ms2").await;
    let fip = d.floating["ms2"].ip().to_string();
    let before = status_of(&d, "ms2").await;
    let old_epoch = before.epoch.unwrap().0;

    let frozen = clock::now();
    d.lab.freeze("machine-c").await.unwrap();
    // Hold past the lease and the grace period, and (if it comes within 3.5 s, long before
    // the master could run out of circuits) until a restart-in-place command of the master hangs
    // in the frozen Node Manager: the thaw then races that command with the fencing of the
    // old instance, as when a hung machine resumes while its master retries.
    let pending = command_pending_at(&d, "ms2", "machine-c", Duration::from_millis(3_500)).await;
    let held = clock::now().since(frozen);
    if held < TTL_MS + GRACE_MS + 1_000 {
        tokio::time::sleep(Duration::from_millis(TTL_MS + GRACE_MS + 1_000 - held)).await;
    }
    println!("frozen machine: a restart-in-place command was pending at the thaw: {pending}");
    let thaw = clock::now().0;
    d.lab.thaw("machine-c").await.unwrap();

    let after = wait_running_anywhere(&d, "ms2", old_epoch).await;
    let machine = after.machine.clone().unwrap();
    let view = wait_client_new(&d, "ms2", thaw, old_epoch).await;
    // Let things settle, then look: the address is where ms2 runs, nowhere else.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let now = status_of(&d, "ms2").await;
    let machine_now = now.machine.clone().unwrap();
    assert_eq!(
        holders(&d, &fip).await,
        vec![machine_now.to_string()],
        "ms2's floating IP is on exactly the machine that runs it"
    );
    let seen = assert_ending(&d, Ending { clients: &["ms2"], ..Ending::default() }).await;
    let seen = &seen["ms2"];
    let instances = check_journal(&d.journal_path("ms2")).unwrap_or_else(|e| panic!("safety violated for ms2: {e}"));
    let old = instances.iter().find(|i| i.epoch == old_epoch).unwrap();
    println!(
        "frozen machine: ms2 back on {machine} (epoch {:?}); after the thaw the old instance ran {} ms more (journal), answered the client last at {:?} ms (thaw at {thaw} ms); outage after the thaw {:?} ms",
        after.epoch,
        old.last_ms as i64 - thaw as i64,
        seen.iter().filter(|s| s.epoch == old_epoch).map(|s| s.last_ms).max(),
        view.first_new_ms.map(|t| t - thaw),
    );
    let ev = events(&d).await;
    let refused =
        ev.iter().filter(|e| e.kind == EventKind::StartFailed && e.message.contains("another host answers")).count();
    println!("frozen machine: {refused} starts elsewhere refused by the ARP probe while machine-c held the address");
    // Every instance that took the lease after the thaw found its floating IP in place.
    assert_eq!(
        count(&ev, EventKind::ServiceDied, "ms2"),
        0,
        "an instance of ms2 started without its floating IP (see the Node Manager's exit/start race):\n{}",
        trail(&ev)
    );
    assert!(
        instances.iter().filter(|i| i.epoch > old_epoch).all(|i| seen.iter().any(|s| s.epoch == i.epoch)),
        "every new instance answered at the floating IP: journal {instances:?}, client {seen:?}"
    );
    assert_outage_within(
        "frozen machine (from the thaw)",
        &ClientView { outage_ms: view.first_new_ms.map(|t| t - thaw), ..view.clone() },
        // The master may be waiting out a retry delay (10 intervals) when the machine
        // resumes.
        liveness_bound_ms() + 10 * INTERVAL_MS,
    );
}

/// A Node Manager crash (only the `ferry nodemanager` process of machine-c): ms2 keeps
/// running and renewing on its own; the restarted Node Manager adopts it over the local
/// channel. The client sees no outage.
#[tokio::test]
async fn node_manager_crash_leaves_its_server_running_and_the_new_one_adopts_it() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started().await else { return };
    client_on(&mut d, "ms2").await;
    let before = status_of(&d, "ms2").await;

    let t0 = clock::now().0;
    let killed = kill_running(&d, "machine-c", &["nodemanager"]).await;
    assert_eq!(killed.len(), 1, "one Node Manager on machine-c: {killed:?}");
    assert!(process::alive(before.pid.unwrap()), "ms2's runtime survives its Node Manager");
    tokio::time::sleep(Duration::from_millis(3 * TTL_MS)).await;
    let mid = status_of(&d, "ms2").await;
    assert_eq!(
        (mid.state, mid.epoch),
        (ViewState::Running, before.epoch),
        "ms2 kept its lease without its Node Manager"
    );
    d.start_nm("machine-c").unwrap();
    wait_event(&d, "the new Node Manager to adopt ms2", |e| {
        e.kind == EventKind::Adopted && e.server.as_deref() == Some("ms2") && e.source == "nodemanager/machine-c"
    })
    .await;
    let after = status_of(&d, "ms2").await;
    assert_eq!(
        (after.machine.as_deref(), after.epoch, after.pid),
        (Some("machine-c"), before.epoch, before.pid),
        "the same instance, now supervised again"
    );
    let nm_view = machines(&d).await;
    let c = nm_view.iter().find(|m| m.name == "machine-c").unwrap();
    let entry = c.servers.iter().find(|s| s.name == "ms2").unwrap();
    assert!(entry.deadline_in_ms.is_some(), "the adopted server reports its deadline again: {entry:?}");
    let t1 = clock::now().0;
    wait_client_after(&d, "ms2", t1).await;
    let end = Ending {
        what: "node manager crash",
        clients: &["ms2"],
        one_instance: &["ms2"],
        kept_answering: &[("ms2", t0, t1)],
        no_events: &[EventKind::LeaseExpired, EventKind::Fenced, EventKind::Migrate, EventKind::RestartInPlace],
    };
    assert_ending(&d, end).await;
}

/// The machine of the cluster master dies (ms1 on machine-b): once the master lease
/// expires ms2 takes the role and migrates ms1 to machine-d. The client of ms1's floating
/// IP sees the outage end within the bound plus the master takeover.
#[tokio::test]
async fn master_machine_crash_another_server_takes_over_and_migrates() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started().await else { return };
    client_on(&mut d, "ms1").await;
    client_on(&mut d, "ms2").await;
    let ms1 = status_of(&d, "ms1").await;
    let ms2 = status_of(&d, "ms2").await;
    assert!(ms1.master, "ms1 started first and is the cluster master");

    let t0 = clock::now().0;
    d.lab.crash("machine-b").await.unwrap();
    d.wait_running("ms1", "machine-d", ms1.epoch.unwrap().0, PATIENCE).await.expect("ms1 moved to machine-d");
    let view = wait_client_new(&d, "ms1", t0, ms1.epoch.unwrap().0).await;
    assert_eq!(view.new_machine.as_deref(), Some("machine-d"), "{view:?}");
    let ev = events(&d).await;
    assert!(
        ev.iter().any(|e| e.kind == EventKind::MasterAcquired && e.source == "server/ms2"),
        "ms2 became master:\n{}",
        trail(&ev)
    );
    let now2 = status_of(&d, "ms2").await;
    assert!(now2.master, "ms2 holds the master lease");
    assert_eq!((now2.machine.as_deref(), now2.epoch), (Some("machine-c"), ms2.epoch), "ms2 was not disturbed");
    assert_outage_within("master machine crash", &view, master_liveness_bound_ms());
    assert_ending(&d, Ending { clients: &["ms1", "ms2"], ..Ending::default() }).await;
}

/// The Administration Server is down when machine-c dies: the failover does not need it
/// (DESIGN §1). ms2 moves to machine-d, starting from the Node Manager's copy of the
/// configuration; when the admin returns it shows the new state and the queued events.
#[tokio::test]
async fn admin_down_during_a_failure_is_not_on_the_failover_path() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started().await else { return };
    client_on(&mut d, "ms2").await;
    let before = status_of(&d, "ms2").await;
    let old_epoch = before.epoch.unwrap().0;
    let killed = kill_running(&d, ferry_lab::SWITCH, &["admin", "--domain"]).await;
    assert_eq!(killed.len(), 1, "one Administration Server: {killed:?}");
    assert!(d.status().await.is_err(), "the admin is down");

    let t0 = clock::now().0;
    d.lab.crash("machine-c").await.unwrap();
    let view = wait_client_new(&d, "ms2", t0, old_epoch).await;
    assert_eq!(view.new_machine.as_deref(), Some("machine-d"), "{view:?}");
    assert_outage_within("admin down, machine crash", &view, liveness_bound_ms());

    d.start_admin().unwrap();
    let after = d
        .wait_running("ms2", "machine-d", old_epoch, PATIENCE)
        .await
        .expect("the returned admin shows ms2 on machine-d");
    wait_event(&d, "the queued migration events to reach the admin", |e| {
        e.kind == EventKind::Migrate && e.server.as_deref() == Some("ms2")
    })
    .await;
    wait_event(&d, "ms2 to report starting without the admin", |e| {
        e.kind == EventKind::ConfigCached && e.server.as_deref() == Some("ms2")
    })
    .await;
    assert!(after.epoch > before.epoch);
    assert_ending(&d, Ending { clients: &["ms2"], ..Ending::default() }).await;
}

/// The lease table goes away (PostgreSQL stopped): every server fails to renew and fences
/// itself before its lease can expire, so no service answers; the master cannot act on a
/// table it cannot read. When the database returns, the servers come back on their own
/// machines with no operator, and nothing migrated.
#[tokio::test]
async fn database_outage_fences_everything_and_the_domain_returns_in_place() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started().await else { return };
    client_on(&mut d, "ms1").await;
    client_on(&mut d, "ms2").await;
    let ms1 = status_of(&d, "ms1").await;
    let ms2 = status_of(&d, "ms2").await;

    d.pg.stop().unwrap();
    let stopped = clock::now().0;
    let fenced_both = wait_until(PATIENCE, "both servers to fence themselves", || async {
        let m = machines(&d).await;
        [("ms1", "machine-b"), ("ms2", "machine-c")].iter().all(|(s, machine)| {
            m.iter()
                .filter(|v| v.name == *machine)
                .any(|v| v.servers.iter().any(|e| e.name == *s && e.state == ServerState::Fenced && e.pid.is_none()))
        })
    })
    .await;
    if let Err(e) = fenced_both {
        panic!("{e}; the Node Managers say {:?}", machines(&d).await);
    }
    let fenced = clock::now().0;
    // Nothing answers any more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (s, old) in [("ms1", &ms1), ("ms2", &ms2)] {
        let lines = d.client_log(s);
        let last_old = lines.iter().filter(|l| l.ok && l.epoch == old.epoch.unwrap().0).map(|l| l.t_ms).max().unwrap();
        println!(
            "database outage: {s}'s service last answered {} ms after the database was down",
            last_old as i64 - stopped as i64
        );
        assert!(last_old < stopped + 2 * TTL_MS, "{s} fenced itself within its lease");
        assert!(!lines.iter().any(|l| l.ok && l.t_ms > fenced), "{s}'s service is down");
    }

    let back = clock::now().0;
    d.pg.start_again().unwrap();
    let patience = Duration::from_secs(60);
    d.wait_running("ms1", "machine-b", ms1.epoch.unwrap().0, patience).await.expect("ms1 back on machine-b");
    d.wait_running("ms2", "machine-c", ms2.epoch.unwrap().0, patience).await.expect("ms2 back on machine-c");
    let v1 = wait_client_new(&d, "ms1", back, ms1.epoch.unwrap().0).await;
    let v2 = wait_client_new(&d, "ms2", back, ms2.epoch.unwrap().0).await;
    assert_eq!(v1.new_machine.as_deref(), Some("machine-b"));
    assert_eq!(v2.new_machine.as_deref(), Some("machine-c"));
    println!("database outage: back {:?} / {:?} ms after the database returned", v1.outage_ms, v2.outage_ms);
    wait_until(PATIENCE, "a cluster master again", || async {
        d.status().await.map(|l| l.iter().any(|s| s.master)).unwrap_or(false)
    })
    .await
    .unwrap();
    assert_ending(&d, Ending { clients: &["ms1", "ms2"], no_events: &[EventKind::Migrate], ..Ending::default() }).await;
}

/// A machine that crashed and came back counts as up once its new Node Manager answers: the
/// admin's view from before the crash (the old Node Manager's last answer, still fresh for a
/// moment) does not count. (`ferry demo --hosts` failed back to a machine whose new Node
/// Manager did not listen yet.)
#[tokio::test]
async fn a_revived_machine_is_up_once_its_new_node_manager_answers() {
    let _g = SERIAL.lock().await;
    let Some(d) = started_domain().await else { return };
    d.lab.crash("machine-c").await.unwrap();
    // Down for about as long as a failover takes, so that the admin's poll of machine-c is
    // still waiting on the pulled cable when the machine comes back.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    d.lab.revive("machine-c").await.unwrap();
    d.start_nm("machine-c").unwrap();
    d.wait_nm("machine-c", PATIENCE).await.unwrap();
    let nm = std::net::SocketAddrV4::new(d.lab.addr("machine-c").unwrap(), ferry_testkit::labdomain::NM_PORT);
    let answer = d.lab.connect(ferry_lab::SWITCH, nm, Duration::from_secs(1)).await.unwrap();
    assert!(answer.is_some(), "machine-c's new Node Manager listens on {nm} once wait_nm has returned");
}
