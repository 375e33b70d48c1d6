//! `ferry demo`: the seed's Figures 7-1 (startup), 7-2 (automatic migration after machine C
//! dies) and 7-3 (manual migration, used for failback) played live with real processes on
//! this host, narrated step by step from the domain's own event log, with measured times
//! next to the seed's bound.

use ferry_core::EventKind;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ferry_api::{AdminClient, Event};
use ferry_host::clock;

use ferry_testkit::{check_journal, client_view, probe, DomainSpec, Harness, LabDomain};

const INTERVAL_MS: u64 = 500;
const PERIODS: u32 = 3;
const GRACE_MS: u64 = 1_000;

/// Reads the event log and narrates the events a figure is about.
struct Narrator {
    admin: AdminClient,
    since: u64,
    t0_ms: u64,
}

impl Narrator {
    async fn poll(&mut self) -> Vec<Event> {
        let events = self.admin.events(self.since).await.unwrap_or_default();
        if let Some(e) = events.last() {
            self.since = e.id;
        }
        events
    }

    fn say(&self, at_ms: u64, step: &str, text: &str) {
        let rel = at_ms as i64 - self.t0_ms as i64;
        outln!("  {:>+7.3}s  {step:<5} {text}", rel as f64 / 1000.0);
    }

    /// Narrates events until `done` says the figure is over or `patience` runs out.
    async fn until(
        &mut self,
        patience: Duration,
        mut label: impl FnMut(&Event) -> Option<String>,
        mut done: impl FnMut(&Event) -> bool,
    ) -> anyhow::Result<Vec<Event>> {
        let until = clock::now() + patience;
        let mut seen = Vec::new();
        loop {
            for e in self.poll().await {
                if let Some(step) = label(&e) {
                    self.say(e.at_ms, &step, &e.message);
                }
                let finished = done(&e);
                seen.push(e);
                if finished {
                    return Ok(seen);
                }
            }
            if clock::now() >= until {
                anyhow::bail!("the demo did not see the expected events within {patience:?}; see the logs under the demo directory");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn is(e: &Event, kind: EventKind, server: &str) -> bool {
    e.kind == kind && e.server.as_deref() == Some(server)
}

/// Waits until the service at `server`'s address answers from `machine`; returns the wall
/// time of the first such answer and the answer.
async fn answered_from(
    h: &Harness,
    server: &str,
    machine: &str,
    patience: Duration,
) -> anyhow::Result<(u64, serde_json::Value)> {
    let addr = h.service_addr[server];
    let until = clock::now() + patience;
    loop {
        if let Some(v) = probe(addr, Duration::from_millis(200)).await {
            if v["machine"] == machine {
                return Ok((clock::wall_ms(), v));
            }
        }
        if clock::now() >= until {
            anyhow::bail!("{server} did not answer from {machine} within {patience:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for the consensus cluster's leader and says who it is.
async fn cluster_leader(admin: &ferry_api::AdminClient) -> anyhow::Result<String> {
    let until = clock::now() + Duration::from_secs(20);
    loop {
        let l = admin.leasing().await?;
        if let (Some(leader), Some(term)) = (&l.leader, l.term) {
            let voters: Vec<&str> = l.voters.iter().filter(|v| v.member).map(|v| v.name.as_str()).collect();
            return Ok(format!("cluster leader {leader} (term {term}), voters {}", voters.join(", ")));
        }
        if clock::now() >= until {
            anyhow::bail!("the Node Managers elected no cluster leader within 20 s: see their logs");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(
    exit_after: bool,
    dir: Option<PathBuf>,
    data_source: Option<String>,
    consensus: bool,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the ferry executable")?;
    let mut spec = DomainSpec::figure_7_1(INTERVAL_MS, PERIODS, GRACE_MS);
    spec.data_source = data_source;
    spec.consensus = consensus;
    let dir = match dir {
        Some(d) => d,
        None => tempfile::Builder::new().prefix("ferry-demo-").tempdir()?.keep(),
    };
    outln!("ferry demo: whole server migration, live (WebLogic Server 10.3, chapter 7, Figures 7-1, 7-2, 7-3)\n");
    outln!("domain file:  {}", dir.join("domain.toml").display());
    outln!("timings:      health_check_interval {INTERVAL_MS} ms x {PERIODS} periods = lease {} ms; fencing_grace_period {GRACE_MS} ms", INTERVAL_MS * PERIODS as u64);
    if let Some(ds) = &spec.data_source {
        // A database named on the command line gets its lease table first (idempotent).
        ferry_store::init(ds)
            .await
            .with_context(|| format!("cannot prepare the lease table at {}", ferry_core::domain::redact_url(ds)))?;
        outln!("lease table:  {}", ferry_core::domain::redact_url(ds));
    }
    let mut h = Harness::start(spec, &exe, Some(dir.clone())).await?;
    outln!(
        "admin:        {}   (try: ferry status --admin {} --token-file {} in another terminal)",
        h.admin_url,
        h.admin_url,
        h.admin_token_file().display()
    );
    outln!(
        "machines:     machine-b, machine-c, machine-d (one Node Manager each; logs in {})",
        dir.join("logs").display()
    );
    for (s, a) in &h.service_addr {
        outln!("service {s}:  http://{a}  (its address on this host: the floating IP's stand-in)");
    }

    let admin = h.admin();
    if consensus {
        outln!("lease table:  consensus leasing among the three Node Managers: {}", cluster_leader(&admin).await?);
    }
    let mut n = Narrator {
        admin: admin.clone(),
        since: admin.events(0).await.map(|e| e.last().map_or(0, |e| e.id)).unwrap_or(0),
        t0_ms: clock::wall_ms(),
    };

    // ---- Figure 7-1 ----
    outln!("\nFigure 7-1  Startup of a cluster with migratable servers");
    n.t0_ms = clock::wall_ms();
    n.say(n.t0_ms, "1.", "the administrator starts the cluster: ferry start-cluster cluster-1");
    admin.start_cluster("cluster-1").await?;
    let mut running = 0;
    n.until(
        Duration::from_secs(30),
        |e| {
            Some(
                match &e.kind {
                    EventKind::ContactNm => "2.",
                    EventKind::ServerStarted => "3.",
                    EventKind::ConfigObtained | EventKind::ConfigCached => "4-5.",
                    EventKind::LeaseAcquired | EventKind::MasterAcquired => "6.",
                    EventKind::ServerRunning => "",
                    _ => return None,
                }
                .to_string(),
            )
        },
        |e| {
            if e.kind == EventKind::ServerRunning {
                running += 1;
            }
            running == 2
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS * 2)).await;
    let status = h.status().await?;
    n.say(clock::wall_ms(), "7.", "the servers renew their leases every health_check_interval:");
    for s in &status {
        outln!(
            "             {} on {} epoch {} lease left {} ms{}",
            s.name,
            s.machine.as_deref().unwrap_or("-"),
            s.epoch.unwrap_or_default(),
            s.lease_remaining_ms.unwrap_or(0),
            if s.master { "  (cluster master)" } else { "" }
        );
    }
    let master = status.iter().find(|s| s.master).map_or_else(String::new, |s| s.name.to_string());
    let (_, before) = answered_from(&h, "ms2", "machine-c", Duration::from_secs(10)).await?;
    outln!("             ms2 answers: {before}");

    // ---- Figure 7-2 ----
    outln!("\nFigure 7-2  Automatic migration of a failed server");
    n.t0_ms = clock::wall_ms();
    let killed = h.kill_machine("machine-c");
    n.say(
        n.t0_ms,
        "1.",
        &format!("machine C fails: its Node Manager, ms2 and ms2's service are killed ({killed} processes, SIGKILL)"),
    );
    let seen = n
        .until(
            Duration::from_secs(60),
            |e| {
                Some(
                    match &e.kind {
                        EventKind::MasterAcquired => "",
                        EventKind::LeaseExpired => "2.",
                        EventKind::RestartInPlace => "3.",
                        EventKind::MachineFailed => "",
                        EventKind::LeaderElected | EventKind::VoterJoined | EventKind::VoterLeft => "",
                        EventKind::Migrate => "4.",
                        EventKind::Addif => "",
                        EventKind::ServerStarted => "5.",
                        EventKind::ConfigObtained | EventKind::ConfigCached => "6-7.",
                        EventKind::LeaseAcquired => "8.",
                        _ => return None,
                    }
                    .to_string(),
                )
            },
            |e| is(e, EventKind::LeaseAcquired, "ms2"),
        )
        .await?;
    let (answered_ms, after) = answered_from(&h, "ms2", "machine-d", Duration::from_secs(30)).await?;
    n.say(answered_ms, "", &format!("ms2 answers from machine-d: {after}"));
    let at =
        |kind: EventKind| seen.iter().find(|e| is(e, kind.clone(), "ms2")).map(|e| e.at_ms.saturating_sub(n.t0_ms));
    let detect = at(EventKind::LeaseExpired);
    let started = at(EventKind::ServerStarted);
    let leased = at(EventKind::LeaseAcquired);
    let total = answered_ms.saturating_sub(n.t0_ms);
    let bound = INTERVAL_MS * PERIODS as u64 + GRACE_MS;

    // ---- Figure 7-3 (failback) ----
    outln!("\nFigure 7-3  Manual whole server migration (failback of ms2 to its repaired machine)");
    n.t0_ms = clock::wall_ms();
    h.start_nm("machine-c").await?;
    n.say(clock::wall_ms(), "", "machine C is repaired: its Node Manager runs again");
    n.say(clock::wall_ms(), "1.", "the administrator migrates ms2 back: ferry migrate ms2 --to machine-c");
    let t_migrate = clock::wall_ms();
    admin.migrate("ms2", "machine-c").await?;
    let mut contacts = 0;
    n.until(
        Duration::from_secs(60),
        |e| {
            if e.server.as_deref() != Some("ms2") {
                return None;
            }
            Some(
                match &e.kind {
                    EventKind::ContactNm => {
                        contacts += 1;
                        if contacts == 1 {
                            "2."
                        } else {
                            "5."
                        }
                    }
                    EventKind::Stop | EventKind::ServerExited => "3.",
                    EventKind::LeaseReleased => "4.",
                    EventKind::ServerStarted => "6.",
                    EventKind::ConfigObtained | EventKind::ConfigCached => "7-8.",
                    EventKind::LeaseAcquired => "9.",
                    _ => return None,
                }
                .to_string(),
            )
        },
        |e| is(e, EventKind::LeaseAcquired, "ms2"),
    )
    .await?;
    let (back_ms, back) = answered_from(&h, "ms2", "machine-c", Duration::from_secs(30)).await?;
    n.say(back_ms, "", &format!("ms2 answers from machine-c again: {back}"));
    let failback = back_ms.saturating_sub(t_migrate);

    // ---- Summary ----
    let journals: Vec<_> = ["ms1", "ms2"].iter().map(|s| check_journal(&h.journal_path(s))).collect();
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    outln!("\nSummary (measured on this host)");
    outln!("  {:<62} {:>10} {:>16}", "", "measured", "seed's bound");
    outln!("  {:<62} {:>10}", "cluster master", master);
    outln!("  {:<62} {:>10}", "7-2 machine C killed -> master saw ms2's lease expired", ms(detect));
    outln!(
        "  {:<62} {:>10} {:>16}",
        "7-2 machine C killed -> ms2 restarted on machine D",
        ms(started),
        format!("{bound} ms + start")
    );
    outln!("  {:<62} {:>10}", "7-2 machine C killed -> ms2 holds its lease on machine D", ms(leased));
    outln!("  {:<62} {:>10}", "7-2 machine C killed -> ms2's service answers from machine D", format!("{total} ms"));
    outln!(
        "  {:<62} {:>10}",
        "7-3 ferry migrate ms2 --to machine-c -> answers from machine C",
        format!("{failback} ms")
    );
    outln!("  (bound = health_check_interval x periods + fencing_grace_period = {INTERVAL_MS} x {PERIODS} + {GRACE_MS} ms,");
    outln!("   until the master acts; starting the process on machine D comes on top)");
    for (s, j) in ["ms1", "ms2"].iter().zip(&journals) {
        match j {
            Ok(list) => outln!(
                "  {:<58} {:>10}",
                format!(
                    "{s}: instances (epochs {}), never two at once",
                    list.iter().map(|i| i.epoch.to_string()).collect::<Vec<_>>().join(", ")
                ),
                "ok"
            ),
            Err(e) => outln!("  {s}: SAFETY CHECK FAILED: {e}"),
        }
    }
    if journals.iter().any(|j| j.is_err()) {
        anyhow::bail!("the no-two-instances check failed");
    }
    if exit_after {
        h.shutdown();
        outln!("\ndone; every process was stopped. The domain's files stay in {}", dir.display());
        return Ok(());
    }
    outln!("\nThe cluster stays up. In another terminal:\n  export FERRY_ADMIN={}\n  export FERRY_TOKEN_FILE={}\n  ferry status\n  ferry events\n  ferry migrate ms1 --to machine-d --wait\nPress Ctrl-C to stop every process.", h.admin_url, h.admin_token_file().display());
    // Ctrl-C, or SIGTERM from a supervisor: either way every process goes.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    h.shutdown();
    outln!("\nstopped every process; the domain's files stay in {}", dir.display());
    Ok(())
}

/// `ferry demo --hosts`: the same three figures on lab hosts. Every machine is a network
/// namespace with its own address; PostgreSQL and the Administration Server live in the
/// switch namespace; ms2's floating IP really moves from machine C's `eth0` to machine D's;
/// a client namespace asks the floating IP who answers every 5 ms, and the narration shows
/// what it saw.
pub async fn run_hosts(exit_after: bool, dir: Option<PathBuf>, consensus: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the ferry executable")?;
    // Faster than the one-host demo: the lab's network is quick, and so is PostgreSQL. On
    // consensus leasing, leases that let the voters keep their default timing (50 ms
    // heartbeats, elections after 150-300 ms): a busy host misses faster ones.
    let (interval, periods, grace) = if consensus { (500u64, 3u32, 300u64) } else { (200u64, 3u32, 300u64) };
    let mut spec = DomainSpec::figure_7_1(interval, periods, grace);
    spec.consensus = consensus;
    outln!("ferry demo --hosts: whole server migration between network-namespace machines\n");
    let Some(mut d) = LabDomain::start(spec, &exe, dir).await? else {
        anyhow::bail!(
            "the lab cannot run here (see above): it needs root, iproute2, nftables, iputils-arping and postgresql"
        );
    };
    outln!("lab:          switch 198.18.1.1 (PostgreSQL, Administration Server), client 198.18.1.2");
    for m in &d.spec.machines {
        outln!("              {m}: {} (its own network namespace, Node Manager on :5556)", d.lab.addr(m)?);
    }
    outln!("domain file:  {}", d.domain_file.display());
    outln!(
        "timings:      interval {interval} ms x {periods} = lease {} ms, grace {grace} ms",
        interval * periods as u64
    );
    let fip = d.floating["ms2"];
    let start = clock::wall_ms();
    let say = |t0: u64, step: &str, text: &str| {
        outln!("  {:>+7.3}s  {step:<5} {text}", (clock::wall_ms() as i64 - t0 as i64) as f64 / 1000.0)
    };
    let narrate = |t0: u64, e: &Event, step: &str| {
        outln!("  {:>+7.3}s  {step:<5} {}", (e.at_ms as i64 - t0 as i64) as f64 / 1000.0, e.message)
    };

    outln!("\nFigure 7-1  Startup");
    say(start, "1.", "ferry start-cluster cluster-1");
    let out = d.cli(&["start-cluster", "cluster-1", "--wait"]).await?;
    if !out.status.success() {
        anyhow::bail!("start-cluster failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    d.wait_running("ms2", "machine-c", 0, Duration::from_secs(30)).await?;
    if consensus {
        outln!("  lease table: {}", describe_leasing(&d.leasing().await?));
    }
    for e in d.events().await? {
        let step = match &e.kind {
            EventKind::ContactNm => "2.",
            EventKind::Addif => "",
            EventKind::ServerStarted => "3.",
            EventKind::ConfigObtained => "4-5.",
            EventKind::LeaseAcquired | EventKind::MasterAcquired => "6.",
            _ => continue,
        };
        narrate(start, &e, step);
    }
    // Figure 7-2's narration starts after the events seen so far.
    let seen = d.events().await?.len();
    d.start_client("ms2", 5)?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let on = |m: &str, addrs: &[String]| {
        addrs.iter().any(|a| a.starts_with(&format!("{}/", fip.ip()))).then(|| m.to_string())
    };
    let mut holders = Vec::new();
    for m in d.spec.machines.clone() {
        holders.extend(on(&m, &d.addresses(&m).await?));
    }
    say(
        start,
        "7.",
        &format!(
            "ms2's floating IP {} is on {} and the client sees: {:?}",
            fip.ip(),
            holders.join(", "),
            d.client_log("ms2").last().map(|l| (&l.machine, l.epoch))
        ),
    );

    outln!("\nFigure 7-2  Machine C crashes (every process killed, cable pulled)");
    let before = d.status().await?.into_iter().find(|s| s.name == "ms2").and_then(|s| s.epoch).map_or(0, |e| e.0);
    let t0 = clock::wall_ms();
    let t0_boot = clock::now().0;
    d.lab.crash("machine-c").await?;
    say(t0, "1.", "machine-c crashed");
    d.wait_running("ms2", "machine-d", before, Duration::from_secs(30)).await?;
    let until = clock::now() + Duration::from_secs(10);
    let view = loop {
        let v = client_view(&d.client_log("ms2"), t0_boot, before);
        if v.first_new_ms.is_some() || clock::now() >= until {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let events = d.events().await?;
    for e in events.iter().skip(seen) {
        let step = match &e.kind {
            EventKind::LeaseExpired => "2.",
            EventKind::RestartInPlace => "3.",
            EventKind::MachineFailed => "",
            EventKind::LeaderElected | EventKind::VoterJoined | EventKind::VoterLeft => "",
            EventKind::Migrate => "4.",
            EventKind::Addif => "",
            EventKind::ServerStarted => "5.",
            EventKind::ConfigObtained => "6-7.",
            EventKind::LeaseAcquired => "8.",
            _ => continue,
        };
        narrate(t0, e, step);
    }
    let mut holders = Vec::new();
    for m in d.spec.machines.clone() {
        if m != "machine-c" {
            holders.extend(on(&m, &d.addresses(&m).await?));
        }
    }
    outln!(
        "  client:    last answer from machine-c {} ms before the crash; first answer from {} {} ms after it (outage); the floating IP is now on {}",
        view.last_before_ms.map_or("-".to_string(), |t| (t0_boot as i64 - t as i64).to_string()),
        view.new_machine.clone().unwrap_or_default(),
        view.outage_ms.map_or("-".to_string(), |t| t.to_string()),
        holders.join(", ")
    );

    outln!("\nFigure 7-3  Machine C is repaired; ms2 fails back by hand");
    d.lab.revive("machine-c").await?;
    d.start_nm("machine-c")?;
    d.wait_nm("machine-c", Duration::from_secs(20)).await?;
    let t3 = clock::wall_ms();
    say(t3, "1.", "ferry migrate ms2 --to machine-c --wait");
    let out = d.cli(&["migrate", "ms2", "--to", "machine-c", "--wait"]).await?;
    out!("{}", String::from_utf8_lossy(&out.stdout).lines().map(|l| format!("             {l}\n")).collect::<String>());
    let back = d.wait_running("ms2", "machine-c", 0, Duration::from_secs(30)).await?;
    let partition = if consensus { Some(minority_partition(&d, back.epoch.map_or(0, |e| e.0)).await?) } else { None };
    let safe: Vec<_> = ["ms1", "ms2"].iter().map(|s| check_journal(&d.journal_path(s)).map(|l| l.len())).collect();
    outln!("\nSummary");
    outln!(
        "  client outage when machine-c crashed: {} ms (bound: lease {} + grace {grace} + scan + start)",
        view.outage_ms.map_or("-".into(), |t| t.to_string()),
        interval * periods as u64
    );
    outln!("  ms2 back on machine-c with fencing token {}", back.epoch.unwrap_or_default());
    outln!("  no two instances at once (journals): {}", if safe.iter().all(|r| r.is_ok()) { "ok" } else { "VIOLATED" });
    outln!(
        "  an older instance answered the client after a newer one: {}",
        if view.went_back.is_some() { "YES" } else { "never" }
    );
    // A figure that did not play out is a failed demo, whatever else went right.
    let mut problems = Vec::new();
    if view.outage_ms.is_none() {
        problems.push(
            "the client never reached ms2 at its floating IP on the new machine (look at the Node Managers' addif and gratuitous ARP events: the client's ARP cache may still point at machine-c)"
                .to_string(),
        );
    }
    if !out.status.success() {
        problems
            .push(format!("ferry migrate ms2 --to machine-c failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    for (s, r) in ["ms1", "ms2"].iter().zip(&safe) {
        if let Err(e) = r {
            problems.push(format!("{s}'s journal shows two instances at once: {e}"));
        }
    }
    if view.went_back.is_some() {
        problems.push("an older instance of ms2 answered the client after a newer one".into());
    }
    if let Some(p) = &partition {
        outln!(
            "  minority partition: ms2 on machine-c fenced itself {}; ms2 answered from {} {} ms after the cut",
            p.fenced_after_ms.map_or("(no fence seen)".to_string(), |t| format!("{t} ms after the cut")),
            p.new_machine.as_deref().unwrap_or("-"),
            p.outage_ms.map_or("-".to_string(), |t| t.to_string())
        );
        if p.fenced_after_ms.is_none() {
            problems.push("ms2 on the minority side (machine-c) did not fence itself".into());
        }
        if p.new_machine.as_deref().is_none_or(|m| m == "machine-c") {
            problems.push("the majority did not restart ms2 on its side of the partition".into());
        }
    }
    if !problems.is_empty() {
        anyhow::bail!("the demo did not play out as Figures 7-2 and 7-3 say: {}", problems.join("; "));
    }
    if exit_after {
        outln!("\ndone; the lab is being removed");
        return Ok(());
    }
    outln!("\nThe lab stays up. Look around (as root):\n  ip netns list\n  ip netns exec {} {} --admin {} --ca {} --token-file {} status\nPress Ctrl-C to remove the lab.", d.lab.namespace("sw")?, exe.display(), d.admin_url, d.ca_file(), d.admin_token_file().display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// One line about consensus leasing: the leader, its term, the voters and who answers.
fn describe_leasing(l: &ferry_api::LeasingStatus) -> String {
    let voters: Vec<String> =
        l.voters.iter().map(|v| format!("{}{}", v.name, if v.reachable { "" } else { " (not answering)" })).collect();
    format!(
        "consensus leasing among {}: cluster leader {} (term {})",
        voters.join(", "),
        l.leader.as_deref().unwrap_or("none"),
        l.term.map_or("-".to_string(), |t| t.to_string())
    )
}

/// What the minority partition showed.
struct Partition {
    fenced_after_ms: Option<u64>,
    new_machine: Option<String>,
    outage_ms: Option<u64>,
}

/// Consensus leasing's partition (the seed's "Non-database Consensus Leasing"): machine C,
/// holding ms2, is cut off from every other machine, the switch and the client. Its side is
/// a minority: its voter cannot reach the leader nor win an election, so ms2 there fences
/// itself at its deadline, while the majority (keeping its leader, or electing one if C
/// led) restarts ms2 on its side. Healed, C's events reach the admin and say when it fenced.
async fn minority_partition(d: &LabDomain, epoch: u64) -> anyhow::Result<Partition> {
    outln!("\nConsensus leasing: machine-c is cut off from everyone (a minority of one voter in three)");
    let before = d.leasing().await?;
    outln!("  lease table: {}", describe_leasing(&before));
    let seen = d.events().await?.len();
    let t0 = clock::wall_ms();
    let t0_boot = clock::now().0;
    let say = |text: &str| outln!("  {:>+7.3}s        {text}", (clock::wall_ms() as i64 - t0 as i64) as f64 / 1000.0);
    d.lab.partition("machine-c").await?;
    say("machine-c partitioned (nftables at the switch: nothing in or out)");
    // ms2's first candidate, on the majority side.
    let moved = d.wait_running("ms2", "machine-d", epoch, Duration::from_secs(30)).await?;
    let until = clock::now() + Duration::from_secs(10);
    let view = loop {
        let v = client_view(&d.client_log("ms2"), t0_boot, epoch);
        if v.first_new_ms.is_some() || clock::now() >= until {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let during = d.leasing().await?;
    say(&format!("majority side: {}", describe_leasing(&during)));
    d.lab.heal().await?;
    say("healed: machine-c's events reach the admin again");
    // The fence happened on machine-c while it was cut off; its event arrives now.
    let until = clock::now() + Duration::from_secs(10);
    let fenced = loop {
        let events = d.events().await?;
        let fence = events
            .iter()
            .skip(seen)
            .find(|e| e.kind == EventKind::Fenced && e.machine.as_deref() == Some("machine-c"))
            .cloned();
        if fence.is_some() || clock::now() >= until {
            outln!("  what happened, by each machine's clock:");
            let mut shown: Vec<&Event> = events.iter().skip(seen).collect();
            shown.sort_by_key(|e| e.at_ms);
            for e in shown {
                let shown = matches!(
                    e.kind,
                    EventKind::Fenced
                        | EventKind::LeaseExpired
                        | EventKind::Migrate
                        | EventKind::LeaseAcquired
                        | EventKind::LeaderElected
                        | EventKind::ServerRunning
                );
                if shown {
                    outln!(
                        "  {:>+7.3}s        {}: {}",
                        (e.at_ms as i64 - t0 as i64) as f64 / 1000.0,
                        e.source,
                        e.message
                    );
                }
            }
            break fence;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(Partition {
        fenced_after_ms: fenced.map(|e| e.at_ms.saturating_sub(t0)),
        new_machine: moved.machine.map(|m| m.to_string()).or(view.new_machine),
        outage_ms: view.outage_ms,
    })
}
