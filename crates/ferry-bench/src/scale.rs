//! Scenario: many servers per machine (issue 11). For each N, a fresh domain of N servers
//! spread round-robin over M machines (`DomainSpec::many`: `s001`.. on `node-1`..`node-M`,
//! cluster `scale`); measured: the cluster's start until every server is RUNNING (and the
//! fences it cost), how many servers did not start at home, fences per minute while nothing
//! is wrong, the latency of the admin's status call (`GET /api/v1/servers`, what `ferry
//! status` reads), CPU and RSS of each kind of process, and the failover of every server of a
//! killed machine (`node-2`) next to the liveness bound, with the fences it caused elsewhere.
//! Every server's journal is checked afterwards (never two instances at once).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ferry_api::{Event, EventKind, ServerStatus, ViewState};
use ferry_host::clock;
use ferry_testkit::{DomainSpec, Harness};
use serde::Serialize;

use crate::common::{self, MachineFacts, Timings};
use crate::leases_tally::micros;
use crate::stats::summarize;

/// The machine `failover` kills.
const VICTIM: &str = "node-2";

/// Status calls sampled during the steady window.
const STATUS_SAMPLES: u32 = 50;

#[derive(Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Servers of each run, comma-separated (each run a fresh domain).
    #[arg(long, value_delimiter = ',', default_values_t = [25, 50, 100, 200])]
    pub servers: Vec<usize>,
    /// Machines (each a Node Manager) the servers are spread over, round-robin.
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
    /// How long the steady state (nothing wrong) is measured.
    #[arg(long, default_value_t = 60)]
    pub steady_secs: u64,
    /// How each service starts: `python` (a python3 interpreter that imports http.server,
    /// then becomes the demo service: the start cost of issue 11's python3 services) or
    /// `demo` (the demo service alone, a few ms).
    #[arg(long, value_enum, default_value_t = ServiceKind::Python)]
    pub service: ServiceKind,
    /// Every machine's `max_concurrent_starts` (default: left out of the domain file, so
    /// ferry's default applies).
    #[arg(long)]
    pub starts_per_machine: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum ServiceKind {
    Python,
    Demo,
}

/// One process's use of the machine over the steady window.
#[derive(Debug, Clone, Serialize)]
pub struct ProcUse {
    /// `admin`, `nodemanager`, `server` (`ferry server`) or `service` (its demo service).
    pub kind: &'static str,
    pub machine: String,
    pub pid: i32,
    /// utime + stime over the window, in % of one core.
    pub cpu_pct: f64,
    /// Mean VmRSS over the window's samples.
    pub rss_kib: u64,
}

/// The failover of node-2's servers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleFailover {
    /// node-2's live processes just before the kill (Node Manager, servers, services).
    pub processes_killed: usize,
    /// Servers RUNNING on node-2 at the kill (their epoch then).
    pub on_victim: BTreeMap<String, u64>,
    /// Whether the cluster master ran on node-2.
    pub master_on_victim: bool,
    /// Per server: ms from the kill until the status showed it RUNNING elsewhere with a
    /// larger epoch (status polled every 100 ms).
    pub running_elsewhere_ms: BTreeMap<String, i64>,
    /// Per server: ms from the kill until its `migrate` event (the master's order).
    pub migrate_ms: BTreeMap<String, i64>,
    /// Where each went.
    pub moved_to: BTreeMap<String, String>,
    /// Servers not RUNNING elsewhere by the deadline, with their last status.
    pub missing: Vec<String>,
    /// interval x periods + grace + one scan interval.
    pub bound_ms: u64,
    /// `fenced` events of servers that were not on node-2, after the kill.
    pub collateral_fences: Vec<String>,
    /// `fenced` events of node-2's servers, after the kill.
    pub victim_fences: usize,
}

/// One N.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleRun {
    pub servers: usize,
    pub machines: usize,
    pub dir: String,
    pub loadavg_before: String,
    pub loadavg_after: String,
    /// `ferry start s001` alone on the idle domain until the status showed it RUNNING
    /// (polled every 50 ms): one uncontended start, the "start" of the failover bound.
    pub one_start_ms: Option<i64>,
    /// CPU (utime + stime, ms) that start cost: s001's `ferry server` and its services,
    /// read once it is RUNNING. Times the servers a machine failure moves, over the host's
    /// cores, it is the least any takeover on this one host can take after the master's order.
    pub one_start_cpu_ms: Option<u64>,
    /// From `start-cluster` until the status showed every server RUNNING.
    pub start_ms: Option<i64>,
    /// On a start timeout: the servers not RUNNING, with their last status.
    pub start_missing: Vec<String>,
    /// `fenced` events from `start-cluster` until one interval after every server ran.
    pub start_fences: Vec<String>,
    /// `lease-expired` events in the same span.
    pub start_lease_expired: usize,
    /// Servers whose instance after the start is not their first.
    pub start_not_first_instance: Vec<String>,
    /// Servers RUNNING on a machine other than their home machine after the start.
    pub off_home: Vec<String>,
    /// The cluster master after the start, and its machine.
    pub master: Option<String>,
    /// The measured steady window.
    pub steady_ms: Option<u64>,
    pub steady_fences: Vec<String>,
    pub steady_fences_per_min: Option<f64>,
    /// Durations of `GET /api/v1/servers` in the steady window, µs.
    pub status_us: Vec<i64>,
    pub status_errors: usize,
    /// Every admin, Node Manager, server and service process alive through the window.
    pub procs: Vec<ProcUse>,
    /// Servers per Node Manager (by the status at the end of the window).
    pub servers_per_nm: BTreeMap<String, usize>,
    pub failover: Option<ScaleFailover>,
    pub safety_violation: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub machine: MachineFacts,
    pub ferry: String,
    pub dir: String,
    pub timings: Timings,
    pub machines: usize,
    pub steady_secs: u64,
    pub runs: Vec<ScaleRun>,
}

pub async fn run(a: ScaleArgs, exe: &Path, base: &Path, json: Option<PathBuf>) -> anyhow::Result<()> {
    anyhow::ensure!(a.interval_ms > 0 && a.periods > 0, "interval and periods must be positive");
    anyhow::ensure!(!a.servers.is_empty() && a.servers.iter().all(|&n| n > 0), "--servers: positive counts");
    anyhow::ensure!(a.machines >= 2, "--machines: at least 2 (node-2 is killed)");
    let t = Timings { interval_ms: a.interval_ms, periods: a.periods, grace_ms: a.grace_ms };
    let facts = common::print_header("ferry-bench scale", exe, base);
    println!(
        "settings: servers {:?} (each a fresh domain: Administration Server, {} Node Managers node-1..node-{}, servers s001.. round-robin from node-1, one cluster `scale` whose candidates are every machine, SQLite lease table); \
         health_check_interval {} ms x {} periods = lease {} ms, fencing_grace_period {} ms; steady window {} s; every service is {}",
        a.servers,
        a.machines,
        a.machines,
        t.interval_ms,
        t.periods,
        t.ttl_ms(),
        t.grace_ms,
        a.steady_secs,
        match a.service {
            ServiceKind::Python => "a python3 interpreter importing http.server that then becomes the demo service (journalling every 10 ms)",
            ServiceKind::Demo => "the demo service, journalling every 10 ms",
        }
    );
    let mut rep = ScaleReport {
        machine: facts,
        ferry: exe.display().to_string(),
        dir: base.display().to_string(),
        timings: t,
        machines: a.machines,
        steady_secs: a.steady_secs,
        runs: Vec::new(),
    };
    for &n in &a.servers {
        let dir = base.join("scale").join(format!("servers-{n:04}"));
        let r = one(exe, &dir, n, &a, t).await;
        eprintln!("scale {n}: {}", progress(&r));
        rep.runs.push(r);
    }
    print(&rep);
    if let Some(path) = &json {
        let text = serde_json::to_string_pretty(&rep)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("\nraw samples: {}", path.display());
    }
    Ok(())
}

/// One N on a fresh domain; every failure is recorded in the run, and dropping the harness
/// at the end kills every process of the domain.
async fn one(exe: &Path, dir: &Path, n: usize, a: &ScaleArgs, t: Timings) -> ScaleRun {
    let mut r = ScaleRun {
        servers: n,
        machines: a.machines,
        dir: dir.display().to_string(),
        loadavg_before: common::loadavg(),
        ..ScaleRun::default()
    };
    let mut spec = DomainSpec::many(n, a.machines, t.interval_ms, t.periods, t.grace_ms);
    spec.starts_per_machine = a.starts_per_machine;
    if a.service == ServiceKind::Python {
        spec.service_prefix = ferry_testkit::PYTHON_SERVICE.iter().map(|s| s.to_string()).collect();
    }
    match Harness::start(spec, exe, Some(dir.to_path_buf())).await {
        Ok(h) => {
            if let Err(e) = measure(&h, &mut r, a, t).await {
                r.error = Some(format!("{e:#}"));
            }
            r.safety_violation = common::safety(&h).err();
        }
        Err(e) => r.error = Some(format!("domain did not start: {e:#}")),
    }
    r.loadavg_after = common::loadavg();
    r
}

async fn measure(h: &Harness, r: &mut ScaleRun, a: &ScaleArgs, t: Timings) -> anyhow::Result<()> {
    let n = r.servers;
    // 0. One start alone (the first server; start-cluster then finds it running).
    let since = common::last_event_id(h).await?;
    let t0 = clock::now();
    h.admin().start("s001").await.context("start s001 refused")?;
    let (ok, _) = poll_status(h, Duration::from_secs(60), Duration::from_millis(50), |l| {
        l.iter().any(|s| s.name.as_str() == "s001" && s.state == ViewState::Running)
    })
    .await;
    if ok {
        r.one_start_ms = Some(clock::now().since(t0) as i64);
        r.one_start_cpu_ms = start_cpu_ms(h, "s001");
    }
    // 1. The start.
    let deadline = Duration::from_secs(120 + n as u64);
    let t0 = clock::now();
    h.admin().start_cluster("scale").await.context("start-cluster refused")?;
    let (ok, list) = poll_status(h, deadline, Duration::from_millis(200), |l| {
        l.len() == n && l.iter().all(|s| s.state == ViewState::Running)
    })
    .await;
    if !ok {
        r.start_missing = list.iter().filter(|s| s.state != ViewState::Running).map(describe).collect();
        if list.len() < n {
            r.start_missing.push(format!("the status lists {} of {n} servers", list.len()));
        }
        anyhow::bail!("not every server RUNNING {deadline:?} after start-cluster ({} missing)", r.start_missing.len());
    }
    r.start_ms = Some(clock::now().since(t0) as i64);
    r.off_home = list.iter().filter(|s| s.machine.as_deref() != Some(s.home_machine.as_str())).map(describe).collect();
    r.start_not_first_instance =
        list.iter().filter(|s| s.epoch.map(|e| e.0) != Some(1)).map(|s| s.name.to_string()).collect();
    r.master = list.iter().find(|s| s.master).map(|s| format!("{} on {}", s.name, s.machine.as_deref().unwrap_or("-")));
    // Events reach the admin a moment after they happen: one interval later, everything up
    // to now counts for the start.
    tokio::time::sleep(Duration::from_millis(t.interval_ms)).await;
    let events = h.admin().events(since).await?;
    r.start_fences = fences(&events, |_| true);
    r.start_lease_expired = events.iter().filter(|e| e.kind == EventKind::LeaseExpired).count();
    let since = events.last().map_or(since, |e| e.id);

    // 2. The steady state: status latency, fences, CPU and RSS.
    let procs = domain_procs(h);
    let cpu0: Vec<u64> = procs.iter().map(|p| cpu_ticks(p.pid).unwrap_or(0)).collect();
    let mut rss: Vec<Vec<u64>> = vec![Vec::new(); procs.len()];
    let w0 = clock::now();
    let window = Duration::from_secs(a.steady_secs);
    let admin = h.admin();
    let mut last = Vec::new();
    for k in 0..STATUS_SAMPLES {
        let at = w0.0 + window.as_millis() as u64 * k as u64 / STATUS_SAMPLES as u64;
        tokio::time::sleep(Duration::from_millis(at.saturating_sub(clock::now().0))).await;
        let q0 = micros();
        match admin.servers().await {
            Ok(l) => {
                r.status_us.push(micros().saturating_sub(q0) as i64);
                last = l;
            }
            Err(_) => r.status_errors += 1,
        }
        for (i, p) in procs.iter().enumerate() {
            if let Some(kib) = rss_kib(p.pid) {
                rss[i].push(kib);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis((w0.0 + window.as_millis() as u64).saturating_sub(clock::now().0))).await;
    let cpu1: Vec<Option<u64>> = procs.iter().map(|p| cpu_ticks(p.pid)).collect();
    let secs = clock::now().since(w0) as f64 / 1000.0;
    r.steady_ms = Some(clock::now().since(w0));
    let hz = common::clock_ticks_per_s();
    for (i, p) in procs.iter().enumerate() {
        // A process that died in the window (a restart) is left out.
        let (Some(c1), false) = (cpu1[i], rss[i].is_empty()) else { continue };
        if !ferry_host::process::alive(p.pid) {
            continue;
        }
        r.procs.push(ProcUse {
            kind: p.kind,
            machine: p.machine.clone(),
            pid: p.pid,
            cpu_pct: c1.saturating_sub(cpu0[i]) as f64 / hz / secs.max(1e-3) * 100.0,
            rss_kib: rss[i].iter().sum::<u64>() / rss[i].len() as u64,
        });
    }
    for s in &last {
        if let Some(m) = s.machine.as_deref() {
            *r.servers_per_nm.entry(m.to_string()).or_default() += 1;
        }
    }
    let events = h.admin().events(since).await?;
    r.steady_fences = fences(&events, |_| true);
    r.steady_fences_per_min = Some(r.steady_fences.len() as f64 * 60.0 / secs.max(1e-3));
    let since = events.last().map_or(since, |e| e.id);

    // 3. The failover of node-2.
    let mut f = ScaleFailover { bound_ms: t.timers_ms() + t.interval_ms, ..ScaleFailover::default() };
    let status = h.status().await?;
    for s in status.iter().filter(|s| s.machine.as_deref() == Some(VICTIM)) {
        f.on_victim.insert(s.name.to_string(), s.epoch.map_or(0, |e| e.0));
        f.master_on_victim |= s.master;
    }
    f.processes_killed = h.machine_pids(VICTIM).len();
    let t0 = clock::now();
    let t0_wall = clock::wall_ms();
    h.kill_machine(VICTIM);
    let deadline = Duration::from_secs(60 + f.on_victim.len() as u64);
    let moved = |s: &ServerStatus, before: u64| {
        s.state == ViewState::Running
            && s.machine.as_deref().is_some_and(|m| m != VICTIM)
            && s.epoch.map_or(0, |e| e.0) > before
    };
    let until = t0 + deadline;
    let mut list = Vec::new();
    loop {
        if let Ok(l) = h.status().await {
            let at = clock::now().since(t0) as i64;
            for s in &l {
                if let Some(&before) = f.on_victim.get(s.name.as_str()) {
                    if moved(s, before) && !f.running_elsewhere_ms.contains_key(s.name.as_str()) {
                        f.running_elsewhere_ms.insert(s.name.to_string(), at);
                        f.moved_to.insert(s.name.to_string(), s.machine.as_deref().unwrap_or("-").to_string());
                    }
                }
            }
            list = l;
        }
        if f.running_elsewhere_ms.len() == f.on_victim.len() || clock::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.missing = list
        .iter()
        .filter(|s| f.on_victim.contains_key(s.name.as_str()) && !f.running_elsewhere_ms.contains_key(s.name.as_str()))
        .map(describe)
        .collect();
    // A late fence elsewhere still counts: wait one lease and grace more.
    tokio::time::sleep(Duration::from_millis(t.timers_ms())).await;
    let events = h.admin().events(since).await?;
    let victim = |e: &Event| e.server.as_deref().is_some_and(|s| f.on_victim.contains_key(s));
    f.collateral_fences = fences(&events, |e| !victim(e));
    f.victim_fences = fences(&events, victim).len();
    for e in events.iter().filter(|e| e.kind == EventKind::Migrate && victim(e)) {
        let s = e.server.as_deref().unwrap_or("-").to_string();
        f.migrate_ms.entry(s).or_insert(e.at_ms as i64 - t0_wall as i64);
    }
    let missing = f.missing.len();
    r.failover = Some(f);
    if missing > 0 {
        anyhow::bail!("{missing} of {VICTIM}'s servers not RUNNING elsewhere {deadline:?} after the kill");
    }
    // Let the moved instances write a few journal lines before the safety check.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

/// Polls the status every `every` until `done` holds or `patience` runs out; gives whether it
/// held and the last status read.
pub(crate) async fn poll_status(
    h: &Harness,
    patience: Duration,
    every: Duration,
    done: impl Fn(&[ServerStatus]) -> bool,
) -> (bool, Vec<ServerStatus>) {
    let until = clock::now() + patience;
    let mut last = Vec::new();
    loop {
        if let Ok(l) = h.status().await {
            if done(&l) {
                return (true, l);
            }
            last = l;
        }
        if clock::now() >= until {
            return (false, last);
        }
        tokio::time::sleep(every).await;
    }
}

fn describe(s: &ServerStatus) -> String {
    format!(
        "{} {} on {} (home {}, epoch {})",
        s.name,
        s.state.as_str(),
        s.machine.as_deref().unwrap_or("-"),
        s.home_machine.as_str(),
        s.epoch.map_or("-".into(), |e| e.0.to_string())
    )
}

/// The `fenced` events (a server fencing itself, or its Node Manager fencing it) that `pick`
/// takes, one line each.
fn fences(events: &[Event], pick: impl Fn(&Event) -> bool) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::Fenced && pick(e))
        .map(|e| format!("{} {} ({}): {}", e.kind, e.server.as_deref().unwrap_or("-"), e.source, e.message))
        .collect()
}

/// A process of the domain.
struct Proc {
    kind: &'static str,
    machine: String,
    pid: i32,
}

/// Every live process of the domain: the admin, and per machine its Node Manager, its
/// `ferry server` processes and their services (told apart by their command line).
fn domain_procs(h: &Harness) -> Vec<Proc> {
    let mut out = Vec::new();
    let machines = std::iter::once("admin".to_string()).chain(h.spec.machines.iter().cloned());
    for m in machines {
        for pid in h.machine_pids(&m) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let kind = match args.get(1).copied() {
                Some(b"admin") => "admin",
                Some(b"nodemanager") => "nodemanager",
                Some(b"server") => "server",
                Some(b"demo-service") => "service",
                _ => continue,
            };
            out.push(Proc { kind, machine: m.clone(), pid });
        }
    }
    out
}

/// utime + stime (ms) of `server`'s `ferry server` process and of its children (its
/// services; a service that exec'd keeps its pid and its times).
fn start_cpu_ms(h: &Harness, server: &str) -> Option<u64> {
    let procs = domain_procs(h);
    let parent = procs.iter().find(|p| {
        p.kind == "server"
            && std::fs::read(format!("/proc/{}/cmdline", p.pid))
                .is_ok_and(|c| c.split(|&b| b == 0).nth(2) == Some(server.as_bytes()))
    })?;
    let ppid = |pid: i32| common::stat_fields(&pid.to_string())?.get(1)?.parse::<i32>().ok();
    let ticks: u64 = procs
        .iter()
        .filter(|p| p.pid == parent.pid || (p.kind == "service" && ppid(p.pid) == Some(parent.pid)))
        .filter_map(|p| cpu_ticks(p.pid))
        .sum();
    Some((ticks as f64 * 1000.0 / common::clock_ticks_per_s()) as u64)
}

/// utime + stime of a live process, in clock ticks.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let f = common::stat_fields(&pid.to_string())?;
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// VmRSS of a live process, KiB.
fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn progress(r: &ScaleRun) -> String {
    let f = |v: Option<i64>| v.map_or("-".into(), |v| v.to_string());
    let fo = r.failover.as_ref();
    let moved = fo.map(|f| f.running_elsewhere_ms.values().copied().max());
    format!(
        "start {} ms, {} fences; {} off home; steady {} fences; status p50 {} us; failover max {} ms{}{}",
        f(r.start_ms),
        r.start_fences.len(),
        r.off_home.len(),
        r.steady_fences.len(),
        summarize(r.status_us.iter().copied()).map_or("-".into(), |s| s.p50.to_string()),
        f(moved.flatten()),
        r.error.as_ref().map_or(String::new(), |e| format!("; ERROR: {e}")),
        r.safety_violation.as_ref().map_or(String::new(), |v| format!("; SAFETY VIOLATION: {v}")),
    )
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn ms_of_us(us: i64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

fn mib(kib: f64) -> String {
    format!("{:.1}", kib / 1024.0)
}

/// The markdown report.
pub fn print(rep: &ScaleReport) {
    let t = rep.timings;
    let bound = t.timers_ms() + t.interval_ms;
    println!("\n## scale: N servers on {} machines\n", rep.machines);
    println!(
        "start = `start-cluster scale` until the status (`GET /api/v1/servers`, polled every 200 ms) shows every server RUNNING; \
         fences = `fenced` events (a server fencing itself or its Node Manager fencing it); off home = RUNNING on a machine other than its home after the start; \
         steady = {} s with nothing wrong, the status call timed {STATUS_SAMPLES} times in it; safety = every server's journal shows never two instances at once\n",
        rep.steady_secs
    );
    println!("| servers | per machine | start (ms) | fences in start | off home | steady fences/min | status p50 / p99 (ms) | safety |");
    println!("|--:|--:|--:|--:|--:|--:|--:|---|");
    for r in &rep.runs {
        let st = summarize(r.status_us.iter().copied());
        println!(
            "| {} | {:.1} | {} | {} | {} | {} | {} | {} |",
            r.servers,
            r.servers as f64 / r.machines as f64,
            r.start_ms.map_or("**timeout**".into(), |v| v.to_string()),
            if r.start_ms.is_some() { r.start_fences.len().to_string() } else { "-".into() },
            if r.start_ms.is_some() { r.off_home.len().to_string() } else { "-".into() },
            r.steady_fences_per_min.map_or("-".into(), |v| format!("{v:.1}")),
            st.map_or("-".into(), |s| format!("{} / {}", ms_of_us(s.p50), ms_of_us(s.p99))),
            match &r.safety_violation {
                None => "OK".to_string(),
                Some(v) => format!("**VIOLATION**: {v}"),
            }
        );
    }

    println!(
        "\n### CPU and memory over the steady window\n\nCPU in % of one core (utime + stime over the window; the host has {} cores), RSS = mean VmRSS; \
         server = `ferry server`, service = its demo service; the benchmark's own status calls are part of the admin's load\n",
        rep.machine.nproc
    );
    println!("| servers | kind | processes | CPU % sum | CPU % per process | RSS MiB per process |");
    println!("|--:|---|--:|--:|--:|--:|");
    for r in &rep.runs {
        for kind in ["admin", "nodemanager", "server", "service"] {
            let ps: Vec<&ProcUse> = r.procs.iter().filter(|p| p.kind == kind).collect();
            if ps.is_empty() {
                continue;
            }
            let cpu: f64 = ps.iter().map(|p| p.cpu_pct).sum();
            let rss: f64 = ps.iter().map(|p| p.rss_kib as f64).sum::<f64>() / ps.len() as f64;
            println!(
                "| {} | {kind} | {} | {cpu:.1} | {:.2} | {} |",
                r.servers,
                ps.len(),
                cpu / ps.len() as f64,
                mib(rss)
            );
        }
    }
    println!("\nNode Manager RSS against the servers it runs:\n");
    println!(
        "| servers | servers per Node Manager | Node Manager RSS MiB (mean; min-max) | Node Manager CPU % (mean) |"
    );
    println!("|--:|--:|--:|--:|");
    let mut points = Vec::new();
    let mut sizes = 0;
    for r in &rep.runs {
        let nms: Vec<&ProcUse> = r.procs.iter().filter(|p| p.kind == "nodemanager").collect();
        if nms.is_empty() {
            continue;
        }
        let per: Vec<f64> = nms.iter().map(|p| r.servers_per_nm.get(&p.machine).copied().unwrap_or(0) as f64).collect();
        let per_mean = per.iter().sum::<f64>() / per.len() as f64;
        let rss: Vec<u64> = nms.iter().map(|p| p.rss_kib).collect();
        let mean = rss.iter().sum::<u64>() as f64 / rss.len() as f64;
        sizes += 1;
        for (p, x) in nms.iter().zip(&per) {
            points.push((*x, p.rss_kib as f64));
        }
        println!(
            "| {} | {per_mean:.1} | {} ({}-{}) | {:.1} |",
            r.servers,
            mib(mean),
            mib(*rss.iter().min().unwrap_or(&0) as f64),
            mib(*rss.iter().max().unwrap_or(&0) as f64),
            nms.iter().map(|p| p.cpu_pct).sum::<f64>() / nms.len() as f64
        );
    }
    // One domain size alone spreads its Node Managers' loads too little for a slope.
    if let Some((slope, icept)) = fit(&points).filter(|_| sizes >= 2) {
        println!(
            "\n- least-squares fit over every Node Manager: RSS ≈ {} MiB + {:.0} KiB per server it runs",
            mib(icept),
            slope
        );
    }

    println!(
        "\n### failover: {VICTIM} killed (SIGKILL of its Node Manager, servers and services)\n\n\
         from the kill until the status (polled every 100 ms) shows each of {VICTIM}'s servers RUNNING on another machine with a larger epoch; \
         ordered = its `migrate` event (the master's order; source clock); p50 bound = the seed's interval x periods + grace, plus one interval (the master's scan) = {} + {} + {} = {bound} ms; \
         max bound = that plus one start (`ferry start s001` alone on the idle domain, same run): DESIGN §3's liveness bound; \
         CPU floor = the CPU of that one start x the servers moved / the host's {} cores: on one host shared by every machine, no takeover finishes sooner after the master's order \
         (the last of them at ordered max + floor, the median near ordered p50 + floor / 2); \
         collateral = `fenced` events of servers that were not on {VICTIM}, until one lease + grace after the last moved\n",
        t.ttl_ms(),
        t.grace_ms,
        t.interval_ms,
        cores()
    );
    println!("| servers | on {VICTIM} | moved | ordered p50 / max (ms) | RUNNING elsewhere p50 / max (ms) | p50 bound: seed + interval (ms) | one start (ms) | max bound: + one start (ms) | over max bound | one start's CPU (ms) | CPU floor (ms) | collateral fences |");
    println!("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in &rep.runs {
        let Some(f) = &r.failover else { continue };
        let pm = |v: &BTreeMap<String, i64>| {
            summarize(v.values().copied()).map_or("-".into(), |s| format!("{} / {}", s.p50, s.max))
        };
        let max_bound = r.one_start_ms.map(|one| bound as i64 + one);
        let over = max_bound.map_or("-".into(), |b| {
            format!("{}/{}", f.running_elsewhere_ms.values().filter(|&&v| v > b).count(), f.on_victim.len())
        });
        let floor = r.one_start_cpu_ms.map(|c| c * f.on_victim.len() as u64 / cores() as u64);
        println!(
            "| {} | {}{} | {} | {} | {} | {bound} | {} | {} | {over} | {} | {} | {} |",
            r.servers,
            f.on_victim.len(),
            if f.master_on_victim { " (master)" } else { "" },
            f.running_elsewhere_ms.len(),
            pm(&f.migrate_ms),
            pm(&f.running_elsewhere_ms),
            r.one_start_ms.map_or("-".into(), |v| v.to_string()),
            max_bound.map_or("-".into(), |v| v.to_string()),
            r.one_start_cpu_ms.map_or("-".into(), |v| v.to_string()),
            floor.map_or("-".into(), |v| v.to_string()),
            f.collateral_fences.len()
        );
    }

    println!();
    for r in &rep.runs {
        let mut notes = Vec::new();
        if let Some(e) = &r.error {
            notes.push(format!("error: {e}"));
        }
        if !r.start_missing.is_empty() {
            notes.push(format!("not RUNNING at the start deadline: {}", r.start_missing.join("; ")));
        }
        for (what, v) in [
            ("fences in the start", &r.start_fences),
            ("off home after the start", &r.off_home),
            ("not their first instance after the start", &r.start_not_first_instance),
            ("steady fences", &r.steady_fences),
        ] {
            if !v.is_empty() {
                notes.push(format!("{what} ({}): {}", v.len(), v.join("; ")));
            }
        }
        if r.start_lease_expired > 0 {
            notes.push(format!("`lease-expired` events in the start: {}", r.start_lease_expired));
        }
        if r.status_errors > 0 {
            notes.push(format!("status calls that failed: {}", r.status_errors));
        }
        if let Some(f) = &r.failover {
            if !f.missing.is_empty() {
                notes.push(format!("not RUNNING elsewhere at the failover deadline: {}", f.missing.join("; ")));
            }
            if !f.collateral_fences.is_empty() {
                notes.push(format!("collateral fences: {}", f.collateral_fences.join("; ")));
            }
            let to: BTreeSet<&str> = f.moved_to.values().map(String::as_str).collect();
            let mut spread: Vec<String> = to
                .iter()
                .map(|m| format!("{m} {}", f.moved_to.values().filter(|v| v.as_str() == *m).count()))
                .collect();
            spread.sort();
            if !spread.is_empty() {
                notes.push(format!("{VICTIM}'s servers went to: {}", spread.join(", ")));
            }
        }
        println!(
            "- {} servers: master {}; load average {} before, {} after; {}{}",
            r.servers,
            r.master.as_deref().unwrap_or("-"),
            r.loadavg_before,
            r.loadavg_after,
            r.dir,
            if notes.is_empty() { String::new() } else { format!("\n  - {}", notes.join("\n  - ")) }
        );
    }
}

/// Least-squares line through `(x, y)`: (slope, intercept); `None` without two distinct x.
fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if points.len() < 2 || sxx < 1e-9 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    Some((slope, my - slope * mx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_fit() {
        let (s, i) = fit(&[(1.0, 3.0), (2.0, 5.0), (3.0, 7.0)]).unwrap();
        assert!((s - 2.0).abs() < 1e-9 && (i - 1.0).abs() < 1e-9);
        assert!(fit(&[(1.0, 1.0), (1.0, 2.0)]).is_none());
        assert!(fit(&[]).is_none());
    }

    #[test]
    fn ticks_and_rss_of_this_process() {
        assert!(cpu_ticks(std::process::id() as i32).is_some());
        assert!(rss_kib(std::process::id() as i32).unwrap() > 0);
    }
}
