//! ferry-lab: hosts on one machine, for real multi-machine tests (DESIGN §5, "hosts").
//!
//! Why it exists: automatic server migration moves processes *and* floating IPs between
//! machines, and the interesting failures (a crashed machine, a hung one, a machine cut off
//! from its peers but not from the database) cannot be shown on loopback. A [`Lab`] builds
//! machines out of Linux network namespaces so tests (and people, by hand) can run real
//! Node Managers and servers on them and break things on purpose.
//!
//! Topology (all addresses from 198.18.0.0/15, the benchmarking range; nothing else is used):
//!
//! ```text
//!   {prefix}sw       bridge br0 198.18.1.1/24 (fixed MAC); PostgreSQL on :5432 (ferry-testkit)
//!    ├─ sw-client ── {prefix}client   eth0 198.18.1.2/24      (measures what users see)
//!    ├─ sw-a ─────── {prefix}a        eth0 198.18.1.11/24     (machine "a")
//!    └─ sw-b ─────── {prefix}b        eth0 198.18.1.12/24     (machine "b") ...
//!   floating IPs: 198.18.1.100-199
//! ```
//!
//! **Architecture Invariant:** the lab never creates a link, an address, a route or a
//! filter rule in the root network namespace. Every veth pair is created inside the switch
//! namespace and its peer pushed straight into the machine's namespace; there is no
//! default route, so no lab traffic can leave the lab. [`Lab::up`] refuses to run without
//! root, without `ip`, or when an address outside 198.18.0.0/15 would be used.
//!
//! Cleanup: [`Lab::down`] and `Drop` kill every process in the lab's namespaces and delete
//! them (also after a failed test: `Drop` runs during unwinding). Each lab's prefix holds
//! the pid of the process that made it (`fl-<pid>-<n>-`), so [`cleanup_stale`] (run by
//! every [`Lab::up`]) removes leftovers of processes that died without unwinding.
//!
//! Missing prerequisites are never a silent skip: [`Lab::up`] returns
//! [`LabError::Unavailable`]; tests go through [`or_skip`], which prints why they did not
//! run and lets them return early, except under `CI=true`, where it panics.

mod cgroup;
mod cmd;
mod faults;
mod lab;
mod node;
mod stale;

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use lab::{Freezer, Lab, LabSpec};
pub use node::{Cut, CLIENT, SWITCH};
pub use stale::cleanup_stale;

/// The network every lab address comes from (RFC 2544 benchmarking, 198.18.0.0/15).
pub const LAB_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// The prefix length of [`LAB_NET`].
pub const LAB_NET_PREFIX_LEN: u8 = 15;
/// The prefix length of the lab's one subnet, 198.18.1.0/24.
pub const SUBNET_PREFIX_LEN: u8 = 24;
/// The switch's address (bridge `br0` in the switch namespace): PostgreSQL listens here.
pub const SWITCH_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The client's address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The interface of every machine and of the client (a veth whose peer is on the bridge).
pub const HOST_IFACE: &str = "eth0";

/// Whether `addr` lies in 198.18.0.0/15.
pub fn in_lab_net(addr: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - LAB_NET_PREFIX_LEN);
    u32::from(addr) & mask == u32::from(LAB_NET)
}

/// The `n`th floating IP (`n` < 100): 198.18.1.100 + n.
pub fn floating_ip(n: u8) -> Result<Ipv4Addr> {
    if n >= 100 {
        return Err(LabError::Spec(format!("floating IP number {n} is out of range (0-99 give 198.18.1.100-199)")));
    }
    Ok(Ipv4Addr::new(198, 18, 1, 100 + n))
}

/// What went wrong building, driving or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A prerequisite is missing (not root, a tool not installed, ...). Outside CI, tests
    /// skip with this message; under `CI=true` (`required`) they fail.
    #[error("the lab cannot run here: {reason}{}", if *.required { " (CI=true requires it)" } else { "" })]
    Unavailable { reason: String, required: bool },
    /// The [`LabSpec`] or an argument is invalid.
    #[error("invalid lab request: {0}")]
    Spec(String),
    /// An address outside 198.18.0.0/15 would have been used.
    #[error("refusing to use {addr}: the lab only uses addresses in 198.18.0.0/15")]
    AddressOutsideLab { addr: Ipv4Addr },
    /// A name that is not a node of this lab.
    #[error("{name:?} is not a node of lab {prefix} (nodes: {known})")]
    UnknownNode { name: String, prefix: String, known: String },
    /// An operation that needs a machine or the client got the switch, or vice versa.
    #[error("{operation} does not apply to {node}: {why}")]
    WrongNode { operation: &'static str, node: String, why: &'static str },
    /// A namespace the lab was about to use turned out to be the root network namespace.
    #[error("namespace {ns} is the root network namespace; refusing to touch it")]
    RootNamespace { ns: String },
    /// An external command could not be started.
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// An external command ran past its time limit and was killed.
    #[error("`{command}` did not finish within {timeout_ms} ms and was killed")]
    Timeout { command: String, timeout_ms: u64 },
    /// An external command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    /// A file operation failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Something did not reach the expected state in time (processes that will not die, a
    /// cgroup that does not freeze, a port that does not come up).
    #[error("{0}")]
    Stuck(String),
}

impl LabError {
    /// Whether a test should skip rather than fail: a prerequisite is missing and this is
    /// not CI.
    pub fn is_skip(&self) -> bool {
        matches!(self, LabError::Unavailable { required: false, .. })
    }

    pub(crate) fn unavailable(reason: impl Into<String>) -> LabError {
        LabError::Unavailable { reason: reason.into(), required: std::env::var("CI").is_ok_and(|v| v == "true") }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
        let what = what.into();
        move |source| LabError::Io { what, source }
    }
}

/// The crate's result type.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// `Ok(v)` gives `Some(v)`. A missing prerequisite outside CI prints `skipping: WHY` and
/// gives `None` so the test can return early; any other error (and a missing
/// prerequisite under `CI=true`) panics with the whole error chain.
#[track_caller]
pub fn or_skip<T>(result: Result<T>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) if e.is_skip() => {
            eprintln!("skipping: {e}");
            None
        }
        Err(e) => panic!("{}", chain(&e)),
    }
}

pub use ferry_core::chain;

/// Checks that every tool in `tools` is installed (on `PATH` or in the sbin directories);
/// [`LabError::Unavailable`] names the missing ones and the Debian packages that have them.
pub fn require(tools: &[&str]) -> Result<()> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| which(t).is_none())
        .map(|t| format!("{t} (Debian package {})", package_of(t)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::unavailable(format!("missing {}", missing.join(", "))))
    }
}

/// The Debian package that provides `tool`, for error messages.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "ip" | "bridge" => "iproute2",
        "nft" => "nftables",
        "ping" => "iputils-ping",
        "arping" => "iputils-arping",
        "runuser" => "util-linux",
        "timeout" | "cp" => "coreutils",
        "bash" => "bash",
        "psql" | "pg_isready" => "postgresql-client",
        "initdb" | "pg_ctl" | "postgres" => "postgresql",
        _ => "unknown",
    }
}

/// The absolute path of `tool`: the first hit on `PATH`, then the usual system directories
/// (a test run by a non-login shell may lack `/usr/sbin` on `PATH`).
pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().map(PathBuf::from),
        )
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_net_is_198_18_slash_15() {
        assert!(in_lab_net(Ipv4Addr::new(198, 18, 0, 0)));
        assert!(in_lab_net(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!in_lab_net(Ipv4Addr::new(198, 17, 255, 255)));
        assert!(!in_lab_net(Ipv4Addr::new(198, 20, 0, 0)));
        assert!(!in_lab_net(Ipv4Addr::new(127, 0, 0, 1)));
    }

    #[test]
    fn floating_ips_are_100_to_199() {
        assert_eq!(floating_ip(0).unwrap(), Ipv4Addr::new(198, 18, 1, 100));
        assert_eq!(floating_ip(99).unwrap(), Ipv4Addr::new(198, 18, 1, 199));
        assert!(floating_ip(100).is_err());
    }
}
