//! The cluster master's scan under load: incremental scans from a cursor and full scans,
//! timed while the other leases renew (the master's cost must follow the expired leases,
//! not all leases).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use std::time::Duration;

use ferry_core::LeaseName;
use ferry_store::postgres::PostgresStore;
use ferry_store::{LeaseStore, ScanCursor};
use serde::Serialize;

use crate::leases_load::{arm, drive, micros, Batching, Fleet, Mode, PhaseReport};
use crate::leases_pg::pct;

/// What [`scans`] measures: at each count of expired leases (ascending), scans `every`
/// apart for `seconds`.
pub struct ScanPlan {
    pub counts: Vec<usize>,
    pub seconds: u64,
    pub every: Duration,
}

/// The master's scan with `expired` leases expired out of `n`.
#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    pub n: usize,
    pub expired_target: usize,
    /// Whether the other leases were renewing meanwhile (else paused, see [`scans`]).
    pub renewing: bool,
    /// The master's steady state: `scan(cursor, tracked)` from the previous scan's cursor,
    /// with every expired lease tracked (the planner tracks each one it has seen).
    pub incremental: ScanTimes,
    /// `scan(FULL, [])`: every expired lease (a master's first scan, and its periodic one).
    pub full: ScanTimes,
}

/// One kind of scan, timed `every` apart.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ScanTimes {
    pub scans: usize,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<u64>,
    /// Rows returned: min and max over the scans.
    pub returned_min: usize,
    pub returned_max: usize,
    pub errors: u64,
}

/// Lets growing shares of the leases expire (nested sets, in a fixed random order) while
/// the others keep renewing in `mode`, and times the master's incremental scan, then its
/// full scan (each `every` apart for `scan_seconds`) at each share; then once more at the
/// largest share with renewals paused.
///
/// Why both: every renewal is an update of the indexed `expires_at`, so it leaves the
/// superseded row version's entry in the expiry index, under the old expiry, which passes
/// within one TTL. Until vacuum removes it, the first scan to meet such an entry visits the
/// heap to find it dead (and marks it, so later scans skip it reading it). A full scan
/// steps over every such entry left since the last vacuum; the incremental scan only over
/// those whose old expiry passed since the previous scan; paused, neither.
pub async fn scans(
    fleet: &Arc<Fleet>,
    master: &PostgresStore,
    mode: Mode,
    batching: Batching,
    plan: &ScanPlan,
    postmaster: Option<i32>,
) -> anyhow::Result<(Vec<ScanReport>, PhaseReport)> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;

    let ScanPlan { counts, seconds: scan_seconds, every } = plan;

    let n = fleet.holders.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(n as u64));
    let stop = Arc::new(AtomicBool::new(false));
    let driver = tokio::spawn(drive(Arc::clone(fleet), mode, batching, None, Arc::clone(&stop), postmaster));
    let mut out = Vec::new();
    let mut marked = 0;
    let ttl_us = fleet.ttl.as_micros() as u64;
    // Let the driver renew every lease once with the short TTL (they start with `arm`'s).
    tokio::time::sleep(Duration::from_micros(fleet.interval_us + fleet.request_timeout_us + 100_000)).await;
    for &k in counts {
        for &i in &order[marked..k.min(n)] {
            fleet.holders[i].excluded.store(true, Ordering::Relaxed);
        }
        marked = k.min(n);
        // A renewal already sent may still extend an excluded lease by one TTL.
        let mark = micros();
        tokio::time::sleep(Duration::from_micros(ttl_us + 200_000)).await;
        let patience = mark + ttl_us + fleet.request_timeout_us + 5_000_000;
        loop {
            let seen = master.expired().await.map(|v| v.len()).unwrap_or(0);
            if seen >= marked || micros() > patience {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tracked: Vec<LeaseName> = order[..marked].iter().map(|&i| fleet.holders[i].name.clone()).collect();
        out.push(time_scans(master, n, &tracked, true, *scan_seconds, *every).await);
    }
    stop.store(true, Ordering::Relaxed);
    let renewals = driver.await.context("the renewal driver failed")?;
    // The same scan with renewals paused: the live leases are renewed once for a long TTL
    // (their superseded index entries then expire within one TTL), one scan steps over
    // those, and what is left to time is the expired leases alone.
    arm(fleet, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_micros(ttl_us + 500_000)).await;
    let _ = master.scan(ScanCursor::FULL, &[]).await;
    let tracked: Vec<LeaseName> = order[..marked].iter().map(|&i| fleet.holders[i].name.clone()).collect();
    out.push(time_scans(master, n, &tracked, false, *scan_seconds, *every).await);
    for h in &fleet.holders {
        h.excluded.store(false, Ordering::Relaxed);
    }
    Ok((out, renewals))
}

/// Times the master's incremental scans for `seconds`, then its full scans, `every` apart.
async fn time_scans(
    master: &PostgresStore,
    n: usize,
    tracked: &[LeaseName],
    renewing: bool,
    seconds: u64,
    every: Duration,
) -> ScanReport {
    // The cursor a master has after its first, full scan.
    let cursor =
        std::cell::Cell::new(master.scan(ScanCursor::FULL, &[]).await.map(|s| s.cursor).unwrap_or(ScanCursor::FULL));
    let cursor = &cursor;
    let incremental = time_scan_kind(seconds, every, || async move {
        let r = master.scan(cursor.get(), tracked).await;
        if let Ok(s) = &r {
            cursor.set(s.cursor);
        }
        r
    })
    .await;
    let full = time_scan_kind(seconds, every, || master.scan(ScanCursor::FULL, &[])).await;
    eprintln!(
        "  scan with {} of {n} expired{}: incremental p50 {} µs ({} rows), full p50 {} µs ({} rows)",
        tracked.len(),
        if renewing { "" } else { ", renewals paused" },
        incremental.p50_us.unwrap_or(0),
        incremental.returned_max,
        full.p50_us.unwrap_or(0),
        full.returned_max,
    );
    ScanReport { n, expired_target: tracked.len(), renewing, incremental, full }
}

async fn time_scan_kind<F, Fut>(seconds: u64, every: Duration, mut scan: F) -> ScanTimes
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ferry_store::Result<ferry_store::Scan>>,
{
    let mut times = Vec::new();
    let (mut lo, mut hi, mut errors) = (usize::MAX, 0usize, 0u64);
    let until = micros() + seconds * 1_000_000;
    let mut at = micros();
    while at < until {
        let now = micros();
        if now < at {
            tokio::time::sleep(Duration::from_micros(at - now)).await;
        }
        at += every.as_micros() as u64;
        let t0 = micros();
        let r = scan().await;
        let t1 = micros();
        match r {
            Ok(s) => {
                times.push((t1 - t0) as u32);
                lo = lo.min(s.leases.len());
                hi = hi.max(s.leases.len());
            }
            Err(_) => errors += 1,
        }
    }
    times.sort_unstable();
    ScanTimes {
        scans: times.len(),
        p50_us: pct(&times, 50.0),
        p99_us: pct(&times, 99.0),
        max_us: times.last().map(|&v| v as u64),
        returned_min: if lo == usize::MAX { 0 } else { lo },
        returned_max: hi,
        errors,
    }
}

// ---- closed-loop capacity ----
