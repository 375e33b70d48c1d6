//! `ferry validate`'s warning on timings that leave too little room for a takeover: when a
//! machine dies, the master spreads its servers over their candidates, and each machine
//! that takes some over starts them `max_concurrent_starts` at a time. The last of them
//! runs about `waves × one start` after the first; when that is longer than one lease time
//! to live, those servers stay down well past the failover bound DESIGN §6 promises
//! (detection + one start), and the master's own start timeout may run out on them.

use std::collections::BTreeMap;

use super::{Domain, DEFAULT_MACHINE_CONCURRENT_STARTS};
use crate::ids::MachineName;

/// What one server start takes on a busy machine, from its Node Manager's turn until its
/// services answer: measured with `ferry-bench scale` (a 2-core host, four Node Managers,
/// a python3 service per server). A larger machine starts faster; a slower service, slower.
pub const ASSUMED_START_MS: u64 = 400;

/// The most one machine would have to start when another one dies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    pub machine: MachineName,
    pub dead: MachineName,
    pub servers: usize,
    /// `max_concurrent_starts` of `machine`.
    pub turns: u32,
    /// About how long after the first the last of them runs.
    pub takes_ms: u64,
    /// The shortest lease time to live among them.
    pub ttl_ms: u64,
}

impl Takeover {
    pub fn warning(&self) -> String {
        format!(
            "if {dead} fails, {machine} may have to start {n} of its servers, {turns} at a time (max_concurrent_starts); at about {start} ms a start (assumed: measured on a 2-core host with ferry-bench scale) the last runs about {takes} ms after the first, longer than their lease time to live ({ttl} ms): add migration candidates so its servers spread further, raise machines.max_concurrent_starts on a machine that can start more at once, or lengthen health_check_interval",
            dead = self.dead,
            machine = self.machine,
            n = self.servers,
            turns = self.turns,
            start = ASSUMED_START_MS,
            takes = self.takes_ms,
            ttl = self.ttl_ms,
        )
    }
}

impl Domain {
    /// For each machine, the largest takeover it may face, when it is longer than a lease.
    pub fn takeovers(&self) -> Vec<Takeover> {
        let mut worst: BTreeMap<MachineName, Takeover> = BTreeMap::new();
        for dead in &self.machines {
            // As the master spreads them: a server's own candidates first in their order,
            // else the cluster's candidate starting the fewest so far.
            let mut landed: BTreeMap<MachineName, (usize, u64)> = BTreeMap::new();
            for s in self.servers.iter().filter(|s| s.machine == dead.name && s.auto_migration) {
                let all: Vec<MachineName> = self.candidates_for(s).into_iter().filter(|m| m != &dead.name).collect();
                let target = all
                    .iter()
                    .find(|m| s.candidate_machines.contains(m))
                    .cloned()
                    .or_else(|| all.iter().min_by_key(|m| landed.get(*m).map_or(0, |l| l.0)).cloned());
                let Some(target) = target else { continue };
                let ttl = s.lease_ttl().as_millis() as u64;
                let entry = landed.entry(target).or_insert((0, ttl));
                entry.0 += 1;
                entry.1 = entry.1.min(ttl);
            }
            for (machine, (servers, ttl_ms)) in landed {
                let turns = self
                    .machine(&machine)
                    .map_or(DEFAULT_MACHINE_CONCURRENT_STARTS, |m| m.max_concurrent_starts)
                    .max(1);
                let waves = servers.div_ceil(turns as usize) as u64;
                let t = Takeover {
                    machine: machine.clone(),
                    dead: dead.name.clone(),
                    servers,
                    turns,
                    takes_ms: waves * ASSUMED_START_MS,
                    ttl_ms,
                };
                if worst.get(&machine).is_none_or(|w| w.servers < t.servers) {
                    worst.insert(machine, t);
                }
            }
        }
        worst.into_values().filter(|t| t.takes_ms > t.ttl_ms).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::Domain;

    fn domain(servers: usize, machines: usize, turns: u32, interval: &str) -> Domain {
        let mut text = String::from("name = \"d\"\n[leasing]\ndata_source = \"sqlite://l.db\"\n");
        for m in 1..=machines {
            text += &format!(
                "[[machines]]\nname = \"m{m}\"\nnode_manager = \"127.0.0.1:{}\"\nmax_concurrent_starts = {turns}\n",
                5000 + m
            );
        }
        let all: Vec<String> = (1..=machines).map(|m| format!("\"m{m}\"")).collect();
        text += &format!("[[clusters]]\nname = \"c\"\nmigration_candidates = [{}]\n", all.join(", "));
        for s in 0..servers {
            text += &format!(
                "[[servers]]\nname = \"s{s}\"\ncluster = \"c\"\nmachine = \"m{}\"\nhealth_check_interval = \"{interval}\"\n",
                s % machines + 1
            );
        }
        Domain::parse("d.toml", &text).expect("valid")
    }

    #[test]
    fn a_takeover_longer_than_a_lease_is_named_with_what_it_assumed() {
        // 100 servers on 4 machines: a dead machine's 25 spread over the other three, 9 at
        // most on one; 4 at a time is 3 waves, 1200 ms, within a 1500 ms lease.
        assert_eq!(domain(100, 4, 4, "500ms").takeovers(), vec![]);
        // 200: 17 at most, 5 waves, 2000 ms > 1500 ms.
        let t = domain(200, 4, 4, "500ms").takeovers();
        assert_eq!(t.len(), 4, "{t:?}");
        assert_eq!((t[0].servers, t[0].takes_ms, t[0].ttl_ms), (17, 2000, 1500));
        let w = t[0].warning();
        assert!(w.contains("may have to start 17 of its servers, 4 at a time"), "{w}");
        assert!(w.contains("assumed"), "{w}");
        // More turns, or a longer lease, and the warning goes.
        assert_eq!(domain(200, 4, 8, "500ms").takeovers(), vec![]);
        assert_eq!(domain(200, 4, 4, "1s").takeovers(), vec![]);
        // Two machines: all of one's servers land on the other.
        let t = domain(40, 2, 4, "500ms").takeovers();
        assert_eq!(t.iter().map(|t| t.servers).collect::<Vec<_>>(), vec![20, 20]);
    }
}
