//! When a server's hosted services count as unhealthy. A server checks each service once per
//! `health_check_interval`; while any service is unhealthy it stops renewing its lease, so
//! the lease runs out and the server fences itself (the seed's health-based fencing).
//!
//! One slow answer is not a dead service: on a busy host a probe can miss its timeout while
//! the service is fine, and stopping renewals for it would fence a healthy server. So a
//! service is unhealthy only after [`FAILURES_UNTIL_UNHEALTHY`] consecutive failed checks
//! (fewer when `health_check_periods_until_fencing` is smaller), counted only once its start
//! window is over: until it first answers, failures within its `start_timeout` do not count.
//! One success resets the count. A service that really died costs at most one more interval
//! before the server stops renewing; the lease deadline still decides the fence.

use crate::time::Mono;

/// Consecutive failed checks after which a service is unhealthy (at most the lease's
/// `health_check_periods_until_fencing`, so the decision stays within the lease's budget).
pub const FAILURES_UNTIL_UNHEALTHY: u32 = 2;

/// How often a service that has not answered yet is checked (at most every interval): a
/// start is RUNNING within this of its service answering, not up to an interval later.
pub const STARTING_POLL_MS: u64 = 20;

#[derive(Debug, Clone)]
struct Service {
    name: String,
    started_at: Mono,
    start_timeout_ms: u64,
    answered_once: bool,
    failures: u32,
}

/// The health of one server's services.
#[derive(Debug, Clone)]
pub struct HealthJudge {
    services: Vec<Service>,
    limit: u32,
}

/// What one round of checks decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// No service is unhealthy: the lease may be renewed.
    pub healthy: bool,
    /// Every service has answered at least once (the server is RUNNING).
    pub all_answered: bool,
    /// `service: error` of every unhealthy service.
    pub problems: Vec<String>,
}

impl HealthJudge {
    /// A judge for a lease with `periods` periods until fencing.
    pub fn new(periods: u32) -> Self {
        HealthJudge { services: Vec::new(), limit: FAILURES_UNTIL_UNHEALTHY.min(periods.max(1)) }
    }

    /// Consecutive failures that make a service unhealthy.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// A service started at `started_at`; `checked` is false for a service without a health
    /// check (it counts as answering from the start).
    pub fn add(&mut self, name: &str, started_at: Mono, start_timeout_ms: u64, checked: bool) {
        self.services.push(Service {
            name: name.to_string(),
            started_at,
            start_timeout_ms,
            answered_once: !checked,
            failures: 0,
        });
    }

    /// How long after a round of checks the next one is due: one interval, or
    /// [`STARTING_POLL_MS`] while a service has not answered yet.
    pub fn next_check_in(&self, interval_ms: u64) -> u64 {
        if self.services.iter().all(|s| s.answered_once) {
            interval_ms
        } else {
            STARTING_POLL_MS.min(interval_ms)
        }
    }

    /// One round of check results (`Err` with what went wrong) at `now`.
    pub fn on_results(&mut self, now: Mono, results: &[(String, Result<(), String>)]) -> Verdict {
        let mut problems = Vec::new();
        for (name, r) in results {
            let Some(svc) = self.services.iter_mut().find(|s| &s.name == name) else {
                continue;
            };
            match r {
                Ok(()) => {
                    svc.answered_once = true;
                    svc.failures = 0;
                }
                Err(e) => {
                    let starting = !svc.answered_once && now.since(svc.started_at) < svc.start_timeout_ms;
                    if starting {
                        continue;
                    }
                    svc.failures += 1;
                    if svc.failures >= self.limit {
                        problems.push(format!("{name}: {e} ({} checks in a row)", svc.failures));
                    }
                }
            }
        }
        Verdict {
            healthy: problems.is_empty() && self.services.iter().all(|s| s.failures < self.limit),
            all_answered: self.services.iter().all(|s| s.answered_once),
            problems,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_not_answering_yet_is_checked_often_then_every_interval() {
        let mut h = HealthJudge::new(3);
        assert_eq!(h.next_check_in(500), 500, "no service: every interval");
        h.add("web", Mono(0), 30_000, true);
        h.add("cron", Mono(0), 30_000, false);
        assert_eq!(h.next_check_in(500), STARTING_POLL_MS);
        assert_eq!(h.next_check_in(10), 10, "never more often than the interval asks");
        h.on_results(Mono(20), &[fail("web")]);
        assert_eq!(h.next_check_in(500), STARTING_POLL_MS);
        h.on_results(Mono(40), &[ok("web")]);
        assert_eq!(h.next_check_in(500), 500);
    }

    fn fail(name: &str) -> (String, Result<(), String>) {
        (name.to_string(), Err("no answer within 400 ms".to_string()))
    }
    fn ok(name: &str) -> (String, Result<(), String>) {
        (name.to_string(), Ok(()))
    }

    #[test]
    fn one_slow_answer_is_not_unhealthy_two_in_a_row_are() {
        let mut h = HealthJudge::new(3);
        h.add("web", Mono(0), 1_000, true);
        assert!(h.on_results(Mono(100), &[ok("web")]).all_answered);
        let v = h.on_results(Mono(600), &[fail("web")]);
        assert!(v.healthy, "one missed answer must not stop the renewals: {v:?}");
        let v = h.on_results(Mono(1_100), &[fail("web")]);
        assert!(!v.healthy);
        assert_eq!(v.problems, vec!["web: no answer within 400 ms (2 checks in a row)".to_string()]);
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut h = HealthJudge::new(3);
        h.add("web", Mono(0), 0, true);
        for t in 1..10u64 {
            let r = if t % 2 == 0 { ok("web") } else { fail("web") };
            assert!(h.on_results(Mono(t * 500), &[r]).healthy, "alternating answers at check {t}");
        }
    }

    #[test]
    fn failures_in_the_start_window_do_not_count() {
        let mut h = HealthJudge::new(3);
        h.add("web", Mono(0), 5_000, true);
        for t in 1..9u64 {
            let v = h.on_results(Mono(t * 500), &[fail("web")]);
            assert!(v.healthy && !v.all_answered, "still starting at {} ms", t * 500);
        }
        assert!(h.on_results(Mono(5_000), &[fail("web")]).healthy, "the first failure after the window");
        assert!(!h.on_results(Mono(5_500), &[fail("web")]).healthy, "the second");
    }

    #[test]
    fn the_limit_stays_within_the_leases_periods() {
        let mut h = HealthJudge::new(1);
        assert_eq!(h.limit(), 1);
        h.add("web", Mono(0), 0, true);
        assert!(!h.on_results(Mono(10), &[fail("web")]).healthy, "one period: the first failure decides");
        assert_eq!(HealthJudge::new(10).limit(), FAILURES_UNTIL_UNHEALTHY);
    }

    #[test]
    fn a_service_without_a_check_counts_as_answering() {
        let mut h = HealthJudge::new(3);
        h.add("batch", Mono(0), 1_000, false);
        h.add("web", Mono(0), 1_000, true);
        assert!(!h.on_results(Mono(10), &[]).all_answered);
        assert!(h.on_results(Mono(20), &[ok("web")]).all_answered);
    }
}
