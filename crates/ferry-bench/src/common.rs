//! What both scenarios share: finding the `ferry` binary, starting a fresh Figure 7-1 domain
//! with its cluster up and ms1 as cluster master, the client's probe loop, reading the
//! domain's event log after a failure, and the facts of the machine the numbers come from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use ferry_api::Event;
use ferry_host::clock;
use ferry_host::process;
use ferry_testkit::{check_journal, probe, wait_until, DomainSpec, Harness};
use nix::sys::signal::Signal;
use serde::Serialize;

/// How long any one step of a run may take before the run counts as failed.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The client probes the service address this often while it waits for an answer.
pub const PROBE_EVERY: Duration = Duration::from_millis(2);

/// One probe may take this long (a stopped process accepts connections and never answers).
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);

/// Lease and grace timings of one scenario.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timings {
    pub interval_ms: u64,
    pub periods: u32,
    pub grace_ms: u64,
}

impl Timings {
    pub fn ttl_ms(&self) -> u64 {
        self.interval_ms * self.periods as u64
    }

    /// The seed's bound: `interval × periods + grace`.
    pub fn timers_ms(&self) -> u64 {
        self.ttl_ms() + self.grace_ms
    }
}

/// The `ferry` executable built with the same profile as this benchmark: its sibling.
pub fn ferry_exe(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--ferry {}: no such file", p.display());
        }
        return Ok(p);
    }
    let me = std::env::current_exe().context("cannot find this executable's path")?;
    let dir = me.parent().context("this executable has no directory")?;
    let exe = dir.join("ferry");
    if exe.is_file() {
        return Ok(exe);
    }
    let cmd = if dir.ends_with("release") { "cargo build --release -p ferry" } else { "cargo build -p ferry" };
    bail!(
        "the ferry binary is missing: expected {} next to this benchmark.\nBuild it with the same profile first:\n    {cmd}",
        exe.display()
    )
}

/// A fresh domain (Administration Server, Node Managers of machine-b, -c, -d) with
/// cluster-1 started, ms1 RUNNING on machine-b as cluster master and ms2 RUNNING on
/// machine-c. Gives up (with the reason) when another server became master.
pub async fn fresh_domain(exe: &Path, dir: &Path, t: Timings) -> anyhow::Result<Harness> {
    let spec = DomainSpec::figure_7_1(t.interval_ms, t.periods, t.grace_ms);
    let h = Harness::start(spec, exe, Some(dir.to_path_buf())).await?;
    h.admin().start_cluster("cluster-1").await.context("start-cluster refused")?;
    h.wait_running("ms1", "machine-b", 0, PATIENCE).await?;
    h.wait_running("ms2", "machine-c", 0, PATIENCE).await?;
    let admin = h.admin();
    wait_until(PATIENCE, "a cluster master", || async {
        admin.servers().await.map(|l| l.iter().any(|s| s.master)).unwrap_or(false)
    })
    .await?;
    let status = h.status().await?;
    let master: Vec<&str> = status.iter().filter(|s| s.master).map(|s| s.name.as_str()).collect();
    if master != ["ms1"] {
        bail!("setup: the cluster master is {master:?}, not ms1");
    }
    Ok(h)
}

/// Lets the leases renew for two intervals, then waits a random part of one more interval,
/// so the failure falls at a random phase of the renewal cycle. Returns the phase in ms.
pub async fn settle_random_phase(t: Timings) -> u64 {
    let phase = rand::random::<u64>() % t.interval_ms.max(1);
    tokio::time::sleep(Duration::from_millis(2 * t.interval_ms + phase)).await;
    phase
}

/// The id of the newest event, so a run reads only the events after its failure.
pub async fn last_event_id(h: &Harness) -> anyhow::Result<u64> {
    let events = h.admin().events(0).await?;
    Ok(events.last().map_or(0, |e| e.id))
}

/// SIGSTOP then SIGKILL to every pid (stop first so none can react to the others' death),
/// as fast as possible after the caller read the clock.
pub fn stop_and_kill(pids: &[i32]) {
    for &p in pids {
        process::signal(p, Signal::SIGSTOP);
    }
    for &p in pids {
        process::signal(p, Signal::SIGKILL);
    }
}

/// Probes `addr` every [`PROBE_EVERY`] until `accept` takes an answer; returns the time of
/// that answer on CLOCK_BOOTTIME and the answer.
pub async fn probe_until(
    addr: SocketAddr,
    patience: Duration,
    mut accept: impl FnMut(&serde_json::Value) -> bool,
) -> anyhow::Result<(u64, serde_json::Value)> {
    let until = clock::now() + patience;
    loop {
        if let Some(v) = probe(addr, PROBE_TIMEOUT).await {
            if accept(&v) {
                return Ok((clock::now().ms(), v));
            }
        }
        if clock::now() >= until {
            bail!("no acceptable answer at {addr} within {patience:?}");
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Reads the events after `since` until `done` finds the one that ends the story (events
/// reach the Administration Server a moment after they happen).
pub async fn events_until(
    h: &Harness,
    since: u64,
    what: &str,
    done: impl Fn(&Event) -> bool,
) -> anyhow::Result<Vec<Event>> {
    let admin = h.admin();
    let until = clock::now() + Duration::from_secs(10);
    loop {
        if let Ok(events) = admin.events(since).await {
            if events.iter().any(&done) {
                return Ok(events);
            }
        }
        if clock::now() >= until {
            bail!("no {what} event within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first event matching `pred`: its wall-clock time minus `t0_wall`, in ms.
pub fn first_after(events: &[Event], t0_wall: u64, pred: impl Fn(&Event) -> bool) -> Option<i64> {
    events.iter().find(|e| pred(e)).map(|e| e.at_ms as i64 - t0_wall as i64)
}

/// The safety check of every server's journal (ms1 and ms2 in Figure 7-1, `s001`.. in
/// `scale`): `Ok` or the first violation.
pub fn safety(h: &Harness) -> Result<(), String> {
    for s in &h.spec.servers {
        check_journal(&h.journal_path(&s.name)).map_err(|e| format!("{}: {e}", s.name))?;
    }
    Ok(())
}

/// The host the numbers were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct MachineFacts {
    pub nproc: usize,
    pub kernel: String,
    pub cpu: String,
    pub loadavg: String,
}

impl MachineFacts {
    pub fn read() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        MachineFacts {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            cpu,
            loadavg: loadavg(),
        }
    }
}

/// The 1, 5 and 15 minute load averages (the host is shared: say how busy it was).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A run's domain: up to three fresh domains until one has ms1 as master (a domain where
/// ms1 did not become master would measure a master takeover instead; rare, since ms1 is
/// started first). Returns the domain (or the last setup error), its directory and the
/// number of domains started.
pub async fn setup(exe: &Path, dir: &Path, run: usize, t: Timings) -> (Result<Harness, String>, PathBuf, u32) {
    let mut last = (Err(String::new()), dir.to_path_buf(), 0);
    for attempt in 1..=3u32 {
        let d =
            if attempt == 1 { dir.to_path_buf() } else { dir.with_file_name(format!("run-{run:03}-setup-{attempt}")) };
        match fresh_domain(exe, &d, t).await {
            Ok(h) => return (Ok(h), d, attempt),
            Err(e) => last = (Err(format!("{e:#}")), d, attempt),
        }
    }
    last
}

/// The opening lines every report prints: its title, the host, the `ferry` under test and
/// where the runs' domains stay. The machine facts, for the JSON.
pub fn print_header(title: &str, exe: &Path, base: &Path) -> MachineFacts {
    let facts = MachineFacts::read();
    println!("# {title}\n");
    println!(
        "host: {} cores, kernel {}, CPU {}; load average at start {} (the host is shared)",
        facts.nproc, facts.kernel, facts.cpu, facts.loadavg
    );
    println!("ferry: {}", exe.display());
    println!("runs' domains (logs, lease tables, journals): {}", base.display());
    facts
}

// ---- /proc ----

/// Clock ticks per second (`getconf CLK_TCK`; 100 if it cannot be asked), read once.
pub fn clock_ticks_per_s() -> f64 {
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The fields after `(comm)` of /proc/PID/stat (`self` for this process): state ppid pgrp
/// session tty tpgid flags minflt cminflt majflt cmajflt utime(11) stime(12) cutime(13)
/// cstime(14) ...
pub fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_string).collect())
}
