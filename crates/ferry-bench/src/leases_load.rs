//! The load of the lease-table benchmark: a fleet of simulated servers (lease holders)
//! spread over simulated Node Managers, each Node Manager with its own `PostgresStore` pool;
//! the open-loop renewal driver (every lease renewed once per interval at an evenly spread
//! phase, scheduled by time, never slowed down by a slow database, so latency includes
//! queueing); the batched mode, in which each Node Manager gathers its servers' renewals
//! and sends them as one `renew_many`; the cluster master's scan; and closed-loop capacity
//! runs of `renew` and `renew_many`.
//!
//! Why Node Managers own the connections: 10,000 `ferry server` processes with a
//! connection each would need 10,000 PostgreSQL backends. A realistic deployment funnels
//! the servers of one machine through a few connections (its Node Manager, or a pooler such
//! as PgBouncer in transaction mode), so holders here share their Node Manager's pool.
//!
//! Latency is measured from each renewal's scheduled instant (the holder's `t0`, DESIGN §3
//! rule 2) to its answer, on CLOCK_BOOTTIME with microsecond resolution.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ferry_core::lease::Lease;
use ferry_core::{Epoch, Incarnation, LeaseName, MachineName, ServerName};
use ferry_store::postgres::{PostgresOptions, PostgresStore};
use ferry_store::{AcquireRequest, LeaseStore, Renewal, StoreError};
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use crate::leases_pg::{lease_server, pct, CpuMeter, CpuUse, Rng};
pub use crate::leases_tally::{micros, Tally};

/// How renewals reach the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each holder calls `renew` through its Node Manager's pool.
    Single,
    /// Each Node Manager sends its holders' pending renewals as one `renew_many`.
    Batched,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Batched => "batched",
        }
    }
}

/// One simulated `ferry server`: the holder of one lease.
pub struct Holder {
    pub name: LeaseName,
    pub owner: ServerName,
    pub machine: MachineName,
    pub incarnation: Incarnation,
    /// Its Node Manager (index into `Fleet::stores`).
    pub nm: usize,
    pub epoch: AtomicU64,
    /// Until when (µs, BOOTTIME) the lease is known to be held: `t0 + ttl` of the last
    /// success; 0 after a refusal.
    pub live_until: AtomicU64,
    /// Stops renewing (to let the lease expire for the master's scan).
    pub excluded: AtomicBool,
}

/// Batched-mode knobs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Batching {
    /// A Node Manager sends what has accumulated this long after the first renewal came.
    pub window_us: u64,
    /// Or as soon as this many are waiting.
    pub max: usize,
}

/// The holders and the Node Managers' stores.
pub struct Fleet {
    pub holders: Vec<Holder>,
    pub stores: Vec<Arc<PostgresStore>>,
    pub pool_size: usize,
    pub interval_us: u64,
    pub ttl: Duration,
    /// A holder gives up on a renewal this long after its `t0` (ferry: 80% of the
    /// interval), and every store call has this timeout (rule 7).
    pub request_timeout_us: u64,
}

impl Fleet {
    /// `n` holders over `node_managers` stores of `pool_size` connections each.
    pub async fn open(
        url: &str,
        n: usize,
        node_managers: usize,
        pool_size: usize,
        interval: Duration,
        periods: u32,
    ) -> anyhow::Result<Fleet> {
        let request_timeout = interval * 8 / 10;
        let mut stores = Vec::new();
        for _ in 0..node_managers {
            let options = PostgresOptions { pool_size, ..PostgresOptions::new(request_timeout) };
            let store =
                PostgresStore::open_with(url, options).await.map_err(|e| anyhow::anyhow!(ferry_store::chain(&e)))?;
            stores.push(Arc::new(store));
        }
        let mut holders = Vec::with_capacity(n);
        for i in 1..=n {
            let nm = i % node_managers;
            let owner = ServerName::new(lease_server(i)).context("server name")?;
            holders.push(Holder {
                name: LeaseName::Server(owner.clone()),
                owner,
                machine: MachineName::new(format!("nm-{nm}")).context("machine name")?,
                incarnation: Incarnation(format!("inc-{i}")),
                nm,
                epoch: AtomicU64::new(0),
                live_until: AtomicU64::new(0),
                excluded: AtomicBool::new(false),
            });
        }
        Ok(Fleet {
            holders,
            stores,
            pool_size,
            interval_us: interval.as_micros() as u64,
            ttl: interval * periods,
            request_timeout_us: request_timeout.as_micros() as u64,
        })
    }

    fn renewal(&self, i: usize) -> Renewal {
        let h = &self.holders[i];
        Renewal {
            name: h.name.clone(),
            incarnation: h.incarnation.clone(),
            epoch: Epoch(h.epoch.load(Ordering::Relaxed)),
            ttl: self.ttl,
        }
    }
}

/// Leases renewed and acquired by [`arm`], and how long it took.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Armed {
    pub renewed: usize,
    pub acquired: usize,
    pub seconds: f64,
}

/// Makes every lease not excluded held for `ttl` from now, so that a phase starts with
/// every lease live however long the previous step took: leases held are renewed with
/// `renew_many` (batches of [`ARM_BATCH`], cheap), the others (never acquired, or lost in
/// an earlier phase) acquired one by one, each Node Manager over its own connections.
pub async fn arm(fleet: &Arc<Fleet>, ttl: Duration) -> anyhow::Result<Armed> {
    let start = micros();
    let held: Vec<usize> = (0..fleet.holders.len())
        .filter(|&i| {
            let h = &fleet.holders[i];
            !h.excluded.load(Ordering::Relaxed) && h.epoch.load(Ordering::Relaxed) != 0
        })
        .collect();
    let renewed = held.len();
    // Renew the held ones; whatever is refused is acquired below.
    let refused = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for nm in 0..fleet.stores.len() {
        let chunks: Vec<Vec<usize>> = held
            .iter()
            .copied()
            .filter(|&i| fleet.holders[i].nm == nm)
            .collect::<Vec<_>>()
            .chunks(ARM_BATCH)
            .map(<[usize]>::to_vec)
            .collect();
        let chunks = Arc::new(chunks);
        let next = Arc::new(AtomicU64::new(0));
        for _ in 0..fleet.pool_size {
            let (fleet, chunks, next, refused) =
                (Arc::clone(fleet), Arc::clone(&chunks), Arc::clone(&next), Arc::clone(&refused));
            tasks.push(tokio::spawn(async move {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(chunk) = chunks.get(k) else { break };
                    let renewals: Vec<Renewal> = chunk.iter().map(|&i| Renewal { ttl, ..fleet.renewal(i) }).collect();
                    let t0 = micros();
                    let outcomes = fleet.stores[nm].renew_many(&renewals).await;
                    let mut refused = refused.lock().unwrap_or_else(|e| e.into_inner());
                    match outcomes {
                        Ok(outcomes) => {
                            for (&i, o) in chunk.iter().zip(outcomes) {
                                match o {
                                    Ok(_) => fleet.holders[i]
                                        .live_until
                                        .store(t0 + ttl.as_micros() as u64, Ordering::Relaxed),
                                    Err(_) => refused.push(i),
                                }
                            }
                        }
                        Err(_) => refused.extend(chunk.iter().copied()),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await?;
    }
    let refused = std::mem::take(&mut *refused.lock().unwrap_or_else(|e| e.into_inner()));
    let mut want: Vec<usize> = (0..fleet.holders.len())
        .filter(|&i| {
            let h = &fleet.holders[i];
            !h.excluded.load(Ordering::Relaxed) && h.epoch.load(Ordering::Relaxed) == 0
        })
        .collect();
    let renewed = renewed - refused.len();
    want.extend(refused);
    let acquired = want.len();
    acquire(fleet, want, ttl).await?;
    Ok(Armed { renewed, acquired, seconds: (micros() - start) as f64 / 1e6 })
}

/// The batch size of [`arm`]'s renewals.
const ARM_BATCH: usize = 500;

/// Acquires the leases of `want` with `ttl`, each Node Manager over its own connections.
async fn acquire(fleet: &Arc<Fleet>, want: Vec<usize>, ttl: Duration) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for nm in 0..fleet.stores.len() {
        let mine: Arc<Vec<usize>> = Arc::new(want.iter().copied().filter(|&i| fleet.holders[i].nm == nm).collect());
        let next = Arc::new(AtomicU64::new(0));
        for _ in 0..fleet.pool_size {
            let (fleet, mine, next) = (Arc::clone(fleet), Arc::clone(&mine), Arc::clone(&next));
            tasks.push(tokio::spawn(async move {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&i) = mine.get(k) else { break };
                    let h = &fleet.holders[i];
                    let req = AcquireRequest {
                        name: h.name.clone(),
                        owner: h.owner.clone(),
                        machine: h.machine.clone(),
                        incarnation: h.incarnation.clone(),
                        ttl,
                    };
                    let mut tries = 0;
                    loop {
                        let t0 = micros();
                        match fleet.stores[h.nm].acquire(&req).await {
                            Ok(lease) => {
                                h.epoch.store(lease.epoch.0, Ordering::Relaxed);
                                h.live_until.store(t0 + ttl.as_micros() as u64, Ordering::Relaxed);
                                break;
                            }
                            Err(e) if e.is_transient() && tries < 5 => tries += 1,
                            Err(e) => return Err(anyhow::anyhow!("acquiring {}: {}", h.name, ferry_store::chain(&e))),
                        }
                    }
                }
                Ok::<(), anyhow::Error>(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

type Shared = Arc<Mutex<Tally>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records one renewal's outcome (`due`: its `t0`).
fn record(fleet: &Fleet, t: &mut Tally, i: usize, due: u64, done: u64, outcome: Result<&Lease, &StoreError>) {
    t.done += 1;
    let h = &fleet.holders[i];
    match outcome {
        Ok(_) => {
            let lat = done.saturating_sub(due);
            t.lat_us.push(lat.min(u32::MAX as u64) as u32);
            if lat <= fleet.request_timeout_us {
                t.ok += 1;
            } else {
                t.late += 1;
            }
            h.live_until.store(due + fleet.ttl.as_micros() as u64, Ordering::Relaxed);
        }
        Err(e) => {
            match e {
                StoreError::Lost { .. } => {
                    t.lost += 1;
                    h.live_until.store(0, Ordering::Relaxed);
                }
                StoreError::Timeout { .. } => t.timeouts += 1,
                _ => t.unavailable += 1,
            }
            if t.first_error.is_none() {
                t.first_error = Some(ferry_store::chain(e));
            }
        }
    }
}

/// One open-loop renewal phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub mode: Mode,
    pub n: usize,
    /// Leases renewing (not excluded).
    pub renewing: usize,
    pub target_per_s: f64,
    pub seconds: f64,
    pub attempts: u64,
    pub ok: u64,
    pub late: u64,
    pub lost: u64,
    pub timeouts: u64,
    pub unavailable: u64,
    pub expired_in_queue: u64,
    /// Renewals that did not succeed within the holder's request timeout (80% of the
    /// interval), so within their 1 s slot: failed, late or dropped.
    pub missed: u64,
    /// Renewed in time, per second.
    pub achieved_per_s: f64,
    /// Latency percentiles over every attempt, failures counting as infinitely slow
    /// (`None`: the percentile falls on a failure).
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<u64>,
    /// Batch sizes (batched mode): p50, p99, max, mean.
    pub batch_p50: Option<u64>,
    pub batch_p99: Option<u64>,
    pub batch_max: Option<u64>,
    pub batch_mean: Option<f64>,
    pub batches: usize,
    pub first_error: Option<String>,
    pub cpu: CpuUse,
    /// Leases acquired again before the phase (lost in an earlier one).
    pub rearmed: usize,
    /// How long making every lease live before the phase took (s).
    pub arm_seconds: f64,
}

/// Drives renewals for `seconds` (or until `stop`), then waits for the last answers.
pub async fn drive(
    fleet: Arc<Fleet>,
    mode: Mode,
    batching: Batching,
    seconds: Option<u64>,
    stop: Arc<AtomicBool>,
    postmaster: Option<i32>,
) -> PhaseReport {
    let n = fleet.holders.len() as u64;
    let renewing = fleet.holders.iter().filter(|h| !h.excluded.load(Ordering::Relaxed)).count();
    let tally: Shared = Arc::new(Mutex::new(Tally::default()));
    let cpu = CpuMeter::start(postmaster);
    let start = micros() + 5_000;
    let end = seconds.map_or(u64::MAX, |s| start + s * 1_000_000);

    // Batched mode: one Node Manager task per store, fed by its holders.
    let mut senders = Vec::new();
    let mut nms = Vec::new();
    if mode == Mode::Batched {
        for store in &fleet.stores {
            let (tx, rx) = mpsc::unbounded_channel::<(usize, u64)>();
            senders.push(tx);
            nms.push(tokio::spawn(node_manager(
                Arc::clone(&fleet),
                Arc::clone(store),
                rx,
                Arc::clone(&tally),
                batching,
            )));
        }
    }

    let inflight = Arc::new(AtomicU64::new(0));
    let mut attempts = 0u64;
    let mut k = 0u64;
    loop {
        let (cycle, i) = (k / n, k % n);
        let due = start + cycle * fleet.interval_us + i * fleet.interval_us / n;
        if due >= end || stop.load(Ordering::Relaxed) {
            break;
        }
        let now = micros();
        if due > now {
            tokio::time::sleep(Duration::from_micros(due - now)).await;
            continue;
        }
        k += 1;
        let i = i as usize;
        let h = &fleet.holders[i];
        if h.excluded.load(Ordering::Relaxed) {
            continue;
        }
        attempts += 1;
        match mode {
            Mode::Single => {
                let (fleet, tally, inflight) = (Arc::clone(&fleet), Arc::clone(&tally), Arc::clone(&inflight));
                inflight.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let h = &fleet.holders[i];
                    let epoch = Epoch(h.epoch.load(Ordering::Relaxed));
                    let r = fleet.stores[h.nm].renew(&h.name, &h.incarnation, epoch, fleet.ttl).await;
                    let done = micros();
                    record(&fleet, &mut lock(&tally), i, due, done, r.as_ref());
                    inflight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Mode::Batched => {
                let _ = senders[h.nm].send((i, due));
            }
        }
        if attempts.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    let seconds = (micros().saturating_sub(start)) as f64 / 1e6;
    drop(senders);
    for nm in nms {
        let _ = nm.await;
    }
    // Every single renewal ends within the call timeout.
    let patience = micros() + fleet.request_timeout_us + 5_000_000;
    while inflight.load(Ordering::Relaxed) > 0 && micros() < patience {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu = cpu.stop();
    let mut t = lock(&tally);
    t.lat_us.sort_unstable();
    t.batch_sizes.sort_unstable();
    // Percentiles over all attempts: the failed ones rank above every answer.
    let ranked = |p: f64| -> Option<u64> {
        let k = ((p / 100.0 * attempts as f64).ceil() as usize).max(1);
        t.lat_us.get(k - 1).map(|&v| v as u64)
    };
    let missed = attempts.saturating_sub(t.ok);
    PhaseReport {
        mode,
        n: n as usize,
        renewing,
        target_per_s: renewing as f64 * 1e6 / fleet.interval_us as f64,
        seconds,
        attempts,
        ok: t.ok,
        late: t.late,
        lost: t.lost,
        timeouts: t.timeouts,
        unavailable: t.unavailable,
        expired_in_queue: t.expired_in_queue,
        missed,
        achieved_per_s: t.ok as f64 / seconds.max(1e-6),
        p50_us: ranked(50.0),
        p99_us: ranked(99.0),
        max_us: if t.lat_us.len() as u64 == attempts { t.lat_us.last().map(|&v| v as u64) } else { None },
        batch_p50: pct(&t.batch_sizes, 50.0),
        batch_p99: pct(&t.batch_sizes, 99.0),
        batch_max: t.batch_sizes.last().map(|&v| v as u64),
        batch_mean: crate::leases_pg::mean(&t.batch_sizes),
        batches: t.batch_sizes.len(),
        first_error: t.first_error.clone(),
        cpu,
        rearmed: 0,
        arm_seconds: 0.0,
    }
}

/// A simulated Node Manager in batched mode: gathers its holders' renewals for a window
/// (or until a batch is full), sends them as one `renew_many` on a free pooled connection,
/// and keeps gathering meanwhile, so batches grow with the load.
async fn node_manager(
    fleet: Arc<Fleet>,
    store: Arc<PostgresStore>,
    mut rx: mpsc::UnboundedReceiver<(usize, u64)>,
    tally: Shared,
    batching: Batching,
) {
    let slots = Arc::new(Semaphore::new(fleet.pool_size));
    let mut closed = false;
    while !closed {
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        let window = tokio::time::sleep(Duration::from_micros(batching.window_us));
        tokio::pin!(window);
        while batch.len() < batching.max {
            tokio::select! {
                biased;
                next = rx.recv() => match next {
                    Some(x) => batch.push(x),
                    None => { closed = true; break; }
                },
                _ = &mut window => break,
            }
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        // While we waited for a connection, more may have come.
        while batch.len() < batching.max {
            match rx.try_recv() {
                Ok(x) => batch.push(x),
                Err(_) => break,
            }
        }
        // A holder whose request timeout passed has given up on its renewal.
        let now = micros();
        let (stale, batch): (Vec<_>, Vec<_>) =
            batch.into_iter().partition(|&(_, due)| now.saturating_sub(due) > fleet.request_timeout_us);
        if !stale.is_empty() {
            let mut t = lock(&tally);
            t.expired_in_queue += stale.len() as u64;
            t.done += stale.len() as u64;
        }
        if batch.is_empty() {
            continue;
        }
        let (fleet, store, tally) = (Arc::clone(&fleet), Arc::clone(&store), Arc::clone(&tally));
        tokio::spawn(async move {
            let renewals: Vec<Renewal> = batch.iter().map(|&(i, _)| fleet.renewal(i)).collect();
            let r = store.renew_many(&renewals).await;
            let done = micros();
            let mut t = lock(&tally);
            t.batch_sizes.push(batch.len() as u32);
            match r {
                Ok(outcomes) => {
                    for (&(i, due), o) in batch.iter().zip(&outcomes) {
                        record(&fleet, &mut t, i, due, done, o.as_ref());
                    }
                }
                Err(e) => {
                    for &(i, due) in &batch {
                        record(&fleet, &mut t, i, due, done, Err(&e));
                    }
                }
            }
            drop(slot);
        });
    }
    // Wait for the batches in flight.
    let _ = slots.acquire_many(fleet.pool_size as u32).await;
}

// ---- the cluster master's scan ----

/// `renew` (batch 1) or `renew_many` (batch > 1) of random leases of the baseline table, as
/// fast as `connections` concurrent callers can go, through Node-Manager-sized pools.
pub async fn capacity(
    url: &str,
    n: usize,
    connections: usize,
    node_managers: usize,
    batch: usize,
    seconds: u64,
    postmaster: Option<i32>,
) -> anyhow::Result<crate::leases_pg::BaselineReport> {
    let per_nm = connections.div_ceil(node_managers).max(1);
    let mut stores = Vec::new();
    for _ in 0..node_managers {
        let options = PostgresOptions { pool_size: per_nm, ..PostgresOptions::new(Duration::from_secs(5)) };
        stores.push(Arc::new(
            PostgresStore::open_with(url, options).await.map_err(|e| anyhow::anyhow!(ferry_store::chain(&e)))?,
        ));
    }
    let tally: Shared = Arc::new(Mutex::new(Tally::default()));
    let cpu = CpuMeter::start(postmaster);
    let start = micros();
    let end = start + seconds * 1_000_000;
    let mut tasks = Vec::new();
    for j in 0..connections {
        let store = Arc::clone(&stores[j % node_managers]);
        let tally = Arc::clone(&tally);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(j as u64 + 7);
            let ttl = Duration::from_secs(3600);
            let (mut lat, mut ok, mut errors, mut first) = (Vec::new(), 0u64, 0u64, None);
            // Each caller renews its own share of the rows, as each Node Manager renews
            // its own servers' leases: batches do not wait for each other's row locks.
            let share = (n / connections).max(1);
            while micros() < end {
                let renewals: Vec<Renewal> = (0..batch)
                    .map(|_| {
                        let i = (j + 1 + connections * rng.below(share)).min(n);
                        let server = ServerName::new(lease_server(i)).expect("a valid name");
                        Renewal {
                            name: LeaseName::Server(server),
                            incarnation: Incarnation(format!("inc-{i}")),
                            epoch: Epoch(1),
                            ttl,
                        }
                    })
                    .collect();
                let t0 = micros();
                let outcome = if batch == 1 {
                    let r = &renewals[0];
                    store.renew(&r.name, &r.incarnation, r.epoch, r.ttl).await.map(|l| vec![Ok(l)])
                } else {
                    store.renew_many(&renewals).await
                };
                lat.push((micros() - t0) as u32);
                match outcome {
                    Ok(v) => {
                        for o in v {
                            match o {
                                Ok(_) => ok += 1,
                                Err(e) => {
                                    errors += 1;
                                    first.get_or_insert_with(|| ferry_store::chain(&e));
                                }
                            }
                        }
                    }
                    Err(e) => {
                        errors += batch as u64;
                        first.get_or_insert_with(|| ferry_store::chain(&e));
                    }
                }
            }
            let mut t = lock(&tally);
            t.ok += ok;
            t.unavailable += errors;
            t.lat_us.extend(lat);
            if t.first_error.is_none() {
                t.first_error = first;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let took = (micros() - start) as f64 / 1e6;
    let cpu = cpu.stop();
    let mut t = lock(&tally);
    t.lat_us.sort_unstable();
    if let Some(e) = &t.first_error {
        eprintln!("  capacity run error: {e}");
    }
    Ok(crate::leases_pg::BaselineReport {
        what: if batch == 1 {
            "ferry renew (closed loop)".into()
        } else {
            format!("ferry renew_many × {batch} (closed loop)")
        },
        n,
        connections,
        seconds: took,
        per_s: t.ok as f64 / took,
        latency_avg_us: crate::leases_pg::mean(&t.lat_us),
        latency_p50_us: pct(&t.lat_us, 50.0),
        latency_p99_us: pct(&t.lat_us, 99.0),
        errors: t.unavailable,
        cpu,
    })
}
