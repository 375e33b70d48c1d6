//! The lab does what it promises, checked from inside its own namespaces: it builds and
//! removes itself without a trace (also after a panic, also after a dead process), its
//! machines reach each other, programs run where they should, and every fault (crash,
//! freeze, the three partitions) cuts exactly what it says and heals again. (PostgreSQL in
//! the lab is ferry-testkit's: its tests check the machines reach it.)
//!
//! These tests need root and `ip`; some need more tools. Without them they print why they did
//! not run and pass, except under `CI=true`, where they fail.

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use ferry_lab::{or_skip, require, Freezer, Lab, LabSpec};

const PROBE: &str = env!("CARGO_BIN_EXE_ferry-lab-probe");
/// The port every probe listener uses.
const PORT: u16 = 7000;
/// How long a connection may take before we call the peer unreachable.
const UNREACHABLE_AFTER: Duration = Duration::from_millis(400);

type Result<T = ()> = anyhow::Result<T>;

/// A lab with `machines` and a client, or `None` (printed) when a prerequisite is missing.
async fn lab(machines: &[&str], tools: &[&str]) -> Option<Lab> {
    or_skip(require(tools))?;
    Lab::up_or_skip(LabSpec::new(machines)).await
}

/// Starts a listener on `node`:7000 that greets with the node's name; waits until it answers.
async fn serve(lab: &Lab, node: &str) -> Result<tokio::process::Child> {
    let log = lab.state_dir().join(format!("probe-{node}.log"));
    let listen = format!("0.0.0.0:{PORT}");
    let child = lab.spawn(node, PROBE, &["listen", &listen, node], &[], &log)?;
    for _ in 0..300 {
        if answers(lab, node, node).await? {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("the probe listener on {node} did not come up")
}

/// Whether `to`'s listener answers a TCP connection from `from` (and it is really `to`).
async fn answers(lab: &Lab, from: &str, to: &str) -> Result<bool> {
    let addr = SocketAddrV4::new(lab.addr(to)?, PORT);
    match lab.connect(from, addr, UNREACHABLE_AFTER).await? {
        None => Ok(false),
        Some(greeting) if greeting.trim() == to => Ok(true),
        Some(other) => bail!("{from} -> {to} ({addr}) was answered by {other:?}"),
    }
}

/// Asserts each `(from, to, reachable)` over TCP.
async fn expect_reach(lab: &Lab, cases: &[(&str, &str, bool)]) -> Result {
    for (from, to, want) in cases {
        let got = answers(lab, from, to).await?;
        ensure!(
            got == *want,
            "{from} -> {to}: expected {}, got {}",
            if *want { "reachable" } else { "unreachable" },
            if got { "reachable" } else { "unreachable" }
        );
    }
    Ok(())
}

/// Polls `check` every 20 ms for up to `within`.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> Result<bool>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let rounds = within.as_millis() / 20 + 1;
    for _ in 0..rounds {
        if check().await? {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(false)
}

/// The names of the network namespaces that start with `prefix`.
fn namespaces_with(prefix: &str) -> Result<Vec<String>> {
    let out = std::process::Command::new("ip").args(["netns", "list"]).output().context("ip netns list")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect())
}

/// Link names in the root namespace (read only).
fn root_links() -> Result<Vec<String>> {
    let out = std::process::Command::new("ip").args(["-o", "link", "show"]).output().context("ip -o link show")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect())
}

fn counter(file: &Path) -> u64 {
    std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

#[allow(clippy::disallowed_methods)] // reason: measures how long the lab takes, for the test log
fn stopwatch() -> std::time::Instant {
    std::time::Instant::now()
}

#[tokio::test]
async fn invalid_specs_are_refused_before_anything_is_built() {
    for (machines, why) in [
        (vec!["sw"], "reserved"),
        (vec!["Upper"], "lowercase"),
        (vec!["name-too-long"], "15 characters"),
        (vec!["a", "a"], "twice"),
    ] {
        let spec = LabSpec { machines: machines.iter().map(|m| m.to_string()).collect(), ..LabSpec::default() };
        let e = Lab::up(spec).await.expect_err("an invalid spec must be refused");
        assert!(e.to_string().contains(why), "{e}");
    }
    let bad_tag = LabSpec { prefix: "a-b".into(), ..LabSpec::new(&["a"]) };
    assert!(Lab::up(bad_tag).await.is_err());
    let prefix = format!("fl-{}-", std::process::id());
    // Nothing of this process's labs exists beyond those of tests running right now, and
    // none of those is named after the refused machines.
    for ns in namespaces_with(&prefix).unwrap() {
        assert!(!ns.ends_with("-Upper") && !ns.ends_with("-name-too-long"), "{ns}");
    }
}

#[tokio::test]
async fn up_and_down_leave_nothing_behind() -> Result {
    let before = root_links()?;
    let started = stopwatch();
    let Some(lab) = lab(&["a", "b"], &[]).await else {
        return Ok(());
    };
    let up_ms = started.elapsed().as_millis();
    let prefix = lab.prefix().to_string();
    let mut found = namespaces_with(&prefix)?;
    found.sort();
    let mut want: Vec<String> = ["a", "b", "client", "sw"].iter().map(|n| format!("{prefix}{n}")).collect();
    want.sort();
    assert_eq!(found, want);
    assert_eq!(lab.addr("a")?.to_string(), "198.18.1.11");
    assert_eq!(lab.addr("b")?.to_string(), "198.18.1.12");
    assert_eq!(lab.addresses("client").await?, vec!["198.18.1.2/24"]);
    assert_eq!(lab.addresses("sw").await?, vec!["198.18.1.1/24"]);
    // IPv4 only: no link-local IPv6 addresses either.
    let v6 = lab.exec("a", &["ip", "-6", "-o", "addr"]).await?;
    assert!(v6.trim().is_empty(), "IPv6 addresses in a machine: {v6}");
    // Nothing of the lab in the root namespace.
    let during = root_links()?;
    for name in &during {
        assert!(
            before.contains(name) || !(name.starts_with("sw-") || name == "br0" || name == "eth0"),
            "lab link {name} appeared in the root namespace"
        );
    }
    let root_addrs =
        String::from_utf8_lossy(&std::process::Command::new("ip").args(["-o", "-4", "addr"]).output()?.stdout)
            .into_owned();
    assert!(!root_addrs.contains("198.18.1."), "{root_addrs}");
    let cgroup = lab.cgroup("a")?;
    let state_dir = lab.state_dir().to_path_buf();
    assert!(state_dir.is_dir());
    let mut sleeper = lab.spawn("a", "sleep", &["1000"], &[], &state_dir.join("sleep.log"))?;

    let started = stopwatch();
    lab.down()?;
    let down_ms = started.elapsed().as_millis();
    eprintln!("lab up {up_ms} ms, down {down_ms} ms");
    assert_eq!(namespaces_with(&prefix)?, Vec::<String>::new());
    let status = tokio::time::timeout(Duration::from_secs(5), sleeper.wait()).await??;
    assert!(!status.success(), "the process in the lab must have been killed");
    if let Some(cg) = cgroup {
        assert!(!cg.exists(), "{} survived", cg.display());
    }
    assert!(!state_dir.exists(), "{} survived", state_dir.display());
    Ok(())
}

#[test]
fn a_panicking_test_still_removes_its_lab() -> Result {
    if or_skip(require(&["ip"])).is_none() {
        return Ok(());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let Some(lab) = Lab::up_or_skip(LabSpec::new(&["a"])).await else {
                let _ = tx.send(None);
                return;
            };
            let log = lab.state_dir().join("sleep.log");
            let child = lab.spawn("a", "sleep", &["1000"], &[], &log).expect("spawn");
            let _ = tx.send(Some((lab.prefix().to_string(), child.id())));
            panic!("a test fails while its lab is up");
        });
    });
    assert!(thread.join().is_err(), "the thread was meant to panic");
    let Some((prefix, pid)) = rx.recv()? else {
        return Ok(());
    };
    assert_eq!(namespaces_with(&prefix)?, Vec::<String>::new());
    if let Some(pid) = pid {
        // Killed; at most a zombie until the runtime's orphan reaper collects it.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(state.is_empty() || state.contains(") Z"), "process {pid} survived: {state}");
    }
    Ok(())
}

#[tokio::test]
async fn stale_labs_of_dead_processes_are_removed() -> Result {
    let Some(live) = lab(&["a"], &[]).await else {
        return Ok(());
    };
    // A lab left by a dead process: a namespace with a process in it, and a state directory
    // whose owner file says which process made it (the start time cannot match any process).
    let dead_pid = {
        let mut child = std::process::Command::new("true").spawn()?;
        let pid = child.id();
        child.wait()?;
        pid
    };
    let stale = format!("flst-{dead_pid}-0-");
    let ns = format!("{stale}a");
    let ok = std::process::Command::new("ip").args(["netns", "add", &ns]).status()?;
    ensure!(ok.success(), "ip netns add {ns}");
    let mut orphan = std::process::Command::new("ip").args(["netns", "exec", &ns, "sleep", "1000"]).spawn()?;
    let state_dir = std::env::temp_dir().join("ferry-lab").join(&stale);
    std::fs::create_dir_all(&state_dir)?;
    let pid_ns = std::fs::read_link("/proc/self/ns/pid")?;
    std::fs::write(state_dir.join("owner"), format!("{dead_pid} 1 {}\n", pid_ns.display()))?;
    // Wait until the orphan runs inside the namespace.
    for _ in 0..300 {
        let pids = std::process::Command::new("ip").args(["netns", "pids", &ns]).output()?;
        if !pids.stdout.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let removed = ferry_lab::cleanup_stale("flst")?;
    assert_eq!(removed, vec![stale.clone()]);
    assert_eq!(namespaces_with(&stale)?, Vec::<String>::new());
    assert!(!state_dir.exists());
    let status = orphan.wait()?;
    assert!(!status.success(), "the stale lab's process must be killed");
    // Labs of live processes (this one) are left alone.
    ferry_lab::cleanup_stale("fl")?;
    assert_eq!(namespaces_with(live.prefix())?.len(), 3);
    Ok(())
}

#[tokio::test]
async fn the_client_reaches_every_machine_and_machines_reach_each_other() -> Result {
    let Some(lab) = lab(&["a", "b", "c"], &["ping"]).await else {
        return Ok(());
    };
    for m in ["a", "b", "c"] {
        assert!(lab.ping("client", lab.addr(m)?).await?, "client -> {m}");
    }
    assert!(lab.ping("a", lab.addr("c")?).await?, "a -> c");
    assert!(lab.ping("c", lab.switch_addr()).await?, "c -> switch");
    assert!(lab.ping("sw", lab.client_addr()).await?, "switch -> client");
    // Nothing beyond the lab: no default route, so other addresses are not even tried.
    let out = lab.run("a", &["ping", "-c", "1", "-W", "1", "192.0.2.1"]).await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"), "{}", String::from_utf8_lossy(&out.stderr));
    lab.down()?;
    Ok(())
}

#[tokio::test]
async fn spawned_programs_run_inside_their_machine() -> Result {
    let Some(lab) = lab(&["a", "b"], &[]).await else {
        return Ok(());
    };
    let log = lab.state_dir().join("a.log");
    let mut child = lab.spawn(
        "a",
        "sh",
        &["-c", "echo \"$GREETING\"; ip -o -4 addr show dev eth0; exec sleep 1000"],
        &[("GREETING", "hello from a")],
        &log,
    )?;
    let pid = i32::try_from(child.id().context("pid")?)?;
    let inside =
        eventually(Duration::from_secs(5), || async { Ok(std::fs::read_to_string(&log)?.contains("198.18.1.11/24")) })
            .await?;
    let text = std::fs::read_to_string(&log)?;
    assert!(inside, "the program did not see a's address: {text}");
    assert!(text.starts_with("hello from a\n"), "{text}");
    assert!(lab.pids("a").await?.contains(&pid));
    assert!(!lab.pids("b").await?.contains(&pid));
    let identify = std::process::Command::new("ip").args(["netns", "identify", &pid.to_string()]).output()?;
    assert_eq!(String::from_utf8_lossy(&identify.stdout).trim(), lab.namespace("a")?);
    match lab.freezer() {
        Freezer::Cgroup { .. } => {
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
            let want = format!("/ferry-lab/{}", lab.namespace("a")?);
            assert!(cgroup.lines().any(|l| l.starts_with("0::") && l.ends_with(&want)), "not in {want}: {cgroup}");
        }
        Freezer::Signals { reason } => eprintln!("no cgroup v2 here ({reason})"),
    }
    child.kill().await?;
    lab.down()?;
    Ok(())
}

#[tokio::test]
async fn crash_kills_everything_and_pulls_the_cable() -> Result {
    let Some(lab) = lab(&["a", "b"], &["ping", "bash", "timeout"]).await else {
        return Ok(());
    };
    let mut server = serve(&lab, "a").await?;
    lab.exec("a", &["ip", "addr", "add", "198.18.1.100/24", "dev", "eth0"]).await?;
    expect_reach(&lab, &[("client", "a", true), ("b", "a", true)]).await?;

    lab.crash("a").await?;
    let status = tokio::time::timeout(Duration::from_secs(5), server.wait()).await??;
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status}");
    assert_eq!(lab.pids("a").await?, Vec::<i32>::new());
    assert!(!lab.ping("client", lab.addr("a")?).await?);
    expect_reach(&lab, &[("client", "a", false), ("b", "a", false)]).await?;
    // Power loss: the floating IP added at run time is gone with the machine's memory.
    assert_eq!(lab.addresses("a").await?, vec!["198.18.1.11/24"]);

    lab.revive("a").await?;
    let a = lab.addr("a")?;
    let pings = eventually(Duration::from_secs(3), || async { Ok(lab.ping("client", a).await?) }).await?;
    assert!(pings, "a does not answer pings after revive");
    // Processes are not restarted: the port is closed (refused, not unreachable).
    assert!(!answers(&lab, "client", "a").await?);

    // A frozen machine crashes too, and after the revive new processes run normally.
    let _b = serve(&lab, "b").await?;
    lab.freeze("b").await?;
    lab.crash("b").await?;
    assert_eq!(lab.pids("b").await?, Vec::<i32>::new());
    assert!(!lab.is_frozen("b").await?);
    lab.revive("b").await?;
    let _b2 = serve(&lab, "b").await?;
    expect_reach(&lab, &[("client", "b", true)]).await?;
    lab.down()?;
    Ok(())
}

async fn freeze_and_thaw(spec: LabSpec) -> Result {
    if or_skip(require(&["bash", "timeout"])).is_none() {
        return Ok(());
    }
    let Some(lab) = Lab::up_or_skip(spec).await else {
        return Ok(());
    };
    let file = lab.state_dir().join("count");
    let log = lab.state_dir().join("count.log");
    let _counter = lab.spawn("a", PROBE, &["count", &file.display().to_string()], &[], &log)?;
    let _server = serve(&lab, "a").await?;
    let file2 = file.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let f = file2.clone();
            async move { Ok(counter(&f) > 3) }
        })
        .await?
    );

    let started = stopwatch();
    lab.freeze("a").await?;
    let freeze_ms = started.elapsed().as_millis();
    let frozen_at = counter(&file);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counter(&file), frozen_at, "the counter ran while frozen");
    // The kernel still completes the handshake; the frozen server never greets.
    let greeting = lab.connect("client", SocketAddrV4::new(lab.addr("a")?, PORT), Duration::from_millis(500)).await?;
    assert_eq!(greeting.as_deref(), Some(""), "a frozen server must accept but not answer");
    assert!(lab.is_frozen("a").await?);

    lab.thaw("a").await?;
    let file3 = file.clone();
    assert!(
        eventually(Duration::from_secs(2), || {
            let f = file3.clone();
            async move { Ok(counter(&f) > frozen_at + 3) }
        })
        .await?,
        "the counter did not resume after thaw"
    );
    expect_reach(&lab, &[("client", "a", true)]).await?;
    eprintln!("freeze ({:?}) took {freeze_ms} ms", lab.freezer());
    lab.down()?;
    Ok(())
}

#[tokio::test]
async fn freeze_stops_a_machine_and_thaw_resumes_it() -> Result {
    freeze_and_thaw(LabSpec::new(&["a"])).await
}

#[tokio::test]
async fn the_signal_freezer_fallback_works_too() -> Result {
    freeze_and_thaw(LabSpec { signal_freezer: true, ..LabSpec::new(&["a"]) }).await
}

#[tokio::test]
async fn a_partitioned_machine_reaches_nobody() -> Result {
    let Some(lab) = lab(&["a", "b"], &["nft", "bash", "timeout"]).await else {
        return Ok(());
    };
    let _servers = [serve(&lab, "a").await?, serve(&lab, "b").await?, serve(&lab, "sw").await?];
    let started = stopwatch();
    lab.partition("a").await?;
    let cut_ms = started.elapsed().as_millis();
    expect_reach(
        &lab,
        &[
            ("a", "b", false),
            ("a", "sw", false),
            ("b", "a", false),
            ("sw", "a", false),
            ("client", "a", false),
            ("b", "sw", true),
            ("client", "b", true),
        ],
    )
    .await?;
    // Links stay up: the machine cannot tell from its interface.
    let link = lab.exec("a", &["ip", "-o", "link", "show", "dev", "eth0"]).await?;
    assert!(link.contains("state UP"), "{link}");

    lab.heal().await?;
    let healed = eventually(Duration::from_secs(3), || async {
        Ok(answers(&lab, "a", "b").await? && answers(&lab, "a", "sw").await? && answers(&lab, "client", "a").await?)
    })
    .await?;
    assert!(healed, "a partitioned machine did not come back after heal");
    eprintln!("partition took {cut_ms} ms");
    lab.down()?;
    Ok(())
}

#[tokio::test]
async fn partition_from_peers_keeps_the_switch() -> Result {
    let Some(lab) = lab(&["a", "b", "c"], &["nft", "bash", "timeout", "arping"]).await else {
        return Ok(());
    };
    let _servers =
        [serve(&lab, "a").await?, serve(&lab, "b").await?, serve(&lab, "c").await?, serve(&lab, "sw").await?];
    lab.partition_from_peers("a").await?;
    expect_reach(
        &lab,
        &[
            ("a", "sw", true),
            ("sw", "a", true),
            ("a", "b", false),
            ("c", "a", false),
            ("b", "c", true),
            ("b", "sw", true),
            ("client", "a", true),
        ],
    )
    .await?;
    // ARP still passes (an asymmetric cut that dropped ARP would also cut a from the switch's
    // neighbours): b resolves a's address.
    let arp = lab.run("b", &["arping", "-c", "1", "-w", "1", "-I", "eth0", "198.18.1.11"]).await?;
    assert!(arp.status.success(), "{}", String::from_utf8_lossy(&arp.stdout));
    lab.heal().await?;
    let healed = eventually(Duration::from_secs(3), || async {
        Ok(answers(&lab, "a", "b").await? && answers(&lab, "c", "a").await?)
    })
    .await?;
    assert!(healed);
    lab.down()?;
    Ok(())
}

#[tokio::test]
async fn partition_from_switch_keeps_the_peers() -> Result {
    let Some(lab) = lab(&["a", "b"], &["nft", "bash", "timeout"]).await else {
        return Ok(());
    };
    let _servers = [serve(&lab, "a").await?, serve(&lab, "b").await?, serve(&lab, "sw").await?];
    lab.partition_from_switch("a").await?;
    expect_reach(
        &lab,
        &[
            ("a", "b", true),
            ("b", "a", true),
            ("client", "a", true),
            ("a", "sw", false),
            ("sw", "a", false),
            ("b", "sw", true),
        ],
    )
    .await?;
    assert_eq!(lab.cuts().await.get("a"), Some(&ferry_lab::Cut::FromSwitch));
    lab.heal().await?;
    assert!(lab.cuts().await.is_empty());
    let healed = eventually(Duration::from_secs(3), || answers(&lab, "a", "sw")).await?;
    assert!(healed);
    lab.down()?;
    Ok(())
}

#[tokio::test]
async fn names_that_are_not_nodes_are_errors() -> Result {
    let Some(lab) = lab(&["a"], &[]).await else {
        return Ok(());
    };
    let e = lab.addr("zz").unwrap_err();
    assert!(e.to_string().contains("not a node"), "{e}");
    let e = lab.crash("sw").await.unwrap_err();
    assert!(e.to_string().contains("switch"), "{e}");
    assert!(lab.spawn("zz", "true", &[] as &[&str], &[], Path::new("/dev/null")).is_err());
    lab.down()?;
    Ok(())
}
