//! Scenario 2, in-place restart after a crash (DESIGN §6: under 50 ms): SIGKILL of ms1's
//! `ferry server` process only; its Node Manager reaps it, kills what it left behind and
//! restarts it at once, handing the lease over from the reaped incarnation (rule 4). Measured
//! from the kill until ms1's address answers from machine-b with a larger fencing token.
//!
//! Every run starts a fresh domain: the Node Manager's restart backoff (rule 9) restarts
//! only the first crash within its 60 s stability window at once (then 100, 200, 400,
//! 800 ms, then gives up), so repeated crashes of one server in one domain would measure
//! the backoff, not the restart.

use ferry_core::EventKind;
use std::path::Path;

use ferry_host::clock;
use ferry_testkit::Harness;
use nix::sys::signal::Signal;
use serde::Serialize;

use crate::common::{self, Timings, PATIENCE};
use crate::stats::{header, row, summarize};

/// DESIGN §6.
pub const TARGET_MS: i64 = 50;

/// One run's raw sample; every `_ms` is from the kill.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestartRun {
    pub run: usize,
    pub dir: String,
    pub setup_attempts: u32,
    pub phase_ms: u64,
    pub pid_before: i32,
    pub token_before: u64,
    pub token_after: u64,
    /// `server-exited` of ms1 (its Node Manager reaped it).
    pub exited_ms: Option<i64>,
    /// `server-started` of the new ms1.
    pub started_ms: Option<i64>,
    /// `lease-acquired` of the new ms1.
    pub leased_ms: Option<i64>,
    /// The lease was taken over from the reaped incarnation (no expiry wait).
    pub handover: bool,
    /// First answer of the new instance (larger fencing token).
    pub answered_ms: Option<i64>,
    pub safety_violation: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestartReport {
    pub timings: Timings,
    pub runs_requested: usize,
    pub mode: &'static str,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub runs: Vec<RestartRun>,
}

const MODE: &str = "fresh domain per run (one crash each: the restart backoff would delay repeated crashes)";

pub async fn run(exe: &Path, base: &Path, runs: usize, t: Timings) -> anyhow::Result<RestartReport> {
    let loadavg_before = common::loadavg();
    let mut out = Vec::new();
    for i in 1..=runs {
        let r = one(exe, &base.join(format!("run-{i:03}")), i, t).await;
        eprintln!("restart {i}/{runs}: {}", progress(&r));
        out.push(r);
    }
    Ok(RestartReport {
        timings: t,
        runs_requested: runs,
        mode: MODE,
        loadavg_before,
        loadavg_after: common::loadavg(),
        runs: out,
    })
}

fn progress(r: &RestartRun) -> String {
    if let Some(e) = &r.error {
        return format!("FAILED: {e} (see {})", r.dir);
    }
    let f = |v: Option<i64>| v.map_or("-".into(), |v| v.to_string());
    format!(
        "exited {} started {} leased {} answered {} ms{}{}",
        f(r.exited_ms),
        f(r.started_ms),
        f(r.leased_ms),
        f(r.answered_ms),
        if r.handover { "" } else { "  (no handover)" },
        match &r.safety_violation {
            Some(v) => format!("  SAFETY VIOLATION: {v}"),
            None => String::new(),
        }
    )
}

async fn one(exe: &Path, dir: &Path, run: usize, t: Timings) -> RestartRun {
    let mut r = RestartRun { run, dir: dir.display().to_string(), ..Default::default() };
    let (h, d, attempts) = common::setup(exe, dir, run, t).await;
    r.dir = d.display().to_string();
    r.setup_attempts = attempts;
    let h = match h {
        Ok(h) => h,
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    if let Err(e) = measure(&h, &mut r, t).await {
        r.error = Some(format!("{e:#}"));
    }
    r.safety_violation = common::safety(&h).err();
    r
}

async fn measure(h: &Harness, r: &mut RestartRun, t: Timings) -> anyhow::Result<()> {
    let addr = h.service_addr["ms1"];
    let (_, before) = common::probe_until(addr, PATIENCE, |v| v["machine"] == "machine-b").await?;
    r.token_before = before["fencing_token"].as_u64().unwrap_or(0);
    r.phase_ms = common::settle_random_phase(t).await;
    let since = common::last_event_id(h).await?;
    let status = h.status().await?;
    let ms1 = status.iter().find(|s| s.name == "ms1").ok_or_else(|| anyhow::anyhow!("ms1 is not listed"))?;
    let pid = ms1.pid.ok_or_else(|| anyhow::anyhow!("ms1 has no pid: {ms1:?}"))?;
    r.pid_before = pid;

    let t0 = clock::now().ms();
    let t0_wall = clock::wall_ms();
    anyhow::ensure!(ferry_host::process::signal(pid, Signal::SIGKILL), "ms1 (pid {pid}) was already gone");
    let token_before = r.token_before;
    let (answered, after) = common::probe_until(addr, PATIENCE, |v| {
        v["machine"] == "machine-b" && v["fencing_token"].as_u64().unwrap_or(0) > token_before
    })
    .await?;
    r.answered_ms = Some(answered as i64 - t0 as i64);
    r.token_after = after["fencing_token"].as_u64().unwrap_or(0);

    let is = |e: &ferry_api::Event, kind: EventKind| e.kind == kind && e.server.as_deref() == Some("ms1");
    let events = common::events_until(h, since, "lease-acquired of the new ms1", |e| {
        is(e, EventKind::LeaseAcquired) && e.source == "server/ms1"
    })
    .await?;
    r.exited_ms = common::first_after(&events, t0_wall, |e| is(e, EventKind::ServerExited));
    r.started_ms = common::first_after(&events, t0_wall, |e| is(e, EventKind::ServerStarted));
    r.leased_ms =
        common::first_after(&events, t0_wall, |e| is(e, EventKind::LeaseAcquired) && e.source == "server/ms1");
    r.handover = events
        .iter()
        .any(|e| is(e, EventKind::LeaseAcquired) && e.source == "server/ms1" && e.message.contains("handover"))
        && !events.iter().any(|e| is(e, EventKind::LeaseExpired));
    Ok(())
}

/// The markdown report of the scenario.
pub fn print(rep: &RestartReport) {
    let t = rep.timings;
    let ok: Vec<&RestartRun> = rep.runs.iter().filter(|r| r.error.is_none()).collect();
    let col = |f: fn(&RestartRun) -> Option<i64>| ok.iter().filter_map(|r| f(r)).collect::<Vec<_>>();
    println!("\n## in-place restart: ms1's `ferry server` process SIGKILLed, restarted by its Node Manager\n");
    println!(
        "settings: health_check_interval {} ms x {} periods = lease {} ms, fencing_grace_period {} ms; {} runs, {}; \
         kill after 2 renewal intervals plus a random phase of one interval; client probes ms1's address every {} ms; \
         load average {} before, {} after\n",
        t.interval_ms,
        t.periods,
        t.ttl_ms(),
        t.grace_ms,
        rep.runs_requested,
        rep.mode,
        common::PROBE_EVERY.as_millis(),
        rep.loadavg_before,
        rep.loadavg_after
    );
    println!("{}", header("ms from the SIGKILL until", "target (ms)"));
    println!("{}", row("Node Manager reaped it (`server-exited`)", col(|r| r.exited_ms), ""));
    println!("{}", row("Node Manager started the new ms1 (`server-started`)", col(|r| r.started_ms), ""));
    println!("{}", row("new ms1 holds its lease (`lease-acquired`, handover)", col(|r| r.leased_ms), ""));
    println!(
        "{}",
        row(
            "**client: ms1's service answers with a larger fencing token**",
            col(|r| r.answered_ms),
            &format!("< {TARGET_MS} (DESIGN §6)")
        )
    );
    let n = ok.len();
    let over: Vec<&&RestartRun> = ok.iter().filter(|r| r.answered_ms.is_some_and(|a| a >= TARGET_MS)).collect();
    println!();
    if let Some(s) = summarize(col(|r| r.answered_ms)) {
        println!(
            "- DESIGN §6 target under {TARGET_MS} ms: p50 {} ms, p99 {} ms; {}/{n} runs at or over the target{}",
            s.p50,
            s.p99,
            over.len(),
            if over.is_empty() { "" } else { "  <- FLAGGED" }
        );
    }
    for r in &over {
        println!(
            "  - run {}: {} ms (exited {:?}, started {:?}, leased {:?}); logs in {}",
            r.run,
            r.answered_ms.unwrap_or(0),
            r.exited_ms,
            r.started_ms,
            r.leased_ms,
            r.dir
        );
    }
    let no_handover = ok.iter().filter(|r| !r.handover).count();
    println!("- lease taken over from the reaped incarnation (no expiry wait): {}/{n} runs", n - no_handover);
    let unsafe_runs: Vec<&RestartRun> = rep.runs.iter().filter(|r| r.safety_violation.is_some()).collect();
    println!(
        "- safety (journals: never two instances at once, fencing tokens increase): {}/{} runs clean{}",
        rep.runs.len() - unsafe_runs.len(),
        rep.runs.len(),
        if unsafe_runs.is_empty() { "" } else { "  <- VIOLATION" }
    );
    for r in unsafe_runs {
        println!("  - run {}: {} ({})", r.run, r.safety_violation.as_deref().unwrap_or(""), r.dir);
    }
    let failed: Vec<&RestartRun> = rep.runs.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        println!("- failed runs (not in the table): {}", failed.len());
        for r in failed {
            println!("  - run {}: {} ({})", r.run, r.error.as_deref().unwrap_or(""), r.dir);
        }
    }
}
