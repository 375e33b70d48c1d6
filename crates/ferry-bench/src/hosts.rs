//! `ferry-bench hosts`: failover across lab hosts (network namespaces with their own
//! addresses, a floating IP that really moves, a client on its own machine), against the
//! liveness bound of DESIGN §3 and side by side with keepalived in the same run (DESIGN §6).
//!
//! Scenarios (each run in a fresh lab with a fresh domain, so every run starts from the same
//! state: no restart history, no earlier failover, ms1 cluster master on machine-b, ms2 on
//! machine-c; runs of the scenarios are interleaved so a change in the shared host's load
//! falls on all of them alike):
//! * `fast`: interval 100 ms × 3 periods, grace 100 ms (DESIGN §6's setting);
//! * `grace0`: the same with grace 0 (DESIGN §6: no slower than keepalived at advert 0.1 s);
//! * `tenfold`: the seed's defaults divided by ten: interval 1 s × 3, grace 3 s;
//! * `keepalived`: see [`crate::hosts_keepalived`];
//! * `consensus`: `fast` on consensus leasing (the lease table among the Node Managers'
//!   voters) instead of PostgreSQL, for issue 13's "within 10% of PostgreSQL's" (not in the
//!   default set: `--only fast,consensus`).
//!
//! A ferry run: start the cluster, start the clients on ms2's floating IP (the overlapping
//! prober of [`crate::hosts_probe`] every 2 ms and `ferry demo-client` every 5 ms), wait for
//! answers from machine-c, let the leases renew for two intervals plus a random part of one,
//! then crash machine-c (`Lab::crash`: cable pulled, every process SIGKILLed). Measured on
//! CLOCK_BOOTTIME (the clients' clock) from the instant before the crash to the first answer
//! from ms2 on machine-d with a larger fencing token; the event log (sources' wall clocks,
//! against the wall clock read at the crash) splits that time into its phases. Safety is
//! checked every run: both servers' journals (never two instances at once) and both
//! clients' logs (never an older instance answering after a newer one).

use ferry_core::EventKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use ferry_host::clock;
use ferry_testkit::{check_journal, DomainSpec, LabDomain};
use serde::Serialize;

use crate::common::{self, MachineFacts, Timings};
use crate::hosts_keepalived::{self as ka, KeepalivedRun};
use crate::hosts_probe;
use crate::stats::{header, row, summarize};

const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Args, Debug, Clone)]
pub struct HostsArgs {
    /// Runs of `fast`, `grace0` and `keepalived` (each on a fresh lab).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Runs of `tenfold` (each takes ~9 s: setup, 2-3 s of settling, a 3 s lease and a
    /// 3 s grace period).
    #[arg(long, default_value_t = 20)]
    pub tenfold_runs: usize,
    /// Only these scenarios (comma-separated or repeated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Scenario>,
    /// keepalived's `advert_int` values in ms, each its own row (VRRP v3 counts centiseconds,
    /// 10 at least). DESIGN §6 compares with the advert interval equal to ferry's
    /// health-check interval (100); 20 is the fastest that never flapped here (10 did not
    /// flap in a 90 s soak either, but a 30 ms stall of a loaded host would split it).
    #[arg(long, value_delimiter = ',', default_values_t = [100, 20])]
    pub advert_ms: Vec<u64>,
    /// The prober starts a new connection this often (ms).
    #[arg(long, default_value_t = 2)]
    pub probe_every_ms: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Fast,
    Grace0,
    Tenfold,
    Keepalived,
    /// `fast`'s timings on consensus leasing (the Node Managers' voters) instead of
    /// PostgreSQL.
    Consensus,
}

impl Scenario {
    fn timings(self) -> Option<Timings> {
        let t = |interval_ms, grace_ms| Timings { interval_ms, periods: 3, grace_ms };
        match self {
            Scenario::Fast | Scenario::Consensus => Some(t(100, 100)),
            Scenario::Grace0 => Some(t(100, 0)),
            Scenario::Tenfold => Some(t(1_000, 3_000)),
            Scenario::Keepalived => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::Fast => "fast",
            Scenario::Grace0 => "grace0",
            Scenario::Tenfold => "tenfold",
            Scenario::Keepalived => "keepalived",
            Scenario::Consensus => "consensus",
        }
    }
}

/// One ferry run; every `_ms` is from the crash.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FerryRun {
    pub run: usize,
    pub dir: String,
    /// Labs started for this run (more than one when ms1 did not become master).
    pub setup_attempts: u32,
    pub phase_ms: u64,
    /// How long `Lab::crash` took (cable pull, SIGKILL of everything, wait until gone).
    pub crash_took_ms: u64,
    pub token_before: u64,
    pub token_after: u64,
    /// ms2's lease ran out by the store's clock (read just after the crash).
    pub expiry_ms: Option<i64>,
    /// `lease-expired` (cluster master).
    pub detect_ms: Option<i64>,
    /// `restart-in-place` (master, after the grace period: asks machine-c's Node Manager).
    pub in_place_ms: Option<i64>,
    /// `migrate` (master, once machine-c's Node Manager did not answer).
    pub migrate_ms: Option<i64>,
    /// `addif` (machine-d's Node Manager plumbed the floating IP).
    pub addif_ms: Option<i64>,
    /// `server-started` on machine-d.
    pub started_ms: Option<i64>,
    /// `lease-acquired` on machine-d.
    pub leased_ms: Option<i64>,
    /// First answer from machine-d at the floating IP (overlapping probes).
    pub answered_ms: Option<i64>,
    /// The same seen by `ferry demo-client` (one probe at a time, 80 ms timeout).
    pub demo_client_ms: Option<i64>,
    /// DESIGN §3's bound for this run: interval × periods + grace + one scan interval + this
    /// run's start time (`migrate` → answer).
    pub bound_ms: Option<i64>,
    pub over_bound: bool,
    /// Journals or clients showing two instances at once or an older one after a newer.
    pub safety_violation: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FerryScenario {
    pub scenario: Scenario,
    pub timings: Timings,
    pub runs: Vec<FerryRun>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostsReport {
    pub machine: MachineFacts,
    pub ferry: String,
    pub dir: String,
    pub advert_ms: Vec<u64>,
    pub keepalived_version: String,
    pub probe_every_ms: u64,
    pub loadavg_after: String,
    pub took_s: u64,
    pub ferry_scenarios: Vec<FerryScenario>,
    pub keepalived: Option<Vec<KeepalivedRun>>,
}

pub async fn run(a: HostsArgs, exe: &Path, base: &Path, json: Option<PathBuf>) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.advert_ms.is_empty() && a.advert_ms.iter().all(|&ms| ms >= 10),
        "--advert-ms values must be at least 10 (VRRP v3 counts centiseconds)"
    );
    let probe_exe = std::env::current_exe().context("cannot find this executable's path")?;
    let chosen: Vec<Scenario> = if a.only.is_empty() {
        vec![Scenario::Fast, Scenario::Grace0, Scenario::Keepalived, Scenario::Tenfold]
    } else {
        a.only.clone()
    };
    if chosen.contains(&Scenario::Keepalived) {
        ferry_lab::require(&["ip", "keepalived"]).context("the keepalived scenario")?;
    }
    let runs_of = |s: Scenario| {
        if s == Scenario::Tenfold {
            a.tenfold_runs
        } else {
            a.runs
        }
    };
    let facts = MachineFacts::read();
    println!("# ferry-bench hosts\n");
    println!(
        "host: {} cores, kernel {}, CPU {}; load average at start {} (the host is shared)",
        facts.nproc, facts.kernel, facts.cpu, facts.loadavg
    );
    println!(
        "ferry: {}; runs' labs (logs, journals, client logs, keepalived configs): {}",
        exe.display(),
        base.display()
    );
    let started = clock::now();
    let mut ferry: Vec<FerryScenario> = chosen
        .iter()
        .filter_map(|&s| s.timings().map(|timings| FerryScenario { scenario: s, timings, runs: Vec::new() }))
        .collect();
    let mut keepalived: Option<Vec<KeepalivedRun>> = chosen.contains(&Scenario::Keepalived).then(Vec::new);
    let most = chosen.iter().map(|&s| runs_of(s)).max().unwrap_or(0);
    for i in 1..=most {
        for &s in &chosen {
            if i > runs_of(s) {
                continue;
            }
            let dir = base.join(s.name()).join(format!("run-{i:03}"));
            if s == Scenario::Keepalived {
                for &advert in &a.advert_ms {
                    let dir = base.join(format!("keepalived-{advert}ms")).join(format!("run-{i:03}"));
                    let r = ka::one(exe, &probe_exe, &dir, i, advert, a.probe_every_ms).await;
                    eprintln!("keepalived {advert} ms {i}/{}: {}", runs_of(s), ka_progress(&r));
                    if let Some(e) = &r.error {
                        if i == 1 && e.contains("cannot run here") {
                            bail!("keepalived: {e}");
                        }
                    }
                    if let Some(v) = keepalived.as_mut() {
                        v.push(r);
                    }
                }
                continue;
            }
            let Some(sc) = ferry.iter_mut().find(|f| f.scenario == s) else {
                continue;
            };
            let consensus = s == Scenario::Consensus;
            let r = ferry_one(exe, &probe_exe, &dir, i, sc.timings, consensus, a.probe_every_ms).await;
            eprintln!("{} {i}/{}: {}", s.name(), runs_of(s), progress(&r));
            if let Some(e) = &r.error {
                if i == 1 && e.contains("cannot run here") {
                    bail!("{}: {e}", s.name());
                }
            }
            sc.runs.push(r);
        }
    }
    let rep = HostsReport {
        machine: facts,
        ferry: exe.display().to_string(),
        dir: base.display().to_string(),
        advert_ms: a.advert_ms.clone(),
        keepalived_version: ka::version().await,
        probe_every_ms: a.probe_every_ms,
        loadavg_after: common::loadavg(),
        took_s: (clock::now().ms() - started.ms()) / 1000,
        ferry_scenarios: ferry,
        keepalived,
    };
    print(&rep);
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&rep)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("\nraw samples: {}", path.display());
    }
    Ok(())
}

fn f(v: Option<i64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn progress(r: &FerryRun) -> String {
    if let Some(e) = &r.error {
        return format!("FAILED: {e} (see {})", r.dir);
    }
    format!(
        "phase {} ms; expiry {} detect {} in-place {} migrate {} addif {} started {} leased {} answered {} (demo-client {}) ms, bound {}{}{}",
        r.phase_ms,
        f(r.expiry_ms),
        f(r.detect_ms),
        f(r.in_place_ms),
        f(r.migrate_ms),
        f(r.addif_ms),
        f(r.started_ms),
        f(r.leased_ms),
        f(r.answered_ms),
        f(r.demo_client_ms),
        f(r.bound_ms),
        if r.over_bound { "  OVER BOUND" } else { "" },
        r.safety_violation
            .as_ref()
            .map_or(String::new(), |v| format!("  SAFETY VIOLATION: {v}"))
    )
}

fn ka_progress(r: &KeepalivedRun) -> String {
    if let Some(e) = &r.error {
        return format!("FAILED: {e} (see {})", r.dir);
    }
    format!(
        "phase {} ms; answered {} (demo-client {}) ms{}{}",
        r.phase_ms,
        f(r.answered_ms),
        f(r.demo_client_ms),
        if r.flaps > 0 {
            format!("  FLAPPED ({} answers from the backup before the crash)", r.flaps)
        } else {
            String::new()
        },
        r.went_back.as_ref().map_or(String::new(), |v| format!("  WENT BACK: {v}"))
    )
}

/// A fresh lab domain with cluster-1 started, ms1 RUNNING on machine-b as cluster master and
/// ms2 RUNNING on machine-c (up to three labs until ms1 is master: otherwise the run would
/// measure a master takeover too).
async fn setup(exe: &Path, dir: &Path, t: Timings, consensus: bool) -> (anyhow::Result<LabDomain>, u32) {
    let mut last = Err(anyhow::anyhow!("not started"));
    for attempt in 1..=3u32 {
        let d = if attempt == 1 { dir.to_path_buf() } else { dir.join(format!("setup-{attempt}")) };
        last = setup_once(exe, &d, t, consensus).await;
        if last.is_ok() {
            return (last, attempt);
        }
        if last.as_ref().err().is_some_and(|e| format!("{e:#}").contains("cannot run here")) {
            return (last, attempt);
        }
    }
    (last, 3)
}

async fn setup_once(exe: &Path, dir: &Path, t: Timings, consensus: bool) -> anyhow::Result<LabDomain> {
    let spec = DomainSpec { consensus, ..DomainSpec::figure_7_1(t.interval_ms, t.periods, t.grace_ms) };
    let Some(d) = LabDomain::start(spec, exe, Some(dir.to_path_buf())).await? else {
        bail!("the lab cannot run here (the reason is printed above)");
    };
    let out = d.cli(&["start-cluster", "cluster-1", "--wait"]).await?;
    if !out.status.success() {
        bail!("start-cluster: {}", String::from_utf8_lossy(&out.stderr));
    }
    d.wait_running("ms1", "machine-b", 0, PATIENCE).await?;
    d.wait_running("ms2", "machine-c", 0, PATIENCE).await?;
    let until = clock::now() + PATIENCE;
    loop {
        let masters: Vec<String> =
            d.status().await.unwrap_or_default().into_iter().filter(|s| s.master).map(|s| s.name.to_string()).collect();
        match masters.as_slice() {
            [m] if m == "ms1" => return Ok(d),
            [m] => bail!("setup: the cluster master is {m}, not ms1"),
            _ if clock::now() >= until => bail!("setup: no cluster master within {PATIENCE:?}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn ferry_one(
    exe: &Path,
    probe_exe: &Path,
    dir: &Path,
    run: usize,
    t: Timings,
    consensus: bool,
    every_ms: u64,
) -> FerryRun {
    let mut r = FerryRun { run, dir: dir.display().to_string(), ..Default::default() };
    let (d, attempts) = setup(exe, dir, t, consensus).await;
    r.setup_attempts = attempts;
    let d = match d {
        Ok(d) => d,
        Err(e) => {
            r.error = Some(format!("{e:#}"));
            return r;
        }
    };
    r.dir = d.dir.display().to_string();
    if let Err(e) = measure(&d, exe, probe_exe, &mut r, t, every_ms).await {
        r.error = Some(format!("{e:#}"));
    }
    let mut bad: Vec<String> = ["ms1", "ms2"]
        .iter()
        .filter_map(|s| check_journal(&d.journal_path(s)).err().map(|e| format!("journal of {s}: {e:#}")))
        .collect();
    if let Some(v) = r.safety_violation.take() {
        bad.push(v);
    }
    r.safety_violation = (!bad.is_empty()).then(|| bad.join("; "));
    r
}

async fn measure(
    d: &LabDomain,
    exe: &Path,
    probe_exe: &Path,
    r: &mut FerryRun,
    t: Timings,
    every_ms: u64,
) -> anyhow::Result<()> {
    let target = d.floating["ms2"].to_string();
    let probe_log = d.dir.join("probe-ms2.jsonl");
    let client_log = d.dir.join("client-ms2.jsonl");
    ka::start_clients(&d.lab, exe, probe_exe, &d.dir.join("logs"), &target, &probe_log, &client_log, every_ms)?;
    let until = clock::now() + PATIENCE;
    r.token_before = loop {
        let lines = hosts_probe::read(&probe_log);
        if let Some(l) = lines.iter().rev().find(|l| l.ok && l.machine == "machine-c") {
            break l.epoch;
        }
        if clock::now() >= until {
            bail!("the client got no answer from ms2 on machine-c at {target}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Steady renewals, then a random phase of one interval.
    r.phase_ms = rand::random::<u64>() % t.interval_ms.max(1);
    tokio::time::sleep(Duration::from_millis(2 * t.interval_ms + r.phase_ms)).await;
    let since = d.events().await?.iter().map(|e| e.id).max().unwrap_or(0);

    let t0 = clock::now().ms();
    let t0_wall = clock::wall_ms();
    d.lab.crash("machine-c").await?;
    r.crash_took_ms = clock::now().ms() - t0;

    // ms2 renews no more: its row says when its lease runs out (to the nearest few ms: the
    // midpoint of the request).
    let q0 = clock::now().ms();
    let out = d.cli(&["leases", "-o", "json"]).await?;
    let q1 = clock::now().ms();
    let leases: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if let Some(l) = leases.as_array().and_then(|a| a.iter().find(|l| l["name"] == "server/ms2")) {
        if let Some(left) = l["remaining_ms"].as_i64() {
            r.expiry_ms = Some(((q0 + q1) / 2) as i64 - t0 as i64 + left);
        }
    }

    let token_before = r.token_before;
    let accept = |l: &hosts_probe::ProbeLine| l.machine == "machine-d" && l.epoch > token_before;
    let patience = PATIENCE + Duration::from_millis(t.timers_ms() + 2 * t.interval_ms);
    let until = clock::now() + patience;
    let first = loop {
        let v = hosts_probe::view(&hosts_probe::read(&probe_log), t0, "machine-c", accept);
        if let Some(ms) = v.first_new_ms {
            break ms;
        }
        if clock::now() >= until {
            bail!("no answer from ms2 on machine-d within {patience:?} of the crash");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    r.answered_ms = Some(first);
    if let Some(l) = hosts_probe::read(&probe_log).iter().find(|l| l.t0_ms >= t0 && accept(l)) {
        r.token_after = l.epoch;
    }

    let is = |e: &ferry_api::Event, kind: EventKind| e.kind == kind && e.server.as_deref() == Some("ms2");
    let on_d = |e: &ferry_api::Event| e.machine.as_deref() == Some("machine-d");
    let until = clock::now() + Duration::from_secs(10);
    let events = loop {
        let ev: Vec<ferry_api::Event> =
            d.events().await.unwrap_or_default().into_iter().filter(|e| e.id > since).collect();
        if ev.iter().any(|e| is(e, EventKind::LeaseAcquired) && on_d(e)) || clock::now() >= until {
            break ev;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let at = |pred: &dyn Fn(&ferry_api::Event) -> bool| common::first_after(&events, t0_wall, pred);
    r.detect_ms = at(&|e| is(e, EventKind::LeaseExpired));
    r.in_place_ms = at(&|e| is(e, EventKind::RestartInPlace));
    r.migrate_ms = at(&|e| is(e, EventKind::Migrate));
    r.addif_ms = at(&|e| is(e, EventKind::Addif) && on_d(e));
    r.started_ms = at(&|e| is(e, EventKind::ServerStarted) && on_d(e));
    r.leased_ms = at(&|e| is(e, EventKind::LeaseAcquired) && on_d(e));
    if let Some(m) = r.migrate_ms {
        let bound = (t.timers_ms() + t.interval_ms) as i64 + (first - m);
        r.bound_ms = Some(bound);
        r.over_bound = first > bound;
    }

    // The serial client may still be inside its 80 ms timeout; let it and the journals
    // catch up, then read both clients' logs for an older instance after a newer one.
    tokio::time::sleep(Duration::from_millis(150)).await;
    r.demo_client_ms = ka::demo_client_first(&client_log, t0, |l| l.machine == "machine-d" && l.epoch > token_before);
    let pv = hosts_probe::view(&hosts_probe::read(&probe_log), t0, "machine-c", accept);
    let cv = ferry_testkit::client_view(
        &std::fs::read_to_string(&client_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect::<Vec<_>>(),
        t0,
        token_before,
    );
    let mut bad = Vec::new();
    if let Some(w) = pv.went_back {
        bad.push(format!("prober: {w}"));
    }
    if let Some(w) = cv.went_back {
        bad.push(format!("demo-client: {w}"));
    }
    r.safety_violation = (!bad.is_empty()).then(|| bad.join("; "));
    Ok(())
}

/// The difference `b - a` of two optional times.
fn span(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    Some(b? - a?)
}

fn print(rep: &HostsReport) {
    let ka_runs = |advert: u64| -> Vec<&KeepalivedRun> {
        rep.keepalived.iter().flatten().filter(|r| r.advert_ms == advert && r.error.is_none()).collect()
    };
    let ka_p50 = |advert: u64| summarize(ka_runs(advert).iter().filter_map(|r| r.answered_ms)).map(|s| s.p50);
    println!("\n## Outage seen by the client: machine crash → first answer from the new machine\n");
    println!(
        "crash = `Lab::crash` (switch cable pulled, every process of the machine SIGKILLed); client in its own namespace starting a connection to the floating IP every {} ms (overlapping; the first answer's arrival counts); each run a fresh lab, scenarios interleaved; {} s in all; load average at start {}, at end {}\n",
        rep.probe_every_ms, rep.took_s, rep.machine.loadavg, rep.loadavg_after
    );
    println!("| scenario | settings | n | min | p50 | p99 | max | interval × periods + grace | DESIGN §3 bound (+ scan + start p50) | runs over §3 bound | p50 / keepalived p50 |");
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for sc in &rep.ferry_scenarios {
        let t = sc.timings;
        let ok: Vec<&FerryRun> = sc.runs.iter().filter(|r| r.error.is_none()).collect();
        let s = summarize(ok.iter().filter_map(|r| r.answered_ms));
        let start_p50 = summarize(ok.iter().filter_map(|r| span(r.migrate_ms, r.answered_ms))).map_or(0, |s| s.p50);
        let over = ok.iter().filter(|r| r.over_bound).count();
        // Like with like: only for scenarios whose health-check interval is one of the
        // advert intervals keepalived ran with (then against each of them).
        let ratio = match s {
            Some(s) if rep.advert_ms.contains(&t.interval_ms) => rep
                .advert_ms
                .iter()
                .filter_map(|&adv| {
                    ka_p50(adv).filter(|&k| k > 0).map(|k| format!("{:.2} (advert {adv} ms)", s.p50 as f64 / k as f64))
                })
                .collect::<Vec<_>>()
                .join(", "),
            _ => "- (no keepalived run at this interval)".into(),
        };
        let (n, min, p50, p99, max) = s.map_or((0, "-".into(), "-".into(), "-".into(), "-".into()), |s| {
            (s.n, s.min.to_string(), s.p50.to_string(), s.p99.to_string(), s.max.to_string())
        });
        println!(
            "| ferry {} | interval {} ms × {}, grace {} ms | {n} | {min} | {p50} | {p99} | {max} | {} | {} + {} + {start_p50} = {} | {over}/{} | {ratio} |",
            sc.scenario.name(),
            t.interval_ms,
            t.periods,
            t.grace_ms,
            t.timers_ms(),
            t.timers_ms(),
            t.interval_ms,
            t.timers_ms() + t.interval_ms + start_p50 as u64,
            ok.len(),
        );
    }
    if rep.keepalived.is_some() {
        for &adv in &rep.advert_ms {
            let s = summarize(ka_runs(adv).iter().filter_map(|r| r.answered_ms));
            let line = s.map_or("0 | - | - | - | -".into(), |s| {
                format!("{} | {} | {} | {} | {}", s.n, s.min, s.p50, s.p99, s.max)
            });
            println!(
                "| keepalived {} (VRRP v3) | advert_int {adv} ms, priorities 254/253 | {line} | 3 × advert + skew ≈ {} | - | - | 1.00 |",
                rep.keepalived_version,
                3 * adv + (3 * adv).div_ceil(256)
            );
        }
    }
    let p50 = |s: Scenario| {
        rep.ferry_scenarios
            .iter()
            .find(|f| f.scenario == s)
            .and_then(|f| summarize(f.runs.iter().filter(|r| r.error.is_none()).filter_map(|r| r.answered_ms)))
            .map(|s| s.p50)
    };
    let verdict = |ok: bool| if ok { "met" } else { "**NOT MET**" };
    println!();
    if let Some(fast) = p50(Scenario::Fast) {
        println!("- issue target, ferry fast p50 under 1 s: {fast} ms, {}", verdict(fast < 1_000));
        println!("- DESIGN §6, ferry fast p50 under 500 ms: {fast} ms, {}", verdict(fast < 500));
    }
    if let (Some(c), Some(pg)) = (p50(Scenario::Consensus), p50(Scenario::Fast)) {
        println!(
            "- issue 13, ferry consensus within 10% of ferry fast (PostgreSQL) at 100 ms x 3 (p50): {c} vs {pg} ms (ratio {:.2}), {}",
            c as f64 / pg.max(1) as f64,
            verdict(c * 10 <= pg * 11)
        );
    }
    if let (Some(g), Some(k)) = (p50(Scenario::Grace0), ka_p50(100)) {
        println!(
            "- DESIGN §6, ferry grace0 no slower than keepalived at advert_int 100 ms (p50): {g} vs {k} ms, {}",
            verdict(g <= k)
        );
    }

    for sc in &rep.ferry_scenarios {
        let ka_client_p50 =
            summarize(ka_runs(sc.timings.interval_ms).iter().filter_map(|r| r.demo_client_ms)).map(|s| s.p50);
        print_breakdown(sc, ka_client_p50);
    }
    for &adv in rep.advert_ms.iter().filter(|_| rep.keepalived.is_some()) {
        let ka_ok = ka_runs(adv);
        let runs: Vec<&KeepalivedRun> = rep.keepalived.iter().flatten().filter(|r| r.advert_ms == adv).collect();
        println!("\n### keepalived: advert_int {adv} ms\n");
        println!("{}", header("ms from the crash until", "note"));
        println!(
            "{}",
            row(
                "client (overlapping probes): first answer from machine-d",
                ka_ok.iter().filter_map(|r| r.answered_ms),
                "VRRP master-down timer: 3 × advert_int + skew, minus the time since the last advert"
            )
        );
        println!(
            "{}",
            row(
                "`ferry demo-client` (one probe at a time): first answer from machine-d",
                ka_ok.iter().filter_map(|r| r.demo_client_ms),
                ""
            )
        );
        println!(
            "{}",
            row(
                "(`Lab::crash` itself: cable, kill, wait until gone)",
                ka_ok.iter().map(|r| r.crash_took_ms as i64),
                "included above"
            )
        );
        let flapped = runs.iter().filter(|r| r.flaps > 0).count();
        let back = runs.iter().filter(|r| r.went_back.is_some()).count();
        println!(
            "\n- runs where the backup answered before the crash (flapping: not a reliable setting): {flapped}/{}",
            runs.len()
        );
        println!("- runs where machine-c answered after machine-d had: {back}/{}", runs.len());
        failed(runs.iter().filter_map(|r| r.error.as_ref().map(|e| (r.run, e, &r.dir))));
    }
    println!("\n- configs, logs and raw client logs of every run: {}", rep.dir);
}

fn failed<'a>(list: impl Iterator<Item = (usize, &'a String, &'a String)>) {
    let v: Vec<_> = list.collect();
    if !v.is_empty() {
        println!("- failed runs (not in the tables): {}", v.len());
        for (run, e, dir) in v {
            println!("  - run {run}: {e} ({dir})");
        }
    }
}

/// Reads one column of a run.
type Col<'a> = &'a dyn Fn(&FerryRun) -> Option<i64>;

fn print_breakdown(sc: &FerryScenario, ka_client_p50: Option<i64>) {
    let t = sc.timings;
    let ok: Vec<&FerryRun> = sc.runs.iter().filter(|r| r.error.is_none()).collect();
    let col = |g: &dyn Fn(&FerryRun) -> Option<i64>| ok.iter().filter_map(|r| g(r)).collect::<Vec<_>>();
    let connect = (t.interval_ms * 2).clamp(100, 1_000);
    let probe = ferry_host::ipaddr::PROBE_WINDOW.as_millis();
    println!(
        "\n### ferry {}: interval {} ms × {} periods = lease {} ms, grace {} ms\n",
        sc.scenario.name(),
        t.interval_ms,
        t.periods,
        t.ttl_ms(),
        t.grace_ms
    );
    println!("{}", header("ms from the crash until", "expected"));
    let lines: [(&str, Col, String); 9] = [
        (
            "ms2's lease ran out (store's clock)",
            &|r| r.expiry_ms,
            format!(
                "lease - time since the last renewal: {}-{}",
                t.ttl_ms() - t.interval_ms,
                t.ttl_ms()
            ),
        ),
        (
            "master saw it expired (`lease-expired`)",
            &|r| r.detect_ms,
            "expiry (the master scans at the next expiry)".into(),
        ),
        (
            "master asked machine-c to restart it (`restart-in-place`)",
            &|r| r.in_place_ms,
            format!("+ grace {}", t.grace_ms),
        ),
        (
            "master ordered it onto machine-d (`migrate`)",
            &|r| r.migrate_ms,
            format!("+ 0 when the master knows machine-c silent (no answer to its checks for 2 intervals), else its connect timeout {connect}"),
        ),
        (
            "machine-d plumbed the floating IP (`addif`)",
            &|r| r.addif_ms,
            format!("+ lease check + ARP probe {probe} + ip addr add + gratuitous ARP"),
        ),
        (
            "machine-d started ms2 (`server-started`)",
            &|r| r.started_ms,
            String::new(),
        ),
        (
            "ms2 holds its lease on machine-d (`lease-acquired`)",
            &|r| r.leased_ms,
            String::new(),
        ),
        (
            "**client: first answer from ms2 on machine-d**",
            &|r| r.answered_ms,
            format!("§3 bound {} + {} + start", t.timers_ms(), t.interval_ms),
        ),
        (
            "`ferry demo-client` (one probe at a time, 80 ms timeout)",
            &|r| r.demo_client_ms,
            ka_client_p50.map_or(String::new(), |k| {
                format!("keepalived's p50 seen this way: {k}")
            }),
        ),
    ];
    for (what, g, note) in lines {
        println!("{}", row(what, col(g), &note));
    }
    println!("\n{}", header("phase (ms)", "what it is"));
    let phases: [(&str, Col, String); 8] = [
        ("crash → expiry", &|r| r.expiry_ms, "waiting out the lease".into()),
        ("expiry → `lease-expired`", &|r| span(r.expiry_ms, r.detect_ms), "master's detection lag (clocks: store vs master's wall clock)".into()),
        ("`lease-expired` → `restart-in-place`", &|r| span(r.detect_ms, r.in_place_ms), format!("fencing grace period {}", t.grace_ms)),
        ("`restart-in-place` → `migrate`", &|r| span(r.in_place_ms, r.migrate_ms), format!("0 if the master already saw machine-c's Node Manager silent for 2 intervals, else the connect timeout to it, 2 × interval = {connect}")),
        ("`migrate` → `addif`", &|r| span(r.migrate_ms, r.addif_ms), format!("machine-d's NM: lease check, ARP duplicate-address probe ({probe}), ip addr add, gratuitous ARP")),
        ("`addif` → `server-started`", &|r| span(r.addif_ms, r.started_ms), "mount hooks, spawn `ferry server`".into()),
        ("`server-started` → `lease-acquired`", &|r| span(r.started_ms, r.leased_ms), "server reads its config, acquires its lease (new epoch)".into()),
        ("`lease-acquired` → answer", &|r| span(r.leased_ms, r.answered_ms), "service starts and listens; client connects".into()),
    ];
    for (what, g, note) in phases {
        println!("{}", row(what, col(g), &note));
    }
    println!(
        "{}",
        row(
            "(`Lab::crash` itself: cable, kill, wait until gone)",
            col(&|r| Some(r.crash_took_ms as i64)),
            "included above"
        )
    );
    let n = ok.len();
    let over: Vec<&&FerryRun> = ok.iter().filter(|r| r.over_bound).collect();
    let timers = t.timers_ms() as i64;
    let over_timers = ok.iter().filter(|r| r.answered_ms.is_some_and(|a| a > timers)).count();
    println!();
    println!("- outage over interval × periods + grace ({timers} ms): {over_timers}/{n} runs");
    println!(
        "- outage over DESIGN §3's bound (+ {} scan + that run's start time `migrate` → answer): **{}/{n} runs**{}",
        t.interval_ms,
        over.len(),
        if over.is_empty() { "" } else { "  <- FLAGGED" }
    );
    for r in &over {
        println!("  - run {}: outage {} ms > bound {} ms; {}", r.run, f(r.answered_ms), f(r.bound_ms), r.dir);
    }
    let unsafe_runs: Vec<&FerryRun> = sc.runs.iter().filter(|r| r.safety_violation.is_some()).collect();
    println!(
        "- safety (journals: never two instances at once; clients: never an older instance after a newer one): {}/{} runs clean{}",
        sc.runs.len() - unsafe_runs.len(),
        sc.runs.len(),
        if unsafe_runs.is_empty() { "" } else { "  <- VIOLATION" }
    );
    for r in unsafe_runs {
        println!("  - run {}: {} ({})", r.run, r.safety_violation.as_deref().unwrap_or(""), r.dir);
    }
    failed(sc.runs.iter().filter_map(|r| r.error.as_ref().map(|e| (r.run, e, &r.dir))));
    let retried = sc.runs.iter().filter(|r| r.setup_attempts > 1).count();
    if retried > 0 {
        println!("- runs whose first lab did not make ms1 master (restarted before measuring): {retried}");
    }
}
