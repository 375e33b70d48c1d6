//! What the lease-table benchmarks share: the microsecond clock their latencies are read
//! on, and the tally of outcomes both the load driver and the PostgreSQL baselines fill.

use nix::time::{clock_gettime, ClockId};

/// Now on CLOCK_BOOTTIME (the clock of ferry's deadlines) in microseconds: the
/// millisecond clock of `ferry_host::clock` is too coarse for sub-millisecond scans.
pub fn micros() -> u64 {
    match clock_gettime(ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000,
        Err(_) => ferry_host::clock::now().ms() * 1_000,
    }
}

/// Outcomes of renewals (or statements), as they complete.
#[derive(Debug, Default)]
pub struct Tally {
    /// Answer latency of every renewal the store made (µs from the holder's `t0`).
    pub lat_us: Vec<u32>,
    /// Renewed within the holder's request timeout.
    pub ok: u64,
    /// Renewed by the store, but answered after the holder had given up.
    pub late: u64,
    pub lost: u64,
    pub timeouts: u64,
    pub unavailable: u64,
    /// Renewals a Node Manager dropped unsent: their holder had already given up.
    pub expired_in_queue: u64,
    pub batch_sizes: Vec<u32>,
    pub done: u64,
    pub first_error: Option<String>,
}
