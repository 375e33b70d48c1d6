//! Simulated host clocks. Every host (and the lease store) reads its own clock, derived from
//! the simulator's true time: a monotonic `CLOCK_BOOTTIME`-like clock with a boot offset and a
//! constant rate error (drift), and a wall clock that may jump.
//!
//! The core only ever sees the monotonic reading ([`ferry_core::Mono`]). The wall clock
//! exists so that a "clock jump" fault has something to move: ferry promises that jumps do not
//! matter because no deadline is computed from wall time (DESIGN §3 rules 1 and 7), and the
//! simulation keeps that promise honest by never handing wall time to a state machine (it only
//! appears in traces, like in real logs). A suspended host keeps counting on this clock,
//! exactly like `CLOCK_BOOTTIME`.

use ferry_core::Mono;

const PPM: i128 = 1_000_000;

#[derive(Debug, Clone)]
pub struct HostClock {
    /// Rate error against true time, in parts per million (positive runs fast).
    pub drift_ppm: i64,
    /// The monotonic reading extrapolated to true time zero (negative after a late boot).
    mono_at_zero_ms: i128,
    /// Offset of the wall clock from true time; a clock jump moves it.
    pub wall_offset_ms: i64,
}

impl HostClock {
    /// A clock that reads `boot_mono_ms` at true time `now_ms` and runs `drift_ppm` off.
    pub fn new(drift_ppm: i64, boot_mono_ms: u64, now_ms: u64, wall_offset_ms: i64) -> Self {
        let mut c = HostClock { drift_ppm, mono_at_zero_ms: 0, wall_offset_ms };
        c.mono_at_zero_ms = i128::from(boot_mono_ms) - c.scaled(now_ms);
        c
    }

    fn scaled(&self, t_ms: u64) -> i128 {
        i128::from(t_ms) * (PPM + i128::from(self.drift_ppm)) / PPM
    }

    /// The monotonic (boot-time) reading at true time `t_ms`.
    pub fn mono(&self, t_ms: u64) -> Mono {
        Mono((self.mono_at_zero_ms + self.scaled(t_ms)).max(0) as u64)
    }

    /// The wall-clock reading at true time `t_ms` (for traces only).
    pub fn wall_ms(&self, t_ms: u64) -> i64 {
        t_ms as i64 + self.wall_offset_ms
    }

    /// The first true instant, not before `not_before_ms`, at which this clock reads `at` or
    /// later: when a timer set for local instant `at` fires.
    pub fn true_at(&self, at: Mono, not_before_ms: u64) -> u64 {
        let want = i128::from(at.0) - self.mono_at_zero_ms;
        let rate = PPM + i128::from(self.drift_ppm);
        let guess = if want <= 0 { 0 } else { ((want * PPM + rate - 1) / rate) as u64 };
        let mut t = guess.max(not_before_ms);
        while self.mono(t) < at {
            t += 1;
        }
        while t > not_before_ms && self.mono(t - 1) >= at {
            t -= 1;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_at_the_first_instant_the_clock_reaches() {
        for drift in [-4_000, 0, 3_999] {
            let c = HostClock::new(drift, 123_456, 1_000, 0);
            assert_eq!(c.mono(1_000), Mono(123_456));
            for at in [123_456u64, 123_457, 130_000, 999_999] {
                let t = c.true_at(Mono(at), 1_000);
                assert!(c.mono(t) >= Mono(at));
                assert!(t == 1_000 || c.mono(t - 1) < Mono(at), "drift {drift} at {at}: {t}");
            }
        }
    }

    #[test]
    fn wall_jumps_do_not_touch_the_monotonic_clock() {
        let mut c = HostClock::new(1_000, 5_000, 0, 0);
        let before = c.mono(10_000);
        c.wall_offset_ms -= 3_600_000;
        assert_eq!(c.mono(10_000), before);
        assert_eq!(c.wall_ms(10_000), 10_000 - 3_600_000);
    }
}
