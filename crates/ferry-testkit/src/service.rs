//! The demo service as tests see it: what it answers ([`probe`]), what it and its clients
//! write (a [`JournalLine`] every 10 ms while an instance runs, a [`ClientLine`] per probe of
//! a floating IP), and the safety checks on those records: instances never overlap and
//! fencing tokens only grow ([`check_journal`]), no older instance answers after a newer one
//! ([`client_view`]). `ferry demo-service` and `ferry demo-client` write the records; the
//! process tests, the host tests, `ferry demo` and the benchmark read them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

/// One journal line: who was alive at `t_ms` (CLOCK_BOOTTIME, comparable across processes).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct JournalLine {
    pub t_ms: u64,
    pub server: String,
    pub machine: String,
    pub epoch: u64,
    pub pid: u32,
}

/// One probe of a client: at `t_ms` (CLOCK_BOOTTIME) the service answered as `server` on
/// `machine` with `epoch`, or did not answer (`ok` false).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ClientLine {
    pub t_ms: u64,
    pub ok: bool,
    #[serde(default)]
    pub machine: String,
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub pid: u32,
}

/// One HTTP GET to a demo service; its JSON answer, if any.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let body = text.split("\r\n\r\n").nth(1)?;
        serde_json::from_str(body).ok()
    };
    tokio::time::timeout(timeout, work).await.ok().flatten()
}

/// What the journals say about one server: its instances in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub epoch: u64,
    pub pid: u32,
    pub machine: String,
    pub first_ms: u64,
    pub last_ms: u64,
}

/// Checks the safety property on a service journal: instances never overlap in time, and
/// each later instance has a larger fencing token. Returns the instances in order.
pub fn check_journal(path: &Path) -> anyhow::Result<Vec<Instance>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut by_instance: BTreeMap<(u64, u32), Instance> = BTreeMap::new();
    for line in text.lines() {
        let Ok(j) = serde_json::from_str::<JournalLine>(line) else {
            continue;
        };
        let e = by_instance.entry((j.epoch, j.pid)).or_insert(Instance {
            epoch: j.epoch,
            pid: j.pid,
            machine: j.machine.clone(),
            first_ms: j.t_ms,
            last_ms: j.t_ms,
        });
        e.first_ms = e.first_ms.min(j.t_ms);
        e.last_ms = e.last_ms.max(j.t_ms);
    }
    let mut list: Vec<Instance> = by_instance.into_values().collect();
    list.sort_by_key(|i| i.first_ms);
    for w in list.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.last_ms >= b.first_ms {
            bail!(
                "two instances ran at once: epoch {} pid {} on {} until {} ms, and epoch {} pid {} on {} from {} ms",
                a.epoch,
                a.pid,
                a.machine,
                a.last_ms,
                b.epoch,
                b.pid,
                b.machine,
                b.first_ms
            );
        }
        if b.epoch <= a.epoch {
            bail!(
                "fencing token went backwards: epoch {} (pid {}) followed epoch {} (pid {})",
                b.epoch,
                b.pid,
                a.epoch,
                a.pid
            );
        }
    }
    Ok(list)
}

/// What a client saw around a failure at `t0_ms` (CLOCK_BOOTTIME): the last answer before,
/// the first answer after from another instance, and whether an older instance ever
/// answered again after a newer one (which must never happen).
#[derive(Debug, Clone)]
pub struct ClientView {
    pub last_before_ms: Option<u64>,
    pub first_new_ms: Option<u64>,
    pub new_machine: Option<String>,
    pub outage_ms: Option<u64>,
    pub went_back: Option<String>,
}

pub fn client_view(lines: &[ClientLine], t0_ms: u64, old_epoch: u64) -> ClientView {
    let last_before_ms = lines.iter().filter(|l| l.ok && l.t_ms < t0_ms).map(|l| l.t_ms).max();
    let first_new = lines.iter().find(|l| l.ok && l.t_ms >= t0_ms && l.epoch > old_epoch);
    let mut went_back = None;
    let mut highest = 0;
    for l in lines.iter().filter(|l| l.ok) {
        if l.epoch < highest {
            went_back = Some(format!("epoch {} answered at {} ms after epoch {highest} had", l.epoch, l.t_ms));
            break;
        }
        highest = highest.max(l.epoch);
    }
    ClientView {
        last_before_ms,
        first_new_ms: first_new.map(|l| l.t_ms),
        new_machine: first_new.map(|l| l.machine.clone()),
        outage_ms: first_new.map(|l| l.t_ms.saturating_sub(t0_ms)),
        went_back,
    }
}
