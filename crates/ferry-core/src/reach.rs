//! What a cluster master knows about which Node Managers answer (Figure 7-2 step 3 without
//! waiting out a connect timeout): it checks each machine it may command once per interval,
//! and a machine that stopped answering is skipped at once instead of first being called.
//!
//! Why the rule is this strict: counting a machine unreachable when it is not makes the
//! master skip the restart in place and migrate a server off a machine that is up (seen on
//! a busy start: a new master that had heard nothing yet treated every machine as silent
//! since boot, and one slow check then moved a third of the servers). So silence counts only
//! from the moment this master started asking, and only after two failed checks in a row.

use std::collections::BTreeMap;

use crate::ids::MachineName;
use crate::time::Mono;

/// How many checks in a row must fail before a machine counts as unreachable.
pub const FAILED_CHECKS_IN_ROW: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Seen {
    last_answer: Option<Mono>,
    failures_in_row: u32,
}

/// One master tenure's view of its Node Managers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachability {
    /// When this tenure began asking: nobody is silent for longer than that.
    since: Mono,
    interval_ms: u64,
    seen: BTreeMap<MachineName, Seen>,
}

impl Reachability {
    /// A view for a master that starts checking at `now`, once per `interval_ms`.
    pub fn new(now: Mono, interval_ms: u64) -> Self {
        Reachability { since: now, interval_ms, seen: BTreeMap::new() }
    }

    /// The answer (or failure) of one health check of `machine`.
    pub fn on_check(&mut self, machine: &MachineName, answered: bool, now: Mono) {
        let s = self.seen.entry(machine.clone()).or_default();
        if answered {
            s.last_answer = Some(now.max(s.last_answer.unwrap_or(now)));
            s.failures_in_row = 0;
        } else {
            s.failures_in_row = s.failures_in_row.saturating_add(1);
        }
    }

    /// How long `machine` has been silent, if it counts as unreachable: its last
    /// [`FAILED_CHECKS_IN_ROW`] checks failed and it has not answered for two intervals
    /// (counted from its last answer, or from when this tenure began asking).
    pub fn unreachable_for(&self, machine: &MachineName, now: Mono) -> Option<u64> {
        let s = self.seen.get(machine)?;
        let silent_since = s.last_answer.unwrap_or(self.since).max(self.since);
        let silent_ms = now.since(silent_since);
        (s.failures_in_row >= FAILED_CHECKS_IN_ROW && silent_ms >= 2 * self.interval_ms).then_some(silent_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> MachineName {
        MachineName::new(s).unwrap()
    }

    #[test]
    fn silence_counts_from_the_tenure_not_from_boot() {
        // A master that began asking at 1,457,000 ms of uptime: one failed check of a machine
        // it never heard from is not "silent for 1,457,000 ms".
        let mut r = Reachability::new(Mono(1_457_000), 500);
        r.on_check(&m("c"), false, Mono(1_457_400));
        assert_eq!(r.unreachable_for(&m("c"), Mono(1_457_400)), None, "one failed check is not enough");
        assert_eq!(r.unreachable_for(&m("c"), Mono(1_458_000)), None, "still one failed check");
        r.on_check(&m("c"), false, Mono(1_458_000));
        assert_eq!(r.unreachable_for(&m("c"), Mono(1_458_000)), Some(1_000), "two failures, two intervals");
        assert_eq!(r.unreachable_for(&m("d"), Mono(1_458_000)), None, "never checked: not known unreachable");
    }

    #[test]
    fn an_answer_resets_the_count_and_the_silence() {
        let mut r = Reachability::new(Mono(0), 100);
        r.on_check(&m("c"), true, Mono(50));
        r.on_check(&m("c"), false, Mono(150));
        r.on_check(&m("c"), false, Mono(200));
        assert_eq!(r.unreachable_for(&m("c"), Mono(200)), None, "answered 150 ms ago: under two intervals");
        assert_eq!(r.unreachable_for(&m("c"), Mono(250)), Some(200));
        r.on_check(&m("c"), true, Mono(260));
        assert_eq!(r.unreachable_for(&m("c"), Mono(600)), None, "answered again");
        r.on_check(&m("c"), false, Mono(600));
        assert_eq!(r.unreachable_for(&m("c"), Mono(600)), None, "one failure after an answer");
    }

    #[test]
    fn a_late_answer_does_not_move_the_last_answer_back() {
        let mut r = Reachability::new(Mono(0), 100);
        r.on_check(&m("c"), true, Mono(500));
        r.on_check(&m("c"), true, Mono(300));
        r.on_check(&m("c"), false, Mono(600));
        r.on_check(&m("c"), false, Mono(700));
        assert_eq!(r.unreachable_for(&m("c"), Mono(700)), Some(200));
    }
}
