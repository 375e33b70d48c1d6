//! The one clock of the shells (STYLE habit 5). Local deadlines use `CLOCK_BOOTTIME`, which
//! keeps counting while the machine is suspended (rule 7; Rust's `Instant` does not), so a
//! resumed machine sees at once that its deadlines passed.

use std::time::Duration;

use ferry_core::Mono;
use nix::time::{clock_gettime, ClockId};

/// Now on `CLOCK_BOOTTIME`, in milliseconds.
pub fn now() -> Mono {
    match clock_gettime(ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => Mono(ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000),
        // BOOTTIME exists on every Linux since 2.6.39; MONOTONIC is the closest fallback.
        Err(_) => match clock_gettime(ClockId::CLOCK_MONOTONIC) {
            Ok(ts) => Mono(ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000),
            Err(_) => Mono(0),
        },
    }
}

/// Wall-clock time in milliseconds since the Unix epoch: for event timestamps only, never
/// for a lease decision.
#[allow(clippy::disallowed_methods)] // the one sanctioned read of the wall clock
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// How often a deadline sleeper re-reads BOOTTIME: tokio's timers run on the monotonic clock,
/// which stops during suspend, so a long sleep is cut into short ones.
const RECHECK: Duration = Duration::from_millis(25);

/// Sleeps until `deadline` on BOOTTIME.
pub async fn sleep_until(deadline: Mono) {
    loop {
        let n = now();
        if n >= deadline {
            return;
        }
        let left = Duration::from_millis(deadline.since(n));
        tokio::time::sleep(left.min(RECHECK)).await;
    }
}

/// Formats a wall-clock millisecond timestamp as RFC 3339 (UTC, milliseconds).
pub fn format_wall(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_rfc3339() {
        assert_eq!(super::format_wall(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::format_wall(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }

    #[test]
    fn boottime_moves_forward() {
        let a = super::now();
        let b = super::now();
        assert!(b >= a);
        assert!(a.ms() > 0);
    }
}
