//! Scenario 3, the lease table at scale (DESIGN §6): N leases on one private PostgreSQL,
//! each renewed once per `health_check_interval` by its holder, open loop; renewals per
//! second achieved against the target, renewal latency, the cluster master's scan with a
//! share of the leases expired, and the database's own single-row `UPDATE` rate on the same
//! server and connection count (pgbench, and a bare tokio-postgres client), so ferry's rate
//! reads as a ratio of what the database can do.
//!
//! Per configuration (the server as the tests start it, then restarted with settings a DBA
//! would tune; durability is never turned off) and per N, on a fresh schema:
//! 1. `ferry leasing init` (`ferry_store::init`), then N `acquire`s;
//! 2. renewal phases, batched then single (each preceded by acquiring again any lease an
//!    earlier phase lost);
//! 3. in the last configuration, the master's scan at growing expired shares, while the
//!    other leases keep renewing;
//! 4. closed-loop capacity of `renew`, `renew_many` and the bare `UPDATE` on a copy of the
//!    table with the same N rows.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use ferry_store::postgres::{PostgresOptions, PostgresStore};
use serde::Serialize;

use crate::common::{loadavg, MachineFacts};
use crate::leases_load::{self, micros, Batching, Fleet, Mode, PhaseReport};
use crate::leases_pg::{self, BaselineReport, Server};
use crate::leases_scan::{self, ScanReport};

/// The TTL of the leases' first acquisition: long enough to outlast acquiring 100,000 of
/// them; renewals then use `interval × periods`.
const ACQUIRE_TTL: Duration = Duration::from_secs(120);

#[derive(Args, Debug, Clone, Serialize)]
pub struct LeasesArgs {
    /// Numbers of leases (servers), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub n: Vec<usize>,
    /// Connections to PostgreSQL, in total, shared by the simulated Node Managers.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Simulated Node Managers (machines); each has a pool of connections / node-managers
    /// and the servers i with i % node-managers == its number.
    #[arg(long, default_value_t = 4)]
    pub node_managers: usize,
    /// Seconds of each renewal phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// single: every holder calls `renew`; batched: each Node Manager sends its holders'
    /// renewals as one `renew_many`.
    #[arg(long, value_enum, default_value_t = ModeArg::Both)]
    pub mode: ModeArg,
    /// Server configurations, in order: default (as the tests start it), tuned.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "default,tuned")]
    pub configs: Vec<ConfigArg>,
    /// health_check_interval: each lease is renewed once per interval.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// health_check_periods_until_fencing: the renewal TTL is interval × periods.
    #[arg(long, default_value_t = 3)]
    pub periods: u32,
    /// Batched mode: a Node Manager sends what has accumulated this long after the first
    /// renewal arrived (or sooner, when a batch is full).
    #[arg(long, default_value_t = 5)]
    pub batch_window_ms: u64,
    /// Batched mode: the largest batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_max: usize,
    /// Expired shares of the leases, in percent, at which the master's scan is timed (in
    /// the last configuration only).
    #[arg(long, value_delimiter = ',', default_value = "0.1,1,10")]
    pub expired_pct: Vec<f64>,
    /// Seconds of scans at each expired share.
    #[arg(long, default_value_t = 2)]
    pub scan_seconds: u64,
    /// The master scans this often (each kind of scan is timed `scan_seconds`). ferry's master
    /// scans once per interval and at each expiry; more often gives more samples.
    #[arg(long, default_value_t = 100)]
    pub scan_every_ms: u64,
    /// Seconds of each closed-loop baseline and capacity run.
    #[arg(long, default_value_t = 2)]
    pub baseline_seconds: u64,
    /// Also run a mode at a larger N after it missed more than 1% of its slots at a smaller
    /// one (by default it is skipped: it can only do worse, and its backlog of timed-out
    /// renewals costs memory and minutes).
    #[arg(long)]
    pub no_skip: bool,
    /// The batch size of the closed-loop `renew_many` capacity run.
    #[arg(long, default_value_t = 100)]
    pub capacity_batch: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeArg {
    Single,
    Batched,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigArg {
    Default,
    Tuned,
}

impl ConfigArg {
    fn name(self) -> &'static str {
        match self {
            ConfigArg::Default => "default",
            ConfigArg::Tuned => "tuned",
        }
    }
}

/// Creating the N leases.
#[derive(Debug, Clone, Serialize)]
pub struct CreateReport {
    pub n: usize,
    pub seconds: f64,
    pub per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SizeReport {
    pub n: usize,
    pub create: CreateReport,
    pub phases: Vec<PhaseReport>,
    /// Modes not run at this N, with the smaller N at which they missed their target.
    pub skipped: Vec<(Mode, usize)>,
    pub scans: Vec<ScanReport>,
    /// The renewals that went on during the scans.
    pub during_scans: Option<PhaseReport>,
    pub baselines: Vec<BaselineReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    pub config: &'static str,
    pub settings: Vec<(String, String)>,
    pub sizes: Vec<SizeReport>,
}

/// What `--json` writes.
#[derive(Debug, Serialize)]
pub struct LeasesReport {
    pub machine: MachineFacts,
    pub postgres: String,
    pub args: LeasesArgs,
    pub pool_per_node_manager: usize,
    pub loadavg_after: String,
    pub seconds_total: f64,
    pub configs: Vec<ConfigReport>,
}

pub async fn run(args: LeasesArgs, json: Option<PathBuf>) -> anyhow::Result<()> {
    if args.n.iter().any(|&n| n == 0 || n > 999_999) {
        bail!("--n: each count must be between 1 and 999,999");
    }
    if args.node_managers == 0 || args.connections < args.node_managers {
        bail!("--connections must be at least --node-managers (at least one each)");
    }
    if args.configs.is_empty() {
        bail!("--configs: name at least one configuration");
    }
    let began = micros();
    let pool = args.connections / args.node_managers;
    let modes: Vec<Mode> = match args.mode {
        ModeArg::Single => vec![Mode::Single],
        ModeArg::Batched => vec![Mode::Batched],
        ModeArg::Both => vec![Mode::Batched, Mode::Single],
    };
    let batching = Batching { window_us: args.batch_window_ms * 1_000, max: args.batch_max.max(1) };
    let interval = Duration::from_millis(args.interval_ms.max(1));

    let facts = MachineFacts::read();
    let mut server = Server::start()?;
    let version = server.version().await?;
    println!("# ferry-bench leases\n");
    println!(
        "host: {} cores, kernel {}, CPU {}; load average at start {} (the host is shared)",
        facts.nproc, facts.kernel, facts.cpu, facts.loadavg
    );
    println!(
        "PostgreSQL {version}, private server on 127.0.0.1 (ferry_testkit::PgServer), same host as the benchmark client (one thread)"
    );
    println!(
        "holders: N simulated servers over {} simulated Node Managers, each with a pool of {pool} connection(s) ({} in all); every lease renewed once per {} ms (TTL {} ms), phases spread evenly, open loop; a holder gives up after {} ms (80% of the interval, as ferry's keeper)",
        args.node_managers,
        pool * args.node_managers,
        args.interval_ms,
        args.interval_ms * args.periods as u64,
        args.interval_ms * 8 / 10
    );
    println!(
        "batched: each Node Manager sends its servers' pending renewals as one renew_many {} ms after the first arrived (at most {} per batch), at most {pool} batch(es) in flight",
        args.batch_window_ms, args.batch_max
    );

    let mut configs = Vec::new();
    let last = args.configs.len() - 1;
    for (ci, &config) in args.configs.iter().enumerate() {
        if config == ConfigArg::Tuned {
            eprintln!("restarting PostgreSQL with the tuned settings");
            server.restart_tuned().await?;
        }
        let settings = server.settings().await?;
        let mut sizes: Vec<SizeReport> = Vec::new();
        let mut ns = args.n.clone();
        ns.sort_unstable();
        for &n in &ns {
            let with_scans = ci == last;
            // A mode that missed its target at a smaller N can only do worse.
            let failed: Vec<(Mode, usize)> = sizes
                .iter()
                .flat_map(|s| {
                    s.phases
                        .iter()
                        .filter(|p| p.missed * 100 > p.attempts)
                        .map(|p| (p.mode, s.n))
                        .chain(s.skipped.iter().copied())
                })
                .filter(|_| !args.no_skip)
                .collect();
            let size = one_size(&server, &args, config, n, pool, interval, &modes, batching, with_scans, &failed)
                .await
                .with_context(|| format!("{} configuration, N = {n}", config.name()))?;
            sizes.push(size);
        }
        configs.push(ConfigReport { config: config.name(), settings, sizes });
    }
    let report = LeasesReport {
        machine: facts,
        postgres: version,
        args: args.clone(),
        pool_per_node_manager: pool,
        loadavg_after: loadavg(),
        seconds_total: (micros() - began) as f64 / 1e6,
        configs,
    };
    print(&report);
    if let Some(path) = &json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("\nraw results: {}", path.display());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn one_size(
    server: &Server,
    args: &LeasesArgs,
    config: ConfigArg,
    n: usize,
    pool: usize,
    interval: Duration,
    modes: &[Mode],
    batching: Batching,
    with_scans: bool,
    failed: &[(Mode, usize)],
) -> anyhow::Result<SizeReport> {
    let cname = config.name();
    let pm = server.postmaster_pid();
    let schema = format!("ferry_n{n}");
    server.execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")).await?;
    let url = server.url_in(&schema);
    ferry_store::init(&url).await.map_err(|e| anyhow::anyhow!(ferry_store::chain(&e)))?;
    let fleet = Arc::new(Fleet::open(&url, n, args.node_managers, pool, interval, args.periods).await?);
    let armed = leases_load::arm(&fleet, ACQUIRE_TTL).await?;
    let (count, secs) = (armed.acquired, armed.seconds);
    server.execute(&format!("ANALYZE {schema}.ferry_leases")).await?;
    let create = CreateReport { n, seconds: secs, per_s: count as f64 / secs.max(1e-6) };
    eprintln!("[{cname}] N = {n}: acquired {count} leases in {secs:.1} s ({:.0}/s)", create.per_s);

    let mut phases = Vec::new();
    let mut skipped = Vec::new();
    let (mut scans, mut during_scans) = (Vec::new(), None);
    for (k, &mode) in modes.iter().enumerate() {
        if let Some(&(_, at)) = failed.iter().find(|(m, _)| *m == mode) {
            eprintln!("[{cname}] N = {n}: {} skipped (missed its target at N = {at})", mode.name());
            skipped.push((mode, at));
        } else {
            let armed = leases_load::arm(&fleet, ACQUIRE_TTL).await?;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut phase = leases_load::drive(Arc::clone(&fleet), mode, batching, Some(args.seconds), stop, pm).await;
            phase.rearmed = armed.acquired;
            phase.arm_seconds = armed.seconds;
            eprintln!("[{cname}] N = {n}: {}", progress(&phase));
            phases.push(phase);
        }
        if k == 0 && with_scans {
            let armed = leases_load::arm(&fleet, ACQUIRE_TTL).await?;
            let options = PostgresOptions::new(Duration::from_millis(args.interval_ms * 8 / 10));
            let master = PostgresStore::open_with(&url, PostgresOptions { pool_size: 1, ..options })
                .await
                .map_err(|e| anyhow::anyhow!(ferry_store::chain(&e)))?;
            let mut counts: Vec<usize> = args
                .expired_pct
                .iter()
                .map(|p| ((n as f64) * p / 100.0).round() as usize)
                .filter(|&c| c >= 1 && c < n)
                .collect();
            counts.sort_unstable();
            counts.dedup();
            let (s, mut d) = leases_scan::scans(
                &fleet,
                &master,
                mode,
                batching,
                &leases_scan::ScanPlan {
                    counts,
                    seconds: args.scan_seconds,
                    every: Duration::from_millis(args.scan_every_ms.max(1)),
                },
                pm,
            )
            .await?;
            d.rearmed = armed.acquired;
            d.arm_seconds = armed.seconds;
            eprintln!("[{cname}] N = {n}: during the scans: {}", progress(&d));
            scans = s;
            during_scans = Some(d);
        }
    }
    drop(fleet);
    server.execute(&format!("DROP SCHEMA {schema} CASCADE")).await?;

    // Closed-loop capacity on a copy of the table with the same N rows.
    let raw = format!("raw_n{n}");
    let raw_url = leases_pg::baseline_table(server, &raw, n).await?;
    let c = args.connections;
    let secs = args.baseline_seconds;
    let mut baselines = Vec::new();
    let nm = args.node_managers;
    baselines.push(leases_load::capacity(&raw_url, n, c, nm, 1, secs, pm).await?);
    baselines.push(leases_load::capacity(&raw_url, n, c, nm, args.capacity_batch.max(2), secs, pm).await?);
    baselines.push(leases_pg::raw_tokio(server, &raw, n, c, secs).await?);
    baselines.push(leases_pg::pgbench(server, &raw, n, c, secs).await?);
    for b in &baselines {
        eprintln!("[{cname}] N = {n}: {} over {} connections: {:.0}/s", b.what, b.connections, b.per_s);
    }
    server.execute(&format!("DROP SCHEMA {raw} CASCADE")).await?;
    Ok(SizeReport { n, create, phases, skipped, scans, during_scans, baselines })
}

fn progress(p: &PhaseReport) -> String {
    format!(
        "{} {} leases: {:.0}/s in time of {:.0}/s, p50 {} p99 {} max {} ms, missed {} of {} ({} lost, {} timeouts, {} unavailable, {} late, {} given up in queue); {} re-acquired before{}",
        p.mode.name(),
        p.renewing,
        p.achieved_per_s,
        p.target_per_s,
        ms(p.p50_us),
        ms(p.p99_us),
        ms(p.max_us),
        p.missed,
        p.attempts,
        p.lost,
        p.timeouts,
        p.unavailable,
        p.late,
        p.expired_in_queue,
        p.rearmed,
        p.first_error
            .as_ref()
            .map(|e| format!("; first error: {e}"))
            .unwrap_or_default()
    )
}

/// Microseconds as milliseconds for the tables; `fail` when the percentile falls on a
/// renewal that did not succeed.
fn ms(us: Option<u64>) -> String {
    match us {
        Some(us) if us < 10_000 => format!("{:.2}", us as f64 / 1e3),
        Some(us) => format!("{:.0}", us as f64 / 1e3),
        None => "fail".into(),
    }
}

fn thousands(x: f64) -> String {
    let v = x.round() as u64;
    let s = v.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn cpu(c: &leases_pg::CpuUse) -> String {
    format!("{:.2} / {:.2} / {:.2}", c.client_cores, c.server_cores, c.machine_cores)
}

/// The raw single-row UPDATE rate (pgbench) of the same configuration and N.
fn pgbench_rate(size: &SizeReport) -> Option<f64> {
    size.baselines.iter().find(|b| b.what.starts_with("pgbench")).map(|b| b.per_s)
}

fn print(r: &LeasesReport) {
    println!("\n## Server settings\n");
    print!("| setting |");
    for c in &r.configs {
        print!(" {} |", c.config);
    }
    println!();
    print!("|---|");
    for _ in &r.configs {
        print!("---|");
    }
    println!();
    if let Some(first) = r.configs.first() {
        for (k, (name, _)) in first.settings.iter().enumerate() {
            print!("| {name} |");
            for c in &r.configs {
                print!(" {} |", c.settings.get(k).map_or("", |(_, v)| v.as_str()));
            }
            println!();
        }
    }
    if r.configs.iter().any(|c| c.config == "tuned") {
        let changed: Vec<String> = leases_pg::TUNED.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "\ntuned = the test server's settings plus {}; fsync, synchronous_commit and full_page_writes stay on",
            changed.join(", ")
        );
    }

    println!("\n## Renewals (open loop, each lease once per {} ms)\n", r.args.interval_ms);
    println!("| config | N | mode | target/s | renewed in time/s | vs raw UPDATE | p50 ms | p99 ms | max ms | missed slots | lost / timeout / unavail / late / dropped | batch p50 / p99 / max | CPU cores client / server / machine |");
    println!("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|---|---|---|");
    for c in &r.configs {
        for s in &c.sizes {
            let raw = pgbench_rate(s);
            let rows = s
                .phases
                .iter()
                .map(|p| (p.mode.name().to_string(), p))
                .chain(s.during_scans.iter().map(|p| (format!("{} (during scans)", p.mode.name()), p)));
            for (mode, at) in &s.skipped {
                println!(
                    "| {} | {} | {} | {} | skipped: missed its target at N = {} | | | | | | | | |",
                    c.config,
                    thousands(s.n as f64),
                    mode.name(),
                    thousands(s.n as f64 * 1000.0 / r.args.interval_ms.max(1) as f64),
                    thousands(*at as f64)
                );
            }
            for (mode, p) in rows {
                let ratio = raw.map_or("-".into(), |raw| format!("{:.0}%", 100.0 * p.achieved_per_s / raw));
                let batch = match (p.batch_p50, p.batch_p99, p.batch_max) {
                    (Some(a), Some(b), Some(m)) => format!("{a} / {b} / {m}"),
                    _ => "-".into(),
                };
                println!(
                    "| {} | {} | {mode} | {} | {} | {ratio} | {} | {} | {} | {} ({:.2}%) | {} / {} / {} / {} / {} | {batch} | {} |",
                    c.config,
                    thousands(s.n as f64),
                    thousands(p.target_per_s),
                    thousands(p.achieved_per_s),
                    ms(p.p50_us),
                    ms(p.p99_us),
                    ms(p.max_us),
                    p.missed,
                    100.0 * p.missed as f64 / (p.attempts.max(1)) as f64,
                    p.lost,
                    p.timeouts,
                    p.unavailable,
                    p.late,
                    p.expired_in_queue,
                    cpu(&p.cpu),
                );
            }
        }
    }
    println!("\n\"vs raw UPDATE\": renewed in time per second over pgbench's bare single-row UPDATE rate on the same server, N and connection count (below). p50/p99/max are over every scheduled renewal, measured from its scheduled instant (the holder's t0), so they include queueing; `fail` means the percentile falls on a renewal that did not succeed. missed slots: renewals not answered successfully within the holder's request timeout.");

    println!("\n## Capacity: closed loop, as fast as the connections go\n");
    println!("| config | N | what | conns | rows/s | vs pgbench | avg ms | p50 ms | p99 ms | errors | CPU cores client / server / machine |");
    println!("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|---|");
    for c in &r.configs {
        for s in &c.sizes {
            let raw = pgbench_rate(s);
            for b in &s.baselines {
                let ratio = raw.map_or("-".into(), |raw| format!("{:.0}%", 100.0 * b.per_s / raw));
                println!(
                    "| {} | {} | {} | {} | {} | {ratio} | {} | {} | {} | {} | {} |",
                    c.config,
                    thousands(s.n as f64),
                    b.what,
                    b.connections,
                    thousands(b.per_s),
                    b.latency_avg_us.map_or("-".into(), |us| format!("{:.2}", us / 1e3)),
                    b.latency_p50_us.map_or("-".into(), |us| ms(Some(us))),
                    b.latency_p99_us.map_or("-".into(), |us| ms(Some(us))),
                    b.errors,
                    cpu(&b.cpu),
                );
            }
        }
    }
    println!("\nrows/s: leases renewed (rows updated) per second; latency is per call (a renew_many call renews a whole batch). The bare UPDATE is `UPDATE ferry_leases SET expires_at = now() + interval '3 s' WHERE name = $1` on random rows, one statement per transaction; ferry's renew is one transaction of two round trips (lock the row and read the clock, then write and commit).");

    let scans: Vec<(&str, &ScanReport)> = r
        .configs
        .iter()
        .flat_map(|c| c.sizes.iter().flat_map(move |s| s.scans.iter().map(move |x| (c.config, x))))
        .collect();
    if !scans.is_empty() {
        println!(
            "\n## The cluster master's scan, every {} ms (while the other leases keep renewing)\n",
            r.args.scan_every_ms
        );
        println!("| config | N | expired | share | renewals | incremental scans | incremental p50 / p99 / max ms | rows | full scans | full p50 / p99 / max ms | rows |");
        println!("|---|--:|--:|--:|---|--:|---|---|--:|---|---|");
        for (config, x) in scans {
            let (i, f) = (&x.incremental, &x.full);
            println!(
                "| {config} | {} | {} | {:.1}% | {} | {} | {} / {} / {} | {}–{} | {} | {} / {} / {} | {}–{} |",
                thousands(x.n as f64),
                thousands(x.expired_target as f64),
                100.0 * x.expired_target as f64 / x.n as f64,
                if x.renewing { "running" } else { "paused" },
                i.scans,
                ms(i.p50_us),
                ms(i.p99_us),
                ms(i.max_us),
                i.returned_min,
                i.returned_max,
                f.scans,
                ms(f.p50_us),
                ms(f.p99_us),
                ms(f.max_us),
                f.returned_min,
                f.returned_max,
            );
        }
    }

    if r.configs.iter().any(|c| c.sizes.iter().any(|s| !s.scans.is_empty())) {
        println!("\nincremental: what the cluster master runs every scan, `scan(cursor, tracked)`: the leases whose expiry passed since its previous scan (less a 1 s overlap), every expired lease it already tracks (by primary key), and the next expiry, in one round trip. full: `scan(FULL)`, every expired lease, what a new master runs first and every master runs every 10 s as a backstop. renewals running: the other leases renew meanwhile (in the first mode); each renewal moves the row's entry in the expiry index and leaves the old one, under an expiry that passes within one TTL, until vacuum. A full scan steps over all of those; the incremental one only over those that passed since the previous scan. paused: the live leases were renewed once for 2 minutes and the scans are timed over the expired leases alone.");
    }

    println!("\n## Creating the leases (N acquires over the Node Managers' connections)\n");
    println!("| config | N | seconds | acquires/s |");
    println!("|---|--:|--:|--:|");
    for c in &r.configs {
        for s in &c.sizes {
            println!(
                "| {} | {} | {:.1} | {} |",
                c.config,
                thousands(s.n as f64),
                s.create.seconds,
                thousands(s.create.per_s)
            );
        }
    }
    println!("\nload average after: {}; whole run {:.0} s", r.loadavg_after, r.seconds_total);
}
