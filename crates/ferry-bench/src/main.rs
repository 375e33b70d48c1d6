//! `ferry-bench`: the benchmarks behind DESIGN §6, run against real `ferry` processes on this
//! host (the harness of `ferry demo` and the process tests), printed as markdown tables.
//!
//! * `failover`: machine-c dies, ms2 migrates to machine-d; detection, lease and
//!   client-visible outage against the liveness bound of DESIGN §3.
//! * `restart`: ms1's `ferry server` is SIGKILLed and restarted in place; against 50 ms.
//! * `all`: both with their defaults.
//! * `hosts`: failover across lab hosts (network namespaces; needs root, iproute2 and
//!   keepalived), ferry's outage next to keepalived's in the same run.
//! * `outage`: the lease table (a private PostgreSQL) goes away until every server fenced
//!   itself and comes back; how soon the domain runs again without an operator.
//! * `scale`: many servers per machine (25 to 200 on four machines): the cluster's start,
//!   fences, status latency, CPU and RSS per process kind, and a machine's failover.
//! * `leases`: the lease table at scale on a private PostgreSQL (1,000 to 100,000 leases
//!   renewed every second, single and batched renewals, the master's scan, and the
//!   database's own single-row UPDATE rate); against 10,000 at 1 s with p99 under 50 ms.
//!
//! `failover`, `restart`, `outage`, `scale` and `hosts` need the `ferry` binary of the same profile next to this one:
//! `cargo build --release -p ferry -p ferry-bench && target/release/ferry-bench all`.
//! `leases` needs only the PostgreSQL server binaries (`apt-get install postgresql`).

mod common;
mod consensus;
mod dbfailover;
mod failover;
mod hosts;
mod hosts_keepalived;
mod hosts_probe;
mod leases;
mod leases_load;
mod leases_pg;
mod leases_scan;
mod leases_tally;
mod outage;
mod restart;
mod runs;
mod scale;
mod stats;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ferry_host::clock;
use serde::Serialize;
use tokio::signal::unix::SignalKind;

use crate::common::{MachineFacts, Timings};

#[derive(Parser, Debug)]
#[command(
    name = "ferry-bench",
    about = "Failover, restart and lease-table benchmarks of ferry on this host (DESIGN §6)"
)]
struct Cli {
    /// Write the raw samples, settings and machine facts as JSON to this file.
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Keep every run's domain (logs, lease table, journals) under this directory
    /// (default: a new ferry-bench-* directory in the temporary directory).
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The ferry executable (default: `ferry` next to this executable).
    #[arg(long, global = true, value_name = "PATH")]
    ferry: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Kill machine-c and measure ms2's migration to machine-d.
    Failover(FailoverArgs),
    /// SIGKILL ms1's server process and measure its in-place restart.
    Restart(RestartArgs),
    /// Both scenarios with their defaults.
    All,
    /// N leases renewed every second on a private PostgreSQL: rate, latency, the master's
    /// scan, and the database's own UPDATE rate.
    Leases(leases::LeasesArgs),
    /// Failover across lab hosts (network namespaces, a floating IP that really moves):
    /// ferry at 100 ms/3/100 ms, with grace 0, and at the seed's defaults / 10, next to
    /// keepalived moving a VRRP address in the same lab.
    Hosts(hosts::HostsArgs),
    /// Stop the lease table (a private PostgreSQL) until every server fenced itself, start it
    /// again, and measure until every server runs again.
    Outage(OutageArgs),
    /// N servers per run on M machines: start, fences, status latency, CPU and RSS per
    /// process kind, and the failover of one machine's servers.
    Scale(scale::ScaleArgs),
    /// The lease table's PostgreSQL fails over (primary killed, synchronous standby with its
    /// clock off promoted) under N running servers: promotion, renewal gaps, fences.
    Dbfailover(dbfailover::DbFailoverArgs),
    /// Consensus leasing next to PostgreSQL leasing: a leader crash under running holders,
    /// and renewal latency and batch rate at 100 and 1,000 leases.
    Consensus(consensus::ConsensusArgs),
    /// (internal) The overlapping client `hosts` runs in the lab's client namespace.
    #[command(hide = true)]
    HostsProbe(hosts_probe::ProbeArgs),
}

#[derive(Args, Debug, Clone)]
struct FailoverArgs {
    /// Runs (each on a fresh domain).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// health_check_interval.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// health_check_periods_until_fencing.
    #[arg(long, default_value_t = 3)]
    periods: u32,
    /// fencing_grace_period.
    #[arg(long, default_value_t = 100)]
    grace_ms: u64,
}

impl Default for FailoverArgs {
    fn default() -> Self {
        FailoverArgs { runs: 20, interval_ms: 100, periods: 3, grace_ms: 100 }
    }
}

#[derive(Args, Debug, Clone)]
struct OutageArgs {
    /// Runs (each on a fresh domain and database).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// health_check_interval.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    /// health_check_periods_until_fencing.
    #[arg(long, default_value_t = 3)]
    periods: u32,
    /// fencing_grace_period.
    #[arg(long, default_value_t = 500)]
    grace_ms: u64,
    /// How long the table stays down after every server fenced itself.
    #[arg(long, default_value_t = 10_000)]
    down_ms: u64,
}

#[derive(Args, Debug, Clone)]
struct RestartArgs {
    /// Runs (each on a fresh domain).
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// health_check_interval.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// health_check_periods_until_fencing.
    #[arg(long, default_value_t = 3)]
    periods: u32,
    /// fencing_grace_period.
    #[arg(long, default_value_t = 100)]
    grace_ms: u64,
}

impl Default for RestartArgs {
    fn default() -> Self {
        RestartArgs { runs: 30, interval_ms: 100, periods: 3, grace_ms: 100 }
    }
}

/// What `--json` writes.
#[derive(Serialize)]
struct JsonOut {
    machine: MachineFacts,
    ferry: String,
    dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    failover: Option<failover::FailoverReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart: Option<restart::RestartReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outage: Option<outage::OutageReport>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    // On SIGINT or SIGTERM, drop the run in progress: its harness kills every process of
    // its domain (a killed benchmark must not leave a domain running on a shared host).
    let outcome = match tokio::signal::unix::signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            r = run(cli) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; the domain of the run in progress was stopped")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated; the domain of the run in progress was stopped")),
        },
        Err(_) => run(cli).await,
    };
    if let Err(e) = outcome {
        eprintln!("ferry-bench: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::Leases(args) = &cli.cmd {
        return leases::run(args.clone(), cli.json.clone()).await;
    }
    if let Cmd::Consensus(args) = &cli.cmd {
        return consensus::run(args.clone()).await;
    }
    if let Cmd::HostsProbe(args) = &cli.cmd {
        return hosts_probe::run(args.clone()).await;
    }
    let exe = common::ferry_exe(cli.ferry.clone())?;
    let base = match &cli.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("ferry-bench-{}", clock::wall_ms())),
    };
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    if let Cmd::Hosts(args) = &cli.cmd {
        return hosts::run(args.clone(), &exe, &base, cli.json.clone()).await;
    }
    if let Cmd::Dbfailover(args) = &cli.cmd {
        return dbfailover::run(args.clone(), &exe, &base, cli.json.clone()).await;
    }
    if let Cmd::Scale(args) = &cli.cmd {
        return scale::run(args.clone(), &exe, &base, cli.json.clone()).await;
    }
    let (fo, rs) = match &cli.cmd {
        Cmd::Failover(a) => (Some(a.clone()), None),
        Cmd::Restart(a) => (None, Some(a.clone())),
        Cmd::All => (Some(FailoverArgs::default()), Some(RestartArgs::default())),
        Cmd::Leases(_)
        | Cmd::Hosts(_)
        | Cmd::HostsProbe(_)
        | Cmd::Outage(_)
        | Cmd::Scale(_)
        | Cmd::Dbfailover(_)
        | Cmd::Consensus(_) => (None, None),
    };
    let og = match &cli.cmd {
        Cmd::Outage(a) => Some(a.clone()),
        _ => None,
    };

    let facts = common::print_header("ferry-bench", &exe, &base);
    println!(
        "times in ms; p50/p99 are nearest-rank (p99 is the maximum below 100 runs); every run starts a fresh domain (Administration Server, Node Managers of machine-b, -c, -d; ms1 on machine-b is cluster master, ms2 on machine-c)"
    );

    let mut out = JsonOut {
        machine: facts,
        ferry: exe.display().to_string(),
        dir: base.display().to_string(),
        failover: None,
        restart: None,
        outage: None,
    };
    if let Some(a) = fo {
        let t = Timings { interval_ms: a.interval_ms, periods: a.periods, grace_ms: a.grace_ms };
        anyhow::ensure!(a.interval_ms > 0 && a.periods > 0, "interval and periods must be positive");
        let rep = failover::run(&exe, &base.join("failover"), a.runs, t).await?;
        failover::print(&rep);
        out.failover = Some(rep);
    }
    if let Some(a) = rs {
        let t = Timings { interval_ms: a.interval_ms, periods: a.periods, grace_ms: a.grace_ms };
        anyhow::ensure!(a.interval_ms > 0 && a.periods > 0, "interval and periods must be positive");
        let rep = restart::run(&exe, &base.join("restart"), a.runs, t).await?;
        restart::print(&rep);
        out.restart = Some(rep);
    }
    if let Some(a) = og {
        let t = Timings { interval_ms: a.interval_ms, periods: a.periods, grace_ms: a.grace_ms };
        anyhow::ensure!(a.interval_ms > 0 && a.periods > 0, "interval and periods must be positive");
        let rep = outage::run(&exe, &base.join("outage"), a.runs, t, a.down_ms).await?;
        outage::print(&rep);
        out.outage = Some(rep);
    }
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&out)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("\nraw samples: {}", path.display());
    }
    Ok(())
}
