//! The faults of a scenario, and the healing that ends them: power loss and reboot,
//! host freeze and thaw (deadline checks first), SIGSTOP and SIGCONT of a server, crashes,
//! cuts, splits, slow links, store outages and wall-clock jumps; then at `heal_at_ms` every
//! fault stops, and the simulated operator runs `start-cluster` whenever no server process
//! is left (the master role lives in the servers, so nothing else would restart them).

use std::collections::BTreeSet;

use rand::Rng;

use super::nodemanager::{Nm, NmItem};
use super::server::InstItem;
use super::{Ev, HostId, InstId, Sim};
use crate::clock::HostClock;
use crate::scenario::{Fault, Links, ProcTarget, Target};

impl Sim {
    fn resolve(&mut self, target: Target) -> Option<HostId> {
        let h = match target {
            Target::Machine(m) => m,
            Target::MasterHost => match self.master_inst() {
                Some(i) => self.insts[i].host,
                None => self.rng.gen_range(0..self.sc.machines.len()),
            },
            Target::HostOf(s) => self.insts[self.newest(s)?].host,
            Target::NewestHost => self.insts[*self.alive.last()?].host,
        };
        self.hosts[h].up.then_some(h)
    }

    fn master_inst(&self) -> Option<InstId> {
        self.active_tenures.iter().rev().map(|t| self.tenures[*t].inst).find(|i| self.insts[*i].alive)
    }

    fn newest(&self, s: usize) -> Option<InstId> {
        let name = &self.sc.servers.get(s)?.name;
        self.alive.iter().rev().copied().find(|i| &self.insts[*i].server == name)
    }

    pub(super) fn inject(&mut self, fault: Fault) {
        if self.healed {
            return;
        }
        tr!(self, "FAULT {fault:?}");
        match fault {
            Fault::CrashMachine { target, down_ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                self.crash_machine(h);
                let boot = self.hosts[h].boot;
                self.schedule(self.now + down_ms, Ev::Reboot { host: h, boot });
            }
            Fault::Freeze { target, ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                if let Some(token) = self.freeze(h) {
                    self.schedule(self.now + ms, Ev::Thaw { host: h, token, then_cut_ms: None });
                }
            }
            Fault::FreezeThenIsolate { target, freeze_ms, cut_ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                if let Some(token) = self.freeze(h) {
                    self.schedule(self.now + freeze_ms, Ev::Thaw { host: h, token, then_cut_ms: Some(cut_ms) });
                }
            }
            Fault::Hang { target, ms } => {
                let Some(i) = self.resolve_proc(target) else {
                    return;
                };
                if self.paused(i) {
                    return;
                }
                tr!(self, "SIGSTOP {}", self.who(i));
                self.insts[i].hung = true;
                self.schedule(self.now + ms, Ev::Resume(i));
            }
            Fault::CrashProcess { target } => {
                let Some(i) = self.resolve_proc(target) else {
                    return;
                };
                if self.hosts[self.insts[i].host].frozen {
                    return;
                }
                self.inst_exit(i, None, "crashed");
            }
            Fault::Cut { target, links, ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                self.cut(h, links, ms);
            }
            Fault::Split { side_a, ms } => {
                let mut pairs = BTreeSet::new();
                for a in 0..self.sc.machines.len() {
                    for b in 0..self.sc.machines.len() {
                        if side_a.contains(&a) != side_a.contains(&b) {
                            pairs.insert((a, b));
                        }
                    }
                }
                let id = self.id();
                self.net.cut(id, pairs);
                self.schedule(self.now + ms, Ev::Uncut(id));
            }
            Fault::Slow { target, extra_ms, ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                let id = self.id();
                self.net.slow(id, h, extra_ms);
                self.schedule(self.now + ms, Ev::Unslow(id));
            }
            Fault::StoreOutage { ms } => {
                let id = self.id();
                self.store_outages.insert(id);
                self.schedule(self.now + ms, Ev::StoreBack(id));
            }
            Fault::ClockJump { target, jump_ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                self.hosts[h].clock.wall_offset_ms += jump_ms;
                tr!(self, "wall clock of {} now reads {}", self.hosts[h].name, self.hosts[h].clock.wall_ms(self.now));
            }
        }
    }

    fn resolve_proc(&self, target: ProcTarget) -> Option<InstId> {
        match target {
            ProcTarget::Server(s) => self.newest(s),
            ProcTarget::Master => self.master_inst(),
            ProcTarget::Newest => self.alive.last().copied(),
        }
    }

    pub(super) fn cut(&mut self, h: HostId, links: Links, ms: u64) {
        let mut pairs = BTreeSet::new();
        let db = self.db;
        if matches!(links, Links::Store | Links::Full | Links::ToStore) {
            pairs.insert((h, db));
        }
        if matches!(links, Links::Store | Links::Full | Links::FromStore) {
            pairs.insert((db, h));
        }
        if matches!(links, Links::Peers | Links::Full) {
            for o in (0..self.sc.machines.len()).filter(|o| *o != h) {
                pairs.insert((h, o));
                pairs.insert((o, h));
            }
        }
        let id = self.id();
        tr!(self, "cut {:?} of {}", links, self.hosts[h].name);
        self.net.cut(id, pairs);
        self.schedule(self.now + ms, Ev::Uncut(id));
    }

    fn crash_machine(&mut self, h: HostId) {
        tr!(self, "machine {} loses power", self.hosts[h].name);
        let on_host: Vec<InstId> = self.alive.iter().copied().filter(|i| self.insts[*i].host == h).collect();
        for i in on_host {
            if self.insts[i].tenure.is_some() {
                self.master_died_at.push(self.now);
            }
            self.end_tenure(i, "machine crashed");
            let inst = &mut self.insts[i];
            inst.alive = false;
            if inst.services_up {
                inst.services_up = false;
                let server = inst.server.clone();
                self.checker.run_stop(self.now, &server, i);
            }
            self.alive.remove(&i);
        }
        let host = &mut self.hosts[h];
        host.up = false;
        host.frozen = false;
        host.nm = None;
        host.boot += 1;
    }

    pub(super) fn reboot(&mut self, h: HostId) {
        let boot_mono = self.rng.gen_range(3_000..20_000);
        let host = &mut self.hosts[h];
        host.up = true;
        host.clock = HostClock::new(host.clock.drift_ppm, boot_mono, self.now, host.clock.wall_offset_ms);
        host.nm = Some(Nm::new(host.machine.clone().expect("a machine"), self.policy, self.bugs));
        tr!(self, "machine {} boots; its Node Manager starts empty", self.hosts[h].name);
    }

    /// Suspends a host; returns the token its thaw must carry.
    fn freeze(&mut self, h: HostId) -> Option<u64> {
        if self.hosts[h].frozen {
            return None;
        }
        tr!(self, "host {} freezes", self.hosts[h].name);
        self.hosts[h].frozen = true;
        self.hosts[h].freeze_token += 1;
        let on_host: Vec<InstId> = self.alive.iter().copied().filter(|i| self.insts[*i].host == h).collect();
        for i in on_host {
            if self.insts[i].services_up {
                let server = self.insts[i].server.clone();
                self.checker.run_stop(self.now, &server, i);
            }
        }
        Some(self.hosts[h].freeze_token)
    }

    /// Resumes a host: the Node Manager's and every process's deadline checks first, then
    /// the services that survived resume, then the work queued meanwhile.
    pub(super) fn thaw(&mut self, h: HostId) {
        tr!(self, "host {} thaws", self.hosts[h].name);
        self.hosts[h].frozen = false;
        self.nm_tick(h);
        let on_host: Vec<InstId> = self.alive.iter().copied().filter(|i| self.insts[*i].host == h).collect();
        for &i in &on_host {
            if self.insts[i].alive && !self.insts[i].hung && self.insts[i].started {
                self.deadline_checks(i);
            }
        }
        for &i in &on_host {
            let inst = &self.insts[i];
            if inst.alive && inst.services_up {
                let (server, epoch) = (inst.server.clone(), inst.epoch);
                let machine = self.hosts[h].name.clone();
                self.checker.run_start(self.now, &server, i, &machine, epoch);
            }
        }
        let queued: Vec<NmItem> = match self.hosts[h].nm.as_mut() {
            Some(nm) => nm.inbox.drain(..).collect(),
            None => vec![],
        };
        for item in queued {
            if !self.nm_running(h, self.hosts[h].boot) {
                break;
            }
            match item {
                NmItem::Msg(p) => self.nm_handle(h, p),
                NmItem::Exit { server, incarnation, code, why } => self.nm_exited(h, &server, &incarnation, code, &why),
            }
        }
        self.nm_reschedule(h);
        for i in on_host {
            if !self.insts[i].hung {
                self.drain(i);
            }
        }
    }

    fn drain(&mut self, i: InstId) {
        while let Some(item) = self.insts[i].inbox.pop_front() {
            if !self.insts[i].alive || self.paused(i) {
                self.insts[i].inbox.push_front(item);
                break;
            }
            match item {
                InstItem::Msg(p) => self.inst_handle(i, p),
                InstItem::Started => self.inst_start(i),
            }
        }
        self.inst_poll(i);
    }

    /// SIGCONT: deadline checks first, then what queued up.
    pub(super) fn resume(&mut self, i: InstId) {
        if !self.insts[i].alive || !self.insts[i].hung {
            return;
        }
        tr!(self, "SIGCONT {}", self.who(i));
        self.insts[i].hung = false;
        if self.paused(i) {
            return;
        }
        if self.insts[i].started {
            self.deadline_checks(i);
        }
        self.drain(i);
    }

    pub(super) fn heal(&mut self) {
        tr!(self, "HEAL: faults stop");
        self.healed = true;
        self.net.heal();
        self.store_outages.clear();
        for h in 0..self.sc.machines.len() {
            if !self.hosts[h].up {
                self.reboot(h);
            }
        }
        for h in 0..self.sc.machines.len() {
            if self.hosts[h].frozen {
                self.thaw(h);
            }
        }
        let hung: Vec<InstId> = self.alive.iter().copied().filter(|i| self.insts[*i].hung).collect();
        for i in hung {
            self.resume(i);
        }
        self.start_cluster_if_down();
    }

    /// With no `ferry server` process left anywhere, nobody can be master and nothing
    /// restarts by itself (the master role lives in the servers): the operator notices and
    /// runs `ferry start-cluster` (Figure 7-1). Checked every few lease lifetimes, so a
    /// seed whose cluster died early still exercises the rest of its faults.
    pub(super) fn operator(&mut self) {
        self.start_cluster_if_down();
        let at = self.now + 4 * self.sc.ttl_ms() + self.sc.interval_ms;
        self.schedule(at, Ev::Operator);
    }

    fn start_cluster_if_down(&mut self) {
        if self.alive.is_empty() {
            self.stats.operator_starts += 1;
            if self.healed {
                self.operator_at_ms = Some(self.now);
            }
            tr!(self, "OPERATOR: the whole cluster is down; start-cluster");
            for s in 0..self.sc.servers.len() {
                let (home, server) = (self.sc.servers[s].home, self.sc.servers[s].name.clone());
                if self.nm_running(home, self.hosts[home].boot) {
                    self.nm_start(home, &server);
                }
            }
        }
    }
}
