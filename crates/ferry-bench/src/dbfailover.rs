//! Scenario: the lease table's database fails over under running servers (issue 12, item
//! 5). The table lives on a primary with a synchronous streaming standby whose clock is off
//! by seconds (libfaketime); the domain's data source lists both hosts with
//! `target_session_attrs=read-write`. With N servers running, the primary is killed and,
//! after a chosen delay, the standby promoted. Measured: how long the promotion took, each
//! lease's longest renewal gap (its last renewal seen before the kill until its first real
//! renewal on the new primary, read by polling the table every 20 ms), how many servers
//! fenced, and how long until every server renewed again. DESIGN §3 rule 11 makes the
//! expected number of fenced servers 0 whenever the database is writable again within a
//! lease, whatever the new primary's clock says.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ferry_api::{EventKind, ViewState};
use ferry_core::Mono;
use ferry_host::clock;
use ferry_testkit::{DomainSpec, Harness, PgPair};
use serde::Serialize;

use crate::common::{self, Timings};
use crate::stats::{header, row};

#[derive(clap::Args, Debug, Clone)]
pub struct DbFailoverArgs {
    /// Runs of each case (each a fresh database pair and domain).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Servers of the domain (the demo service), spread over `machines`.
    #[arg(long, default_value_t = 20)]
    pub servers: usize,
    #[arg(long, default_value_t = 4)]
    pub machines: usize,
    /// health_check_interval.
    #[arg(long, default_value_t = 500)]
    pub interval_ms: u64,
    /// health_check_periods_until_fencing.
    #[arg(long, default_value_t = 3)]
    pub periods: u32,
    /// fencing_grace_period.
    #[arg(long, default_value_t = 500)]
    pub grace_ms: u64,
    /// Cases, comma-separated: the standby's clock offset (libfaketime) and the delay
    /// between killing the primary and promoting the standby, `OFFSET:DELAY_MS`.
    #[arg(long, value_delimiter = ',', default_values_t = ["+3s:0".to_string(), "-3s:0".to_string(), "+3s:2500".to_string()])]
    pub cases: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DbFailoverRun {
    pub case: String,
    pub dir: String,
    pub error: Option<String>,
    pub safety_violation: Option<String>,
    /// From the kill of the primary until the standby accepted writes.
    pub promotion_ms: Option<i64>,
    /// Per lease: last renewal seen before the kill until its first renewal on the new primary.
    pub longest_gap_ms: Option<i64>,
    /// Servers with a `fenced` event after the kill.
    pub fenced: Vec<String>,
    /// From the promotion until every lease was renewed on the new primary.
    pub all_renewed_ms: Option<i64>,
    /// From the promotion until every server was RUNNING again (fenced ones included).
    pub all_running_ms: Option<i64>,
    pub loadavg_before: String,
}

pub async fn run(a: DbFailoverArgs, exe: &Path, base: &Path, json: Option<PathBuf>) -> anyhow::Result<()> {
    common::print_header("ferry-bench dbfailover", exe, base);
    let t = Timings { interval_ms: a.interval_ms, periods: a.periods, grace_ms: a.grace_ms };
    let mut all = Vec::new();
    for case in &a.cases {
        let (offset, delay) = case.split_once(':').with_context(|| format!("case {case:?} is not OFFSET:DELAY_MS"))?;
        let delay: u64 = delay.parse().with_context(|| format!("case {case:?}: the delay is not a number of ms"))?;
        for i in 0..a.runs {
            let dir = base.join(format!("dbfailover-{}-{i}", all.len()));
            std::fs::create_dir_all(&dir)?;
            let mut r = DbFailoverRun {
                case: case.clone(),
                dir: dir.display().to_string(),
                loadavg_before: common::loadavg(),
                ..DbFailoverRun::default()
            };
            if let Err(e) = one(exe, &dir, &a, t, offset, delay, &mut r).await {
                r.error = Some(format!("{e:#}"));
            }
            eprintln!(
                "{case} run {i}: promotion {:?} ms, longest gap {:?} ms, {} fenced, all renewed {:?} ms{}",
                r.promotion_ms,
                r.longest_gap_ms,
                r.fenced.len(),
                r.all_renewed_ms,
                r.error.as_deref().map(|e| format!("; error: {e}")).unwrap_or_default()
            );
            all.push(r);
        }
    }
    print(&a, t, &all);
    if let Some(path) = &json {
        std::fs::write(path, serde_json::to_string_pretty(&all)?)?;
        println!("\nraw samples: {}", path.display());
    }
    Ok(())
}

/// What the poller saw of the lease rows, by the bench's clock.
#[derive(Default)]
struct Seen {
    /// The last `renewed_at` read per lease, and when it was first read.
    last: HashMap<String, i64>,
    /// When each lease's latest renewal before the kill was seen.
    before_kill: HashMap<String, Mono>,
    /// When each lease's first renewal on the new primary (after the clocks were restarted)
    /// was seen.
    after: HashMap<String, Mono>,
    killed: bool,
}

async fn one(
    exe: &Path,
    dir: &Path,
    a: &DbFailoverArgs,
    t: Timings,
    offset: &str,
    delay_ms: u64,
    r: &mut DbFailoverRun,
) -> anyhow::Result<()> {
    let mut pair = PgPair::start(Some(offset)).await?;
    let url = pair.url();
    ferry_store::init(&url).await?;
    let mut spec = DomainSpec::many(a.servers, a.machines, t.interval_ms, t.periods, t.grace_ms);
    spec.data_source = Some(url.clone());
    let h = Harness::start(spec, exe, Some(dir.to_path_buf())).await?;
    h.admin().start_cluster("scale").await.context("start-cluster refused")?;
    wait_all_running(&h, a.servers, Duration::from_secs(120)).await.context("the domain did not start")?;
    tokio::time::sleep(Duration::from_millis(2 * t.ttl_ms())).await;
    let since = common::last_event_id(&h).await?;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let poller = tokio::spawn(poll(url.clone(), Arc::clone(&seen)));
    tokio::time::sleep(Duration::from_millis(t.interval_ms * 2)).await;
    {
        seen.lock().unwrap_or_else(|e| e.into_inner()).killed = true;
    }
    let took = pair.fail_over(Duration::from_millis(delay_ms)).await?;
    let promoted = clock::now();
    r.promotion_ms = Some(took.as_millis() as i64);
    // Every lease renewed on the new primary, or every server fenced and back.
    let until = promoted + Duration::from_secs(60);
    loop {
        let done = seen.lock().unwrap_or_else(|e| e.into_inner()).after.len() >= a.servers;
        if done || clock::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_all_running(&h, a.servers, Duration::from_secs(60)).await.context("not every server ran again")?;
    r.all_running_ms = Some(clock::now().since(promoted) as i64);
    // A late fence still counts: one lease and grace more.
    tokio::time::sleep(Duration::from_millis(t.ttl_ms() + t.grace_ms)).await;
    poller.abort();
    {
        let s = seen.lock().unwrap_or_else(|e| e.into_inner());
        let gaps: Vec<i64> = s
            .before_kill
            .iter()
            .filter_map(|(name, before)| s.after.get(name).map(|after| after.since(*before) as i64))
            .collect();
        r.longest_gap_ms = gaps.iter().copied().max();
        if s.after.len() >= a.servers {
            r.all_renewed_ms = s.after.values().map(|at| at.since(promoted) as i64).max();
        }
    }
    let events = h.admin().events(since).await?;
    let mut fenced: Vec<String> = events
        .iter()
        .filter(|e| e.kind == EventKind::Fenced)
        .filter_map(|e| e.server.as_ref().map(|s| s.to_string()))
        .collect();
    fenced.sort();
    fenced.dedup();
    r.fenced = fenced;
    r.safety_violation = common::safety(&h).err();
    Ok(())
}

async fn wait_all_running(h: &Harness, n: usize, patience: Duration) -> anyhow::Result<()> {
    let (ok, _) = crate::scale::poll_status(h, patience, Duration::from_millis(100), |l| {
        l.len() == n && l.iter().all(|s| s.state == ViewState::Running)
    })
    .await;
    anyhow::ensure!(ok, "not every server RUNNING within {patience:?}");
    Ok(())
}

/// Reads every server lease's `renewed_at` every 20 ms from whichever host is the primary,
/// and notes when each changes; after the failover, only renewals later than the new
/// primary's restart of the clocks (`ferry_authority.since`) count.
async fn poll(url: String, seen: Arc<Mutex<Seen>>) {
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    Some(c)
                }
                Err(_) => None,
            };
        }
        let Some(c) = &client else { continue };
        let rows = c
            .query(
                "SELECT l.name, floor(extract(epoch FROM l.renewed_at) * 1000)::bigint, \
                 floor(extract(epoch FROM a.since) * 1000)::bigint, a.timeline \
                 FROM ferry_leases l, ferry_authority a \
                 WHERE l.name LIKE 'server/%' AND l.state = 'held'",
                &[],
            )
            .await;
        let Ok(rows) = rows else {
            client = None;
            continue;
        };
        let now = clock::now();
        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
        for row in rows {
            let name: String = row.get(0);
            let renewed: i64 = row.get(1);
            let since: i64 = row.get(2);
            let timeline: i64 = row.get(3);
            if s.last.insert(name.clone(), renewed) == Some(renewed) {
                continue;
            }
            if !s.killed {
                s.before_kill.insert(name, now);
            } else if timeline > 1 && renewed > since {
                s.after.entry(name).or_insert(now);
            }
        }
    }
}

fn print(a: &DbFailoverArgs, t: Timings, all: &[DbFailoverRun]) {
    println!("\n## the lease table's database fails over under running servers\n");
    println!(
        "settings: {} servers (the demo service) on {} machines, health_check_interval {} ms x {} = lease {} ms, \
         fencing_grace_period {} ms; a primary with one synchronous streaming standby on loopback (PostgreSQL \
         from Debian), the data source lists both with target_session_attrs=read-write; each case {} runs, \
         `OFFSET:DELAY`: the standby's clock offset (libfaketime) and the wait between killing the primary and \
         promoting the standby; renewals read by polling the table every 20 ms (±20 ms)\n",
        a.servers,
        a.machines,
        t.interval_ms,
        t.periods,
        t.ttl_ms(),
        t.grace_ms,
        a.runs
    );
    for case in &a.cases {
        let runs: Vec<&DbFailoverRun> = all.iter().filter(|r| &r.case == case).collect();
        let ok: Vec<&&DbFailoverRun> = runs.iter().filter(|r| r.error.is_none()).collect();
        let col = |f: fn(&DbFailoverRun) -> Option<i64>| ok.iter().filter_map(|r| f(r)).collect::<Vec<_>>();
        println!("### case {case}\n");
        println!("{}", header("ms", "bound / expected"));
        println!("{}", row("promotion (kill until the standby accepts writes)", col(|r| r.promotion_ms), ""));
        let within = ok.iter().all(|r| r.promotion_ms.is_some_and(|p| (p as u64) < t.ttl_ms()));
        let gap_note = if within { format!("< lease {} ms: no fence", t.ttl_ms()) } else { String::new() };
        println!("{}", row("longest renewal gap of a lease", col(|r| r.longest_gap_ms), &gap_note));
        println!("{}", row("promotion until every lease renewed again", col(|r| r.all_renewed_ms), ""));
        println!("{}", row("promotion until every server RUNNING", col(|r| r.all_running_ms), ""));
        let fenced: Vec<i64> = ok.iter().map(|r| r.fenced.len() as i64).collect();
        let expect = if within { "0 (promotion within the lease)" } else { "all may fence, then return unaided" };
        println!("{}", row("servers fenced (count, not ms)", fenced, expect));
        println!();
        for r in &runs {
            if let Some(e) = &r.error {
                println!("- run in {} failed: {e}", r.dir);
            }
            if let Some(v) = &r.safety_violation {
                println!("- **SAFETY VIOLATION** in {}: {v}", r.dir);
            }
        }
        let violations = runs.iter().filter(|r| r.safety_violation.is_some()).count();
        println!("safety: {violations} of {} runs saw two instances at once (journals)\n", runs.len());
    }
}
