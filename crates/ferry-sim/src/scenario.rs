//! What one seed simulates: the domain (machines, servers, timings), the clocks' drifts, the
//! network's character, and the list of faults of the fault phase, all drawn from the seed
//! before the run starts, so a scenario can be printed, edited in a test and replayed.
//!
//! The run has three phases: start-up (the cluster starts, no faults), the fault phase (the
//! faults below, overlapping freely), and the healing phase from `heal_at_ms` (every partition
//! healed, hosts thawed, hung processes continued, crashed machines booted, the store back,
//! no more loss or long delays) in which every migratable server must run again in time.

use std::time::Duration;

use ferry_core::domain::Domain;
use ferry_core::time::Bugs;
use ferry_core::{ClusterName, MachineName, ServerName};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to run one seed.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Planted bugs (DESIGN §5). They act only when ferry-core has the `planted-bugs` feature.
    pub bugs: Bugs,
    /// Forces the cluster's `fencing_grace_period` (the `no_self_fence` hunt needs zero).
    pub grace_ms: Option<u64>,
    /// Keep a full trace of the run in the outcome (for replay).
    pub trace: bool,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        SimConfig { seed, bugs: Bugs::NONE, grace_ms: None, trace: false }
    }
}

/// One migratable server of the simulated cluster.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub name: ServerName,
    /// Index of its home machine.
    pub home: usize,
    pub auto_migration: bool,
    /// Its own `candidate_machines` (indices), in order.
    pub candidates: Vec<usize>,
}

/// Where a fault lands; resolved when it fires, since servers and the master move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Machine(usize),
    /// The machine of the current cluster master (a random machine if there is none).
    MasterHost,
    /// The machine where server number `n` runs now.
    HostOf(usize),
    /// The machine of the most recently started `ferry server` process (often still taking
    /// its lease: a pause there lands between the store's grant and its processing).
    NewestHost,
}

/// Which `ferry server` process a process fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcTarget {
    /// The newest live instance of server number `n`.
    Server(usize),
    /// The instance acting as cluster master.
    Master,
    /// The most recently started live instance.
    Newest,
}

/// Which links of a host a cut severs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Both directions between the host and the lease store.
    Store,
    /// Both directions between the host and every other machine (the store stays reachable).
    Peers,
    /// Everything.
    Full,
    /// Host to store only: requests are lost, nothing comes back.
    ToStore,
    /// Store to host only: requests are served, answers are lost.
    FromStore,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Power loss: every process on the machine dies at once; it boots again (a fresh Node
    /// Manager, no servers) after `down_ms`, or when the faults stop.
    CrashMachine {
        target: Target,
        down_ms: u64,
    },
    /// Suspend: nothing on the host runs, not even its hosted services; its boot-time clock
    /// keeps counting. On resume the deadline checks run before anything else.
    Freeze {
        target: Target,
        ms: u64,
    },
    /// Suspend, and on resume the host finds itself cut off (a paused VM moved onto a broken
    /// network).
    FreezeThenIsolate {
        target: Target,
        freeze_ms: u64,
        cut_ms: u64,
    },
    /// SIGSTOP of a `ferry server` process: its keeper gets no events, but its hosted
    /// services keep running until the Node Manager fences them (rule 3). SIGCONT later.
    Hang {
        target: ProcTarget,
        ms: u64,
    },
    /// The `ferry server` process crashes; its Node Manager reaps it, kills what is left of
    /// its process group and restarts it with a handover (rule 4).
    CrashProcess {
        target: ProcTarget,
    },
    Cut {
        target: Target,
        links: Links,
        ms: u64,
    },
    /// The machines split in two groups that cannot reach each other; all reach the store.
    Split {
        side_a: Vec<usize>,
        ms: u64,
    },
    /// Every message to or from the host takes `extra_ms` longer.
    Slow {
        target: Target,
        extra_ms: u64,
        ms: u64,
    },
    /// The lease store refuses every call.
    StoreOutage {
        ms: u64,
    },
    /// The lease store's authority changes (a new consensus leader, a promoted standby): it
    /// answers nothing for `down_ms`, then a host whose clock reads `clock_offset_ms` ahead
    /// (behind when negative) takes over under DESIGN §3 rule 11. Not drawn by `generate`;
    /// scenarios add it.
    AuthorityChange {
        down_ms: u64,
        clock_offset_ms: i64,
    },
    /// The host's wall clock jumps (nothing in ferry's core may care).
    ClockJump {
        target: Target,
        jump_ms: i64,
    },
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub cluster: ClusterName,
    pub machines: Vec<MachineName>,
    pub servers: Vec<ServerSpec>,
    pub interval_ms: u64,
    pub periods: u32,
    pub grace_ms: u64,
    pub additional_attempts: u32,
    pub retry_delay_ms: u64,
    /// Whether a started server gives up acquiring its lease after a while (exit 75), as
    /// ferry-server does, or keeps trying for ever.
    pub acquire_patience: bool,
    pub host_drift_ppm: Vec<i64>,
    pub store_drift_ppm: i64,
    pub max_delay_ms: u64,
    pub loss: f64,
    pub long_p: f64,
    /// How long a `ferry server` process takes from spawn to its first lease request.
    pub start_ms: (u64, u64),
    /// Each machine's `max_concurrent_starts`: one seed in three starts one server at a time,
    /// so migrations and restarts wait their turn (drawn from the seed alone, so the rest of
    /// a scenario stays what it was before machines had turns).
    pub starts_per_machine: u32,
    /// Faults of the fault phase, by true time.
    pub faults: Vec<(u64, Fault)>,
    pub heal_at_ms: u64,
}

/// Drifts stay within what `KeeperTiming::drift_ppm` (10,000 ppm) allows between a holder and
/// the store: each side at most 4,000 ppm off, so they differ by at most 8,000 ppm.
pub const MAX_DRIFT_PPM: i64 = 4_000;

/// The fault phase starts after the cluster has settled.
pub const FAULTS_FROM_MS: u64 = 2_000;

impl Scenario {
    /// Draws a scenario from the seed (independently of the run's own random stream).
    pub fn generate(cfg: &SimConfig) -> Scenario {
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5CE7_A210_F3E4_7AB1);
        let m = |s: &str| MachineName::new(s).expect("valid machine name");
        let machines = vec![m("machine-b"), m("machine-c"), m("machine-d"), m("machine-e")];
        let n_machines = machines.len();
        // Mostly the sub-second timings of DESIGN §6; sometimes slower ones, where a Node
        // Manager call's timeout (at least a second) is short next to a lease.
        let interval_ms = [100, 100, 150, 200, 500, 1_000][rng.gen_range(0..6)];
        let periods = rng.gen_range(2..=4u32);
        let ttl = interval_ms * u64::from(periods);
        let grace_ms = cfg.grace_ms.unwrap_or([0, 0, 50, 200, ttl][rng.gen_range(0..5)]);
        let mut servers = Vec::new();
        let n_servers = rng.gen_range(3..=4usize);
        for i in 0..n_servers {
            let home = i % 3;
            let mut candidates: Vec<usize> = (0..n_machines).filter(|c| *c != home && rng.gen_bool(0.5)).collect();
            if rng.gen_bool(0.5) {
                candidates.reverse();
            }
            servers.push(ServerSpec {
                name: ServerName::new(format!("ms{}", i + 1)).expect("valid server name"),
                home,
                // One seed in five has a server that is only ever restarted in place.
                auto_migration: i < 3 || rng.gen_bool(0.2),
                candidates,
            });
        }
        let drift = |rng: &mut StdRng| rng.gen_range(-MAX_DRIFT_PPM..=MAX_DRIFT_PPM);
        let host_drift_ppm = (0..n_machines).map(|_| drift(&mut rng)).collect();
        let store_drift_ppm = drift(&mut rng);
        let max_delay_ms = [2, 10, 25, 50][rng.gen_range(0..4)].min(interval_ms / 3);
        let loss = [0.0, 0.0, 0.005, 0.02][rng.gen_range(0..4)];
        let long_p = [0.0, 0.005, 0.02][rng.gen_range(0..3)];
        let phase_ms = rng.gen_range(8_000..=20_000u64).max(rng.gen_range(20..=40) * ttl);
        let heal_at_ms = FAULTS_FROM_MS + phase_ms;

        let mut faults = Vec::new();
        for _ in 0..rng.gen_range(3..=12) {
            let at = FAULTS_FROM_MS + rng.gen_range(0..phase_ms);
            faults.push((at, Self::draw_fault(&mut rng, interval_ms, ttl, n_machines, n_servers)));
        }
        faults.sort_by_key(|(at, _)| *at);

        Scenario {
            cluster: ClusterName::new("cluster-1").expect("valid cluster name"),
            machines,
            servers,
            interval_ms,
            periods,
            grace_ms,
            additional_attempts: 3,
            retry_delay_ms: rng.gen_range(2..=10) * interval_ms,
            acquire_patience: true,
            host_drift_ppm,
            store_drift_ppm,
            max_delay_ms,
            loss,
            long_p,
            start_ms: (5, 20 + interval_ms / 2),
            starts_per_machine: [1, 2, 4][(cfg.seed % 3) as usize],
            faults,
            heal_at_ms,
        }
    }

    fn draw_fault(rng: &mut StdRng, interval: u64, ttl: u64, machines: usize, servers: usize) -> Fault {
        let target = |rng: &mut StdRng| match rng.gen_range(0..10) {
            0..=3 => Target::Machine(rng.gen_range(0..machines)),
            4..=6 => Target::MasterHost,
            7 => Target::NewestHost,
            _ => Target::HostOf(rng.gen_range(0..servers)),
        };
        let proc_target = |rng: &mut StdRng| match rng.gen_range(0..10) {
            0..=2 => ProcTarget::Master,
            3..=4 => ProcTarget::Newest,
            _ => ProcTarget::Server(rng.gen_range(0..servers)),
        };
        let span = |rng: &mut StdRng, lo: u64, hi: u64| rng.gen_range(lo.max(1)..=hi.max(lo.max(1)));
        match rng.gen_range(0..100) {
            0..=9 => Fault::CrashMachine { target: target(rng), down_ms: span(rng, ttl, 10 * ttl) },
            10..=19 => Fault::Freeze { target: target(rng), ms: span(rng, interval / 2, 3 * ttl) },
            // Short pauses (a stalled VM) end before the lease deadline more often than not.
            20..=29 => Fault::FreezeThenIsolate {
                target: target(rng),
                freeze_ms: span(rng, interval / 4, ttl / 2),
                cut_ms: span(rng, ttl, 6 * ttl),
            },
            30..=37 => Fault::Hang { target: proc_target(rng), ms: span(rng, interval, 4 * ttl) },
            38..=44 => Fault::CrashProcess { target: proc_target(rng) },
            45..=69 => {
                let links = [Links::Store, Links::Peers, Links::Full, Links::Full, Links::ToStore, Links::FromStore]
                    [rng.gen_range(0..6)];
                Fault::Cut { target: target(rng), links, ms: span(rng, interval, 6 * ttl) }
            }
            70..=74 => {
                let side_a = (0..machines).filter(|_| rng.gen_bool(0.5)).collect();
                Fault::Split { side_a, ms: span(rng, interval, 6 * ttl) }
            }
            // Slow but answering within the request timeout, or slower than any timeout.
            75..=89 => Fault::Slow {
                target: target(rng),
                extra_ms: if rng.gen_bool(0.5) {
                    span(rng, interval / 4, 3 * interval / 4)
                } else {
                    span(rng, interval / 2, 4 * ttl)
                },
                ms: span(rng, ttl, 6 * ttl),
            },
            90..=95 => {
                let ms = if rng.gen_bool(0.85) { span(rng, interval / 4, interval) } else { span(rng, ttl, 2 * ttl) };
                Fault::StoreOutage { ms }
            }
            _ => {
                let jump_ms = rng.gen_range(1_000..=7_200_000i64) * if rng.gen_bool(0.5) { 1 } else { -1 };
                Fault::ClockJump { target: target(rng), jump_ms }
            }
        }
    }

    pub fn ttl_ms(&self) -> u64 {
        self.interval_ms * u64::from(self.periods)
    }

    /// The scenario's domain file, as an operator would write it.
    pub fn domain_toml(&self) -> String {
        let ms = |v: u64| humanize(Duration::from_millis(v));
        let mut t = String::from("name = \"sim\"\n\n[leasing]\ndata_source = \"sqlite://sim.db\"\n");
        for (i, m) in self.machines.iter().enumerate() {
            t += &format!(
                "\n[[machines]]\nname = \"{m}\"\nnode_manager = \"127.0.0.1:{}\"\nmax_concurrent_starts = {}\n",
                5556 + i,
                self.starts_per_machine
            );
        }
        let all: Vec<String> = self.machines.iter().map(|m| format!("\"{m}\"")).collect();
        t += &format!(
            "\n[[clusters]]\nname = \"{}\"\nmigration_candidates = [{}]\nfencing_grace_period = \"{}\"\nadditional_auto_migration_attempts = {}\nmigration_retry_delay = \"{}\"\n",
            self.cluster,
            all.join(", "),
            ms(self.grace_ms),
            self.additional_attempts,
            ms(self.retry_delay_ms),
        );
        for s in &self.servers {
            let cands: Vec<String> = s.candidates.iter().map(|c| format!("\"{}\"", self.machines[*c])).collect();
            t += &format!(
                "\n[[servers]]\nname = \"{}\"\ncluster = \"{}\"\nmachine = \"{}\"\nauto_migration = {}\ncandidate_machines = [{}]\nhealth_check_interval = \"{}\"\nhealth_check_periods_until_fencing = {}\n",
                s.name,
                self.cluster,
                self.machines[s.home],
                s.auto_migration,
                cands.join(", "),
                ms(self.interval_ms),
                self.periods,
            );
        }
        t
    }

    /// The parsed, validated domain.
    pub fn domain(&self) -> Domain {
        let text = self.domain_toml();
        match Domain::parse("sim-domain.toml", &text) {
            Ok(d) => d,
            Err(e) => panic!("the simulator wrote an invalid domain:\n{e}\n{text}"),
        }
    }
}

/// `"150ms"` or `"0s"`: what `humantime` parses back.
fn humanize(d: Duration) -> String {
    if d.is_zero() {
        "0s".into()
    } else {
        format!("{}ms", d.as_millis())
    }
}
