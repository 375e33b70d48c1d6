//! What a run hands back: its [`Outcome`] (violations, the runs of services, the bounds it
//! was held to, the trace) and the [`Stats`] that show a sweep exercised what it claims to.
//! Kept apart from the simulator so the tests' view of a run reads in one place.

use crate::check::{Property, Run, Violation};
use crate::scenario::Scenario;

/// What happened in one run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub scenario: Scenario,
    pub violations: Vec<Violation>,
    /// Every stretch of every instance running its services.
    pub runs: Vec<Run>,
    pub stats: Stats,
    /// The full trace when `SimConfig::trace` was set.
    pub trace: Vec<String>,
    pub heal_at_ms: u64,
    /// The liveness bound applied after healing.
    pub bound_ms: u64,
    pub end_ms: u64,
    /// DESIGN §3's bound as this scenario's timings make it: interval × periods + grace +
    /// one scan interval + the longest start time.
    pub design_bound_ms: u64,
    /// What a master takeover adds: the master lease's expiry, one acquisition retry, a scan.
    pub takeover_ms: u64,
    /// How long a master waits for a Node Manager's answer.
    pub cmd_timeout_ms: u64,
    /// When a process holding the master role died (crash, kill, power loss).
    pub master_died_at: Vec<u64>,
    /// The longest a migratable server took to run again once the faults stopped (or the
    /// operator restarted a dead cluster).
    pub slowest_recovery_ms: u64,
}

impl Outcome {
    pub fn violates(&self, p: Property) -> bool {
        self.violations.iter().any(|v| v.property == p)
    }
}

/// Counters that show a sweep exercised what it claims to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub messages: u64,
    pub lost: u64,
    pub faults: u64,
    pub instances: u64,
    pub keeper_fences: u64,
    pub nm_fences: u64,
    pub crash_restarts: u64,
    pub fenced_restarts: u64,
    pub masters: u64,
    pub usurpers: u64,
    pub migrations: u64,
    pub in_place: u64,
    pub gave_up: u64,
    pub commands: u64,
    pub stale_rejected: u64,
    pub rule6_skips: u64,
    pub healthy_killed: u64,
    pub operator_starts: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        let Stats {
            events,
            messages,
            lost,
            faults,
            instances,
            keeper_fences,
            nm_fences,
            crash_restarts,
            fenced_restarts,
            masters,
            usurpers,
            migrations,
            in_place,
            gave_up,
            commands,
            stale_rejected,
            rule6_skips,
            healthy_killed,
            operator_starts,
        } = o;
        self.events += events;
        self.messages += messages;
        self.lost += lost;
        self.faults += faults;
        self.instances += instances;
        self.keeper_fences += keeper_fences;
        self.nm_fences += nm_fences;
        self.crash_restarts += crash_restarts;
        self.fenced_restarts += fenced_restarts;
        self.masters += masters;
        self.usurpers += usurpers;
        self.migrations += migrations;
        self.in_place += in_place;
        self.gave_up += gave_up;
        self.commands += commands;
        self.stale_rejected += stale_rejected;
        self.rule6_skips += rule6_skips;
        self.healthy_killed += healthy_killed;
        self.operator_starts += operator_starts;
    }
}
