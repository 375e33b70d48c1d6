//! The lease keeper: the state machine a holder (a migratable server, or a server holding the
//! cluster-master role) runs for one lease. Sans-IO: the shell feeds it the current instant
//! and the answers of the lease store, and performs the actions it returns.
//!
//! It enforces DESIGN §3 rule 2: the deadline of a renewal counts from the instant *before*
//! the request was sent, shortened by the allowed clock drift and a margin, so the holder
//! always gives up before the store can have expired the lease. A renewal answered after the
//! deadline does not revive it.

use std::time::Duration;

use crate::ids::Epoch;
use crate::time::{Bugs, Mono};

/// The timings of one lease, derived from the server's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeeperTiming {
    /// How often to renew (`health_check_interval`).
    pub interval_ms: u64,
    /// The lease's time to live in the store (`interval × periods_until_fencing`).
    pub ttl_ms: u64,
    /// Clock-rate difference allowed between this host and the store, in parts per million.
    pub drift_ppm: u64,
    /// Safety margin subtracted from each deadline (covers scheduling and kill latency).
    pub margin_ms: u64,
    /// How long to keep trying to acquire before giving up; `None` retries for ever.
    pub acquire_patience_ms: Option<u64>,
    pub bugs: Bugs,
}

impl KeeperTiming {
    /// The timings for a lease renewed every `interval` with `periods` periods until fencing.
    pub fn new(interval: Duration, periods: u32) -> Self {
        let interval_ms = (interval.as_millis() as u64).max(1);
        let ttl_ms = interval_ms * u64::from(periods.max(1));
        KeeperTiming {
            interval_ms,
            ttl_ms,
            drift_ppm: 10_000,
            // A tenth of the TTL, at most a second: 30 ms at ttl 300 ms, 1 s at the defaults.
            margin_ms: (ttl_ms / 10).min(1_000),
            acquire_patience_ms: None,
            bugs: Bugs::NONE,
        }
    }

    /// Every store call must give up before this (rule 7): shorter than the interval.
    pub fn request_timeout_ms(&self) -> u64 {
        (self.interval_ms * 8 / 10).max(1)
    }

    /// The local deadline of a renewal whose request left at `sent_at`.
    pub fn deadline(&self, sent_at: Mono) -> Mono {
        let usable = self.ttl_ms - self.ttl_ms * self.drift_ppm / 1_000_000;
        sent_at + usable.saturating_sub(self.margin_ms)
    }
}

/// What the keeper asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeeperAction {
    /// Try to take the lease (the shell adds owner, machine, incarnation, handover).
    Acquire,
    /// Renew the lease held with `epoch`.
    Renew { epoch: Epoch },
    /// The lease is held for the first time: start what it guards.
    Acquired { epoch: Epoch },
    /// The local deadline moved (tell the Node Manager, rule 3).
    Deadline { at: Mono },
    /// Stop what the lease guards at once and give the lease up for lost.
    Fence { reason: FenceReason },
    /// Give the lease back (graceful stop).
    Release { epoch: Epoch },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceReason {
    /// No successful renewal before the deadline.
    DeadlinePassed { since_renewal_ms: u64, last_error: Option<String> },
    /// The store says another owner or incarnation holds the lease.
    Lost { detail: String },
    /// The lease could not be acquired within the patience.
    NotAcquired { detail: String },
}

impl std::fmt::Display for FenceReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FenceReason::DeadlinePassed { since_renewal_ms, last_error } => {
                write!(
                    f,
                    "failed to reach the lease table for lease renewal in the past {:.1} seconds; shutting down before the lease can expire",
                    *since_renewal_ms as f64 / 1000.0
                )?;
                if let Some(e) = last_error {
                    write!(f, " (last error: {e})")?;
                }
                Ok(())
            }
            FenceReason::Lost { detail } => write!(f, "lost the lease: {detail}"),
            FenceReason::NotAcquired { detail } => {
                write!(f, "could not obtain the lease: {detail}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeeperState {
    /// Trying to take the lease since `since`.
    Acquiring { since: Mono, next_at: Mono, last_detail: Option<String> },
    /// Holding it: services may run until `deadline`.
    Holding { epoch: Epoch, deadline: Mono, renewed_at: Mono, next_at: Mono },
    /// Gave it up for lost; terminal.
    Fenced,
    /// Released (or releasing) on a graceful stop; terminal.
    Released,
}

/// One request to the store in flight at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    sent_at: Mono,
}

#[derive(Debug, Clone)]
pub struct Keeper {
    pub timing: KeeperTiming,
    state: KeeperState,
    in_flight: Option<InFlight>,
    healthy: bool,
    last_error: Option<String>,
}

impl Keeper {
    pub fn new(timing: KeeperTiming, now: Mono) -> Self {
        Keeper {
            timing,
            state: KeeperState::Acquiring { since: now, next_at: now, last_detail: None },
            in_flight: None,
            healthy: true,
            last_error: None,
        }
    }

    pub fn state(&self) -> &KeeperState {
        &self.state
    }

    /// The epoch and deadline while the lease is held and the deadline has not passed.
    pub fn held(&self, now: Mono) -> Option<(Epoch, Mono)> {
        match self.state {
            KeeperState::Holding { epoch, deadline, .. } if now < deadline => Some((epoch, deadline)),
            _ => None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self.state, KeeperState::Fenced | KeeperState::Released)
    }

    /// When the shell should call [`Keeper::tick`] next at the latest.
    /// While a request is in flight only the deadline (or the acquire patience) is due.
    pub fn next_wakeup(&self) -> Option<Mono> {
        let busy = self.in_flight.is_some();
        match self.state {
            KeeperState::Acquiring { since, next_at, .. } => {
                let patience = self.timing.acquire_patience_ms.map(|p| since + p);
                if busy {
                    patience
                } else {
                    Some(patience.map_or(next_at, |p| p.min(next_at)))
                }
            }
            KeeperState::Holding { deadline, next_at, .. } => {
                if busy || !self.healthy {
                    Some(deadline)
                } else {
                    Some(next_at.min(deadline))
                }
            }
            _ => None,
        }
    }

    /// Health of what the lease guards: while unhealthy the keeper stops renewing, so the
    /// lease runs out and the server fences itself (the seed's health-based fencing).
    pub fn set_healthy(&mut self, healthy: bool) {
        self.healthy = healthy;
    }

    /// Checks the deadline and sends what is due.
    pub fn tick(&mut self, now: Mono) -> Vec<KeeperAction> {
        let mut out = Vec::new();
        match self.state.clone() {
            KeeperState::Acquiring { since, next_at, last_detail } => {
                if let Some(p) = self.timing.acquire_patience_ms {
                    if now.since(since) >= p && self.in_flight.is_none() {
                        self.state = KeeperState::Fenced;
                        out.push(KeeperAction::Fence {
                            reason: FenceReason::NotAcquired {
                                detail: last_detail.unwrap_or_else(|| "no answer from the lease table".into()),
                            },
                        });
                        return out;
                    }
                }
                if self.in_flight.is_none() && now >= next_at {
                    self.in_flight = Some(InFlight { sent_at: now });
                    out.push(KeeperAction::Acquire);
                }
            }
            KeeperState::Holding { epoch, deadline, renewed_at, next_at } => {
                if now >= deadline && !self.timing.bugs.no_self_fence() {
                    self.state = KeeperState::Fenced;
                    self.in_flight = None;
                    out.push(KeeperAction::Fence {
                        reason: FenceReason::DeadlinePassed {
                            since_renewal_ms: now.since(renewed_at),
                            last_error: self.last_error.clone(),
                        },
                    });
                    return out;
                }
                if self.in_flight.is_none() && now >= next_at && self.healthy {
                    self.in_flight = Some(InFlight { sent_at: now });
                    out.push(KeeperAction::Renew { epoch });
                }
            }
            KeeperState::Fenced | KeeperState::Released => {}
        }
        out
    }

    /// The store granted the lease (acquire or handover) with `epoch`.
    pub fn on_acquired(&mut self, now: Mono, epoch: Epoch) -> Vec<KeeperAction> {
        let Some(req) = self.in_flight.take() else {
            return vec![];
        };
        if !matches!(self.state, KeeperState::Acquiring { .. }) {
            return vec![];
        }
        let deadline = self.deadline_for(req.sent_at, now);
        if now >= deadline {
            // Answered too late to be used safely: let the store expire it and try again.
            self.retry_acquire(now, "the lease table answered after the lease's safe use had passed".into());
            return vec![];
        }
        self.last_error = None;
        self.state = KeeperState::Holding {
            epoch,
            deadline,
            renewed_at: req.sent_at,
            next_at: req.sent_at + self.timing.interval_ms,
        };
        vec![KeeperAction::Deadline { at: deadline }, KeeperAction::Acquired { epoch }]
    }

    /// The store refused: another holder has it (`detail` says who), or the call failed.
    pub fn on_acquire_failed(&mut self, now: Mono, detail: String) -> Vec<KeeperAction> {
        if self.in_flight.take().is_none() {
            return vec![];
        }
        if matches!(self.state, KeeperState::Acquiring { .. }) {
            self.retry_acquire(now, detail);
        }
        self.tick(now)
    }

    fn retry_acquire(&mut self, now: Mono, detail: String) {
        if let KeeperState::Acquiring { since, .. } = self.state {
            self.state =
                KeeperState::Acquiring { since, next_at: now + self.timing.interval_ms, last_detail: Some(detail) };
        }
    }

    /// The store renewed the lease.
    pub fn on_renewed(&mut self, now: Mono) -> Vec<KeeperAction> {
        let Some(req) = self.in_flight.take() else {
            return vec![];
        };
        let KeeperState::Holding { epoch, deadline, .. } = self.state else {
            return vec![];
        };
        if now >= deadline && !self.timing.bugs.no_self_fence() {
            // Rule 2: a renewal answered after the deadline does not revive the holder.
            return self.tick(now);
        }
        let new_deadline = self.deadline_for(req.sent_at, now).max(deadline);
        self.last_error = None;
        self.state = KeeperState::Holding {
            epoch,
            deadline: new_deadline,
            renewed_at: req.sent_at,
            next_at: req.sent_at + self.timing.interval_ms,
        };
        let mut out = vec![];
        if new_deadline != deadline {
            out.push(KeeperAction::Deadline { at: new_deadline });
        }
        out
    }

    /// The renewal failed for a reason that may pass (timeout, connection refused).
    pub fn on_renew_failed(&mut self, now: Mono, error: String) -> Vec<KeeperAction> {
        if self.in_flight.take().is_none() {
            return vec![];
        }
        self.last_error = Some(error);
        if let KeeperState::Holding { epoch, deadline, renewed_at, .. } = self.state {
            // Retry soon: a quarter interval, so a brief blip costs less than a period.
            let next_at = now + (self.timing.interval_ms / 4).max(1);
            self.state = KeeperState::Holding { epoch, deadline, renewed_at, next_at };
        }
        self.tick(now)
    }

    /// The store says the lease is no longer ours: fence at once.
    pub fn on_lost(&mut self, now: Mono, detail: String) -> Vec<KeeperAction> {
        let _ = now;
        self.in_flight = None;
        if self.is_terminal() {
            return vec![];
        }
        if self.timing.bugs.no_self_fence() {
            return vec![];
        }
        self.state = KeeperState::Fenced;
        vec![KeeperAction::Fence { reason: FenceReason::Lost { detail } }]
    }

    /// Graceful stop: release if held, otherwise just stop.
    pub fn release(&mut self, now: Mono) -> Vec<KeeperAction> {
        let held = self.held(now);
        self.in_flight = None;
        if self.is_terminal() {
            return vec![];
        }
        self.state = KeeperState::Released;
        match held {
            Some((epoch, _)) => vec![KeeperAction::Release { epoch }],
            None => vec![],
        }
    }

    fn deadline_for(&self, sent_at: Mono, now: Mono) -> Mono {
        if self.timing.bugs.deadline_after_response() {
            self.timing.deadline(now)
        } else {
            self.timing.deadline(sent_at)
        }
    }

    /// Invariants checked after every transition in tests and the simulation.
    pub fn validate(&self) -> Result<(), String> {
        if let KeeperState::Holding { deadline, renewed_at, .. } = self.state {
            if deadline.since(renewed_at) > self.timing.ttl_ms && !self.timing.bugs.deadline_after_response() {
                return Err(format!(
                    "deadline {deadline} lies more than a ttl ({} ms) after the renewal was sent at {renewed_at}",
                    self.timing.ttl_ms
                ));
            }
        }
        if self.is_terminal() && self.in_flight.is_some() {
            return Err("a terminal keeper has a request in flight".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> KeeperTiming {
        KeeperTiming::new(Duration::from_millis(100), 3)
    }

    #[test]
    fn deadline_counts_from_the_request() {
        let t = timing();
        // ttl 300, drift 1% = 3, margin 30.
        assert_eq!(t.deadline(Mono(1000)), Mono(1267));
        assert!(t.request_timeout_ms() < t.interval_ms);
    }

    #[test]
    fn acquire_renew_and_fence() {
        let mut k = Keeper::new(timing(), Mono(0));
        assert_eq!(k.tick(Mono(0)), vec![KeeperAction::Acquire]);
        assert_eq!(k.tick(Mono(5)), vec![], "one request at a time");
        let acts = k.on_acquired(Mono(10), Epoch(7));
        assert_eq!(acts, vec![KeeperAction::Deadline { at: Mono(267) }, KeeperAction::Acquired { epoch: Epoch(7) }]);
        assert_eq!(k.tick(Mono(99)), vec![]);
        assert_eq!(k.tick(Mono(100)), vec![KeeperAction::Renew { epoch: Epoch(7) }]);
        assert_eq!(k.on_renewed(Mono(150)), vec![KeeperAction::Deadline { at: Mono(367) }]);
        // The store goes silent.
        assert_eq!(k.tick(Mono(200)), vec![KeeperAction::Renew { epoch: Epoch(7) }]);
        assert!(matches!(k.on_renew_failed(Mono(280), "timeout".into()).as_slice(), []));
        let acts = k.tick(Mono(367));
        assert!(
            matches!(acts.as_slice(), [KeeperAction::Fence { reason: FenceReason::DeadlinePassed { .. } }]),
            "{acts:?}"
        );
        assert!(k.is_terminal());
        k.validate().unwrap();
    }

    #[test]
    fn late_answer_does_not_revive() {
        let mut k = Keeper::new(timing(), Mono(0));
        k.tick(Mono(0));
        k.on_acquired(Mono(1), Epoch(1));
        k.tick(Mono(100));
        // Answer arrives after the deadline of the previous renewal (267).
        let acts = k.on_renewed(Mono(300));
        assert!(matches!(acts.as_slice(), [KeeperAction::Fence { .. }]), "{acts:?}");
    }

    #[test]
    fn unhealthy_stops_renewing() {
        let mut k = Keeper::new(timing(), Mono(0));
        k.tick(Mono(0));
        k.on_acquired(Mono(1), Epoch(1));
        k.set_healthy(false);
        assert_eq!(k.tick(Mono(100)), vec![]);
        assert!(matches!(k.tick(Mono(267)).as_slice(), [KeeperAction::Fence { .. }]));
    }

    #[test]
    fn patience_runs_out() {
        let mut t = timing();
        t.acquire_patience_ms = Some(250);
        let mut k = Keeper::new(t, Mono(0));
        k.tick(Mono(0));
        k.on_acquire_failed(Mono(5), "held by ms1@machine-b".into());
        k.tick(Mono(100));
        k.on_acquire_failed(Mono(105), "held by ms1@machine-b".into());
        k.tick(Mono(205));
        k.on_acquire_failed(Mono(210), "held by ms1@machine-b".into());
        let acts = k.tick(Mono(310));
        assert!(
            matches!(acts.as_slice(), [KeeperAction::Fence { reason: FenceReason::NotAcquired { .. } }]),
            "{acts:?}"
        );
    }

    #[test]
    fn release_when_held() {
        let mut k = Keeper::new(timing(), Mono(0));
        k.tick(Mono(0));
        k.on_acquired(Mono(1), Epoch(3));
        assert_eq!(k.release(Mono(50)), vec![KeeperAction::Release { epoch: Epoch(3) }]);
        assert!(k.is_terminal());
    }
}
