//! `ferry demo`: the seed's Figures 7-1 (startup), 7-2 (automatic migration after machine C
//! dies) and 7-3 (manual migration, used for failback) played live with real processes on
//! this host, narrated step by step from the domain's own event log, with measured times
//! next to the seed's bound.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ferry_api::{AdminClient, Event};
use ferry_host::clock;

use crate::harness::{probe, DomainSpec, Harness};

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
        println!("  {:>+7.3}s  {step:<5} {text}", rel as f64 / 1000.0);
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

fn is(e: &Event, kind: &str, server: &str) -> bool {
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

pub async fn run(
    exit_after: bool,
    dir: Option<PathBuf>,
    data_source: Option<String>,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the ferry executable")?;
    let mut spec = DomainSpec::figure_7_1(INTERVAL_MS, PERIODS, GRACE_MS);
    spec.data_source = data_source;
    let dir = match dir {
        Some(d) => d,
        None => tempfile::Builder::new()
            .prefix("ferry-demo-")
            .tempdir()?
            .keep(),
    };
    println!("ferry demo: whole server migration, live (WebLogic Server 10.3, chapter 7, Figures 7-1, 7-2, 7-3)\n");
    println!("domain file:  {}", dir.join("domain.toml").display());
    println!("timings:      health_check_interval {INTERVAL_MS} ms x {PERIODS} periods = lease {} ms; fencing_grace_period {GRACE_MS} ms", INTERVAL_MS * PERIODS as u64);
    if let Some(ds) = &spec.data_source {
        // A database named on the command line gets its lease table first (idempotent).
        ferry_store::init(ds).await.with_context(|| {
            format!(
                "cannot prepare the lease table at {}",
                ferry_core::domain::redact_url(ds)
            )
        })?;
        println!("lease table:  {}", ferry_core::domain::redact_url(ds));
    }
    let mut h = Harness::start(spec, &exe, Some(dir.clone())).await?;
    println!(
        "admin:        {}   (try: ferry status --admin {} in another terminal)",
        h.admin_url, h.admin_url
    );
    println!(
        "machines:     machine-b, machine-c, machine-d (one Node Manager each; logs in {})",
        dir.join("logs").display()
    );
    for (s, a) in &h.service_addr {
        println!(
            "service {s}:  http://{a}  (its address on this host: the floating IP's stand-in)"
        );
    }

    let admin = h.admin();
    let mut n = Narrator {
        admin: admin.clone(),
        since: admin
            .events(0)
            .await
            .map(|e| e.last().map_or(0, |e| e.id))
            .unwrap_or(0),
        t0_ms: clock::wall_ms(),
    };

    // ---- Figure 7-1 ----
    println!("\nFigure 7-1  Startup of a cluster with migratable servers");
    n.t0_ms = clock::wall_ms();
    n.say(
        n.t0_ms,
        "1.",
        "the administrator starts the cluster: ferry start-cluster cluster-1",
    );
    admin.start_cluster("cluster-1").await?;
    let mut running = 0;
    n.until(
        Duration::from_secs(30),
        |e| {
            Some(
                match e.kind.as_str() {
                    "contact-nm" => "2.",
                    "server-started" => "3.",
                    "config-obtained" | "config-cached" => "4-5.",
                    "lease-acquired" | "master-acquired" => "6.",
                    "server-running" => "",
                    _ => return None,
                }
                .to_string(),
            )
        },
        |e| {
            if e.kind == "server-running" {
                running += 1;
            }
            running == 2
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS * 2)).await;
    let status = h.status().await?;
    n.say(
        clock::wall_ms(),
        "7.",
        "the servers renew their leases every health_check_interval:",
    );
    for s in &status {
        println!(
            "             {} on {} epoch {} lease left {} ms{}",
            s.name,
            s.machine.clone().unwrap_or_default(),
            s.epoch.unwrap_or(0),
            s.lease_remaining_ms.unwrap_or(0),
            if s.master { "  (cluster master)" } else { "" }
        );
    }
    let master = status
        .iter()
        .find(|s| s.master)
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let (_, before) = answered_from(&h, "ms2", "machine-c", Duration::from_secs(10)).await?;
    println!("             ms2 answers: {before}");

    // ---- Figure 7-2 ----
    println!("\nFigure 7-2  Automatic migration of a failed server");
    n.t0_ms = clock::wall_ms();
    let killed = h.kill_machine("machine-c");
    n.say(n.t0_ms, "1.", &format!("machine C fails: its Node Manager, ms2 and ms2's service are killed ({killed} processes, SIGKILL)"));
    let seen = n
        .until(
            Duration::from_secs(60),
            |e| {
                Some(
                    match e.kind.as_str() {
                        "master-acquired" => "",
                        "lease-expired" => "2.",
                        "restart-in-place" => "3.",
                        "machine-failed" => "",
                        "migrate" => "4.",
                        "addif" => "",
                        "server-started" => "5.",
                        "config-obtained" | "config-cached" => "6-7.",
                        "lease-acquired" => "8.",
                        _ => return None,
                    }
                    .to_string(),
                )
            },
            |e| is(e, "lease-acquired", "ms2"),
        )
        .await?;
    let (answered_ms, after) =
        answered_from(&h, "ms2", "machine-d", Duration::from_secs(30)).await?;
    n.say(
        answered_ms,
        "",
        &format!("ms2 answers from machine-d: {after}"),
    );
    let at = |kind: &str| {
        seen.iter()
            .find(|e| is(e, kind, "ms2"))
            .map(|e| e.at_ms.saturating_sub(n.t0_ms))
    };
    let detect = at("lease-expired");
    let started = at("server-started");
    let leased = at("lease-acquired");
    let total = answered_ms.saturating_sub(n.t0_ms);
    let bound = INTERVAL_MS * PERIODS as u64 + GRACE_MS;

    // ---- Figure 7-3 (failback) ----
    println!(
        "\nFigure 7-3  Manual whole server migration (failback of ms2 to its repaired machine)"
    );
    n.t0_ms = clock::wall_ms();
    h.start_nm("machine-c").await?;
    n.say(
        clock::wall_ms(),
        "",
        "machine C is repaired: its Node Manager runs again",
    );
    n.say(
        clock::wall_ms(),
        "1.",
        "the administrator migrates ms2 back: ferry migrate ms2 --to machine-c",
    );
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
                match e.kind.as_str() {
                    "contact-nm" => {
                        contacts += 1;
                        if contacts == 1 {
                            "2."
                        } else {
                            "5."
                        }
                    }
                    "stop" | "server-exited" => "3.",
                    "lease-released" => "4.",
                    "server-started" => "6.",
                    "config-obtained" | "config-cached" => "7-8.",
                    "lease-acquired" => "9.",
                    _ => return None,
                }
                .to_string(),
            )
        },
        |e| is(e, "lease-acquired", "ms2"),
    )
    .await?;
    let (back_ms, back) = answered_from(&h, "ms2", "machine-c", Duration::from_secs(30)).await?;
    n.say(
        back_ms,
        "",
        &format!("ms2 answers from machine-c again: {back}"),
    );
    let failback = back_ms.saturating_sub(t_migrate);

    // ---- Summary ----
    let journals: Vec<_> = ["ms1", "ms2"]
        .iter()
        .map(|s| crate::harness::check_journal(&h.journal_path(s)))
        .collect();
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    println!("\nSummary (measured on this host)");
    println!("  {:<62} {:>10} {:>16}", "", "measured", "seed's bound");
    println!("  {:<62} {:>10}", "cluster master", master);
    println!(
        "  {:<62} {:>10}",
        "7-2 machine C killed -> master saw ms2's lease expired",
        ms(detect)
    );
    println!(
        "  {:<62} {:>10} {:>16}",
        "7-2 machine C killed -> ms2 restarted on machine D",
        ms(started),
        format!("{bound} ms")
    );
    println!(
        "  {:<62} {:>10}",
        "7-2 machine C killed -> ms2 holds its lease on machine D",
        ms(leased)
    );
    println!(
        "  {:<62} {:>10}",
        "7-2 machine C killed -> ms2's service answers from machine D",
        format!("{total} ms")
    );
    println!(
        "  {:<62} {:>10}",
        "7-3 ferry migrate ms2 --to machine-c -> answers from machine C",
        format!("{failback} ms")
    );
    println!("  (bound = health_check_interval x periods + fencing_grace_period = {INTERVAL_MS} x {PERIODS} + {GRACE_MS} ms)");
    for (s, j) in ["ms1", "ms2"].iter().zip(&journals) {
        match j {
            Ok(list) => println!(
                "  {:<58} {:>10}",
                format!(
                    "{s}: instances (epochs {}), never two at once",
                    list.iter()
                        .map(|i| i.epoch.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "ok"
            ),
            Err(e) => println!("  {s}: SAFETY CHECK FAILED: {e}"),
        }
    }
    if journals.iter().any(|j| j.is_err()) {
        anyhow::bail!("the no-two-instances check failed");
    }
    if exit_after {
        h.shutdown();
        println!(
            "\ndone; every process was stopped. The domain's files stay in {}",
            dir.display()
        );
        return Ok(());
    }
    println!("\nThe cluster stays up. In another terminal:\n  export FERRY_ADMIN={}\n  ferry status\n  ferry events\n  ferry migrate ms1 --to machine-d --wait\nPress Ctrl-C to stop every process.", h.admin_url);
    // Ctrl-C, or SIGTERM from a supervisor: either way every process goes.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    h.shutdown();
    println!(
        "\nstopped every process; the domain's files stay in {}",
        dir.display()
    );
    Ok(())
}
