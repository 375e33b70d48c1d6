//! Scenario 1, automatic migration (Figure 7-2): machine-c dies (SIGKILL of its Node Manager,
//! ms2 and ms2's service) at a random phase of the renewal cycle; measured from the kill:
//! when the cluster master (ms1) saw ms2's lease expired, when it ordered ms2 onto machine-d,
//! when ms2 held its lease there, and when a client probing ms2's address every 2 ms got an
//! answer from machine-d. Every run starts a fresh domain, so every run starts from the same
//! state (no restart history, no earlier failover, ms1 master), and checks the journals.

use ferry_core::EventKind;
use std::path::Path;
use std::time::Duration;

use ferry_host::clock;
use ferry_testkit::Harness;
use serde::Serialize;

use crate::common::{self, Timings, PATIENCE};
use crate::runs::{self, OnDomain, Run, RunInfo, Runs};
use crate::stats::{header, row, summarize};

/// One run's raw sample; every `_ms` is from the kill instant.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FailoverRun {
    #[serde(flatten)]
    pub info: RunInfo,
    /// How far into a renewal interval the kill fell (random), ms.
    pub phase_ms: u64,
    pub processes_killed: usize,
    pub token_before: u64,
    pub token_after: u64,
    /// ms2's last renewal, by the store's clock, read from the lease table just after the
    /// kill (negative: before the kill).
    pub renewed_ms: Option<i64>,
    /// When ms2's lease ran out by the store's clock (last renewal + lease).
    pub expiry_ms: Option<i64>,
    /// `lease-expired` of ms2, reported by the cluster master.
    pub detect_ms: Option<i64>,
    /// `restart-in-place` of ms2 (the master first tries machine-c's Node Manager).
    pub restart_in_place_ms: Option<i64>,
    /// `migrate` of ms2 to machine-d.
    pub migrate_ms: Option<i64>,
    /// `server-started` of ms2 by machine-d's Node Manager.
    pub started_ms: Option<i64>,
    /// `lease-acquired` of ms2 on machine-d.
    pub leased_ms: Option<i64>,
    /// First answer of ms2's service from machine-d (the client-visible outage).
    pub answered_ms: Option<i64>,
    /// detect - expiry: how long the master took to notice the expired lease.
    pub detect_lag_ms: Option<i64>,
    /// answered - migrate: how long starting ms2 on machine-d took.
    pub start_ms: Option<i64>,
    /// The full liveness bound for this run: timers + one scan interval + `start_ms`.
    pub bound_ms: Option<i64>,
    pub over_bound: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    pub timings: Timings,
    pub runs_requested: usize,
    pub mode: &'static str,
    #[serde(flatten)]
    pub runs: Runs<FailoverRun>,
}

const MODE: &str = "fresh domain per run";

pub async fn run(exe: &Path, base: &Path, runs: usize, t: Timings) -> anyhow::Result<FailoverReport> {
    let runs = runs::each("failover", base, runs, |r, dir| runs::on_fresh_domain(exe, t, r, dir)).await;
    Ok(FailoverReport { timings: t, runs_requested: runs.runs.len(), mode: MODE, runs })
}

impl Run for FailoverRun {
    fn info(&self) -> &RunInfo {
        &self.info
    }

    fn info_mut(&mut self) -> &mut RunInfo {
        &mut self.info
    }

    fn progress(&self) -> String {
        let f = |v: Option<i64>| v.map_or("-".into(), |v| v.to_string());
        format!(
            "phase {} ms; detect {} migrate {} leased {} answered {} ms (bound {}){}{}",
            self.phase_ms,
            f(self.detect_ms),
            f(self.migrate_ms),
            f(self.leased_ms),
            f(self.answered_ms),
            f(self.bound_ms),
            if self.over_bound { "  OVER BOUND" } else { "" },
            match &self.info.safety_violation {
                Some(v) => format!("  SAFETY VIOLATION: {v}"),
                None => String::new(),
            }
        )
    }
}

impl OnDomain for FailoverRun {
    async fn measure(&mut self, h: &Harness, t: Timings) -> anyhow::Result<()> {
        measure(h, self, t).await
    }
}

async fn measure(h: &Harness, r: &mut FailoverRun, t: Timings) -> anyhow::Result<()> {
    let addr = h.service_addr["ms2"];
    let (_, before) = common::probe_until(addr, PATIENCE, |v| v["machine"] == "machine-c").await?;
    r.token_before = before["fencing_token"].as_u64().unwrap_or(0);
    r.phase_ms = common::settle_random_phase(t).await;
    let since = common::last_event_id(h).await?;
    let pids = h.machine_pids("machine-c");
    anyhow::ensure!(
        pids.len() >= 3,
        "machine-c runs {} processes, expected its Node Manager, ms2 and ms2's service",
        pids.len()
    );

    // The failure: stop and kill machine-c's processes found beforehand, then sweep.
    let t0 = clock::now().ms();
    let t0_wall = clock::wall_ms();
    common::stop_and_kill(&pids);
    r.processes_killed = pids.len();
    // Sweep up anything machine-c started between the scan and the kill.
    h.kill_machine("machine-c");

    // ms2 renews no more: its row now says when its lease runs out (read to the nearest
    // few ms: the midpoint of the request).
    let q0 = clock::now().ms();
    let leases = h.admin().leases().await;
    let q1 = clock::now().ms();
    if let Some(l) = leases.ok().and_then(|ls| ls.into_iter().find(|l| l.server().is_some_and(|s| s.as_str() == "ms2")))
    {
        let at = ((q0 + q1) / 2) as i64 - t0 as i64;
        r.renewed_ms = Some(at - l.since_renewal_ms);
        r.expiry_ms = Some(at + l.remaining_ms);
    }

    let token_before = r.token_before;
    let (answered, after) = common::probe_until(addr, PATIENCE, |v| {
        v["machine"] == "machine-d" && v["fencing_token"].as_u64().unwrap_or(0) > token_before
    })
    .await?;
    r.answered_ms = Some(answered as i64 - t0 as i64);
    r.token_after = after["fencing_token"].as_u64().unwrap_or(0);

    let is = |e: &ferry_api::Event, kind: EventKind| e.kind == kind && e.server.as_deref() == Some("ms2");
    let on_d = |e: &ferry_api::Event| e.machine.as_deref() == Some("machine-d");
    let events = common::events_until(h, since, "lease-acquired of ms2 on machine-d", |e| {
        is(e, EventKind::LeaseAcquired) && on_d(e)
    })
    .await?;
    r.detect_ms = common::first_after(&events, t0_wall, |e| is(e, EventKind::LeaseExpired));
    r.restart_in_place_ms = common::first_after(&events, t0_wall, |e| is(e, EventKind::RestartInPlace));
    r.migrate_ms = common::first_after(&events, t0_wall, |e| is(e, EventKind::Migrate));
    r.started_ms = common::first_after(&events, t0_wall, |e| is(e, EventKind::ServerStarted) && on_d(e));
    r.leased_ms = common::first_after(&events, t0_wall, |e| is(e, EventKind::LeaseAcquired) && on_d(e));
    if let (Some(d), Some(x)) = (r.detect_ms, r.expiry_ms) {
        r.detect_lag_ms = Some(d - x);
    }
    if let (Some(a), Some(m)) = (r.answered_ms, r.migrate_ms) {
        let start = a - m;
        let bound = (t.timers_ms() + t.interval_ms) as i64 + start;
        r.start_ms = Some(start);
        r.bound_ms = Some(bound);
        r.over_bound = a > bound;
    }
    // Let the new instance write a few journal lines before the safety check reads them.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

/// The markdown report of the scenario.
pub fn print(rep: &FailoverReport) {
    let t = rep.timings;
    let ok = rep.runs.ok();
    let col = |f: fn(&FailoverRun) -> Option<i64>| ok.iter().filter_map(|r| f(r)).collect::<Vec<_>>();
    let timers = t.timers_ms();
    let scan = t.interval_ms;
    println!("\n## failover: machine-c killed, ms2 migrates to machine-d (Figure 7-2)\n");
    println!(
        "settings: health_check_interval {} ms x {} periods = lease {} ms, fencing_grace_period {} ms; {} runs, {}; \
         kill = SIGSTOP+SIGKILL of machine-c's Node Manager, ms2 and ms2's service after 2 renewal intervals plus a random phase of one interval; \
         client probes ms2's address every {} ms; event times are the sources' wall clocks; load average {} before, {} after\n",
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
    println!("{}", header("ms from the kill until", "bound (ms)"));
    println!(
        "{}",
        row(
            "ms2's lease ran out by the store's clock (last renewal + lease)",
            col(|r| r.expiry_ms),
            &format!("<= lease = {}", t.ttl_ms())
        )
    );
    println!(
        "{}",
        row(
            "master (ms1) saw ms2's lease expired (`lease-expired`)",
            col(|r| r.detect_ms),
            &format!("<= lease + scan = {}", t.ttl_ms() + scan)
        )
    );
    println!(
        "{}",
        row(
            "(master's detection lag: `lease-expired` - store expiry)",
            col(|r| r.detect_lag_ms),
            &format!("<= one scan interval = {scan}")
        )
    );
    println!(
        "{}",
        row(
            "master ordered ms2 onto machine-d (`migrate`)",
            col(|r| r.migrate_ms),
            &format!("<= lease + scan + grace = {}", timers + scan)
        )
    );
    println!("{}", row("machine-d's Node Manager started ms2 (`server-started`)", col(|r| r.started_ms), ""));
    println!("{}", row("ms2 holds its lease on machine-d (`lease-acquired`)", col(|r| r.leased_ms), ""));
    let start_p50 = summarize(col(|r| r.start_ms)).map_or(0, |s| s.p50);
    println!(
        "{}",
        row(
            "**client: ms2's service answers from machine-d (outage)**",
            col(|r| r.answered_ms),
            &format!(
                "interval x periods + grace = {timers}; full DESIGN §3 bound = {timers} + {scan} scan + start time (p50 {start_p50}) = {}",
                timers + scan + start_p50 as u64
            )
        )
    );
    println!("{}", row("start time on machine-d (`migrate` -> answers)", col(|r| r.start_ms), ""));
    let n = ok.len();
    let over_timers = ok.iter().filter(|r| r.answered_ms.is_some_and(|a| a > timers as i64)).count();
    let over: Vec<&&FailoverRun> = ok.iter().filter(|r| r.over_bound).collect();
    println!();
    println!("- outage over interval x periods + grace ({timers} ms): {over_timers}/{n} runs (that bound leaves out the detection lag and the start time)");
    println!(
        "- outage over the full liveness bound ({timers} + {scan} scan + that run's start time): **{}/{n} runs**{}",
        over.len(),
        if over.is_empty() { "" } else { "  <- FLAGGED" }
    );
    let over_tight = ok
        .iter()
        .filter(|r| match (r.answered_ms, r.start_ms) {
            (Some(a), Some(s)) => a > timers as i64 + s,
            _ => false,
        })
        .count();
    println!(
        "- outage over the tight bound without the scan term ({timers} + that run's start time; the master schedules a scan at the next lease expiry): {over_tight}/{n} runs"
    );
    for r in &over {
        println!(
            "  - run {}: outage {} ms > bound {} ms (detect {:?}, migrate {:?}, start {:?}); logs in {}",
            r.info.run,
            r.answered_ms.unwrap_or(0),
            r.bound_ms.unwrap_or(0),
            r.detect_ms,
            r.migrate_ms,
            r.start_ms,
            r.info.dir
        );
    }
    if let Some(s) = summarize(col(|r| r.answered_ms)) {
        println!(
            "- DESIGN §6 target p50 outage < 500 ms: p50 {} ms, {}",
            s.p50,
            if s.p50 < 500 { "met" } else { "**NOT MET**" }
        );
    }
    runs::print_tail(&rep.runs.runs, "never two instances at once, fencing tokens increase");
}
