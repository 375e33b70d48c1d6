//! The cluster-master planner (DESIGN §2, Figure 7-2): from scans of the lease table and the
//! answers of Node Managers, decides which server to restart where. It proposes; the
//! executor in ferry-server enacts, stamping each command with the master lease's epoch and
//! checking the master's own deadline first (rules 5 and 6). Planning changes nothing in the
//! world, and every scan re-reads it, so a new master simply starts over.

use std::collections::BTreeMap;

use crate::domain::Domain;
use crate::event::EventKind;
use crate::ids::{ClusterName, Epoch, Incarnation, MachineName, ServerName};
use crate::lease::Lease;
use crate::time::Mono;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterAction {
    /// Ask `machine`'s Node Manager to start `server`. `in_place` means on the machine it
    /// failed on, killing whatever is left of the old process first. `power_fence` names a
    /// machine to power-fence (the cluster's `fence_command`) before starting elsewhere.
    Start { server: ServerName, machine: MachineName, in_place: bool, power_fence: Option<MachineName> },
    /// Something for the event log: `kind` is a stable word, `message` for people.
    Event { kind: EventKind, server: ServerName, message: String },
}

/// What a Node Manager said to a start command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    Accepted,
    /// Could not connect or no answer in time.
    Unreachable(String),
    /// Answered with an error (hook failed, no lease table, ...).
    Refused(String),
    /// Refused because another host still answers for the server's floating IP: the old
    /// holder may be removing it right now, so the same machine is asked again shortly.
    AddressInUse(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Expiry seen; wait `fencing_grace_period` before acting.
    Grace { until: Mono },
    /// A start command is out.
    Commanding { machine: MachineName },
    /// `machine` refused because the floating IP still answers elsewhere: ask it again at
    /// `until`.
    AddressWait { machine: MachineName, until: Mono },
    /// The Node Manager accepted; wait for the new instance to take the lease.
    Awaiting { machine: MachineName, until: Mono },
    /// A whole circuit of the candidates failed: wait before the next.
    Backoff { until: Mono },
    /// Attempts exhausted (rule 9); stays until the lease changes.
    GaveUp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Track {
    incarnation: Option<Incarnation>,
    epoch: Epoch,
    failed_on: MachineName,
    phase: Phase,
    tried: Vec<MachineName>,
    circuit: u32,
    power_fenced: bool,
    /// Address-in-use refusals of the current target in a row.
    address_waits: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasterTiming {
    pub grace_ms: u64,
    /// How long a started server has to take its lease before the next candidate is tried.
    pub start_timeout_ms: u64,
    pub additional_attempts: u32,
    pub retry_delay_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Planner {
    pub cluster: ClusterName,
    tracks: BTreeMap<ServerName, Track>,
}

impl Planner {
    pub fn new(cluster: ClusterName) -> Self {
        Planner { cluster, tracks: BTreeMap::new() }
    }

    /// The timings for this planner's cluster in `domain`.
    pub fn timing(&self, domain: &Domain) -> MasterTiming {
        let c = domain.cluster(&self.cluster);
        let max_ttl_ms = domain.servers_in(&self.cluster).map(|s| s.lease_ttl().as_millis() as u64).max().unwrap_or(0);
        MasterTiming {
            grace_ms: c.map_or(0, |c| c.fencing_grace_period.as_millis() as u64),
            // A start that never takes the lease (the process died, or is stuck fetching its
            // configuration) holds the migration this long before the next machine is tried.
            start_timeout_ms: (max_ttl_ms * 2).max(3_000),
            additional_attempts: c.map_or(3, |c| c.additional_auto_migration_attempts),
            retry_delay_ms: c.map_or(180_000, |c| c.migration_retry_delay.as_millis() as u64),
        }
    }

    /// Servers the planner is working on, with a word for what it is doing.
    pub fn in_progress(&self) -> Vec<(ServerName, &'static str)> {
        self.tracks
            .iter()
            .map(|(s, t)| {
                let word = match t.phase {
                    Phase::Grace { .. } => "grace",
                    Phase::Commanding { .. } => "commanding",
                    Phase::AddressWait { .. } => "address-wait",
                    Phase::Awaiting { .. } => "awaiting-lease",
                    Phase::Backoff { .. } => "backoff",
                    Phase::GaveUp => "gave-up",
                };
                (s.clone(), word)
            })
            .collect()
    }

    /// One periodic review of the lease table.
    pub fn on_scan(&mut self, now: Mono, leases: &[Lease], domain: &Domain) -> Vec<MasterAction> {
        let timing = self.timing(domain);
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for lease in leases {
            let Some(server) = lease.server() else {
                continue;
            };
            let Some(cfg) = domain.server(server) else {
                continue;
            };
            if cfg.cluster != self.cluster {
                continue;
            }
            seen.push(server.clone());
            let tracked = self.tracks.get(server).cloned();
            match tracked {
                None => {
                    if !lease.is_expired() {
                        continue;
                    }
                    let Some(machine) = lease.machine.clone() else {
                        continue;
                    };
                    out.push(MasterAction::Event {
                        kind: EventKind::LeaseExpired,
                        server: server.clone(),
                        message: format!(
                            "lease of {server} on {machine} expired (epoch {}, {} ms ago); waiting the fencing grace period of {} ms",
                            lease.epoch, -lease.remaining_ms, timing.grace_ms
                        ),
                    });
                    self.tracks.insert(
                        server.clone(),
                        Track {
                            incarnation: lease.incarnation.clone(),
                            epoch: lease.epoch,
                            failed_on: machine,
                            phase: Phase::Grace { until: now + timing.grace_ms },
                            tried: Vec::new(),
                            circuit: 0,
                            power_fenced: false,
                            address_waits: 0,
                        },
                    );
                    // A zero grace acts in this very scan.
                    self.advance(now, server, lease, domain, &timing, &mut out);
                }
                Some(track) => {
                    if lease.epoch != track.epoch || !lease.is_expired() {
                        // Someone holds it again (or it was released): the job is done.
                        self.tracks.remove(server);
                        if lease.is_live() {
                            out.push(MasterAction::Event {
                                kind: EventKind::ServerRecovered,
                                server: server.clone(),
                                message: format!(
                                    "{server} holds its lease again on {} (epoch {})",
                                    lease.machine.as_ref().map_or("?", |m| m.as_str()),
                                    lease.epoch
                                ),
                            });
                        }
                        continue;
                    }
                    self.advance(now, server, lease, domain, &timing, &mut out);
                }
            }
        }
        self.tracks.retain(|s, _| seen.contains(s));
        out
    }

    fn advance(
        &mut self,
        now: Mono,
        server: &ServerName,
        lease: &Lease,
        domain: &Domain,
        timing: &MasterTiming,
        out: &mut Vec<MasterAction>,
    ) {
        let due = match self.tracks.get(server).map(|t| &t.phase) {
            Some(
                Phase::Grace { until }
                | Phase::Awaiting { until, .. }
                | Phase::Backoff { until }
                | Phase::AddressWait { until, .. },
            ) => now >= *until,
            _ => false,
        };
        if !due {
            return;
        }
        // Only for a track that moves on: a scan reviews every tracked server.
        let loads = self.loads();
        let Some(track) = self.tracks.get_mut(server) else {
            return;
        };
        if let Phase::AddressWait { machine, .. } = &track.phase {
            let machine = machine.clone();
            let in_place = machine == track.failed_on;
            track.phase = Phase::Commanding { machine: machine.clone() };
            out.push(MasterAction::Start { server: server.clone(), machine, in_place, power_fence: None });
            return;
        }
        if let Phase::Awaiting { machine, .. } = &track.phase {
            out.push(MasterAction::Event {
                kind: EventKind::StartTimeout,
                server: server.clone(),
                message: format!(
                    "{server} did not take its lease on {machine} within {} ms; trying the next machine",
                    timing.start_timeout_ms
                ),
            });
        }
        if let Phase::Backoff { .. } = track.phase {
            track.tried.clear();
        }
        let _ = lease;
        Self::next_target(track, server, domain, timing, &loads, now, out);
    }

    /// How many servers the planner is starting on each machine now (commands out, starts
    /// awaited, address waits): what spreads a dead machine's servers.
    fn loads(&self) -> BTreeMap<MachineName, usize> {
        let mut loads = BTreeMap::new();
        for t in self.tracks.values() {
            if let Phase::Commanding { machine }
            | Phase::Awaiting { machine, .. }
            | Phase::AddressWait { machine, .. } = &t.phase
            {
                *loads.entry(machine.clone()).or_insert(0) += 1;
            }
        }
        loads
    }

    /// Picks the next machine: the failed machine first (restart in place), then the
    /// server's candidates in their order, then the cluster's, the machine the planner is
    /// starting the fewest servers on first (the seed: "a machine on the list"; list order
    /// breaks ties), so a dead machine's servers spread instead of all landing on the first;
    /// skipping what this circuit already tried.
    fn next_target(
        track: &mut Track,
        server: &ServerName,
        domain: &Domain,
        timing: &MasterTiming,
        loads: &BTreeMap<MachineName, usize>,
        now: Mono,
        out: &mut Vec<MasterAction>,
    ) {
        let Some(cfg) = domain.server(server) else {
            return;
        };
        let mut order = vec![track.failed_on.clone()];
        if cfg.auto_migration {
            let all = domain.candidates_for(cfg);
            let (preferred, mut cluster): (Vec<MachineName>, Vec<MachineName>) =
                all.into_iter().filter(|m| m != &track.failed_on).partition(|m| cfg.candidate_machines.contains(m));
            // A stable sort: equal loads keep the cluster list's order.
            cluster.sort_by_key(|m| loads.get(m).copied().unwrap_or(0));
            order.extend(preferred);
            order.extend(cluster);
        }
        match order.into_iter().find(|m| !track.tried.contains(m)) {
            Some(machine) => {
                let in_place = machine == track.failed_on;
                let power_fence = match domain.cluster(&cfg.cluster) {
                    Some(c) if !in_place && c.fence_command.is_some() && !track.power_fenced => {
                        track.power_fenced = true;
                        Some(track.failed_on.clone())
                    }
                    _ => None,
                };
                track.tried.push(machine.clone());
                track.address_waits = 0;
                track.phase = Phase::Commanding { machine: machine.clone() };
                out.push(MasterAction::Event {
                    kind: if in_place { EventKind::RestartInPlace } else { EventKind::Migrate },
                    server: server.clone(),
                    message: if in_place {
                        format!("asking the Node Manager on {machine} to restart {server} where it failed")
                    } else {
                        format!("migrating {server} from {} to {machine}", track.failed_on)
                    },
                });
                out.push(MasterAction::Start { server: server.clone(), machine, in_place, power_fence });
            }
            None => {
                track.circuit += 1;
                if track.circuit > timing.additional_attempts {
                    track.phase = Phase::GaveUp;
                    out.push(MasterAction::Event {
                        kind: EventKind::GaveUp,
                        server: server.clone(),
                        message: format!(
                            "no machine could start {server} after {} circuits of its candidates; giving up until an operator starts it",
                            track.circuit
                        ),
                    });
                } else {
                    track.phase = Phase::Backoff { until: now + timing.retry_delay_ms };
                    out.push(MasterAction::Event {
                        kind: EventKind::Backoff,
                        server: server.clone(),
                        message: format!(
                            "every candidate machine failed to start {server}; circuit {} of {} again in {} ms",
                            track.circuit + 1,
                            timing.additional_attempts + 1,
                            timing.retry_delay_ms
                        ),
                    });
                }
            }
        }
    }

    /// The answer of the Node Manager on `machine` to a start of `server`.
    pub fn on_command_result(
        &mut self,
        now: Mono,
        server: &ServerName,
        machine: &MachineName,
        result: CommandResult,
        domain: &Domain,
    ) -> Vec<MasterAction> {
        let timing = self.timing(domain);
        let mut out = Vec::new();
        let loads = self.loads();
        let Some(track) = self.tracks.get_mut(server) else {
            return out;
        };
        if track.phase != (Phase::Commanding { machine: machine.clone() }) {
            return out;
        }
        match result {
            CommandResult::Accepted => {
                track.phase = Phase::Awaiting { machine: machine.clone(), until: now + timing.start_timeout_ms };
            }
            CommandResult::AddressInUse(e) if track.address_waits < address_wait_limit(domain, server) => {
                track.address_waits += 1;
                let interval_ms = domain.server(server).map_or(1_000, |s| s.health_check_interval.as_millis() as u64);
                out.push(MasterAction::Event {
                    kind: EventKind::AddressInUse,
                    server: server.clone(),
                    message: format!(
                        "Node Manager on {machine} could not start {server} yet: {e}; asking again in {interval_ms} ms ({} of {})",
                        track.address_waits,
                        address_wait_limit(domain, server)
                    ),
                });
                track.phase = Phase::AddressWait { machine: machine.clone(), until: now + interval_ms };
            }
            CommandResult::Unreachable(e) | CommandResult::Refused(e) | CommandResult::AddressInUse(e) => {
                out.push(MasterAction::Event {
                    kind: EventKind::MachineFailed,
                    server: server.clone(),
                    message: format!("Node Manager on {machine} could not start {server}: {e}"),
                });
                Self::next_target(track, server, domain, &timing, &loads, now, &mut out);
            }
        }
        out
    }

    /// Invariants checked in tests and the simulation: a command is out only to a machine
    /// recorded as tried, and no circuit count exceeds the attempts allowed.
    pub fn validate(&self, timing: &MasterTiming) -> Result<(), String> {
        for (server, t) in &self.tracks {
            match &t.phase {
                Phase::Commanding { machine }
                | Phase::Awaiting { machine, .. }
                | Phase::AddressWait { machine, .. }
                    if !t.tried.contains(machine) =>
                {
                    return Err(format!("{server}: a command is out to {machine}, which is not recorded as tried"));
                }
                _ => {}
            }
            if t.circuit > timing.additional_attempts + 1 {
                return Err(format!(
                    "{server}: {} circuits exceed the {} allowed",
                    t.circuit,
                    timing.additional_attempts + 1
                ));
            }
        }
        Ok(())
    }

    /// When the planner next has something due (for the executor's timer).
    pub fn next_wakeup(&self) -> Option<Mono> {
        self.tracks
            .values()
            .filter_map(|t| match t.phase {
                Phase::Grace { until }
                | Phase::Awaiting { until, .. }
                | Phase::Backoff { until }
                | Phase::AddressWait { until, .. } => Some(until),
                _ => None,
            })
            .min()
    }
}

/// How often one machine may refuse a server for its floating IP still answering elsewhere
/// before the next machine is tried: once per health-check interval for one lease time to
/// live (`health_check_periods_until_fencing` times), long enough for an old holder's
/// `removeif` to finish, short enough that a machine whose kernel still holds the address
/// does not stall the migration.
fn address_wait_limit(domain: &Domain, server: &ServerName) -> u32 {
    domain.server(server).map_or(3, |s| s.health_check_periods_until_fencing)
}
