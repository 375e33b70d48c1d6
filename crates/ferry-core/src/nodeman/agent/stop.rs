//! A stop (graceful, then forced), and every teardown: the floating IP and the mount come
//! off before the stop is answered or a fence announced.

use crate::domain::Domain;
use crate::event::EventKind;
use crate::ids::ServerName;
use crate::nodeman::state::ServerState;
use crate::time::Mono;

use super::*;

impl NodeManager {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn begin_stop(
        &mut self,
        now: Mono,
        domain: &Domain,
        server: &ServerName,
        id: CommandId,
        force: bool,
        timeout_ms: Option<u64>,
        out: &mut Vec<Action>,
    ) {
        let slot = self.slots.get_mut(server).expect("slot");
        let Some(p) = slot.proc.as_mut() else {
            // Nothing runs, but something may be in place (a start that failed after adding
            // the address): a stop leaves the machine clean.
            match teardown_of(domain, server, slot) {
                Some(t) => {
                    set_work_step(slot, Step::TearingDown);
                    out.push(Action::Teardown { server: server.clone(), teardown: t });
                }
                None => {
                    let ack = Ack {
                        server: server.clone(),
                        state: slot.state,
                        pid: None,
                        message: format!("{server} is not running on {}", self.machine),
                    };
                    out.push(Action::Reply { id, result: Ok(ack) });
                    self.next_job(now, domain, server, out);
                }
            }
            return;
        };
        p.stopping = true;
        let (pid, epoch) = (p.pid, p.epoch);
        let w = slot.work.as_mut().expect("work");
        w.stopped = Some((p.incarnation.clone(), p.epoch));
        let timeout = timeout_ms
            .unwrap_or_else(|| domain.server(server).map_or(10_000, |s| s.shutdown_timeout.as_millis() as u64));
        if force {
            w.forced = true;
            w.step = Step::Exiting { until: now + self.timing.kill_patience_ms, forced: true };
            out.push(Action::Event {
                kind: EventKind::Kill,
                server: server.clone(),
                epoch,
                message: format!("killing {server} (pid {pid}) and its services"),
            });
            out.push(Action::KillSession { server: server.clone(), pid, fence: false });
        } else {
            w.step = Step::Exiting { until: now + timeout, forced: false };
            out.push(Action::Event {
                kind: EventKind::Stop,
                server: server.clone(),
                epoch,
                message: format!("asking {server} (pid {pid}) to shut down gracefully"),
            });
            out.push(Action::Terminate { server: server.clone(), pid });
        }
        self.set_state(server, ServerState::Stopping, out);
    }

    /// A stop whose process is gone (or would not die): undo the plumbing, then answer.
    pub(super) fn stop_after_exit(&mut self, now: Mono, domain: &Domain, server: &ServerName, out: &mut Vec<Action>) {
        let slot = self.slots.get_mut(server).expect("slot");
        // The exit's own clean-up is left to the stop, which holds the server's turn.
        match teardown_of(domain, server, slot) {
            Some(t) => {
                set_work_step(slot, Step::TearingDown);
                out.push(Action::Teardown { server: server.clone(), teardown: t });
            }
            None => self.stop_after_teardown(now, domain, server, out),
        }
    }

    pub(super) fn stop_after_teardown(
        &mut self,
        now: Mono,
        domain: &Domain,
        server: &ServerName,
        out: &mut Vec<Action>,
    ) {
        let slot = self.slots.get_mut(server).expect("slot");
        let Some(w) = slot.work.as_mut() else { return };
        if let (true, Some((inc, Some(epoch)))) = (w.forced, w.stopped.clone()) {
            // A killed server could not release its lease: do it on its behalf, so the
            // cluster master does not restart what an operator stopped.
            w.step = Step::Releasing;
            out.push(Action::ReleaseLease { server: server.clone(), incarnation: inc, epoch });
            return;
        }
        self.stop_done(now, domain, server, out);
    }

    pub(super) fn stop_done(&mut self, now: Mono, domain: &Domain, server: &ServerName, out: &mut Vec<Action>) {
        self.set_state(server, ServerState::Shutdown, out);
        let slot = self.slots.get_mut(server).expect("slot");
        // A fence that raced the stop is the stop's: nothing more to announce.
        slot.fenced = None;
        if let Some(Work { job: Job::Stop { id, .. }, .. }) = &slot.work {
            let ack = Ack {
                server: server.clone(),
                state: ServerState::Shutdown,
                pid: None,
                message: format!("stopped {server} on {}", self.machine),
            };
            out.push(Action::Reply { id: *id, result: Ok(ack) });
        }
        self.next_job(now, domain, server, out);
    }

    /// The lease release a forced stop made on the server's behalf.
    pub fn released(
        &mut self,
        now: Mono,
        domain: &Domain,
        server: &ServerName,
        result: Result<(), String>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.awaiting(server, &Step::Releasing) {
            return out;
        }
        let epoch =
            self.slots.get(server).and_then(|s| s.work.as_ref()).and_then(|w| w.stopped.clone()).and_then(|s| s.1);
        if result.is_ok() {
            out.push(Action::Event {
                kind: EventKind::LeaseReleased,
                server: server.clone(),
                epoch,
                message: format!(
                    "released the lease of killed {server} (epoch {})",
                    epoch.map_or("?".to_string(), |e| e.to_string())
                ),
            });
        }
        self.stop_done(now, domain, server, &mut out);
        out
    }

    /// The plumbing is undone (each part: a line for the log or why not; `None` for parts
    /// that had nothing to do).
    pub fn torn_down(
        &mut self,
        now: Mono,
        domain: &Domain,
        server: &ServerName,
        ip: Option<Result<String, String>>,
        unmount: Option<Result<String, String>>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(slot) = self.slots.get_mut(server) else { return out };
        match ip {
            Some(Ok(line)) => {
                slot.ip_plumbed = false;
                out.push(Action::Event {
                    kind: EventKind::Removeif,
                    server: server.clone(),
                    epoch: None,
                    message: line,
                });
            }
            // Still there: keep the record, so the next teardown (or a restarted Node
            // Manager) tries again.
            Some(Err(e)) => out.push(Action::Event {
                kind: EventKind::RemoveifFailed,
                server: server.clone(),
                epoch: None,
                message: e,
            }),
            None => {}
        }
        if unmount.is_some() {
            slot.mounted = false;
        }
        match unmount {
            Some(Ok(line)) => {
                out.push(Action::Event { kind: EventKind::Unmount, server: server.clone(), epoch: None, message: line })
            }
            Some(Err(e)) => out.push(Action::Event {
                kind: EventKind::UnmountFailed,
                server: server.clone(),
                epoch: None,
                message: e,
            }),
            None => {}
        }
        let Some(w) = slot.work.clone() else { return out };
        match (w.job, w.step) {
            (Job::Stop { .. }, Step::TearingDown) => self.stop_after_teardown(now, domain, server, &mut out),
            (Job::Teardown { state }, Step::TearingDown) => self.finish_teardown(now, domain, server, state, &mut out),
            (Job::Start { .. }, Step::Undoing { refusal }) => self.refuse(now, domain, server, refusal, &mut out),
            _ => {}
        }
        out
    }

    pub(super) fn finish_teardown(
        &mut self,
        now: Mono,
        domain: &Domain,
        server: &ServerName,
        state: ServerState,
        out: &mut Vec<Action>,
    ) {
        let slot = self.slots.get_mut(server).expect("slot");
        if slot.proc.is_none() {
            slot.state = state;
            out.push(Action::SetState { server: server.clone(), state });
        }
        // A fence is announced once the address is gone: a start elsewhere finds it free.
        if let Some(f) = slot.fenced.take() {
            if f.killed > 0 {
                out.push(Action::Event {
                    kind: EventKind::Fenced,
                    server: server.clone(),
                    epoch: f.epoch,
                    message: format!(
                        "{server} (pid {}) missed its lease deadline by {} ms; the Node Manager killed its {} process{}",
                        f.pid,
                        f.late_ms,
                        f.killed,
                        if f.killed == 1 { "" } else { "es" }
                    ),
                });
            }
        }
        self.next_job(now, domain, server, out);
    }
}
