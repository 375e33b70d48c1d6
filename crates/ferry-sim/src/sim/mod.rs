//! The discrete-event simulator: hosts with their own clocks, a Node Manager per machine
//! running the core's `Supervisor`, `ferry server` processes each running a `Keeper` for
//! their server lease, a `Keeper` for the cluster-master lease and, while they hold it, a
//! `Planner`; one lease store; a lossy, partitionable network. Events sit in one queue
//! ordered by true time and then by insertion, so a seed replays exactly.
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
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

use ferry_core::domain::Domain;
use ferry_core::keeper::{Keeper, KeeperAction, KeeperState, KeeperTiming};
use ferry_core::lease::Lease;
use ferry_core::master::{CommandResult, MasterAction, MasterTiming, Planner};
use ferry_core::nodeman::agent::{CommandId, ServerReport};
use ferry_core::nodeman::{Action, Command, NodeManager, NodeManagerTiming, Origin, Refusal, RestartPolicy};
use ferry_core::time::Bugs;
use ferry_core::{ClusterName, Epoch, Incarnation, LeaseName, MachineName, Mono, ServerName};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::check::{Checker, Property, Run, Violation};
use crate::clock::HostClock;
use crate::net::Net;
use crate::scenario::{Fault, Links, ProcTarget, Scenario, SimConfig, Target, FAULTS_FROM_MS};
use crate::store::{Acquire, Store, StoreError};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Store,
    Nm(HostId),
    Inst(InstId),
}

#[derive(Debug, Clone)]
enum StoreOp {
    Acquire(Acquire),
    Renew { name: LeaseName, incarnation: Incarnation, epoch: Epoch, ttl_ms: u64 },
    List,
}

#[derive(Debug, Clone)]
enum StoreReply {
    /// A grant, with the true instant the store will consider it expired (known to the
    /// checker only; the holder sees the `Lease`).
    Lease(Lease, u64),
    Leases(Vec<Lease>),
    Refused(StoreError),
    Unavailable,
}

#[derive(Debug, Clone)]
enum Payload {
    StoreReq {
        req: u64,
        from: InstId,
        op: StoreOp,
    },
    StoreResp {
        req: u64,
        reply: StoreReply,
    },
    Command {
        id: u64,
        from: InstId,
        tenure: usize,
        cluster: ClusterName,
        epoch: Epoch,
        server: ServerName,
        in_place: bool,
    },
    CommandResp {
        id: u64,
        result: CommandResult,
    },
    Heartbeat {
        from: InstId,
        epoch: Epoch,
    },
}

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

enum NmItem {
    Msg(Payload),
    Exit { server: ServerName, incarnation: Incarnation, code: Option<i32>, why: String },
}

/// A machine's Node Manager: ferry-core's, plus what the simulation needs around it.
struct Nm {
    core: NodeManager,
    /// Highest master epoch that arrived here, for the checker (property 3).
    seen: BTreeMap<ClusterName, Epoch>,
    /// Work that arrived while the host was frozen.
    inbox: VecDeque<NmItem>,
    wake_at: Option<u64>,
    next_id: CommandId,
    /// Commands of cluster masters waiting for the Node Manager's answer: who, which.
    waiting: BTreeMap<CommandId, (InstId, u64)>,
}

impl Nm {
    fn new(machine: MachineName, policy: RestartPolicy, bugs: Bugs) -> Self {
        let mut core = NodeManager::new(machine, policy, NodeManagerTiming::default());
        core.supervisor.bugs = bugs;
        Nm { core, seen: BTreeMap::new(), inbox: VecDeque::new(), wake_at: None, next_id: 0, waiting: BTreeMap::new() }
    }
}

/// The pid the Node Manager knows an instance by.
fn pid_of(i: InstId) -> i32 {
    i32::try_from(i + 1).unwrap_or(i32::MAX)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqKind {
    Acquire,
    Renew,
    List,
}

#[derive(Debug, Clone, Copy)]
struct Req {
    id: u64,
    kind: ReqKind,
    timeout_at: Mono,
}

struct Cmd {
    server: ServerName,
    machine: MachineName,
    timeout_at: Mono,
}

enum InstItem {
    Msg(Payload),
    Started,
}

/// One `ferry server` process (an incarnation).
struct Inst {
    server: ServerName,
    host: HostId,
    incarnation: Incarnation,
    alive: bool,
    hung: bool,
    started: bool,
    keeper: Option<Keeper>,
    handover_from: Option<Incarnation>,
    req: Option<Req>,
    services_up: bool,
    epoch: Epoch,
    /// The latest true instant the store granted this process's server lease until.
    granted_until: u64,
    /// The same for its master lease.
    mgranted_until: u64,
    // The cluster-master side of the process.
    mk: Option<Keeper>,
    mreq: Option<Req>,
    tenure: Option<usize>,
    planner: Option<Planner>,
    scan: Option<Req>,
    next_scan: Mono,
    next_hb: Mono,
    cmds: BTreeMap<u64, Cmd>,
    last_hb: Mono,
    hb_epoch: Epoch,
    inbox: VecDeque<InstItem>,
    wake_at: Option<u64>,
}

/// One stretch of one process acting as cluster master.
struct Tenure {
    inst: InstId,
    epoch: Epoch,
    /// False for a usurper (the `master_no_wait` planted bug).
    legit: bool,
    start_ms: u64,
    end_ms: Option<u64>,
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
        let inst = &self.insts[i];
        format!("{}#{}@{}", inst.server, i, self.hosts[inst.host].name)
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

    // ---------------------------------------------------------------- network and store

    fn host_of(&self, n: Node) -> HostId {
        match n {
            Node::Store => self.db,
            Node::Nm(h) => h,
            Node::Inst(i) => self.insts[i].host,
        }
    }

    fn send(&mut self, from: HostId, to: Node, payload: Payload) {
        let to_host = self.host_of(to);
        self.stats.messages += 1;
        match self.net.delay(&mut self.rng, from, to_host) {
            None => {
                self.stats.lost += 1;
                tr!(self, "  lost {} -> {}: {:?}", self.hosts[from].name, self.hosts[to_host].name, payload);
            }
            Some(d) => {
                let boot = self.hosts[to_host].boot;
                self.schedule(self.now + d, Ev::Deliver { to, boot, payload });
            }
        }
    }

    fn deliver(&mut self, to: Node, boot: u32, payload: Payload) {
        match to {
            Node::Store => self.store_handle(payload),
            Node::Nm(h) => {
                if !self.hosts[h].up || self.hosts[h].boot != boot {
                    return;
                }
                if self.hosts[h].frozen {
                    let nm = self.hosts[h].nm.as_mut().expect("up");
                    nm.inbox.push_back(NmItem::Msg(payload));
                    return;
                }
                self.nm_handle(h, payload);
            }
            Node::Inst(i) => {
                if !self.insts[i].alive {
                    return;
                }
                if self.paused(i) {
                    self.insts[i].inbox.push_back(InstItem::Msg(payload));
                    return;
                }
                self.inst_handle(i, payload);
            }
        }
    }

    fn store_handle(&mut self, payload: Payload) {
        let Payload::StoreReq { req, from, op } = payload else {
            return;
        };
        let reply = if !self.store_outages.is_empty() {
            StoreReply::Unavailable
        } else {
            match op {
                StoreOp::Acquire(a) => {
                    let before = self.store.epoch(&a.name);
                    let r = self.store.acquire(self.now, &a);
                    let after = self.store.epoch(&a.name);
                    if after < before {
                        let detail = format!("store epoch of {} went from {before} back to {after}", a.name);
                        self.checker.violate(Property::Epoch, self.now, detail);
                    }
                    match r {
                        Ok(l) => self.granted(l),
                        Err(e) => StoreReply::Refused(e),
                    }
                }
                StoreOp::Renew { name, incarnation, epoch, ttl_ms } => {
                    match self.store.renew(self.now, &name, &incarnation, epoch, ttl_ms) {
                        Ok(l) => self.granted(l),
                        Err(e) => StoreReply::Refused(e),
                    }
                }
                StoreOp::List => StoreReply::Leases(self.store.list(self.now)),
            }
        };
        if self.cfg.trace {
            let said = match &reply {
                StoreReply::Lease(l, _) => format!("granted {} epoch {} ({} ms)", l.name, l.epoch, l.remaining_ms),
                StoreReply::Leases(l) => format!("{} rows", l.len()),
                StoreReply::Refused(e) => format!("refused: {e:?}"),
                StoreReply::Unavailable => "unavailable".into(),
            };
            tr!(self, "  store -> {}: {said}", self.who(from));
        }
        self.send(self.db, Node::Inst(from), Payload::StoreResp { req, reply });
    }

    /// A grant as the holder receives it, tagged with the true instant of its expiry.
    fn granted(&self, l: Lease) -> StoreReply {
        let store_now = self.store.clock.mono(self.now);
        let expires = Mono((store_now.0 as i64 + l.remaining_ms).max(0) as u64);
        let until = self.store.clock.true_at(expires, self.now);
        StoreReply::Lease(l, until)
    }

    /// Rule 2: the holder's local deadline, in true time and with its timer's worst latency,
    /// must fall before the store's expiry of what it was granted.
    fn check_deadline(&mut self, i: InstId, which: &str, at: Mono, granted_until: u64) {
        let h = self.insts[i].host;
        let fence_by = self.hosts[h].clock.true_at(at, 0) + TIMER_JITTER_MS;
        if fence_by >= granted_until {
            let detail = format!(
                "{} moves its {which} lease deadline to {at} (true {fence_by} ms) but the store expires it at {granted_until} ms",
                self.who(i)
            );
            self.checker.violate(Property::FenceBeforeExpiry, self.now, detail);
        }
    }

    // ---------------------------------------------------------------- Node Manager
    //
    // The Node Manager is ferry-core's `NodeManager`, the very code ferry-nodemanager runs:
    // the simulation only performs its actions (instantly: a lease read is the store's row
    // now, plumbing succeeds, a spawn is a new instance) and feeds the outcomes back.

    fn nm_running(&self, h: HostId, boot: u32) -> bool {
        let host = &self.hosts[h];
        host.up && host.boot == boot && !host.frozen && host.nm.is_some()
    }

    /// Whether machine `h` can read the lease table right now.
    fn nm_reads_store(&self, h: HostId) -> bool {
        self.store_outages.is_empty() && !self.net.blocked(h, self.db) && !self.net.blocked(self.db, h)
    }

    fn nm_handle(&mut self, h: HostId, payload: Payload) {
        let Payload::Command { id, from, tenure, cluster, epoch, server, in_place } = payload else {
            return;
        };
        let local = self.local(h);
        let nm = self.hosts[h].nm.as_mut().expect("up");
        let seen = nm.seen.get(&cluster).copied().unwrap_or_default();
        nm.seen.insert(cluster.clone(), seen.max(epoch));
        nm.next_id += 1;
        let cid = nm.next_id;
        nm.waiting.insert(cid, (from, id));
        let origin = Origin::Master { cluster: cluster.clone(), epoch, server: self.insts[from].server.clone() };
        let actions = nm.core.command(local, &self.domain, cid, &server, origin, Command::Start { in_place });
        let stale = actions.iter().any(|a| matches!(a, Action::Reply { result: Err(Refusal::StaleMaster(_)), .. }));
        if stale {
            self.stats.stale_rejected += 1;
            tr!(self, "nm {} refuses start {server} from tenure {tenure}: stale master epoch {epoch}", self.hosts[h].name);
        } else if epoch < seen {
            let detail = format!(
                "Node Manager on {} executes `start {server}` from master tenure {tenure} at epoch {epoch}, after epoch {seen} reached it",
                self.hosts[h].name
            );
            self.checker.violate(Property::StaleCommand, self.now, detail);
        } else {
            tr!(self, "nm {} takes start {server} (in place: {in_place}, master epoch {epoch})", self.hosts[h].name);
        }
        self.nm_perform(h, actions);
    }

    /// An operator's (or the scenario's) start of `server` on its Node Manager.
    fn nm_start(&mut self, h: HostId, server: &ServerName) {
        let local = self.local(h);
        let nm = self.hosts[h].nm.as_mut().expect("up");
        nm.next_id += 1;
        let cid = nm.next_id;
        let actions =
            nm.core.command(local, &self.domain, cid, server, Origin::Admin, Command::Start { in_place: false });
        self.nm_perform(h, actions);
    }

    /// Performs a Node Manager's actions, feeding each outcome back at once.
    fn nm_perform(&mut self, h: HostId, actions: Vec<Action>) {
        let mut queue = VecDeque::from(actions);
        while let Some(a) = queue.pop_front() {
            if !self.nm_running(h, self.hosts[h].boot) {
                return;
            }
            let more = self.nm_act(h, a);
            queue.extend(more);
        }
        self.nm_reschedule(h);
    }

    fn nm_act(&mut self, h: HostId, a: Action) -> Vec<Action> {
        let local = self.local(h);
        let readable = self.nm_reads_store(h);
        let rows = if readable { Some(self.store.list(self.now)) } else { None };
        let name = self.hosts[h].name.clone();
        match a {
            Action::Reply { id, result } => {
                let nm = self.hosts[h].nm.as_mut().expect("up");
                if let Some((from, cmd)) = nm.waiting.remove(&id) {
                    let result = match result {
                        Ok(_) => CommandResult::Accepted,
                        Err(r @ Refusal::AddressInUse { .. }) => CommandResult::AddressInUse(r.to_string()),
                        Err(r) => CommandResult::Refused(r.to_string()),
                    };
                    self.send(h, Node::Inst(from), Payload::CommandResp { id: cmd, result });
                }
                vec![]
            }
            Action::Event { kind, server, message, .. } => {
                match kind {
                    "restart-after-fence" => self.stats.fenced_restarts += 1,
                    "restart-in-place" => self.stats.crash_restarts += 1,
                    _ => {}
                }
                tr!(self, "nm {name} {kind} {server}: {message}");
                vec![]
            }
            Action::SetState { .. } | Action::PersistMasterEpochs { .. } | Action::Watch { .. } => vec![],
            Action::ReadLease { server } => {
                let result = match &rows {
                    Some(rows) => Ok(rows.iter().find(|l| l.server() == Some(&server)).cloned()),
                    None => Err("the lease table does not answer".to_string()),
                };
                self.hosts[h].nm.as_mut().expect("up").core.lease_read(local, &self.domain, &server, result)
            }
            Action::ReadLeases { server, cluster } => {
                let result = match &rows {
                    Some(rows) => Ok((
                        rows.iter().find(|l| l.server() == Some(&server)).cloned(),
                        rows.iter().find(|l| l.name == LeaseName::Master(cluster.clone())).cloned(),
                    )),
                    None => Err("the lease table does not answer".to_string()),
                };
                self.hosts[h].nm.as_mut().expect("up").core.leases_read(local, &self.domain, &server, result)
            }
            Action::KillSession { server, pid, fence } => {
                let target = self.inst_of_pid(h, pid);
                if let Some(i) = target {
                    let local = self.local(h);
                    if fence {
                        self.stats.nm_fences += 1;
                        tr!(self, "nm {name} fences {server}: SIGKILL of its session");
                    } else if self.insts[i].keeper.as_ref().is_some_and(|k| k.held(local).is_some()) {
                        self.stats.healthy_killed += 1;
                        tr!(self, "nm {name} kills a healthy {}", self.who(i));
                    }
                    self.inst_exit(i, None, if fence { "fenced by its Node Manager" } else { "killed by its Node Manager" });
                }
                if fence {
                    self.hosts[h].nm.as_mut().expect("up").core.fence_killed(&server, usize::from(target.is_some()));
                }
                vec![]
            }
            Action::Terminate { pid, .. } => {
                if let Some(i) = self.inst_of_pid(h, pid) {
                    self.inst_exit(i, Some(0), "stopped gracefully");
                }
                vec![]
            }
            Action::KillOrphan { server } => {
                let supervised = self.hosts[h].nm.as_ref().and_then(|nm| nm.core.pid_of(&server));
                let orphan = self
                    .alive
                    .iter()
                    .copied()
                    .find(|i| self.insts[*i].host == h && self.insts[*i].server == server && Some(pid_of(*i)) != supervised);
                if let Some(i) = orphan {
                    self.inst_exit(i, None, "killed as an orphan by its Node Manager");
                }
                self.hosts[h].nm.as_mut().expect("up").core.orphan_killed(local, &self.domain, &server, orphan.map(pid_of))
            }
            Action::Plumb { server, ip } => {
                self.hosts[h].nm.as_mut().expect("up").core.plumbed(local, &self.domain, &server, Ok(format!("{ip} added")))
            }
            Action::Mount { server } => self.hosts[h].nm.as_mut().expect("up").core.mounted(local, &self.domain, &server, Ok("mounted".into())),
            Action::Teardown { server, teardown } => {
                let ip = teardown.ip.map(|ip| Ok(format!("{ip} removed")));
                let unmount = teardown.unmount.then(|| Ok("unmounted".to_string()));
                self.hosts[h].nm.as_mut().expect("up").core.torn_down(local, &self.domain, &server, ip, unmount)
            }
            Action::ReleaseLease { server, .. } => self.hosts[h].nm.as_mut().expect("up").core.released(local, &self.domain, &server, Ok(())),
            Action::Spawn { server, handover_from } => {
                let i = self.spawn(h, &server, handover_from);
                let incarnation = self.insts[i].incarnation.clone();
                self.hosts[h].nm.as_mut().expect("up").core.spawned(local, &self.domain, &server, incarnation, Ok(pid_of(i)))
            }
        }
    }

    /// The live instance on `h` that the Node Manager knows as `pid`.
    fn inst_of_pid(&self, h: HostId, pid: i32) -> Option<InstId> {
        let i = usize::try_from(pid).ok()?.checked_sub(1)?;
        (i < self.insts.len() && self.insts[i].alive && self.insts[i].host == h).then_some(i)
    }

    fn spawn(&mut self, h: HostId, server: &ServerName, handover_from: Option<Incarnation>) -> InstId {
        let incarnation = Incarnation::from_random(self.rng.gen());
        let local = self.local(h);
        let id = self.insts.len();
        self.insts.push(Inst {
            server: server.clone(),
            host: h,
            incarnation: incarnation.clone(),
            alive: true,
            hung: false,
            started: false,
            keeper: None,
            handover_from,
            req: None,
            services_up: false,
            epoch: Epoch(0),
            granted_until: 0,
            mgranted_until: 0,
            mk: None,
            mreq: None,
            tenure: None,
            planner: None,
            scan: None,
            next_scan: local,
            next_hb: local,
            cmds: BTreeMap::new(),
            last_hb: local,
            hb_epoch: Epoch(0),
            inbox: VecDeque::new(),
            wake_at: None,
        });
        self.alive.insert(id);
        self.stats.instances += 1;
        let d = self.rng.gen_range(self.sc.start_ms.0..=self.sc.start_ms.1);
        self.schedule(self.now + d, Ev::InstStarted(id));
        tr!(self, "spawn {} (handover from {:?})", self.who(id), self.insts[id].handover_from);
        id
    }

    fn nm_tick(&mut self, h: HostId) {
        if !self.nm_running(h, self.hosts[h].boot) {
            return;
        }
        let local = self.local(h);
        let actions = self.hosts[h].nm.as_mut().expect("up").core.tick(local, &self.domain);
        self.nm_perform(h, actions);
    }

    /// A process of machine `h` ended: its Node Manager hears of it (its child's exit).
    fn nm_exited(&mut self, h: HostId, server: &ServerName, incarnation: &Incarnation, code: Option<i32>, why: &str) {
        let local = self.local(h);
        let actions = self.hosts[h].nm.as_mut().expect("up").core.exited(local, &self.domain, server, incarnation, code, why.to_string());
        self.nm_perform(h, actions);
    }

    fn nm_reschedule(&mut self, h: HostId) {
        if !self.nm_running(h, self.hosts[h].boot) {
            return;
        }
        let local = self.local(h);
        let nm = self.hosts[h].nm.as_ref().expect("up");
        let Some(w) = nm.core.next_wakeup().filter(|w| *w > local) else {
            return;
        };
        let at = self.hosts[h].clock.true_at(w, self.now) + self.rng.gen_range(0..=TIMER_JITTER_MS);
        if nm.wake_at.is_none_or(|cur| cur < self.now || at < cur) {
            let boot = self.hosts[h].boot;
            self.hosts[h].nm.as_mut().expect("up").wake_at = Some(at);
            self.schedule(at, Ev::NmWake { host: h, boot });
        }
    }

    // ---------------------------------------------------------------- server processes

    fn inst_start(&mut self, i: InstId) {
        let local = self.local(self.insts[i].host);
        let inst = &mut self.insts[i];
        inst.started = true;
        inst.keeper = Some(Keeper::new(self.server_timing, local));
        self.inst_poll(i);
    }

    /// A process ends: its services stop with it (SIGKILL of the group, or the Node
    /// Manager kills what is left when it reaps), and its Node Manager is told.
    /// `code`: its exit status (`None`: killed by a signal).
    fn inst_exit(&mut self, i: InstId, code: Option<i32>, why: &str) {
        if !self.insts[i].alive {
            return;
        }
        tr!(self, "exit {} ({code:?}): {why}", self.who(i));
        if self.insts[i].tenure.is_some() {
            self.master_died_at.push(self.now);
        }
        self.end_tenure(i, why);
        let inst = &mut self.insts[i];
        inst.alive = false;
        inst.req = None;
        inst.mreq = None;
        inst.inbox.clear();
        self.alive.remove(&i);
        if inst.services_up {
            inst.services_up = false;
            let server = inst.server.clone();
            self.checker.run_stop(self.now, &server, i);
        }
        let (h, server, incarnation) = (inst.host, inst.server.clone(), inst.incarnation.clone());
        // Its Node Manager hears of it as of its child's exit: a moment later, not inside
        // whatever action killed it.
        let boot = self.hosts[h].boot;
        self.schedule(self.now, Ev::NmExit { host: h, boot, server, incarnation, code, why: why.to_string() });
    }

    fn inst_handle(&mut self, i: InstId, payload: Payload) {
        let local = self.local(self.insts[i].host);
        match payload {
            Payload::StoreResp { req, reply } => {
                let inst = &mut self.insts[i];
                if let Some(r) = inst.req.filter(|r| r.id == req) {
                    inst.req = None;
                    self.server_reply(i, local, r.kind, reply);
                } else if let Some(r) = inst.mreq.filter(|r| r.id == req) {
                    inst.mreq = None;
                    self.master_reply(i, local, r.kind, reply);
                } else if inst.scan.is_some_and(|r| r.id == req) {
                    inst.scan = None;
                    self.scan_reply(i, local, reply);
                }
                // Otherwise: the answer to a request that timed out, dropped like the
                // connection it came on.
            }
            Payload::CommandResp { id, result } => {
                if let Some(cmd) = self.insts[i].cmds.remove(&id) {
                    let acts = match self.insts[i].planner.as_mut() {
                        Some(p) => p.on_command_result(local, &cmd.server, &cmd.machine, result, &self.domain),
                        None => vec![],
                    };
                    self.master_plan(i, acts);
                }
            }
            Payload::Heartbeat { from, epoch } => {
                let inst = &mut self.insts[i];
                inst.last_hb = local;
                inst.hb_epoch = inst.hb_epoch.max(epoch);
                if let Some(t) = inst.tenure {
                    if !self.tenures[t].legit && from != i {
                        self.end_tenure(i, "heard the master's heartbeat again");
                    }
                }
            }
            Payload::StoreReq { .. } | Payload::Command { .. } => {}
        }
        self.inst_poll(i);
    }

    fn server_reply(&mut self, i: InstId, local: Mono, kind: ReqKind, reply: StoreReply) {
        let inst = &mut self.insts[i];
        let Some(k) = inst.keeper.as_mut() else {
            return;
        };
        let acts = match (kind, reply) {
            (ReqKind::Acquire, StoreReply::Lease(l, until)) => {
                inst.granted_until = inst.granted_until.max(until);
                inst.handover_from = None;
                k.on_acquired(local, l.epoch)
            }
            (ReqKind::Acquire, StoreReply::Refused(StoreError::Held(d) | StoreError::Lost(d))) => {
                inst.handover_from = None;
                k.on_acquire_failed(local, d)
            }
            (ReqKind::Acquire, _) => k.on_acquire_failed(local, "lease table unavailable".into()),
            (_, StoreReply::Lease(_, until)) => {
                inst.granted_until = inst.granted_until.max(until);
                k.on_renewed(local)
            }
            (_, StoreReply::Refused(StoreError::Held(d) | StoreError::Lost(d))) => k.on_lost(local, d),
            (_, _) => k.on_renew_failed(local, "lease table unavailable".into()),
        };
        self.server_actions(i, acts);
    }

    fn master_reply(&mut self, i: InstId, local: Mono, kind: ReqKind, reply: StoreReply) {
        let inst = &mut self.insts[i];
        let Some(k) = inst.mk.as_mut() else {
            return;
        };
        if let StoreReply::Lease(_, until) = reply {
            inst.mgranted_until = inst.mgranted_until.max(until);
        }
        let acts = match (kind, reply) {
            (ReqKind::Acquire, StoreReply::Lease(l, _)) => k.on_acquired(local, l.epoch),
            (ReqKind::Acquire, StoreReply::Refused(StoreError::Held(d) | StoreError::Lost(d))) => {
                k.on_acquire_failed(local, d)
            }
            (ReqKind::Acquire, _) => k.on_acquire_failed(local, "lease table unavailable".into()),
            (_, StoreReply::Lease(..)) => k.on_renewed(local),
            (_, StoreReply::Refused(StoreError::Held(d) | StoreError::Lost(d))) => k.on_lost(local, d),
            (_, _) => k.on_renew_failed(local, "lease table unavailable".into()),
        };
        self.master_keeper_actions(i, acts);
    }

    fn store_request(&mut self, i: InstId, slot: Slot, kind: ReqKind, op: StoreOp) {
        let id = self.id();
        let local = self.local(self.insts[i].host);
        let timing = if slot == Slot::Server { self.server_timing } else { self.master_timing };
        let req = Some(Req { id, kind, timeout_at: local + timing.request_timeout_ms() });
        let inst = &mut self.insts[i];
        match slot {
            Slot::Server => inst.req = req,
            Slot::Master => inst.mreq = req,
            Slot::Scan => inst.scan = req,
        }
        let host = inst.host;
        self.send(host, Node::Store, Payload::StoreReq { req: id, from: i, op });
    }

    fn server_actions(&mut self, i: InstId, acts: Vec<KeeperAction>) {
        for a in acts {
            if !self.insts[i].alive {
                break;
            }
            let inst = &self.insts[i];
            let ttl_ms = self.server_timing.ttl_ms;
            let name = LeaseName::Server(inst.server.clone());
            match a {
                KeeperAction::Acquire => {
                    let op = StoreOp::Acquire(Acquire {
                        name,
                        owner: inst.server.clone(),
                        machine: self.hosts[inst.host].machine.clone().expect("a machine"),
                        incarnation: inst.incarnation.clone(),
                        ttl_ms,
                        handover_from: inst.handover_from.clone(),
                    });
                    self.store_request(i, Slot::Server, ReqKind::Acquire, op);
                }
                KeeperAction::Renew { epoch } => {
                    let op = StoreOp::Renew { name, incarnation: inst.incarnation.clone(), epoch, ttl_ms };
                    self.store_request(i, Slot::Server, ReqKind::Renew, op);
                }
                KeeperAction::Acquired { epoch } => self.services_start(i, epoch),
                KeeperAction::Deadline { at } => {
                    let (h, server, inc) = (inst.host, inst.server.clone(), inst.incarnation.clone());
                    let granted = inst.granted_until;
                    // ferry-server reports a backstop half a margin later, so a healthy server
                    // always fences itself first; it must still beat the store's expiry.
                    let backstop = at + self.server_timing.margin_ms / 2;
                    self.check_deadline(i, "server", at, granted);
                    self.check_deadline(i, "Node Manager backstop of the server", backstop, granted);
                    if let Some(nm) = self.hosts[h].nm.as_mut() {
                        nm.core.report(&server, &inc, ServerReport::Deadline { at: backstop });
                    }
                    self.nm_reschedule(h);
                }
                KeeperAction::Fence { reason } => {
                    self.stats.keeper_fences += 1;
                    let why = reason.to_string();
                    self.inst_exit(i, Some(75), &why);
                }
                KeeperAction::Release { .. } => {}
            }
        }
        self.validate(i);
    }

    fn services_start(&mut self, i: InstId, epoch: Epoch) {
        let local = self.local(self.insts[i].host);
        let inst = &mut self.insts[i];
        inst.services_up = true;
        inst.epoch = epoch;
        // Having joined the cluster, the server competes for the master role.
        inst.mk = Some(Keeper::new(self.master_timing, local));
        inst.last_hb = local;
        let (server, machine) = (inst.server.clone(), self.hosts[inst.host].name.clone());
        tr!(self, "services up: {} epoch {epoch}", self.who(i));
        self.checker.services_acquired(self.now, &server, i, epoch);
        self.checker.run_start(self.now, &server, i, &machine, epoch);
    }

    fn master_keeper_actions(&mut self, i: InstId, acts: Vec<KeeperAction>) {
        for a in acts {
            if !self.insts[i].alive {
                break;
            }
            let inst = &self.insts[i];
            let ttl_ms = self.master_timing.ttl_ms;
            match a {
                KeeperAction::Acquire => {
                    let op = StoreOp::Acquire(Acquire {
                        name: self.master_lease.clone(),
                        owner: inst.server.clone(),
                        machine: self.hosts[inst.host].machine.clone().expect("a machine"),
                        incarnation: inst.incarnation.clone(),
                        ttl_ms,
                        handover_from: None,
                    });
                    self.store_request(i, Slot::Master, ReqKind::Acquire, op);
                }
                KeeperAction::Renew { epoch } => {
                    let op = StoreOp::Renew {
                        name: self.master_lease.clone(),
                        incarnation: inst.incarnation.clone(),
                        epoch,
                        ttl_ms,
                    };
                    self.store_request(i, Slot::Master, ReqKind::Renew, op);
                }
                KeeperAction::Acquired { epoch } => self.begin_tenure(i, epoch, true),
                KeeperAction::Deadline { at } => self.check_deadline(i, "master", at, inst.mgranted_until),
                KeeperAction::Release { .. } => {}
                KeeperAction::Fence { reason } => {
                    let why = format!("master role lost: {reason}");
                    self.end_tenure(i, &why);
                    // Back in the race for the role an interval later, with a fresh keeper.
                    let local = self.local(self.insts[i].host);
                    let retry_at = local + self.master_timing.interval_ms;
                    self.insts[i].mk = Some(Keeper::new(self.master_timing, retry_at));
                    self.insts[i].mreq = None;
                }
            }
        }
        self.validate(i);
    }

    fn validate(&mut self, i: InstId) {
        let inst = &self.insts[i];
        let mut errs = Vec::new();
        for (which, k) in [("server", &inst.keeper), ("master", &inst.mk)] {
            if let Some(Err(e)) = k.as_ref().map(|k| k.validate()) {
                errs.push(format!("{which} keeper of {}: {e}", self.who(i)));
            }
        }
        if let Some(Err(e)) = inst.planner.as_ref().map(|p| p.validate(&self.planner_timing)) {
            errs.push(format!("planner of {}: {e}", self.who(i)));
        }
        if let Some(Err(e)) = self.hosts[inst.host].nm.as_ref().map(|nm| nm.core.validate()) {
            errs.push(format!("supervisor of {}: {e}", self.hosts[inst.host].name));
        }
        for e in errs {
            self.checker.violate(Property::Validate, self.now, e);
        }
    }

    /// Everything a process does when it gets to run: deadlines first, then timeouts, then
    /// the master's duties; then it sleeps until its next timer.
    fn inst_poll(&mut self, i: InstId) {
        let inst = &self.insts[i];
        if !inst.alive || !inst.started || self.paused(i) {
            return;
        }
        self.deadline_checks(i);
        self.timeouts(i);
        self.master_duties(i);
        self.inst_reschedule(i);
    }

    fn deadline_checks(&mut self, i: InstId) {
        let local = self.local(self.insts[i].host);
        if !self.insts[i].alive {
            return;
        }
        if let Some(k) = self.insts[i].keeper.as_mut() {
            let acts = k.tick(local);
            self.server_actions(i, acts);
        }
        if !self.insts[i].alive {
            return;
        }
        if let Some(k) = self.insts[i].mk.as_mut() {
            let acts = k.tick(local);
            self.master_keeper_actions(i, acts);
        }
    }

    fn timeouts(&mut self, i: InstId) {
        let local = self.local(self.insts[i].host);
        const NO_ANSWER: &str = "no answer from the lease table within the request timeout";
        if let Some(r) = self.insts[i].req.filter(|r| local >= r.timeout_at && self.insts[i].alive) {
            self.insts[i].req = None;
            let k = self.insts[i].keeper.as_mut().expect("a request implies a keeper");
            let acts = match r.kind {
                ReqKind::Acquire => k.on_acquire_failed(local, NO_ANSWER.into()),
                _ => k.on_renew_failed(local, NO_ANSWER.into()),
            };
            self.server_actions(i, acts);
        }
        if let Some(r) = self.insts[i].mreq.filter(|r| local >= r.timeout_at && self.insts[i].alive) {
            self.insts[i].mreq = None;
            let k = self.insts[i].mk.as_mut().expect("a request implies a keeper");
            let acts = match r.kind {
                ReqKind::Acquire => k.on_acquire_failed(local, NO_ANSWER.into()),
                _ => k.on_renew_failed(local, NO_ANSWER.into()),
            };
            self.master_keeper_actions(i, acts);
        }
        if self.insts[i].scan.is_some_and(|r| local >= r.timeout_at) {
            self.insts[i].scan = None;
        }
        let expired: Vec<u64> =
            self.insts[i].cmds.iter().filter(|(_, c)| local >= c.timeout_at).map(|(id, _)| *id).collect();
        for id in expired {
            let Some(cmd) = self.insts[i].cmds.remove(&id) else {
                continue;
            };
            let result = CommandResult::Unreachable(format!("no answer within {} ms", self.cmd_timeout_ms));
            let acts = match self.insts[i].planner.as_mut() {
                Some(p) => p.on_command_result(local, &cmd.server, &cmd.machine, result, &self.domain),
                None => vec![],
            };
            self.master_plan(i, acts);
        }
    }

    fn master_duties(&mut self, i: InstId) {
        if !self.insts[i].alive {
            return;
        }
        let local = self.local(self.insts[i].host);
        let inst = &self.insts[i];
        if inst.tenure.is_some() {
            let due = match inst.planner.as_ref().and_then(|p| p.next_wakeup()) {
                Some(w) => w.min(inst.next_scan),
                None => inst.next_scan,
            };
            if inst.scan.is_none() && local >= due {
                self.insts[i].next_scan = local + self.scan_ms;
                self.store_request(i, Slot::Scan, ReqKind::List, StoreOp::List);
            }
            if local >= self.insts[i].next_hb {
                self.insts[i].next_hb = local + self.sc.interval_ms;
                let epoch = self.tenures[self.insts[i].tenure.expect("tenure")].epoch;
                let peers: Vec<InstId> = self.alive.iter().copied().filter(|j| *j != i).collect();
                for j in peers {
                    self.send(self.insts[i].host, Node::Inst(j), Payload::Heartbeat { from: i, epoch });
                }
            }
        } else if self.bugs.master_no_wait() && inst.services_up && local >= inst.last_hb + self.master_timing.ttl_ms {
            // The planted bug: no heartbeat for a lease's worth of time, so take the role
            // without waiting for the store to grant the master lease.
            let epoch = Epoch(inst.hb_epoch.0 + 1);
            self.stats.usurpers += 1;
            self.begin_tenure(i, epoch, false);
        }
    }

    fn inst_reschedule(&mut self, i: InstId) {
        let inst = &self.insts[i];
        if !inst.alive {
            return;
        }
        let local = self.local(inst.host);
        let mut wake: Option<Mono> = None;
        let mut add = |m: Mono| {
            if m > local {
                wake = Some(wake.map_or(m, |w| w.min(m)));
            }
        };
        for (k, in_flight) in [(&inst.keeper, inst.req.is_some()), (&inst.mk, inst.mreq.is_some())] {
            if let Some(k) = k {
                match k.state() {
                    KeeperState::Acquiring { since, next_at, .. } => {
                        if !in_flight {
                            add(*next_at);
                        }
                        if let Some(p) = k.timing.acquire_patience_ms {
                            add(*since + p);
                        }
                    }
                    KeeperState::Holding { deadline, next_at, .. } => {
                        add(*deadline);
                        if !in_flight {
                            add(*next_at);
                        }
                    }
                    KeeperState::Fenced | KeeperState::Released => {}
                }
            }
        }
        for r in [&inst.req, &inst.mreq, &inst.scan].into_iter().flatten() {
            add(r.timeout_at);
        }
        for c in inst.cmds.values() {
            add(c.timeout_at);
        }
        if inst.tenure.is_some() {
            if inst.scan.is_none() {
                add(inst.next_scan);
                if let Some(w) = inst.planner.as_ref().and_then(|p| p.next_wakeup()) {
                    add(w);
                }
            }
            add(inst.next_hb);
        } else if self.bugs.master_no_wait() && inst.services_up {
            add(inst.last_hb + self.master_timing.ttl_ms);
        }
        let Some(w) = wake else { return };
        let at = self.hosts[inst.host].clock.true_at(w, self.now) + self.rng.gen_range(0..=TIMER_JITTER_MS);
        if inst.wake_at.is_none_or(|cur| cur < self.now || at < cur) {
            self.insts[i].wake_at = Some(at);
            self.schedule(at, Ev::InstWake(i));
        }
    }

    // ---------------------------------------------------------------- the master role

    fn begin_tenure(&mut self, i: InstId, epoch: Epoch, legit: bool) {
        if legit {
            self.checker.master_acquired(self.now, i, epoch);
        }
        self.end_tenure(i, "takes the role for real");
        let t = self.tenures.len();
        self.tenures.push(Tenure { inst: i, epoch, legit, start_ms: self.now, end_ms: None });
        self.active_tenures.insert(t);
        self.stats.masters += 1;
        let local = self.local(self.insts[i].host);
        let inst = &mut self.insts[i];
        inst.tenure = Some(t);
        inst.planner = Some(Planner::new(self.sc.cluster.clone()));
        inst.next_scan = local;
        inst.next_hb = local;
        tr!(self, "master: {} tenure {t} epoch {epoch}{}", self.who(i), if legit { "" } else { " (usurped)" });
    }

    fn end_tenure(&mut self, i: InstId, why: &str) {
        let inst = &mut self.insts[i];
        let Some(t) = inst.tenure.take() else { return };
        inst.planner = None;
        inst.cmds.clear();
        inst.scan = None;
        self.tenures[t].end_ms = Some(self.now);
        self.active_tenures.remove(&t);
        tr!(self, "master tenure {t} of {} ends: {why}", self.who(i));
    }

    /// Whether tenure `t`'s process would act as master right now: alive, in the role, and
    /// (for a real master) its master keeper's deadline not passed on its own clock.
    fn believes(&self, t: usize) -> bool {
        let ten = &self.tenures[t];
        let inst = &self.insts[ten.inst];
        if ten.end_ms.is_some() || !inst.alive || inst.tenure != Some(t) {
            return false;
        }
        if !ten.legit {
            return true;
        }
        let local = self.local(inst.host);
        inst.mk.as_ref().and_then(|k| k.held(local)).is_some_and(|(e, _)| e == ten.epoch)
    }

    fn scan_reply(&mut self, i: InstId, local: Mono, reply: StoreReply) {
        let StoreReply::Leases(leases) = reply else {
            return;
        };
        // Look again the instant the next lease runs out (LeaseStore::next_expiry_ms).
        if let Some(ms) = leases.iter().filter(|l| l.is_live()).map(|l| l.remaining_ms).min() {
            let at = local + (ms.max(0) as u64 + 1);
            self.insts[i].next_scan = self.insts[i].next_scan.min(at);
        }
        let acts = match self.insts[i].planner.as_mut() {
            Some(p) => p.on_scan(local, &leases, &self.domain),
            None => return,
        };
        self.master_plan(i, acts);
    }

    fn master_plan(&mut self, i: InstId, acts: Vec<MasterAction>) {
        for a in acts {
            let Some(t) = self.insts[i].tenure.filter(|_| self.insts[i].alive) else {
                break;
            };
            match a {
                MasterAction::Start { server, machine, in_place, .. } => {
                    // Rule 6: act only while the master lease is valid by the local deadline.
                    if !self.believes(t) {
                        self.stats.rule6_skips += 1;
                        tr!(self, "{} does not send start {server}: its master lease is no longer valid", self.who(i));
                        continue;
                    }
                    let others: Vec<usize> =
                        self.active_tenures.iter().copied().filter(|o| *o != t && self.believes(*o)).collect();
                    for o in others {
                        let detail = format!(
                            "{} (tenure {t} since {} ms, epoch {}{}) sends `start {server}` to {machine} while {} (tenure {o} since {} ms, epoch {}{}) also holds the master role",
                            self.who(i),
                            self.tenures[t].start_ms,
                            self.tenures[t].epoch,
                            if self.tenures[t].legit { "" } else { ", usurped" },
                            self.who(self.tenures[o].inst),
                            self.tenures[o].start_ms,
                            self.tenures[o].epoch,
                            if self.tenures[o].legit { "" } else { ", usurped" },
                        );
                        self.checker.two_masters(self.now, t, o, detail);
                    }
                    let Some(h) = self.hosts.iter().position(|x| x.machine.as_ref() == Some(&machine)) else {
                        continue;
                    };
                    let id = self.id();
                    let local = self.local(self.insts[i].host);
                    let epoch = self.tenures[t].epoch;
                    self.stats.commands += 1;
                    tr!(self, "{} -> nm {machine}: start {server} (in place: {in_place}, epoch {epoch})", self.who(i));
                    self.insts[i]
                        .cmds
                        .insert(id, Cmd { server: server.clone(), machine, timeout_at: local + self.cmd_timeout_ms });
                    let cluster = self.sc.cluster.clone();
                    let payload = Payload::Command { id, from: i, tenure: t, cluster, epoch, server, in_place };
                    self.send(self.insts[i].host, Node::Nm(h), payload);
                }
                MasterAction::Event { kind, server, message } => {
                    match kind {
                        "migrate" => self.stats.migrations += 1,
                        "restart-in-place" => self.stats.in_place += 1,
                        "gave-up" => self.stats.gave_up += 1,
                        _ => {}
                    }
                    tr!(self, "{} event {kind} {server}: {message}", self.who(i));
                }
            }
        }
    }

    // ---------------------------------------------------------------- faults

    fn resolve(&mut self, target: Target) -> Option<HostId> {
        let h = match target {
            Target::Machine(m) => m,
            Target::MasterHost => match self.master_inst() {
                Some(i) => self.insts[i].host,
                None => self.rng.gen_range(0..self.sc.machines.len()),
            },
            Target::HostOf(s) => self.insts[self.newest(s)?].host,
            Target::NewestHost => self.insts[*self.alive.last()?].host,
        };
        self.hosts[h].up.then_some(h)
    }

    fn master_inst(&self) -> Option<InstId> {
        self.active_tenures.iter().rev().map(|t| self.tenures[*t].inst).find(|i| self.insts[*i].alive)
    }

    fn newest(&self, s: usize) -> Option<InstId> {
        let name = &self.sc.servers.get(s)?.name;
        self.alive.iter().rev().copied().find(|i| &self.insts[*i].server == name)
    }

    fn inject(&mut self, fault: Fault) {
        if self.healed {
            return;
        }
        tr!(self, "FAULT {fault:?}");
        match fault {
            Fault::CrashMachine { target, down_ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                self.crash_machine(h);
                let boot = self.hosts[h].boot;
                self.schedule(self.now + down_ms, Ev::Reboot { host: h, boot });
            }
            Fault::Freeze { target, ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                if let Some(token) = self.freeze(h) {
                    self.schedule(self.now + ms, Ev::Thaw { host: h, token, then_cut_ms: None });
                }
            }
            Fault::FreezeThenIsolate { target, freeze_ms, cut_ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                if let Some(token) = self.freeze(h) {
                    self.schedule(self.now + freeze_ms, Ev::Thaw { host: h, token, then_cut_ms: Some(cut_ms) });
                }
            }
            Fault::Hang { target, ms } => {
                let Some(i) = self.resolve_proc(target) else {
                    return;
                };
                if self.paused(i) {
                    return;
                }
                tr!(self, "SIGSTOP {}", self.who(i));
                self.insts[i].hung = true;
                self.schedule(self.now + ms, Ev::Resume(i));
            }
            Fault::CrashProcess { target } => {
                let Some(i) = self.resolve_proc(target) else {
                    return;
                };
                if self.hosts[self.insts[i].host].frozen {
                    return;
                }
                self.inst_exit(i, None, "crashed");
            }
            Fault::Cut { target, links, ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                self.cut(h, links, ms);
            }
            Fault::Split { side_a, ms } => {
                let mut pairs = BTreeSet::new();
                for a in 0..self.sc.machines.len() {
                    for b in 0..self.sc.machines.len() {
                        if side_a.contains(&a) != side_a.contains(&b) {
                            pairs.insert((a, b));
                        }
                    }
                }
                let id = self.id();
                self.net.cut(id, pairs);
                self.schedule(self.now + ms, Ev::Uncut(id));
            }
            Fault::Slow { target, extra_ms, ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                let id = self.id();
                self.net.slow(id, h, extra_ms);
                self.schedule(self.now + ms, Ev::Unslow(id));
            }
            Fault::StoreOutage { ms } => {
                let id = self.id();
                self.store_outages.insert(id);
                self.schedule(self.now + ms, Ev::StoreBack(id));
            }
            Fault::ClockJump { target, jump_ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                self.hosts[h].clock.wall_offset_ms += jump_ms;
                tr!(self, "wall clock of {} now reads {}", self.hosts[h].name, self.hosts[h].clock.wall_ms(self.now));
            }
        }
    }

    fn resolve_proc(&self, target: ProcTarget) -> Option<InstId> {
        match target {
            ProcTarget::Server(s) => self.newest(s),
            ProcTarget::Master => self.master_inst(),
            ProcTarget::Newest => self.alive.last().copied(),
        }
    }

    fn cut(&mut self, h: HostId, links: Links, ms: u64) {
        let mut pairs = BTreeSet::new();
        let db = self.db;
        if matches!(links, Links::Store | Links::Full | Links::ToStore) {
            pairs.insert((h, db));
        }
        if matches!(links, Links::Store | Links::Full | Links::FromStore) {
            pairs.insert((db, h));
        }
        if matches!(links, Links::Peers | Links::Full) {
            for o in (0..self.sc.machines.len()).filter(|o| *o != h) {
                pairs.insert((h, o));
                pairs.insert((o, h));
            }
        }
        let id = self.id();
        tr!(self, "cut {:?} of {}", links, self.hosts[h].name);
        self.net.cut(id, pairs);
        self.schedule(self.now + ms, Ev::Uncut(id));
    }

    fn crash_machine(&mut self, h: HostId) {
        tr!(self, "machine {} loses power", self.hosts[h].name);
        let on_host: Vec<InstId> = self.alive.iter().copied().filter(|i| self.insts[*i].host == h).collect();
        for i in on_host {
            if self.insts[i].tenure.is_some() {
                self.master_died_at.push(self.now);
            }
            self.end_tenure(i, "machine crashed");
            let inst = &mut self.insts[i];
            inst.alive = false;
            if inst.services_up {
                inst.services_up = false;
                let server = inst.server.clone();
                self.checker.run_stop(self.now, &server, i);
            }
            self.alive.remove(&i);
        }
        let host = &mut self.hosts[h];
        host.up = false;
        host.frozen = false;
        host.nm = None;
        host.boot += 1;
    }

    fn reboot(&mut self, h: HostId) {
        let boot_mono = self.rng.gen_range(3_000..20_000);
        let host = &mut self.hosts[h];
        host.up = true;
        host.clock = HostClock::new(host.clock.drift_ppm, boot_mono, self.now, host.clock.wall_offset_ms);
        host.nm = Some(Nm::new(host.machine.clone().expect("a machine"), self.policy, self.bugs));
        tr!(self, "machine {} boots; its Node Manager starts empty", self.hosts[h].name);
    }

    /// Suspends a host; returns the token its thaw must carry.
    fn freeze(&mut self, h: HostId) -> Option<u64> {
        if self.hosts[h].frozen {
            return None;
        }
        tr!(self, "host {} freezes", self.hosts[h].name);
        self.hosts[h].frozen = true;
        self.hosts[h].freeze_token += 1;
        let on_host: Vec<InstId> = self.alive.iter().copied().filter(|i| self.insts[*i].host == h).collect();
        for i in on_host {
            if self.insts[i].services_up {
                let server = self.insts[i].server.clone();
                self.checker.run_stop(self.now, &server, i);
            }
        }
        Some(self.hosts[h].freeze_token)
    }

    /// Resumes a host: the Node Manager's and every process's deadline checks first, then
    /// the services that survived resume, then the work queued meanwhile.
    fn thaw(&mut self, h: HostId) {
        tr!(self, "host {} thaws", self.hosts[h].name);
        self.hosts[h].frozen = false;
        self.nm_tick(h);
        let on_host: Vec<InstId> = self.alive.iter().copied().filter(|i| self.insts[*i].host == h).collect();
        for &i in &on_host {
            if self.insts[i].alive && !self.insts[i].hung && self.insts[i].started {
                self.deadline_checks(i);
            }
        }
        for &i in &on_host {
            let inst = &self.insts[i];
            if inst.alive && inst.services_up {
                let (server, epoch) = (inst.server.clone(), inst.epoch);
                let machine = self.hosts[h].name.clone();
                self.checker.run_start(self.now, &server, i, &machine, epoch);
            }
        }
        let queued: Vec<NmItem> = match self.hosts[h].nm.as_mut() {
            Some(nm) => nm.inbox.drain(..).collect(),
            None => vec![],
        };
        for item in queued {
            if !self.nm_running(h, self.hosts[h].boot) {
                break;
            }
            match item {
                NmItem::Msg(p) => self.nm_handle(h, p),
                NmItem::Exit { server, incarnation, code, why } => self.nm_exited(h, &server, &incarnation, code, &why),
            }
        }
        self.nm_reschedule(h);
        for i in on_host {
            if !self.insts[i].hung {
                self.drain(i);
            }
        }
    }

    fn drain(&mut self, i: InstId) {
        while let Some(item) = self.insts[i].inbox.pop_front() {
            if !self.insts[i].alive || self.paused(i) {
                self.insts[i].inbox.push_front(item);
                break;
            }
            match item {
                InstItem::Msg(p) => self.inst_handle(i, p),
                InstItem::Started => self.inst_start(i),
            }
        }
        self.inst_poll(i);
    }

    /// SIGCONT: deadline checks first, then what queued up.
    fn resume(&mut self, i: InstId) {
        if !self.insts[i].alive || !self.insts[i].hung {
            return;
        }
        tr!(self, "SIGCONT {}", self.who(i));
        self.insts[i].hung = false;
        if self.paused(i) {
            return;
        }
        if self.insts[i].started {
            self.deadline_checks(i);
        }
        self.drain(i);
    }

    // ---------------------------------------------------------------- healing and the end

    fn heal(&mut self) {
        tr!(self, "HEAL: faults stop");
        self.healed = true;
        self.net.heal();
        self.store_outages.clear();
        for h in 0..self.sc.machines.len() {
            if !self.hosts[h].up {
                self.reboot(h);
            }
        }
        for h in 0..self.sc.machines.len() {
            if self.hosts[h].frozen {
                self.thaw(h);
            }
        }
        let hung: Vec<InstId> = self.alive.iter().copied().filter(|i| self.insts[*i].hung).collect();
        for i in hung {
            self.resume(i);
        }
        self.start_cluster_if_down();
    }

    /// With no `ferry server` process left anywhere, nobody can be master and nothing
    /// restarts by itself (the master role lives in the servers): the operator notices and
    /// runs `ferry start-cluster` (Figure 7-1). Checked every few lease lifetimes, so a
    /// seed whose cluster died early still exercises the rest of its faults.
    fn operator(&mut self) {
        self.start_cluster_if_down();
        let at = self.now + 4 * self.sc.ttl_ms() + self.sc.interval_ms;
        self.schedule(at, Ev::Operator);
    }

    fn start_cluster_if_down(&mut self) {
        if self.alive.is_empty() {
            self.stats.operator_starts += 1;
            if self.healed {
                self.operator_at_ms = Some(self.now);
            }
            tr!(self, "OPERATOR: the whole cluster is down; start-cluster");
            for s in 0..self.sc.servers.len() {
                let (home, server) = (self.sc.servers[s].home, self.sc.servers[s].name.clone());
                if self.nm_running(home, self.hosts[home].boot) {
                    self.nm_start(home, &server);
                }
            }
        }
    }

    fn finish(mut self, heal_at: u64, bound: u64, end: u64) -> Outcome {
        let base = self.operator_at_ms.unwrap_or(heal_at).max(heal_at);
        let mut slowest_recovery_ms = 0;
        for spec in self.sc.servers.clone() {
            if !spec.auto_migration {
                continue;
            }
            let first = self.checker.first_run_since(&spec.name, heal_at);
            if let Some(t) = first {
                slowest_recovery_ms = slowest_recovery_ms.max(t.saturating_sub(base));
            }
            match first {
                Some(t) if t <= base + bound => {}
                Some(t) => self.checker.violate(
                    Property::Liveness,
                    t,
                    format!("{} ran again only {} ms after the faults stopped (bound {bound} ms)", spec.name, t - base),
                ),
                None => self.checker.violate(
                    Property::Liveness,
                    end,
                    format!("{} never ran again after the faults stopped (bound {bound} ms)", spec.name),
                ),
            }
            if !self.checker.is_running(&spec.name) {
                self.checker.violate(Property::Liveness, end, format!("{} is not running at the end", spec.name));
            }
        }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Server,
    Master,
    Scan,
}
