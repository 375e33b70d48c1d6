//! A start: the lease check, the orphan kill, the floating IP and the mount, then the
//! process; or the refusal, with whatever was put in place taken off again.

use crate::domain::Domain;
use crate::event::EventKind;
use crate::ids::{Incarnation, ServerName};
use crate::lease::Lease;
use crate::nodeman::refusal::Refusal;
use crate::nodeman::state::ServerState;
use crate::time::Mono;

use super::*;

impl NodeManager {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn begin_start(
        &mut self,
        now: Mono,
        domain: &Domain,
        server: &ServerName,
        id: Option<CommandId>,
        in_place: bool,
        handover_from: Option<Incarnation>,
        out: &mut Vec<Action>,
    ) {
        let slot = self.slots.get_mut(server).expect("slot");
        if let Some(p) = slot.proc.as_mut() {
            if !in_place {
                let ack = Ack {
                    server: server.clone(),
                    state: slot.state,
                    pid: Some(p.pid),
                    message: format!("{server} is already running here (pid {})", p.pid),
                };
                if let Some(id) = id {
                    out.push(Action::Reply { id, result: Ok(ack) });
                }
                self.next_job(now, domain, server, out);
                return;
            }
            // Restart in place: kill what is left, then hand its lease over (this Node
            // Manager reaps it itself).
            p.stopping = true;
            out.push(Action::Event {
                kind: EventKind::Kill,
                server: server.clone(),
                epoch: p.epoch,
                message: format!("killing what is left of {server} (pid {}) before restarting it in place", p.pid),
            });
            out.push(Action::KillSession { server: server.clone(), pid: p.pid, fence: false });
            let w = slot.work.as_mut().expect("work");
            w.handover_from = Some(p.incarnation.clone());
            w.step = Step::Killing;
            return;
        }
        let w = slot.work.as_mut().expect("work");
        w.handover_from = handover_from;
        self.after_kill(now, domain, server, out);
    }

    /// A start, once nothing of the server runs here any more: now if a turn is free,
    /// else once one is ([`NodeManager::take_turn`]).
    pub(super) fn after_kill(&mut self, now: Mono, domain: &Domain, server: &ServerName, out: &mut Vec<Action>) {
        if self.take_turn(now, domain, server, out) {
            self.start_admitted(now, domain, server, out);
        }
    }

    /// A start that holds its turn: the lease check, or straight on for a handover.
    pub(super) fn start_admitted(&mut self, now: Mono, domain: &Domain, server: &ServerName, out: &mut Vec<Action>) {
        let slot = self.slots.get_mut(server).expect("slot");
        let Some(Work { job: Job::Start { origin, .. }, handover_from, .. }) = slot.work.clone() else { return };
        if !matches!(origin, Origin::Admin) || handover_from.is_none() {
            self.supervisor.reset_crashes(server);
        }
        let slot = self.slots.get_mut(server).expect("slot");
        // No longer waiting for a turn, whichever way it goes on.
        set_work_step(slot, Step::ReadingLease);
        if handover_from.is_none() {
            // Never a second copy, and never the address on two machines: read the lease.
            set_work_step(slot, Step::ReadingLease);
            out.push(Action::ReadLease { server: server.clone() });
        } else {
            self.plumb_or_spawn(now, domain, server, out);
        }
    }

    /// The lease as the table says, for a start waiting on it.
    pub fn lease_read(
        &mut self,
        now: Mono,
        domain: &Domain,
        server: &ServerName,
        lease: Result<Option<Lease>, String>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(slot) = self.slots.get_mut(server) else { return out };
        let Some(w) = slot.work.as_mut().filter(|w| w.step == Step::ReadingLease) else { return out };
        let Job::Start { in_place, .. } = w.job else { return out };
        match lease {
            Ok(Some(l)) if l.is_live() => {
                let refusal = Refusal::RunningElsewhere {
                    server: server.clone(),
                    machine: l.machine.as_ref().map_or("?".to_string(), |m| m.to_string()),
                    epoch: l.epoch,
                    remaining_ms: l.remaining_ms,
                    here: self.machine.clone(),
                };
                self.refuse(now, domain, server, refusal, &mut out);
            }
            Ok(_) => {
                w.lease_not_live = true;
                // An instance an earlier Node Manager of this machine started, which never
                // said hello to this one (it hung while none ran), is not supervised: nothing
                // fenced it (rule 3). Kill it before another copy starts.
                if w.handover_from.is_none() && (w.lease_not_live || in_place) {
                    w.step = Step::KillingOrphan;
                    out.push(Action::KillOrphan { server: server.clone() });
                } else {
                    self.plumb_or_spawn(now, domain, server, &mut out);
                }
            }
            // A server started here could not take its lease either: refuse at once, so a
            // cluster master moves on instead of waiting out its start timeout.
            Err(detail) => {
                let refusal =
                    Refusal::TableUnreadable { server: server.clone(), machine: self.machine.clone(), detail };
                self.refuse(now, domain, server, refusal, &mut out);
            }
        }
        out
    }

    /// The orphan check of a start: `killed` is the pid killed, if one ran.
    pub fn orphan_killed(
        &mut self,
        now: Mono,
        domain: &Domain,
        server: &ServerName,
        killed: Option<i32>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.awaiting(server, &Step::KillingOrphan) {
            return out;
        }
        if let Some(pid) = killed {
            out.push(Action::Event {
                kind: EventKind::Kill,
                server: server.clone(),
                epoch: None,
                message: format!(
                    "killed an earlier instance of {server} (pid {pid}) that this Node Manager does not supervise before starting it"
                ),
            });
        }
        self.plumb_or_spawn(now, domain, server, &mut out);
        out
    }

    pub(super) fn plumb_or_spawn(&mut self, now: Mono, domain: &Domain, server: &ServerName, out: &mut Vec<Action>) {
        let slot = self.slots.get_mut(server).expect("slot");
        let ip = domain.server(server).and_then(|s| s.floating_ip);
        match ip {
            Some(ip) if !slot.ip_plumbed => {
                set_work_step(slot, Step::Plumbing);
                out.push(Action::Plumb { server: server.clone(), ip });
            }
            _ => self.mount_or_spawn(now, domain, server, out),
        }
    }

    /// The floating IP's `addif`: a line for the log, or why not (`in_use`: another host
    /// still answers for the address).
    pub fn plumbed(
        &mut self,
        now: Mono,
        domain: &Domain,
        server: &ServerName,
        result: Result<String, (String, bool)>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.awaiting(server, &Step::Plumbing) {
            return out;
        }
        let ip = domain.server(server).and_then(|s| s.floating_ip).unwrap_or(Ipv4Addr::UNSPECIFIED);
        match result {
            Ok(line) => {
                out.push(Action::Event { kind: EventKind::Addif, server: server.clone(), epoch: None, message: line });
                self.slots.get_mut(server).expect("slot").ip_plumbed = true;
                self.mount_or_spawn(now, domain, server, &mut out);
            }
            // Another host still answers for the address (an old holder removing it, or a
            // machine whose kernel still runs): never add it twice. Nothing here failed.
            Err((detail, true)) => {
                let refusal =
                    Refusal::AddressInUse { server: server.clone(), machine: self.machine.clone(), ip, detail };
                out.push(Action::Event {
                    kind: EventKind::AddressInUse,
                    server: server.clone(),
                    epoch: None,
                    message: refusal.to_string(),
                });
                self.refuse(now, domain, server, refusal, &mut out);
            }
            Err((detail, false)) => {
                let refusal = Refusal::PlumbFailed { server: server.clone(), ip, detail };
                self.set_state(server, ServerState::Failed, &mut out);
                out.push(Action::Event {
                    kind: EventKind::StartFailed,
                    server: server.clone(),
                    epoch: None,
                    message: refusal.to_string(),
                });
                self.refuse(now, domain, server, refusal, &mut out);
            }
        }
        out
    }

    pub(super) fn mount_or_spawn(&mut self, now: Mono, domain: &Domain, server: &ServerName, out: &mut Vec<Action>) {
        let has_hook = domain.machine(&self.machine).is_some_and(|m| m.hooks.mount.is_some());
        let mounted = self.slots.get(server).is_some_and(|s| s.mounted);
        if has_hook && !mounted {
            let slot = self.slots.get_mut(server).expect("slot");
            set_work_step(slot, Step::Mounting);
            out.push(Action::Mount { server: server.clone() });
        } else {
            self.spawn(now, domain, server, out);
        }
    }

    /// The mount hook's `mount`: a line for the log, or why not.
    pub fn mounted(
        &mut self,
        now: Mono,
        domain: &Domain,
        server: &ServerName,
        result: Result<String, String>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.awaiting(server, &Step::Mounting) {
            return out;
        }
        match result {
            Ok(line) => {
                self.slots.get_mut(server).expect("slot").mounted = true;
                out.push(Action::Event { kind: EventKind::Mount, server: server.clone(), epoch: None, message: line });
                self.spawn(now, domain, server, &mut out);
            }
            Err(detail) => {
                let refusal = Refusal::MountFailed { server: server.clone(), detail };
                self.set_state(server, ServerState::Failed, &mut out);
                out.push(Action::Event {
                    kind: EventKind::StartFailed,
                    server: server.clone(),
                    epoch: None,
                    message: refusal.to_string(),
                });
                // What is in place (the address) comes off before the refusal is answered.
                let slot = self.slots.get_mut(server).expect("slot");
                match teardown_of(domain, server, slot) {
                    Some(t) => {
                        set_work_step(slot, Step::Undoing { refusal });
                        out.push(Action::Teardown { server: server.clone(), teardown: t });
                    }
                    None => self.refuse(now, domain, server, refusal, &mut out),
                }
            }
        }
        out
    }

    pub(super) fn spawn(&mut self, _now: Mono, _domain: &Domain, server: &ServerName, out: &mut Vec<Action>) {
        let slot = self.slots.get_mut(server).expect("slot");
        let handover_from = slot.work.as_ref().and_then(|w| w.handover_from.clone());
        // The shell draws the incarnation (the core draws nothing) and answers `spawned`
        // before anything else reaches this machine.
        out.push(Action::Spawn { server: server.clone(), handover_from });
    }

    /// The server process was started as `incarnation` (its pid), or could not be.
    pub fn spawned(
        &mut self,
        now: Mono,
        domain: &Domain,
        server: &ServerName,
        incarnation: Incarnation,
        result: Result<i32, String>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let machine = self.machine.clone();
        let Some(slot) = self.slots.get_mut(server) else { return out };
        let Some(w) = slot.work.clone() else { return out };
        let Job::Start { id, .. } = w.job else { return out };
        match result {
            Ok(pid) => {
                if w.handover_from.is_some() {
                    slot.restarts += 1;
                }
                slot.fenced = None;
                slot.proc = Some(Proc {
                    pid,
                    incarnation: incarnation.clone(),
                    epoch: None,
                    deadline: None,
                    master: false,
                    stopping: false,
                    fenced: false,
                    adopted: false,
                    exit_hint: None,
                });
                self.supervisor.on_started(server, incarnation.clone(), now);
                self.set_state(server, ServerState::Starting, &mut out);
                out.push(Action::Event {
                    kind: EventKind::ServerStarted,
                    server: server.clone(),
                    epoch: None,
                    message: match &w.handover_from {
                        Some(old) => format!(
                            "started {server} (pid {pid}, incarnation {incarnation}) taking over from reaped incarnation {old}"
                        ),
                        None => format!("started {server} (pid {pid}, incarnation {incarnation})"),
                    },
                });
                if let (Some(id), false) = (id, w.answered) {
                    let ack = Ack {
                        server: server.clone(),
                        state: ServerState::Starting,
                        pid: Some(pid),
                        message: format!("started {server} on {machine}"),
                    };
                    out.push(Action::Reply { id, result: Ok(ack) });
                }
                self.next_job(now, domain, server, &mut out);
            }
            Err(detail) => {
                let refusal = Refusal::SpawnFailed { server: server.clone(), detail };
                out.push(Action::Event {
                    kind: EventKind::StartFailed,
                    server: server.clone(),
                    epoch: None,
                    message: refusal.to_string(),
                });
                self.refuse(now, domain, server, refusal, &mut out);
            }
        }
        out
    }

    /// Ends the current start with `refusal`.
    pub(super) fn refuse(
        &mut self,
        now: Mono,
        domain: &Domain,
        server: &ServerName,
        refusal: Refusal,
        out: &mut Vec<Action>,
    ) {
        let Some(slot) = self.slots.get_mut(server) else { return };
        match &slot.work {
            // Answered when it was queued: the refusal goes to the log instead.
            Some(Work { job: Job::Start { id: Some(_), .. }, answered: true, .. }) => {
                out.push(Action::Event {
                    kind: EventKind::StartFailed,
                    server: server.clone(),
                    epoch: None,
                    message: format!("the start accepted while it waited for its turn failed: {refusal}"),
                });
            }
            Some(Work { job: Job::Start { id: Some(id), .. }, .. }) => {
                out.push(Action::Reply { id: *id, result: Err(refusal) });
            }
            _ => {}
        }
        self.give_back_turn(now, domain, server, out);
        self.next_job(now, domain, server, out);
    }
}
