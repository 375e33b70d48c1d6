//! Property 1, **safety** (DESIGN §3): at no instant do two instances of one server run
//! their hosted services. This is what whole server migration promises; everything else
//! checked here is there to catch what would break it before it happens to.
//!
//! An instance runs its services from `KeeperAction::Acquired` until it is fenced, killed or
//! crashes; on a frozen host they do not run while it is frozen (they stop with the freeze
//! and start again on thaw, if the deadline checks that run first let them). Each such
//! stretch is a [`Run`], in true time; a run that starts while another instance of the same
//! server has one open is the violation.

use ferry_core::{Epoch, ServerName};

use super::{Checker, Property};

/// One stretch during which an instance ran its services, in true time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub server: ServerName,
    pub instance: usize,
    pub machine: String,
    pub epoch: Epoch,
    pub start_ms: u64,
    /// `None` while still running at the end.
    pub end_ms: Option<u64>,
}

impl Checker {
    /// Property 1: an instance's services start (or resume after a freeze).
    pub fn run_start(&mut self, at_ms: u64, server: &ServerName, instance: usize, machine: &str, epoch: Epoch) {
        let open = self.running.entry(server.clone()).or_default();
        if open.contains_key(&instance) {
            return;
        }
        let others: Vec<String> = open
            .values()
            .map(|r| {
                let r = &self.runs[*r];
                format!("#{} on {} (epoch {}, since {} ms)", r.instance, r.machine, r.epoch, r.start_ms)
            })
            .collect();
        open.insert(instance, self.runs.len());
        self.runs.push(Run {
            server: server.clone(),
            instance,
            machine: machine.to_string(),
            epoch,
            start_ms: at_ms,
            end_ms: None,
        });
        if !others.is_empty() {
            self.violate(
                Property::Safety,
                at_ms,
                format!(
                    "{server} instance #{instance} on {machine} (epoch {epoch}) runs services while {} also does",
                    others.join(", ")
                ),
            );
        }
    }

    /// Property 1: an instance's services stop (fenced, killed, crashed, host frozen).
    pub fn run_stop(&mut self, at_ms: u64, server: &ServerName, instance: usize) {
        if let Some(open) = self.running.get_mut(server) {
            if let Some(r) = open.remove(&instance) {
                self.runs[r].end_ms = Some(at_ms);
            }
        }
    }

    /// Whether some instance of `server` runs its services now (liveness asks at the end).
    pub fn is_running(&self, server: &ServerName) -> bool {
        self.running.get(server).is_some_and(|o| !o.is_empty())
    }
}
