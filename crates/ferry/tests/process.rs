//! Real-process tests on loopback (DESIGN §5 "processes"): every scenario starts a whole
//! domain (an Administration Server and three Node Managers) with fast timings, injects a
//! failure with real signals, waits for the domain to heal, and checks the safety property
//! on the services' own journals: no two instances of a server ever ran at once, and every
//! new instance carries a larger fencing token. Waits have generous deadlines; timings are
//! measured by the benchmark, not asserted here.

use std::path::Path;

use std::time::Duration;

use ferry_api::{NmClient, NmStart, NmStop, Origin};
use ferry_testkit::{check_journal, wait_until, DomainSpec, Harness};
use nix::sys::signal::Signal;

/// One domain at a time: two cores shared by parallel domains would make leases of a few
/// hundred milliseconds flap for reasons that have nothing to do with the test.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PATIENCE: Duration = Duration::from_secs(30);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

fn spec() -> DomainSpec {
    // 200 ms x 3 = 600 ms leases, 200 ms grace: fast, yet far from the scheduler's noise.
    DomainSpec::figure_7_1(200, 3, 200)
}

async fn started() -> Harness {
    let h = Harness::start(spec(), exe(), None).await.expect("domain starts");
    let admin = h.admin();
    admin.start_cluster("cluster-1").await.expect("start-cluster accepted");
    h.wait_running("ms1", "machine-b", 0, PATIENCE).await.expect("ms1 runs on machine-b");
    h.wait_running("ms2", "machine-c", 0, PATIENCE).await.expect("ms2 runs on machine-c");
    h
}

async fn status_of(h: &Harness, server: &str) -> ferry_api::ServerStatus {
    h.status().await.expect("status").into_iter().find(|s| s.name == server).expect("server listed")
}

async fn events(h: &Harness) -> Vec<ferry_api::Event> {
    h.admin().events(0).await.expect("events")
}

async fn assert_safe(h: &Harness) {
    for s in ["ms1", "ms2"] {
        journal_with(h, s, 1).await;
    }
}

/// `server`'s journal once it shows at least `instances` instances (a service writes its
/// first line a moment after its server reports it running), checked for safety each time.
async fn journal_with(h: &Harness, server: &str, instances: usize) -> Vec<ferry_testkit::Instance> {
    let path = h.journal_path(server);
    let enough = || async {
        path.exists()
            && check_journal(&path)
                .map(|list| list.len() >= instances)
                .unwrap_or_else(|e| panic!("safety violated for {server}: {e}"))
    };
    wait_until(PATIENCE, &format!("{server}'s journal to show {instances} instance(s)"), enough).await.unwrap();
    check_journal(&path).unwrap_or_else(|e| panic!("safety violated for {server}: {e}"))
}

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
    assert_eq!(answer["fencing_token"], after.epoch.unwrap());
    let ev = events(&h).await;
    for kind in ["lease-expired", "restart-in-place", "machine-failed", "migrate"] {
        assert!(ev.iter().any(|e| e.kind == kind && e.server.as_deref() == Some("ms2")), "no {kind} event for ms2");
    }
    assert!(h.machine_pids("machine-c").is_empty(), "nothing of machine-c survived");

    // Failback (Figure 7-3): machine C is repaired and ms2 moves back by hand.
    h.start_nm("machine-c").await.expect("machine-c's Node Manager restarts");
    let op = h.admin().migrate("ms2", "machine-c").await.expect("migration accepted");
    let admin = h.admin();
    wait_until(PATIENCE, "the failback to finish", || async {
        admin.operation(op.id).await.map(|o| o.state != "running").unwrap_or(false)
    })
    .await
    .unwrap();
    let op = admin.operation(op.id).await.unwrap();
    assert_eq!(op.state, "succeeded", "{op:?}");
    let back = h.wait_running("ms2", "machine-c", after.epoch.unwrap(), PATIENCE).await.unwrap();
    assert!(back.epoch > after.epoch);
    // ms1 was never disturbed.
    let ms1 = status_of(&h, "ms1").await;
    assert_eq!(ms1.epoch, Some(1));
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
            .map(|ev| ev.iter().any(|e| e.kind == "fenced" && e.source == "nodemanager/machine-c"))
            .unwrap_or(false)
    })
    .await
    .unwrap();
    wait_until(PATIENCE, "the hung server to be gone", || async { !ferry_host::process::alive(pid) }).await.unwrap();
    let after =
        h.wait_running("ms2", "machine-c", before.epoch.unwrap(), PATIENCE).await.expect("ms2 restarted in place");
    assert!(after.epoch > before.epoch);
    assert_ne!(after.pid, Some(pid));
    let ev = events(&h).await;
    assert!(ev.iter().any(|e| e.kind == "restart-in-place" && e.server.as_deref() == Some("ms2")));
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
            s.state == "RUNNING"
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
        ev.iter().any(|e| e.kind == "lease-acquired"
            && e.server.as_deref() == Some("ms1")
            && e.message.contains("handover")),
        "ms1 took its lease by handover"
    );
    assert!(
        !ev.iter().any(|e| e.kind == "lease-expired" && e.server.as_deref() == Some("ms1")),
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
    assert!(ev.iter().any(|e| e.kind == "master-acquired" && e.source == "server/ms2"), "ms2 became master");
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
    assert_eq!(a["fencing_token"], before.epoch.unwrap());
    // Crash ms1's runtime: its Node Manager restarts it with the cached configuration.
    assert!(ferry_host::process::signal(before.pid.unwrap(), Signal::SIGKILL));
    let addr = h.service_addr["ms1"];
    wait_until(PATIENCE, "ms1 to answer with a new fencing token", || async {
        ferry_testkit::probe(addr, Duration::from_millis(300))
            .await
            .is_some_and(|v| v["fencing_token"].as_u64() > before.epoch)
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
            .map(|ev| ev.iter().any(|e| e.kind == "config-cached" && e.server.as_deref() == Some("ms1")))
            .unwrap_or(false)
    })
    .await
    .unwrap();
    assert_eq!(status_of(&h, "ms1").await.state, "RUNNING");
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
        admin.operation(op.id).await.map(|o| o.state == "succeeded").unwrap_or(false)
    })
    .await
    .unwrap();
    // Longer than ttl + grace + a scan: the master must leave it alone.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let s = status_of(&h, "ms2").await;
    assert_eq!(s.state, "SHUTDOWN", "{s:?}");
    assert!(h.who_answers("ms2").await.is_none());
    // A forced stop releases the lease too.
    admin.start("ms2").await.expect("start accepted");
    h.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();
    let op = admin.stop("ms2", true).await.expect("forced stop accepted");
    wait_until(PATIENCE, "the forced stop to finish", || async {
        admin.operation(op.id).await.map(|o| o.state == "succeeded").unwrap_or(false)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(status_of(&h, "ms2").await.state, "SHUTDOWN");
    assert_safe(&h).await;
}

/// Bad input gets a clear error and disturbs nothing.
#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let admin = h.admin();
    let before = h.status().await.unwrap();

    let e = admin.migrate("ms2", "machine-x").await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert!(e.to_string().contains("unknown machine machine-x"), "{e}");
    let e = admin.migrate("nosuch", "machine-d").await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert!(e.to_string().contains("unknown server nosuch"), "{e}");
    let e = admin.start("ms2").await.unwrap_err();
    assert_eq!(e.status(), Some(409));
    assert!(e.to_string().contains("already running on machine-c"), "{e}");
    let e = admin.migrate("ms2", "machine-c").await.unwrap_err();
    assert_eq!(e.status(), Some(409));
    let e = admin.start_cluster("nosuch").await.unwrap_err();
    assert_eq!(e.status(), Some(404));

    // A Node Manager talks only mutual TLS with certificates of this domain: plain HTTP, no
    // certificate, or another domain's certificate get no answer at all.
    let addr = h.nm_addr["machine-c"].to_string();
    let cmd = NmStart { origin: Origin::Admin, in_place: true };
    let raw = reqwest::Client::new().post(format!("http://{addr}/nm/v1/servers/ms2/start")).body("{}").send().await;
    assert!(raw.is_err(), "plain HTTP got an answer: {raw:?}");
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = ferry_tls::Ca::load_or_create(other_dir.path(), "other").unwrap();
    let stranger = other_ca.issue(&ferry_tls::Identity::Admin).unwrap();
    let e = NmClient::new(&addr, "machine-c", &stranger, Duration::from_secs(2)).start("ms2", &cmd).await.unwrap_err();
    assert!(e.is_unreachable(), "another domain's certificate: {e}");
    let admin_creds = h.admin_credentials().await.unwrap();
    let anon = ferry_tls::anonymous_client_config(&admin_creds.ca_pem, ferry_tls::Expect::AnyPeer).unwrap();
    let e = NmClient::with_tls(&addr, anon, Duration::from_secs(2)).start("ms2", &cmd).await.unwrap_err();
    assert!(e.is_unreachable(), "no client certificate: {e}");
    // Dialling machine-c but expecting machine-b's Node Manager: the client refuses.
    let e = NmClient::new(&addr, "machine-b", &admin_creds, Duration::from_secs(2)).health().await.unwrap_err();
    assert!(e.to_string().contains("expected machine machine-b"), "{e}");

    // Commands: the admin's certificate as the admin; a server's only as the current master
    // of its cluster at the lease's epoch; nobody else.
    let cluster = h.admin().clusters().await.unwrap().into_iter().next().expect("a cluster");
    let (master, epoch) = (cluster.master.expect("a master"), cluster.master_epoch.expect("an epoch"));
    let home = if master == "ms1" { "machine-b" } else { "machine-c" };
    let as_master = |epoch, server: &str| NmStart {
        origin: Origin::Master { cluster: "cluster-1".into(), epoch, server: server.into() },
        in_place: false,
    };
    let master_creds = h.server_credentials(home, &master).unwrap();
    let nm = h.nm_client_as("machine-c", &master_creds);
    nm.start("ms2", &as_master(epoch, &master)).await.expect("the current master may ask (ms2 already runs: no-op)");
    let e = nm.start("ms2", &as_master(epoch - 1, &master)).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(e.to_string().contains("not the current master"), "{e}");
    let e = nm.start("ms2", &NmStart { origin: Origin::Admin, in_place: false }).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "a server posing as the admin: {e}");
    let other = if master == "ms1" { "ms2" } else { "ms1" };
    let e = nm.start("ms2", &as_master(epoch, other)).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "a command claiming another server's name: {e}");
    assert!(e.to_string().contains("certificate is server"), "{e}");
    let impostor = h.server_credentials("machine-d", other).unwrap();
    let e = h.nm_client_as("machine-c", &impostor).start("ms2", &as_master(epoch, other)).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "a server that is not master: {e}");
    let e = h.nm_client_as("machine-c", &admin_creds).start("ms2", &as_master(epoch, &master)).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "the admin posing as a master: {e}");
    let machine_d = ferry_tls::Credentials::load(&h.dir.join("data/nm-machine-d/pki"), "machine").unwrap();
    let e = h
        .nm_client_as("machine-c", &machine_d)
        .stop("ms2", &NmStop { origin: Origin::Admin, force: true, timeout_ms: None })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "another machine's Node Manager: {e}");
    // Malformed bodies.
    let raw = reqwest::Client::new()
        .post(format!("{}/api/v1/servers/ms2/migrate", h.admin_url))
        .bearer_auth(h.admin_token())
        .header("content-type", "application/json")
        .body("{\"to\": 5")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 422, "a number where a machine name belongs");
    let body: serde_json::Value = raw.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("bad migrate request"));

    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = h.status().await.unwrap();
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(
            (a.state.as_str(), &a.machine, a.epoch, a.pid),
            (b.state.as_str(), &b.machine, b.epoch, b.pid),
            "nothing changed"
        );
    }
    assert_safe(&h).await;
}

/// `ferry validate` prints every problem with file, line and field, and exits non-zero.
#[test]
fn validate_reports_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"name = "d"
[leasing]
data_source = "sqlite://x.db"

[[machines]]
name = "m1"
node_manager = "127.0.0.1:5556"

[[clusters]]
name = "c1"

[[servers]]
name = "ms1"
cluster = "c1"
machine = "m2"
candidate_machines = ["m9"]
"#,
    )
    .unwrap();
    let out = std::process::Command::new(exe()).arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:15:11: servers[0].machine: unknown machine \"m2\""), "{err}");
    assert!(err.contains("bad.toml:16:23: servers[0].candidate_machines[0]: unknown machine \"m9\""), "{err}");
    assert!(err.contains("2 problems found"), "{err}");

    std::fs::write(&path, "name = \"d\"\n[leasing]\ndata_source = \"sqlite://x.db\"\nbogus = 1\n").unwrap();
    let out = std::process::Command::new(exe()).arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:4:1: leasing.bogus: unknown key: the keys allowed here are basis, data_source"),
        "{err}"
    );
}

/// A bad domain file stops `ferry admin` and `ferry nodemanager --domain` as it fails
/// `ferry validate`: exit status 2 and the same `FILE:LINE:COL: field: message` lines.
#[tokio::test]
async fn daemons_refuse_a_bad_domain_file_as_validate_does() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: Vec<String>| async move {
        let child = tokio::process::Command::new(exe())
            .args(&args)
            .env("FERRY_LOG", "off")
            .env_remove("FERRY_SECRET")
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ferry starts");
        let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("ferry {args:?} kept running with a bad domain file"))
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let path = |name: &str| dir.path().join(name).display().to_string();
    let daemons = |file: &str| {
        [
            vec!["admin".into(), "--domain".into(), file.to_string(), "--data-dir".into(), path("admin")],
            vec![
                "nodemanager".into(),
                "--machine".into(),
                "m1".into(),
                "--domain".into(),
                file.to_string(),
                "--data-dir".into(),
                path("nm-m1"),
            ],
        ]
    };

    let bad = path("bad.toml");
    std::fs::write(
        &bad,
        "name = \"d\"\n[leasing]\ndata_source = \"sqlite://x.db\"\n\n[[machines]]\nname = \"m1\"\nnode_manager = \"localhost\"\n",
    )
    .unwrap();
    let validate = run(vec!["validate".into(), bad.clone()]).await;
    assert_eq!(
        validate,
        (
            Some(2),
            format!(
                "{bad}:7:16: machines[0].node_manager: expected IP:PORT, like \"127.0.0.1:5556\", got the string \"localhost\"\n1 problem found\n"
            )
        )
    );
    for args in daemons(&bad) {
        assert_eq!(run(args.clone()).await, validate, "ferry {args:?}");
    }

    // A domain file that cannot be read is a bad domain file too.
    let missing = path("missing.toml");
    let validate = run(vec!["validate".into(), missing.clone()]).await;
    assert_eq!(validate.0, Some(2), "{}", validate.1);
    assert!(validate.1.starts_with(&format!("{missing}: cannot read the domain file: ")), "{}", validate.1);
    for args in daemons(&missing) {
        assert_eq!(run(args.clone()).await, validate, "ferry {args:?}");
    }
}

/// Issue 9, item 11: a Node Manager for a machine the domain does not define waited for ever
/// for an Administration Server to enroll it. It exits at once with the error (exit 2),
/// whether or not an admin runs, and with only a cached configuration to go by.
#[tokio::test]
async fn a_node_manager_for_an_undefined_machine_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let domain = dir.path().join("d.toml");
    std::fs::write(
        &domain,
        "name = \"d\"\n[admin]\nlisten = \"127.0.0.1:1\"\n[leasing]\ndata_source = \"sqlite://x.db\"\n\n[[machines]]\nname = \"alpha\"\nnode_manager = \"127.0.0.1:2\"\n",
    )
    .unwrap();
    let run = |args: Vec<String>| async move {
        let child = tokio::process::Command::new(exe())
            .args(&args)
            .env("FERRY_LOG", "off")
            .env_remove("FERRY_SECRET")
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ferry starts");
        let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("ferry {args:?} kept waiting"))
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let s = |x: &str| x.to_string();
    // No admin listens at 127.0.0.1:1: the Node Manager must not wait for one.
    let (code, err) = run(vec![
        s("nodemanager"),
        s("--machine"),
        s("zeta"),
        s("--domain"),
        domain.display().to_string(),
        s("--data-dir"),
        dir.path().join("nm").display().to_string(),
    ])
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("machine zeta is not defined in domain d") && err.contains("defines alpha"),
        "the error names the machine and the ones defined: {err}"
    );
    // With only --admin-url (down) and a cached configuration from an earlier run.
    let data = dir.path().join("nm-cached");
    std::fs::create_dir_all(&data).unwrap();
    let cached = ferry_api::VersionedDomain { version: 3, domain: ferry_host::files::load_domain(&domain).unwrap() };
    std::fs::write(data.join("domain-cache.json"), serde_json::to_vec(&cached).unwrap()).unwrap();
    let (code, err) = run(vec![
        s("nodemanager"),
        s("--machine"),
        s("zeta"),
        s("--admin-url"),
        s("https://127.0.0.1:1"),
        s("--data-dir"),
        data.display().to_string(),
    ])
    .await;
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("machine zeta is not defined in domain d"), "{err}");
}

/// `ferry ARGS` as an operator on the admin's host: its token comes from the client file
/// the admin left in `config` (`FERRY_CONFIG_DIR`), unless `env` names one.
fn ferry_cli_env(admin: &str, config: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    std::process::Command::new(exe())
        .args(args)
        .env("FERRY_ADMIN", admin)
        .env("FERRY_CONFIG_DIR", config)
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_TOKEN_FILE")
        .envs(env.iter().copied())
        .output()
        .expect("ferry runs")
}

fn ferry_cli(admin: &str, config: &Path, args: &[&str]) -> std::process::Output {
    ferry_cli_env(admin, config, &[], args)
}

/// The command line drives a domain as DESIGN §4 says, with stable `-o json`.
#[tokio::test]
async fn the_command_line_drives_the_domain() {
    let _g = SERIAL.lock().await;
    let h = Harness::start(spec(), exe(), None).await.expect("domain starts");
    let url = h.admin_url.clone();
    // The operator finds the token the admin left for its host's users (DESIGN's flow).
    let cfg = h.client_config_dir();
    let out = tokio::task::spawn_blocking({
        let (url, cfg) = (url.clone(), cfg.clone());
        move || ferry_cli(&url, &cfg, &["start-cluster", "cluster-1", "--wait"])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("start-cluster cluster-1 succeeded"));
    // On a running cluster, every server gets its line, the first one too.
    let out = ferry_cli(&url, &cfg, &["start-cluster", "cluster-1", "--wait"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in ["ms1 is already running on machine-b", "ms2 is already running on machine-c"] {
        assert_eq!(text.matches(line).count(), 1, "start-cluster --wait on a running cluster:\n{text}");
    }

    let out = ferry_cli(&url, &cfg, &["status", "-o", "json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status -o json is JSON");
    let list = v.as_array().expect("a list");
    assert_eq!(list.len(), 2);
    for s in list {
        for field in ["name", "cluster", "state", "machine", "pid", "epoch", "lease_remaining_ms", "master"] {
            assert!(s.get(field).is_some(), "status -o json lacks {field}: {s}");
        }
        assert_eq!(s["state"], "RUNNING");
    }
    assert_eq!(list.iter().filter(|s| s["master"] == true).count(), 1, "exactly one master");

    let out = ferry_cli(&url, &cfg, &["leases", "-o", "json"]);
    let leases: Vec<ferry_core::lease::Lease> = serde_json::from_slice(&out.stdout).expect("leases -o json");
    assert_eq!(leases.len(), 3, "two server leases and the master lease: {leases:?}");

    let out = tokio::task::spawn_blocking({
        let (url, cfg) = (url.clone(), cfg.clone());
        move || ferry_cli(&url, &cfg, &["migrate", "ms1", "--to", "machine-d", "--wait"])
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    for step in [
        "contacting the Node Manager on machine-b to stop ms1",
        "contacting the Node Manager on machine-d to start ms1",
        "obtained its lease on machine-d",
    ] {
        assert!(text.contains(step), "migrate --wait did not show {step:?}:\n{text}");
    }

    let out = ferry_cli(&url, &cfg, &["events", "-o", "json"]);
    let events: Vec<ferry_api::Event> = serde_json::from_slice(&out.stdout).expect("events -o json is one JSON array");
    assert!(events.iter().any(|e| e.kind == "master-acquired"));
    assert!(events.iter().any(|e| e.kind == "lease-released" && e.server.as_deref() == Some("ms1")));

    let out = ferry_cli(&url, &cfg, &["migrate", "ms1", "--to", "machine-q"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown machine machine-q"));
    let out = ferry_cli("http://127.0.0.1:1", &cfg, &["status"]);
    assert_eq!(out.status.code(), Some(3), "an unreachable admin is exit 3");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the Administration Server running?"));
    assert_safe(&h).await;
}

/// Operators and their tokens (WebLogic's roles): without a token every API call is refused
/// with how to get one; a Monitor reads but cannot stop; an Operator starts and stops but
/// cannot change the configuration or the tokens; only an Admin can. Revoked and expired
/// tokens are refused by name, every change names its token in the event log, and no token
/// ever reaches a log, the event log or an error.
#[tokio::test]
async fn operator_tokens_have_roles_and_every_change_names_its_token() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let url = h.admin_url.clone();
    let cfg = h.client_config_dir();
    let port = url.rsplit(':').next().unwrap();
    let client_file = cfg.join(format!("admins/127.0.0.1_{port}/token"));
    assert_eq!(
        std::fs::read_to_string(&client_file).unwrap(),
        h.admin_token(),
        "the admin left its token for this host"
    );
    let nowhere = tempfile::tempdir().unwrap();

    // No token: refused, with how to get one.
    for path in ["/api/v1/servers", "/metrics", "/api/v1/domain"] {
        let raw = reqwest::get(format!("{url}{path}")).await.unwrap();
        assert_eq!(raw.status().as_u16(), 401, "{path}");
        let body: serde_json::Value = raw.json().await.unwrap();
        let e = body["error"].as_str().unwrap();
        assert!(e.contains("ferry token create") && e.contains(&client_file.display().to_string()), "{e}");
    }
    let out = ferry_cli(&url, nowhere.path(), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ferry token create") && err.contains("no operator token was found"), "{err}");

    // An Admin makes tokens; each is printed alone on stdout.
    let create = |args: &[&str]| {
        let out = ferry_cli(&url, &cfg, &[&["token", "create"], args].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().count(), 1, "only the token on stdout: {text:?}");
        text.trim().to_string()
    };
    let monitor = create(&["--name", "watcher", "--role", "monitor"]);
    let operator = create(&["--name", "ci", "--role", "operator"]);
    let short = create(&["--name", "brief", "--role", "operator", "--ttl", "300ms"]);
    assert!(monitor.starts_with("ferry_") && operator.starts_with("ferry_"));
    let tokens = [h.admin_token().to_string(), monitor.clone(), operator.clone(), short.clone()];

    // A Monitor reads, and cannot stop.
    let as_monitor = [("FERRY_TOKEN", monitor.as_str())];
    let out = ferry_cli_env(&url, nowhere.path(), &as_monitor, &["status", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ferry_cli_env(&url, nowhere.path(), &as_monitor, &["stop", "ms2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stop needs the Operator role; token 'watcher' has Monitor"), "{err}");
    let e = ferry_api::AdminClient::with_token(&url, &monitor, PATIENCE).stop("ms2", false).await.unwrap_err();
    assert_eq!(e.status(), Some(403));

    // An Operator (its token in a file) stops and starts.
    let file = h.dir.join("ci.token");
    std::fs::write(&file, format!("{operator}\n")).unwrap();
    let tf = file.display().to_string();
    for args in [["stop", "ms2", "--wait"], ["start", "ms2", "--wait"]] {
        let out = tokio::task::spawn_blocking({
            let (url, dir, tf) = (url.clone(), nowhere.path().to_path_buf(), tf.clone());
            move || ferry_cli(&url, &dir, &[&["--token-file", tf.as_str()], &args[..]].concat())
        })
        .await
        .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    h.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();
    // ... but changes neither the configuration nor the tokens.
    let ci = ferry_api::AdminClient::with_token(&url, &operator, PATIENCE);
    let domain = ci.domain().await.unwrap();
    let update = ferry_api::DomainUpdate { expected_version: None, domain: domain.domain.clone() };
    let e = ci.put_domain(&update).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(e.to_string().contains("needs the Admin role; token 'ci' has Operator"), "{e}");
    let out = ferry_cli_env(
        &url,
        nowhere.path(),
        &[("FERRY_TOKEN_FILE", tf.as_str())],
        &["token", "create", "--name", "x", "--role", "admin"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("creating tokens needs the Admin role"));
    // The Admin can.
    h.admin().put_domain(&update).await.expect("an Admin changes the configuration");

    // The list shows names and roles, never tokens or hashes.
    let out = ferry_cli(&url, &cfg, &["token", "list", "-o", "json"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let list: Vec<ferry_api::TokenInfo> = serde_json::from_str(&text).expect("token list -o json");
    let roles: Vec<_> = list.iter().map(|t| (t.name.as_str(), t.role.as_str())).collect();
    assert_eq!(roles, [("admin", "admin"), ("watcher", "monitor"), ("ci", "operator"), ("brief", "operator")]);
    assert!(!text.contains("sha256") && tokens.iter().all(|t| !text.contains(&t[6..])), "{text}");

    // Revoked and expired tokens are refused by name.
    let out = ferry_cli(&url, &cfg, &["token", "revoke", "watcher"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ferry_cli_env(&url, nowhere.path(), &as_monitor, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token 'watcher' was revoked"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let e = ferry_api::AdminClient::with_token(&url, &short, PATIENCE).servers().await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(e.to_string().contains("token 'brief' expired at"), "{e}");

    // The audit trail names the tokens: `-o json` and the human form.
    let out = ferry_cli(&url, &cfg, &["events", "-o", "json"]);
    let events: Vec<ferry_api::Event> = serde_json::from_slice(&out.stdout).expect("events -o json is one JSON array");
    let by = |kind: &str, who: &str| events.iter().any(|e| e.kind == kind && e.by.as_deref() == Some(who));
    assert!(by("nm-stopped", "ci") && by("nm-started", "ci"), "the stop and start name 'ci'");
    assert!(by("config-changed", "admin") && by("token-created", "admin") && by("token-revoked", "admin"));
    assert!(
        events.iter().filter(|e| e.kind == "contact-nm").all(|e| e.by.is_some()),
        "every operation step has its token"
    );
    assert!(events.iter().filter(|e| e.source != "admin").all(|e| e.by.is_none()), "daemons' events name no operator");
    let out = ferry_cli(&url, &cfg, &["events"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(by ci)"));

    // No token ever reached a log, the event log or an answer.
    let mut seen = String::new();
    for f in ["logs/admin.log", "data/admin/events.jsonl", "data/admin/tokens.json"] {
        seen += &std::fs::read_to_string(h.dir.join(f)).unwrap();
    }
    for t in &tokens {
        assert!(!seen.contains(&t[6..]), "a token leaked into the admin's files");
    }
    assert_safe(&h).await;
}

/// Configuration changes made through the API are versioned, persisted, survive a restart of
/// the Administration Server, and reach the Node Managers.
#[tokio::test]
async fn configuration_changes_persist() {
    let _g = SERIAL.lock().await;
    let mut h = Harness::start(spec(), exe(), None).await.expect("domain starts");
    let admin = h.admin();
    let v1 = admin.domain().await.unwrap();
    assert_eq!(v1.version, 1);
    let mut d = v1.domain.clone();
    d.servers[0].shutdown_timeout = Duration::from_secs(7);
    let v2 = admin.put_domain(&ferry_api::DomainUpdate { expected_version: Some(1), domain: d.clone() }).await.unwrap();
    assert_eq!(v2.version, 2);
    // A stale writer is refused; an invalid configuration is refused with the field named.
    let e =
        admin.put_domain(&ferry_api::DomainUpdate { expected_version: Some(1), domain: d.clone() }).await.unwrap_err();
    assert_eq!(e.status(), Some(409));
    let mut bad = d.clone();
    bad.servers[0].candidate_machines = vec![ferry_core::MachineName::new("nowhere").unwrap()];
    let e = admin.put_domain(&ferry_api::DomainUpdate { expected_version: None, domain: bad }).await.unwrap_err();
    assert_eq!(e.status(), Some(422));
    assert!(e.to_string().contains("servers[0].candidate_machines[0]"), "{e}");
    // Restart the admin: version 2 is still current.
    h.kill_admin();
    h.start_admin().await.unwrap();
    let again = h.admin().domain().await.unwrap();
    assert_eq!(again.version, 2);
    assert_eq!(again.domain.servers[0].shutdown_timeout, Duration::from_secs(7));
    assert!(h.dir.join("data/admin/history/domain-v2.toml").exists());
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
                .is_some_and(|s| s.state == "FENCED" && s.last_exit.as_deref() == Some("exit code 75"))
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
                    e.kind == "fenced"
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
        ev.iter().any(|e| e.kind == "restart-after-fence" && e.server.as_deref() == Some("ms2")),
        "{:#?}",
        ev.iter().map(|e| format!("{:?} {} {} {}", e.server, e.source, e.kind, e.message)).collect::<Vec<_>>()
    );
    assert!(
        !ev.iter().any(|e| e.kind == "not-restarting"),
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
        origin: Origin::Master { cluster: "cluster-1".into(), epoch, server: name.clone() },
        in_place: false,
    };
    // The real master's epoch reaches this Node Manager (as a no-op start of a running server).
    h.nm_client_as("machine-c", &master_creds).start("ms2", &master(epoch)).await.expect("the current master may ask");
    // The Node Manager writes the epoch it learned in the background (off the command's path).
    let epochs_file = h.dir.join("data/nm-machine-c/master-epochs.json");
    wait_until(PATIENCE, "machine-c's Node Manager to persist the master epoch", || async {
        std::fs::read(&epochs_file).is_ok_and(|b| {
            serde_json::from_slice::<std::collections::BTreeMap<String, u64>>(&b)
                .is_ok_and(|m| m.get("cluster-1") == Some(&epoch))
        })
    })
    .await
    .unwrap();
    assert_eq!(h.kill_nm_only("machine-c"), 1);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mid = status_of(&h, "ms2").await;
    assert_eq!((mid.state.as_str(), mid.epoch), ("RUNNING", before.epoch), "ms2 kept running without its Node Manager");
    h.start_nm("machine-c").await.unwrap();
    let admin = h.admin();
    wait_until(PATIENCE, "the new Node Manager to adopt ms2", || async {
        admin
            .events(0)
            .await
            .map(|ev| ev.iter().any(|e| e.kind == "adopted" && e.server.as_deref() == Some("ms2")))
            .unwrap_or(false)
    })
    .await
    .unwrap();
    let nm = h.nm_client_as("machine-c", &master_creds);
    let e = nm.start("ms2", &master(epoch - 1)).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "an older epoch is not the master's: {e}");
    // Rule 5 across restarts: the restarted Node Manager still knows master epoch `epoch`.
    let seen: std::collections::BTreeMap<String, u64> = serde_json::from_slice(
        &std::fs::read(h.dir.join("data/nm-machine-c/master-epochs.json")).expect("master epochs persisted"),
    )
    .unwrap();
    assert_eq!(seen.get("cluster-1"), Some(&epoch), "{seen:?}");
    let seen = nm.servers().await.unwrap().into_iter().find(|s| s.name == "ms2").expect("adopted ms2 is listed");
    assert_eq!(seen.pid, before.pid);
    assert!(seen.deadline_in_ms.is_some(), "the adopted server reports its deadline again");
    // Rule 3 works again: a hung adopted server is fenced by the new Node Manager.
    assert!(ferry_host::process::signal(before.pid.unwrap(), Signal::SIGSTOP));
    wait_until(PATIENCE, "the new Node Manager to fence the hung ms2", || async {
        admin
            .events(0)
            .await
            .map(|ev| ev.iter().any(|e| e.kind == "fenced" && e.source == "nodemanager/machine-c"))
            .unwrap_or(false)
    })
    .await
    .unwrap();
    h.wait_running("ms2", "machine-c", before.epoch.unwrap(), PATIENCE).await.expect("ms2 restarted in place");
    assert_safe(&h).await;
}

/// The same domain on a real PostgreSQL lease table (a private server this test starts):
/// a machine dies and its server migrates; then the database goes down, every server fences
/// itself and the master moves nothing; the database comes back and so does the domain.
#[tokio::test]
async fn postgres_lease_table_failover_and_outage() {
    let _g = SERIAL.lock().await;
    let Some(mut pg) = tokio::task::spawn_blocking(ferry_testkit::PgServer::start_or_skip).await.unwrap() else {
        return;
    };
    let url = pg.url();
    let out = std::process::Command::new(exe()).args(["leasing", "init", "--data-source", &url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut spec = spec();
    spec.data_source = Some(url.clone());
    let h = Harness::start(spec, exe(), None).await.expect("domain starts");
    h.admin().start_cluster("cluster-1").await.unwrap();
    h.wait_running("ms1", "machine-b", 0, PATIENCE).await.unwrap();
    let before = h.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();

    h.kill_machine("machine-c");
    let moved =
        h.wait_running("ms2", "machine-d", before.epoch.unwrap(), PATIENCE).await.expect("ms2 migrated on PostgreSQL");
    h.wait_answer_from("ms2", "machine-d", PATIENCE).await.unwrap();

    // The database goes away: both servers fence themselves before their leases could expire.
    let mut pg = tokio::task::spawn_blocking(move || {
        pg.stop().expect("PostgreSQL stops");
        pg
    })
    .await
    .unwrap();
    for (server, machine) in [("ms1", "machine-b"), ("ms2", "machine-d")] {
        let nm = h.nm_client(machine, Duration::from_secs(2)).await.unwrap();
        wait_until(PATIENCE, &format!("{server} to fence itself"), || async {
            nm.servers()
                .await
                .ok()
                .and_then(|l| l.into_iter().find(|s| s.name == server))
                .is_some_and(|s| s.state == "FENCED")
        })
        .await
        .unwrap();
        assert!(h.who_answers(server).await.is_none(), "{server}'s service is down");
    }
    let ev = events(&h).await;
    let migrations_before = ev.iter().filter(|e| e.kind == "migrate").count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The admin answers with the database's error and no password.
    let e = h.admin().servers().await.unwrap_err().to_string();
    assert!(e.contains("cannot read the lease table") && e.contains("127.0.0.1"), "{e}");

    // It comes back: the domain returns to its configured state with no operator.
    let _pg = tokio::task::spawn_blocking(move || {
        pg.start_again().expect("PostgreSQL starts again");
        pg
    })
    .await
    .unwrap();
    h.wait_running("ms1", "machine-b", 1, Duration::from_secs(60)).await.expect("ms1 back");
    h.wait_running("ms2", "machine-d", moved.epoch.unwrap(), Duration::from_secs(60))
        .await
        .expect("ms2 back where it ran");
    h.wait_answer_from("ms2", "machine-d", PATIENCE).await.unwrap();
    let ev = events(&h).await;
    assert_eq!(
        ev.iter().filter(|e| e.kind == "migrate").count(),
        migrations_before,
        "nothing migrated during or after the outage"
    );
    assert_safe(&h).await;
}

/// A misconfigured lease table at start-up: the daemons run, and every answer names the
/// data source (without its password) and the fix.
#[tokio::test]
async fn misconfigured_postgres_gets_clear_errors_and_no_crash() {
    let _g = SERIAL.lock().await;
    let Some(pg) = tokio::task::spawn_blocking(ferry_testkit::PgServer::start_or_skip).await.unwrap() else {
        return;
    };
    pg.create_user_with_password("alice", "s3cret-pw").await.unwrap();
    let cases = [
        // No table yet.
        (pg.url(), "ferry leasing init"),
        // Wrong password.
        (pg.url_for("alice", Some("wrong-pw"), "ferry"), "authentication failed"),
        // Nobody listens.
        ("postgres://ferry:s3cret-pw@127.0.0.1:1/ferry".to_string(), "127.0.0.1:1"),
    ];
    for (url, want) in cases {
        let mut spec = spec();
        spec.data_source = Some(url.clone());
        let h = Harness::start(spec, exe(), None).await.expect("the admin and Node Managers start anyway");
        let e = h.admin().servers().await.unwrap_err();
        assert_eq!(e.status(), Some(503));
        let text = e.to_string();
        assert!(text.contains(want), "{url}: {text}");
        assert!(!text.contains("s3cret-pw") && !text.contains("wrong-pw"), "a password leaked: {text}");
        // A start is refused with the same reason, and the admin keeps running.
        let e = h.admin().start("ms1").await.unwrap_err().to_string();
        assert!(e.contains("cannot read the lease table"), "{e}");
        assert!(h.admin().domain().await.is_ok(), "the admin still runs");
        let log = std::fs::read_to_string(h.dir.join("logs/admin.log")).unwrap_or_default();
        assert!(!log.contains("s3cret-pw") && !log.contains("wrong-pw"), "a password leaked into the log");
    }
}

/// What a request of [`hostile_requests_get_clear_4xx_and_disturb_nothing`] presents.
#[derive(Clone, Copy)]
enum Auth {
    None,
    /// The domain secret as a bearer token.
    Secret,
    /// The admin's initial Admin token.
    Token,
    /// Mutual TLS with the admin's certificate (the Node Manager's cases).
    Cert,
}

/// Hostile input, table-driven: malformed (400), wrongly shaped (422), wrongly typed (415),
/// oversized (413), unauthenticated (401) and unknown (404, 405) requests to the
/// Administration Server and a Node Manager each get a 4xx with a JSON `error`, and
/// the daemons and their servers keep running untouched.
#[tokio::test]
async fn hostile_requests_get_clear_4xx_and_disturb_nothing() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let before = h.status().await.unwrap();
    let secret = h.secret().await.unwrap();
    let nm = format!("https://{}", h.nm_addr["machine-c"]);
    let admin = h.admin_url.clone();
    let big = "x".repeat(2 * 1024 * 1024);
    let long_name = "a".repeat(5000);
    // Admin calls carry the initial Admin token (so the check under test is the input's);
    // its daemon route the domain secret, or nothing.
    let token = h.admin_token().to_string();
    // (method, url, auth, content type, body, expected status)
    let cases: Vec<(&str, String, Auth, &str, String, u16)> = vec![
        (
            "POST",
            format!("{admin}/api/v1/servers/ms2/migrate"),
            Auth::Token,
            "application/json",
            "{\"to\": ".into(),
            400,
        ),
        ("POST", format!("{admin}/api/v1/servers/ms2/migrate"), Auth::Token, "application/json", "{}".into(), 422),
        (
            "POST",
            format!("{admin}/api/v1/servers/ms2/migrate"),
            Auth::Token,
            "application/json",
            "{\"to\": 7}".into(),
            422,
        ),
        (
            "POST",
            format!("{admin}/api/v1/servers/ms2/migrate"),
            Auth::Token,
            "text/plain",
            "{\"to\":\"machine-d\"}".into(),
            415,
        ),
        ("POST", format!("{admin}/api/v1/servers/ms2/migrate"), Auth::Token, "application/json", big.clone(), 413),
        (
            "POST",
            format!("{admin}/api/v1/servers/{long_name}/migrate"),
            Auth::Token,
            "application/json",
            "{\"to\":\"machine-d\"}".into(),
            400,
        ),
        (
            "POST",
            format!("{admin}/api/v1/servers/..%2F..%2Fetc/start"),
            Auth::Token,
            "application/json",
            "{}".into(),
            400,
        ),
        (
            "POST",
            format!("{admin}/api/v1/servers/ms2/migrate"),
            Auth::Token,
            "application/json",
            "{\"to\":\"../../etc\"}".into(),
            400,
        ),
        (
            "PUT",
            format!("{admin}/api/v1/domain"),
            Auth::Token,
            "application/json",
            "{\"domain\": {\"name\": 5}}".into(),
            422,
        ),
        ("PUT", format!("{admin}/api/v1/domain"), Auth::Token, "application/json", "[]".into(), 422),
        ("GET", format!("{admin}/api/v1/events?since=-1"), Auth::Token, "", String::new(), 400),
        ("GET", format!("{admin}/api/v1/operations/abc"), Auth::Token, "", String::new(), 400),
        ("GET", format!("{admin}/api/v1/operations/999999"), Auth::Token, "", String::new(), 404),
        ("DELETE", format!("{admin}/api/v1/servers"), Auth::Token, "", String::new(), 405),
        ("GET", format!("{admin}/api/v2/anything"), Auth::Token, "", String::new(), 404),
        ("POST", format!("{admin}/api/v1/events"), Auth::None, "application/json", "[]".into(), 401),
        ("GET", format!("{admin}/api/v1/servers"), Auth::None, "", String::new(), 401),
        ("POST", format!("{admin}/api/v1/servers/ms2/stop"), Auth::Secret, "application/json", "{}".into(), 401),
        (
            "POST",
            format!("{admin}/api/v1/events"),
            Auth::Secret,
            "application/json",
            "{\"not\": \"a list\"}".into(),
            422,
        ),
        ("POST", format!("{nm}/nm/v1/servers/ms2/start"), Auth::Cert, "application/json", "{".into(), 400),
        (
            "POST",
            format!("{nm}/nm/v1/servers/ms2/start"),
            Auth::Cert,
            "application/json",
            "{\"origin\": {\"kind\": \"root\"}}".into(),
            422,
        ),
        ("POST", format!("{nm}/nm/v1/servers/ms2/start"), Auth::Cert, "application/json", big.clone(), 413),
        (
            "POST",
            format!("{nm}/nm/v1/servers/nosuch/start"),
            Auth::Cert,
            "application/json",
            "{\"origin\":{\"kind\":\"admin\"}}".into(),
            404,
        ),
        (
            "POST",
            format!("{nm}/nm/v1/servers/{long_name}/stop"),
            Auth::Cert,
            "application/json",
            "{\"origin\":{\"kind\":\"admin\"}}".into(),
            400,
        ),
        (
            "POST",
            format!("{nm}/nm/v1/servers/ms1/start"),
            Auth::Cert,
            "application/json",
            "{\"origin\":{\"kind\":\"admin\"}}".into(),
            409,
        ),
        (
            "POST",
            format!("{nm}/nm/v1/exec"),
            Auth::Cert,
            "application/json",
            "{\"command\": [\"/bin/sh\"]}".into(),
            404,
        ),
    ];
    // No pooled connections: a server may close one after refusing an oversized body.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    // The Node Manager's cases go over mutual TLS with the admin's certificate ("auth").
    let creds = h.admin_credentials().await.unwrap();
    let tls =
        creds.client_config(ferry_tls::Expect::Identity(ferry_tls::Identity::Machine("machine-c".into()))).unwrap();
    let nm_client = reqwest::Client::builder().pool_max_idle_per_host(0).use_preconfigured_tls(tls).build().unwrap();
    for (method, url, auth, ctype, body, want) in cases {
        let to_nm = url.starts_with(&nm);
        let mut req = if to_nm { &nm_client } else { &client }.request(method.parse().unwrap(), &url);
        match auth {
            Auth::None | Auth::Cert => {}
            Auth::Secret => req = req.bearer_auth(&secret),
            Auth::Token => req = req.bearer_auth(&token),
        }
        if !ctype.is_empty() {
            req = req.header("content-type", ctype);
        }
        let shown = format!("{method} {} ({} bytes)", &url[..url.len().min(90)], body.len());
        let oversized = body.len() > 1024 * 1024;
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            // A server that refuses an oversized body may answer 413 and close while the
            // client is still sending: the client then sees a reset. Both are refusals.
            Err(_) if oversized => continue,
            Err(e) => panic!("{shown}: {}", e.without_url()),
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, want, "{shown}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{shown}: not JSON: {text}"));
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{shown}: no error message: {text}");
        assert!(!text.contains(&secret) && !text.contains(&token), "{shown}: the secret leaked");
    }
    // A connection that sends half a request and stalls does not hold anything up.
    let mut stall = tokio::net::TcpStream::connect(h.nm_addr["machine-c"]).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stall,
        b"POST /nm/v1/servers/ms2/stop HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = h.status().await.unwrap();
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(
            (a.state.as_str(), &a.machine, a.epoch, a.pid),
            (b.state.as_str(), &b.machine, b.epoch, b.pid),
            "nothing changed"
        );
    }
    drop(stall);
    assert_safe(&h).await;
}

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
                e.kind == "start-failed"
                    && e.machine.as_deref() == Some("machine-d")
                    && e.message.contains("is in use on")
            });
            let b = ev.iter().any(|e| {
                e.kind == "start-failed"
                    && e.machine.as_deref() == Some("machine-b")
                    && e.message.contains("did not finish within 300 ms")
            });
            d && b
        })
    })
    .await
    .unwrap();
    let ms2 = h.status().await.unwrap().into_iter().find(|s| s.name == "ms2").unwrap();
    assert_ne!(ms2.state, "RUNNING", "ms2 runs nowhere while every hook fails: {ms2:?}");
    let e = nm_d.start("ms2", &NmStart { origin: Origin::Admin, in_place: false }).await.unwrap_err();
    assert!(e.to_string().contains("is in use on"), "{e}");
    // Machine-b's hook is repaired: the master's next circuit starts ms2 there.
    std::fs::write(&hangs_b, "#!/bin/sh\necho ok\n").unwrap();
    assert!(h.who_answers("ms1").await.is_some(), "ms1 was never disturbed");
    let after = h
        .wait_running("ms2", "machine-b", before.epoch.unwrap(), Duration::from_secs(60))
        .await
        .expect("ms2 runs on machine-b");
    assert!(after.epoch > before.epoch);
    let ev = events(&h).await;
    assert!(
        ev.iter().any(|e| e.kind == "backoff" && e.server.as_deref() == Some("ms2")),
        "the master paused between circuits"
    );
    journal_with(&h, "ms2", 2).await;
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
    assert_eq!((after.state.as_str(), after.epoch), ("RUNNING", before.epoch), "the lease stays live");
    // Without its Node Manager, the server renews on its own.
    assert_eq!(h.kill_nm_only("machine-b"), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alone = status_of(&h, "ms2").await;
    assert_eq!(
        (alone.state.as_str(), alone.epoch),
        ("RUNNING", before.epoch),
        "ms2 kept its lease without its Node Manager"
    );
    assert_safe(&h).await;
}

/// `nmEnroll`: a machine gets its certificates for a one-time token the admin printed,
/// never a copy of the CA key. A used, misdirected or tampered token is refused. Revoking a
/// machine makes every other process refuse its certificates (and the servers it issued),
/// while the rest of the domain runs on.
#[tokio::test]
async fn enrollment_by_one_time_token_and_revocation() {
    use std::os::unix::fs::PermissionsExt;
    let _g = SERIAL.lock().await;
    let h = started().await;
    let admin = h.admin();
    let enroll = |machine: &str, dir: &Path, token: &str| {
        std::process::Command::new(exe())
            .args(["--admin", &h.admin_url, "enroll", "--machine", machine, "--data-dir"])
            .arg(dir)
            .env("FERRY_ENROLL_TOKEN", token)
            .output()
            .expect("ferry enroll runs")
    };
    let tok = admin.enroll_token("machine-d").await.unwrap();
    assert!(!format!("{tok:?}").contains(&tok.token), "a token in Debug output");
    let dir = tempfile::tempdir().unwrap();
    let out = enroll("machine-d", dir.path(), &tok.token);
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferry enroll: {said}");
    let pki = dir.path().join("pki");
    for key in ["machine.key", "issuer.key"] {
        let mode = std::fs::metadata(pki.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let creds = ferry_tls::Credentials::load(&pki, "machine").unwrap();
    assert_eq!(creds.identity().unwrap(), ferry_tls::Identity::Machine("machine-d".into()));
    assert!(
        !std::fs::read_to_string(pki.join("machine.pem")).unwrap().contains("PRIVATE"),
        "no key in the certificate file"
    );

    // The same token again (a replay): refused, and nothing is written over.
    let again = tempfile::tempdir().unwrap();
    let out = enroll("machine-d", again.path(), &tok.token);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && said.contains("not valid"), "a used token: {said}");
    assert!(!again.path().join("pki/machine.pem").exists());
    // A token made for machine-d, used for machine-c.
    let tok_d = admin.enroll_token("machine-d").await.unwrap();
    let out = enroll("machine-c", again.path(), &tok_d.token);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && said.contains("another machine"), "a misdirected token: {said}");
    // A token whose CA fingerprint is not this admin's CA (someone in between).
    let (secret_part, _) = tok_d.token.rsplit_once('.').unwrap();
    let out = enroll("machine-d", again.path(), &format!("{secret_part}.00000000000000000000000000000000"));
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && said.contains("fingerprint"), "a tampered token: {said}");
    // Garbage.
    let out = enroll("machine-d", again.path(), "no-dot-here");
    assert!(!out.status.success());
    for o in [&tok.token, &tok_d.token] {
        let events = std::fs::read_to_string(h.dir.join("data/admin/events.jsonl")).unwrap();
        assert!(!events.contains(o.as_str()), "a token in the event log");
    }

    // The new certificate works: machine-c's Node Manager answers it (machines may read).
    let nm_c = h.nm_client_as("machine-c", &creds);
    nm_c.health().await.expect("an enrolled machine's certificate is accepted");

    // Rotation: new keys, asked for with the current certificate (no token).
    let out = std::process::Command::new(exe())
        .args(["--admin", &h.admin_url, "enroll", "--machine", "machine-d", "--rotate", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("ferry enroll --rotate runs");
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferry enroll --rotate: {said}");
    let rotated = ferry_tls::Credentials::load(&pki, "machine").unwrap();
    assert_ne!(rotated.key_pem, creds.key_pem, "a new key");
    assert_ne!(ferry_tls::serial_of(&rotated.chain_pem).unwrap(), ferry_tls::serial_of(&creds.chain_pem).unwrap());
    h.nm_client_as("machine-c", &rotated).health().await.expect("the rotated certificate is accepted");
    // Without a certificate, or with machine-c's for machine-d: refused.
    let anon = ferry_api::AdminClient::new(&h.admin_url, Duration::from_secs(5));
    let req = ferry_api::EnrollRequest {
        machine: "machine-d".into(),
        token: String::new(),
        leaf_csr: String::new(),
        issuer_csr: String::new(),
    };
    assert_eq!(anon.rotate(&req).await.unwrap_err().status(), Some(401));
    let machine_c = ferry_tls::Credentials::load(&h.dir.join("data/nm-machine-c/pki"), "machine").unwrap();
    let as_c = ferry_api::AdminClient::with_tls(&h.admin_url, &machine_c, Duration::from_secs(5));
    assert_eq!(as_c.rotate(&req).await.unwrap_err().status(), Some(403));

    // A connection made before the revocation (kept in the client's pool).
    let live = h.nm_client_as("machine-c", &rotated);
    live.health().await.expect("before the revocation");
    // Revocation: every certificate of machine-d, the harness's Node Manager's included.
    let r = admin.revoke_machine("machine-d").await.unwrap();
    wait_until(PATIENCE, "machine-c's Node Manager to refuse the open connection of revoked machine-d", || async {
        live.health().await.is_err_and(|e| e.status() == Some(403))
    })
    .await
    .unwrap();
    assert!(r.serials.len() >= 4, "two enrollments, two certificates each: {r:?}");
    wait_until(PATIENCE, "machine-c's Node Manager to refuse revoked machine-d", || async {
        h.nm_client_as("machine-c", &creds).health().await.is_err()
    })
    .await
    .unwrap();
    // A server certificate machine-d's issuing key signed is refused too.
    let ms9 = h.server_credentials("machine-d", "ms1").unwrap();
    let e = h.nm_client_as("machine-c", &ms9).health().await.unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    // The admin no longer talks to machine-d's Node Manager, and says why it cannot.
    wait_until(PATIENCE, "the admin to see machine-d as unreachable", || async {
        admin.machines().await.map(|ms| ms.iter().any(|m| m.name == "machine-d" && !m.reachable)).unwrap_or(false)
    })
    .await
    .unwrap();
    // The rest of the domain runs on.
    h.wait_running("ms1", "machine-b", 0, PATIENCE).await.unwrap();
    h.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();
    let events = admin.events(0).await.unwrap();
    assert!(
        events.iter().any(|e| e.kind == "machine-revoked" && e.by.as_deref() == Some("admin")),
        "the revocation is in the event log, with the token that made it"
    );
}

/// The fuzz target of every HTTP request body, as a property test against the real
/// daemons: random bytes, random JSON and mutations of valid bodies, to every route of the
/// admin and of a Node Manager (over mutual TLS) that takes a body. Each answer is a 2xx or
/// a 4xx with a JSON `error`, never a 5xx or a dropped connection; afterwards the daemons
/// answer and the servers run as before. `FERRY_FUZZ_CASES` sets the number of requests.
#[tokio::test]
async fn every_http_body_survives_random_input() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    let _g = SERIAL.lock().await;
    let h = started().await;
    let before: Vec<(String, Option<i32>, Option<u64>)> =
        h.status().await.unwrap().into_iter().map(|s| (s.name, s.pid, s.epoch)).collect();
    let version = h.admin().domain().await.unwrap().version;
    let secret = h.secret().await.unwrap();
    let creds = h.admin_credentials().await.unwrap();
    let nm_tls =
        creds.client_config(ferry_tls::Expect::Identity(ferry_tls::Identity::Machine("machine-c".into()))).unwrap();
    let plain = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let nm_client = reqwest::Client::builder().pool_max_idle_per_host(0).use_preconfigured_tls(nm_tls).build().unwrap();
    let (admin, nm) = (h.admin_url.clone(), format!("https://{}", h.nm_addr["machine-c"]));
    // Routes that take a body. Names that exist nowhere, so a body that happens to be valid
    // changes nothing (ms2's own routes get bodies that cannot name a target).
    let routes: Vec<(&str, String, bool)> = vec![
        ("POST", format!("{admin}/api/v1/servers/nosuch/migrate"), false),
        ("POST", format!("{admin}/api/v1/servers/ms2/migrate"), false),
        ("POST", format!("{admin}/api/v1/servers/nosuch/stop"), false),
        ("POST", format!("{admin}/api/v1/servers/nosuch/start"), false),
        ("POST", format!("{admin}/api/v1/clusters/nosuch/start"), false),
        ("PUT", format!("{admin}/api/v1/domain"), false),
        ("POST", format!("{admin}/api/v1/events"), false),
        ("POST", format!("{admin}/api/v1/enroll"), false),
        ("POST", format!("{admin}/api/v1/tokens"), false),
        ("POST", format!("{nm}/nm/v1/servers/nosuch/start"), true),
        ("POST", format!("{nm}/nm/v1/servers/nosuch/stop"), true),
        ("POST", format!("{nm}/nm/v1/servers/ms2/start"), true),
    ];
    let valid = [
        r#"{"to":"machine-x"}"#,
        r#"{"force":true}"#,
        r#"{"name":"fuzz","role":"monitor","ttl_ms":1000}"#,
        r#"{"origin":{"kind":"admin"},"in_place":false}"#,
        r#"{"origin":{"kind":"master","cluster":"cluster-1","epoch":1,"server":"ms1"}}"#,
        r#"{"machine":"machine-d","token":"x.y","leaf_csr":"-----BEGIN CERTIFICATE REQUEST-----\nAA==\n-----END CERTIFICATE REQUEST-----","issuer_csr":""}"#,
        r#"[{"id":0,"at_ms":1,"source":"x","kind":"k","message":"m"}]"#,
        r#"{"domain":{"name":"d"}}"#,
    ];
    let json = prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned());
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)),
        ".{0,40}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("x".repeat(70_000))),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    // Mutations of the valid bodies: one field's value replaced by a random one.
    let mutated = (0..valid.len(), value.clone(), 0usize..8).prop_map(move |(i, v, k)| {
        let mut body: serde_json::Value = serde_json::from_str(valid[i]).unwrap();
        let target = if let Some(a) = body.as_array_mut() { a.get_mut(0) } else { Some(&mut body) };
        if let Some(serde_json::Value::Object(map)) = target {
            let keys: Vec<String> = map.keys().cloned().collect();
            if !keys.is_empty() {
                map.insert(keys[k % keys.len()].clone(), v);
            }
        }
        body.to_string()
    });
    let body = prop_oneof![json, value.prop_map(|v| v.to_string()), mutated];
    let case = (0..routes.len(), body, any::<bool>());
    let cases = std::env::var("FERRY_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400u32);
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut by_status = std::collections::BTreeMap::<u16, u32>::new();
    for n in 0..cases {
        let (route, body, json_type) = case.new_tree(&mut runner).unwrap().current();
        let (method, url, to_nm) = &routes[route];
        let client = if *to_nm { &nm_client } else { &plain };
        let mut req = client.request(method.parse().unwrap(), url).body(body.clone());
        if json_type {
            req = req.header("content-type", "application/json");
        }
        // The admin's routes with its Admin token, so the body is what gets checked.
        if url.ends_with("/events") {
            req = req.bearer_auth(&secret);
        } else if !*to_nm {
            req = req.bearer_auth(h.admin_token());
        }
        let shown = format!("case {n}: {method} {url} {:?}", &body.chars().take(200).collect::<String>());
        let resp = match req.send().await {
            Ok(r) => r,
            // Over a body limit (64 KiB at a Node Manager) a daemon may answer 413 and close
            // while the client still sends: the client sees a reset. A refusal too.
            Err(_) if body.len() > 64 * 1024 => {
                *by_status.entry(413).or_default() += 1;
                continue;
            }
            Err(e) => panic!("{shown}: no answer: {e}"),
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        *by_status.entry(status).or_default() += 1;
        assert!(status < 500, "{shown}: {status} {text}");
        if status >= 400 {
            let v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|_| panic!("{shown}: not JSON: {text}"));
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{shown}: no error message: {text}");
        }
        assert!(!text.contains(&secret) && !text.contains(h.admin_token()), "{shown}: the secret leaked");
    }
    eprintln!("{cases} random bodies; answers by status: {by_status:?}");
    // Everything still runs, untouched.
    h.nm_client("machine-c", Duration::from_secs(2)).await.unwrap().health().await.expect("the Node Manager answers");
    let after: Vec<(String, Option<i32>, Option<u64>)> =
        h.status().await.unwrap().into_iter().map(|s| (s.name, s.pid, s.epoch)).collect();
    assert_eq!(before, after, "the servers were disturbed");
    assert_eq!(h.admin().domain().await.unwrap().version, version, "a random body changed the configuration");
}

/// Servers' certificates are short-lived: a server asks its Node Manager for a fresh one at
/// half its life, over the local channel, and as cluster master keeps commanding Node
/// Managers with it. Here a certificate lives 6 s (a week in production).
#[tokio::test]
async fn servers_refresh_their_short_lived_certificates_and_the_master_still_commands() {
    let _g = SERIAL.lock().await;
    let mut s = spec();
    s.env.push(("FERRY_SERVER_CERT_SECONDS".into(), "6".into()));
    let h = Harness::start(s, exe(), None).await.expect("domain starts");
    h.admin().start_cluster("cluster-1").await.unwrap();
    h.wait_running("ms1", "machine-b", 0, PATIENCE).await.unwrap();
    h.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();
    // Three lifetimes: every certificate the servers started with has expired by then.
    let log = h.dir.join("data/nm-machine-b/servers/ms1/server.log");
    wait_until(Duration::from_secs(60), "ms1 to take its third fresh certificate", || async {
        std::fs::read_to_string(&log).map(|t| t.matches("a fresh certificate").count() >= 3).unwrap_or(false)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(&log).unwrap_or_default()));
    // The master (ms1) still commands: machine-c dies, ms2 comes back on machine-d.
    h.kill_machine("machine-c");
    h.wait_running("ms2", "machine-d", 0, PATIENCE).await.expect("the master moved ms2 with a fresh certificate");
}

/// A Node Manager on another host, started with `--admin-url` and the domain secret but no
/// domain file and no CA certificate: it fetches the CA and accepts it only with the admin's
/// proof that it knows the secret (an HMAC over a fresh nonce), then enrolls. With a wrong
/// secret it stops with a clear error and sends nothing the impostor could use.
#[tokio::test]
async fn a_node_manager_with_only_the_secret_and_the_admin_url_enrolls_safely() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let secret = h.secret().await.unwrap();
    h.kill_machine("machine-d");
    let dir = tempfile::tempdir().unwrap();
    let run = |secret: &str, data: &Path| {
        std::process::Command::new(exe())
            .args(["nodemanager", "--machine", "machine-d", "--admin-url", &h.admin_url, "--data-dir"])
            .arg(data)
            .env("FERRY_SECRET", secret)
            .env("FERRY_CONFIG_DIR", h.dir.join("cfg"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ferry nodemanager starts")
    };
    // A wrong secret: the admin's proof does not check out; the Node Manager stops.
    let wrong = tempfile::tempdir().unwrap();
    let out = run("not-the-secret", wrong.path()).wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "a Node Manager with a wrong secret kept running: {said}");
    assert!(said.contains("could not prove it knows this domain's secret"), "{said}");
    assert!(!wrong.path().join("pki/machine.pem").exists());
    // The right one: enrolled, serving, reachable by the admin's certificate.
    let mut nm = run(&secret, dir.path());
    let client = h.nm_client("machine-d", Duration::from_secs(2)).await.unwrap();
    let up =
        wait_until(PATIENCE, "the Node Manager of machine-d to answer", || async { client.health().await.is_ok() })
            .await;
    let _ = nm.kill();
    let _ = nm.wait();
    up.unwrap();
    let creds = ferry_tls::Credentials::load(&dir.path().join("pki"), "machine").unwrap();
    assert_eq!(creds.identity().unwrap(), ferry_tls::Identity::Machine("machine-d".into()));
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
        if o.state != "running" {
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
    assert_eq!(op.state, "succeeded", "{op:?}");
    let on_d = h.wait_running("ms2", "machine-d", on_c.epoch.unwrap(), PATIENCE).await.unwrap();
    assert_eq!(owner("198.18.1.102").as_deref(), Some("machine-d"));
    let ev = events(&h).await;
    let ms2 = |e: &&ferry_api::Event| e.server.as_deref() == Some("ms2");
    assert!(
        !ev.iter().filter(ms2).any(|e| e.kind == "address-in-use"),
        "machine-d never saw the address still on machine-c: {:#?}",
        ev.iter().filter(ms2).filter(|e| e.kind == "address-in-use").collect::<Vec<_>>()
    );
    let removed = ev.iter().filter(ms2).find(|e| e.kind == "removeif" && e.machine.as_deref() == Some("machine-c"));
    let stopped = ev.iter().filter(ms2).find(|e| e.kind == "nm-stopped");
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
    assert_eq!(op.state, "succeeded", "{op:?}");
    let back_on_c = h.wait_running("ms2", "machine-c", on_d.epoch.unwrap(), PATIENCE).await.unwrap();

    // 3. A target that never gets the address: the migration rolls back, ms2 runs again on c.
    std::fs::write(state.join("block-machine-b"), "").unwrap();
    let op = finished(&h, admin.migrate("ms2", "machine-b").await.unwrap()).await;
    assert_eq!(op.state, "failed", "{op:?}");
    let error = op.error.clone().unwrap_or_default();
    assert!(error.contains("migration to machine-b failed") && error.contains("rolled back"), "{error}");
    let rolled = h.wait_running("ms2", "machine-c", back_on_c.epoch.unwrap(), PATIENCE).await.unwrap();
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
            .is_ok_and(|ev| ev.iter().any(|e| e.kind == "address-in-use" && e.server.as_deref() == Some("ms2")))
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
            .is_ok_and(|ev| ev.iter().any(|e| e.kind == "leftover" && e.server.as_deref() == Some("ms2")))
    })
    .await
    .unwrap();
    let until = ferry_host::clock::now() + Duration::from_secs(60);
    let after = loop {
        let s = status_of(&h, "ms2").await;
        if s.state == "RUNNING" && s.epoch > before.epoch {
            break s;
        }
        assert!(ferry_host::clock::now() < until, "ms2 never ran again: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(owner("198.18.1.102"), after.machine, "the address is where ms2 runs");
    // ms1 still runs on machine-b, with its address: a Node Manager restart there keeps it.
    h.kill_nm_only("machine-b");
    h.start_nm("machine-b").await.unwrap();
    assert_eq!(owner("198.18.1.101").as_deref(), Some("machine-b"));
    assert!(
        !events(&h).await.iter().any(|e| e.kind == "leftover" && e.server.as_deref() == Some("ms1")),
        "ms1 still runs: its address is not a leftover"
    );
    journal_with(&h, "ms2", 2).await;
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
        if s.state == "RUNNING" && s.epoch > before.epoch {
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
        ms2.iter().any(|e| e.kind == "not-restarting" && e.message.contains("cluster master ms1")),
        "the Node Manager gave way to the master: {ms2:#?}"
    );
    assert!(ms2.iter().any(|e| e.kind == "restart-in-place" && e.source.starts_with("server/")), "{ms2:#?}");
    assert!(!ms2.iter().any(|e| e.kind == "restart-after-fence"), "{ms2:#?}");
    journal_with(&h, "ms2", 2).await;
}

/// Every `*.log` file under `dir`, at any depth.
fn log_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "log") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Logs written to files (the admin's and Node Managers' stderr, the servers' logs their
/// Node Managers keep) are plain text: colour codes only on a terminal.
#[tokio::test]
async fn logs_written_to_files_have_no_colour_codes() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let files = log_files(&h.dir);
    let names: Vec<String> = files.iter().map(|p| p.strip_prefix(&h.dir).unwrap_or(p).display().to_string()).collect();
    for want in ["logs/admin.log", "logs/nm-machine-b.log", "logs/nm-machine-c.log"] {
        assert!(names.iter().any(|n| n == want), "no {want} among {names:?}");
    }
    assert!(names.iter().any(|n| n.ends_with("server.log")), "no server log among {names:?}");
    for f in &files {
        let text = std::fs::read(f).unwrap();
        assert!(!text.windows(2).any(|w| w == b"\x1b["), "{} holds ANSI escape codes", f.display());
    }
    // A Node Manager says how it really reached the admin: over TLS (item 10).
    let nm_log = std::fs::read_to_string(h.dir.join("logs/nm-machine-b.log")).unwrap();
    let enrolled =
        nm_log.lines().find(|l| l.contains("enrolled with the Administration Server at")).unwrap_or_default();
    assert!(enrolled.contains(" at https://127.0.0.1:"), "{enrolled}");
}

/// Names are checked by the client before any call (exit 2 with the reason), so a name can
/// never reach another endpoint: the admin named here does not exist, and an attempt to
/// call it would end in exit 3.
#[test]
fn names_are_checked_before_any_call() {
    let cfg = tempfile::tempdir().unwrap();
    for (args, want) in [
        (&["stop", "../../etc"][..], "invalid server name \"../../etc\": must start with a letter or digit"),
        (
            &["start", "ms1/start"][..],
            "invalid server name \"ms1/start\": may hold only letters, digits, '-', '_' and '.'",
        ),
        (&["migrate", "ms1", "--to", "machine-b/../x"][..], "invalid machine name \"machine-b/../x\""),
        (&["migrate", "..", "--to", "machine-b"][..], "invalid server name \"..\""),
        (&["start-cluster", "cluster 1"][..], "invalid cluster name \"cluster 1\""),
        (&["machine", "revoke", "m%2F1"][..], "invalid machine name \"m%2F1\""),
        (&["machine", "enroll-token", ""][..], "invalid machine name \"\": must not be empty"),
    ] {
        let out = ferry_cli("http://127.0.0.1:1", cfg.path(), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "ferry {args:?}: {err}");
        assert!(err.contains(want), "ferry {args:?} said {err}");
    }
}

/// `ferry ARGS` with its stdout a pipe: `keep` bytes are read, then the pipe is closed while
/// it still writes. Its exit status and stderr.
fn ferry_cli_closed_pipe(h: &Harness, args: &[&str], keep: usize) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(exe())
        .args(args)
        .env("FERRY_ADMIN", &h.admin_url)
        .env("FERRY_CONFIG_DIR", h.client_config_dir())
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_TOKEN_FILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ferry runs");
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; keep];
    stdout.read_exact(&mut buf).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// Posts `n` events as a daemon does (with the domain secret).
async fn post_events(h: &Harness, n: usize) {
    let admin = ferry_api::AdminClient::with_secret(&h.admin_url, &h.secret().await.unwrap(), PATIENCE);
    let batch = |i0: usize, k: usize| -> Vec<ferry_api::Event> {
        (i0..i0 + k)
            .map(|i| ferry_api::Event {
                id: 0,
                at_ms: 1,
                source: "test".into(),
                kind: "load".into(),
                server: None,
                machine: None,
                epoch: None,
                message: format!("event {i}"),
                by: None,
            })
            .collect()
    };
    for i0 in (0..n).step_by(1_000) {
        admin.post_events(&batch(i0, (n - i0).min(1_000))).await.unwrap();
    }
}

/// `ferry events` pages through the whole log (more than one page of the API, more than
/// its old cap of 10,000); `-o json` is one JSON array and `-o jsonl` one object per line;
/// `--since` and `--limit` page by hand, and when it stops short, or the admin no longer
/// holds the oldest events, stderr says what was left out and how to get it. No command
/// panics when its reader closes the pipe.
#[tokio::test]
async fn events_page_through_everything_and_a_closed_pipe_ends_no_command_badly() {
    let _g = SERIAL.lock().await;
    let h = Harness::start(spec(), exe(), None).await.expect("domain starts");
    let (url, cfg) = (h.admin_url.clone(), h.client_config_dir());
    post_events(&h, 10_500).await;
    let newest = h.admin().events_page(0, 1).await.unwrap().newest_id;
    assert!(newest > 10_500, "{newest}");

    let out = ferry_cli(&url, &cfg, &["events", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let all: Vec<ferry_api::Event> = serde_json::from_slice(&out.stdout).expect("events -o json is one JSON array");
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), (1..=newest).collect::<Vec<_>>());
    let out = ferry_cli(&url, &cfg, &["events", "-o", "jsonl"]);
    let lines: Vec<ferry_api::Event> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(lines, all);
    let out = ferry_cli(&url, &cfg, &["events"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count() as u64, newest);

    // By hand: a limit says what remains and how to get it; --since goes on from there.
    let out = ferry_cli(&url, &cfg, &["events", "-o", "json", "--since", "100", "--limit", "2500"]);
    let some: Vec<ferry_api::Event> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(some.iter().map(|e| e.id).collect::<Vec<_>>(), (101..=2600).collect::<Vec<_>>());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!(
            "ferry: showed 2500 events (the --limit); events 2601 to {newest} remain: `ferry events --since 2600` shows them"
        )
    );
    let out = ferry_cli(&url, &cfg, &["events", "-o", "json", "--since", "2600"]);
    let rest: Vec<ferry_api::Event> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rest.first().map(|e| e.id), Some(2601));
    assert_eq!(rest.last().map(|e| e.id), Some(newest));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let out = ferry_cli(&url, &cfg, &["events", "-o", "json", "--since", &newest.to_string()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[]\n");
    let out = ferry_cli(&url, &cfg, &["events", "--follow", "-o", "json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use -o jsonl"));

    // A reader that stops early: no panic, a clean exit.
    let (code, err) = ferry_cli_closed_pipe(&h, &["events", "-o", "json"], 100);
    assert_eq!((code, err.as_str()), (Some(0), ""), "ferry events -o json | head -c 100");
    let (code, err) = ferry_cli_closed_pipe(&h, &["events"], 100);
    assert_eq!((code, err.as_str()), (Some(0), ""), "ferry events | head -c 100");
    for args in
        [&["status"][..], &["status", "-o", "json"], &["machines"], &["leases", "-o", "json"], &["token", "list"]]
    {
        let (code, err) = ferry_cli_closed_pipe(&h, args, 1);
        assert_eq!((code, err.as_str()), (Some(0), ""), "ferry {args:?} | head -c 1");
    }

    // Past what the admin keeps in memory: the oldest are named, and where they are.
    post_events(&h, 10_500).await;
    let page = h.admin().events_page(0, 1).await.unwrap();
    let (oldest, newest) = (page.oldest_id.unwrap(), page.newest_id);
    assert_eq!(newest - oldest + 1, ferry_api::EVENTS_KEPT as u64);
    let out = ferry_cli(&url, &cfg, &["events", "-o", "json"]);
    let kept: Vec<ferry_api::Event> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(kept.iter().map(|e| e.id).collect::<Vec<_>>(), (oldest..=newest).collect::<Vec<_>>());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!(
            "ferry: events 1 to {} are no longer held by the Administration Server (it keeps the newest 20000); they are in events.jsonl in its data directory",
            oldest - 1
        )
    );
    let log = std::fs::read_to_string(h.dir.join("data/admin/events.jsonl")).unwrap();
    assert_eq!(log.lines().count() as u64, newest, "every event is in events.jsonl");
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
    assert!(servers.iter().all(|s| !s.view_stale && s.state == "RUNNING"), "{servers:?}");

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
    let fenced: Vec<_> = ev.iter().filter(|e| e.kind == "fenced" || e.kind == "server-exited").collect();
    assert!(fenced.is_empty(), "nobody was fenced: {fenced:#?}");
    assert_eq!((after.epoch, after.machine.as_deref()), (before.epoch, Some("machine-c")), "{after:?}");
    assert_safe(&h).await;
}
