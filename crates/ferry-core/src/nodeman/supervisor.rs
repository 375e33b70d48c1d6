//! The Node Manager's supervisor: decides what to do when a server it started exits, when a
//! server's lease deadline passes (rule 3), and whether a cluster master's command is stale
//! (rule 5). Sans-IO like the rest of the core; ferry-nodemanager performs the actions.

use std::collections::BTreeMap;

use crate::ids::{ClusterName, Epoch, Incarnation, ServerName};
use crate::lease::Lease;
use crate::time::{Bugs, Mono};

/// How a `ferry server` process ended (DESIGN §4 exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Exit 0: clean shutdown, lease released.
    Clean,
    /// Exit 75: fenced itself (lease lost or never obtained).
    Fenced,
    /// Exit 78: configuration error; restarting will not help.
    ConfigError,
    /// Killed by this Node Manager (stop --force, fence, restart).
    KilledByUs,
    /// Anything else: a crash.
    Crash,
}

impl ExitKind {
    /// Classifies an exit status: `code` if it exited (`None`: a signal killed it), and
    /// whether this Node Manager was stopping or killing it. The server's own word comes
    /// first: one that exited 75 fenced itself even if the Node Manager's backstop fired
    /// at the same moment (it found nothing left to kill).
    pub fn classify(code: Option<i32>, killed_by_us: bool) -> ExitKind {
        match code {
            Some(0) => ExitKind::Clean,
            Some(75) => ExitKind::Fenced,
            Some(78) => ExitKind::ConfigError,
            _ if killed_by_us => ExitKind::KilledByUs,
            _ => ExitKind::Crash,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupervisorAction {
    /// Restart on this machine now or after `delay_ms`, handing the lease over from the
    /// incarnation that was reaped (rule 4). With `if_unclaimed`, first check that the
    /// lease still names that incarnation: a server that fenced itself is brought back
    /// when the lease table returns, but not if the master has meanwhile moved it.
    Restart { server: ServerName, handover_from: Incarnation, delay_ms: u64, if_unclaimed: bool },
    /// SIGKILL the server's whole session: its deadline passed (rule 3).
    Fence { server: ServerName, incarnation: Incarnation, late_ms: u64 },
    /// Leave it down; the state word says why.
    Down { server: ServerName, state: &'static str },
}

/// Restart backoff (rule 9): the first crash restarts at once, each further crash in a row
/// doubles the delay from `base_ms` up to `max_ms`; after `max_in_row` crashes in a row the
/// Node Manager stops and leaves the server to the cluster master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub base_ms: u64,
    pub max_ms: u64,
    pub max_in_row: u32,
    /// A run at least this long resets the count.
    pub stable_ms: u64,
    /// First delay before restarting a server that fenced itself; doubles up to
    /// `fenced_max_ms` while it keeps fencing (a lease table that is down).
    pub fenced_base_ms: u64,
    pub fenced_max_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            base_ms: 100,
            max_ms: 30_000,
            max_in_row: 5,
            stable_ms: 60_000,
            fenced_base_ms: 1_000,
            fenced_max_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Supervised {
    incarnation: Incarnation,
    started_at: Mono,
    deadline: Option<Mono>,
    crashes_in_row: u32,
    fenced_in_row: u32,
    fenced: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Supervisor {
    pub policy: RestartPolicy,
    pub bugs: Bugs,
    servers: BTreeMap<ServerName, Supervised>,
    master_epochs: BTreeMap<ClusterName, Epoch>,
}

/// A command from a deposed cluster master.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "stale cluster master: command carries master epoch {got} but epoch {highest} has been seen for cluster {cluster}"
)]
pub struct StaleMaster {
    pub cluster: ClusterName,
    pub got: Epoch,
    pub highest: Epoch,
}

impl Supervisor {
    pub fn new(policy: RestartPolicy) -> Self {
        Supervisor { policy, ..Default::default() }
    }

    /// Rule 5: accepts a master's command only if its epoch is the highest seen.
    pub fn check_master(&mut self, cluster: &ClusterName, epoch: Epoch) -> Result<(), StaleMaster> {
        let highest = self.master_epochs.entry(cluster.clone()).or_default();
        if epoch < *highest && !self.bugs.no_nm_epoch_check() {
            return Err(StaleMaster { cluster: cluster.clone(), got: epoch, highest: *highest });
        }
        *highest = (*highest).max(epoch);
        Ok(())
    }

    /// The highest master epoch seen per cluster (persisted by the Node Manager, so rule 5
    /// survives its restart).
    pub fn master_epochs(&self) -> &BTreeMap<ClusterName, Epoch> {
        &self.master_epochs
    }

    /// Restores what [`Supervisor::master_epochs`] returned before a restart.
    pub fn restore_master_epochs(&mut self, epochs: BTreeMap<ClusterName, Epoch>) {
        for (c, e) in epochs {
            let cur = self.master_epochs.entry(c).or_default();
            *cur = (*cur).max(e);
        }
    }

    /// Invariants checked in tests and the simulation: restart counters stay within the
    /// policy's bounds (a server past them is left down, never restarted again).
    pub fn validate(&self) -> Result<(), String> {
        for (name, s) in &self.servers {
            if s.crashes_in_row > self.policy.max_in_row + 1 {
                return Err(format!(
                    "{name}: {} crashes in a row exceed the policy's {}",
                    s.crashes_in_row, self.policy.max_in_row
                ));
            }
        }
        Ok(())
    }

    pub fn highest_master_epoch(&self, cluster: &ClusterName) -> Epoch {
        self.master_epochs.get(cluster).copied().unwrap_or_default()
    }

    /// A server process was started (fresh or restarted).
    pub fn on_started(&mut self, server: &ServerName, incarnation: Incarnation, now: Mono) {
        let (crashes_in_row, fenced_in_row) =
            self.servers.get(server).map_or((0, 0), |s| (s.crashes_in_row, s.fenced_in_row));
        self.servers.insert(
            server.clone(),
            Supervised { incarnation, started_at: now, deadline: None, crashes_in_row, fenced_in_row, fenced: false },
        );
    }

    /// The server reported a new lease deadline over its local channel.
    pub fn on_deadline(&mut self, server: &ServerName, incarnation: &Incarnation, at: Mono) {
        if let Some(s) = self.servers.get_mut(server) {
            if &s.incarnation == incarnation {
                s.deadline = Some(s.deadline.map_or(at, |d| d.max(at)));
            }
        }
    }

    /// The server told us it released its lease or is stopping cleanly: stop watching.
    pub fn on_released(&mut self, server: &ServerName, incarnation: &Incarnation) {
        if let Some(s) = self.servers.get_mut(server) {
            if &s.incarnation == incarnation {
                s.deadline = None;
            }
        }
    }

    /// Fences every server whose deadline has passed.
    pub fn tick(&mut self, now: Mono) -> Vec<SupervisorAction> {
        let mut out = Vec::new();
        if self.bugs.no_self_fence() {
            return out;
        }
        for (name, s) in self.servers.iter_mut() {
            if let Some(d) = s.deadline {
                if now >= d && !s.fenced {
                    s.fenced = true;
                    out.push(SupervisorAction::Fence {
                        server: name.clone(),
                        incarnation: s.incarnation.clone(),
                        late_ms: now.since(d),
                    });
                }
            }
        }
        out
    }

    /// Earliest deadline being watched.
    pub fn next_wakeup(&self) -> Option<Mono> {
        self.servers.values().filter(|s| !s.fenced).filter_map(|s| s.deadline).min()
    }

    /// The server process was reaped.
    pub fn on_exit(
        &mut self,
        server: &ServerName,
        incarnation: &Incarnation,
        kind: ExitKind,
        now: Mono,
    ) -> Vec<SupervisorAction> {
        let Some(s) = self.servers.get_mut(server) else {
            return vec![];
        };
        if &s.incarnation != incarnation {
            return vec![];
        }
        s.deadline = None;
        let fenced_by_us = s.fenced;
        match kind {
            ExitKind::Clean => vec![SupervisorAction::Down { server: server.clone(), state: "SHUTDOWN" }],
            ExitKind::Fenced => {
                if now.since(s.started_at) >= self.policy.stable_ms {
                    s.fenced_in_row = 0;
                }
                s.fenced_in_row += 1;
                let delay_ms =
                    (self.policy.fenced_base_ms << (s.fenced_in_row - 1).min(20)).min(self.policy.fenced_max_ms);
                vec![
                    SupervisorAction::Down { server: server.clone(), state: "FENCED" },
                    SupervisorAction::Restart {
                        server: server.clone(),
                        handover_from: incarnation.clone(),
                        delay_ms,
                        if_unclaimed: true,
                    },
                ]
            }
            ExitKind::ConfigError => vec![SupervisorAction::Down { server: server.clone(), state: "FAILED_CONFIG" }],
            ExitKind::KilledByUs if fenced_by_us => {
                vec![SupervisorAction::Down { server: server.clone(), state: "FENCED" }]
            }
            ExitKind::KilledByUs => vec![SupervisorAction::Down { server: server.clone(), state: "SHUTDOWN" }],
            ExitKind::Crash => {
                if now.since(s.started_at) >= self.policy.stable_ms {
                    s.crashes_in_row = 0;
                }
                s.crashes_in_row += 1;
                if s.crashes_in_row > self.policy.max_in_row {
                    return vec![SupervisorAction::Down { server: server.clone(), state: "FAILED" }];
                }
                let delay_ms = if s.crashes_in_row == 1 {
                    0
                } else {
                    (self.policy.base_ms << (s.crashes_in_row - 2).min(20)).min(self.policy.max_ms)
                };
                vec![SupervisorAction::Restart {
                    server: server.clone(),
                    handover_from: incarnation.clone(),
                    delay_ms,
                    if_unclaimed: false,
                }]
            }
        }
    }

    /// Forgets a server's restart counts (an operator or master started it deliberately).
    pub fn reset_crashes(&mut self, server: &ServerName) {
        if let Some(s) = self.servers.get_mut(server) {
            s.crashes_in_row = 0;
            s.fenced_in_row = 0;
        }
    }
}

/// What a Node Manager does about a server of its own that fenced itself (exit 75), once it
/// can read the lease table again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFence {
    /// Start it here again, taking the lease over from the fenced incarnation (rule 4): nobody
    /// else will. This is how a domain returns after a lease-table outage, when every server
    /// (the cluster master too) fenced itself.
    Restart,
    /// Leave it: someone else has it or will restart it. The reason is for the event log.
    GiveWay(String),
}

/// Decides who brings back a server that fenced itself: its own Node Manager, by handover,
/// or the cluster master, by a restart in place or a migration once the lease has expired;
/// never both, so two copies are never even started. `lease` is the server's row and
/// `master` its cluster's master lease as the table says now, `since_fence_ms` how long ago
/// the server fenced (the Node Manager's clock), and `table_was_down` that the table could
/// not be read at an earlier look.
///
/// * The row names another incarnation: the master (or an operator) already moved it on.
/// * A master other than the server itself that renewed its lease since the fence, with the
///   table readable all along: that master is alive and reading the table; it sees the lease
///   expire and restarts the server, in place first (through this Node Manager, which stops
///   nothing it runs), or elsewhere if this machine does not answer it.
/// * Otherwise no one else is about to act: restart it here. That is the case after a
///   lease-table outage, when every server fenced itself, the master too (its lease may
///   still look live, but nobody renews it). A master elected since the table returned would
///   first wait out the fencing grace period, while this Node Manager knows its server is
///   dead and its address removed; should that master's restart in place arrive meanwhile,
///   it lands on this Node Manager, which serialises it with its own restart.
///
/// Comparing `since_renewal_ms` (the store's clock) with `since_fence_ms` (the Node
/// Manager's) compares two durations, never a clock with a timestamp (rule 1), and decides
/// only who restarts, never whether a lease is held: safety does not rest on it.
pub fn after_fence(
    server: &ServerName,
    fenced: &Incarnation,
    lease: Option<&Lease>,
    master: Option<&Lease>,
    since_fence_ms: u64,
    table_was_down: bool,
) -> AfterFence {
    if let Some(l) = lease {
        if l.incarnation.as_ref() != Some(fenced) {
            return AfterFence::GiveWay(format!(
                "its lease now belongs to incarnation {} on {} (epoch {})",
                l.incarnation.as_ref().map_or("?", |i| i.0.as_str()),
                l.machine.as_ref().map_or("?", |m| m.as_str()),
                l.epoch
            ));
        }
    }
    let renewed_since_fence = |m: &Lease| m.since_renewal_ms >= 0 && (m.since_renewal_ms as u64) < since_fence_ms;
    match master {
        Some(m)
            if !table_was_down
                && m.is_live()
                && renewed_since_fence(m)
                && m.owner.as_ref().is_some_and(|o| o != server) =>
        {
            AfterFence::GiveWay(format!(
                "cluster master {} (master epoch {}) restarts it once its lease expires",
                m.owner.as_ref().map_or("?", |o| o.as_str()),
                m.epoch
            ))
        }
        _ => AfterFence::Restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{LeaseName, MachineName};
    use crate::lease::LeaseState;

    fn lease(name: LeaseName, owner: &str, inc: &str, epoch: u64, remaining_ms: i64) -> Lease {
        Lease {
            name,
            owner: Some(n(owner)),
            machine: Some(MachineName::new("m1").unwrap()),
            incarnation: Some(Incarnation(inc.into())),
            epoch: Epoch(epoch),
            state: LeaseState::Held,
            remaining_ms,
            since_renewal_ms: 0,
        }
    }

    #[test]
    fn a_fenced_server_is_restarted_by_its_node_manager_or_by_the_master_never_both() {
        let ms1 = n("ms1");
        let fenced = Incarnation("old".into());
        let c = ClusterName::new("c1").unwrap();
        let row = lease(LeaseName::Server(ms1.clone()), "ms1", "old", 4, -200);
        // A master renewing every 100 ms; the fence was 300 ms ago.
        let mut live_master = lease(LeaseName::Master(c.clone()), "ms2", "m", 7, 900);
        live_master.since_renewal_ms = 40;
        let mut expired_master = live_master.clone();
        expired_master.remaining_ms = -1;
        // The master fenced with everyone else: its lease still looks live, nobody renews it.
        let mut silent_master = live_master.clone();
        silent_master.since_renewal_ms = 450;
        let mut own_master = lease(LeaseName::Master(c), "ms1", "old", 7, 900);
        own_master.since_renewal_ms = 40;
        let decide = |lease, master, was_down| after_fence(&ms1, &fenced, lease, master, 300, was_down);
        // Nobody else will act: restart it here.
        assert_eq!(decide(Some(&row), None, false), AfterFence::Restart);
        assert_eq!(decide(None, None, false), AfterFence::Restart);
        assert_eq!(decide(Some(&row), Some(&expired_master), false), AfterFence::Restart);
        assert_eq!(decide(Some(&row), Some(&own_master), false), AfterFence::Restart);
        assert_eq!(decide(Some(&row), Some(&silent_master), false), AfterFence::Restart);
        // A live master that was reading the table restarts it itself.
        assert_eq!(
            decide(Some(&row), Some(&live_master), false),
            AfterFence::GiveWay("cluster master ms2 (master epoch 7) restarts it once its lease expires".into())
        );
        // After an outage, a master elected since would first wait out its grace period.
        assert_eq!(decide(Some(&row), Some(&live_master), true), AfterFence::Restart);
        // Someone already has it, outage or not.
        let moved = lease(LeaseName::Server(ms1.clone()), "ms1", "new", 5, 900);
        for was_down in [false, true] {
            assert_eq!(
                decide(Some(&moved), None, was_down),
                AfterFence::GiveWay("its lease now belongs to incarnation new on m1 (epoch 5)".into())
            );
        }
    }

    fn n(s: &str) -> ServerName {
        ServerName::new(s).unwrap()
    }

    #[test]
    fn stale_master_is_refused() {
        let mut sup = Supervisor::default();
        let c = ClusterName::new("c1").unwrap();
        sup.check_master(&c, Epoch(4)).unwrap();
        sup.check_master(&c, Epoch(4)).unwrap();
        assert!(sup.check_master(&c, Epoch(3)).is_err());
        sup.check_master(&c, Epoch(9)).unwrap();
        assert_eq!(sup.highest_master_epoch(&c), Epoch(9));
    }

    #[test]
    fn deadline_fences_once() {
        let mut sup = Supervisor::default();
        let inc = Incarnation("a".into());
        sup.on_started(&n("ms1"), inc.clone(), Mono(0));
        sup.on_deadline(&n("ms1"), &inc, Mono(100));
        sup.on_deadline(&n("ms1"), &Incarnation("old".into()), Mono(900));
        assert_eq!(sup.tick(Mono(99)), vec![]);
        assert_eq!(
            sup.tick(Mono(105)),
            vec![SupervisorAction::Fence { server: n("ms1"), incarnation: inc.clone(), late_ms: 5 }]
        );
        assert_eq!(sup.tick(Mono(200)), vec![]);
        assert_eq!(
            sup.on_exit(&n("ms1"), &inc, ExitKind::KilledByUs, Mono(210)),
            vec![SupervisorAction::Down { server: n("ms1"), state: "FENCED" }]
        );
    }

    #[test]
    fn a_fenced_server_comes_back_if_its_lease_is_unclaimed_with_growing_delays() {
        let mut sup = Supervisor::default();
        let mut delays = vec![];
        for i in 0..6u64 {
            let inc = Incarnation(format!("{i}"));
            sup.on_started(&n("ms1"), inc.clone(), Mono(i * 10));
            match sup.on_exit(&n("ms1"), &inc, ExitKind::Fenced, Mono(i * 10 + 5)).as_slice() {
                [SupervisorAction::Down { state: "FENCED", .. }, SupervisorAction::Restart { handover_from, delay_ms, if_unclaimed: true, .. }] =>
                {
                    assert_eq!(handover_from, &inc);
                    delays.push(*delay_ms);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, vec![1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
    }

    #[test]
    fn crashes_back_off_then_give_up() {
        let mut sup = Supervisor::new(RestartPolicy {
            base_ms: 100,
            max_ms: 1000,
            max_in_row: 3,
            stable_ms: 10_000,
            ..RestartPolicy::default()
        });
        let mut delays = vec![];
        for i in 0..4u64 {
            let inc = Incarnation(format!("{i}"));
            sup.on_started(&n("ms1"), inc.clone(), Mono(i * 10));
            match sup.on_exit(&n("ms1"), &inc, ExitKind::Crash, Mono(i * 10 + 5)).as_slice() {
                [SupervisorAction::Restart { delay_ms, handover_from, .. }] => {
                    assert_eq!(handover_from, &inc);
                    delays.push(*delay_ms)
                }
                [SupervisorAction::Down { state, .. }] => assert_eq!(*state, "FAILED"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, vec![0, 100, 200]);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ExitKind::classify(Some(0), false), ExitKind::Clean);
        assert_eq!(ExitKind::classify(Some(75), false), ExitKind::Fenced);
        assert_eq!(ExitKind::classify(Some(78), false), ExitKind::ConfigError);
        assert_eq!(ExitKind::classify(None, false), ExitKind::Crash);
        assert_eq!(ExitKind::classify(None, true), ExitKind::KilledByUs);
        assert_eq!(ExitKind::classify(Some(75), true), ExitKind::Fenced, "it fenced itself before the backstop");
        assert_eq!(ExitKind::classify(Some(1), true), ExitKind::KilledByUs, "a stop it did not survive");
    }
}
