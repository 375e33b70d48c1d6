//! The fault suite on consensus leasing (`[leasing] basis = "consensus"`): the lease table
//! lives among the machines' Node Managers (and a witness), so the faults that matter are
//! the voters': the leader's machine crashes, the leader is cut off from everyone, a minority
//! is cut off, the voters split evenly, a voter loses its data, the admin is down, and a
//! two-machine domain with a witness loses either machine. Each ends with DESIGN §3's
//! checks on the clients' logs and the services' journals ([`assert_ending`]).

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_api::{EventKind, LeasingStatus, ServerState};
use ferry_host::clock;
use ferry_testkit::{wait_until, DomainSpec, LabDomain, ServerSpec};

use super::{
    assert_ending, client_on, events, kill_running, machines, started_domain_with, status_of, trail, wait_client_new,
    wait_event, wait_running_anywhere, Ending, GRACE_MS, PERIODS,
};
use crate::{PATIENCE, SERIAL};

/// The renewal interval of this suite: leases of 1.5 s, whose budget after a missed renewal
/// (1 s) lets the voters run at about their default timing (50 ms heartbeats, elections after
/// 150-300 ms). With the rest of the suite's 200 ms the voters would run at 19 ms heartbeats
/// and elections after 57-114 ms, which a busy 2-core host misses now and then: the election
/// that follows holds every renewal up (`ferry validate` warns of it).
const INTERVAL_MS: u64 = 500;

/// DESIGN §3's liveness bound at this suite's timings, with room for a busy machine.
fn liveness_bound_ms() -> u64 {
    INTERVAL_MS * PERIODS as u64 + GRACE_MS + INTERVAL_MS + 3_000
}

/// Figure 7-1 (machines B, C, D; ms1 on B, ms2 on C) on consensus leasing.
fn figure_7_1() -> DomainSpec {
    DomainSpec { consensus: true, ..DomainSpec::figure_7_1(INTERVAL_MS, PERIODS, GRACE_MS) }
}

async fn started(spec: DomainSpec) -> Option<LabDomain> {
    let d = started_domain_with(spec).await?;
    let out = d.cli(&["start-cluster", "cluster-1", "--wait"]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for s in d.spec.servers.clone() {
        d.wait_running(&s.name, &s.home, 0, PATIENCE).await.unwrap();
    }
    Some(d)
}

/// Waits until `ferry leasing status` satisfies `pred`; gives what it said.
async fn wait_leasing(d: &LabDomain, what: &str, pred: impl Fn(&LeasingStatus) -> bool) -> LeasingStatus {
    let until = clock::now() + PATIENCE;
    loop {
        let l = d.leasing().await;
        if let Ok(l) = &l {
            if pred(l) {
                return l.clone();
            }
        }
        if clock::now() >= until {
            panic!("waiting for {what}: leasing status {l:?}; events:\n{}", trail(&events(d).await));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader once every voter of the domain is a member and answers.
async fn settled(d: &LabDomain) -> (String, u64) {
    let l = wait_leasing(d, "every voter a member, and a leader", |l| {
        l.leader.is_some() && l.voters.iter().all(|v| v.member && v.reachable)
    })
    .await;
    (l.leader.unwrap(), l.term.unwrap())
}

/// Waits for a leader other than `old`, in a later term than `term`.
async fn new_leader(d: &LabDomain, old: &str, term: u64) -> (String, u64) {
    let l = wait_leasing(d, &format!("a leader other than {old} after term {term}"), |l| {
        l.leader.as_deref().is_some_and(|n| n != old) && l.term.is_some_and(|t| t > term)
    })
    .await;
    println!(
        "consensus: {} leads in term {} (was {old} in term {term})",
        l.leader.as_deref().unwrap(),
        l.term.unwrap()
    );
    (l.leader.unwrap(), l.term.unwrap())
}

/// Raft's election safety as the events tell it: no two voters announce leading the same
/// term, and none announces a term it does not lead (a restarted voter's remembered vote is
/// not leadership).
fn assert_one_leader_per_term(ev: &[ferry_api::Event]) {
    let mut leaders: BTreeMap<u64, String> = BTreeMap::new();
    for e in ev.iter().filter(|e| e.kind == EventKind::LeaderElected) {
        let term: u64 = e
            .message
            .split(" in term ")
            .nth(1)
            .and_then(|t| t.split(';').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("a term in {:?}", e.message));
        if let Some(other) = leaders.insert(term, e.source.clone()) {
            panic!("two announcements of leading term {term}: {other} and {}:\n{}", e.source, trail(ev));
        }
    }
}

/// Where each server runs and at which epoch.
async fn placement(d: &LabDomain) -> BTreeMap<String, (String, u64)> {
    let mut out = BTreeMap::new();
    for s in d.spec.servers.clone() {
        let st = status_of(d, &s.name).await;
        out.insert(s.name, (st.machine.unwrap().to_string(), st.epoch.unwrap().0));
    }
    out
}

/// After `lost` failed: every server that ran there runs again elsewhere (a new epoch), the
/// client of each saw the new instance, and every other server kept its instance (the
/// failure cost no lease that was not on `lost`). Gives the servers that moved.
async fn moved_off(
    d: &LabDomain,
    before: &BTreeMap<String, (String, u64)>,
    lost: &[&str],
    t0: u64,
    what: &str,
) -> Vec<String> {
    let mut moved = Vec::new();
    for (s, (machine, epoch)) in before {
        if lost.contains(&machine.as_str()) {
            let after = wait_running_anywhere(d, s, *epoch).await;
            let now_on = after.machine.as_ref().unwrap().to_string();
            assert!(!lost.contains(&now_on.as_str()), "{what}: {s} runs on {now_on}, which is down");
            let view = wait_client_new(d, s, t0, *epoch).await;
            println!("{what}: {s} moved from {machine} to {now_on}; client outage {:?} ms", view.outage_ms);
            // Liveness: within DESIGN §3's bound, with the master's own takeover (one lease
            // and one interval) when the lost machine held the master too.
            let bound = liveness_bound_ms() + INTERVAL_MS * PERIODS as u64 + INTERVAL_MS;
            let outage = view.outage_ms.unwrap_or(u64::MAX);
            assert!(outage <= bound, "{what}: {s} was out {outage} ms, over the bound {bound} ms: {view:?}");
            moved.push(s.clone());
        }
    }
    for (s, (machine, epoch)) in before {
        if !moved.contains(s) {
            let now = status_of(d, s).await;
            assert_eq!(now.epoch.map(|e| e.0), Some(*epoch), "{what}: {s} on {machine} kept its lease");
        }
    }
    moved
}

/// The end of a test where the servers in `moved` moved: both clients safe, and every other
/// server one instance all along, answering without a gap from `t0` to `t1`.
async fn assert_others_stayed(
    d: &LabDomain,
    what: &str,
    before: &BTreeMap<String, (String, u64)>,
    moved: &[String],
    (t0, t1): (u64, u64),
) {
    let stayed: Vec<&str> = before.keys().filter(|s| !moved.contains(s)).map(String::as_str).collect();
    let kept: Vec<_> = stayed.iter().map(|s| (*s, t0, t1)).collect();
    let clients: Vec<&str> = before.keys().map(String::as_str).collect();
    let end = Ending { what, clients: &clients, one_instance: &stayed, kept_answering: &kept, ..Ending::default() };
    assert_ending(d, end).await;
}

/// The leader's machine crashes: the other two elect a leader, the crashed machine's servers
/// move, and every lease that was not on it survives the change of leader.
#[tokio::test]
async fn consensus_leader_crash_moves_its_servers_and_costs_no_other_lease() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started(figure_7_1()).await else { return };
    client_on(&mut d, "ms1").await;
    client_on(&mut d, "ms2").await;
    let (leader, term) = settled(&d).await;
    let before = placement(&d).await;

    let t0 = clock::now().0;
    d.lab.crash(&leader).await.unwrap();
    new_leader(&d, &leader, term).await;
    let moved = moved_off(&d, &before, &[&leader], t0, "leader crash").await;
    assert_one_leader_per_term(&events(&d).await);
    let t1 = clock::now().0;
    assert_others_stayed(&d, "leader crash", &before, &moved, (t0, t1)).await;
}

/// The leader is cut off from everyone (the admin and the client included): it cannot
/// confirm its leadership, so its machine's servers fence themselves at their deadlines; the
/// majority elects a leader and restarts them on its side. Healed, the old leader follows.
#[tokio::test]
async fn consensus_leader_partitioned_from_everyone_loses_its_servers_to_the_majority() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started(figure_7_1()).await else { return };
    client_on(&mut d, "ms1").await;
    client_on(&mut d, "ms2").await;
    let (leader, term) = settled(&d).await;
    let before = placement(&d).await;

    let t0 = clock::now().0;
    d.lab.partition(&leader).await.unwrap();
    new_leader(&d, &leader, term).await;
    let moved = moved_off(&d, &before, &[&leader], t0, "leader partitioned").await;
    let t1 = clock::now().0;
    d.lab.heal().await.unwrap();
    // The old leader comes back as a follower of the new term; the lease table is one.
    let (after, _) = settled(&d).await;
    println!("leader partitioned: after healing, {after} leads");
    assert_others_stayed(&d, "leader partitioned", &before, &moved, (t0, t1)).await;
}

/// A machine that is not the leader is cut off (the seed's minority side): its server fences
/// itself and the majority, keeping its leader, migrates it.
#[tokio::test]
async fn consensus_minority_fences_itself_while_the_majority_keeps_its_leader_and_migrates() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started(figure_7_1()).await else { return };
    client_on(&mut d, "ms1").await;
    client_on(&mut d, "ms2").await;
    let (leader, term) = settled(&d).await;
    let before = placement(&d).await;
    // A machine with a server on it that does not lead.
    let minority = before.values().map(|(m, _)| m.clone()).find(|m| *m != leader).expect("a server off the leader");

    let t0 = clock::now().0;
    d.lab.partition(&minority).await.unwrap();
    let moved = moved_off(&d, &before, &[&minority], t0, "minority partition").await;
    let during = d.leasing().await.unwrap();
    assert_eq!(during.leader.as_deref(), Some(leader.as_str()), "the majority kept its leader: {during:?}");
    assert_eq!(during.term, Some(term), "no election on the majority side: {during:?}");
    let t1 = clock::now().0;
    d.lab.heal().await.unwrap();
    // Pre-vote: the cut-off voter could not win, so it never raised its term, and coming
    // back it disturbs nobody.
    let (after, after_term) = settled(&d).await;
    assert_eq!((after.as_str(), after_term), (leader.as_str(), term), "the healed minority deposed nobody");
    // Its Node Manager's and server's events reach the admin once it is back.
    wait_event(&d, "the minority's server to have fenced itself", |e| {
        e.kind == EventKind::Fenced && e.machine.as_deref() == Some(minority.as_str())
    })
    .await;
    assert_others_stayed(&d, "minority partition", &before, &moved, (t0, t1)).await;
}

/// Four voters split two against two. The seed keeps the half that holds the leader; ferry
/// does not (openraft's quorums are majorities: three of four), which is the documented
/// deviation: neither half can lease, every server fences itself within its lease, and the
/// domain returns in place once the split heals. `ferry validate` warns of it.
#[tokio::test]
async fn consensus_even_split_leaves_no_majority_so_every_server_fences_until_it_heals() {
    let _g = SERIAL.lock().await;
    let m = |s: &str| s.to_string();
    let spec = DomainSpec {
        machines: vec![m("machine-b"), m("machine-c"), m("machine-d"), m("machine-e")],
        cluster_candidates: vec![m("machine-b"), m("machine-c"), m("machine-d"), m("machine-e")],
        servers: vec![
            ServerSpec { name: m("ms1"), home: m("machine-b"), candidates: vec![m("machine-c")] },
            ServerSpec { name: m("ms2"), home: m("machine-d"), candidates: vec![m("machine-e")] },
        ],
        ..figure_7_1()
    };
    let Some(mut d) = started(spec).await else { return };
    let validate = d.run_in(ferry_lab::SWITCH, &["validate", &d.domain_file.display().to_string()]).await.unwrap();
    let warned = String::from_utf8_lossy(&validate.stderr).into_owned();
    assert!(warned.contains("even split"), "ferry validate warns of the even split: {warned}");
    client_on(&mut d, "ms1").await;
    client_on(&mut d, "ms2").await;
    settled(&d).await;
    let before = placement(&d).await;

    let split = clock::now().0;
    d.lab.split(&["machine-b", "machine-c"], &["machine-d", "machine-e"]).await.unwrap();
    let fenced = wait_until(PATIENCE, "both servers to fence themselves", || async {
        let m = machines(&d).await;
        before.iter().all(|(s, (machine, _))| {
            m.iter()
                .filter(|v| v.name == *machine)
                .any(|v| v.servers.iter().any(|e| e.name == *s && e.state == ServerState::Fenced && e.pid.is_none()))
        })
    })
    .await;
    if let Err(e) = fenced {
        panic!("{e}; the Node Managers say {:?}\n{}", machines(&d).await, trail(&events(&d).await));
    }
    for (s, (_, epoch)) in &before {
        let last = d.client_log(s).iter().filter(|l| l.ok && l.epoch == *epoch).map(|l| l.t_ms).max().unwrap();
        println!("even split: {s} last answered {} ms after the split", last as i64 - split as i64);
        assert!(last < split + liveness_bound_ms(), "{s} fenced itself");
    }
    let healed = clock::now().0;
    d.lab.heal().await.unwrap();
    for (s, (_, epoch)) in &before {
        let view = wait_client_new(&d, s, healed, *epoch).await;
        println!("even split: {s} back on {:?} {:?} ms after the heal", view.new_machine, view.outage_ms);
    }
    assert_ending(&d, Ending { what: "even split", clients: &["ms1", "ms2"], ..Ending::default() }).await;
}

/// A voter's machine restarts with its consensus data gone: it comes back under a new
/// identity (never the old one), and nobody's lease notices.
#[tokio::test]
async fn consensus_voter_that_lost_its_data_rejoins_as_somebody_new() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started(figure_7_1()).await else { return };
    client_on(&mut d, "ms1").await;
    client_on(&mut d, "ms2").await;
    settled(&d).await;
    let before = placement(&d).await;
    let first = d.leasing().await.unwrap();
    let old_id = first.voters.iter().find(|v| v.name == "machine-d").and_then(|v| v.id).unwrap();

    let t0 = clock::now().0;
    d.lab.crash("machine-d").await.unwrap();
    std::fs::remove_dir_all(d.dir.join("data").join("nm-machine-d").join("consensus")).unwrap();
    d.lab.revive("machine-d").await.unwrap();
    d.start_nm("machine-d").unwrap();
    // The leader adds the new identity, then takes out the old one of the same name.
    wait_leasing(&d, "machine-d back under a new identity, the old one gone", |l| {
        l.voters.iter().any(|v| v.name == "machine-d" && v.member && v.id.is_some_and(|id| id != old_id))
            && !l.voters.iter().any(|v| v.id == Some(old_id))
    })
    .await;
    let t1 = clock::now().0;
    let moved = moved_off(&d, &before, &[], t0, "voter data loss").await;
    assert!(moved.is_empty());
    let later = d.leasing().await.unwrap();
    assert!(!later.voters.iter().any(|v| v.id == Some(old_id)), "the old identity never counts again: {later:?}");
    assert_ending(
        &d,
        Ending {
            what: "voter data loss",
            clients: &["ms1", "ms2"],
            one_instance: &["ms1", "ms2"],
            kept_answering: &[("ms1", t0, t1), ("ms2", t0, t1)],
            ..Ending::default()
        },
    )
    .await;
}

/// The admin is down when a machine crashes: neither the lease table (the voters) nor the
/// cluster master (a server) needs it, so the server moves all the same.
#[tokio::test]
async fn consensus_admin_down_during_a_machine_crash_still_moves_the_server() {
    let _g = SERIAL.lock().await;
    let Some(mut d) = started(figure_7_1()).await else { return };
    client_on(&mut d, "ms2").await;
    settled(&d).await;
    let before = status_of(&d, "ms2").await;
    let epoch = before.epoch.unwrap().0;

    assert!(!kill_running(&d, ferry_lab::SWITCH, &["admin"]).await.is_empty(), "the admin was running");
    let t0 = clock::now().0;
    d.lab.crash("machine-c").await.unwrap();
    // Without the admin there is no `ferry status`: the client says who answers.
    let view = wait_client_new(&d, "ms2", t0, epoch).await;
    assert_eq!(view.new_machine.as_deref(), Some("machine-d"), "{view:?}");
    println!("consensus, admin down: ms2 answered from machine-d after {:?} ms", view.outage_ms);
    d.start_admin().unwrap();
    let after = d.wait_running("ms2", "machine-d", epoch, PATIENCE).await.unwrap();
    assert!(after.epoch.unwrap().0 > epoch);
    assert_ending(&d, Ending { what: "admin down", clients: &["ms2"], ..Ending::default() }).await;
}

/// Two machines and a witness on the admin's host: the seed's consensus leasing cannot lose
/// either machine (a majority of two is both); with the witness, each machine in turn dies
/// and the survivor keeps its server and takes the other's.
#[tokio::test]
async fn consensus_two_machines_and_a_witness_survive_the_loss_of_either_machine() {
    let _g = SERIAL.lock().await;
    let m = |s: &str| s.to_string();
    let spec = DomainSpec {
        machines: vec![m("machine-b"), m("machine-c")],
        cluster_candidates: vec![m("machine-b"), m("machine-c")],
        servers: vec![
            ServerSpec { name: m("ms1"), home: m("machine-b"), candidates: vec![m("machine-c")] },
            ServerSpec { name: m("ms2"), home: m("machine-c"), candidates: vec![m("machine-b")] },
        ],
        witness: Some(m("witness")),
        ..figure_7_1()
    };
    let Some(mut d) = started(spec).await else { return };
    client_on(&mut d, "ms1").await;
    client_on(&mut d, "ms2").await;
    let (_, term) = settled(&d).await;
    let ev = events(&d).await;
    assert!(ev.iter().any(|e| e.kind == EventKind::WitnessStarted), "the witness said it started:\n{}", trail(&ev));

    // Machine B dies: C and the witness are a majority; ms1 comes to C, ms2 stays.
    let before = placement(&d).await;
    let t0 = clock::now().0;
    d.lab.crash("machine-b").await.unwrap();
    let moved = moved_off(&d, &before, &["machine-b"], t0, "witness, machine-b lost").await;
    assert_eq!(moved, ["ms1"]);
    let l = d.leasing().await.unwrap();
    assert!(l.leader.as_deref().is_some_and(|n| n != "machine-b"), "a leader on the surviving side: {l:?}");

    // B comes back (same data: the same voter) and ms1 fails back to it; then C dies: ms2
    // comes to B. (Failing back first: with both servers on C there would be no server left
    // to be the cluster master.)
    d.lab.revive("machine-b").await.unwrap();
    d.start_nm("machine-b").unwrap();
    d.wait_nm("machine-b", PATIENCE).await.unwrap();
    let (_, term2) = settled(&d).await;
    assert!(term2 >= term);
    let out = match d.cli(&["migrate", "ms1", "--to", "machine-b", "--wait"]).await {
        Ok(out) => out,
        Err(e) => panic!("ferry migrate: {e}\n{}", trail(&events(&d).await)),
    };
    assert!(out.status.success(), "ms1 fails back to machine-b: {}", String::from_utf8_lossy(&out.stderr));
    let (leader, term3) = settled(&d).await;
    let before = placement(&d).await;
    assert_eq!(before["ms1"].0, "machine-b");
    let t1 = clock::now().0;
    d.lab.crash("machine-c").await.unwrap();
    if leader == "machine-c" {
        new_leader(&d, "machine-c", term3).await;
    }
    let moved = moved_off(&d, &before, &["machine-c"], t1, "witness, machine-c lost").await;
    assert_eq!(moved, ["ms2"]);
    assert_eq!(status_of(&d, "ms2").await.machine.map(|m| m.to_string()).as_deref(), Some("machine-b"));
    assert_one_leader_per_term(&events(&d).await);
    assert_ending(&d, Ending { what: "witness", clients: &["ms1", "ms2"], ..Ending::default() }).await;
}
