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
use crate::runs::{self, OnDomain, Run, RunInfo, Runs};
use crate::stats::{header, row, summarize};

/// DESIGN §6.
pub const TARGET_MS: i64 = 50;

/// One run's raw sample; every `_ms` is from the kill.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestartRun {
    #[serde(flatten)]
    pub info: RunInfo,
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
}

#[derive(Debug, Clone, Serialize)]
pub struct RestartReport {
    pub timings: Timings,
    pub runs_requested: usize,
    pub mode: &'static str,
    #[serde(flatten)]
    pub runs: Runs<RestartRun>,
}

const MODE: &str = "fresh domain per run (one crash each: the restart backoff would delay repeated crashes)";

pub async fn run(exe: &Path, base: &Path, runs: usize, t: Timings) -> anyhow::Result<RestartReport> {
    let runs = runs::each("restart", base, runs, |r, dir| runs::on_fresh_domain(exe, t, r, dir)).await;
    Ok(RestartReport { timings: t, runs_requested: runs.runs.len(), mode: MODE, runs })
}

impl Run for RestartRun {
    fn info(&self) -> &RunInfo {
        &self.info
    }

    fn info_mut(&mut self) -> &mut RunInfo {
        &mut self.info
    }

    fn progress(&self) -> String {
        let f = |v: Option<i64>| v.map_or("-".into(), |v| v.to_string());
        format!(
            "exited {} started {} leased {} answered {} ms{}{}",
            f(self.exited_ms),
            f(self.started_ms),
            f(self.leased_ms),
            f(self.answered_ms),
            if self.handover { "" } else { "  (no handover)" },
            match &self.info.safety_violation {
                Some(v) => format!("  SAFETY VIOLATION: {v}"),
                None => String::new(),
            }
        )
    }
}

impl OnDomain for RestartRun {
    async fn measure(&mut self, h: &Harness, t: Timings) -> anyhow::Result<()> {
        measure(h, self, t).await
    }
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
    let ok = rep.runs.ok();
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
        rep.runs.loadavg_before,
        rep.runs.loadavg_after
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
            r.info.run,
            r.answered_ms.unwrap_or(0),
            r.exited_ms,
            r.started_ms,
            r.leased_ms,
            r.info.dir
        );
    }
    let no_handover = ok.iter().filter(|r| !r.handover).count();
    println!("- lease taken over from the reaped incarnation (no expiry wait): {}/{n} runs", n - no_handover);
    runs::print_tail(&rep.runs.runs, "never two instances at once, fencing tokens increase");
}
