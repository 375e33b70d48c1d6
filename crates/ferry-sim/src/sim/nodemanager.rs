//! The Node Manager of each machine. It is ferry-core's `NodeManager`, the very state
//! machine ferry-nodemanager runs; the simulation only performs its actions (a lease read is
//! the store's row now, plumbing succeeds, a spawn is a new server process) and feeds the
//! outcomes back, so what is checked here is the Node Manager's own code (rules 3, 4, 5).

use ferry_core::EventKind;
use std::collections::{BTreeMap, VecDeque};

use ferry_core::master::CommandResult;
use ferry_core::nodeman::agent::CommandId;
use ferry_core::nodeman::{Action, Command, NodeManager, NodeManagerTiming, Origin, Refusal, RestartPolicy};
use ferry_core::time::Bugs;
use ferry_core::{ClusterName, Epoch, Incarnation, LeaseName, MachineName, ServerName};
use rand::Rng;

use super::network::{Node, Payload};
use super::server::Instance;
use super::{Event, HostId, InstanceId, Sim, TIMER_JITTER_MS};
use crate::check::Property;

/// Work that reached a Node Manager while its host was frozen.
pub(super) enum NmItem {
    Msg(Payload),
    Exit { server: ServerName, incarnation: Incarnation, code: Option<i32>, why: String },
}

/// A machine's Node Manager: ferry-core's, plus what the simulation needs around it.
pub(super) struct Nm {
    pub(super) core: NodeManager,
    /// The highest master epoch of each cluster that arrived here, for the checker
    /// (property 4: no stale command executed).
    pub(super) highest_master_epoch: BTreeMap<ClusterName, Epoch>,
    /// Work that arrived while the host was frozen.
    pub(super) inbox: VecDeque<NmItem>,
    /// The true instant its next wake-up is scheduled for.
    pub(super) wake_at: Option<u64>,
    /// The id of the last command it took.
    pub(super) next_id: CommandId,
    /// Commands of cluster masters waiting for the Node Manager's answer: who, which.
    pub(super) waiting: BTreeMap<CommandId, (InstanceId, u64)>,
}

impl Nm {
    pub(super) fn new(machine: MachineName, policy: RestartPolicy, bugs: Bugs) -> Self {
        let mut core = NodeManager::new(machine, policy, NodeManagerTiming::default());
        core.supervisor.bugs = bugs;
        Nm {
            core,
            highest_master_epoch: BTreeMap::new(),
            inbox: VecDeque::new(),
            wake_at: None,
            next_id: 0,
            waiting: BTreeMap::new(),
        }
    }
}

/// The pid the Node Manager knows an instance by.
fn pid_of(i: InstanceId) -> i32 {
    i32::try_from(i + 1).unwrap_or(i32::MAX)
}

// The Node Manager is ferry-core's `NodeManager`, the very code ferry-nodemanager runs:
// the simulation only performs its actions (instantly: a lease read is the store's row
// now, plumbing succeeds, a spawn is a new instance) and feeds the outcomes back.
impl Sim {
    pub(super) fn nm_running(&self, h: HostId, boot: u32) -> bool {
        let host = &self.hosts[h];
        host.up && host.boot == boot && !host.frozen && host.nm.is_some()
    }

    /// Whether machine `h` can read the lease table right now.
    fn nm_reads_store(&self, h: HostId) -> bool {
        self.store_outages.is_empty() && !self.net.blocked(h, self.store_host) && !self.net.blocked(self.store_host, h)
    }

    pub(super) fn nm_handle(&mut self, h: HostId, payload: Payload) {
        let Payload::Command { id, from, tenure, cluster, epoch, server, in_place } = payload else {
            return;
        };
        let local = self.local(h);
        let nm = self.hosts[h].nm.as_mut().expect("up");
        let seen = nm.highest_master_epoch.get(&cluster).copied().unwrap_or_default();
        nm.highest_master_epoch.insert(cluster.clone(), seen.max(epoch));
        nm.next_id += 1;
        let cid = nm.next_id;
        nm.waiting.insert(cid, (from, id));
        let origin = Origin::Master { cluster: cluster.clone(), epoch, server: self.instances[from].server.clone() };
        let actions = nm.core.command(local, &self.domain, cid, &server, origin, Command::Start { in_place });
        let stale = actions.iter().any(|a| matches!(a, Action::Reply { result: Err(Refusal::StaleMaster(_)), .. }));
        if stale {
            self.stats.stale_rejected += 1;
            tr!(
                self,
                "nm {} refuses start {server} from tenure {tenure}: stale master epoch {epoch}",
                self.hosts[h].name
            );
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
    pub(super) fn nm_start(&mut self, h: HostId, server: &ServerName) {
        let local = self.local(h);
        let nm = self.hosts[h].nm.as_mut().expect("up");
        nm.next_id += 1;
        let cid = nm.next_id;
        let actions =
            nm.core.command(local, &self.domain, cid, server, Origin::Admin, Command::Start { in_place: false });
        self.nm_perform(h, actions);
    }

    /// Performs a Node Manager's actions, feeding each outcome back at once.
    pub(super) fn nm_perform(&mut self, h: HostId, actions: Vec<Action>) {
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
                    self.send(h, Node::Instance(from), Payload::CommandResp { id: cmd, result });
                }
                vec![]
            }
            Action::Event { kind, server, message, .. } => {
                match kind {
                    EventKind::RestartAfterFence => self.stats.fenced_restarts += 1,
                    EventKind::RestartInPlace => self.stats.crash_restarts += 1,
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
                let target = self.instance_of_pid(h, pid);
                if let Some(i) = target {
                    let local = self.local(h);
                    if fence {
                        self.stats.nm_fences += 1;
                        tr!(self, "nm {name} fences {server}: SIGKILL of its session");
                    } else if self.instances[i].server_keeper.as_ref().is_some_and(|k| k.held(local).is_some()) {
                        self.stats.healthy_killed += 1;
                        tr!(self, "nm {name} kills a healthy {}", self.who(i));
                    }
                    self.instance_exit(
                        i,
                        None,
                        if fence { "fenced by its Node Manager" } else { "killed by its Node Manager" },
                    );
                }
                if fence {
                    self.hosts[h].nm.as_mut().expect("up").core.fence_killed(&server, usize::from(target.is_some()));
                }
                vec![]
            }
            Action::Terminate { pid, .. } => {
                if let Some(i) = self.instance_of_pid(h, pid) {
                    self.instance_exit(i, Some(0), "stopped gracefully");
                }
                vec![]
            }
            Action::KillOrphan { server } => {
                let supervised = self.hosts[h].nm.as_ref().and_then(|nm| nm.core.pid_of(&server));
                let orphan = self.alive.iter().copied().find(|i| {
                    self.instances[*i].host == h
                        && self.instances[*i].server == server
                        && Some(pid_of(*i)) != supervised
                });
                if let Some(i) = orphan {
                    self.instance_exit(i, None, "killed as an orphan by its Node Manager");
                }
                self.hosts[h].nm.as_mut().expect("up").core.orphan_killed(
                    local,
                    &self.domain,
                    &server,
                    orphan.map(pid_of),
                )
            }
            Action::Plumb { server, ip } => self.hosts[h].nm.as_mut().expect("up").core.plumbed(
                local,
                &self.domain,
                &server,
                Ok(format!("{ip} added")),
            ),
            Action::Mount { server } => {
                self.hosts[h].nm.as_mut().expect("up").core.mounted(local, &self.domain, &server, Ok("mounted".into()))
            }
            Action::Teardown { server, teardown } => {
                let ip = teardown.ip.map(|ip| Ok(format!("{ip} removed")));
                let unmount = teardown.unmount.then(|| Ok("unmounted".to_string()));
                self.hosts[h].nm.as_mut().expect("up").core.torn_down(local, &self.domain, &server, ip, unmount)
            }
            Action::ReleaseLease { server, .. } => {
                self.hosts[h].nm.as_mut().expect("up").core.released(local, &self.domain, &server, Ok(()))
            }
            Action::Spawn { server, handover_from } => {
                let i = self.spawn(h, &server, handover_from);
                let incarnation = self.instances[i].incarnation.clone();
                self.hosts[h].nm.as_mut().expect("up").core.spawned(
                    local,
                    &self.domain,
                    &server,
                    incarnation,
                    Ok(pid_of(i)),
                )
            }
        }
    }

    /// The live instance on `h` that the Node Manager knows as `pid`.
    fn instance_of_pid(&self, h: HostId, pid: i32) -> Option<InstanceId> {
        let i = usize::try_from(pid).ok()?.checked_sub(1)?;
        (i < self.instances.len() && self.instances[i].alive && self.instances[i].host == h).then_some(i)
    }

    fn spawn(&mut self, h: HostId, server: &ServerName, handover_from: Option<Incarnation>) -> InstanceId {
        let incarnation = Incarnation::from_random(self.rng.gen());
        let local = self.local(h);
        let id = self.instances.len();
        self.instances.push(Instance {
            server: server.clone(),
            host: h,
            incarnation: incarnation.clone(),
            alive: true,
            hung: false,
            started: false,
            server_keeper: None,
            handover_from,
            server_request: None,
            services_up: false,
            epoch: Epoch(0),
            server_granted_until: 0,
            master_granted_until: 0,
            master_keeper: None,
            master_request: None,
            tenure: None,
            planner: None,
            scan_request: None,
            next_scan: local,
            next_heartbeat: local,
            commands: BTreeMap::new(),
            last_heartbeat: local,
            heartbeat_epoch: Epoch(0),
            inbox: VecDeque::new(),
            wake_at: None,
        });
        self.alive.insert(id);
        self.stats.instances += 1;
        let d = self.rng.gen_range(self.scenario.start_ms.0..=self.scenario.start_ms.1);
        self.schedule(self.now + d, Event::InstanceStarted(id));
        tr!(self, "spawn {} (handover from {:?})", self.who(id), self.instances[id].handover_from);
        id
    }

    pub(super) fn nm_tick(&mut self, h: HostId) {
        if !self.nm_running(h, self.hosts[h].boot) {
            return;
        }
        let local = self.local(h);
        let actions = self.hosts[h].nm.as_mut().expect("up").core.tick(local, &self.domain);
        self.nm_perform(h, actions);
    }

    /// A process of machine `h` ended: its Node Manager hears of it (its child's exit).
    pub(super) fn nm_exited(
        &mut self,
        h: HostId,
        server: &ServerName,
        incarnation: &Incarnation,
        code: Option<i32>,
        why: &str,
    ) {
        let local = self.local(h);
        let actions = self.hosts[h].nm.as_mut().expect("up").core.exited(
            local,
            &self.domain,
            server,
            incarnation,
            code,
            why.to_string(),
        );
        self.nm_perform(h, actions);
    }

    pub(super) fn nm_reschedule(&mut self, h: HostId) {
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
            self.schedule(at, Event::NmWake { host: h, boot });
        }
    }
}
