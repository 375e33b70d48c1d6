//! The PostgreSQL side of the lease-table benchmark: the private server (as the tests start
//! it, then restarted with the settings a DBA would tune), the settings actually in force,
//! the raw baselines (pgbench and a bare tokio-postgres client running the single-row
//! `UPDATE`), and CPU accounting of the benchmark client and the server processes, since on
//! a 2-core machine the two compete for the same cores.
//!
//! Durability is never traded for speed: `fsync`, `synchronous_commit` and
//! `full_page_writes` stay on in every configuration (DESIGN §3 rule 8).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context};
use ferry_testkit::PgServer;
use serde::Serialize;

use crate::common::{clock_ticks_per_s, stat_fields};
use crate::leases_tally::{micros, Tally};

/// What the tuned configuration changes, on top of the test server's command line
/// (`fsync=on`, `shared_buffers=16MB`, `max_connections=100`). Every one of them is a
/// setting a production DBA sizes for a write-heavy table; none weakens durability.
pub const TUNED: &[(&str, &str)] = &[
    // The table, its two indexes and their churn fit in memory (16 MB does not at 100k).
    ("shared_buffers", "256MB"),
    // Many small commits per second: room for WAL between flushes (auto is 1/32 of
    // shared_buffers, 512 kB at 16 MB).
    ("wal_buffers", "16MB"),
    // No checkpoint (and its burst of full-page images) forced by WAL volume mid-run.
    ("max_wal_size", "4GB"),
    ("checkpoint_timeout", "30min"),
    // A small table updated ~10k times a second: vacuum it often and without throttling,
    // so dead index entries do not pile up in the expiry index.
    ("autovacuum_naptime", "5s"),
    ("autovacuum_vacuum_cost_delay", "0"),
];

/// The settings printed for each configuration.
pub const SHOWN: &[&str] = &[
    "shared_buffers",
    "wal_buffers",
    "max_connections",
    "max_wal_size",
    "checkpoint_timeout",
    "autovacuum_naptime",
    "autovacuum_vacuum_cost_delay",
    "commit_delay",
    "commit_siblings",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_sync_method",
];

/// The benchmark's server: a [`PgServer`], possibly restarted by hand with [`TUNED`]
/// settings (its own start fixes `shared_buffers` on the command line, which no
/// `ALTER SYSTEM` can override).
pub struct Server {
    pg: PgServer,
    /// Set while the server runs from our own `pg_ctl start`; stopped on drop.
    manual: Option<PathBuf>,
}

impl Server {
    pub fn start() -> anyhow::Result<Server> {
        let pg = PgServer::start().context("cannot start a private PostgreSQL server")?;
        Ok(Server { pg, manual: None })
    }

    /// A data source whose tables live in `schema`.
    pub fn url_in(&self, schema: &str) -> String {
        format!("{}?options=-c%20search_path%3D{schema}", self.pg.url())
    }

    pub fn port(&self) -> u16 {
        self.pg.port()
    }

    /// The postmaster's pid (for CPU accounting).
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.pg.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Stops the server (after a checkpoint, so it restarts at once) and starts it again on
    /// the same port and data with the [`TUNED`] settings.
    pub async fn restart_tuned(&mut self) -> anyhow::Result<()> {
        self.pg.execute("CHECKPOINT").await.context("checkpoint before the restart")?;
        self.pg.stop().context("stopping the server")?;
        let pg_ctl = bin_dir()?.join("pg_ctl");
        let data = self.pg.data_dir();
        let root = data.parent().context("data directory has no parent")?;
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=100",
            self.pg.port(),
            root.join("sock").display()
        );
        for (k, v) in TUNED {
            options.push_str(&format!(" -c {k}={v}"));
        }
        let log = root.join("log-tuned").display().to_string();
        let data_arg = data.display().to_string();
        run_as_postgres(&pg_ctl, &["-D", &data_arg, "start", "-w", "-t", "60", "-l", &log, "-o", &options])
            .context("pg_ctl start with the tuned settings")?;
        self.manual = Some(pg_ctl);
        Ok(())
    }

    /// `SHOW` of each of [`SHOWN`].
    pub async fn settings(&self) -> anyhow::Result<Vec<(String, String)>> {
        let c = self.pg.client().await?;
        let mut out = Vec::new();
        for name in SHOWN {
            let row = c.query_one(&format!("SHOW {name}"), &[]).await?;
            out.push((name.to_string(), row.get::<_, String>(0)));
        }
        Ok(out)
    }

    pub async fn version(&self) -> anyhow::Result<String> {
        let c = self.pg.client().await?;
        Ok(c.query_one("SHOW server_version", &[]).await?.get(0))
    }

    /// Runs SQL as the superuser.
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        Ok(self.pg.execute(sql).await?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(pg_ctl) = self.manual.take() {
            let data = self.pg.data_dir().display().to_string();
            if let Err(e) = run_as_postgres(&pg_ctl, &["-D", &data, "stop", "-m", "immediate", "-w"]) {
                eprintln!("warning: cannot stop the benchmark's PostgreSQL server: {e:#}");
            }
        }
        // The PgServer removes its directory after this.
    }
}

/// The directory of the server binaries (`pg_ctl`, `pgbench`): Debian's highest version.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("pg_ctl").is_file())
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!("no /usr/lib/postgresql/*/bin/pg_ctl (apt-get install postgresql)"),
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a server binary, as `postgres` when we are root (PostgreSQL refuses root).
fn run_as_postgres(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).current_dir(std::env::temp_dir());
    let out =
        cmd.stdin(std::process::Stdio::null()).output().with_context(|| format!("cannot run {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {}: {}{}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---- the baseline table ----

/// The name of lease `i` (1-based), in the table and in `LeaseName` form.
pub fn lease_server(i: usize) -> String {
    format!("s{i:06}")
}

/// A copy of the lease table in `schema` with `n` held rows that expire in an hour, made by
/// `ferry_store::init` and one `INSERT ... SELECT`: the same shape and indexes as ferry's
/// table, for the raw baselines and the closed-loop capacity runs (row `i` is held by
/// incarnation `inc-i` at epoch 1).
pub async fn baseline_table(server: &Server, schema: &str, n: usize) -> anyhow::Result<String> {
    server.execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")).await?;
    let url = server.url_in(schema);
    ferry_store::init(&url).await.map_err(|e| anyhow::anyhow!(ferry_store::chain(&e)))?;
    server
        .execute(&format!(
            "INSERT INTO {schema}.ferry_leases \
             SELECT 'server/s' || lpad(i::text, 6, '0'), 's' || lpad(i::text, 6, '0'), \
                    'nm-' || (i % 4), 'inc-' || i, 1, 'held', now() + interval '1 hour', now() \
             FROM generate_series(1, {n}) AS i"
        ))
        .await?;
    server.execute(&format!("VACUUM ANALYZE {schema}.ferry_leases")).await?;
    Ok(url)
}

// ---- raw baselines ----

/// A closed-loop run at the highest rate the client can drive.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    pub what: String,
    pub n: usize,
    pub connections: usize,
    pub seconds: f64,
    /// Rows updated (leases renewed) per second.
    pub per_s: f64,
    pub latency_avg_us: Option<f64>,
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    pub errors: u64,
    pub cpu: CpuUse,
}

/// pgbench running the bare single-row `UPDATE` on random rows of the baseline table.
pub async fn pgbench(
    server: &Server,
    schema: &str,
    n: usize,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<BaselineReport> {
    let bin = bin_dir()?.join("pgbench");
    let dir = std::env::temp_dir().join(format!("ferry-bench-pgbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("update.sql");
    std::fs::write(
        &script,
        format!(
            "\\set id random(1, {n})\n\
             UPDATE ferry_leases SET expires_at = now() + interval '3 s' \
             WHERE name = 'server/s' || lpad((:id)::text, 6, '0');\n"
        ),
    )?;
    let cpu = CpuMeter::start(server.postmaster_pid());
    let out = tokio::process::Command::new(&bin)
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &connections.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-h",
            "127.0.0.1",
            "-p",
            &server.port().to_string(),
            "-U",
            ferry_testkit::SUPERUSER,
            "-f",
        ])
        .arg(&script)
        .arg(ferry_testkit::DATABASE)
        .env("PGOPTIONS", format!("-c search_path={schema}"))
        .output()
        .await
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let cpu = cpu.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench failed ({}): {}{}", out.status, String::from_utf8_lossy(&out.stderr).trim(), text.trim());
    }
    let field = |prefix: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l[prefix.len()..].split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let per_s = field("tps = ").context("pgbench printed no tps")?;
    let failed = field("number of failed transactions: ").unwrap_or(0.0) as u64;
    Ok(BaselineReport {
        what: "pgbench: bare UPDATE".into(),
        n,
        connections,
        seconds: seconds as f64,
        per_s,
        latency_avg_us: field("latency average = ").map(|ms| ms * 1000.0),
        latency_p50_us: None,
        latency_p99_us: None,
        errors: failed,
        cpu,
    })
}

/// The same bare `UPDATE` from tokio-postgres (the client library ferry uses), one prepared
/// statement per connection, each connection in a closed loop.
pub async fn raw_tokio(
    server: &Server,
    schema: &str,
    n: usize,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<BaselineReport> {
    let url = server.url_in(schema);
    let mut clients = Vec::new();
    for _ in 0..connections {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        clients.push(client);
    }
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let cpu = CpuMeter::start(server.postmaster_pid());
    let start = micros();
    let end = start + seconds * 1_000_000;
    let mut tasks = Vec::new();
    for (j, client) in clients.into_iter().enumerate() {
        let tally = Arc::clone(&tally);
        tasks.push(tokio::spawn(async move {
            let stmt =
                client.prepare("UPDATE ferry_leases SET expires_at = now() + interval '3 s' WHERE name = $1").await?;
            let mut rng = Rng::new(j as u64 + 1);
            let mut lat = Vec::new();
            let mut errors = 0u64;
            loop {
                let t0 = micros();
                if t0 >= end {
                    break;
                }
                let name = format!("server/{}", lease_server(rng.below(n) + 1));
                match client.execute(&stmt, &[&name]).await {
                    Ok(_) => lat.push((micros() - t0) as u32),
                    Err(_) => errors += 1,
                }
            }
            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
            t.ok += lat.len() as u64;
            t.lat_us.extend(lat);
            t.unavailable += errors;
            Ok::<(), tokio_postgres::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let took = (micros() - start) as f64 / 1e6;
    let cpu = cpu.stop();
    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
    t.lat_us.sort_unstable();
    Ok(BaselineReport {
        what: "tokio-postgres: bare UPDATE".into(),
        n,
        connections,
        seconds: took,
        per_s: t.ok as f64 / took,
        latency_avg_us: mean(&t.lat_us),
        latency_p50_us: pct(&t.lat_us, 50.0),
        latency_p99_us: pct(&t.lat_us, 99.0),
        errors: t.unavailable,
        cpu,
    })
}

pub fn mean(v: &[u32]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64)
}

/// Nearest-rank percentile of sorted `v`.
pub fn pct(v: &[u32], p: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let k = ((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[k - 1] as u64)
}

/// A small xorshift generator: cheap random lease picks in hot loops.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

// ---- CPU accounting ----

/// Cores used during a measurement: by this process (with the pgbench it ran), by the
/// PostgreSQL server's processes, and by the whole machine (the host is shared).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    pub client_cores: f64,
    pub server_cores: f64,
    pub machine_cores: f64,
}

pub struct CpuMeter {
    postmaster: Option<i32>,
    at_us: u64,
    client: u64,
    server: u64,
    machine: u64,
}

impl CpuMeter {
    pub fn start(postmaster: Option<i32>) -> CpuMeter {
        CpuMeter {
            postmaster,
            at_us: micros(),
            client: proc_ticks("self", true),
            server: postmaster.map_or(0, server_ticks),
            machine: machine_busy_ticks(),
        }
    }

    pub fn stop(&self) -> CpuUse {
        let secs = (micros().saturating_sub(self.at_us)) as f64 / 1e6;
        let hz = clock_ticks_per_s();
        let cores = |ticks: u64| ticks as f64 / hz / secs.max(1e-6);
        CpuUse {
            client_cores: cores(proc_ticks("self", true).saturating_sub(self.client)),
            server_cores: cores(self.postmaster.map_or(0, server_ticks).saturating_sub(self.server)),
            machine_cores: cores(machine_busy_ticks().saturating_sub(self.machine)),
        }
    }
}

/// utime + stime (+ the reaped children's, if `children`) of a process, in clock ticks.
fn proc_ticks(pid: &str, children: bool) -> u64 {
    let Some(f) = stat_fields(pid) else { return 0 };
    // After `(comm)`: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    // utime(11) stime(12) cutime(13) cstime(14).
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12) + if children { get(13) + get(14) } else { 0 }
}

/// The postmaster (with its reaped backends) and every live child process.
fn server_ticks(postmaster: i32) -> u64 {
    let pm = postmaster.to_string();
    let mut total = proc_ticks(&pm, true);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let pid = e.file_name().to_string_lossy().to_string();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if stat_fields(&pid).and_then(|f| f.get(1).cloned()).as_deref() == Some(pm.as_str()) {
                total += proc_ticks(&pid, false);
            }
        }
    }
    total
}

/// Busy ticks of the whole machine (all but idle and iowait), from /proc/stat.
fn machine_busy_ticks() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = text.lines().next() else {
        return 0;
    };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    total.saturating_sub(v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0))
}
