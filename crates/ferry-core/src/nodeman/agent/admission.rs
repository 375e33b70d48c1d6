//! Turns to start: at most the machine's `max_concurrent_starts` starts run at once, each
//! from its lease check until its server reports RUNNING, exits, or runs out of its start
//! budget ([`start_budget_ms`]). A start that finds every turn taken is answered at once
//! ("accepted, waiting for its turn"), so neither the admin nor a cluster master counts the
//! machine as unreachable, and runs when a turn is given back; a restart after a crash goes
//! to the front. Why: a server's start (its process, its configuration, its TLS handshakes,
//! its first lease write, its services) costs the machine far more than a renewal, and a
//! hundred at once starve the renewals of the servers already up until they fence
//! themselves (issue 11: 649 fences while 80 servers started).

use crate::domain::{Domain, DEFAULT_MACHINE_CONCURRENT_STARTS};
use crate::event::EventKind;
use crate::ids::ServerName;
use crate::nodeman::state::ServerState;
use crate::time::Mono;

use super::*;

impl NodeManager {
    /// How many starts may run at once on this machine.
    fn turns(&self, domain: &Domain) -> usize {
        domain.machine(&self.machine).map_or(DEFAULT_MACHINE_CONCURRENT_STARTS, |m| m.max_concurrent_starts).max(1)
            as usize
    }

    /// Gives the start of `server` a turn (true: go on now), or queues it and answers its
    /// command at once.
    pub(super) fn take_turn(&mut self, now: Mono, domain: &Domain, server: &ServerName, out: &mut Vec<Action>) -> bool {
        self.admitted.remove(server);
        let handover = self.slots.get(server).and_then(|s| s.work.as_ref()).is_some_and(|w| w.handover_from.is_some());
        if self.admitted.len() < self.turns(domain) && (self.waiting.is_empty() || handover) {
            self.admitted.insert(server.clone(), now + start_budget_ms(domain, server));
            return true;
        }
        if handover {
            self.waiting.push_front(server.clone());
        } else {
            self.waiting.push_back(server.clone());
        }
        let ahead = self.waiting.iter().position(|s| s == server).unwrap_or(0);
        let message = format!(
            "{server} waits for its turn to start on {}: {} start(s) running, {ahead} waiting ahead of it (max_concurrent_starts = {})",
            self.machine,
            self.admitted.len(),
            self.turns(domain)
        );
        let slot = self.slots.get_mut(server).expect("slot");
        let w = slot.work.as_mut().expect("work");
        w.step = Step::Queued;
        if let Job::Start { id: Some(id), .. } = w.job {
            w.answered = true;
            let ack = Ack { server: server.clone(), state: ServerState::Starting, pid: None, message: message.clone() };
            out.push(Action::Reply { id, result: Ok(ack) });
        }
        out.push(Action::Event { kind: EventKind::StartQueued, server: server.clone(), epoch: None, message });
        false
    }

    /// The start of `server` is over (its server RUNNING, exited or refused): its turn goes
    /// to the next start waiting.
    pub(super) fn give_back_turn(&mut self, now: Mono, domain: &Domain, server: &ServerName, out: &mut Vec<Action>) {
        if self.admitted.remove(server).is_some() {
            self.next_turns(now, domain, out);
        }
    }

    /// Starts waiting ones while turns are free.
    fn next_turns(&mut self, now: Mono, domain: &Domain, out: &mut Vec<Action>) {
        while self.admitted.len() < self.turns(domain) {
            let Some(next) = self.waiting.pop_front() else { return };
            let queued = self.slots.get(&next).and_then(|s| s.work.as_ref()).is_some_and(|w| w.step == Step::Queued);
            if !queued {
                continue;
            }
            self.admitted.insert(next.clone(), now + start_budget_ms(domain, &next));
            self.start_admitted(now, domain, &next, out);
        }
    }

    /// A stop reached a start that still waits for its turn: the start is dropped.
    pub(super) fn cancel_queued(&mut self, now: Mono, domain: &Domain, server: &ServerName, out: &mut Vec<Action>) {
        self.waiting.retain(|s| s != server);
        out.push(Action::Event {
            kind: EventKind::StartFailed,
            server: server.clone(),
            epoch: None,
            message: format!("the start of {server} that waited for its turn was dropped: a stop came first"),
        });
        self.next_job(now, domain, server, out);
    }

    /// Turns whose start ran out of its budget go to the next starts (from `tick`).
    pub(super) fn expire_turns(&mut self, now: Mono, domain: &Domain, out: &mut Vec<Action>) {
        let over: Vec<ServerName> =
            self.admitted.iter().filter(|(_, until)| now >= **until).map(|(s, _)| s.clone()).collect();
        for server in over {
            self.admitted.remove(&server);
        }
        self.next_turns(now, domain, out);
    }

    /// The server reported RUNNING, or ended.
    pub(super) fn start_over(&mut self, now: Mono, domain: &Domain, server: &ServerName, out: &mut Vec<Action>) {
        let starting = self
            .slots
            .get(server)
            .and_then(|s| s.work.as_ref())
            .is_some_and(|w| matches!(w.job, Job::Start { .. }) && !matches!(w.step, Step::Queued | Step::Killing));
        if !starting {
            self.give_back_turn(now, domain, server, out);
        }
    }
}

/// The longest one start holds its turn: one lease time to live for the process to take its
/// lease, plus its slowest service's `start_timeout`, plus one interval for the health check
/// that declares it RUNNING. A start that has not finished by then (a service that never
/// answers) no longer holds the others back.
pub(crate) fn start_budget_ms(domain: &Domain, server: &ServerName) -> u64 {
    domain.server(server).map_or(10_000, |s| {
        let services = s.services.iter().map(|svc| svc.start_timeout.as_millis() as u64).max().unwrap_or(0);
        s.lease_ttl().as_millis() as u64 + services + s.health_check_interval.as_millis() as u64
    })
}
