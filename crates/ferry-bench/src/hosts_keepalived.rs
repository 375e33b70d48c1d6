//! The peer of the cross-host benchmark: keepalived (the Debian package) moving a VRRP address
//! between two lab machines, crashed the same way ferry's machine is crashed, and watched by
//! the same two clients. This is the yardstick of DESIGN §6 ("with grace 0, no slower than
//! keepalived with `advert_int` equal to the interval").
//!
//! Each run builds a fresh lab (machine-c, machine-d and the client), then:
//! * both machines run `ferry demo-service --listen 0.0.0.0:8080` with `FERRY_MACHINE` set, so
//!   whichever machine holds the VIP answers on it and says who it is (fencing token 1 on c,
//!   2 on d, so "an older answer after a newer one" means the same as for ferry);
//! * keepalived runs in each machine's namespace in the foreground (`-n -l -D -P`), with its
//!   configuration, log and fresh pid files in the run's directory: VRRP version 3 (required
//!   for sub-second adverts), multicast on eth0, `advert_int` as asked (by default 0.1 s, ferry's
//!   interval, and 0.02 s, the fastest that never flapped on this host),
//!   priorities 254 (machine-c, MASTER) and 253 (machine-d, BACKUP), the highest a backup
//!   can have: its skew time `(256 - priority) / 256 × advert_int` is ~1 ms, so it declares
//!   the master dead after `3 × advert_int` plus ~1 ms, which is as fast as VRRP goes at
//!   that advert interval. keepalived sends gratuitous ARPs on becoming master;
//! * machine-c starts first and must hold the VIP before machine-d starts (so machine-d
//!   begins as a backup), then the clients must see machine-c answer, then, after a settling
//!   time plus a random part of one advert interval, machine-c crashes (`Lab::crash`:
//!   cable pulled, every process SIGKILLed, its addresses cleared).
//!
//! Measured: from the crash to the first answer from machine-d at the VIP.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use ferry_host::clock;
use ferry_lab::{Lab, LabSpec, CLIENT};
use ferry_testkit::ClientLine;
use serde::Serialize;

use crate::hosts_probe;

/// The VIP keepalived moves (in the lab's floating range).
pub const VIP: &str = "198.18.1.150";
/// Where the demo service listens on every address of each machine.
const PORT: u16 = 8080;
const MASTER: &str = "machine-c";
const BACKUP: &str = "machine-d";
const PATIENCE: Duration = Duration::from_secs(20);

/// One keepalived run; `_ms` are from the crash.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeepalivedRun {
    pub run: usize,
    pub dir: String,
    pub advert_ms: u64,
    pub phase_ms: u64,
    /// How long `Lab::crash` took (cable pull, kill, wait until every process was gone).
    pub crash_took_ms: u64,
    /// First answer from machine-d (overlapping probes every few ms).
    pub answered_ms: Option<i64>,
    /// First answer from machine-d seen by `ferry demo-client` (one probe at a time).
    pub demo_client_ms: Option<i64>,
    /// Answers from machine-d before the crash (keepalived flapped: not a reliable setting).
    pub flaps: usize,
    pub went_back: Option<String>,
    pub error: Option<String>,
}

pub async fn one(exe: &Path, probe_exe: &Path, dir: &Path, run: usize, advert_ms: u64, every_ms: u64) -> KeepalivedRun {
    let mut r = KeepalivedRun { run, dir: dir.display().to_string(), advert_ms, ..Default::default() };
    if let Err(e) = measure(exe, probe_exe, dir, advert_ms, every_ms, &mut r).await {
        r.error = Some(format!("{e:#}"));
    }
    r
}

async fn measure(
    exe: &Path,
    probe_exe: &Path,
    dir: &Path,
    advert_ms: u64,
    every_ms: u64,
    r: &mut KeepalivedRun,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let dir = std::fs::canonicalize(dir)?;
    let lab = Lab::up(LabSpec::new(&[MASTER, BACKUP])).await.context("the lab")?;
    let target = format!("{VIP}:{PORT}");
    for (m, token) in [(MASTER, "1"), (BACKUP, "2")] {
        let child = lab.spawn(
            m,
            exe,
            &["demo-service", "--listen", &format!("0.0.0.0:{PORT}")],
            &[("FERRY_MACHINE", m), ("FERRY_SERVER", "vip"), ("FERRY_FENCING_TOKEN", token)],
            &dir.join(format!("service-{m}.log")),
        )?;
        // The lab kills everything in its namespaces; dropping the handle lets tokio reap it.
        drop(child);
    }
    start_keepalived(&lab, &dir, MASTER, "MASTER", 254, advert_ms)?;
    let until = clock::now() + PATIENCE;
    while !has_vip(&lab, MASTER).await {
        if clock::now() >= until {
            bail!("keepalived on {MASTER} did not take {VIP} within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start_keepalived(&lab, &dir, BACKUP, "BACKUP", 253, advert_ms)?;
    let log_b = dir.join(format!("keepalived-{BACKUP}.log"));
    let until = clock::now() + PATIENCE;
    while !std::fs::read_to_string(&log_b).unwrap_or_default().contains("Entering BACKUP STATE") {
        if clock::now() >= until {
            bail!("keepalived on {BACKUP} did not enter the backup state");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let probe_log = dir.join("probe.jsonl");
    let client_log = dir.join("client.jsonl");
    start_clients(&lab, exe, probe_exe, &dir, &target, &probe_log, &client_log, every_ms)?;
    let until = clock::now() + PATIENCE;
    while !hosts_probe::read(&probe_log).iter().any(|l| l.ok && l.machine == MASTER) {
        if clock::now() >= until {
            bail!("the client got no answer from {MASTER} at {target}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Steady adverts, then a random phase of one advert interval.
    r.phase_ms = rand::random::<u64>() % advert_ms.max(1);
    tokio::time::sleep(Duration::from_millis(500 + r.phase_ms)).await;

    let t0 = clock::now().ms();
    lab.crash(MASTER).await?;
    r.crash_took_ms = clock::now().ms() - t0;

    let until = clock::now() + PATIENCE;
    let accept = |l: &hosts_probe::ProbeLine| l.machine == BACKUP;
    let pv = loop {
        let v = hosts_probe::view(&hosts_probe::read(&probe_log), t0, MASTER, accept);
        if v.first_new_ms.is_some() {
            break v;
        }
        if clock::now() >= until {
            bail!("no answer from {BACKUP} at {target} within {PATIENCE:?} of the crash");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Let the serial client catch up (it may be inside an 80 ms timeout).
    let until = clock::now() + Duration::from_secs(2);
    r.demo_client_ms = loop {
        if let Some(ms) = demo_client_first(&client_log, t0, |l| l.machine == BACKUP) {
            break Some(ms);
        }
        if clock::now() >= until {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pv2 = hosts_probe::view(&hosts_probe::read(&probe_log), t0, MASTER, accept);
    r.answered_ms = pv.first_new_ms;
    r.flaps = pv2.foreign_before;
    r.went_back = pv2.went_back;
    lab.down()?;
    Ok(())
}

/// Writes the run's keepalived.conf for `machine` and starts keepalived there.
fn start_keepalived(
    lab: &Lab,
    dir: &Path,
    machine: &str,
    state: &str,
    priority: u8,
    advert_ms: u64,
) -> anyhow::Result<()> {
    let conf = dir.join(format!("keepalived-{machine}.conf"));
    std::fs::write(&conf, config(machine, state, priority, advert_ms))?;
    let file = |what: &str| dir.join(format!("keepalived-{machine}.{what}.pid")).display().to_string();
    let child = lab.spawn(
        machine,
        "keepalived",
        &[
            "-n".to_string(),
            "-l".into(),
            "-D".into(),
            "-P".into(),
            "-f".into(),
            conf.display().to_string(),
            "-p".into(),
            file("main"),
            "-r".into(),
            file("vrrp"),
            "-c".into(),
            file("checkers"),
        ],
        &[],
        &dir.join(format!("keepalived-{machine}.log")),
    )?;
    drop(child); // the lab kills it; tokio reaps it
    Ok(())
}

/// keepalived.conf of one machine.
pub fn config(machine: &str, state: &str, priority: u8, advert_ms: u64) -> String {
    format!(
        "# Written by ferry-bench hosts.\n\
         global_defs {{\n  router_id {machine}\n  vrrp_version 3\n  script_user root\n  enable_script_security\n}}\n\
         vrrp_instance VI_1 {{\n  state {state}\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int {}\n  virtual_ipaddress {{\n    {VIP}/24 dev eth0\n  }}\n}}\n",
        advert_secs(advert_ms)
    )
}

/// `advert_int` in seconds (VRRP v3 counts centiseconds).
fn advert_secs(ms: u64) -> String {
    let cs = (ms / 10).max(1);
    format!("{}.{:02}", cs / 100, cs % 100)
}

/// Starts the overlapping prober and `ferry demo-client` in the client namespace.
#[allow(clippy::too_many_arguments)]
pub fn start_clients(
    lab: &Lab,
    exe: &Path,
    probe_exe: &Path,
    dir: &Path,
    target: &str,
    probe_log: &Path,
    client_log: &Path,
    every_ms: u64,
) -> anyhow::Result<()> {
    let probe = lab.spawn(
        CLIENT,
        probe_exe,
        &[
            "hosts-probe".to_string(),
            "--target".into(),
            target.into(),
            "--log".into(),
            probe_log.display().to_string(),
            "--every-ms".into(),
            every_ms.to_string(),
        ],
        &[],
        &dir.join("probe.log"),
    )?;
    drop(probe); // the lab kills it; tokio reaps it
    let client = lab.spawn(
        CLIENT,
        exe,
        &[
            "demo-client".to_string(),
            "--target".into(),
            target.into(),
            "--log".into(),
            client_log.display().to_string(),
            "--interval-ms".into(),
            "5".into(),
        ],
        &[],
        &dir.join("demo-client.log"),
    )?;
    drop(client); // the lab kills it; tokio reaps it
    Ok(())
}

/// The first answer `ferry demo-client` logged in `log` that `accept` takes, from a probe
/// started at or after `t0_ms`: ms after `t0_ms`.
pub fn demo_client_first(log: &Path, t0_ms: u64, accept: impl Fn(&ClientLine) -> bool) -> Option<i64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<ClientLine>(l).ok())
        .find(|l| l.ok && l.t_ms >= t0_ms && accept(l))
        .map(|l| l.t_ms as i64 - t0_ms as i64)
}

/// `keepalived --version`'s number (it prints to stderr), or `?`.
pub async fn version() -> String {
    let out = tokio::process::Command::new("keepalived").arg("--version").output().await;
    out.ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
            text.split_whitespace()
                .find(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
                .map(|w| w[1..].to_string())
        })
        .unwrap_or_else(|| "?".into())
}

async fn has_vip(lab: &Lab, machine: &str) -> bool {
    lab.addresses(machine).await.unwrap_or_default().iter().any(|a| a.starts_with(&format!("{VIP}/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advert_int_in_seconds() {
        assert_eq!(advert_secs(100), "0.10");
        assert_eq!(advert_secs(1000), "1.00");
        assert_eq!(advert_secs(30), "0.03");
        assert_eq!(advert_secs(1), "0.01");
    }

    #[test]
    fn config_names_version_3_and_the_vip() {
        let c = config("machine-c", "MASTER", 254, 100);
        assert!(c.contains("vrrp_version 3"));
        assert!(c.contains("advert_int 0.10"));
        assert!(c.contains("198.18.1.150/24 dev eth0"));
        assert!(c.contains("priority 254"));
    }
}
