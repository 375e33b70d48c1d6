//! What happens to the processes: exits, fences (rule 3), timed restarts, the decision
//! after a server fenced itself, reports and hellos on the local channel, and what an
//! earlier Node Manager left behind.

use crate::domain::Domain;
use crate::event::EventKind;
use crate::ids::{Incarnation, ServerName};
use crate::lease::Lease;
use crate::nodeman::state::ServerState;
use crate::nodeman::supervisor::{after_fence, AfterFence, ExitKind, SupervisorAction};
use crate::time::Mono;

use super::*;

impl NodeManager {
    // ---- what happens to processes ----

    /// A server process ended (`code`: its exit status; `None`: killed by a signal, or an
    /// adopted process whose status is unknown).
    pub fn exited(
        &mut self,
        now: Mono,
        domain: &Domain,
        server: &ServerName,
        incarnation: &Incarnation,
        code: Option<i32>,
        description: String,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(slot) = self.slots.get_mut(server) else { return out };
        let Some(p) = slot.proc.take_if(|p| &p.incarnation == incarnation) else { return out };
        self.start_over(now, domain, server, &mut out);
        let slot = self.slots.get_mut(server).expect("slot");
        // Whatever the server left behind in its session dies with it.
        out.push(Action::KillSession { server: server.clone(), pid: p.pid, fence: false });
        slot.last_exit = Some(description.clone());
        let code = code.or(if p.adopted { p.exit_hint } else { None });
        let kind = ExitKind::classify(code, p.stopping || p.fenced);
        let actions = self.supervisor.on_exit(server, incarnation, kind, now);
        out.push(Action::Event {
            kind: EventKind::ServerExited,
            server: server.clone(),
            epoch: p.epoch,
            message: format!("{server} (incarnation {incarnation}) ended: {description} ({kind:?})"),
        });
        let slot = self.slots.get_mut(server).expect("slot");
        let generation = slot.generation;
        let mut down = None;
        for a in actions {
            match a {
                // A server that fenced itself while it was being stopped stays stopped.
                SupervisorAction::Restart { if_unclaimed: true, .. } if p.stopping => {}
                SupervisorAction::Restart { handover_from, delay_ms, if_unclaimed: true, .. } => {
                    let interval_ms =
                        domain.server(server).map_or(1_000, |s| s.health_check_interval.as_millis() as u64);
                    slot.pending = Some(Pending::AfterFence(AfterFenceWait {
                        fenced: handover_from,
                        fenced_at: now,
                        // One interval on: a master that is alive has renewed since the fence.
                        at: now + interval_ms.clamp(50, 10_000),
                        delay_ms,
                        generation,
                        table_was_down: false,
                        decided: false,
                        reading: false,
                    }));
                }
                SupervisorAction::Restart { handover_from, delay_ms, if_unclaimed: false, .. } => {
                    slot.state = ServerState::Restarting;
                    out.push(Action::SetState { server: server.clone(), state: ServerState::Restarting });
                    slot.pending = Some(Pending::Restart { at: now + delay_ms, handover_from, delay_ms });
                }
                SupervisorAction::Down { state, .. } => {
                    down = Some(ServerState::parse(state).unwrap_or(ServerState::Shutdown));
                }
                SupervisorAction::Fence { .. } => {}
            }
        }
        let step = slot.work.as_ref().map(|w| w.step.clone());
        match (step, down) {
            // A start in place or a stop reaped it: its job goes on, and does the rest.
            (Some(Step::Killing), _) => self.after_kill(now, domain, server, &mut out),
            (Some(Step::Exiting { .. }), _) => self.stop_after_exit(now, domain, server, &mut out),
            (Some(_), _) => {}
            // Left down: undo its plumbing in its own turn, so a start that follows finds the
            // machine clean (or keeps what is then its own).
            (None, Some(state)) => self.submit(now, domain, server, Job::Teardown { state }, &mut out),
            (None, None) => {}
        }
        out
    }

    /// The kill of a fence found `killed` processes in the server's session.
    pub fn fence_killed(&mut self, server: &ServerName, killed: usize) {
        if let Some(f) = self.slots.get_mut(server).and_then(|s| s.fenced.as_mut()) {
            f.killed = killed;
        }
    }

    /// Something is due: fences (rule 3), a stop's timeout, a restart.
    pub fn tick(&mut self, now: Mono, domain: &Domain) -> Vec<Action> {
        let mut out = Vec::new();
        self.expire_turns(now, domain, &mut out);
        for a in self.supervisor.tick(now) {
            let SupervisorAction::Fence { server, incarnation, late_ms } = a else { continue };
            let Some(slot) = self.slots.get_mut(&server) else { continue };
            let Some(p) = slot.proc.as_mut().filter(|p| p.incarnation == incarnation) else { continue };
            p.fenced = true;
            slot.fenced = Some(Fenced { pid: p.pid, late_ms, killed: 0, epoch: p.epoch });
            out.push(Action::KillSession { server: server.clone(), pid: p.pid, fence: true });
        }
        let names: Vec<ServerName> = self.slots.keys().cloned().collect();
        for server in names {
            let slot = self.slots.get_mut(&server).expect("slot");
            // A graceful stop ran out of time: kill.
            if let Some(w) = slot.work.as_mut() {
                if let Step::Exiting { until, forced } = w.step {
                    if now >= until {
                        if forced {
                            // It would not even die: go on without it.
                            self.stop_after_exit(now, domain, &server, &mut out);
                        } else if let Some(p) = slot.proc.as_ref() {
                            w.forced = true;
                            w.step = Step::Exiting { until: now + self.timing.kill_patience_ms, forced: true };
                            out.push(Action::Event {
                                kind: EventKind::StopTimeout,
                                server: server.clone(),
                                epoch: p.epoch,
                                message: format!("{server} did not stop in time; killing it"),
                            });
                            out.push(Action::Event {
                                kind: EventKind::Kill,
                                server: server.clone(),
                                epoch: p.epoch,
                                message: format!("killing {server} (pid {}) and its services", p.pid),
                            });
                            out.push(Action::KillSession { server: server.clone(), pid: p.pid, fence: false });
                        }
                        continue;
                    }
                }
            }
            let slot = self.slots.get_mut(&server).expect("slot");
            match slot.pending.clone() {
                Some(Pending::Restart { at, handover_from, delay_ms }) if now >= at => {
                    slot.pending = None;
                    out.push(Action::Event {
                        kind: EventKind::RestartInPlace,
                        server: server.clone(),
                        epoch: None,
                        message: format!(
                            "{server} crashed; restarting it on {} at once (after {delay_ms} ms) with a lease handover",
                            self.machine
                        ),
                    });
                    let job = Job::Start {
                        id: None,
                        origin: Origin::Admin,
                        in_place: false,
                        handover_from: Some(handover_from),
                    };
                    self.submit(now, domain, &server, job, &mut out);
                }
                Some(Pending::AfterFence(mut w)) if now >= w.at && !w.reading => {
                    if slot.generation != w.generation || slot.proc.is_some() {
                        slot.pending = None;
                        continue;
                    }
                    w.reading = true;
                    slot.pending = Some(Pending::AfterFence(w));
                    if let Some(cfg) = domain.server(&server) {
                        out.push(Action::ReadLeases { server: server.clone(), cluster: cfg.cluster.clone() });
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The server's lease and its cluster's master lease, for a server that fenced itself.
    pub fn leases_read(
        &mut self,
        now: Mono,
        domain: &Domain,
        server: &ServerName,
        result: Result<(Option<Lease>, Option<Lease>), String>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let machine = self.machine.clone();
        let Some(slot) = self.slots.get_mut(server) else { return out };
        let Some(Pending::AfterFence(mut w)) = slot.pending.clone() else { return out };
        w.reading = false;
        if slot.generation != w.generation || slot.proc.is_some() {
            slot.pending = None;
            return out;
        }
        let interval_ms = domain.server(server).map_or(1_000, |s| s.health_check_interval.as_millis() as u64);
        let epoch = slot.proc.as_ref().and_then(|p| p.epoch);
        let (lease, master) = match result {
            Ok(rows) => rows,
            Err(detail) => {
                if !w.table_was_down {
                    out.push(Action::Event {
                        kind: EventKind::WaitingForLeaseTable,
                        server: server.clone(),
                        epoch,
                        message: format!(
                            "{server} fenced itself; it will be restarted here once the lease table answers again ({detail})"
                        ),
                    });
                }
                // Ask again every interval: the domain is back within one of the table's return.
                w.table_was_down = true;
                w.at = now + interval_ms.clamp(50, 10_000);
                slot.pending = Some(Pending::AfterFence(w));
                return out;
            }
        };
        // Once decided, only a lease that moved on stops the restart (a master elected
        // since would otherwise make it wait out the grace period).
        let master = if w.decided { None } else { master };
        let since_fence_ms = now.since(w.fenced_at);
        match after_fence(server, &w.fenced, lease.as_ref(), master.as_ref(), since_fence_ms, w.table_was_down) {
            AfterFence::GiveWay(why) => {
                slot.pending = None;
                out.push(Action::Event {
                    kind: EventKind::NotRestarting,
                    server: server.clone(),
                    epoch: lease.as_ref().map(|l| l.epoch),
                    message: format!("not restarting fenced {server} here: {why}"),
                });
            }
            // The backoff first (rule 9), then a fresh look.
            AfterFence::Restart if !w.decided && !w.table_was_down && since_fence_ms < w.delay_ms => {
                w.decided = true;
                w.at = w.fenced_at + w.delay_ms;
                slot.pending = Some(Pending::AfterFence(w));
            }
            AfterFence::Restart => {
                slot.pending = None;
                out.push(Action::Event {
                    kind: EventKind::RestartAfterFence,
                    server: server.clone(),
                    epoch: lease.as_ref().map(|l| l.epoch),
                    message: format!(
                        "{} and no one else restarts {server} (fenced incarnation {}); restarting it on {machine}",
                        if w.table_was_down { "the lease table answers again" } else { "the lease table answers" },
                        w.fenced
                    ),
                });
                let job =
                    Job::Start { id: None, origin: Origin::Admin, in_place: false, handover_from: Some(w.fenced) };
                self.submit(now, domain, server, job, &mut out);
            }
        }
        out
    }

    /// A server reported over its local channel.
    pub fn report(
        &mut self,
        now: Mono,
        domain: &Domain,
        server: &ServerName,
        incarnation: &Incarnation,
        report: ServerReport,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(slot) = self.slots.get_mut(server) else { return out };
        let Some(p) = slot.proc.as_mut().filter(|p| &p.incarnation == incarnation) else { return out };
        match report {
            ServerReport::Deadline { at } => {
                p.deadline = Some(p.deadline.map_or(at, |d| d.max(at)));
                self.supervisor.on_deadline(server, incarnation, at);
            }
            ServerReport::Acquired { epoch } => p.epoch = Some(epoch),
            ServerReport::Running => {
                if slot.state != ServerState::Running {
                    slot.state = ServerState::Running;
                    out.push(Action::SetState { server: server.clone(), state: ServerState::Running });
                }
                self.start_over(now, domain, server, &mut out);
            }
            ServerReport::Master { held } => p.master = held,
            ServerReport::Released => {
                p.deadline = None;
                self.supervisor.on_released(server, incarnation);
            }
            ServerReport::Exiting { code } => p.exit_hint = Some(code),
        }
        out
    }

    /// A server said hello on the local channel: one this Node Manager started is known; one
    /// an earlier Node Manager of this machine started (it crashed or was restarted) is
    /// adopted: supervised, fenced and stoppable again. Whether the connection is accepted.
    pub fn hello(&mut self, now: Mono, domain: &Domain, hello: Hello) -> (bool, Vec<Action>) {
        let mut out = Vec::new();
        let slot = self.slots.entry(hello.server.clone()).or_default();
        if let Some(p) = &slot.proc {
            return (p.incarnation == hello.incarnation, out);
        }
        if !hello.is_server_leader {
            return (false, out);
        }
        slot.proc = Some(Proc {
            pid: hello.pid,
            incarnation: hello.incarnation.clone(),
            epoch: hello.epoch,
            deadline: None,
            master: hello.master,
            stopping: false,
            fenced: false,
            adopted: true,
            exit_hint: None,
        });
        slot.ip_plumbed = domain.server(&hello.server).is_some_and(|s| s.floating_ip.is_some());
        slot.mounted = hello.mounted;
        slot.state = ServerState::Running;
        self.supervisor.on_started(&hello.server, hello.incarnation.clone(), now);
        out.push(Action::SetState { server: hello.server.clone(), state: ServerState::Running });
        out.push(Action::Event {
            kind: EventKind::Adopted,
            server: hello.server.clone(),
            epoch: hello.epoch,
            message: format!(
                "adopted {} (pid {}, incarnation {}) started by an earlier Node Manager of {}",
                hello.server, hello.pid, hello.incarnation, self.machine
            ),
        });
        out.push(Action::Watch { server: hello.server.clone(), incarnation: hello.incarnation, pid: hello.pid });
        (true, out)
    }

    /// At start-up: what an earlier Node Manager of this machine left in place for servers
    /// that no longer run here (`ip`: their floating IP, `mount`: their mount). Every other
    /// candidate's probe would see such an address and refuse the server for ever.
    pub fn leftovers(&mut self, now: Mono, domain: &Domain, found: Vec<(ServerName, bool, bool)>) -> Vec<Action> {
        let mut out = Vec::new();
        for (server, ip, mount) in found {
            let slot = self.slots.entry(server.clone()).or_default();
            if slot.proc.is_some() {
                continue;
            }
            slot.ip_plumbed = ip;
            slot.mounted = mount;
            out.push(Action::Event {
                kind: EventKind::Leftover,
                server: server.clone(),
                epoch: None,
                message: format!(
                    "{server} no longer runs on {}, but an earlier Node Manager left its {} in place; removing it",
                    self.machine,
                    match (ip, mount) {
                        (true, true) => "floating IP and mount",
                        (true, false) => "floating IP",
                        _ => "mount",
                    }
                ),
            });
            self.submit(now, domain, &server, Job::Teardown { state: ServerState::Shutdown }, &mut out);
        }
        out
    }
}
