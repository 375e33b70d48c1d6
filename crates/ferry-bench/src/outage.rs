//! Scenario: the lease table goes away and comes back (issue 9, item 9). A private
//! PostgreSQL holds the lease table of a Figure 7-1 domain; it is stopped until every server
//! has fenced itself (rule 2: nothing may run on a lease nobody can renew), kept down a
//! while longer, and started again. Measured from the moment it accepts connections again
//! until each server's service answers again with a larger fencing token, brought back by
//! its own Node Manager without an operator. The bound: two health-check intervals (the
//! Node Managers ask the table every interval while it is down) plus the start.

use std::path::Path;
use std::time::Duration;

use ferry_host::clock;
use ferry_testkit::{wait_until, DomainSpec, Harness};
use serde::Serialize;

use crate::common::{self, Timings, PATIENCE};
use crate::runs::{self, Run, RunInfo, Runs};
use crate::stats::{header, row};

#[derive(Debug, Clone, Default, Serialize)]
pub struct OutageRun {
    #[serde(flatten)]
    pub info: RunInfo,
    /// How long PostgreSQL was down.
    pub down_ms: u64,
    /// From PostgreSQL accepting connections again until each service answered again.
    pub ms1_back_ms: Option<i64>,
    pub ms2_back_ms: Option<i64>,
    /// Until every server answered.
    pub all_back_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutageReport {
    pub timings: Timings,
    pub runs_requested: usize,
    /// How long the table stayed down after every server had fenced itself.
    pub down_after_fence_ms: u64,
    #[serde(flatten)]
    pub runs: Runs<OutageRun>,
}

pub async fn run(exe: &Path, base: &Path, runs: usize, t: Timings, down_ms: u64) -> anyhow::Result<OutageReport> {
    let runs = runs::each("outage", base, runs, |mut r: OutageRun, dir| async move {
        if let Err(e) = one(exe, &dir, t, down_ms, &mut r).await {
            r.info.error = Some(format!("{e:#}"));
        }
        r
    })
    .await;
    Ok(OutageReport { timings: t, runs_requested: runs.runs.len(), down_after_fence_ms: down_ms, runs })
}

impl Run for OutageRun {
    fn info(&self) -> &RunInfo {
        &self.info
    }

    fn info_mut(&mut self) -> &mut RunInfo {
        &mut self.info
    }

    fn progress(&self) -> String {
        format!("down {} ms, every server back {:?} ms after the table", self.down_ms, self.all_back_ms)
    }
}

async fn one(exe: &Path, dir: &Path, t: Timings, down_ms: u64, r: &mut OutageRun) -> anyhow::Result<()> {
    let mut pg = ferry_testkit::PgServer::start()?;
    ferry_store::init(&pg.url()).await?;
    let mut spec = DomainSpec::figure_7_1(t.interval_ms, t.periods, t.grace_ms);
    spec.data_source = Some(pg.url());
    let h = Harness::start(spec, exe, Some(dir.to_path_buf())).await?;
    h.admin().start_cluster("cluster-1").await?;
    h.wait_running("ms1", "machine-b", 0, PATIENCE).await?;
    h.wait_running("ms2", "machine-c", 0, PATIENCE).await?;
    let mut tokens = Vec::new();
    for s in ["ms1", "ms2"] {
        let (_, v) = common::probe_until(h.service_addr[s], PATIENCE, |_| true).await?;
        tokens.push(v["fencing_token"].as_u64().unwrap_or(0));
    }
    common::settle_random_phase(t).await;
    let down_at = clock::now();
    pg.stop()?;
    // Every server fences itself; then the table stays away `down_ms` longer.
    wait_until(PATIENCE, "every service to stop answering", || async {
        let mut none = true;
        for s in ["ms1", "ms2"] {
            none &= ferry_testkit::probe(h.service_addr[s], Duration::from_millis(100)).await.is_none();
        }
        none
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(down_ms)).await;
    pg.start_again()?;
    let back = clock::now();
    r.down_ms = back.since(down_at);
    let mut all = 0;
    for (i, s) in ["ms1", "ms2"].into_iter().enumerate() {
        let before = tokens[i];
        let (at, _) = common::probe_until(h.service_addr[s], Duration::from_secs(60), |v| {
            v["fencing_token"].as_u64().unwrap_or(0) > before
        })
        .await?;
        let ms = at as i64 - back.0 as i64;
        all = all.max(ms);
        if i == 0 {
            r.ms1_back_ms = Some(ms);
        } else {
            r.ms2_back_ms = Some(ms);
        }
    }
    r.all_back_ms = Some(all);
    r.info.safety_violation = common::safety(&h).err();
    Ok(())
}

pub fn print(rep: &OutageReport) {
    let t = rep.timings;
    let ok = rep.runs.ok();
    let col = |f: fn(&OutageRun) -> Option<i64>| ok.iter().filter_map(|r| f(r)).collect::<Vec<_>>();
    println!("\n## lease-table outage: PostgreSQL stopped until every server fenced itself, then started again\n");
    println!(
        "settings: health_check_interval {} ms x {} periods = lease {} ms, fencing_grace_period {} ms; {} runs, each a fresh domain on a private PostgreSQL; the table stays down {} ms after every service stopped answering; load average {} before, {} after\n",
        t.interval_ms,
        t.periods,
        t.ttl_ms(),
        t.grace_ms,
        rep.runs_requested,
        rep.down_after_fence_ms,
        rep.runs.loadavg_before,
        rep.runs.loadavg_after
    );
    let bound = format!("2 x interval = {} ms, plus the start", 2 * t.interval_ms);
    println!("{}", header("ms from PostgreSQL accepting connections again until", "bound"));
    println!("{}", row("ms1 (was cluster master) answers with a larger fencing token", col(|r| r.ms1_back_ms), ""));
    println!("{}", row("ms2 answers with a larger fencing token", col(|r| r.ms2_back_ms), ""));
    println!("{}", row("**every server answers again**", col(|r| r.all_back_ms), &bound));
    let down: Vec<i64> = ok.iter().map(|r| r.down_ms as i64).collect();
    println!("{}", row("(how long the table was down)", down, ""));
    println!();
    runs::print_tail(&rep.runs.runs, "never two instances at once");
}
