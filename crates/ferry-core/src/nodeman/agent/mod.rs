//! The Node Manager as one state machine: every start, stop, restart, adoption, orphan kill
//! and fence it decides on is decided here, from the command, what the lease table says and
//! what runs on the machine. The shell (ferry-nodemanager, or ferry-sim) performs each
//! [`Action`] and feeds the outcome back through the method named after it
//! ([`NodeManager::lease_read`] for [`Action::ReadLease`], and so on).
//!
//! Why one machine of its own per server slot, with a queue: two commands for one server
//! must never interleave (a stop must not run while a start is plumbing the address), while
//! servers do not wait for each other. A command that finds its server busy waits its turn;
//! the machine's own work (a restart after a crash, the clean-up after an exit) takes turns
//! the same way.
//!
//! The rules it keeps:
//! * never a second copy: a start (other than a handover of an incarnation this Node Manager
//!   reaped) first reads the lease, and refuses while another instance holds it live, or
//!   while the table cannot be read (the master then moves on at once);
//! * never an unsupervised copy: an earlier instance this Node Manager does not supervise
//!   (one that hung while no Node Manager ran) is killed before another starts;
//! * the address only once: the floating IP and disks go in place before the server starts
//!   and are removed (`teardown`) by whoever reaped it, before a stop is answered or a fence
//!   announced; an address still answering elsewhere is a refusal worth another try;
//! * one restarter: a crashed server is restarted here at once by handover; one that fenced
//!   itself by whoever [`after_fence`](super::after_fence) names;
//! * rule 5: a master's command carries the highest master epoch seen for its cluster.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

use crate::domain::Domain;
use crate::event::EventKind;
use crate::ids::{ClusterName, Epoch, Incarnation, MachineName, ServerName};
use crate::nodeman::refusal::Refusal;
use crate::nodeman::state::ServerState;
use crate::nodeman::supervisor::{RestartPolicy, Supervisor};

mod admission;
mod processes;
mod start;
mod stop;
#[cfg(test)]
mod tests;
use crate::time::Mono;

/// Correlates a command with its answer ([`Action::Reply`]).
pub type CommandId = u64;

/// Who sent a command: the Administration Server, or a cluster master with its master
/// lease epoch (rule 5). On the wire (`NmStart`, `NmStop`), `{"kind": "admin"}` or
/// `{"kind": "master", "cluster": ..., "epoch": ..., "server": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Origin {
    /// The Administration Server (or this Node Manager itself).
    Admin,
    /// A cluster master, at the master epoch it holds.
    Master { cluster: ClusterName, epoch: Epoch, server: ServerName },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start the server here. Idempotent: one already running is left alone unless
    /// `in_place` asks to replace what is left of it (the master's restart in place).
    Start { in_place: bool },
    /// SIGTERM, then SIGKILL after `timeout_ms` (the server's `shutdown_timeout` if none);
    /// `force` kills at once.
    Stop { force: bool, timeout_ms: Option<u64> },
}

/// What a finished command says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub server: ServerName,
    pub state: ServerState,
    pub pid: Option<i32>,
    pub message: String,
}

/// What undoing a server's plumbing involves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Teardown {
    /// Remove this floating IP.
    pub ip: Option<Ipv4Addr>,
    /// Run the mount hook's `unmount`.
    pub unmount: bool,
}

/// Something for the shell to do. Each action that has an outcome is answered by the method
/// of [`NodeManager`] named after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer command `id`.
    Reply { id: CommandId, result: Result<Ack, Refusal> },
    /// For the event log.
    Event { kind: EventKind, server: ServerName, epoch: Option<Epoch>, message: String },
    /// The server's state changed (the seed's `server.state` file).
    SetState { server: ServerName, state: ServerState },
    /// Read `server/NAME` → [`NodeManager::lease_read`].
    ReadLease { server: ServerName },
    /// Read the server's lease and its cluster's master lease → [`NodeManager::leases_read`].
    ReadLeases { server: ServerName, cluster: ClusterName },
    /// SIGKILL every process of the session led by `pid`, now. A fence reports the count
    /// back ([`NodeManager::fence_killed`]); every kill is followed by the process's exit
    /// ([`NodeManager::exited`]).
    KillSession { server: ServerName, pid: i32, fence: bool },
    /// SIGTERM to `pid`: a graceful stop.
    Terminate { server: ServerName, pid: i32 },
    /// Kill an earlier instance of the server this Node Manager does not supervise, if any
    /// runs → [`NodeManager::orphan_killed`].
    KillOrphan { server: ServerName },
    /// Add the floating IP (probe, add, announce, or the `ifconfig` hook) → [`NodeManager::plumbed`].
    Plumb { server: ServerName, ip: Ipv4Addr },
    /// The mount hook's `mount` → [`NodeManager::mounted`].
    Mount { server: ServerName },
    /// Start `ferry server NAME` as a new incarnation (drawn by the shell: the core draws
    /// nothing) → [`NodeManager::spawned`], answered before anything else reaches this
    /// Node Manager.
    Spawn { server: ServerName, handover_from: Option<Incarnation> },
    /// Watch an adopted process (not a child): report its end with [`NodeManager::exited`].
    Watch { server: ServerName, incarnation: Incarnation, pid: i32 },
    /// Undo the plumbing → [`NodeManager::torn_down`].
    Teardown { server: ServerName, teardown: Teardown },
    /// Release the lease of an incarnation this Node Manager killed → [`NodeManager::released`].
    ReleaseLease { server: ServerName, incarnation: Incarnation, epoch: Epoch },
    /// Keep the highest master epochs (rule 5 must survive a restart).
    PersistMasterEpochs { epochs: BTreeMap<ClusterName, Epoch> },
}

/// What a server said when it connected to its Node Manager's local channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub server: ServerName,
    pub incarnation: Incarnation,
    pub pid: i32,
    pub epoch: Option<Epoch>,
    pub master: bool,
    /// The pid is a live `ferry server NAME` leading its own session (checked by the shell).
    pub is_server_leader: bool,
    /// An earlier Node Manager recorded this server's mount as done.
    pub mounted: bool,
}

/// What a server reports over the local channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerReport {
    Deadline { at: Mono },
    Acquired { epoch: Epoch },
    Running,
    Master { held: bool },
    Released,
    Exiting { code: i32 },
}

/// A server as its Node Manager sees it (`GET /nm/v1/servers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    pub server: ServerName,
    pub state: ServerState,
    pub pid: Option<i32>,
    pub incarnation: Option<Incarnation>,
    pub epoch: Option<Epoch>,
    pub deadline: Option<Mono>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub master: bool,
}

/// The Node Manager's own limits (STYLE habit 7), passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeManagerTiming {
    /// After SIGKILL, how long a stop waits for the exit before it goes on regardless.
    pub kill_patience_ms: u64,
}

impl Default for NodeManagerTiming {
    fn default() -> Self {
        NodeManagerTiming { kill_patience_ms: 10_000 }
    }
}

/// The process of a server on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Proc {
    pid: i32,
    incarnation: Incarnation,
    epoch: Option<Epoch>,
    deadline: Option<Mono>,
    master: bool,
    /// This Node Manager is stopping or killing it on purpose.
    stopping: bool,
    /// This Node Manager fenced it (rule 3).
    fenced: bool,
    /// Started by an earlier Node Manager: watched, not waited for.
    adopted: bool,
    /// The exit status it announced (all an adopted server leaves behind).
    exit_hint: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Job {
    /// A command, answered when done (`id` is `None` for this Node Manager's own starts).
    Start {
        id: Option<CommandId>,
        origin: Origin,
        in_place: bool,
        handover_from: Option<Incarnation>,
    },
    Stop {
        id: CommandId,
        force: bool,
        timeout_ms: Option<u64>,
    },
    /// Undo the plumbing of a server that ended (then set `state`).
    Teardown {
        state: ServerState,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// A start in place killed what was left; waits for its exit.
    Killing,
    /// A start waits for its turn (`max_concurrent_starts`); already answered.
    Queued,
    ReadingLease,
    KillingOrphan,
    Plumbing,
    Mounting,
    /// A start failed after plumbing: undoing it before the refusal is answered.
    Undoing {
        refusal: Refusal,
    },
    /// A stop: waits for the exit (SIGTERM sent, or SIGKILL when `forced`) until `until`.
    Exiting {
        until: Mono,
        forced: bool,
    },
    TearingDown,
    Releasing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Work {
    job: Job,
    step: Step,
    /// A start: its handover incarnation once decided (a start in place hands over from the
    /// instance it killed).
    handover_from: Option<Incarnation>,
    /// A start: the lease is not live (so an orphan may be killed).
    lease_not_live: bool,
    /// A stop that had to kill: release the lease on the server's behalf.
    forced: bool,
    /// A stop: the process it stopped.
    stopped: Option<(Incarnation, Option<Epoch>)>,
    /// A start: its command was answered when it was queued for a turn.
    answered: bool,
}

/// A restart this Node Manager will make on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    /// A crash: start it again at `at`, handing the lease over.
    Restart { at: Mono, handover_from: Incarnation, delay_ms: u64 },
    /// It fenced itself: look at the table at `at` and decide with `after_fence`.
    AfterFence(AfterFenceWait),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AfterFenceWait {
    fenced: Incarnation,
    fenced_at: Mono,
    at: Mono,
    delay_ms: u64,
    generation: u64,
    table_was_down: bool,
    /// A restart was decided; only a lease that moved on stops it now.
    decided: bool,
    /// A read is out.
    reading: bool,
}

/// A fence waiting to be announced until the address is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fenced {
    pid: i32,
    late_ms: u64,
    killed: usize,
    epoch: Option<Epoch>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Slot {
    state: ServerState,
    proc: Option<Proc>,
    restarts: u32,
    last_exit: Option<String>,
    ip_plumbed: bool,
    mounted: bool,
    /// Bumped by every explicit start or stop: a pending restart that sees it changed gives
    /// way to what the operator or the master asked for.
    generation: u64,
    work: Option<Work>,
    queue: VecDeque<Job>,
    pending: Option<Pending>,
    fenced: Option<Fenced>,
}

/// The Node Manager of one machine.
#[derive(Debug, Clone)]
pub struct NodeManager {
    machine: MachineName,
    pub supervisor: Supervisor,
    timing: NodeManagerTiming,
    slots: BTreeMap<ServerName, Slot>,
    /// Starts holding a turn, and when each must give it back at the latest.
    admitted: BTreeMap<ServerName, Mono>,
    /// Starts waiting for a turn, in the order they get one.
    waiting: VecDeque<ServerName>,
}

impl NodeManager {
    pub fn new(machine: MachineName, policy: RestartPolicy, timing: NodeManagerTiming) -> Self {
        NodeManager {
            machine,
            supervisor: Supervisor::new(policy),
            timing,
            slots: BTreeMap::new(),
            admitted: BTreeMap::new(),
            waiting: VecDeque::new(),
        }
    }

    pub fn machine(&self) -> &MachineName {
        &self.machine
    }

    /// What runs here, per server.
    pub fn servers(&self) -> Vec<ServerView> {
        self.slots
            .iter()
            .filter(|(_, s)| s.proc.is_some() || s.state != ServerState::Shutdown || s.last_exit.is_some())
            .map(|(name, s)| ServerView {
                server: name.clone(),
                state: s.state,
                pid: s.proc.as_ref().map(|p| p.pid),
                incarnation: s.proc.as_ref().map(|p| p.incarnation.clone()),
                epoch: s.proc.as_ref().and_then(|p| p.epoch),
                deadline: s.proc.as_ref().and_then(|p| p.deadline),
                restarts: s.restarts,
                last_exit: s.last_exit.clone(),
                master: s.proc.as_ref().is_some_and(|p| p.master),
            })
            .collect()
    }

    /// The pid of the process this Node Manager supervises for `server`.
    pub fn pid_of(&self, server: &ServerName) -> Option<i32> {
        self.slots.get(server).and_then(|s| s.proc.as_ref()).map(|p| p.pid)
    }

    /// The earliest instant something is due (a deadline, a stop's timeout, a restart).
    pub fn next_wakeup(&self) -> Option<Mono> {
        let mut at = self.supervisor.next_wakeup();
        let mut take = |m: Mono| at = Some(at.map_or(m, |a| a.min(m)));
        for until in self.admitted.values() {
            take(*until);
        }
        for s in self.slots.values() {
            if let Some(Work { step: Step::Exiting { until, .. }, .. }) = &s.work {
                take(*until);
            }
            match &s.pending {
                Some(Pending::Restart { at, .. }) => take(*at),
                Some(Pending::AfterFence(w)) if !w.reading => take(w.at),
                _ => {}
            }
        }
        at
    }

    /// Invariants checked in tests and the simulation.
    pub fn validate(&self) -> Result<(), String> {
        self.supervisor.validate()?;
        for (name, s) in &self.slots {
            if s.work.is_none() && !s.queue.is_empty() {
                return Err(format!("{name}: jobs wait while nothing runs"));
            }
            if matches!(s.state, ServerState::Running | ServerState::Starting) && s.proc.is_none() && s.work.is_none() {
                return Err(format!("{name}: {} without a process", s.state));
            }
            let queued = matches!(&s.work, Some(Work { step: Step::Queued, .. }));
            let listed = self.waiting.contains(name);
            if queued != listed {
                return Err(format!("{name}: queued for a turn {queued}, in the waiting list {listed}"));
            }
            if queued && self.admitted.contains_key(name) {
                return Err(format!("{name}: waits for a turn while it holds one"));
            }
        }
        Ok(())
    }

    // ---- commands ----

    /// A command from the admin or a cluster master (`id` answers it).
    pub fn command(
        &mut self,
        now: Mono,
        domain: &Domain,
        id: CommandId,
        server: &ServerName,
        origin: Origin,
        command: Command,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if let Err(refusal) = self.check(domain, server, &origin, matches!(command, Command::Start { .. }), &mut out) {
            out.push(Action::Reply { id, result: Err(refusal) });
            return out;
        }
        let job = match command {
            Command::Start { in_place } => Job::Start { id: Some(id), origin, in_place, handover_from: None },
            Command::Stop { force, timeout_ms } => Job::Stop { id, force, timeout_ms },
        };
        self.submit(now, domain, server, job, &mut out);
        out
    }

    /// What every command must pass before it waits its turn: the server is known, may run
    /// here (a start), and the master's epoch is current (rule 5).
    fn check(
        &mut self,
        domain: &Domain,
        server: &ServerName,
        origin: &Origin,
        start: bool,
        out: &mut Vec<Action>,
    ) -> Result<(), Refusal> {
        let Some(cfg) = domain.server(server) else {
            return Err(Refusal::UnknownServer { server: server.clone(), domain: domain.name.clone() });
        };
        if start {
            if domain.machine(&self.machine).is_none() {
                return Err(Refusal::MachineNotDefined { machine: self.machine.clone() });
            }
            if cfg.machine != self.machine && !domain.candidates_for(cfg).contains(&self.machine) {
                return Err(Refusal::NotAllowedHere {
                    server: server.clone(),
                    machine: self.machine.clone(),
                    home: cfg.machine.clone(),
                });
            }
        }
        if let Origin::Master { cluster, epoch, server: from } = origin {
            if &cfg.cluster != cluster {
                return Err(Refusal::WrongCluster {
                    cluster: cluster.clone(),
                    server: server.clone(),
                    belongs_to: cfg.cluster.clone(),
                });
            }
            let before = self.supervisor.highest_master_epoch(cluster);
            match self.supervisor.check_master(cluster, *epoch) {
                Ok(()) => {
                    if self.supervisor.highest_master_epoch(cluster) > before {
                        out.push(Action::PersistMasterEpochs { epochs: self.supervisor.master_epochs().clone() });
                    }
                }
                Err(stale) => {
                    out.push(Action::Event {
                        kind: EventKind::StaleMasterRefused,
                        server: server.clone(),
                        epoch: Some(*epoch),
                        message: format!("refused a command from {from}: {stale}"),
                    });
                    return Err(stale.into());
                }
            }
        }
        Ok(())
    }

    /// Runs `job` now if the server is idle, else after the jobs before it.
    fn submit(&mut self, now: Mono, domain: &Domain, server: &ServerName, job: Job, out: &mut Vec<Action>) {
        let slot = self.slots.entry(server.clone()).or_default();
        if let Some(Work { step: Step::Queued, .. }) = &slot.work {
            match &job {
                // A stop while the start still waits for its turn: the start is dropped
                // (it was answered; nothing of it is in place yet) and the stop runs now.
                Job::Stop { .. } => {
                    self.cancel_queued(now, domain, server, out);
                    let slot = self.slots.entry(server.clone()).or_default();
                    if slot.work.is_some() {
                        slot.queue.push_back(job);
                    } else {
                        self.begin(now, domain, server, job, out);
                    }
                    return;
                }
                // The same start again: it waits already.
                Job::Start { id: Some(id), in_place: false, handover_from: None, .. } => {
                    let ahead = self.waiting.iter().position(|s| s == server).unwrap_or(0);
                    out.push(Action::Reply {
                        id: *id,
                        result: Ok(Ack {
                            server: server.clone(),
                            state: ServerState::Starting,
                            pid: None,
                            message: format!(
                                "{server} is already waiting for its turn to start on {} ({ahead} ahead of it)",
                                self.machine
                            ),
                        }),
                    });
                    return;
                }
                _ => {}
            }
        }
        let slot = self.slots.entry(server.clone()).or_default();
        if slot.work.is_some() {
            slot.queue.push_back(job);
            return;
        }
        self.begin(now, domain, server, job, out);
    }

    /// Takes the next job of `server` once the current one is done.
    fn next_job(&mut self, now: Mono, domain: &Domain, server: &ServerName, out: &mut Vec<Action>) {
        let Some(slot) = self.slots.get_mut(server) else { return };
        slot.work = None;
        if let Some(job) = slot.queue.pop_front() {
            self.begin(now, domain, server, job, out);
        }
    }

    fn begin(&mut self, now: Mono, domain: &Domain, server: &ServerName, job: Job, out: &mut Vec<Action>) {
        let slot = self.slots.entry(server.clone()).or_default();
        match &job {
            Job::Start { handover_from: None, .. } | Job::Stop { .. } => {
                slot.generation += 1;
                slot.pending = None;
            }
            _ => {}
        }
        slot.work = Some(Work {
            job: job.clone(),
            step: Step::ReadingLease,
            handover_from: None,
            lease_not_live: false,
            forced: false,
            stopped: None,
            answered: false,
        });
        match job {
            Job::Start { id, in_place, handover_from, .. } => {
                self.begin_start(now, domain, server, id, in_place, handover_from, out)
            }
            Job::Stop { id, force, timeout_ms } => self.begin_stop(now, domain, server, id, force, timeout_ms, out),
            Job::Teardown { state } => {
                let slot = self.slots.get_mut(server).expect("slot");
                match teardown_of(domain, server, slot) {
                    Some(t) => {
                        set_work_step(slot, Step::TearingDown);
                        out.push(Action::Teardown { server: server.clone(), teardown: t });
                    }
                    None => self.finish_teardown(now, domain, server, state, out),
                }
            }
        }
    }

    fn awaiting(&self, server: &ServerName, step: &Step) -> bool {
        self.slots.get(server).and_then(|s| s.work.as_ref()).is_some_and(|w| &w.step == step)
    }

    fn set_state(&mut self, server: &ServerName, state: ServerState, out: &mut Vec<Action>) {
        let slot = self.slots.entry(server.clone()).or_default();
        slot.state = state;
        out.push(Action::SetState { server: server.clone(), state });
    }
}

fn set_work_step(slot: &mut Slot, step: Step) {
    if let Some(w) = slot.work.as_mut() {
        w.step = step;
    }
}

/// What is in place for `server` on this machine, if anything.
fn teardown_of(domain: &Domain, server: &ServerName, slot: &Slot) -> Option<Teardown> {
    let ip = domain.server(server).and_then(|s| s.floating_ip).filter(|_| slot.ip_plumbed);
    (ip.is_some() || slot.mounted).then_some(Teardown { ip, unmount: slot.mounted })
}
