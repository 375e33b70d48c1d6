//! `ferry-bench consensus`: consensus leasing next to PostgreSQL leasing, in one run.
//!
//! 1. **Leader crash.** Three openraft voters in this process; `--leases` holders renew every
//!    250 ms (TTL 1.5 s) through a follower; the leader is killed. Measured: from the kill
//!    until the first renewal succeeds again and until every lease has been renewed again,
//!    the longest renewal gap, and refusals (none expected: a crash costs time, not leases).
//! 2. **Renewals at 100 and 1,000 leases**: the latency of one renewal at a time, and the
//!    rate of batches of every lease (`renew_many`, as the Node Managers renew), on
//!    consensus leasing (through the leader and through a follower) and on a private
//!    PostgreSQL (ferry's own store, one server on loopback, synchronous commit).
//!
//! Each case runs with the voters in one process (direct calls) and with each voter behind
//! its own HTTP listener on loopback (JSON, the transport the Node Managers will serve),
//! next to PostgreSQL over loopback TCP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ferry_consensus::{ConsensusStore, VoterTiming};
use ferry_core::{Incarnation, LeaseName, MachineName, Mono, ServerName};
use ferry_host::clock;
use ferry_store::{AcquireRequest, LeaseStore, Renewal, StoreError};
use ferry_testkit::consensus::{Cluster, HttpVoters};

use crate::leases_tally::micros;
use crate::stats::{header, row};

#[derive(clap::Args, Debug, Clone)]
pub struct ConsensusArgs {
    /// Leader-crash runs (each a fresh cluster).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Leases renewed during a leader crash.
    #[arg(long, default_value_t = 100)]
    pub leases: usize,
    /// Renewals timed one at a time per configuration.
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
    /// How long each batch-rate measurement runs.
    #[arg(long, default_value_t = 3)]
    pub rate_seconds: u64,
}

const TTL: Duration = Duration::from_millis(1_500);
const RENEW_EVERY: Duration = Duration::from_millis(250);
const CALL_TIMEOUT: Duration = Duration::from_millis(400);

fn request(i: usize) -> AcquireRequest {
    let owner = ServerName::new(format!("s{i}")).expect("a valid name");
    AcquireRequest {
        name: LeaseName::Server(owner.clone()),
        owner,
        machine: MachineName::new("m1").expect("a valid name"),
        incarnation: Incarnation(format!("i{i}")),
        ttl: TTL,
    }
}

/// Three voters, in this process (direct calls) or each behind its own HTTP listener.
enum Voters {
    InProcess(Cluster),
    Http(HttpVoters),
}

impl Voters {
    async fn start(http: bool) -> anyhow::Result<(Voters, u64)> {
        let voters = if http {
            Voters::Http(HttpVoters::start(3, VoterTiming::default()).await?)
        } else {
            Voters::InProcess(Cluster::start(3, VoterTiming::default()).await?)
        };
        let leader = serving_leader(&voters, None).await?;
        Ok((voters, leader))
    }

    fn store(&self, home: u64) -> anyhow::Result<ConsensusStore> {
        match self {
            Voters::InProcess(c) => Ok(c.store(home, CALL_TIMEOUT)),
            Voters::Http(h) => h.store(home, CALL_TIMEOUT),
        }
    }

    async fn kill(&mut self, v: u64) {
        match self {
            Voters::InProcess(c) => c.kill(v).await,
            Voters::Http(h) => h.kill(v).await,
        }
    }
}

/// The leader as seen by a voter other than `not`, once it serves.
async fn serving_leader(voters: &Voters, not: Option<u64>) -> anyhow::Result<u64> {
    match voters {
        Voters::InProcess(c) => c.serving_leader(not).await,
        Voters::Http(h) => h.serving_leader(not).await,
    }
}

/// One leader-crash run.
struct CrashRun {
    first_renewal_ms: i64,
    all_renewed_ms: i64,
    longest_gap_ms: i64,
    refused: usize,
}

async fn crash_run(leases: usize, http: bool) -> anyhow::Result<CrashRun> {
    let (mut voters, leader) = Voters::start(http).await?;
    let home = (1..=3).find(|&v| v != leader).context("a follower")?;
    let store = voters.store(home)?;
    let renewed: Arc<Mutex<Vec<Vec<Mono>>>> = Arc::new(Mutex::new(vec![Vec::new(); leases]));
    let refused = Arc::new(Mutex::new(0usize));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..leases {
        let req = request(i);
        let lease = store.acquire(&req).await.context("acquire")?;
        let (store, renewed, refused, stop) = (store.clone(), renewed.clone(), refused.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            // Spread the holders over the renewal interval, as real ones are.
            tokio::time::sleep(RENEW_EVERY.mul_f64(i as f64 / leases as f64)).await;
            while !*stop.borrow() {
                let sent = clock::now();
                match store.renew(&req.name, &req.incarnation, lease.epoch, TTL).await {
                    Ok(_) => renewed.lock().expect("renewed")[i].push(sent),
                    Err(StoreError::Lost { .. }) => *refused.lock().expect("refused") += 1,
                    Err(_) => {}
                }
                tokio::time::sleep(RENEW_EVERY).await;
            }
        }));
    }
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    let killed = clock::now();
    voters.kill(leader).await;
    tokio::time::sleep(TTL * 2).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await?;
    }
    let renewed = renewed.lock().expect("renewed");
    let after: Vec<Option<Mono>> = renewed.iter().map(|r| r.iter().copied().find(|&t| t > killed)).collect();
    let first = after.iter().flatten().min().map_or(-1, |t| t.since(killed) as i64);
    let all = if after.iter().all(Option::is_some) {
        after.iter().flatten().max().map_or(-1, |t| t.since(killed) as i64)
    } else {
        -1
    };
    let gap = renewed.iter().flat_map(|r| r.windows(2).map(|w| w[1].since(w[0]) as i64)).max().unwrap_or(0);
    let refused = *refused.lock().expect("refused");
    Ok(CrashRun { first_renewal_ms: first, all_renewed_ms: all, longest_gap_ms: gap, refused })
}

/// Latency (µs) of `samples` renewals one at a time, and the rate of whole batches.
async fn renewals(
    store: &dyn LeaseStore,
    leases: usize,
    samples: usize,
    rate_for: Duration,
) -> anyhow::Result<(Vec<i64>, f64)> {
    let mut held = Vec::new();
    for i in 0..leases {
        let req = request(i);
        let l = store.acquire(&req).await.map_err(|e| anyhow::anyhow!("acquire: {e}"))?;
        held.push(Renewal { name: req.name, incarnation: req.incarnation, epoch: l.epoch, ttl: TTL });
    }
    let mut latency = Vec::with_capacity(samples);
    for k in 0..samples {
        let r = &held[k % leases];
        let t0 = micros();
        store.renew(&r.name, &r.incarnation, r.epoch, r.ttl).await.map_err(|e| anyhow::anyhow!("renew: {e}"))?;
        latency.push((micros() - t0) as i64);
    }
    let t0 = micros();
    let until = t0 + rate_for.as_micros() as u64;
    let mut done = 0usize;
    while micros() < until {
        let answers = store.renew_many(&held).await.map_err(|e| anyhow::anyhow!("renew_many: {e}"))?;
        anyhow::ensure!(answers.iter().all(Result::is_ok), "a batch renewal was refused");
        done += answers.len();
    }
    Ok((latency, done as f64 * 1e6 / (micros() - t0) as f64))
}

pub async fn run(args: ConsensusArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs > 0 && args.leases > 0 && args.samples > 0, "runs, leases and samples must be positive");
    let facts = crate::common::MachineFacts::read();
    println!("# ferry-bench consensus\n");
    println!(
        "host: {} cores, kernel {}, CPU {}; load average at start {} (the host is shared)",
        facts.nproc, facts.kernel, facts.cpu, facts.loadavg
    );
    let timing = VoterTiming::default();
    println!(
        "voters: 3 openraft 0.10.0-alpha.37 voters, in this process (direct calls) or each behind its own HTTP listener on loopback (JSON); heartbeat {} ms, election timeout {}-{} ms, leadership validity {} ms (a new leader waits {} ms); leases: TTL {} ms, renewed every {} ms\n",
        timing.heartbeat.as_millis(),
        timing.election_min.as_millis(),
        timing.election_max.as_millis(),
        timing.leadership.validity.as_millis(),
        timing.leadership.wait_ms(),
        TTL.as_millis(),
        RENEW_EVERY.as_millis()
    );

    for (http, how) in [(false, "in this process"), (true, "over HTTP on loopback")] {
        println!("## the leader crashes under {} leases, voters {how} ({} runs)\n", args.leases, args.runs);
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            runs.push(crash_run(args.leases, http).await?);
        }
        println!("{}", header("ms", "bound / expected"));
        println!(
            "{}",
            row(
                "kill until the first renewal succeeds again",
                runs.iter().map(|r| r.first_renewal_ms),
                "election + wait"
            )
        );
        println!(
            "{}",
            row(
                "kill until every lease renewed again (-1: some never)",
                runs.iter().map(|r| r.all_renewed_ms),
                "< TTL 1500"
            )
        );
        println!(
            "{}",
            row("longest renewal gap of a lease", runs.iter().map(|r| r.longest_gap_ms), "< TTL 1500: no fence")
        );
        println!("{}", row("renewals refused (count, not ms)", runs.iter().map(|r| r.refused as i64), "0"));
        println!();
    }

    println!("## renewals: one at a time (latency, µs) and whole batches (renewals/s)\n");
    let pg = tokio::task::spawn_blocking(ferry_testkit::PgServer::start)
        .await?
        .context("cannot start a private PostgreSQL")?;
    println!(
        "| store | leases | n | p50 µs | p99 µs | max µs | batches of all: renewals/s |\n|---|--:|--:|--:|--:|--:|--:|"
    );
    for leases in [100usize, 1_000] {
        let (local, leader) = Voters::start(false).await?;
        let (http, http_leader) = Voters::start(true).await?;
        let follower = (1..=3).find(|&v| v != leader).context("a follower")?;
        let http_follower = (1..=3).find(|&v| v != http_leader).context("a follower")?;
        let configs: Vec<(String, Box<dyn LeaseStore>)> = vec![
            ("consensus in this process, at the leader".into(), Box::new(local.store(leader)?) as Box<dyn LeaseStore>),
            ("consensus in this process, through a follower".into(), Box::new(local.store(follower)?)),
            ("consensus over HTTP, at the leader".into(), Box::new(http.store(http_leader)?)),
            ("consensus over HTTP, through a follower".into(), Box::new(http.store(http_follower)?)),
        ];
        let schema = format!("bench_{leases}");
        pg.execute(&format!("CREATE SCHEMA {schema}")).await?;
        let url = format!("{}?options=-c%20search_path%3D{schema}", pg.url());
        let pg_store = ferry_store::postgres::PostgresStore::open_and_init(&url, Duration::from_secs(5)).await?;
        let mut all = configs;
        all.push(("PostgreSQL (ferry's store, loopback)".into(), Box::new(pg_store)));
        for (name, store) in &all {
            let (lat, rate) =
                renewals(store.as_ref(), leases, args.samples, Duration::from_secs(args.rate_seconds)).await?;
            let s = crate::stats::summarize(lat).context("no samples")?;
            println!("| {name} | {leases} | {} | {} | {} | {} | {:.0} |", s.n, s.p50, s.p99, s.max, rate);
        }
        drop((local, http));
    }
    println!(
        "\nconsensus renewals are answered from the leader's memory (nothing written); PostgreSQL commits each batch with synchronous_commit on"
    );
    Ok(())
}
