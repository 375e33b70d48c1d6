//! The faults of a scenario, and the healing that ends them: power loss and reboot,
//! host freeze and thaw (deadline checks first), SIGSTOP and SIGCONT of a server, crashes,
//! cuts, splits, slow links, store outages and wall-clock jumps; then at `heal_at_ms` every
//! fault stops, and the simulated operator runs `start-cluster` whenever no server process
//! is left (the master role lives in the servers, so nothing else would restart them).

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_core::leadership::LeadershipTiming;
use ferry_core::LeaseName;
use rand::Rng;

use super::nodemanager::{Nm, NmItem};
use super::server::InstanceItem;
use super::{Event, HostId, InstanceId, Sim};
use crate::clock::HostClock;
use crate::scenario::{Fault, Links, ProcTarget, Target};

impl Sim {
    /// The machine a fault hits, if it is up.
    fn resolve(&mut self, target: Target) -> Option<HostId> {
        let h = match target {
            Target::Machine(m) => m,
            Target::MasterHost => match self.master_instance() {
                Some(i) => self.instances[i].host,
                None => self.rng.gen_range(0..self.scenario.machines.len()),
            },
            Target::HostOf(s) => self.instances[self.newest(s)?].host,
            Target::NewestHost => self.instances[*self.alive.last()?].host,
        };
        self.hosts[h].up.then_some(h)
    }

    /// The live process of the newest tenure still under way.
    fn master_instance(&self) -> Option<InstanceId> {
        self.active_tenures.iter().rev().map(|t| self.tenures[*t].instance).find(|i| self.instances[*i].alive)
    }

    /// The newest live process of the scenario's server number `s`.
    fn newest(&self, s: usize) -> Option<InstanceId> {
        let name = &self.scenario.servers.get(s)?.name;
        self.alive.iter().rev().copied().find(|i| &self.instances[*i].server == name)
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
                self.schedule(self.now + down_ms, Event::Reboot { host: h, boot });
            }
            Fault::Freeze { target, ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                if let Some(token) = self.freeze(h) {
                    self.schedule(self.now + ms, Event::Thaw { host: h, token, then_cut_ms: None });
                }
            }
            Fault::FreezeThenIsolate { target, freeze_ms, cut_ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                if let Some(token) = self.freeze(h) {
                    self.schedule(self.now + freeze_ms, Event::Thaw { host: h, token, then_cut_ms: Some(cut_ms) });
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
                self.instances[i].hung = true;
                self.schedule(self.now + ms, Event::Resume(i));
            }
            Fault::CrashProcess { target } => {
                let Some(i) = self.resolve_proc(target) else {
                    return;
                };
                if self.hosts[self.instances[i].host].frozen {
                    return;
                }
                self.instance_exit(i, None, "crashed");
            }
            Fault::Cut { target, links, ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                self.cut(h, links, ms);
            }
            Fault::Split { side_a, ms } => {
                let mut pairs = BTreeSet::new();
                for a in 0..self.scenario.machines.len() {
                    for b in 0..self.scenario.machines.len() {
                        if side_a.contains(&a) != side_a.contains(&b) {
                            pairs.insert((a, b));
                        }
                    }
                }
                let id = self.fresh_id();
                self.net.cut(id, pairs);
                self.schedule(self.now + ms, Event::Uncut(id));
            }
            Fault::Slow { target, extra_ms, ms } => {
                let Some(h) = self.resolve(target) else {
                    return;
                };
                let id = self.fresh_id();
                self.net.slow(id, h, extra_ms);
                self.schedule(self.now + ms, Event::Unslow(id));
            }
            Fault::StoreOutage { ms } => {
                let id = self.fresh_id();
                self.store_outages.insert(id);
                self.schedule(self.now + ms, Event::StoreBack(id));
            }
            Fault::AuthorityChange { down_ms, clock_offset_ms } => {
                let id = self.fresh_id();
                self.store_outages.insert(id);
                // The old authority was confirmed by a quorum at the latest now: it may go on
                // renewing for one confirmation's validity (for ever, with the planted bug).
                let valid_for = self.authority_timing().valid_for_ms();
                let serves_until = if self.bugs.leader_unconfirmed_renews { u64::MAX } else { self.now + valid_for };
                let ttl = self.scenario.interval_ms * self.scenario.periods as u64;
                self.deposed = Some(super::Deposed {
                    store: self.store.clone(),
                    serves_until,
                    gone_at: self.now + down_ms + 2 * ttl,
                    replaced: false,
                });
                self.schedule(self.now + down_ms, Event::NewAuthority { outage: id, clock_offset_ms });
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

    /// The process a fault hits.
    fn resolve_proc(&self, target: ProcTarget) -> Option<InstanceId> {
        match target {
            ProcTarget::Server(s) => self.newest(s),
            ProcTarget::Master => self.master_instance(),
            ProcTarget::Newest => self.alive.last().copied(),
        }
    }

    /// Cuts `links` of machine `h` for `ms`.
    pub(super) fn cut(&mut self, h: HostId, links: Links, ms: u64) {
        let mut pairs = BTreeSet::new();
        let store_host = self.store_host;
        if matches!(links, Links::Store | Links::Full | Links::ToStore) {
            pairs.insert((h, store_host));
        }
        if matches!(links, Links::Store | Links::Full | Links::FromStore) {
            pairs.insert((store_host, h));
        }
        if matches!(links, Links::Peers | Links::Full) {
            for o in (0..self.scenario.machines.len()).filter(|o| *o != h) {
                pairs.insert((h, o));
                pairs.insert((o, h));
            }
        }
        let id = self.fresh_id();
        tr!(self, "cut {:?} of {}", links, self.hosts[h].name);
        self.net.cut(id, pairs);
        self.schedule(self.now + ms, Event::Uncut(id));
    }

    /// Power loss: every process of the machine dies with its Node Manager.
    fn crash_machine(&mut self, h: HostId) {
        tr!(self, "machine {} loses power", self.hosts[h].name);
        let on_host: Vec<InstanceId> = self.alive.iter().copied().filter(|i| self.instances[*i].host == h).collect();
        for i in on_host {
            if self.instances[i].tenure.is_some() {
                self.master_died_at.push(self.now);
            }
            self.end_tenure(i, "machine crashed");
            let instance = &mut self.instances[i];
            instance.alive = false;
            if instance.services_up {
                instance.services_up = false;
                let server = instance.server.clone();
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

    /// The machine boots with a new boot-time clock and an empty Node Manager.
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
        let on_host: Vec<InstanceId> = self.alive.iter().copied().filter(|i| self.instances[*i].host == h).collect();
        for i in on_host {
            if self.instances[i].services_up {
                let server = self.instances[i].server.clone();
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
        let on_host: Vec<InstanceId> = self.alive.iter().copied().filter(|i| self.instances[*i].host == h).collect();
        for &i in &on_host {
            if self.instances[i].alive && !self.instances[i].hung && self.instances[i].started {
                self.deadline_checks(i);
            }
        }
        for &i in &on_host {
            let instance = &self.instances[i];
            if instance.alive && instance.services_up {
                let (server, epoch) = (instance.server.clone(), instance.epoch);
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
            if !self.instances[i].hung {
                self.drain(i);
            }
        }
    }

    /// Runs what queued up for a process while it could not run.
    fn drain(&mut self, i: InstanceId) {
        while let Some(item) = self.instances[i].inbox.pop_front() {
            if !self.instances[i].alive || self.paused(i) {
                self.instances[i].inbox.push_front(item);
                break;
            }
            match item {
                InstanceItem::Msg(p) => self.instance_handle(i, p),
                InstanceItem::Started => self.instance_start(i),
            }
        }
        self.instance_poll(i);
    }

    /// SIGCONT: deadline checks first, then what queued up.
    pub(super) fn resume(&mut self, i: InstanceId) {
        if !self.instances[i].alive || !self.instances[i].hung {
            return;
        }
        tr!(self, "SIGCONT {}", self.who(i));
        self.instances[i].hung = false;
        if self.paused(i) {
            return;
        }
        if self.instances[i].started {
            self.deadline_checks(i);
        }
        self.drain(i);
    }

    /// Every fault stops: links healed, store back, machines booted, hosts thawed, processes
    /// continued; the operator starts the cluster if nothing of it is left.
    pub(super) fn heal(&mut self) {
        tr!(self, "HEAL: faults stop");
        self.healed = true;
        self.net.heal();
        self.store_outages.clear();
        for h in 0..self.scenario.machines.len() {
            if !self.hosts[h].up {
                self.reboot(h);
            }
        }
        for h in 0..self.scenario.machines.len() {
            if self.hosts[h].frozen {
                self.thaw(h);
            }
        }
        let hung: Vec<InstanceId> = self.alive.iter().copied().filter(|i| self.instances[*i].hung).collect();
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
        let at = self.now + 4 * self.scenario.ttl_ms() + self.scenario.interval_ms;
        self.schedule(at, Event::Operator);
    }

    fn start_cluster_if_down(&mut self) {
        if self.alive.is_empty() {
            self.stats.operator_starts += 1;
            if self.healed {
                self.operator_at_ms = Some(self.now);
            }
            tr!(self, "OPERATOR: the whole cluster is down; start-cluster");
            for s in 0..self.scenario.servers.len() {
                let (home, server) = (self.scenario.servers[s].home, self.scenario.servers[s].name.clone());
                if self.nm_running(home, self.hosts[home].boot) {
                    self.nm_start(home, &server);
                }
            }
        }
    }
}

impl Sim {
    /// A new store authority takes over (`Fault::AuthorityChange`), with its clock
    /// `clock_offset_ms` off the old one, as `ferry_core::leadership` rules. Every live
    /// holder's current deadline is then checked against the instant the store now expires
    /// its lease: a new authority that expires a lease early breaks rule 2's invariant at
    /// once (the `leader_no_restart` planted bug).
    /// The leadership timing of the store's authorities.
    pub(super) fn authority_timing(&self) -> LeadershipTiming {
        LeadershipTiming {
            validity: Duration::from_millis(250),
            drift_ppm: 10_000,
            margin: Duration::from_millis(20),
            bugs: self.bugs,
        }
    }

    pub(super) fn new_authority(&mut self, clock_offset_ms: i64) {
        let timing = self.authority_timing();
        let changed = self.store.new_authority(self.now, clock_offset_ms, &timing);
        tr!(self, "store authority changed (clock {clock_offset_ms:+} ms): {} held leases restarted", changed.len());
        for (name, epoch, until) in changed {
            for i in 0..self.instances.len() {
                if !self.instances[i].alive {
                    continue;
                }
                let local = self.hosts[self.instances[i].host].clock.mono(self.now);
                let instance = &mut self.instances[i];
                let (keeper, granted, which) = match &name {
                    LeaseName::Server(s) if &instance.server == s => {
                        (instance.server_keeper.as_ref(), &mut instance.server_granted_until, "server")
                    }
                    LeaseName::Master(_) => {
                        (instance.master_keeper.as_ref(), &mut instance.master_granted_until, "master")
                    }
                    LeaseName::Server(_) => continue,
                };
                let Some((held, deadline)) = keeper.and_then(|k| k.held(local)) else {
                    continue;
                };
                if held != epoch {
                    continue;
                }
                *granted = until;
                self.check_deadline(i, which, deadline, until);
            }
        }
    }
}
