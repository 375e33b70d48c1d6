//! Faults a test can inflict on lab nodes: crash and revive, freeze and thaw, partitions.
//!
//! Each one is what the README of the lab experiments measured to be honest:
//!
//! * **crash** = power loss: the cable is pulled (`ip -n SW link set sw-X down`), every
//!   process in the namespace is SIGKILLed (killing alone leaves the kernel answering ARP and
//!   sending RSTs for the machine's addresses), and what lived in the machine's memory is
//!   gone: addresses added at run time (floating IPs) and the neighbour cache. **revive**
//!   plugs the cable back in; the machine comes back with its base address and no processes.
//! * **freeze** = a hung machine: cgroup v2 `cgroup.freeze` on the node's group, plus SIGSTOP
//!   for processes of the namespace outside the group; without cgroup v2 SIGSTOP for all.
//!   Connections to a frozen machine still complete (the kernel answers), requests hang.
//! * **partitions** = nftables `bridge` rules in the switch namespace, invisible to the
//!   machines (links stay up). Traffic to the switch's own address (PostgreSQL) passes the
//!   bridge `input`/`output` hooks, traffic between ports the `forward` hook. The two
//!   selective cuts (from peers, from the switch) drop everything except ARP
//!   (`ether type != arp`), as the lab README prescribes for asymmetric cuts (dropping ARP
//!   on one side of a one-way cut silently makes it two-way). Both are two-way between the
//!   parties they separate, so keeping ARP changes only how the cut looks: connections time
//!   out instead of failing with "no route to host", and an ARP probe
//!   (`ferry_host::ipaddr::probe`) still sees the addresses of the machine on the other side.
//!   [`Lab::partition`] drops ARP too.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::{checked, COMMAND_TIMEOUT};
use crate::lab::Lab;
use crate::node::{cidr, inet_addresses, Cut, Node, SWITCH};
use crate::{which, LabError, Result, HOST_IFACE};

/// The nftables table that holds every partition rule of a lab (in its switch namespace).
const TABLE: &str = "ferry_lab";

impl Lab {
    /// Crashes `host` (a machine or the client): pulls its cable, SIGKILLs every process
    /// in its namespace and waits until they are gone, and clears what a reboot would lose
    /// (extra addresses on eth0, the neighbour cache). A frozen host is thawed first.
    pub async fn crash(&self, host: &str) -> Result<()> {
        let node = self.host(host, "crash")?;
        self.set_cable(&node, false).await?;
        let mut faults = self.faults.lock().await;
        if let Some(cg) = &self.cgroups {
            // Kills frozen tasks too; the group is thawed after so new processes can run.
            cg.kill_all(&node.ns);
        }
        self.kill_namespace(&node.ns).await?;
        if let Some(cg) = &self.cgroups {
            cg.set_frozen(&node.ns, false).await?;
        }
        faults.frozen.remove(&node.name);
        faults.stopped.remove(&node.name);
        drop(faults);
        let base = cidr(node.addr)?;
        let out = self.ip_in(&node, &["-o", "-4", "addr", "show", "dev", HOST_IFACE]).await?;
        for addr in inet_addresses(&out) {
            if addr != base {
                self.ip_in(&node, &["addr", "del", &addr, "dev", HOST_IFACE]).await?;
            }
        }
        self.ip_in(&node, &["neigh", "flush", "dev", HOST_IFACE]).await?;
        Ok(())
    }

    /// Plugs `host`'s cable back in and waits until its port is up. Processes are not
    /// restarted: start them again with [`Lab::spawn`].
    pub async fn revive(&self, host: &str) -> Result<()> {
        let node = self.host(host, "revive")?;
        self.set_cable(&node, true).await
    }

    /// Freezes every process of `node` (any node, the switch included: freezing it hangs
    /// PostgreSQL while the bridge keeps forwarding). Returns once they are frozen.
    pub async fn freeze(&self, node: &str) -> Result<()> {
        let node = self.node(node)?;
        let mut faults = self.faults.lock().await;
        if faults.frozen.contains(&node.name) {
            return Ok(());
        }
        if let Some(cg) = &self.cgroups {
            cg.set_frozen(&node.ns, true).await?;
        }
        // Processes outside the group (all of them without cgroups): SIGSTOP, again and again
        // until no new one shows up, since a process may fork while we look.
        let mut stopped: Vec<i32> = Vec::new();
        for _ in 0..50 {
            let fresh: Vec<i32> = self
                .ns_pids(&node.ns)
                .await?
                .into_iter()
                .filter(|p| !stopped.contains(p))
                .filter(|p| !matches!(&self.cgroups, Some(cg) if cg.contains(&node.ns, *p)))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for pid in fresh {
                if kill(Pid::from_raw(pid), Signal::SIGSTOP).is_ok() {
                    stopped.push(pid);
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for pid in &stopped {
            wait_stopped(*pid).await?;
        }
        faults.frozen.insert(node.name.clone());
        faults.stopped.insert(node.name, stopped);
        Ok(())
    }

    /// Resumes what [`Lab::freeze`] froze.
    pub async fn thaw(&self, node: &str) -> Result<()> {
        let node = self.node(node)?;
        let mut faults = self.faults.lock().await;
        if !faults.frozen.remove(&node.name) {
            return Ok(());
        }
        if let Some(cg) = &self.cgroups {
            cg.set_frozen(&node.ns, false).await?;
        }
        for pid in faults.stopped.remove(&node.name).unwrap_or_default() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
        Ok(())
    }

    /// Whether `node` is frozen by [`Lab::freeze`].
    pub async fn is_frozen(&self, node: &str) -> Result<bool> {
        let node = self.node(node)?;
        Ok(self.faults.lock().await.frozen.contains(&node.name))
    }

    /// Cuts `host` off from everything (both directions, ARP included). Replaces any other
    /// cut of `host`; [`Lab::heal`] removes all cuts.
    pub async fn partition(&self, host: &str) -> Result<()> {
        self.cut(host, Cut::Isolated).await
    }

    /// Cuts `host` off from the other machines (both directions; ARP passes) while it keeps
    /// reaching the switch's address 198.18.1.1, i.e. the database. The client is not a
    /// peer: client and `host` still reach each other.
    pub async fn partition_from_peers(&self, host: &str) -> Result<()> {
        self.cut(host, Cut::FromPeers).await
    }

    /// Cuts `host` off from the switch's address 198.18.1.1, i.e. the database (both
    /// directions; ARP passes), while it keeps reaching the other machines and the client.
    pub async fn partition_from_switch(&self, host: &str) -> Result<()> {
        self.cut(host, Cut::FromSwitch).await
    }

    /// Splits the machines in two: every host of `side` loses every host of `other` (both
    /// directions; ARP passes), while both sides keep the switch and the client. For a
    /// group of voters cut from another, e.g. an even split of four.
    pub async fn split(&self, side: &[&str], other: &[&str]) -> Result<()> {
        for h in side.iter().chain(other) {
            self.host(h, "a split")?;
        }
        let others: BTreeSet<String> = other.iter().map(|h| h.to_string()).collect();
        let mut faults = self.faults.lock().await;
        let mut wanted = faults.cuts.clone();
        for h in side {
            wanted.insert(h.to_string(), Cut::FromHosts(others.clone()));
        }
        self.apply_cuts(&wanted).await?;
        faults.cuts = wanted;
        Ok(())
    }

    /// Removes every partition. Allow up to ~1 s for reachability to return (neighbour
    /// entries that failed during the cut are retried lazily).
    pub async fn heal(&self) -> Result<()> {
        let mut faults = self.faults.lock().await;
        self.apply_cuts(&BTreeMap::new()).await?;
        faults.cuts.clear();
        Ok(())
    }

    /// The partitions in force, per host.
    pub async fn cuts(&self) -> BTreeMap<String, Cut> {
        self.faults.lock().await.cuts.clone()
    }

    async fn cut(&self, host: &str, cut: Cut) -> Result<()> {
        let node = self.host(host, "a partition")?;
        let mut faults = self.faults.lock().await;
        let mut wanted = faults.cuts.clone();
        wanted.insert(node.name, cut);
        // One nft transaction: on failure the rules in force are still `faults.cuts`.
        self.apply_cuts(&wanted).await?;
        faults.cuts = wanted;
        Ok(())
    }

    /// Replaces the lab's nftables table with one holding exactly `cuts` (atomically: one
    /// `nft -f` transaction).
    async fn apply_cuts(&self, cuts: &BTreeMap<String, Cut>) -> Result<()> {
        let nft =
            which("nft").ok_or_else(|| LabError::unavailable("nft (Debian package nftables) is not installed"))?;
        let file = self.state_dir.join("partitions.nft");
        std::fs::write(&file, render(cuts, &self.machines))
            .map_err(LabError::io(format!("cannot write {}", file.display())))?;
        let sw = self.node(SWITCH)?;
        checked(
            tokio::process::Command::new(&self.ip)
                .args(["netns", "exec", &sw.ns])
                .arg(nft)
                .arg("-f")
                .arg(&file)
                .stdin(std::process::Stdio::null()),
            COMMAND_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// A machine or the client, for `operation`.
    fn host(&self, name: &str, operation: &'static str) -> Result<Node> {
        let node = self.node(name)?;
        if node.is_switch {
            return Err(LabError::WrongNode {
                operation,
                node: name.into(),
                why: "it is the switch, not a host with a cable",
            });
        }
        Ok(node)
    }

    async fn set_cable(&self, node: &Node, up: bool) -> Result<()> {
        let sw = self.node(SWITCH)?;
        let state = if up { "up" } else { "down" };
        self.ip_in(&sw, &["link", "set", &node.port(), state]).await?;
        self.wait_port(node, up).await
    }

    /// SIGKILLs every process in `ns` until none is left (up to ~5 s).
    async fn kill_namespace(&self, ns: &str) -> Result<()> {
        for _ in 0..1000 {
            let pids = self.ns_pids(ns).await?;
            if pids.is_empty() {
                return Ok(());
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(LabError::Stuck(format!("processes in namespace {ns} survived SIGKILL for 5 s")))
    }
}

/// Waits until `pid` is stopped (`T`) or gone.
async fn wait_stopped(pid: i32) -> Result<()> {
    for _ in 0..1000 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return Ok(()),
            Ok(stat) => {
                let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
                if matches!(state, Some("T") | Some("t") | Some("Z") | Some("X")) {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(LabError::Stuck(format!("process {pid} did not stop within 2 s of SIGSTOP")))
}

/// The nftables script that makes the lab's table hold exactly `cuts`. `machines` are all
/// machine names (the peers of [`Cut::FromPeers`]).
fn render(cuts: &BTreeMap<String, Cut>, machines: &[String]) -> String {
    let port = |n: &str| format!("\"sw-{n}\"");
    let (mut forward, mut input, mut output) = (Vec::new(), Vec::new(), Vec::new());
    for (host, cut) in cuts {
        let me = port(host);
        match cut {
            Cut::Isolated => {
                forward.push(format!("iifname {me} drop"));
                forward.push(format!("oifname {me} drop"));
                input.push(format!("iifname {me} drop"));
                output.push(format!("oifname {me} drop"));
            }
            Cut::FromPeers => {
                for peer in machines.iter().filter(|m| *m != host) {
                    let peer = port(peer);
                    forward.push(format!("iifname {me} oifname {peer} ether type != arp drop"));
                    forward.push(format!("iifname {peer} oifname {me} ether type != arp drop"));
                }
            }
            Cut::FromSwitch => {
                input.push(format!("iifname {me} ether type != arp drop"));
                output.push(format!("oifname {me} ether type != arp drop"));
            }
            Cut::FromHosts(others) => {
                for other in others.iter().filter(|o| *o != host) {
                    let other = port(other);
                    forward.push(format!("iifname {me} oifname {other} ether type != arp drop"));
                    forward.push(format!("iifname {other} oifname {me} ether type != arp drop"));
                }
            }
        }
    }
    // Declaring the table first makes the delete succeed when it does not exist yet; the
    // whole file is one transaction, so there is no moment without the old or new rules.
    let mut text = format!("table bridge {TABLE}\ndelete table bridge {TABLE}\n");
    if cuts.is_empty() {
        return text;
    }
    let _ = writeln!(text, "table bridge {TABLE} {{");
    for (chain, hook, rules) in
        [("cut_forward", "forward", &forward), ("cut_input", "input", &input), ("cut_output", "output", &output)]
    {
        let _ = writeln!(text, "  chain {chain} {{\n    type filter hook {hook} priority 0; policy accept;");
        for rule in rules {
            let _ = writeln!(text, "    {rule}");
        }
        let _ = writeln!(text, "  }}");
    }
    text.push_str("}\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machines() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    #[test]
    fn a_split_cuts_only_the_pairs_across_it() {
        let others: BTreeSet<String> = ["c".to_string()].into();
        let cuts = BTreeMap::from([
            ("a".to_string(), Cut::FromHosts(others.clone())),
            ("b".to_string(), Cut::FromHosts(others)),
        ]);
        let text = render(&cuts, &machines());
        for rule in ["iifname \"sw-a\" oifname \"sw-c\"", "iifname \"sw-c\" oifname \"sw-b\""] {
            assert!(text.contains(rule), "{rule} missing from\n{text}");
        }
        assert!(!text.contains("iifname \"sw-a\" oifname \"sw-b\""), "a and b stay together:\n{text}");
        assert!(!text.contains("hook input; policy accept;\n    iifname"), "the switch stays reachable:\n{text}");
    }

    #[test]
    fn no_cuts_only_removes_the_table() {
        assert_eq!(render(&BTreeMap::new(), &machines()), "table bridge ferry_lab\ndelete table bridge ferry_lab\n");
    }

    #[test]
    fn isolation_drops_everything_of_the_port() {
        let cuts = BTreeMap::from([("a".to_string(), Cut::Isolated)]);
        let text = render(&cuts, &machines());
        for rule in ["iifname \"sw-a\" drop", "oifname \"sw-a\" drop", "hook forward", "hook input", "hook output"] {
            assert!(text.contains(rule), "{rule} missing from\n{text}");
        }
        assert!(!text.contains("arp"), "{text}");
    }

    #[test]
    fn from_peers_cuts_machine_pairs_but_lets_arp_pass() {
        let cuts = BTreeMap::from([("a".to_string(), Cut::FromPeers)]);
        let text = render(&cuts, &machines());
        assert!(text.contains("iifname \"sw-a\" oifname \"sw-b\" ether type != arp drop"));
        assert!(text.contains("iifname \"sw-c\" oifname \"sw-a\" ether type != arp drop"));
        assert!(!text.contains("sw-client"), "{text}");
        assert!(!text.contains("oifname \"sw-a\" oifname"), "{text}");
        let input = text.split("cut_input").nth(1).unwrap_or_default();
        assert!(!input.contains("drop"), "switch traffic must pass:\n{text}");
    }

    #[test]
    fn from_switch_cuts_only_the_bridge_address() {
        let cuts = BTreeMap::from([("b".to_string(), Cut::FromSwitch)]);
        let text = render(&cuts, &machines());
        assert!(text.contains("iifname \"sw-b\" ether type != arp drop"));
        assert!(text.contains("oifname \"sw-b\" ether type != arp drop"));
        let forward = text.split("cut_forward").nth(1).and_then(|t| t.split("cut_input").next()).unwrap_or_default();
        assert!(!forward.contains("drop"), "peer traffic must pass:\n{text}");
    }
}
