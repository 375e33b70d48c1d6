//! The cluster leader's side of consensus leasing (DESIGN §3 rule 11): when a leader may
//! grant and renew leases, and from when a new leader counts every held lease's clock.
//!
//! The consensus library elects the leader and replicates the lease table's rows; these
//! rules decide what the leader does with time, which the library knows nothing about:
//!
//! - **A leader is valid only while a quorum keeps confirming it.** Each confirmation is a
//!   round of heartbeats *sent after* the instant `sent_at` the leader read before starting
//!   it, answered by a quorum. Until `sent_at + validity × (1 − drift)` no other leader can
//!   have been elected *and* have finished its own wait (below), so grants made before then
//!   cannot overlap a successor's. A leader whose confirmations stop grants nothing more.
//! - **A new leader waits out its predecessor.** A voter that answered the old leader's last
//!   confirmation did so before it voted for the new one, so that confirmation was sent before
//!   the new leader learned it won. The old leader's validity therefore ends less than
//!   `validity` after the new leader's election by real time; the new leader grants nothing
//!   until `validity × (1 + drift) + margin` after it learned it won, by its own clock.
//! - **It then restarts every held lease's clock** at that instant: each expires a full TTL
//!   later, never earlier (extend, never shorten). A holder renewed by the old leader at any
//!   instant up to the end of its validity has its own deadline a TTL after it *sent* that
//!   renewal (rule 2), which is earlier.
//!
//! Every transition takes `now` (milliseconds on the leader's monotonic clock, see
//! [`crate::time`]); nothing here reads a clock.

use std::time::Duration;

use crate::time::{Bugs, Mono};

/// The voters' timing ferry runs consensus leasing with (`ferry-consensus`'s
/// `VoterTiming::default`), and that `ferry validate` checks leases against.
pub const HEARTBEAT: Duration = Duration::from_millis(50);
pub const ELECTION_MIN: Duration = Duration::from_millis(150);
pub const ELECTION_MAX: Duration = Duration::from_millis(300);
pub const DEFAULT_TIMING: LeadershipTiming = LeadershipTiming {
    validity: Duration::from_millis(250),
    drift_ppm: 10_000,
    margin: Duration::from_millis(20),
    bugs: Bugs::NONE,
};

/// The longest a cluster may go without a serving leader after its leader dies: the
/// followers keep openraft's leader lease (one `election_max`) before they campaign, a
/// campaign takes up to another `election_max`, and the winner then waits out its
/// predecessor. A lease must outlast this plus one renewal interval, or a leader crash
/// fences servers on healthy machines.
pub fn takeover_bound_ms(election_max: Duration, timing: &LeadershipTiming) -> u64 {
    2 * election_max.as_millis() as u64 + timing.wait_ms()
}

/// The voters' timing for a domain, all of it a multiple of the heartbeat `h`: elections
/// after 3h–6h of silence, a confirmation valid 5h, a new leader's margin 0.4h, so a dead
/// leader is replaced and its successor serves within [`takeover_bound_ms`] ≈ 17.5h. The
/// default heartbeat (50 ms) suits leases whose budget after a missed renewal is a second or
/// more; a shorter budget gets a proportionally shorter heartbeat, so the takeover fits in
/// 85% of it, down to a 5 ms heartbeat (a budget of about 103 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoterPlan {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    pub leadership: LeadershipTiming,
}

/// The shortest heartbeat [`plan_for`] chooses.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(5);

impl VoterPlan {
    /// The plan for heartbeat `h`.
    pub fn with_heartbeat(h: Duration) -> VoterPlan {
        if h >= HEARTBEAT {
            return VoterPlan {
                heartbeat: HEARTBEAT,
                election_min: ELECTION_MIN,
                election_max: ELECTION_MAX,
                leadership: DEFAULT_TIMING,
            };
        }
        VoterPlan {
            heartbeat: h,
            election_min: h * 3,
            election_max: h * 6,
            leadership: LeadershipTiming {
                validity: h * 5,
                drift_ppm: DEFAULT_TIMING.drift_ppm,
                margin: (h * 2 / 5).max(Duration::from_millis(2)),
                bugs: Bugs::NONE,
            },
        }
    }

    /// The longest the cluster goes without a serving leader after its leader dies.
    pub fn takeover_ms(&self) -> u64 {
        takeover_bound_ms(self.election_max, &self.leadership)
    }
}

/// The plan for leases that leave `budget_ms` after a missed renewal (TTL − interval of
/// the domain's shortest lease), or `None` when no heartbeat ferry runs fits.
pub fn plan_for(budget_ms: u64) -> Option<VoterPlan> {
    let default = VoterPlan::with_heartbeat(HEARTBEAT);
    if default.takeover_ms() * 100 <= budget_ms * 85 {
        return Some(default);
    }
    // takeover ≈ 17.45 h ≤ 0.85 budget
    let h = Duration::from_millis(budget_ms * 85 * 100 / 174_500);
    let plan = VoterPlan::with_heartbeat(h);
    (h >= MIN_HEARTBEAT && plan.takeover_ms() < budget_ms).then_some(plan)
}

/// The timing of leadership, the same on every voter of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeadershipTiming {
    /// How long one quorum confirmation keeps a leader valid (before the drift allowance).
    pub validity: Duration,
    /// The most any voter's clock may run fast or slow against real time, in parts per
    /// million.
    pub drift_ppm: u32,
    /// Added to a new leader's wait, for scheduling between reading the clock and acting.
    pub margin: Duration,
    /// Planted bugs (tests only; see [`Bugs`]).
    pub bugs: Bugs,
}

impl LeadershipTiming {
    /// How long after its `sent_at` one confirmation keeps the leader valid, by its clock.
    pub fn valid_for_ms(&self) -> u64 {
        let ms = self.validity.as_millis() as u64;
        ms.saturating_sub(ms.saturating_mul(u64::from(self.drift_ppm)).div_ceil(1_000_000))
    }

    /// How long a new leader waits, after it learned it won, before it grants anything.
    pub fn wait_ms(&self) -> u64 {
        if self.bugs.leader_no_restart() {
            return 0;
        }
        let ms = self.validity.as_millis() as u64;
        ms.saturating_add(ms.saturating_mul(u64::from(self.drift_ppm)).div_ceil(1_000_000))
            .saturating_add(self.margin.as_millis() as u64)
    }
}

/// Whether a leader may grant (acquire, hand over) or renew a lease at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    Yes,
    /// Elected, still waiting out the previous leader's validity: ready at this instant.
    WaitingOutPredecessor(Mono),
    /// No quorum confirmed this leader recently enough (or yet): it may have been deposed.
    Unconfirmed,
}

/// One term of leadership as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    term: u64,
    elected_at: Mono,
    serves_from: Mono,
    valid_until: Option<Mono>,
    bugs: Bugs,
}

impl Leadership {
    /// This voter learned at `now` that it leads `term`.
    pub fn elected(term: u64, now: Mono, timing: &LeadershipTiming) -> Leadership {
        Leadership { term, elected_at: now, serves_from: now + timing.wait_ms(), valid_until: None, bugs: timing.bugs }
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// The instant from which this leader grants, and from which every lease held when it
    /// was elected counts its time to live again.
    pub fn serves_from(&self) -> Mono {
        self.serves_from
    }

    /// Whether replicated expiries are kept instead of restarted: only under the planted
    /// bug [`Bugs::leader_no_restart`].
    pub fn keeps_replicated_expiries(&self) -> bool {
        self.bugs.leader_no_restart()
    }

    /// A quorum answered a round of heartbeats sent after `sent_at`. A round started before
    /// this term began proves nothing about this term and is ignored.
    pub fn confirmed(&mut self, sent_at: Mono, timing: &LeadershipTiming) {
        if sent_at < self.elected_at {
            return;
        }
        let until = sent_at + timing.valid_for_ms();
        self.valid_until = Some(self.valid_until.map_or(until, |v| v.max(until)));
    }

    /// Whether a grant or renewal may be made at `now`.
    pub fn serving(&self, now: Mono) -> Serving {
        if now < self.serves_from {
            return Serving::WaitingOutPredecessor(self.serves_from);
        }
        match self.valid_until {
            Some(until) if now < until => Serving::Yes,
            Some(_) if self.bugs.leader_unconfirmed_renews() => Serving::Yes,
            _ => Serving::Unconfirmed,
        }
    }

    /// When a lease held at the election and last given `ttl` expires, unless renewed: a
    /// full TTL after [`Leadership::serves_from`], never earlier than `known` (an expiry
    /// this leader already set).
    pub fn restarted_expiry(&self, ttl: Duration, known: Option<Mono>) -> Mono {
        if self.bugs.leader_no_restart() {
            if let Some(k) = known {
                return k;
            }
        }
        let restarted = self.serves_from + ttl;
        known.map_or(restarted, |k| k.max(restarted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: LeadershipTiming = LeadershipTiming {
        validity: Duration::from_millis(250),
        drift_ppm: 10_000,
        margin: Duration::from_millis(20),
        bugs: Bugs::NONE,
    };

    #[test]
    fn the_plan_fits_the_takeover_in_the_shortest_lease() {
        // Leases of a second or more: the defaults.
        assert_eq!(plan_for(2_700).map(|p| p.heartbeat), Some(HEARTBEAT));
        assert_eq!(plan_for(1_100).map(|p| p.takeover_ms()), Some(873));
        // 100 ms × 3: 200 ms after a missed renewal.
        let p = plan_for(200).expect("a plan for 100 ms x 3");
        assert_eq!(p.heartbeat, Duration::from_millis(9));
        assert!(p.takeover_ms() * 100 <= 200 * 85, "{p:?}: {}", p.takeover_ms());
        assert!(p.leadership.wait_ms() > p.leadership.valid_for_ms());
        assert!(p.election_min > p.heartbeat * 2);
        // Too short for any heartbeat ferry runs.
        assert_eq!(plan_for(90), None);
        for budget in [103, 150, 400, 800, 1_000, 30_000] {
            let p = plan_for(budget).unwrap_or_else(|| panic!("no plan for {budget}"));
            assert!(p.takeover_ms() < budget, "{budget}: {p:?}");
        }
    }

    #[test]
    fn the_wait_covers_the_predecessor_validity_with_drift_both_ways() {
        assert_eq!(TIMING.valid_for_ms(), 247); // 250 − 1 %, rounded down
        assert_eq!(TIMING.wait_ms(), 273); // 250 + 1 % + 20, rounded up
        assert!(TIMING.wait_ms() > TIMING.valid_for_ms());
    }

    #[test]
    fn a_new_leader_serves_nothing_until_it_waited_and_was_confirmed() {
        let mut l = Leadership::elected(7, Mono(1_000), &TIMING);
        assert_eq!(l.serving(Mono(1_000)), Serving::WaitingOutPredecessor(Mono(1_273)));
        // Confirmed at once, still waiting.
        l.confirmed(Mono(1_010), &TIMING);
        assert_eq!(l.serving(Mono(1_200)), Serving::WaitingOutPredecessor(Mono(1_273)));
        // The wait is over, but the only confirmation has run out too.
        assert_eq!(l.serving(Mono(1_273)), Serving::Unconfirmed);
        l.confirmed(Mono(1_250), &TIMING);
        assert_eq!(l.serving(Mono(1_273)), Serving::Yes);
        assert_eq!(l.serving(Mono(1_496)), Serving::Yes);
        assert_eq!(l.serving(Mono(1_497)), Serving::Unconfirmed, "a leader whose confirmations stopped");
    }

    #[test]
    fn a_round_sent_before_the_election_proves_nothing_and_an_older_one_never_shortens() {
        let mut l = Leadership::elected(2, Mono(500), &TIMING);
        l.confirmed(Mono(499), &TIMING);
        assert_eq!(l.serving(Mono(800)), Serving::Unconfirmed);
        l.confirmed(Mono(700), &TIMING);
        l.confirmed(Mono(600), &TIMING); // a slow, older round answering late
        assert_eq!(l.serving(Mono(946)), Serving::Yes);
    }

    #[test]
    fn the_default_takeover_fits_a_lease_of_a_second_and_a_half() {
        assert_eq!(takeover_bound_ms(ELECTION_MAX, &DEFAULT_TIMING), 873);
    }

    #[test]
    fn held_leases_restart_a_full_ttl_after_the_wait_and_never_shorten() {
        let l = Leadership::elected(3, Mono(10_000), &TIMING);
        let ttl = Duration::from_millis(1_500);
        assert_eq!(l.restarted_expiry(ttl, None), Mono(11_773));
        assert_eq!(l.restarted_expiry(ttl, Some(Mono(12_000))), Mono(12_000));
        assert_eq!(l.restarted_expiry(ttl, Some(Mono(11_000))), Mono(11_773));
    }
}
