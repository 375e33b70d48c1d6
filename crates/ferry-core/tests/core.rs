//! Table tests of the pure core: the cluster-master planner (Figure 7-2, target selection,
//! rule 9) and the domain file's validation (every message names the field and its line).

use std::time::Duration;

use ferry_core::domain::Domain;
use ferry_core::lease::{Lease, LeaseState};
use ferry_core::master::{CommandResult, MasterAction, Planner};
use ferry_core::{ClusterName, Epoch, Incarnation, LeaseName, MachineName, Mono, ServerName};

const DOMAIN: &str = r#"
name = "t"
[leasing]
data_source = "sqlite://leases.db"

[[machines]]
name = "b"
node_manager = "127.0.0.1:5001"
[[machines]]
name = "c"
node_manager = "127.0.0.1:5002"
[[machines]]
name = "d"
node_manager = "127.0.0.1:5003"
[[machines]]
name = "e"
node_manager = "127.0.0.1:5004"

[[clusters]]
name = "c1"
migration_candidates = ["b", "c", "e"]
fencing_grace_period = "1s"
additional_auto_migration_attempts = 1
migration_retry_delay = "10s"

[[servers]]
name = "ms1"
cluster = "c1"
machine = "b"
candidate_machines = ["d"]
health_check_interval = "100ms"

[[servers]]
name = "ms2"
cluster = "c1"
machine = "c"
auto_migration = false
"#;

fn domain() -> Domain {
    Domain::parse("t.toml", DOMAIN).expect("valid")
}

fn s(n: &str) -> ServerName {
    ServerName::new(n).unwrap()
}
fn m(n: &str) -> MachineName {
    MachineName::new(n).unwrap()
}

fn lease(server: &str, machine: &str, epoch: u64, remaining_ms: i64) -> Lease {
    Lease {
        name: LeaseName::Server(s(server)),
        owner: Some(s(server)),
        machine: Some(m(machine)),
        incarnation: Some(Incarnation(format!("inc{epoch}"))),
        epoch: Epoch(epoch),
        state: LeaseState::Held,
        remaining_ms,
        since_renewal_ms: 300 - remaining_ms,
    }
}

fn starts(actions: &[MasterAction]) -> Vec<(String, String, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            MasterAction::Start { server, machine, in_place, .. } => {
                Some((server.to_string(), machine.to_string(), *in_place))
            }
            _ => None,
        })
        .collect()
}

fn kinds(actions: &[MasterAction]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            MasterAction::Event { kind, .. } => Some(kind.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn candidates_are_the_servers_then_the_clusters() {
    let d = domain();
    let ms1 = d.server(&s("ms1")).unwrap();
    assert_eq!(d.candidates_for(ms1), vec![m("d"), m("b"), m("c"), m("e")]);
}

#[test]
fn live_leases_need_nothing() {
    let d = domain();
    let mut p = Planner::new(ClusterName::new("c1").unwrap());
    assert!(p.on_scan(Mono(0), &[lease("ms1", "b", 1, 200)], &d).is_empty());
    assert!(p.in_progress().is_empty());
}

#[test]
fn expired_lease_waits_grace_then_restarts_in_place_then_migrates_in_order() {
    let d = domain();
    let mut p = Planner::new(ClusterName::new("c1").unwrap());
    let expired = [lease("ms1", "b", 3, -5)];
    let a = p.on_scan(Mono(1_000), &expired, &d);
    assert_eq!(kinds(&a), vec!["lease-expired"]);
    assert!(starts(&a).is_empty(), "nothing before the grace period ends");
    assert_eq!(p.next_wakeup(), Some(Mono(2_000)));
    assert!(starts(&p.on_scan(Mono(1_999), &expired, &d)).is_empty());
    // Grace over, still expired: restart where it failed first (Figure 7-2 step 3).
    let a = p.on_scan(Mono(2_000), &expired, &d);
    assert_eq!(starts(&a), vec![("ms1".into(), "b".into(), true)]);
    // Machine b is unreachable: its own candidate d next (step 4), never b again.
    let a = p.on_command_result(Mono(2_010), &s("ms1"), &m("b"), CommandResult::Unreachable("refused".into()), &d);
    assert_eq!(starts(&a), vec![("ms1".into(), "d".into(), false)]);
    // d refuses (a hook failed): then the cluster's list, skipping b which already failed.
    let a = p.on_command_result(Mono(2_020), &s("ms1"), &m("d"), CommandResult::Refused("hook failed".into()), &d);
    assert_eq!(starts(&a), vec![("ms1".into(), "c".into(), false)]);
    // c accepts; the server takes its lease with a new epoch: done.
    assert!(p.on_command_result(Mono(2_030), &s("ms1"), &m("c"), CommandResult::Accepted, &d).is_empty());
    let a = p.on_scan(Mono(2_100), &[lease("ms1", "c", 4, 300)], &d);
    assert_eq!(kinds(&a), vec!["server-recovered"]);
    assert!(p.in_progress().is_empty());
}

/// Issue 11: a dead machine's servers whose only candidates are the cluster's spread over
/// the machines the master is starting the fewest servers on, instead of all landing on
/// the first; a server's own candidates keep their order.
#[test]
fn a_dead_machines_servers_spread_over_the_cluster_candidates() {
    let mut text = String::from(
        "name = \"t\"\n[leasing]\ndata_source = \"sqlite://leases.db\"\n[[clusters]]\nname = \"c1\"\nmigration_candidates = [\"n1\", \"n2\", \"n3\", \"n4\"]\nfencing_grace_period = \"0s\"\n",
    );
    for i in 1..=4 {
        text += &format!("[[machines]]\nname = \"n{i}\"\nnode_manager = \"127.0.0.1:500{i}\"\n");
    }
    for i in 1..=7 {
        text += &format!("[[servers]]\nname = \"s{i}\"\ncluster = \"c1\"\nmachine = \"n2\"\n");
    }
    text += "[[servers]]\nname = \"pinned\"\ncluster = \"c1\"\nmachine = \"n2\"\ncandidate_machines = [\"n1\"]\n";
    let d = Domain::parse("t.toml", &text).expect("valid");
    let mut p = Planner::new(ClusterName::new("c1").unwrap());
    let mut names: Vec<String> = (1..=7).map(|i| format!("s{i}")).collect();
    names.push("pinned".into());
    let expired: Vec<Lease> = names.iter().map(|n| lease(n, "n2", 1, -5)).collect();
    let a = p.on_scan(Mono(1_000), &expired, &d);
    assert_eq!(starts(&a).len(), 8, "every server is first restarted where it failed");
    let mut targets = Vec::new();
    for n in &names {
        let a = p.on_command_result(Mono(1_010), &s(n), &m("n2"), CommandResult::Unreachable("down".into()), &d);
        let st = starts(&a);
        assert_eq!(st.len(), 1, "{n}: {a:?}");
        targets.push((n.clone(), st[0].1.clone()));
    }
    assert_eq!(
        targets.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        vec!["n1", "n3", "n4", "n1", "n3", "n4", "n1", "n1"],
        "round the least loaded, the pinned server to its own candidate"
    );
}

#[test]
fn a_machine_refusing_for_an_address_still_in_use_is_asked_again_then_skipped() {
    let d = domain();
    let mut p = Planner::new(ClusterName::new("c1").unwrap());
    let expired = [lease("ms1", "b", 3, -5)];
    p.on_scan(Mono(1_000), &expired, &d);
    let a = p.on_scan(Mono(2_000), &expired, &d);
    assert_eq!(starts(&a), vec![("ms1".into(), "b".into(), true)]);
    let a = p.on_command_result(Mono(2_001), &s("ms1"), &m("b"), CommandResult::Unreachable("down".into()), &d);
    assert_eq!(starts(&a), vec![("ms1".into(), "d".into(), false)]);
    // d still sees the address answering (b's removeif is running): ask d again one
    // interval (100 ms) later, three times (the lease's periods), then move on to c.
    let in_use = || CommandResult::AddressInUse("another host answers for 198.18.1.101".into());
    let mut now = 2_010;
    for k in 1..=3 {
        let a = p.on_command_result(Mono(now), &s("ms1"), &m("d"), in_use(), &d);
        assert_eq!(kinds(&a), vec!["address-in-use"], "refusal {k}");
        assert!(starts(&a).is_empty(), "nothing at once");
        assert_eq!(p.next_wakeup(), Some(Mono(now + 100)));
        assert!(starts(&p.on_scan(Mono(now + 99), &expired, &d)).is_empty());
        let a = p.on_scan(Mono(now + 100), &expired, &d);
        assert_eq!(starts(&a), vec![("ms1".into(), "d".into(), false)], "d again after refusal {k}");
        now += 110;
    }
    let a = p.on_command_result(Mono(now), &s("ms1"), &m("d"), in_use(), &d);
    assert_eq!(kinds(&a), vec!["machine-failed", "migrate"]);
    assert_eq!(starts(&a), vec![("ms1".into(), "c".into(), false)]);
    // The count starts over for c.
    let a = p.on_command_result(Mono(now + 1), &s("ms1"), &m("c"), in_use(), &d);
    assert_eq!(kinds(&a), vec!["address-in-use"]);
    assert_eq!(p.in_progress(), vec![(s("ms1"), "address-wait")]);
}

#[test]
fn a_start_that_never_takes_the_lease_moves_on() {
    let d = domain();
    let mut p = Planner::new(ClusterName::new("c1").unwrap());
    let expired = [lease("ms1", "b", 3, -5)];
    p.on_scan(Mono(0), &expired, &d);
    p.on_scan(Mono(1_000), &expired, &d);
    p.on_command_result(Mono(1_000), &s("ms1"), &m("b"), CommandResult::Accepted, &d);
    // Start timeout: max(2 x the cluster's longest ttl (ms2: 30 s), 3 s) = 60 s.
    assert!(starts(&p.on_scan(Mono(60_999), &expired, &d)).is_empty());
    let a = p.on_scan(Mono(61_000), &expired, &d);
    assert_eq!(kinds(&a), vec!["start-timeout", "migrate"]);
    assert_eq!(starts(&a), vec![("ms1".into(), "d".into(), false)]);
}

#[test]
fn every_candidate_failing_backs_off_then_gives_up() {
    let d = domain();
    let mut p = Planner::new(ClusterName::new("c1").unwrap());
    let expired = [lease("ms1", "b", 3, -5)];
    p.on_scan(Mono(0), &expired, &d);
    let mut now = 1_000;
    let mut a = p.on_scan(Mono(now), &expired, &d);
    let mut tried = Vec::new();
    for circuit in 0..2 {
        while let Some((_, machine, _)) = starts(&a).first().cloned() {
            tried.push(machine.clone());
            now += 1;
            a = p.on_command_result(Mono(now), &s("ms1"), &m(&machine), CommandResult::Unreachable("down".into()), &d);
        }
        if circuit == 0 {
            assert_eq!(kinds(&a).last(), Some(&"backoff"));
            now += 10_000;
            a = p.on_scan(Mono(now), &expired, &d);
        }
    }
    assert_eq!(kinds(&a).last(), Some(&"gave-up"));
    assert_eq!(tried, vec!["b", "d", "c", "e", "b", "d", "c", "e"]);
    assert!(starts(&p.on_scan(Mono(now + 100_000), &expired, &d)).is_empty(), "gave up for good");
    // An operator starts it by hand: the new lease ends the episode.
    p.on_scan(Mono(now + 100_001), &[lease("ms1", "b", 4, 300)], &d);
    assert!(p.in_progress().is_empty());
}

#[test]
fn without_auto_migration_only_restart_in_place() {
    let d = domain();
    let mut p = Planner::new(ClusterName::new("c1").unwrap());
    let expired = [lease("ms2", "c", 1, -1)];
    p.on_scan(Mono(0), &expired, &d);
    let a = p.on_scan(Mono(1_000), &expired, &d);
    assert_eq!(starts(&a), vec![("ms2".into(), "c".into(), true)]);
    let a = p.on_command_result(Mono(1_001), &s("ms2"), &m("c"), CommandResult::Unreachable("down".into()), &d);
    assert!(starts(&a).is_empty());
    assert_eq!(kinds(&a).last(), Some(&"backoff"));
}

#[test]
fn zero_grace_acts_in_the_same_scan_and_power_fences_once() {
    let text = DOMAIN
        .replace("fencing_grace_period = \"1s\"", "fencing_grace_period = \"0s\"\nfence_command = [\"/bin/true\"]");
    let d = Domain::parse("t.toml", &text).unwrap();
    let mut p = Planner::new(ClusterName::new("c1").unwrap());
    let a = p.on_scan(Mono(0), &[lease("ms1", "b", 3, -5)], &d);
    assert_eq!(starts(&a), vec![("ms1".into(), "b".into(), true)]);
    let a = p.on_command_result(Mono(1), &s("ms1"), &m("b"), CommandResult::Unreachable("down".into()), &d);
    match &a[..] {
        [MasterAction::Event { .. }, MasterAction::Event { .. }, MasterAction::Start { machine, power_fence, .. }] => {
            assert_eq!(machine, &m("d"));
            assert_eq!(power_fence, &Some(m("b")), "the failed machine is power-fenced before a move");
        }
        other => panic!("{other:?}"),
    }
    let a = p.on_command_result(Mono(2), &s("ms1"), &m("d"), CommandResult::Refused("x".into()), &d);
    assert!(a.iter().all(|x| !matches!(x, MasterAction::Start { power_fence: Some(_), .. })), "only once");
}

#[test]
fn released_and_foreign_leases_are_ignored() {
    let d = domain();
    let mut p = Planner::new(ClusterName::new("c1").unwrap());
    let mut released = lease("ms1", "b", 3, -5);
    released.state = LeaseState::Released;
    let mut foreign = lease("other", "b", 1, -5);
    foreign.name = LeaseName::Server(s("other"));
    assert!(p.on_scan(Mono(0), &[released, foreign], &d).is_empty());
}

#[test]
fn defaults_are_the_seeds() {
    let text = r#"
name = "t"
[leasing]
data_source = "sqlite://x"
[[machines]]
name = "b"
node_manager = "127.0.0.1:5001"
[[clusters]]
name = "c1"
migration_candidates = ["b"]
[[servers]]
name = "ms1"
cluster = "c1"
machine = "b"
"#;
    let d = Domain::parse("t.toml", text).unwrap();
    let s = &d.servers[0];
    assert_eq!(s.health_check_interval, Duration::from_secs(10));
    assert_eq!(s.health_check_periods_until_fencing, 3);
    assert_eq!(s.lease_ttl(), Duration::from_secs(30));
    assert_eq!(d.clusters[0].fencing_grace_period, Duration::from_secs(30));
    assert_eq!(d.clusters[0].additional_auto_migration_attempts, 3);
    assert_eq!(d.clusters[0].migration_retry_delay, Duration::from_secs(180));
    assert!(s.auto_migration);
    assert_eq!(d.admin.listen.to_string(), "127.0.0.1:7001");
}

#[test]
fn migratable_server_needs_a_candidate() {
    let text = DOMAIN
        .replace("migration_candidates = [\"b\", \"c\", \"e\"]", "migration_candidates = []")
        .replace("candidate_machines = [\"d\"]\n", "");
    let err = Domain::parse("t.toml", &text).unwrap_err().to_string();
    assert!(
        err.contains("servers[0].candidate_machines: a migratable server needs at least one candidate machine"),
        "{err}"
    );
    // ms2 has auto_migration = false: no candidate needed.
    assert_eq!(err.lines().count(), 1, "{err}");
}

// The domain file's error table, in a file of its own but in this one test binary.
#[path = "core/domain_errors.rs"]
mod domain_errors;

// ---- hostile domain files (the fuzz target of the parser, as a property test) ----

mod parser_fuzz {
    use ferry_core::domain::Domain;
    use proptest::prelude::*;

    /// A valid domain: the mutations below start from it, so most cases get past the TOML
    /// parser into validation, where the interesting code is.
    const SEED: &str = include_str!("../../../examples/domain.toml");

    /// Every parse ends in a domain or in errors whose lines exist in the text; none panics.
    fn check(text: &str) {
        match Domain::parse("fuzz.toml", text) {
            Ok(d) => {
                // Whatever parses also re-validates and round-trips through TOML.
                let again = toml::to_string(&d).expect("a parsed domain serializes");
                Domain::parse("again.toml", &again).expect("a parsed domain parses again");
            }
            Err(errs) => {
                assert!(!errs.errors.is_empty(), "an error without a message");
                let lines = text.lines().count().max(1) + 1;
                for e in &errs.errors {
                    assert!(!e.message.is_empty(), "an empty error message");
                    // Every problem of a file has a position, on a line and column the file has.
                    let (Some(l), Some(c)) = (e.line, e.column) else { panic!("an error without a position: {e:?}") };
                    assert!(l >= 1 && l <= lines, "line {l} of a {lines}-line file: {e:?}");
                    let width = text.split('\n').nth(l - 1).map_or(0, |t| t.chars().count());
                    assert!(c >= 1 && c <= width + 1, "column {c} of a {width}-character line: {e:?}");
                }
                // The display names the file.
                assert!(errs.to_string().contains("fuzz.toml"));
            }
        }
    }

    fn fuzz_cases(default: u32) -> u32 {
        std::env::var("FERRY_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    /// Edits of the seed: delete, duplicate or swap lines, replace a value, insert bytes.
    fn mutate() -> impl Strategy<Value = String> {
        let lines: Vec<String> = SEED.lines().map(String::from).collect();
        let n = lines.len();
        let values = prop_oneof![
            Just("\"\"".to_string()),
            Just("-1".to_string()),
            Just("18446744073709551616".to_string()),
            Just("\"999999999999h\"".to_string()),
            Just("\"0s\"".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just("\"../../etc/passwd\"".to_string()),
            Just("\"256.1.1.1:99999\"".to_string()),
            Just("\"\\u0000\"".to_string()),
            Just("true".to_string()),
            "\"[a-z._-]{0,70}\"".prop_map(|s| s),
            any::<i64>().prop_map(|v| v.to_string()),
        ];
        let edit = prop_oneof![
            (0..n).prop_map(|i| (0u8, i, 0usize, String::new())),
            (0..n, 0..n).prop_map(|(i, j)| (1u8, i, j, String::new())),
            (0..n, 0..n).prop_map(|(i, j)| (2u8, i, j, String::new())),
            (0..n, values).prop_map(|(i, v)| (3u8, i, 0, v)),
            (0..n, any::<Vec<u8>>()).prop_map(|(i, b)| (4u8, i, 0, String::from_utf8_lossy(&b).into_owned())),
        ];
        proptest::collection::vec(edit, 1..6).prop_map(move |edits| {
            let mut l = lines.clone();
            for (kind, i, j, v) in edits {
                if l.is_empty() {
                    break;
                }
                let (i, j) = (i % l.len(), j % l.len());
                match kind {
                    0 => {
                        l.remove(i);
                    }
                    1 => {
                        let dup = l[i].clone();
                        l.insert(j, dup);
                    }
                    2 => l.swap(i, j),
                    3 => {
                        if let Some((k, _)) = l[i].split_once('=') {
                            l[i] = format!("{k}= {v}");
                        }
                    }
                    _ => l[i].push_str(&v),
                }
            }
            l.join("\n")
        })
    }

    proptest! {
        // FERRY_FUZZ_CASES=200000 for a long run.
        #![proptest_config(ProptestConfig { cases: fuzz_cases(1500), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn mutated_domain_files_never_panic_and_errors_have_real_lines(text in mutate()) {
            check(&text);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            check(&text);
        }
    }

    #[test]
    fn the_seed_is_valid() {
        Domain::parse("examples/domain.toml", SEED).expect("examples/domain.toml parses");
    }
}
