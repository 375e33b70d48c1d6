//! Table tests of the Node Manager's state machine: each feeds inputs and asserts the exact
//! actions that come out (STYLE habit 2).

use super::*;
use crate::ids::LeaseName;
use crate::lease::{Lease, LeaseState};

const DOMAIN: &str = r#"
name = "t"
[leasing]
data_source = "sqlite://leases.db"

[[machines]]
name = "m1"
node_manager = "127.0.0.1:5001"

[[machines]]
name = "m2"
node_manager = "127.0.0.1:5002"

[[machines]]
name = "m3"
node_manager = "127.0.0.1:5003"

[[clusters]]
name = "c1"
migration_candidates = ["m1", "m2"]

[[servers]]
name = "ms1"
cluster = "c1"
machine = "m1"
floating_ip = "198.18.1.101"
health_check_interval = "100ms"
shutdown_timeout = "1s"

[[servers]]
name = "ms2"
cluster = "c1"
machine = "m2"
"#;

fn domain() -> Domain {
    Domain::parse("t.toml", DOMAIN).expect("valid")
}

fn s(n: &str) -> ServerName {
    ServerName::new(n).unwrap()
}

fn inc(n: &str) -> Incarnation {
    Incarnation(n.into())
}

fn nm() -> NodeManager {
    NodeManager::new(MachineName::new("m1").unwrap(), RestartPolicy::default(), NodeManagerTiming::default())
}

fn lease(owner: &str, machine: &str, incarnation: &str, epoch: u64, remaining_ms: i64) -> Lease {
    Lease {
        name: LeaseName::Server(s(owner)),
        owner: Some(s(owner)),
        machine: Some(MachineName::new(machine).unwrap()),
        incarnation: Some(inc(incarnation)),
        epoch: Epoch(epoch),
        state: LeaseState::Held,
        remaining_ms,
        since_renewal_ms: 0,
    }
}

/// The kinds of the events among `actions`, and the other actions by name.
fn shape(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Reply { result: Ok(ack), .. } => format!("reply ok: {}", ack.message),
            Action::Reply { result: Err(r), .. } => format!("reply {}: {r}", r.status()),
            Action::Event { kind, .. } => format!("event {kind}"),
            Action::SetState { state, .. } => format!("state {state}"),
            Action::ReadLease { .. } => "read lease".into(),
            Action::ReadLeases { .. } => "read leases".into(),
            Action::KillSession { pid, fence, .. } => {
                format!("kill session {pid}{}", if *fence { " (fence)" } else { "" })
            }
            Action::Terminate { pid, .. } => format!("terminate {pid}"),
            Action::KillOrphan { .. } => "kill orphan".into(),
            Action::Plumb { ip, .. } => format!("plumb {ip}"),
            Action::Mount { .. } => "mount".into(),
            Action::Spawn { handover_from, .. } => match handover_from {
                Some(h) => format!("spawn (handover from {h})"),
                None => "spawn".into(),
            },
            Action::Watch { pid, .. } => format!("watch {pid}"),
            Action::Teardown { teardown, .. } => format!("teardown {:?} unmount {}", teardown.ip, teardown.unmount),
            Action::ReleaseLease { epoch, .. } => format!("release epoch {epoch}"),
            Action::PersistMasterEpochs { .. } => "persist master epochs".into(),
        })
        .collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// ms1 started and running as `incarnation` with pid 100.
fn running(nm: &mut NodeManager, d: &Domain) {
    nm.command(Mono(0), d, 1, &s("ms1"), Origin::Admin, Command::Start { in_place: false });
    nm.lease_read(Mono(1), d, &s("ms1"), Ok(None));
    nm.orphan_killed(Mono(2), d, &s("ms1"), None);
    nm.plumbed(Mono(3), d, &s("ms1"), Ok("added".into()));
    nm.spawned(Mono(4), d, &s("ms1"), inc("a"), Ok(100));
    nm.report(Mono(5), d, &s("ms1"), &inc("a"), ServerReport::Acquired { epoch: Epoch(3) });
    nm.report(Mono(5), d, &s("ms1"), &inc("a"), ServerReport::Running);
}

#[test]
fn a_start_reads_the_lease_kills_orphans_plumbs_then_spawns() {
    let d = domain();
    let mut nm = nm();
    let a = nm.command(Mono(0), &d, 1, &s("ms1"), Origin::Admin, Command::Start { in_place: false });
    assert_eq!(shape(&a), strs(&["read lease"]));
    assert_eq!(shape(&nm.lease_read(Mono(1), &d, &s("ms1"), Ok(None))), strs(&["kill orphan"]));
    assert_eq!(shape(&nm.orphan_killed(Mono(2), &d, &s("ms1"), Some(77))), strs(&["event kill", "plumb 198.18.1.101"]));
    assert_eq!(shape(&nm.plumbed(Mono(3), &d, &s("ms1"), Ok("added".into()))), strs(&["event addif", "spawn"]));
    assert_eq!(
        shape(&nm.spawned(Mono(4), &d, &s("ms1"), inc("a"), Ok(100))),
        strs(&["state STARTING", "event server-started", "reply ok: started ms1 on m1"])
    );
    assert_eq!(nm.pid_of(&s("ms1")), Some(100));
    // RUNNING only once its services answer.
    assert_eq!(shape(&nm.report(Mono(5), &d, &s("ms1"), &inc("a"), ServerReport::Running)), strs(&["state RUNNING"]));
    nm.validate().unwrap();
}

#[test]
fn a_start_is_refused_while_another_holds_the_lease_or_the_table_cannot_be_read() {
    let d = domain();
    let mut nm = nm();
    nm.command(Mono(0), &d, 1, &s("ms1"), Origin::Admin, Command::Start { in_place: false });
    let a = nm.lease_read(Mono(1), &d, &s("ms1"), Ok(Some(lease("ms1", "m2", "x", 4, 500))));
    assert_eq!(
        shape(&a),
        strs(&["reply 409: ms1 is running on m2 (epoch 4, lease 500 ms left); not starting a second copy on m1"])
    );
    nm.command(Mono(2), &d, 2, &s("ms1"), Origin::Admin, Command::Start { in_place: false });
    let a = nm.lease_read(Mono(3), &d, &s("ms1"), Err("timed out".into()));
    assert_eq!(
        shape(&a),
        strs(&["reply 503: not starting ms1 on m1: this machine cannot read the lease table: timed out"])
    );
    // An expired lease is no obstacle.
    nm.command(Mono(4), &d, 3, &s("ms1"), Origin::Admin, Command::Start { in_place: false });
    assert_eq!(
        shape(&nm.lease_read(Mono(5), &d, &s("ms1"), Ok(Some(lease("ms1", "m2", "x", 4, -1))))),
        strs(&["kill orphan"])
    );
}

#[test]
fn an_address_still_in_use_is_a_refusal_worth_another_try_not_a_failure() {
    let d = domain();
    let mut nm = nm();
    nm.command(Mono(0), &d, 1, &s("ms1"), Origin::Admin, Command::Start { in_place: false });
    nm.lease_read(Mono(1), &d, &s("ms1"), Ok(None));
    nm.orphan_killed(Mono(2), &d, &s("ms1"), None);
    let a = nm.plumbed(Mono(3), &d, &s("ms1"), Err(("another host answers".into(), true)));
    assert_eq!(
        shape(&a),
        strs(&[
            "event address-in-use",
            "reply 409: not starting ms1 on m1: another host still answers for its floating IP 198.18.1.101: another host answers"
        ])
    );
    match &a[1] {
        Action::Reply { result: Err(r), .. } => assert_eq!(r.reason(), Some("address-in-use")),
        other => panic!("{other:?}"),
    }
    // Any other failure to plumb is one: FAILED.
    nm.command(Mono(4), &d, 2, &s("ms1"), Origin::Admin, Command::Start { in_place: false });
    nm.lease_read(Mono(5), &d, &s("ms1"), Ok(None));
    nm.orphan_killed(Mono(6), &d, &s("ms1"), None);
    let a = nm.plumbed(Mono(7), &d, &s("ms1"), Err(("no eth9".into(), false)));
    assert_eq!(
        shape(&a),
        strs(&[
            "state FAILED",
            "event start-failed",
            "reply 502: not starting ms1: adding floating IP 198.18.1.101 failed: no eth9"
        ])
    );
}

#[test]
fn a_stop_answers_only_after_the_address_is_gone() {
    let d = domain();
    let mut nm = nm();
    running(&mut nm, &d);
    let a = nm.command(Mono(10), &d, 2, &s("ms1"), Origin::Admin, Command::Stop { force: false, timeout_ms: None });
    assert_eq!(shape(&a), strs(&["event stop", "terminate 100", "state STOPPING"]));
    // A second command waits its turn.
    assert!(nm.command(Mono(11), &d, 3, &s("ms1"), Origin::Admin, Command::Start { in_place: false }).is_empty());
    let a = nm.exited(Mono(20), &d, &s("ms1"), &inc("a"), Some(0), "exit code 0".into());
    assert_eq!(
        shape(&a),
        strs(&["kill session 100", "event server-exited", "teardown Some(198.18.1.101) unmount false"])
    );
    let a = nm.torn_down(Mono(30), &d, &s("ms1"), Some(Ok("removed".into())), None);
    assert_eq!(
        shape(&a),
        strs(&["event removeif", "state SHUTDOWN", "reply ok: stopped ms1 on m1", "read lease"]),
        "the stop is answered after the removal, then the waiting start begins"
    );
}

#[test]
fn a_stop_that_runs_out_of_time_kills_and_releases_the_lease() {
    let d = domain();
    let mut nm = nm();
    running(&mut nm, &d);
    nm.command(Mono(10), &d, 2, &s("ms1"), Origin::Admin, Command::Stop { force: false, timeout_ms: None });
    assert_eq!(nm.next_wakeup(), Some(Mono(1_010)), "shutdown_timeout 1 s");
    assert!(nm.tick(Mono(1_009), &d).is_empty());
    assert_eq!(shape(&nm.tick(Mono(1_010), &d)), strs(&["event stop-timeout", "event kill", "kill session 100"]));
    nm.exited(Mono(1_020), &d, &s("ms1"), &inc("a"), None, "killed by signal 9".into());
    let a = nm.torn_down(Mono(1_030), &d, &s("ms1"), Some(Ok("removed".into())), None);
    assert_eq!(shape(&a), strs(&["event removeif", "release epoch 3"]));
    let a = nm.released(Mono(1_040), &d, &s("ms1"), Ok(()));
    assert_eq!(shape(&a), strs(&["event lease-released", "state SHUTDOWN", "reply ok: stopped ms1 on m1"]));
}

#[test]
fn a_fence_is_announced_once_the_address_is_gone() {
    let d = domain();
    let mut nm = nm();
    running(&mut nm, &d);
    nm.report(Mono(5), &d, &s("ms1"), &inc("a"), ServerReport::Deadline { at: Mono(500) });
    assert_eq!(nm.next_wakeup(), Some(Mono(500)));
    let a = nm.tick(Mono(505), &d);
    assert_eq!(shape(&a), strs(&["kill session 100 (fence)"]));
    nm.fence_killed(&s("ms1"), 2);
    let a = nm.exited(Mono(510), &d, &s("ms1"), &inc("a"), None, "killed by signal 9".into());
    assert_eq!(
        shape(&a),
        strs(&["kill session 100", "event server-exited", "teardown Some(198.18.1.101) unmount false"])
    );
    let a = nm.torn_down(Mono(520), &d, &s("ms1"), Some(Ok("removed".into())), None);
    assert_eq!(shape(&a), strs(&["event removeif", "state FENCED", "event fenced"]));
    match &a[2] {
        Action::Event { message, epoch, .. } => {
            assert_eq!(
                message,
                "ms1 (pid 100) missed its lease deadline by 5 ms; the Node Manager killed its 2 processes"
            );
            assert_eq!(*epoch, Some(Epoch(3)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_crash_restarts_at_once_by_handover_without_reading_the_lease() {
    let d = domain();
    let mut nm = nm();
    running(&mut nm, &d);
    let a = nm.exited(Mono(10), &d, &s("ms1"), &inc("a"), Some(1), "exit code 1".into());
    assert_eq!(shape(&a), strs(&["kill session 100", "event server-exited", "state RESTARTING"]));
    let a = nm.tick(Mono(10), &d);
    assert_eq!(shape(&a), strs(&["event restart-in-place", "spawn (handover from a)"]), "the address stays plumbed");
    let a = nm.spawned(Mono(11), &d, &s("ms1"), inc("b"), Ok(101));
    assert_eq!(shape(&a), strs(&["state STARTING", "event server-started"]), "nobody to answer");
    assert_eq!(nm.servers()[0].restarts, 1);
}

#[test]
fn a_restart_in_place_kills_what_is_left_and_hands_over() {
    let d = domain();
    let mut nm = nm();
    running(&mut nm, &d);
    let origin = Origin::Master { cluster: ClusterName::new("c1").unwrap(), epoch: Epoch(5), server: s("ms2") };
    let a = nm.command(Mono(10), &d, 2, &s("ms1"), origin, Command::Start { in_place: true });
    assert_eq!(shape(&a), strs(&["persist master epochs", "event kill", "kill session 100"]));
    let a = nm.exited(Mono(20), &d, &s("ms1"), &inc("a"), None, "killed by signal 9".into());
    assert_eq!(shape(&a), strs(&["kill session 100", "event server-exited", "spawn (handover from a)"]));
    // A deposed master's command is refused and recorded.
    let stale = Origin::Master { cluster: ClusterName::new("c1").unwrap(), epoch: Epoch(4), server: s("ms2") };
    let a = nm.command(Mono(30), &d, 3, &s("ms1"), stale, Command::Start { in_place: true });
    assert_eq!(
        shape(&a),
        strs(&[
            "event stale-master-refused",
            "reply 409: stale cluster master: command carries master epoch 4 but epoch 5 has been seen for cluster c1"
        ])
    );
}

#[test]
fn a_server_that_fenced_itself_is_left_to_a_live_master_or_restarted_after_an_outage() {
    let d = domain();
    let c1 = ClusterName::new("c1").unwrap();
    let mut master = lease("ms2", "m2", "m", 7, 900);
    master.name = LeaseName::Master(c1.clone());
    master.since_renewal_ms = 20;
    let row = lease("ms1", "m1", "a", 3, -10);
    // A live master reading the table: it restarts ms1, not this Node Manager.
    let mut nm = nm();
    running(&mut nm, &d);
    let a = nm.exited(Mono(10), &d, &s("ms1"), &inc("a"), Some(75), "exit code 75".into());
    assert_eq!(
        shape(&a),
        strs(&["kill session 100", "event server-exited", "teardown Some(198.18.1.101) unmount false"])
    );
    nm.torn_down(Mono(12), &d, &s("ms1"), Some(Ok("removed".into())), None);
    assert_eq!(nm.next_wakeup(), Some(Mono(110)), "one interval after the fence");
    assert_eq!(shape(&nm.tick(Mono(110), &d)), strs(&["read leases"]));
    let a = nm.leases_read(Mono(111), &d, &s("ms1"), Ok((Some(row.clone()), Some(master.clone()))));
    assert_eq!(shape(&a), strs(&["event not-restarting"]));
    assert_eq!(nm.next_wakeup(), None);

    // The table was down: every server fenced; restart once it answers, master or not.
    let mut nm2 = nm_restarting(&d);
    assert_eq!(shape(&nm2.tick(Mono(110), &d)), strs(&["read leases"]));
    let a = nm2.leases_read(Mono(111), &d, &s("ms1"), Err("connection refused".into()));
    assert_eq!(shape(&a), strs(&["event waiting-for-lease-table"]));
    assert_eq!(nm2.next_wakeup(), Some(Mono(211)), "asks again every interval");
    nm2.tick(Mono(211), &d);
    let a = nm2.leases_read(Mono(212), &d, &s("ms1"), Ok((Some(row), Some(master))));
    assert_eq!(shape(&a), strs(&["event restart-after-fence", "plumb 198.18.1.101"]), "the fence took the address off");
    let a = nm2.plumbed(Mono(213), &d, &s("ms1"), Ok("added".into()));
    assert_eq!(shape(&a), strs(&["event addif", "spawn (handover from a)"]));
}

/// A Node Manager whose ms1 (incarnation `a`) fenced itself at 10 and whose address is off.
fn nm_restarting(d: &Domain) -> NodeManager {
    let mut nm = nm();
    running(&mut nm, d);
    nm.exited(Mono(10), d, &s("ms1"), &inc("a"), Some(75), "exit code 75".into());
    nm.torn_down(Mono(12), d, &s("ms1"), Some(Ok("removed".into())), None);
    nm
}

#[test]
fn an_operators_command_cancels_a_pending_restart() {
    let d = domain();
    let mut nm = nm_restarting(&d);
    let a = nm.command(Mono(50), &d, 9, &s("ms1"), Origin::Admin, Command::Stop { force: false, timeout_ms: None });
    assert_eq!(shape(&a), strs(&["reply ok: ms1 is not running on m1"]));
    assert_eq!(nm.next_wakeup(), None, "the stop cancelled the restart after the fence");
}

#[test]
fn hello_adopts_a_server_of_an_earlier_node_manager_once() {
    let d = domain();
    let mut nm = nm();
    let hello = |incarnation: &str, leader: bool| Hello {
        server: s("ms1"),
        incarnation: inc(incarnation),
        pid: 200,
        epoch: Some(Epoch(4)),
        master: true,
        is_server_leader: leader,
        mounted: false,
    };
    assert_eq!(nm.hello(Mono(0), &d, hello("x", false)), (false, vec![]), "not a ferry server session leader");
    let (ok, a) = nm.hello(Mono(0), &d, hello("x", true));
    assert!(ok);
    assert_eq!(shape(&a), strs(&["state RUNNING", "event adopted", "watch 200"]));
    assert_eq!(nm.hello(Mono(1), &d, hello("x", true)), (true, vec![]), "known");
    assert_eq!(nm.hello(Mono(1), &d, hello("y", true)), (false, vec![]), "another incarnation while x runs");
    // Its exit comes from the watch, with the status it announced.
    nm.report(Mono(5), &d, &s("ms1"), &inc("x"), ServerReport::Exiting { code: 0 });
    let a = nm.exited(Mono(5), &d, &s("ms1"), &inc("x"), None, "ended (adopted)".into());
    assert_eq!(
        shape(&a),
        strs(&["kill session 200", "event server-exited", "teardown Some(198.18.1.101) unmount false"])
    );
}

#[test]
fn leftovers_of_an_earlier_node_manager_are_removed_in_their_own_turn() {
    let d = domain();
    let mut nm = nm();
    let a = nm.leftovers(Mono(0), &d, vec![(s("ms1"), true, false)]);
    assert_eq!(shape(&a), strs(&["event leftover", "teardown Some(198.18.1.101) unmount false"]));
    // A start waits for the removal.
    assert!(nm.command(Mono(1), &d, 1, &s("ms1"), Origin::Admin, Command::Start { in_place: false }).is_empty());
    let a = nm.torn_down(Mono(2), &d, &s("ms1"), Some(Ok("removed".into())), None);
    assert_eq!(shape(&a), strs(&["event removeif", "state SHUTDOWN", "read lease"]));
}

#[test]
fn commands_for_a_server_that_may_not_run_here_are_refused_at_once() {
    let d = domain();
    let mut nm =
        NodeManager::new(MachineName::new("m3").unwrap(), RestartPolicy::default(), NodeManagerTiming::default());
    let a = nm.command(Mono(0), &d, 1, &s("ms1"), Origin::Admin, Command::Start { in_place: false });
    assert_eq!(
        shape(&a),
        strs(&["reply 409: server ms1 may not run on m3: it is neither its home machine (m1) nor one of its candidate machines"])
    );
    let a = nm.command(Mono(0), &d, 2, &s("nosuch"), Origin::Admin, Command::Start { in_place: false });
    assert_eq!(shape(&a), strs(&["reply 404: unknown server nosuch: it is not defined in domain t"]));
}

const BUSY: &str = r#"
name = "t"
[leasing]
data_source = "sqlite://leases.db"

[[machines]]
name = "m1"
node_manager = "127.0.0.1:5001"
max_concurrent_starts = 2

[[clusters]]
name = "c1"
migration_candidates = ["m1"]

[[servers]]
name = "a1"
cluster = "c1"
machine = "m1"
health_check_interval = "100ms"

[[servers]]
name = "a2"
cluster = "c1"
machine = "m1"
health_check_interval = "100ms"

[[servers]]
name = "a3"
cluster = "c1"
machine = "m1"
health_check_interval = "100ms"
"#;

/// `server` through its lease check and orphan check to its spawn as `incarnation`.
fn spawn_through(nm: &mut NodeManager, d: &Domain, at: u64, server: &str, incarnation: &str) -> Vec<Action> {
    nm.lease_read(Mono(at), d, &s(server), Ok(None));
    nm.orphan_killed(Mono(at), d, &s(server), None);
    nm.spawned(Mono(at), d, &s(server), inc(incarnation), Ok(at as i32))
}

#[test]
fn starts_beyond_the_machines_turns_are_answered_at_once_and_wait() {
    let d = Domain::parse("t.toml", BUSY).expect("valid");
    let mut nm = nm();
    let start = Command::Start { in_place: false };
    assert_eq!(shape(&nm.command(Mono(0), &d, 1, &s("a1"), Origin::Admin, start.clone())), strs(&["read lease"]));
    assert_eq!(shape(&nm.command(Mono(0), &d, 2, &s("a2"), Origin::Admin, start.clone())), strs(&["read lease"]));
    // Both turns are taken: a3 is accepted now and waits, with nothing done for it yet.
    let a = nm.command(Mono(1), &d, 3, &s("a3"), Origin::Admin, start.clone());
    assert_eq!(
        shape(&a),
        strs(&[
            "reply ok: a3 waits for its turn to start on m1: 2 start(s) running, 0 waiting ahead of it (max_concurrent_starts = 2)",
            "event start-queued"
        ])
    );
    // Asked again while it waits: answered at once too.
    let a = nm.command(Mono(2), &d, 4, &s("a3"), Origin::Admin, start.clone());
    assert_eq!(shape(&a), strs(&["reply ok: a3 is already waiting for its turn to start on m1 (0 ahead of it)"]));
    nm.validate().unwrap();
    // a1 spawned is not a1 started: the turn is held until its server reports RUNNING.
    let a = spawn_through(&mut nm, &d, 10, "a1", "x1");
    assert_eq!(shape(&a), strs(&["state STARTING", "event server-started", "reply ok: started a1 on m1"]));
    assert!(nm.report(Mono(20), &d, &s("a1"), &inc("x1"), ServerReport::Acquired { epoch: Epoch(1) }).is_empty());
    let a = nm.report(Mono(30), &d, &s("a1"), &inc("x1"), ServerReport::Running);
    assert_eq!(shape(&a), strs(&["state RUNNING", "read lease"]), "a1 RUNNING gives its turn to a3");
    // a3's command was answered when it was queued: its spawn answers nobody again.
    let a = spawn_through(&mut nm, &d, 40, "a3", "x3");
    assert_eq!(shape(&a), strs(&["state STARTING", "event server-started"]));
    nm.validate().unwrap();
}

#[test]
fn a_turn_comes_back_when_its_start_fails_exits_or_runs_out_of_budget() {
    let d = Domain::parse("t.toml", BUSY).expect("valid");
    let mut nm = nm();
    let start = Command::Start { in_place: false };
    for (id, server) in [(1, "a1"), (2, "a2"), (3, "a3")] {
        nm.command(Mono(0), &d, id, &s(server), Origin::Admin, start.clone());
    }
    // a1's start is refused (the table cannot be read): a3 gets its turn.
    let a = nm.lease_read(Mono(5), &d, &s("a1"), Err("no table".into()));
    assert_eq!(shape(&a)[1..], strs(&["read lease"]));
    // a2 spawns and dies before RUNNING: its turn is free again (nobody waits).
    spawn_through(&mut nm, &d, 10, "a2", "x2");
    nm.exited(Mono(20), &d, &s("a2"), &inc("x2"), Some(1), "exit code 1".into());
    assert!(!nm.admitted.contains_key(&s("a2")));
    // a3 spawns and never reports RUNNING: its turn, taken when a1's came back, runs out
    // after its budget.
    spawn_through(&mut nm, &d, 30, "a3", "x3");
    let until = nm.admitted[&s("a3")];
    assert_eq!(until, Mono(5 + start_budget_ms(&d, &s("a3"))));
    // (a2's crash restart is due first.)
    assert!(nm.next_wakeup().is_some_and(|at| at <= until));
    nm.tick(Mono(until.0 - 1), &d);
    assert!(nm.admitted.contains_key(&s("a3")));
    nm.tick(until, &d);
    assert!(!nm.admitted.contains_key(&s("a3")));
    nm.validate().unwrap();
}

#[test]
fn a_stop_drops_a_start_still_waiting_and_a_crash_restart_goes_first() {
    let four = format!("{BUSY}\n[[servers]]\nname = \"a4\"\ncluster = \"c1\"\nmachine = \"m1\"\n");
    let d = Domain::parse("t.toml", &four).expect("valid");
    let mut nm = nm();
    let start = Command::Start { in_place: false };
    nm.command(Mono(0), &d, 1, &s("a1"), Origin::Admin, start.clone());
    spawn_through(&mut nm, &d, 1, "a1", "x1");
    nm.report(Mono(2), &d, &s("a1"), &inc("x1"), ServerReport::Running);
    for (id, server) in [(2, "a2"), (3, "a3"), (4, "a4")] {
        nm.command(Mono(3), &d, id, &s(server), Origin::Admin, start.clone());
    }
    assert_eq!(nm.waiting, [s("a4")]);
    // a1 crashes: its restart waits for a turn too, ahead of a4.
    nm.exited(Mono(5), &d, &s("a1"), &inc("x1"), None, "killed by signal 9".into());
    let due = nm.next_wakeup().expect("a restart is due");
    let a = nm.tick(due, &d);
    assert!(shape(&a).contains(&"event start-queued".to_string()), "{a:?}");
    assert_eq!(nm.waiting, [s("a1"), s("a4")]);
    // A stop drops a4's waiting start.
    let a = nm.command(due, &d, 5, &s("a4"), Origin::Admin, Command::Stop { force: false, timeout_ms: None });
    assert_eq!(shape(&a)[0], "event start-failed");
    assert_eq!(nm.waiting, [s("a1")]);
    nm.validate().unwrap();
    // a2 RUNNING: the turn goes to a1's restart, which hands its lease over (no lease read).
    spawn_through(&mut nm, &d, due.0 + 1, "a2", "x2");
    let a = nm.report(Mono(due.0 + 2), &d, &s("a2"), &inc("x2"), ServerReport::Running);
    assert_eq!(shape(&a), strs(&["state RUNNING", "spawn (handover from x1)"]));
    nm.validate().unwrap();
}

use super::admission::start_budget_ms;
