//! The lab itself: building the namespaces and the bridge, naming and addressing the nodes,
//! running programs inside them, and tearing everything down again.
//!
//! Every command that changes the network names its namespace explicitly (`ip -n NS ...` or
//! `ip netns exec NS ...`), and every namespace is checked not to be the root namespace right
//! after it is created, so a bug here cannot reconfigure the host's own network.

use std::ffi::{OsStr, OsString};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::cgroup::Cgroups;
use crate::cmd::{checked, output, stderr_of, COMMAND_TIMEOUT};
use crate::node::{
    check_machines, cidr, guard, inet_addresses, mac_of, machine_addr, machine_octets, Faults, Node, CLIENT, SWITCH,
};
use crate::stale::{check_tag, cleanup_stale, parse_pids, state_root, teardown, write_owner};
use crate::{which, LabError, Result, CLIENT_ADDR, HOST_IFACE, SWITCH_ADDR};

/// Labs made by this process so far: the `N` of `TAG-PID-N-`.
static LABS_MADE: AtomicUsize = AtomicUsize::new(0);

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// A short tag (1-8 lowercase letters or digits, default `fl`); the lab's namespaces are
    /// named `{prefix}-{pid}-{n}-{node}`, and `up` cleans up dead labs with the same tag.
    pub prefix: String,
    /// Machine names (lowercase letters, digits and `-`, at most 12 characters; not `sw` or
    /// `client`), addressed 198.18.1.11, .12, ... in this order.
    pub machines: Vec<String>,
    /// Whether to add the client namespace (198.18.1.2).
    pub with_client: bool,
    /// Freeze with SIGSTOP/SIGCONT even where cgroup v2 is available (to test the fallback).
    pub signal_freezer: bool,
}

impl LabSpec {
    /// Machines named `machines`, with a client, tag `fl`.
    pub fn new(machines: &[&str]) -> LabSpec {
        LabSpec { machines: machines.iter().map(|m| m.to_string()).collect(), ..LabSpec::default() }
    }
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec { prefix: "fl".into(), machines: Vec::new(), with_client: true, signal_freezer: false }
    }
}

/// How [`Lab::freeze`] stops a node's processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freezer {
    /// cgroup v2 `cgroup.freeze` on the node's group (below `parent`): atomic, also catches
    /// children forked meanwhile; processes show as sleeping (`S`), not stopped.
    Cgroup { parent: PathBuf },
    /// SIGSTOP to every process of the namespace, repeated until no new one appears, and
    /// SIGCONT to the same processes on thaw. Used when cgroup v2 is unavailable (`reason`).
    Signals { reason: String },
}

/// A lab of hosts: the switch, machines and maybe a client, each a network namespace. Torn
/// down by [`Lab::down`] or on drop.
#[derive(Debug)]
pub struct Lab {
    pub(crate) prefix: String,
    pub(crate) machines: Vec<String>,
    pub(crate) with_client: bool,
    pub(crate) ip: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) cgroups: Option<Cgroups>,
    freezer: Freezer,
    pub(crate) faults: tokio::sync::Mutex<Faults>,
    torn_down: bool,
}

impl Lab {
    /// Builds a lab (~0.1-0.3 s): cleans up stale labs with the same tag, then creates the
    /// switch namespace with `br0`, one namespace per machine (and the client) wired to it,
    /// and a cgroup per node. Refuses with [`LabError::Unavailable`] when not root or when
    /// `ip` is missing, and with an error when a name or an address is invalid; on any
    /// failure whatever was built is removed again.
    pub async fn up(spec: LabSpec) -> Result<Lab> {
        check_tag(&spec.prefix)?;
        check_machines(&spec.machines)?;
        // Every address the lab will configure, checked before anything is created.
        for octet in [1, 2].into_iter().chain(machine_octets(spec.machines.len())) {
            guard(Ipv4Addr::new(198, 18, 1, octet))?;
        }
        if !is_root() {
            return Err(LabError::unavailable(
                "not running as root (network namespaces need CAP_SYS_ADMIN); run the tests as root",
            ));
        }
        let ip = which("ip").ok_or_else(|| LabError::unavailable("ip (Debian package iproute2) is not installed"))?;
        if let Err(e) = cleanup_stale(&spec.prefix) {
            eprintln!("warning: cleaning up stale labs failed: {}", crate::chain(&e));
        }
        let n = LABS_MADE.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{}-{}-{n}-", spec.prefix, std::process::id());
        // Leftovers of a dead process that had our pid.
        teardown(&ip, &prefix)?;
        let state_dir = state_root().join(&prefix);
        make_dir(&state_root())?;
        make_dir(&state_dir)?;
        write_owner(&state_dir)?;
        let (cgroups, freezer) = if spec.signal_freezer {
            (None, Freezer::Signals { reason: "requested by the lab spec".into() })
        } else {
            match Cgroups::prepare() {
                Ok(cg) => {
                    let parent = cg.base().to_path_buf();
                    (Some(cg), Freezer::Cgroup { parent })
                }
                Err(reason) => (None, Freezer::Signals { reason }),
            }
        };
        let lab = Lab {
            prefix,
            machines: spec.machines,
            with_client: spec.with_client,
            ip,
            state_dir,
            cgroups,
            freezer,
            faults: tokio::sync::Mutex::new(Faults::default()),
            torn_down: false,
        };
        // On error `lab` is dropped here, and its Drop removes what was built.
        lab.build().await?;
        Ok(lab)
    }

    /// [`Lab::up`], or `None` after printing why not when a prerequisite is missing outside
    /// CI (see [`crate::or_skip`]).
    pub async fn up_or_skip(spec: LabSpec) -> Option<Lab> {
        crate::or_skip(Lab::up(spec).await)
    }

    /// Removes the labs with tag `tag` whose creating process is dead; see
    /// [`crate::cleanup_stale`] (which [`Lab::up`] runs for its own tag).
    pub fn cleanup_stale(tag: &str) -> Result<Vec<String>> {
        cleanup_stale(tag)
    }

    /// Kills every process in the lab's namespaces and deletes the namespaces, the cgroups
    /// and the state directory (blocking, ~50 ms).
    pub fn down(mut self) -> Result<()> {
        self.torn_down = true;
        teardown(&self.ip, &self.prefix)
    }

    async fn build(&self) -> Result<()> {
        let sw = self.node(SWITCH)?;
        self.add_namespace(&sw).await?;
        // A fixed MAC: otherwise br0 borrows a port's MAC and changes it as ports come and go,
        // and whatever talks to 198.18.1.1 loses it.
        self.ip_in(
            &sw,
            &[
                "link",
                "add",
                "br0",
                "address",
                &mac_of(SWITCH_ADDR),
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ],
        )
        .await?;
        self.ip_in(&sw, &["addr", "add", &cidr(SWITCH_ADDR)?, "dev", "br0"]).await?;
        self.ip_in(&sw, &["link", "set", "br0", "up"]).await?;
        for name in self.hosts() {
            let host = self.node(&name)?;
            let port = host.port();
            self.add_namespace(&host).await?;
            // Created inside the switch namespace, the peer pushed straight into the host:
            // nothing ever appears in the root namespace.
            self.ip_in(&sw, &["link", "add", &port, "type", "veth", "peer", "name", HOST_IFACE, "netns", &host.ns])
                .await?;
            self.ip_in(&sw, &["link", "set", &port, "master", "br0", "up"]).await?;
            self.ip_in(&host, &["link", "set", HOST_IFACE, "address", &mac_of(host.addr)]).await?;
            self.ip_in(&host, &["addr", "add", &cidr(host.addr)?, "dev", HOST_IFACE]).await?;
            self.ip_in(&host, &["link", "set", HOST_IFACE, "up"]).await?;
        }
        for name in self.hosts() {
            self.wait_port(&self.node(&name)?, true).await?;
        }
        Ok(())
    }

    /// `ip netns add`, the root-namespace check, loopback up, IPv6 off, the node's cgroup.
    async fn add_namespace(&self, node: &Node) -> Result<()> {
        checked(
            tokio::process::Command::new(&self.ip).args(["netns", "add", &node.ns]).stdin(Stdio::null()),
            COMMAND_TIMEOUT,
        )
        .await?;
        check_not_root_namespace(&node.ns)?;
        self.ip_in(node, &["link", "set", "lo", "up"]).await?;
        // IPv4 only: no link-local IPv6 addresses (outside 198.18.0.0/15) and no IPv6 chatter.
        // /proc/sys/net belongs to the namespace of the process reading it, here the node's.
        checked(
            tokio::process::Command::new(&self.ip)
                .args(["netns", "exec", &node.ns, "sh", "-c"])
                .arg(
                    "[ -d /proc/sys/net/ipv6 ] || exit 0; \
                     echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6 && \
                     echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
                )
                .stdin(Stdio::null()),
            COMMAND_TIMEOUT,
        )
        .await?;
        if let Some(cg) = &self.cgroups {
            cg.create(&node.ns)?;
        }
        Ok(())
    }

    /// `ip -n NS ARGS...`
    pub(crate) async fn ip_in(&self, node: &Node, args: &[&str]) -> Result<String> {
        checked(
            tokio::process::Command::new(&self.ip).arg("-n").arg(&node.ns).args(args).stdin(Stdio::null()),
            COMMAND_TIMEOUT,
        )
        .await
    }

    /// Waits until the node's bridge port is (or is no longer) operationally up.
    pub(crate) async fn wait_port(&self, node: &Node, up: bool) -> Result<()> {
        let sw = self.node(SWITCH)?;
        let port = node.port();
        for _ in 0..400 {
            let out = self.ip_in(&sw, &["-o", "link", "show", "dev", &port]).await?;
            if out.contains("state UP") == up {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(LabError::Stuck(format!(
            "port {port} of lab {} did not go {} within 2 s",
            self.prefix,
            if up { "up" } else { "down" }
        )))
    }

    // ---- names and addresses ----

    /// The lab's prefix, `TAG-PID-N-`: every namespace, cgroup and file of the lab starts
    /// with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The machine names, in address order.
    pub fn machines(&self) -> &[String] {
        &self.machines
    }

    /// Machines and the client (the nodes with a cable to the switch).
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts = self.machines.clone();
        if self.with_client {
            hosts.push(CLIENT.into());
        }
        hosts
    }

    /// Every node: the switch, the machines, the client.
    pub fn nodes(&self) -> Vec<String> {
        let mut nodes = vec![SWITCH.to_string()];
        nodes.extend(self.hosts());
        nodes
    }

    pub(crate) fn node(&self, name: &str) -> Result<Node> {
        let found = if name == SWITCH {
            Some(SWITCH_ADDR)
        } else if name == CLIENT && self.with_client {
            Some(CLIENT_ADDR)
        } else {
            self.machines.iter().position(|m| m == name).and_then(machine_addr)
        };
        match found {
            Some(addr) => Ok(Node {
                name: name.to_string(),
                ns: format!("{}{name}", self.prefix),
                addr,
                is_switch: name == SWITCH,
            }),
            None => Err(LabError::UnknownNode {
                name: name.to_string(),
                prefix: self.prefix.clone(),
                known: self.nodes().join(", "),
            }),
        }
    }

    /// The network namespace of `node` (for `ip netns exec` by hand).
    pub fn namespace(&self, node: &str) -> Result<String> {
        Ok(self.node(node)?.ns)
    }

    /// The address of `node` on 198.18.1.0/24 (machines .11.., the client .2, `sw` .1).
    pub fn addr(&self, node: &str) -> Result<Ipv4Addr> {
        Ok(self.node(node)?.addr)
    }

    /// 198.18.1.1, the switch's own address (where PostgreSQL listens).
    pub fn switch_addr(&self) -> Ipv4Addr {
        SWITCH_ADDR
    }

    /// 198.18.1.2 (meaningful when the lab has a client).
    pub fn client_addr(&self) -> Ipv4Addr {
        CLIENT_ADDR
    }

    /// The fixed MAC of `node`'s interface: `02:00:c6:12:01:XX`, XX = last address octet.
    pub fn mac(&self, node: &str) -> Result<String> {
        Ok(mac_of(self.node(node)?.addr))
    }

    /// How [`Lab::freeze`] works on this host.
    pub fn freezer(&self) -> &Freezer {
        &self.freezer
    }

    /// The cgroup v2 directory of `node`, when cgroups are used.
    pub fn cgroup(&self, node: &str) -> Result<Option<PathBuf>> {
        let node = self.node(node)?;
        Ok(self.cgroups.as_ref().map(|cg| cg.dir(&node.ns)))
    }

    /// A directory for this lab's files (logs, data); removed with the lab.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    // ---- running things ----

    /// A command that runs `program` inside `node`'s namespace and cgroup: the caller adds
    /// arguments, environment and stdio, then spawns it. (`sh` puts itself into the cgroup,
    /// then execs `ip netns exec NS program ...`, which execs the program: the child's pid is
    /// the program's.) Stdin is `/dev/null` unless the caller sets it.
    pub fn command(&self, node: &str, program: impl AsRef<OsStr>) -> Result<tokio::process::Command> {
        let node = self.node(node)?;
        let procs = self.cgroups.as_ref().map(|cg| cg.dir(&node.ns).join("cgroup.procs"));
        Ok(ns_command(&self.ip, &node.ns, procs.as_deref(), program))
    }

    /// The command line [`Lab::command`] starts with: append a program and its arguments to
    /// run it inside `node`'s namespace and cgroup, with `std::process` or whatever else
    /// spawns it (ferry-testkit's PostgreSQL server runs in the switch this way).
    pub fn command_prefix(&self, node: &str) -> Result<Vec<OsString>> {
        let node = self.node(node)?;
        let procs = self.cgroups.as_ref().map(|cg| cg.dir(&node.ns).join("cgroup.procs"));
        Ok(ns_argv(&self.ip, &node.ns, procs.as_deref()))
    }

    /// Starts `program ARGS` in `node` (namespace and cgroup) with `env` added to the
    /// environment, stdout and stderr appended to `log_file`, stdin from `/dev/null`.
    pub fn spawn<S: AsRef<OsStr>>(
        &self,
        node: &str,
        program: impl AsRef<OsStr>,
        args: &[S],
        env: &[(&str, &str)],
        log_file: &Path,
    ) -> Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .map_err(LabError::io(format!("cannot open {}", log_file.display())))?;
        let log2 = log.try_clone().map_err(LabError::io(format!("cannot open {}", log_file.display())))?;
        let mut cmd = self.command(node, program.as_ref())?;
        cmd.args(args).stdout(log).stderr(log2);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let command = crate::cmd::describe(cmd.as_std());
        cmd.spawn().map_err(|source| LabError::Spawn { command, source })
    }

    /// Runs a one-shot command in `node`'s namespace (not in its cgroup, so it also runs
    /// while the node is frozen) and gives its output, whatever the exit status; it is
    /// killed after 20 s. A program that is not installed gives [`LabError::Unavailable`].
    pub async fn run(&self, node: &str, argv: &[&str]) -> Result<Output> {
        let node = self.node(node)?;
        let Some((program, args)) = argv.split_first() else {
            return Err(LabError::Spec("run needs a program".into()));
        };
        let mut cmd = ns_command(&self.ip, &node.ns, None, program);
        cmd.args(args);
        let out = output(&mut cmd, COMMAND_TIMEOUT).await?;
        // `ip netns exec` says `exec of "X" failed: ...` and exits 255 when X cannot run.
        if out.status.code() == Some(255) && stderr_of(&out).starts_with("exec of") {
            return Err(LabError::unavailable(stderr_of(&out)));
        }
        Ok(out)
    }

    /// [`Lab::run`], failing unless the command exits 0; gives its stdout.
    pub async fn exec(&self, node: &str, argv: &[&str]) -> Result<String> {
        let out = self.run(node, argv).await?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(LabError::Command {
                command: format!("{} (in {node})", argv.join(" ")),
                status: out.status.to_string(),
                stderr: stderr_of(&out),
            })
        }
    }

    /// The pids of every process in `node`'s namespace (`ip netns pids`).
    pub async fn pids(&self, node: &str) -> Result<Vec<i32>> {
        let node = self.node(node)?;
        self.ns_pids(&node.ns).await
    }

    pub(crate) async fn ns_pids(&self, ns: &str) -> Result<Vec<i32>> {
        let out = checked(
            tokio::process::Command::new(&self.ip).args(["netns", "pids", ns]).stdin(Stdio::null()),
            COMMAND_TIMEOUT,
        )
        .await?;
        Ok(parse_pids(&out))
    }

    /// Whether `from` gets an answer to one ping of `to` within 1 s.
    pub async fn ping(&self, from: &str, to: Ipv4Addr) -> Result<bool> {
        let to = to.to_string();
        let out = self.run(from, &["ping", "-c", "1", "-W", "1", "-q", &to]).await?;
        Ok(out.status.success())
    }

    /// Connects from `from` to `to` over TCP (bash's `/dev/tcp`) and reads what the server
    /// sends until it closes or `timeout` runs out. `Some(text)` when the connection was
    /// made (`text` possibly empty), `None` when it was refused or not made within `timeout`.
    pub async fn connect(&self, from: &str, to: SocketAddrV4, timeout: Duration) -> Result<Option<String>> {
        let secs = format!("{:.3}", timeout.as_secs_f64());
        let (ip, port) = (to.ip().to_string(), to.port().to_string());
        let out = self
            .run(
                from,
                &[
                    "timeout",
                    &secs,
                    "bash",
                    "-c",
                    "exec 3<>\"/dev/tcp/$0/$1\" || exit 1; echo connected; exec cat <&3",
                    &ip,
                    &port,
                ],
            )
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.strip_prefix("connected\n").map(str::to_string))
    }

    /// The MAC `node` has in its neighbour (ARP) table for `ip`, if it has a usable entry.
    pub async fn neighbour(&self, node: &str, ip: Ipv4Addr) -> Result<Option<String>> {
        let node = self.node(node)?;
        let iface = if node.is_switch { "br0" } else { HOST_IFACE };
        let out = self.ip_in(&node, &["neigh", "show", &ip.to_string(), "dev", iface]).await?;
        Ok(out.split_whitespace().skip_while(|w| *w != "lladdr").nth(1).map(str::to_lowercase))
    }

    /// The IPv4 addresses (`A/P`) on `node`'s interface.
    pub async fn addresses(&self, node: &str) -> Result<Vec<String>> {
        let node = self.node(node)?;
        let iface = if node.is_switch { "br0" } else { HOST_IFACE };
        let out = self.ip_in(&node, &["-o", "-4", "addr", "show", "dev", iface]).await?;
        Ok(inet_addresses(&out))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.torn_down {
            if let Err(e) = teardown(&self.ip, &self.prefix) {
                eprintln!("warning: tearing down lab {} failed: {}", self.prefix, crate::chain(&e));
            }
        }
    }
}

/// `ip netns exec NS program`, wrapped in `sh` that first joins the cgroup whose
/// `cgroup.procs` is `procs` (before `ip netns exec` remounts `/sys` and hides it).
fn ns_command(ip: &Path, ns: &str, procs: Option<&Path>, program: impl AsRef<OsStr>) -> tokio::process::Command {
    let argv = ns_argv(ip, ns, procs);
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).arg(program).stdin(Stdio::null());
    cmd
}

/// The command line of [`ns_command`] up to the program.
fn ns_argv(ip: &Path, ns: &str, procs: Option<&Path>) -> Vec<OsString> {
    let mut argv: Vec<OsString> = match procs {
        Some(procs) => vec![
            "/bin/sh".into(),
            "-c".into(),
            r#"echo $$ > "$1" && shift && exec "$@""#.into(),
            "ferry-lab".into(),
            procs.into(),
            ip.into(),
        ],
        None => vec![ip.into()],
    };
    argv.extend(["netns", "exec", ns].map(OsString::from));
    argv
}

fn make_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(LabError::io(format!("cannot create {}", dir.display())))?;
    // The postgres user must be able to reach PostgreSQL's data below it.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(LabError::io(format!("cannot set permissions of {}", dir.display())))
}

/// Effective uid 0, from `/proc/self/status` (`Uid: real effective saved fs`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Fails if the namespace `ns` (just created) is the one this process runs in or that of
/// pid 1: a wrongly resolved name must never lead to configuring the host's network.
fn check_not_root_namespace(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let theirs = std::fs::metadata(&path).map_err(LabError::io(format!("cannot inspect {path}")))?.ino();
    for own in ["/proc/self/ns/net", "/proc/1/ns/net"] {
        if std::fs::metadata(own).is_ok_and(|m| m.ino() == theirs) {
            return Err(LabError::RootNamespace { ns: ns.into() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup_wrapper_joins_then_execs() {
        let cmd = ns_command(Path::new("/usr/sbin/ip"), "fl-1-0-a", Some(Path::new("/cg/cgroup.procs")), "sleep");
        assert_eq!(
            crate::cmd::describe(cmd.as_std()),
            "/bin/sh -c echo $$ > \"$1\" && shift && exec \"$@\" ferry-lab /cg/cgroup.procs \
             /usr/sbin/ip netns exec fl-1-0-a sleep"
        );
    }
}
