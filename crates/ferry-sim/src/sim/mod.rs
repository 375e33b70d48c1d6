//! The discrete-event simulator: hosts with their own clocks, a Node Manager per machine
//! running the core's `NodeManager`, `ferry server` processes each running a `Keeper` for
//! their server lease, a `Keeper` for the cluster-master lease and, while they hold it, a
//! `Planner`; one lease store; a lossy, partitionable network. Events sit in one queue
//! ordered by true time and then by insertion, so a seed replays exactly.
//!
//! This file holds the [`Sim`] itself, its event queue, [`Sim::run`] with its dispatch of
//! events, and the end of a run. What it models lives beside it, one file each:
//! `network` (messages, and the store answering them), `nodemanager` (the Node Manager of
//! each machine), `server` (the `ferry server` processes and their server lease),
//! `master` (the cluster-master role inside them), `faults` (the faults, healing and the
//! operator) and `outcome` (what a run hands back).
//!
//! The shells' obligations that the simulation encodes (and that ferry-server and
//! ferry-nodemanager must keep, or the properties checked here stop meaning anything):
//!
//! * every store call and master command has a timeout; a late answer is dropped (rule 7);
//! * the keeper's new deadline reaches the Node Manager over the local channel at once
//!   (as ferry-server's backstop, half a margin later), and both beat the store's expiry;
//! * the master checks `Keeper::held` right before every Node Manager call (rule 6) and
//!   stamps the call with its master epoch (rule 5);
//! * a Node Manager that reaps a crashed server kills what is left of its process group
//!   before restarting it with a handover (rule 4), so orphaned services cannot outlive it;
//! * after a suspend (or SIGCONT), deadline checks run before any queued message.

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::Duration;

use ferry_core::domain::Domain;
use ferry_core::keeper::KeeperTiming;
use ferry_core::master::{MasterTiming, Planner};
use ferry_core::nodeman::RestartPolicy;
use ferry_core::time::Bugs;
use ferry_core::{Incarnation, LeaseName, MachineName, Mono, ServerName};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::check::Checker;
use crate::clock::HostClock;
use crate::net::Net;
use crate::scenario::{Links, Scenario, SimConfig, FAULTS_FROM_MS};
use crate::store::Store;

type HostId = usize;
type InstanceId = usize;

/// Timers fire up to this late (scheduling latency); the keeper's margin must cover it.
const TIMER_JITTER_MS: u64 = 2;

/// Appends a line to the trace, formatting nothing unless tracing is on.
macro_rules! tr {
    ($sim:expr, $($arg:tt)*) => {
        if $sim.config.trace {
            let line = format!($($arg)*);
            $sim.trace.push(format!("{:>7} {}", $sim.now, line));
        }
    };
}

mod faults;
mod master;
mod network;
mod nodemanager;
mod outcome;
mod server;

use master::Tenure;
use network::{Node, Payload};
use nodemanager::{Nm, NmItem};
pub use outcome::{Outcome, Stats};
use server::{Instance, InstanceItem};

/// What the queue holds. An event for a host carries the boot it was meant for, so one
/// scheduled before a power loss does not reach the machine's next life.
#[derive(Debug, Clone)]
enum Event {
    Deliver {
        to: Node,
        boot: u32,
        payload: Payload,
    },
    InstanceWake(InstanceId),
    InstanceStarted(InstanceId),
    NmWake {
        host: HostId,
        boot: u32,
    },
    /// A process of `host` ended; its Node Manager hears of it.
    NmExit {
        host: HostId,
        boot: u32,
        server: ServerName,
        incarnation: Incarnation,
        code: Option<i32>,
        why: String,
    },
    AdminStart(usize),
    Fault(usize),
    Reboot {
        host: HostId,
        boot: u32,
    },
    Thaw {
        host: HostId,
        token: u64,
        then_cut_ms: Option<u64>,
    },
    Resume(InstanceId),
    Uncut(u64),
    Unslow(u64),
    StoreBack(u64),
    /// The end of an authority change's outage: the new authority takes over.
    NewAuthority {
        outage: u64,
        clock_offset_ms: i64,
    },
    FaultPhase,
    Heal,
    Operator,
    End,
}

/// An event in the queue, at a true instant; `seq` keeps insertion order among equals.
struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: the heap pops the earliest time, then the earliest scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A machine, or the store's host: its clock, whether it is up or frozen, its Node Manager.
struct Host {
    name: String,
    /// `None` for the store's host.
    machine: Option<MachineName>,
    clock: HostClock,
    up: bool,
    frozen: bool,
    /// Counts freezes, so only the thaw of the latest one thaws it.
    freeze_token: u64,
    /// Counts power losses.
    boot: u32,
    /// `None` while the machine is down, and on the store's host.
    nm: Option<Nm>,
}

/// One run: the whole simulated world, and the queue of what happens next.
pub struct Sim {
    config: SimConfig,
    scenario: Scenario,
    /// The scenario's domain, as every Node Manager and planner reads it.
    domain: Domain,
    bugs: Bugs,
    /// The one source of randomness, seeded from the seed.
    rng: StdRng,
    /// True time, in ms.
    now: u64,
    /// How many events were ever scheduled (the tie-breaker of `Scheduled`).
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    /// The machines, then the store's host.
    hosts: Vec<Host>,
    store_host: HostId,
    store: Store,
    /// The store outages under way, by id; the store answers "unavailable" while any is.
    store_outages: BTreeSet<u64>,
    /// The authority an `AuthorityChange` deposed (a consensus leader cut off from the
    /// majority), still answering the renewals of the holders that reach it while it may.
    deposed: Option<Deposed>,
    net: Net,
    /// Every server process that ever started, by id.
    instances: Vec<Instance>,
    /// The ones still alive.
    alive: BTreeSet<InstanceId>,
    /// Every stretch of any process in the master role, and those not ended.
    tenures: Vec<Tenure>,
    active_tenures: BTreeSet<usize>,
    checker: Checker,
    stats: Stats,
    trace: Vec<String>,
    /// The last id handed out to a request, command, cut or outage.
    next_id: u64,
    server_timing: KeeperTiming,
    master_timing: KeeperTiming,
    planner_timing: MasterTiming,
    policy: RestartPolicy,
    /// How often a master scans the lease table (besides when a lease runs out).
    scan_interval_ms: u64,
    /// How long a master waits for a Node Manager's answer.
    command_timeout_ms: u64,
    master_lease: LeaseName,
    /// The faults stopped.
    healed: bool,
    /// When the operator ran `start-cluster` after healing, if it had to.
    operator_at_ms: Option<u64>,
    /// When a process in the master role died.
    master_died_at: Vec<u64>,
}

/// How the trace and the violations name a process: `SERVER#INSTANCE@HOST`.
fn who(instances: &[Instance], hosts: &[Host], i: InstanceId) -> String {
    let instance = &instances[i];
    format!("{}#{}@{}", instance.server, i, hosts[instance.host].name)
}

/// Runs one seed with its generated scenario.
pub fn run(cfg: &SimConfig) -> Outcome {
    run_scenario(cfg, Scenario::generate(cfg))
}

/// Runs a given (possibly hand-edited) scenario.
pub fn run_scenario(cfg: &SimConfig, scenario: Scenario) -> Outcome {
    Sim::new(cfg, scenario).run()
}

/// A deposed store authority: a copy of the table as it was when it lost the majority,
/// renewing (in its memory only: renewals are not replicated) until its last confirmation
/// of leadership runs out, as `ferry_core::leadership` rules, or for as long as it lives
/// with the `leader_unconfirmed_renews` planted bug. The new authority's rows are the
/// replicated ones, which these renewals never reach: a renewal it grants must not outlive
/// the instant the new authority may expire the lease.
#[derive(Debug)]
pub(crate) struct Deposed {
    pub(crate) store: Store,
    /// True time until which it answers renewals.
    pub(crate) serves_until: u64,
    /// True time at which it is gone (healed: it hears of the new term).
    pub(crate) gone_at: u64,
    /// The new authority has been elected (its rows then decide the check).
    pub(crate) replaced: bool,
}

impl Sim {
    pub fn new(cfg: &SimConfig, scenario: Scenario) -> Sim {
        let domain = scenario.domain();
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let bugs = cfg.bugs;
        // The Node Manager's policy, as ferry-nodemanager uses it.
        let policy = RestartPolicy::default();
        let mut hosts = Vec::new();
        for (i, m) in scenario.machines.iter().enumerate() {
            let clock = HostClock::new(
                scenario.host_drift_ppm[i],
                rng.gen_range(10_000..10_000_000),
                0,
                rng.gen_range(-60_000..60_000),
            );
            hosts.push(Host {
                name: m.to_string(),
                machine: Some(m.clone()),
                clock,
                up: true,
                frozen: false,
                freeze_token: 0,
                boot: 0,
                nm: Some(Nm::new(m.clone(), policy, bugs)),
            });
        }
        let store_host = hosts.len();
        let store_clock = HostClock::new(scenario.store_drift_ppm, rng.gen_range(10_000..10_000_000), 0, 0);
        hosts.push(Host {
            name: "db".into(),
            machine: None,
            clock: store_clock.clone(),
            up: true,
            frozen: false,
            freeze_token: 0,
            boot: 0,
            nm: None,
        });
        let interval = Duration::from_millis(scenario.interval_ms);
        let mut server_timing = KeeperTiming::new(interval, scenario.periods);
        server_timing.bugs = bugs;
        if scenario.acquire_patience {
            // As ferry-server: long enough for a dead holder's lease to run out.
            server_timing.acquire_patience_ms = Some(scenario.ttl_ms() + 2 * scenario.interval_ms);
        }
        let mut master_timing = KeeperTiming::new(interval, scenario.periods);
        master_timing.bugs = bugs;
        let planner_timing = Planner::new(scenario.cluster.clone()).timing(&domain);
        let mut net = Net::default();
        net.max_delay_ms = scenario.max_delay_ms;
        // Loss and long delays are faults: they start with the fault phase.
        net.long_ms = (scenario.interval_ms / 2, 4 * scenario.ttl_ms());
        Sim {
            config: cfg.clone(),
            master_lease: LeaseName::Master(scenario.cluster.clone()),
            // As ferry-server's master: a scan every interval (and when a lease runs out), a
            // Node Manager call bounded by twice the interval within 0.2 to 2 s, at least 1 s.
            scan_interval_ms: scenario.interval_ms,
            command_timeout_ms: (2 * scenario.interval_ms).clamp(100, 1_000),
            domain,
            bugs,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            hosts,
            store_host,
            store: Store::new(store_clock),
            store_outages: BTreeSet::new(),
            deposed: None,
            net,
            instances: Vec::new(),
            alive: BTreeSet::new(),
            tenures: Vec::new(),
            active_tenures: BTreeSet::new(),
            checker: Checker::default(),
            stats: Stats::default(),
            trace: Vec::new(),
            next_id: 0,
            server_timing,
            master_timing,
            planner_timing,
            policy,
            scenario,
            healed: false,
            operator_at_ms: None,
            master_died_at: Vec::new(),
        }
    }

    /// The time a migratable server gets to run again once the faults stop: DESIGN §3's
    /// bound, plus a master takeover, plus whatever a planner or Node Manager may still be
    /// waiting out from the fault phase, plus slack for messages still in flight.
    pub fn heal_bound_ms(&self) -> u64 {
        let ttl = self.scenario.ttl_ms();
        let interval = self.scenario.interval_ms;
        let design = self.design_bound_ms();
        let takeover = self.takeover_ms();
        // A planner track may be waiting for a start to time out or for its backoff, and
        // unreachable machines each cost a command timeout. (Node Manager restart backoffs
        // do not count: the master's start does not wait for them.)
        let leftovers = self.planner_timing.start_timeout_ms
            + self.scenario.retry_delay_ms
            + self.scenario.machines.len() as u64 * self.command_timeout_ms;
        // Messages of the fault phase still in flight (long delays, slow links), retries.
        let slack = 8 * ttl + 4 * interval + 500;
        design + takeover + leftovers + slack
    }

    /// DESIGN §3: interval × periods + grace + one scan + start time.
    pub fn design_bound_ms(&self) -> u64 {
        self.scenario.ttl_ms() + self.scenario.grace_ms + self.scan_interval_ms + self.scenario.start_ms.1
    }

    /// The master lease's own expiry, one acquisition retry, and the new master's first scan.
    pub fn takeover_ms(&self) -> u64 {
        self.master_timing.ttl_ms + self.scenario.interval_ms + self.scan_interval_ms
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled { at, seq: self.seq, event });
    }

    fn local(&self, h: HostId) -> Mono {
        self.hosts[h].clock.mono(self.now)
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn who(&self, i: InstanceId) -> String {
        who(&self.instances, &self.hosts, i)
    }

    fn paused(&self, i: InstanceId) -> bool {
        self.instances[i].hung || self.hosts[self.instances[i].host].frozen
    }

    pub fn run(mut self) -> Outcome {
        // Figure 7-1: start-cluster asks each home machine's Node Manager to start its servers.
        for s in 0..self.scenario.servers.len() {
            let at = self.rng.gen_range(0..50);
            self.schedule(at, Event::AdminStart(s));
        }
        self.schedule(FAULTS_FROM_MS, Event::FaultPhase);
        for f in 0..self.scenario.faults.len() {
            self.schedule(self.scenario.faults[f].0, Event::Fault(f));
        }
        self.schedule(FAULTS_FROM_MS, Event::Operator);
        let heal_at = self.scenario.heal_at_ms;
        let bound = self.heal_bound_ms();
        let end = heal_at + bound + 2_000;
        self.schedule(heal_at, Event::Heal);
        self.schedule(end, Event::End);
        tr!(self, "domain:\n{}", self.scenario.domain_toml());
        while let Some(next) = self.queue.pop() {
            self.now = next.at;
            self.stats.events += 1;
            if matches!(next.event, Event::End) {
                break;
            }
            self.dispatch(next.event);
        }
        self.finish(heal_at, bound, end)
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Deliver { to, boot, payload } => self.deliver(to, boot, payload),
            Event::InstanceWake(i) => {
                if self.instances[i].wake_at == Some(self.now) {
                    self.instances[i].wake_at = None;
                }
                self.instance_poll(i);
            }
            Event::InstanceStarted(i) => {
                if !self.instances[i].alive {
                } else if self.paused(i) {
                    self.instances[i].inbox.push_back(InstanceItem::Started);
                } else {
                    self.instance_start(i);
                }
            }
            Event::NmWake { host, boot } => {
                if !self.nm_running(host, boot) {
                    return;
                }
                let nm = self.hosts[host].nm.as_mut().expect("running");
                if nm.wake_at == Some(self.now) {
                    nm.wake_at = None;
                }
                self.nm_tick(host);
            }
            Event::NmExit { host, boot, server, incarnation, code, why } => {
                if !self.hosts[host].up || self.hosts[host].boot != boot || self.hosts[host].nm.is_none() {
                } else if self.hosts[host].frozen {
                    let nm = self.hosts[host].nm.as_mut().expect("up");
                    nm.inbox.push_back(NmItem::Exit { server, incarnation, code, why });
                } else {
                    self.nm_exited(host, &server, &incarnation, code, &why);
                }
            }
            Event::AdminStart(s) => {
                let (home, server) = (self.scenario.servers[s].home, self.scenario.servers[s].name.clone());
                if self.nm_running(home, self.hosts[home].boot) {
                    self.nm_start(home, &server);
                }
            }
            Event::Fault(f) => {
                let fault = self.scenario.faults[f].1.clone();
                self.stats.faults += 1;
                self.inject(fault);
            }
            Event::Reboot { host, boot } => {
                if !self.hosts[host].up && self.hosts[host].boot == boot {
                    self.reboot(host);
                }
            }
            Event::Thaw { host, token, then_cut_ms } => {
                let h = &self.hosts[host];
                if h.up && h.frozen && h.freeze_token == token {
                    if let Some(ms) = then_cut_ms {
                        self.cut(host, Links::Full, ms);
                    }
                    self.thaw(host);
                }
            }
            Event::Resume(i) => self.resume(i),
            Event::Uncut(id) => self.net.uncut(id),
            Event::Unslow(id) => self.net.unslow(id),
            Event::StoreBack(id) => {
                self.store_outages.remove(&id);
            }
            Event::NewAuthority { outage, clock_offset_ms } => {
                self.store_outages.remove(&outage);
                self.new_authority(clock_offset_ms);
                if let Some(d) = self.deposed.as_mut() {
                    d.replaced = true;
                }
            }
            Event::FaultPhase => {
                self.net.loss = self.scenario.loss;
                self.net.long_p = self.scenario.long_p;
            }
            Event::Heal => self.heal(),
            Event::Operator => self.operator(),
            Event::End => {}
        }
    }

    fn finish(mut self, heal_at: u64, bound: u64, end: u64) -> Outcome {
        let base = self.operator_at_ms.unwrap_or(heal_at).max(heal_at);
        let slowest_recovery_ms = self.checker.liveness(&self.scenario.servers, heal_at, base, bound, end);
        self.now = end;
        Outcome {
            slowest_recovery_ms,
            design_bound_ms: self.design_bound_ms(),
            takeover_ms: self.takeover_ms(),
            cmd_timeout_ms: self.command_timeout_ms,
            master_died_at: self.master_died_at,
            seed: self.config.seed,
            violations: self.checker.violations,
            runs: self.checker.runs,
            stats: self.stats,
            trace: self.trace,
            heal_at_ms: heal_at,
            bound_ms: bound,
            end_ms: end,
            scenario: self.scenario,
        }
    }
}
