//! The discrete-event simulator: hosts with their own clocks, a Node Manager per machine
//! running the core's `Supervisor`, `ferry server` processes each running a `Keeper` for
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
type InstId = usize;

/// Timers fire up to this late (scheduling latency); the keeper's margin must cover it.
const TIMER_JITTER_MS: u64 = 2;

/// Appends a line to the trace, formatting nothing unless tracing is on.
macro_rules! tr {
    ($sim:expr, $($arg:tt)*) => {
        if $sim.cfg.trace {
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
use server::{Inst, InstItem};

#[derive(Debug, Clone)]
enum Ev {
    Deliver {
        to: Node,
        boot: u32,
        payload: Payload,
    },
    InstWake(InstId),
    InstStarted(InstId),
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
    Resume(InstId),
    Uncut(u64),
    Unslow(u64),
    StoreBack(u64),
    FaultPhase,
    Heal,
    Operator,
    End,
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    /// Reversed: the heap pops the earliest time, then the earliest scheduled.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct Host {
    name: String,
    machine: Option<MachineName>,
    clock: HostClock,
    up: bool,
    frozen: bool,
    freeze_token: u64,
    boot: u32,
    nm: Option<Nm>,
}

pub struct Sim {
    cfg: SimConfig,
    sc: Scenario,
    domain: Domain,
    bugs: Bugs,
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    hosts: Vec<Host>,
    db: HostId,
    store: Store,
    store_outages: BTreeSet<u64>,
    net: Net,
    insts: Vec<Inst>,
    alive: BTreeSet<InstId>,
    tenures: Vec<Tenure>,
    active_tenures: BTreeSet<usize>,
    checker: Checker,
    stats: Stats,
    trace: Vec<String>,
    next_id: u64,
    server_timing: KeeperTiming,
    master_timing: KeeperTiming,
    planner_timing: MasterTiming,
    policy: RestartPolicy,
    scan_ms: u64,
    cmd_timeout_ms: u64,
    master_lease: LeaseName,
    healed: bool,
    operator_at_ms: Option<u64>,
    master_died_at: Vec<u64>,
}

/// How the trace and the violations name a process: `SERVER#INSTANCE@HOST`.
fn who(insts: &[Inst], hosts: &[Host], i: InstId) -> String {
    let inst = &insts[i];
    format!("{}#{}@{}", inst.server, i, hosts[inst.host].name)
}

/// Runs one seed with its generated scenario.
pub fn run(cfg: &SimConfig) -> Outcome {
    run_scenario(cfg, Scenario::generate(cfg))
}

/// Runs a given (possibly hand-edited) scenario.
pub fn run_scenario(cfg: &SimConfig, sc: Scenario) -> Outcome {
    Sim::new(cfg, sc).run()
}

impl Sim {
    pub fn new(cfg: &SimConfig, sc: Scenario) -> Sim {
        let domain = sc.domain();
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let bugs = cfg.bugs;
        // The Node Manager's policy, as ferry-nodemanager uses it.
        let policy = RestartPolicy::default();
        let mut hosts = Vec::new();
        for (i, m) in sc.machines.iter().enumerate() {
            let clock = HostClock::new(
                sc.host_drift_ppm[i],
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
        let db = hosts.len();
        let store_clock = HostClock::new(sc.store_drift_ppm, rng.gen_range(10_000..10_000_000), 0, 0);
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
        let interval = Duration::from_millis(sc.interval_ms);
        let mut server_timing = KeeperTiming::new(interval, sc.periods);
        server_timing.bugs = bugs;
        if sc.acquire_patience {
            // As ferry-server: long enough for a dead holder's lease to run out.
            server_timing.acquire_patience_ms = Some(sc.ttl_ms() + 2 * sc.interval_ms);
        }
        let mut master_timing = KeeperTiming::new(interval, sc.periods);
        master_timing.bugs = bugs;
        let planner_timing = Planner::new(sc.cluster.clone()).timing(&domain);
        let mut net = Net::default();
        net.max_delay_ms = sc.max_delay_ms;
        // Loss and long delays are faults: they start with the fault phase.
        net.long_ms = (sc.interval_ms / 2, 4 * sc.ttl_ms());
        Sim {
            cfg: cfg.clone(),
            master_lease: LeaseName::Master(sc.cluster.clone()),
            // As ferry-server's master: a scan every interval (and when a lease runs out), a
            // Node Manager call bounded by twice the interval within 0.2 to 2 s, at least 1 s.
            scan_ms: sc.interval_ms,
            cmd_timeout_ms: (2 * sc.interval_ms).clamp(100, 1_000),
            domain,
            bugs,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            hosts,
            db,
            store: Store::new(store_clock),
            store_outages: BTreeSet::new(),
            net,
            insts: Vec::new(),
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
            sc,
            healed: false,
            operator_at_ms: None,
            master_died_at: Vec::new(),
        }
    }

    /// The time a migratable server gets to run again once the faults stop: DESIGN §3's
    /// bound, plus a master takeover, plus whatever a planner or Node Manager may still be
    /// waiting out from the fault phase, plus slack for messages still in flight.
    pub fn heal_bound_ms(&self) -> u64 {
        let ttl = self.sc.ttl_ms();
        let interval = self.sc.interval_ms;
        let design = self.design_bound_ms();
        let takeover = self.takeover_ms();
        // A planner track may be waiting for a start to time out or for its backoff, and
        // unreachable machines each cost a command timeout. (Node Manager restart backoffs
        // do not count: the master's start does not wait for them.)
        let leftovers = self.planner_timing.start_timeout_ms
            + self.sc.retry_delay_ms
            + self.sc.machines.len() as u64 * self.cmd_timeout_ms;
        // Messages of the fault phase still in flight (long delays, slow links), retries.
        let slack = 8 * ttl + 4 * interval + 500;
        design + takeover + leftovers + slack
    }

    /// DESIGN §3: interval × periods + grace + one scan + start time.
    pub fn design_bound_ms(&self) -> u64 {
        self.sc.ttl_ms() + self.sc.grace_ms + self.scan_ms + self.sc.start_ms.1
    }

    /// The master lease's own expiry, one acquisition retry, and the new master's first scan.
    pub fn takeover_ms(&self) -> u64 {
        self.master_timing.ttl_ms + self.sc.interval_ms + self.scan_ms
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled { at, seq: self.seq, ev });
    }

    fn local(&self, h: HostId) -> Mono {
        self.hosts[h].clock.mono(self.now)
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn who(&self, i: InstId) -> String {
        who(&self.insts, &self.hosts, i)
    }

    fn paused(&self, i: InstId) -> bool {
        self.insts[i].hung || self.hosts[self.insts[i].host].frozen
    }

    pub fn run(mut self) -> Outcome {
        // Figure 7-1: start-cluster asks each home machine's Node Manager to start its servers.
        for s in 0..self.sc.servers.len() {
            let at = self.rng.gen_range(0..50);
            self.schedule(at, Ev::AdminStart(s));
        }
        self.schedule(FAULTS_FROM_MS, Ev::FaultPhase);
        for f in 0..self.sc.faults.len() {
            self.schedule(self.sc.faults[f].0, Ev::Fault(f));
        }
        self.schedule(FAULTS_FROM_MS, Ev::Operator);
        let heal_at = self.sc.heal_at_ms;
        let bound = self.heal_bound_ms();
        let end = heal_at + bound + 2_000;
        self.schedule(heal_at, Ev::Heal);
        self.schedule(end, Ev::End);
        tr!(self, "domain:\n{}", self.sc.domain_toml());
        while let Some(s) = self.queue.pop() {
            self.now = s.at;
            self.stats.events += 1;
            if matches!(s.ev, Ev::End) {
                break;
            }
            self.dispatch(s.ev);
        }
        self.finish(heal_at, bound, end)
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { to, boot, payload } => self.deliver(to, boot, payload),
            Ev::InstWake(i) => {
                if self.insts[i].wake_at == Some(self.now) {
                    self.insts[i].wake_at = None;
                }
                self.inst_poll(i);
            }
            Ev::InstStarted(i) => {
                if !self.insts[i].alive {
                } else if self.paused(i) {
                    self.insts[i].inbox.push_back(InstItem::Started);
                } else {
                    self.inst_start(i);
                }
            }
            Ev::NmWake { host, boot } => {
                if !self.nm_running(host, boot) {
                    return;
                }
                let nm = self.hosts[host].nm.as_mut().expect("running");
                if nm.wake_at == Some(self.now) {
                    nm.wake_at = None;
                }
                self.nm_tick(host);
            }
            Ev::NmExit { host, boot, server, incarnation, code, why } => {
                if !self.hosts[host].up || self.hosts[host].boot != boot || self.hosts[host].nm.is_none() {
                } else if self.hosts[host].frozen {
                    let nm = self.hosts[host].nm.as_mut().expect("up");
                    nm.inbox.push_back(NmItem::Exit { server, incarnation, code, why });
                } else {
                    self.nm_exited(host, &server, &incarnation, code, &why);
                }
            }
            Ev::AdminStart(s) => {
                let (home, server) = (self.sc.servers[s].home, self.sc.servers[s].name.clone());
                if self.nm_running(home, self.hosts[home].boot) {
                    self.nm_start(home, &server);
                }
            }
            Ev::Fault(f) => {
                let fault = self.sc.faults[f].1.clone();
                self.stats.faults += 1;
                self.inject(fault);
            }
            Ev::Reboot { host, boot } => {
                if !self.hosts[host].up && self.hosts[host].boot == boot {
                    self.reboot(host);
                }
            }
            Ev::Thaw { host, token, then_cut_ms } => {
                let h = &self.hosts[host];
                if h.up && h.frozen && h.freeze_token == token {
                    if let Some(ms) = then_cut_ms {
                        self.cut(host, Links::Full, ms);
                    }
                    self.thaw(host);
                }
            }
            Ev::Resume(i) => self.resume(i),
            Ev::Uncut(id) => self.net.uncut(id),
            Ev::Unslow(id) => self.net.unslow(id),
            Ev::StoreBack(id) => {
                self.store_outages.remove(&id);
            }
            Ev::FaultPhase => {
                self.net.loss = self.sc.loss;
                self.net.long_p = self.sc.long_p;
            }
            Ev::Heal => self.heal(),
            Ev::Operator => self.operator(),
            Ev::End => {}
        }
    }

    fn finish(mut self, heal_at: u64, bound: u64, end: u64) -> Outcome {
        let base = self.operator_at_ms.unwrap_or(heal_at).max(heal_at);
        let slowest_recovery_ms = self.checker.liveness(&self.sc.servers, heal_at, base, bound, end);
        self.now = end;
        Outcome {
            slowest_recovery_ms,
            design_bound_ms: self.design_bound_ms(),
            takeover_ms: self.takeover_ms(),
            cmd_timeout_ms: self.cmd_timeout_ms,
            master_died_at: self.master_died_at,
            seed: self.cfg.seed,
            violations: self.checker.violations,
            runs: self.checker.runs,
            stats: self.stats,
            trace: self.trace,
            heal_at_ms: heal_at,
            bound_ms: bound,
            end_ms: end,
            scenario: self.sc,
        }
    }
}
