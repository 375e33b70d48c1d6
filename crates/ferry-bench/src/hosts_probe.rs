//! The fine-grained client of the cross-host benchmark (`ferry-bench hosts-probe`, hidden):
//! started by `hosts` inside the lab's client namespace, it opens a new connection to the
//! target every `--every-ms` whether or not the previous ones have finished, and logs each
//! probe's start, end and answer (who answered) as one JSON line.
//!
//! Why not only `ferry demo-client`: that client probes one request at a time with an 80 ms
//! timeout, so while the floating IP points at a dead machine it samples only every ~85 ms
//! and reports the end of an outage up to that much late. Overlapping probes see the first
//! moment the service is reachable again to within `--every-ms`. Both run side by side; the
//! report shows both.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ferry_host::clock;
use serde::{Deserialize, Serialize};

#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// The address to ask (a floating IP and port).
    #[arg(long)]
    pub target: SocketAddr,
    /// Where to append one JSON line per probe.
    #[arg(long)]
    pub log: PathBuf,
    /// Start a new probe this often (ms), overlapping the ones still in flight.
    #[arg(long, default_value_t = 2)]
    pub every_ms: u64,
    /// Give up on one probe after this long (ms).
    #[arg(long, default_value_t = 250)]
    pub timeout_ms: u64,
}

/// One probe: started at `t0_ms`, finished at `t_ms` (CLOCK_BOOTTIME, the clock of the
/// benchmark's crash instant), answered by `machine` with fencing token `epoch` when `ok`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeLine {
    pub t0_ms: u64,
    pub t_ms: u64,
    pub ok: bool,
    #[serde(default)]
    pub machine: String,
    #[serde(default)]
    pub epoch: u64,
}

/// Runs until killed (the lab kills it with its namespace).
pub async fn run(a: ProbeArgs) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.log)
        .with_context(|| format!("cannot open {}", a.log.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProbeLine>();
    let timeout = Duration::from_millis(a.timeout_ms);
    let target = a.target;
    let every = Duration::from_millis(a.every_ms.max(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let tx = tx.clone();
            tokio::spawn(async move {
                let t0_ms = clock::now().ms();
                let answer = ferry_testkit::probe(target, timeout).await;
                let t_ms = clock::now().ms();
                let line = match answer {
                    Some(v) => ProbeLine {
                        t0_ms,
                        t_ms,
                        ok: true,
                        machine: v["machine"].as_str().unwrap_or_default().to_string(),
                        epoch: v["fencing_token"].as_u64().unwrap_or(0),
                    },
                    None => ProbeLine { t0_ms, t_ms, ok: false, machine: String::new(), epoch: 0 },
                };
                let _ = tx.send(line);
            });
        }
    });
    while let Some(line) = rx.recv().await {
        // One write per line, so a reader never sees half a line's worth of interleaving.
        let mut text = serde_json::to_string(&line)?;
        text.push('\n');
        f.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// The probe lines logged so far (a torn last line is skipped).
pub fn read(path: &Path) -> Vec<ProbeLine> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// What the probes saw around a failure at `t0_ms`, as answers arrived (by `t_ms`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeView {
    /// The last answer before `t0_ms` (ms before `t0_ms`, so a positive number).
    pub last_before_ago_ms: Option<i64>,
    /// The first answer from `new_machine` after `t0_ms`, ms after `t0_ms`.
    pub first_new_ms: Option<i64>,
    /// Answers from another machine than `old_machine` before `t0_ms` (keepalived flapping,
    /// or the floating IP on two machines).
    pub foreign_before: usize,
    /// An answer from a lower fencing token or from `old_machine` after one from
    /// `new_machine` had arrived (must never happen).
    pub went_back: Option<String>,
}

/// Reads `lines` around a failure at `t0_ms`: `old_machine` held the address before, and
/// `accept` says which answer counts as the new holder's.
pub fn view(lines: &[ProbeLine], t0_ms: u64, old_machine: &str, accept: impl Fn(&ProbeLine) -> bool) -> ProbeView {
    let mut ok: Vec<&ProbeLine> = lines.iter().filter(|l| l.ok).collect();
    ok.sort_by_key(|l| l.t_ms);
    let mut v = ProbeView {
        last_before_ago_ms: ok.iter().filter(|l| l.t_ms < t0_ms).map(|l| t0_ms as i64 - l.t_ms as i64).min(),
        foreign_before: ok.iter().filter(|l| l.t0_ms < t0_ms && l.machine != old_machine).count(),
        ..ProbeView::default()
    };
    let first = ok.iter().find(|l| l.t0_ms >= t0_ms && accept(l));
    v.first_new_ms = first.map(|l| l.t_ms as i64 - t0_ms as i64);
    if let Some(first) = first {
        v.went_back =
            ok.iter().find(|l| l.t_ms > first.t_ms && (l.machine == old_machine || l.epoch < first.epoch)).map(|l| {
                format!(
                    "{} (token {}) answered {} ms after the crash, after {} (token {}) had at {} ms",
                    l.machine,
                    l.epoch,
                    l.t_ms as i64 - t0_ms as i64,
                    first.machine,
                    first.epoch,
                    first.t_ms as i64 - t0_ms as i64
                )
            });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(t0_ms: u64, t_ms: u64, machine: &str, epoch: u64) -> ProbeLine {
        ProbeLine { t0_ms, t_ms, ok: !machine.is_empty(), machine: machine.into(), epoch }
    }

    #[test]
    fn first_answer_from_the_new_machine_after_the_crash() {
        let lines = vec![
            l(90, 91, "c", 1),
            l(98, 99, "c", 1),
            l(100, 350, "", 0),
            l(400, 402, "d", 2),
            l(396, 401, "d", 2),
            l(404, 405, "d", 2),
        ];
        let v = view(&lines, 100, "c", |p| p.machine == "d");
        assert_eq!(v.last_before_ago_ms, Some(1));
        assert_eq!(v.first_new_ms, Some(301));
        assert_eq!(v.foreign_before, 0);
        assert!(v.went_back.is_none());
    }

    #[test]
    fn an_old_answer_after_a_new_one_is_reported() {
        let lines = vec![l(90, 91, "d", 1), l(100, 200, "d", 2), l(201, 202, "c", 1)];
        let v = view(&lines, 100, "c", |p| p.machine == "d" && p.epoch > 1);
        assert_eq!(v.foreign_before, 1);
        assert_eq!(v.first_new_ms, Some(100));
        assert!(v.went_back.is_some());
    }
}
